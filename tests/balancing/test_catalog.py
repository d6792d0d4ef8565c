"""The method table of docs/aggregators.md and docs/balancing.md is the one generated from the registries."""

from __future__ import annotations

from pathlib import Path

import pytest

from hydranet.balancing import AGGREGATORS, WEIGHTINGS
from hydranet.balancing._catalog import MARKERS, method_rows, method_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", ["docs/aggregators.md", "docs/balancing.md"])
def test_the_docs_table_is_the_generated_one(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    start, end = MARKERS
    table = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == method_table(), f"regenerate with: python -m hydranet.balancing._catalog (in {ROOT})"


def test_every_registered_method_has_a_row_read_from_its_class():
    rows = {row[0].strip("`"): row for row in method_rows()}
    assert set(rows) == set(AGGREGATORS) | set(WEIGHTINGS)
    # spot checks against the classes (not against the generator's own output)
    assert rows["upgrad"][2] == "conflict-averse (Pareto)" and "gramian" in rows["upgrad"][7]
    assert "representation" not in rows["moco"][7] and rows["moco"][3] == "state"
    assert rows["auto_lambda"][7].endswith("meta-step (val)") and rows["ew"][3] == "—"
    assert rows["random"][3] == "random" and "Blanchard" in rows["krum"][6]
    assert rows["mgda"][5].startswith("a **convex combination**")
