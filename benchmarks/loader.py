"""DataLoader throughput: MultiTaskDataset + TaskBatchSampler against a plain shuffled DataLoader.

Both read the same tensors: two tasks of 60,000 and 20,000 samples with 64 features and a 10-class
label. The multi-task loader builds homogeneous round-robin batches (``length="all"``, every sample
once, like the baseline's epoch) and collates them with ``hydranet.data.collate``; the baseline is
``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)``. Measured for ``num_workers`` 0 and 2
(persistent workers, so process start-up is not counted), over whole epochs after a warm-up epoch.

Run: ``python benchmarks/loader.py`` (under a minute on 2 cores).
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from hydranet.data import collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler

from _results import write_results  # benchmarks/_results.py (scripts run from benchmarks/)

SIZES = {"digits": 60_000, "fashion": 20_000}
FEATURES = 64
BATCH = 256
EPOCHS = 2


def samples_per_second(loader: DataLoader, epochs: int = EPOCHS) -> float:
    for _ in loader:  # warm-up epoch (workers start, caches fill)
        pass
    count = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            inputs, *_ = batch  # a hydranet Batch or the baseline's [x, y]
            count += len(inputs)
    return count / (time.perf_counter() - t0)


def main() -> None:
    # One intra-op thread, as torch gives each DataLoader worker: small indexing ops on several threads
    # make the num_workers=0 timings erratic on a busy machine.
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    parts = {t: TensorDataset(torch.randn(n, FEATURES, generator=g), torch.randint(0, 10, (n,), generator=g))
             for t, n in SIZES.items()}
    multi = MultiTaskDataset(parts)
    flat = TensorDataset(torch.cat([p.tensors[0] for p in parts.values()]),
                         torch.cat([p.tensors[1] for p in parts.values()]))
    print(f"{sum(SIZES.values()):,} samples, batch {BATCH}, {EPOCHS} timed epochs after one warm-up")
    print(f"{'workers':>7} {'TaskBatchSampler samples/s':>27} {'plain DataLoader samples/s':>27} {'ratio':>6}")
    rows = []
    for workers in (0, 2):
        extra = {"num_workers": workers, "persistent_workers": workers > 0}
        sampler = TaskBatchSampler(multi, BATCH, length="all")
        ours = samples_per_second(DataLoader(multi, batch_sampler=sampler, collate_fn=collate, **extra))
        base = samples_per_second(DataLoader(flat, batch_size=BATCH, shuffle=True, **extra))
        print(f"{workers:>7} {ours:>27,.0f} {base:>27,.0f} {ours / base:>6.2f}")
        rows.append({"workers": workers, "samples_per_s": ours, "plain_samples_per_s": base, "ratio": ours / base})
    sampler = TaskBatchSampler(multi, BATCH, length="all")
    t0 = time.perf_counter()
    n_batches = sum(1 for _ in sampler)
    print(f"(ratio > 1: the multi-task loader is faster. The sampler alone: {n_batches} batches of an epoch in "
          f"{(time.perf_counter() - t0) * 1e3:.1f} ms)")
    write_results("loader", {"samples": sum(SIZES.values()), "batch": BATCH, "rows": rows})


if __name__ == "__main__":
    main()
