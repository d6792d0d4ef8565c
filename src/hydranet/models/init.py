r"""Start every head at the best constant prediction for its labels.

A freshly built head outputs about 0. For a regression task in its own units (an age in years, a
price in dollars) that is far from every target, and with Adam a bias moves by about the learning
rate per step, so the first hundreds of steps are spent walking the head to the typical value while
its loss — tens of times the other tasks' — dominates the shared backbone. For a rare class, a 0 logit
says 50%, and the first steps are spent unlearning it (Lin et al., ICCV 2017, initialise the
classifier at the prior for the same reason).

:func:`init_output_bias` sets the bias :math:`b` of each head's final ``nn.Linear`` to the constant
that minimises the task's loss over its labelled samples:

* regression: the median per output with an L1-type loss (``l1``, ``huber``, ``smooth_l1``: the
  median minimises :math:`\sum|y - b|`), the mean with ``mse``;
* binary and multilabel: the log-odds :math:`\log\frac{p}{1-p}` of each label's positive rate;
* multiclass: the log class frequencies :math:`\log p_c` (softmax of them gives :math:`p`).

Rates are smoothed by one sample per class (no infinite logit for a class never seen). Tasks whose
sampler balances their classes (``balance=`` of :class:`~hydranet.data.TaskBatchSampler`) see a
uniform prior, not the dataset's: list them in ``balanced=`` and they start at 0. The weights are
left as they are, so the initial outputs are the constants plus what the random weights add.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from hydranet.tasks import Task

__all__ = ["init_output_bias"]

_MEDIAN_LOSSES = (None, "l1", "huber", "smooth_l1")


def init_output_bias(model: nn.Module, dataset: Any, *, balanced: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Set the final bias of every head of ``model`` from the labels of ``dataset``.

    Args:
        model: a model with ``tasks`` and ``heads`` (:class:`~hydranet.models.HydraNet`, MMoE, PLE, ...).
        dataset: anything with ``labels(task)`` (a :class:`~hydranet.data.MultiTaskDataset`, a reader's
            dataset): the training labels.
        balanced: tasks whose classes the sampler draws equally; they start at the uniform prior.

    Returns:
        ``{task: bias}``, the values written.
    """
    tasks: dict[str, Task] = dict(getattr(model, "tasks", {}))
    heads = getattr(model, "heads", None)
    if not tasks or heads is None:
        raise TypeError(
            f"init_output_bias needs a hydranet model with .tasks and .heads, got {type(model).__name__}."
        )
    balanced = set(balanced)
    unknown = balanced - set(tasks)
    if unknown:
        raise ValueError(f"balanced= names unknown task(s) {sorted(unknown)}; the model's tasks are {sorted(tasks)}.")
    written = {}
    for name, task in tasks.items():
        if task.ragged or callable(task.loss):
            continue  # no closed-form best constant for a ragged target or a user's own loss
        linear = _final_linear(heads[name], task)
        labels = np.asarray(dataset.labels(name))
        if len(labels) == 0:
            raise ValueError(f"Task {name!r} has no labelled sample in the dataset: nothing to set its bias from.")
        bias = _best_constant(task, labels, uniform=name in balanced)
        with torch.no_grad():
            linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
        written[name] = linear.bias.detach().clone()
    return written


def _final_linear(head: nn.Module, task: Task) -> nn.Linear:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1].out_features != task.out_features or linears[-1].bias is None:
        raise ValueError(
            f"The head of task {task.name!r} does not end in an nn.Linear with a bias of {task.out_features} "
            "outputs, so init_output_bias cannot tell which bias to set; set it on your head yourself."
        )
    return linears[-1]


def _best_constant(task: Task, labels: np.ndarray, *, uniform: bool) -> np.ndarray:
    if task.kind == "regression":
        values = labels.astype(np.float64).reshape(len(labels), -1)
        center = np.median if task.loss in _MEDIAN_LOSSES else np.mean
        return center(values, axis=0)
    if uniform:
        return np.zeros(task.out_features)
    if task.kind == "multiclass":
        counts = np.bincount(labels.astype(np.int64), minlength=task.n_classes)
        return np.log((counts + 1.0) / (counts.sum() + task.n_classes))
    positives = labels.astype(np.float64).reshape(len(labels), -1).sum(axis=0)  # binary: one column
    rate = (positives + 1.0) / (len(labels) + 2.0)
    return np.log(rate / (1.0 - rate))
