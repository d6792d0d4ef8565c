"""``hydranet bench``: loader and balancer throughput on this machine, as ratios to plain PyTorch.

A quick check of an installation; ``benchmarks/`` in the source tree holds the full benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from hydranet.balancing import make
from hydranet.data import collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler

__all__ = ["run_bench"]


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _bench_sampler(n: int) -> tuple[float, float]:
    """Seconds for one class-balanced epoch of ``n`` indices: hydranet, WeightedRandomSampler."""
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, generator=g) < 0.05).long()
    parts = {"common": TensorDataset(torch.zeros(n, 1), labels), "rare": TensorDataset(torch.zeros(n, 1), labels)}
    ds = MultiTaskDataset(parts)
    sampler = TaskBatchSampler(ds, batch_size=256, balance="inverse", length=2 * n // 256)
    counts = torch.bincount(labels)
    weights = (1.0 / counts.double())[labels]
    baseline = WeightedRandomSampler(weights.tolist(), num_samples=n, replacement=True, generator=g)
    ours = _best_of(lambda: sum(1 for _ in sampler), 3)
    theirs = _best_of(lambda: sum(1 for _ in baseline), 1) * 2  # two tasks' worth of indices
    return ours, theirs


def _bench_loader(n: int) -> tuple[float, float]:
    """Samples per second: MultiTaskDataset + TaskBatchSampler, and a plain shuffled DataLoader."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    half = n // 2
    ds = MultiTaskDataset({"a": TensorDataset(x[:half], y[:half]), "b": TensorDataset(x[half:], y[half:])})
    ours = DataLoader(ds, batch_sampler=TaskBatchSampler(ds, 256, length="all"), collate_fn=collate)
    plain = DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)
    return n / _best_of(lambda: sum(1 for _ in ours), 3), n / _best_of(lambda: sum(1 for _ in plain), 3)


def _bench_balancer(name: str, n_tasks: int) -> float:
    """Time of one balanced backward over the plain summed-loss backward, on an MLP."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(128, 1) for _ in range(n_tasks))
    x = torch.randn(64, 32)
    names = [f"t{k}" for k in range(n_tasks)]
    balancer = make(name, names)
    shared = list(backbone.parameters())
    task_params = {t: list(h.parameters()) for t, h in zip(names, heads)}

    def losses() -> dict[str, torch.Tensor]:
        z = backbone(x)
        return {t: h(z).square().mean() for t, h in zip(names, heads)}

    plain = _best_of(lambda: sum(losses().values()).backward(), 5)  # type: ignore[union-attr]
    ours = _best_of(lambda: balancer.backward(losses(), shared, task_params), 5)
    return ours / plain


def run_bench(quick: bool = False) -> None:
    n = 200_000 if quick else 2_000_000
    ours, theirs = _bench_sampler(n)
    print(f"sampler: class-balanced epoch of {2 * n:,} indices in {ours:.3f} s; "
          f"WeightedRandomSampler {theirs:.3f} s -> {theirs / ours:.1f}x faster")
    ours, plain = _bench_loader(40_000 if quick else 200_000)
    print(f"loader: {ours:,.0f} samples/s vs plain DataLoader {plain:,.0f} samples/s -> {ours / plain:.2f}x")
    for name in ("ew", "uw", "pcgrad", "mgda", "upgrad", "nash_mtl"):
        print(f"balancer {name:>9}, 10 tasks: {_bench_balancer(name, 10):.1f}x the plain summed-loss backward")
