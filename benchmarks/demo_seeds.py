"""``hydranet demo`` over several seeds: per-task test scores of the multi-task model and of the
single-task baselines (trained in the same run, same backbone and budget), Δm, and wall time,
as mean ± standard deviation.

Run: ``python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out DIR]`` (a few minutes per seed on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from hydranet.cli.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="keep each seed's report in OUT/seed<N> (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="hydranet-demo-seeds-"))

    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = run_demo(root / f"seed{seed}", seed=seed, progress=False)
        seconds = time.perf_counter() - start
        runs.append((result, seconds))
        print(f"seed {seed}: Δm = {result['delta_m']:+.2f}%  ({seconds:.0f} s)", flush=True)

    def spread(values: list[float], digits: int) -> str:
        return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.{digits}f}"

    first = runs[0][0]
    print(f"\n{len(runs)} seeds ({', '.join(map(str, args.seeds))}), test split, mean ± std:\n")
    print("| task | metric | MTL | single-task | relative change |")
    print("| --- | --- | ---: | ---: | ---: |")
    for task, info in sorted(first["main_metrics"].items()):
        metric = info["name"]
        mtl = [r["tasks"][task][metric] for r, _ in runs]
        single = [r["baselines"][task][metric] for r, _ in runs]
        change = [r["relative_change"][task][metric] for r, _ in runs]
        print(f"| {task} | {metric} | {spread(mtl, 3)} | {spread(single, 3)} | {spread(change, 2)}% |")
    print(f"\nΔm = {spread([r['delta_m'] for r, _ in runs], 2)}%   wall time {spread([s for _, s in runs], 0)} s")


if __name__ == "__main__":
    main()
