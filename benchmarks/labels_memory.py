"""Memory and time of ``MultiTaskDataset.shared`` over a large binary label matrix.

Workload: ``n`` samples x ``k`` binary tasks, an int8 label matrix (``-1`` missing, a third of the
labels) in a ``TensorDataset(inputs, Y)``, ``tasks=[Task(..., "binary")] * k``. Each measurement runs
in a fresh subprocess: the peak of traced allocations (``tracemalloc``; NumPy's allocations are traced)
and the growth of the peak resident set (``resource.getrusage(...).ru_maxrss``) while the dataset is
built, both divided by the label matrix's own bytes, and the seconds it takes.

Baseline, measured in the same run: the per-task storage that a straightforward implementation keeps
(and hydranet kept before): for each task the int64 indices of its labelled samples and an int64 copy of
their labels (``np.flatnonzero`` + ``astype(np.int64)``), 16 bytes a label where the matrix has 1.

Run: ``python benchmarks/labels_memory.py`` (10^7 x 50, a 500 MB matrix: about 2 GB of memory and a
minute), or ``--n 1000000 --tasks 20`` for a quick look. Writes ``benchmarks/results/labels_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, tracemalloc
import numpy as np, torch
from torch.utils.data import TensorDataset
n, k, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import hydranet as hn
rng = np.random.default_rng(0)
Y = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
data = TensorDataset(torch.zeros(n, 1, dtype=torch.uint8), torch.from_numpy(Y))
tasks = [hn.Task(f"t{j}", "binary") for j in range(k)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
start = time.perf_counter()
if mode == "hydranet":
    kept = hn.data.MultiTaskDataset.shared(data, tasks=tasks)
    assert len(kept.task_indices("t0")) == int((Y[:, 0] != -1).sum())
else:  # baseline: int64 indices and int64 labels per task
    kept = {}
    for j in range(k):
        column = Y[:, j]
        index = np.flatnonzero(column != -1)
        kept[j] = (index, column[index].astype(np.int64))
seconds = time.perf_counter() - start
_, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({"peak_traced": peak, "rss_growth": rss, "seconds": seconds, "label_bytes": Y.nbytes}))
"""


def measure(n: int, k: int, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), str(k), mode], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_per_label_byte"] = result["peak_traced"] / result["label_bytes"]
    result["rss_per_label_byte"] = result["rss_growth"] / result["label_bytes"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**7, help="samples (default 10^7)")
    parser.add_argument("--tasks", type=int, default=50, help="binary tasks (default 50)")
    args = parser.parse_args()
    rows = {mode: measure(args.n, args.tasks, mode) for mode in ("hydranet", "baseline")}
    mb = rows["hydranet"]["label_bytes"] / 2**20
    print(f"MultiTaskDataset.shared, {args.n} samples x {args.tasks} binary tasks (int8 labels, {mb:.0f} MiB)")
    print(f"{'':>10}  {'peak/labels':>12}  {'maxrss/labels':>14}  {'seconds':>8}")
    for mode, r in rows.items():
        print(f"{mode:>10}  {r['peak_per_label_byte']:>12.2f}  {r['rss_per_label_byte']:>14.2f}  {r['seconds']:>8.2f}")
    ratio = rows["baseline"]["peak_traced"] / rows["hydranet"]["peak_traced"]
    print(f"peak memory: baseline / hydranet = {ratio:.1f}x")
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "labels_memory.json").write_text(
        json.dumps({"n": args.n, "tasks": args.tasks, "baseline_over_hydranet_peak": ratio, **rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
