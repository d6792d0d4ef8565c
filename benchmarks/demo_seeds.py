"""``hydranet demo`` in its two acts over several seeds: per-task test scores of the multi-task model and
of the single-task baselines (trained in the same run, same backbone and budget), Δm and wall time, as
mean ± standard deviation; writes ``benchmarks/results/demo_seeds.json``, the README table and the
figure ``docs/images/demo_acts.png`` from it.

The acts: ``full`` (every label known, ``hydranet demo``) and ``scarce`` (``right`` labelled on 2% of
the training pairs, ``hydranet demo --scarce``).

Run: ``python benchmarks/demo_seeds.py [--seeds 0 1 2] [--acts full scarce] [--out DIR] [--resume]``
(a few minutes per run on 2 cores); ``--write-readme`` only regenerates the README table and the figure
from the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ACTS", "acts_table", "load_results", "plot_acts", "write_readme"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demo_seeds.json"
README = ROOT / "README.md"
FIGURE = ROOT / "docs" / "images" / "demo_acts.png"
BEGIN, END = "<!-- demo-seeds:begin -->", "<!-- demo-seeds:end -->"

#: act name -> share of training pairs labelled for ``right`` (None: all).
ACTS: dict[str, float | None] = {"full": None, "scarce": 0.02}
_TITLES = {"full": "every label", "scarce": "`right` labelled on 2% of the training pairs"}


def _spread(values: list[float], digits: int, sign: bool = False) -> str:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:{'+' if sign else ''}.{digits}f} ± {std:.{digits}f}"


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def acts_table(results: dict[str, Any]) -> str:
    """The README block: per act, one sentence and the per-task table (mean ± std over the seeds)."""
    lines: list[str] = []
    for act, info in results["acts"].items():
        runs = info["runs"]
        if not runs:
            continue
        first = runs[0]["metrics"]
        seeds = ", ".join(str(r["seed"]) for r in runs)
        names = {t: v["name"] for t, v in first["main_metrics"].items()}
        mtl = {t: [r["metrics"]["tasks"][t][m] for r in runs] for t, m in names.items()}
        single = {t: [r["metrics"]["baselines"][t][m] for r in runs] for t, m in names.items()}
        change = {t: [r["metrics"]["relative_change"][t][m] for r in runs] for t, m in names.items()}
        dm = [r["metrics"]["delta_m"] for r in runs]
        # Each run's wall time with the load average at its start: on a shared machine a mean ± std of
        # times would hide which run met a crowd.
        times = ", ".join(f"{r['seconds']:.0f} s (load {r.get('load_average', float('nan')):.1f})" for r in runs)
        lines.append(f"**{act.capitalize()} act** ({_TITLES.get(act, act)}; seeds {seeds}; wall time per run {times}):")
        if act == "scarce":
            t, m = "right", names["right"]
            lines.append(
                f"{t}, labelled on {100 * info['share']:g}% of pairs: MTL {_spread(mtl[t], 3)} vs single-task "
                f"{_spread(single[t], 3)} {m} ({_spread(change[t], 1, True)}%); Δm {_spread(dm, 2, True)}%."
            )
        else:
            lines.append(f"Δm = {_spread(dm, 2, True)}% for one backbone serving three tasks.")
        lines += ["", "| task | metric | MTL | single-task | relative change |", "| --- | --- | ---: | ---: | ---: |"]
        for t, m in sorted(names.items()):
            lines.append(f"| {t} | {m} | {_spread(mtl[t], 3)} | {_spread(single[t], 3)} | {_spread(change[t], 2, True)}% |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_readme(results: dict[str, Any], readme: Path = README) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} markers to write the table between.")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{acts_table(results)}{END}{tail}")


def plot_acts(results: dict[str, Any], path: Path = FIGURE) -> Path:
    """Per act, each task's MTL and single-task scores (mean, std as error bars, seeds as dots)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("The figure needs matplotlib: pip install 'hydranet[report]'.") from error
    acts = [a for a, info in results["acts"].items() if info["runs"]]
    fig, axes = plt.subplots(1, len(acts), figsize=(5 * len(acts), 3.6), squeeze=False)
    for ax, act in zip(axes[0], acts):
        runs = results["acts"][act]["runs"]
        names = {t: v["name"] for t, v in runs[0]["metrics"]["main_metrics"].items()}
        tasks = sorted(names)
        x = np.arange(len(tasks))
        for k, (key, label, colour) in enumerate((("tasks", "MTL", "C0"), ("baselines", "single-task", "C1"))):
            values = np.array([[r["metrics"][key][t][names[t]] for t in tasks] for r in runs])
            std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(tasks))
            ax.bar(x + (k - 0.5) * 0.38, values.mean(0), 0.36, yerr=std, capsize=3, label=label, color=colour)
            for row in values:
                ax.plot(x + (k - 0.5) * 0.38, row, "k.", ms=3)
        dm = [r["metrics"]["delta_m"] for r in runs]
        ax.set_xticks(x, [f"{t}\n({names[t]})" for t in tasks])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{act} act: Δm {np.mean(dm):+.2f} ± {np.std(dm, ddof=1) if len(dm) > 1 else 0:.2f}%", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test score")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(results: dict[str, Any], path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)  # atomic: a killed run leaves the previous complete file


def merge(paths: list[Path]) -> dict[str, Any]:
    """The runs of several result files (e.g. seeds run in parallel processes), one per (act, seed)."""
    merged: dict[str, Any] = {"acts": {}}
    for path in paths:
        part = load_results(path)
        merged.setdefault("threads", part.get("threads"))
        for act, info in part["acts"].items():
            runs = merged["acts"].setdefault(act, {"share": info["share"], "runs": []})["runs"]
            seen = {r["seed"] for r in runs}
            runs.extend(r for r in info["runs"] if r["seed"] not in seen)
            runs.sort(key=lambda r: r["seed"])
    merged["acts"] = {a: merged["acts"][a] for a in ACTS if a in merged["acts"]}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--acts", nargs="+", default=list(ACTS), choices=list(ACTS))
    parser.add_argument("--out", default=None, help="keep each run's report in OUT/<act>/seed<N> (default: a temporary folder)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the JSON, run the others")
    parser.add_argument("--write-readme", action="store_true", help="only regenerate the README table and figure from the JSON")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON to write (default: benchmarks/results/demo_seeds.json)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these result files into --results, then write the README")
    args = parser.parse_args()
    if args.merge:
        _save(merge(args.merge), args.results)
    if args.write_readme or args.merge:
        results = load_results()
        write_readme(results)
        print(f"wrote the table into {README} and {plot_acts(results)}")
        return

    from hydranet.cli.demo import run_demo

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hydranet-demo-seeds-"))
    results: dict[str, Any] = load_results(args.results) if args.resume and args.results.is_file() else {"acts": {}}
    results["threads"] = {"torch": __import__("torch").get_num_threads(), "cpus": os.cpu_count()}
    for act in args.acts:
        info = results["acts"].setdefault(act, {"share": ACTS[act], "runs": []})
        done = {r["seed"] for r in info["runs"]}
        for seed in args.seeds:
            if seed in done:
                continue
            load = os.getloadavg()[0]
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                metrics = run_demo(root / act / f"seed{seed}", seed=seed, progress=False, scarce=ACTS[act])
            seconds = time.perf_counter() - start
            info["runs"].append({"seed": seed, "seconds": seconds, "load_average": load, "metrics": metrics})
            info["runs"].sort(key=lambda r: r["seed"])
            _save(results, args.results)
            print(f"{act} act, seed {seed}: Δm = {metrics['delta_m']:+.2f}%  ({seconds:.0f} s, load {load:.1f})", flush=True)
    print()
    print(acts_table(results))


if __name__ == "__main__":
    main()
