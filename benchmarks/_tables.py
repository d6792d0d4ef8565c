"""The benchmark tables of README.md and docs/*.md, generated from ``benchmarks/results/*.json``.

A table lives between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; :data:`RENDERERS` maps each
NAME to a function of the JSON files that returns the Markdown between the markers. In a table whose
renderer returns ``(rows, header)`` (the README's), only the rows it owns (by their first cell) are
generated: the other rows are kept as written (another script writes them).

``python benchmarks/_tables.py --write`` rewrites every marked table from the JSON files;
``python benchmarks/_tables.py`` lists the tables that differ from them (``tests/test_benchmark_tables.py``
fails on any).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["PAGES", "RENDERERS", "render", "stale", "write"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- table:(?P<name>[a-z_]+) -->\n(?P<body>.*?)<!-- /table:(?P=name) -->", re.S)


@cache
def _json(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _x(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}×"


# ---- README: the benchmark numbers ----------------------------------------------------------------


def _readme_sampler() -> str:
    rows = _json("sampler")["rows"]
    big = max((r for r in rows if r["balance"] == "inverse"), key=lambda r: r["samples"])
    return (
        f"| `benchmarks/sampler.py` — class-balanced epoch of {big['samples']:,} indices | "
        f"{big['build_s'] + big['epoch_s']:.2f} s, {big['peak_bytes_per_index']:.1f} bytes/index at peak; "
        f"{_x(big['x_python'], 0)} a per-index Python loop, {_x(big['x_torch'], 1)} `WeightedRandomSampler` "
        "(which cannot go past 2²⁴ samples) |"
    )


def _readme_model() -> str:
    m = _json("model")
    return (
        f"| `benchmarks/model.py` — HydraNet with {m['heads']} heads vs the backbone called once per head "
        f"(ConvNet, {m['size']}×{m['size']}, batch {m['batch']}) | {_x(m['ratio'])} faster forward+backward |"
    )


def _readme_balancing() -> str:
    results = _json("balancing")["results"]
    weightings = [c["40"]["time_ratio"] for k, c in results.items() if k.split()[-1] in ("ew", "uw", "dwa")]
    paths = ", ".join(
        f"{k.split()[-1]} {_x(c['40']['time_ratio'], 1)}" for k, c in results.items() if k.startswith("hydranet upgrad")
    )
    return (
        "| `benchmarks/balancing.py` — one step vs the summed-loss backward (MLP) | weightings (ew, uw, dwa) "
        f"{min(weightings):.2f}–{_x(max(weightings))} at 40 tasks; UPGrad at 40 tasks: {paths} |"
    )


def _readme_loader() -> str:
    rows = {r["workers"]: r for r in _json("loader")["rows"]}
    return (
        "| `benchmarks/loader.py` — DataLoader over `MultiTaskDataset` + `TaskBatchSampler` vs plain DataLoader "
        f"over the same tensors | {_x(rows[0]['ratio'], 1)} with 0 workers (whole batches fetched by one "
        f"indexing op); {_x(rows[2]['ratio'], 1)} with 2 workers |"
    )


def _readme_distributed() -> str:
    d = _json("distributed")
    scaling = ", ".join(f"{_x(v)} ({m})" for m, v in d["scaling"].items())
    return (
        "| `benchmarks/distributed.py` — `Trainer.fit` on 2 gloo processes vs 1 (MLP, 1 thread each) | "
        f"samples/s {scaling} on {d['machine']['cpus']} cores: correctness, not speed, is the point here; the "
        f"Jacobian all-reduce of a gradient method costs {_x(d['all_reduce_over_step'])} a plain DDP step |"
    )


_README_ROWS = {
    "`benchmarks/sampler.py`": _readme_sampler,
    "`benchmarks/model.py`": _readme_model,
    "`benchmarks/balancing.py`": _readme_balancing,
    "`benchmarks/loader.py`": _readme_loader,
    "`benchmarks/distributed.py`": _readme_distributed,
}


def _benchmarks(current: str) -> str:
    """README's table: the rows of the benchmarks above generated, the others kept as they are."""
    lines = [line for line in current.strip("\n").split("\n") if line]
    head, rows = lines[:2] or ["| benchmark | result |", "|---|---|"], lines[2:]
    owned = {key: fn() for key, fn in _README_ROWS.items()}
    out, done = [], set()
    for row in rows:
        key = next((k for k in owned if row.startswith(f"| {k}")), None)
        if key is None:
            out.append(row)
        elif key not in done:
            out.append(owned[key])
            done.add(key)
    missing = [owned[k] for k in owned if k not in done]
    return "\n".join(head + missing + out) + "\n"


# ---- docs pages -----------------------------------------------------------------------------------


def _distributed(_: str) -> str:
    d = _json("distributed")
    runs, methods = d["runs"], d["methods"]
    lines = ["| processes | " + " | ".join(f"`{m}` samples/s" for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for n, run in runs.items():
        lines.append(f"| {n} | " + " | ".join(f"{run[f'{m}/samples_per_second']:,.0f}" for m in methods) + " |")
    lines.append("| 2 / 1 | " + " | ".join(_x(d["scaling"][m]) for m in methods) + " |")
    shape = f"[2, {int(runs['2']['shared_parameters']):,}]"
    lines += [
        "",
        f"The all-reduce of the `{shape}` Jacobian took {d['jacobian_all_reduce_ms']:.2f} ms, "
        f"{_x(d['all_reduce_over_step'])} a plain DDP step ({d['ew_step_ms']:.2f} ms); a whole `upgrad` step was "
        f"{_x(d['upgrad_over_ew_step'])} an `ew` step ({d['machine']['cpus']} CPU cores, "
        f"torch {d['machine']['torch']}).",
    ]
    return "\n".join(lines) + "\n"


def _model(_: str) -> str:
    m = _json("model")
    return (
        f"| model | ms / step (median of {m['steps']}) |\n|---|---|\n"
        f"| HydraNet (backbone once) | {m['hydranet_ms']:.0f} |\n"
        f"| backbone once per head | {m['per_head_ms']:.0f} |\n"
        f"| ratio | {_x(m['ratio'])} |\n\n"
        f"({m['device']}, torch {m['machine']['torch']}.)\n"
    )


def _sampler(_: str) -> str:
    s = _json("sampler")
    lines = [
        "| samples | balance | plan s | epoch s | peak bytes / index | × per-index Python | × `WeightedRandomSampler` |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['samples']:,} | {r['balance'] or 'none'} | {r['build_s']:.3f} | {r['epoch_s']:.3f} | "
            f"{r['peak_bytes_per_index']:.1f} | {_x(r['x_python'], 0)} | {_x(r['x_torch'], 1)} |"
        )
    return "\n".join(lines) + f"\n\n(batch {s['batch']}, {s['machine']['cpus']} CPU cores.)\n"


def _loader(_: str) -> str:
    d = _json("loader")
    lines = ["| workers | `TaskBatchSampler` samples/s | plain DataLoader samples/s | ratio |", "|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['workers']} | {r['samples_per_s']:,.0f} | {r['plain_samples_per_s']:,.0f} | {_x(r['ratio'])} |")
    return "\n".join(lines) + f"\n\n({d['samples']:,} samples, batch {d['batch']}, {d['machine']['cpus']} CPU cores.)\n"


def _balancing(_: str) -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_balancing", ROOT / "benchmarks" / "balancing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.markdown(_json("balancing")) + "\n"


#: Table name -> renderer of the text between its markers, given the current text there.
RENDERERS: dict[str, Callable[[str], str]] = {
    "benchmarks": _benchmarks,
    "distributed": _distributed,
    "model": _model,
    "sampler": _sampler,
    "loader": _loader,
    "balancing": _balancing,
}


def render(text: str) -> str:
    """``text`` with every marked table generated from the JSON files."""

    def one(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise KeyError(f"No renderer for the table {name!r}: add one to RENDERERS in benchmarks/_tables.py.")
        return f"<!-- table:{name} -->\n{RENDERERS[name](match['body'])}<!-- /table:{name} -->"

    return MARKER.sub(one, text)


def stale() -> list[str]:
    """``page: table`` for every marked table that differs from what its JSON gives."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for match in MARKER.finditer(text):
            if render(match[0]) != match[0]:
                out.append(f"{page.relative_to(ROOT)}: {match['name']}")
    return out


def write() -> list[Path]:
    """Rewrite the marked tables of every page; the pages changed."""
    changed = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the marked tables from the JSON files")
    args = parser.parse_args()
    if args.write:
        for page in write():
            print(f"rewrote {page.relative_to(ROOT)}")
    else:
        print("\n".join(stale()) or "every table matches its JSON")


if __name__ == "__main__":
    main()
