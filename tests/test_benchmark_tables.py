"""The benchmark tables of README.md and docs/*.md are the ones their JSON gives (``benchmarks/_tables.py``).

Rerun a benchmark, then ``python benchmarks/_tables.py --write``: the tables follow its
``benchmarks/results/NAME.json``. These tests fail when a marked table was edited by hand or its JSON
changed without the tables being rewritten.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("_tables", ROOT / "benchmarks" / "_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _tables()


def test_every_marked_table_matches_its_json():
    assert tables.stale() == [], "run: python benchmarks/_tables.py --write"


def test_every_renderer_has_its_table_on_a_page():
    found = {m["name"] for page in tables.PAGES for m in tables.MARKER.finditer(page.read_text())}
    assert found == set(tables.RENDERERS)


@pytest.mark.parametrize("name", sorted(tables.RENDERERS))
def test_a_hand_edited_table_is_caught(name):
    page = next(p for p in tables.PAGES if f"<!-- table:{name} -->" in p.read_text())
    match = next(m for m in tables.MARKER.finditer(page.read_text()) if m["name"] == name)
    numbers = re.findall(r"\d+\.\d+", match["body"])
    assert numbers, f"the {name} table shows no measured number"
    edited = match[0].replace(numbers[0], numbers[0] + "9", 1)  # one digit more: a hand-typed number
    assert tables.render(edited) != edited


def test_the_readme_keeps_the_rows_it_does_not_generate():
    body = "| benchmark | result |\n|---|---|\n| `benchmarks/other.py` — kept | 1.00× |\n"
    text = f"<!-- table:benchmarks -->\n{body}<!-- /table:benchmarks -->"
    rendered = tables.render(text)
    assert "| `benchmarks/other.py` — kept | 1.00× |" in rendered
    assert all(f"| {key}" in rendered for key in ("`benchmarks/model.py`", "`benchmarks/loader.py`"))


def test_the_readme_numbers_are_those_of_the_docs_pages():
    # one measurement, shown twice: the README's ratio is the docs table's
    model = tables._json("model")["ratio"]
    readme = (ROOT / "README.md").read_text()
    assert f"{model:.2f}× faster forward+backward" in readme
    assert f"| ratio | {model:.2f}× |" in (ROOT / "docs" / "models.md").read_text()
