"""Index generation speed and memory of TaskBatchSampler, against two baselines measured in the same run.

Workload: two tasks (70% / 30% of the samples), one task per batch in round robin, batch size 256,
class balancing ``inverse`` inside each task (task ``a``: 90:10 binary, task ``b``: 10 classes with
geometric frequencies), one epoch of as many indices as there are samples.

Baselines:
  (a) per-index Python: alternate tasks batch by batch, ``random.choices`` with precomputed cumulative
      class-balanced weights (one bisection per index);
  (b) ``torch.utils.data.WeightedRandomSampler`` per task (``torch.multinomial``), batched and alternated.
      It refuses more than 2^24 weights (categories); TaskBatchSampler has no such limit.

Run: ``python benchmarks/sampler.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
import tracemalloc

import numpy as np
import torch
from torch.utils.data import BatchSampler, WeightedRandomSampler

from hydranet.data.balance import sample_weights
from hydranet.data.sampler import TaskBatchSampler

from _results import write_results  # benchmarks/_results.py (scripts run from benchmarks/)

BATCH = 256
SIZES = (10**5, 10**6, 10**7)
PYTHON_LIMIT = 2 * 10**5  # indices timed for the slow baseline (its rate is per index)


class Tasks:
    """The sampler's view of a multi-task dataset: index pools and labels, no inputs."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n_a = int(n * 0.7)
        self.n = n
        self.pools = {"a": np.arange(n_a), "b": np.arange(n_a, n)}
        geometric = 0.5 ** np.arange(10)
        self._labels = {
            "a": (rng.random(n_a) < 0.1).astype(np.int64),
            "b": rng.choice(10, size=n - n_a, p=geometric / geometric.sum()),
        }
        self.task_names = ["a", "b"]
        self.tasks = None
        self.is_shared = False

    def task_indices(self, task: str) -> np.ndarray:
        return self.pools[task]

    def labels(self, task: str) -> np.ndarray:
        return self._labels[task]

    def __len__(self) -> int:
        return self.n


def run_sampler(ds: Tasks, balance: str | None) -> tuple[float, float, float, int]:
    """(construction s, epoch s, peak bytes per index while planning, indices)."""
    batches = len(ds) // BATCH
    t0 = time.perf_counter()
    sampler = TaskBatchSampler(ds, BATCH, balance=balance, length=batches)
    t1 = time.perf_counter()
    count = 0
    for batch in sampler:  # plan the epoch and yield python lists, as a DataLoader consumes them
        count += len(batch)
    t2 = time.perf_counter()
    tracemalloc.start()
    sampler.epoch_plan(1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return t1 - t0, t2 - t1, peak / count, count


def run_python(ds: Tasks, n_indices: int) -> float:
    """Seconds for n_indices of the per-index baseline (a)."""
    cums = {}
    for t in ds.task_names:
        w = sample_weights(ds.labels(t), "inverse")
        cums[t] = (ds.task_indices(t).tolist(), list(itertools.accumulate(w.tolist())))
    rnd = random.Random(0)
    t0 = time.perf_counter()
    produced, step = 0, 0
    while produced < n_indices:
        pool, cum = cums[ds.task_names[step % 2]]
        total = cum[-1]
        batch = [pool[bisect.bisect_right(cum, rnd.random() * total)] for _ in range(BATCH)]
        produced += len(batch)
        step += 1
    return time.perf_counter() - t0


def run_torch(ds: Tasks, n_indices: int) -> float:
    """Seconds for n_indices with WeightedRandomSampler per task, alternated batch by batch (b)."""
    t0 = time.perf_counter()
    per_task = n_indices // 2
    iters = []
    for t in ds.task_names:
        w = torch.from_numpy(sample_weights(ds.labels(t), "inverse"))
        generator = torch.Generator().manual_seed(0)
        sampler = WeightedRandomSampler(w, num_samples=per_task, replacement=True, generator=generator)
        iters.append((ds.task_indices(t), iter(BatchSampler(sampler, BATCH, drop_last=False))))
    produced = 0
    for step in itertools.count():
        pool, it = iters[step % 2]
        batch = next(it, None)
        if batch is None:
            break
        produced += len(pool[batch].tolist())
    return time.perf_counter() - t0


def main() -> None:
    print(f"TaskBatchSampler, batch {BATCH}, round robin over 2 tasks, one epoch = as many indices as samples")
    print(f"{'samples':>10} {'balance':>8} {'build s':>8} {'epoch s':>8} {'M idx/s':>8} {'peak B/idx':>10}"
          f" {'python M/s':>10} {'x python':>9} {'torch M/s':>9} {'x torch':>8}")
    rows = []
    for n in SIZES:
        ds = Tasks(n)
        n_py = min(n, PYTHON_LIMIT)
        py_rate = n_py / run_python(ds, n_py)
        torch_rate = n / run_torch(ds, n)
        for balance in ("inverse", None):
            build, epoch, peak, count = run_sampler(ds, balance)
            rate = count / epoch
            print(f"{n:>10,} {str(balance):>8} {build:>8.3f} {epoch:>8.3f} {rate / 1e6:>8.2f} {peak:>10.1f}"
                  f" {py_rate / 1e6:>10.3f} {rate / py_rate:>9.1f} {torch_rate / 1e6:>9.2f} {rate / torch_rate:>8.1f}")
            rows.append({"samples": n, "balance": balance, "build_s": build, "epoch_s": epoch,
                         "peak_bytes_per_index": peak, "x_python": rate / py_rate, "x_torch": rate / torch_rate})
    print("(the baselines draw with class balancing; the balance=None rows shuffle without replacement instead)")

    # WeightedRandomSampler's limit: torch.multinomial takes at most 2^24 categories.
    weights = torch.ones(2**24 + 1)
    try:
        next(iter(WeightedRandomSampler(weights, num_samples=1)))
        print("WeightedRandomSampler accepted 2^24 + 1 weights")
    except RuntimeError as err:
        print(f"WeightedRandomSampler over 2^24 + 1 samples fails: {str(err).splitlines()[0]}")
    big = Tasks(2**24 + 1)
    big.pools = {"a": np.arange(2**24 + 1), "b": big.pools["b"][:1]}
    big._labels = {"a": np.zeros(2**24 + 1, dtype=np.int64), "b": big._labels["b"][:1]}
    t0 = time.perf_counter()
    sampler = TaskBatchSampler(big, BATCH, balance={"a": "inverse"}, length=1000)
    drawn = sum(len(b) for b in sampler)
    print(f"TaskBatchSampler over a task of 2^24 + 1 samples: {drawn:,} balanced indices in "
          f"{time.perf_counter() - t0:.2f} s (construction included)")
    write_results("sampler", {"batch": BATCH, "rows": rows})


if __name__ == "__main__":
    main()
