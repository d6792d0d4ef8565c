"""Evaluation and prediction over a loader, through a :class:`~hydranet.train.step.Step`'s model and autocast.

Under DDP the batches go through the module inside the wrapper: evaluation needs no gradient
all-reduce, so ranks may run different numbers of batches; losses and metrics are reduced over the
ranks at the end (collective calls: every rank evaluates). Prediction is per rank, without collectives.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from hydranet.data import Batch
from hydranet.metrics import MultiTaskMetrics
from hydranet.tasks import probabilities
from hydranet.train.loaders import as_batch, inputs_of, move_to
from hydranet.train.step import Step

__all__ = ["evaluate_loader", "predict_loader"]


@torch.no_grad()
def evaluate_loader(
    step: Step, metrics: MultiTaskMetrics, loader: Iterable[Any]
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, np.ndarray]]:
    """Scores, per-task losses (mean over labelled samples) and confusion matrices over ``loader``."""
    model = step.model
    was_training = model.training
    model.eval()
    metrics.reset()
    names = list(step.tasks)
    sums = torch.zeros(len(names), dtype=torch.float64, device=step.device)
    counts = torch.zeros(len(names), dtype=torch.float64, device=step.device)
    try:
        for raw in loader:
            batch = as_batch(raw).to(step.device, non_blocking=True)
            tasks = [t for t in batch.tasks if t in step.tasks]
            if not tasks:
                continue
            outputs = {t: o.float() for t, o in step.forward(step.core, batch, tasks).items()}
            for task, value in step.loss_fn(outputs, batch.targets, batch.masks).items():
                if task in step.tasks:
                    i = names.index(task)
                    n = batch.masks[task].sum()
                    sums[i] += value.detach().double() * n
                    counts[i] += n
            metrics.update(outputs, batch.targets, batch.masks)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        scores = metrics.compute()
        confusion = metrics.confusion_matrices()
    finally:
        model.train(was_training)
    means = (sums / counts.clamp(min=1)).tolist()
    losses = {t: means[i] for i, t in enumerate(names) if counts[i] > 0}
    return scores, losses, confusion


@torch.no_grad()
def predict_loader(
    step: Step, loader: Iterable[Any], *, return_logits: bool = False, return_indices: bool = False
) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
    """Predictions of every task for every sample of ``loader``, in order, on the CPU (see
    :meth:`hydranet.train.Trainer.predict`)."""
    model = step.model
    was_training = model.training
    model.eval()
    names = list(step.tasks)
    collected: dict[str, list[Tensor]] = {t: [] for t in names}
    indices: list[Tensor] = []
    try:
        for raw in loader:
            inputs = move_to(inputs_of(raw), step.device)
            outputs = step.forward(step.core, Batch(inputs, {}, {}), names)
            for task in names:
                value = outputs[task].float()
                if not return_logits:
                    value = probabilities(step.tasks[task], value)
                collected[task].append(value.cpu())
            if return_indices:
                if not isinstance(raw, Batch) or raw.indices is None:
                    raise ValueError(
                        "return_indices=True needs Batches that carry dataset indices (MultiTaskDataset with "
                        "TensorDatasets builds them); this loader's batches have none."
                    )
                indices.append(raw.indices.cpu())
    finally:
        model.train(was_training)
    predictions = {t: torch.cat(v) if v else torch.empty(0) for t, v in collected.items()}
    if return_indices:
        return predictions, torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
    return predictions
