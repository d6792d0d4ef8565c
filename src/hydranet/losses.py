"""Task losses over the labelled samples of a batch.

Default loss per kind: regression L1 (``loss="mse"``, ``"huber"``, ``"smooth_l1"`` also), binary and
multilabel BCE-with-logits, multiclass cross-entropy. Options come from ``Task.loss_options``:
``class_weights`` (multiclass), ``pos_weight`` (binary, multilabel), ``label_smoothing``
(multiclass), and ``loss="focal"`` with ``gamma`` (default 2) and optional ``alpha``:

.. math:: \\mathrm{FL}(p_t) = -\\alpha_t (1 - p_t)^{\\gamma} \\log p_t

A callable ``Task.loss(output, target) -> scalar`` replaces the default (ragged tasks get the list of
labelled targets).

:class:`MultiTaskLoss` returns ``{task: loss}`` for the tasks with at least one labelled sample; a
task with none is absent — never a NaN, never a zero that drags averages down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hydranet.tasks import Task, as_task_dict

__all__ = ["MultiTaskLoss", "task_loss", "focal_loss"]

REGRESSION_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss, "huber": F.huber_loss, "smooth_l1": F.smooth_l1_loss}


def focal_loss(logits: Tensor, target: Tensor, kind: str, gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Focal loss (Lin et al., ICCV 2017), mean over samples (and labels for multilabel)."""
    if kind == "multiclass":
        log_p = F.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        weight = 1.0 if alpha is None else alpha
    else:
        log_p = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weight = 1.0 if alpha is None else torch.where(target > 0.5, alpha, 1 - alpha)
    p = log_p.exp()
    return (-weight * (1 - p) ** gamma * log_p).mean()


def _check_options(task: Task, allowed: set[str]) -> dict[str, Any]:
    unknown = set(task.loss_options) - allowed
    if unknown:
        raise ValueError(
            f"Task {task.name!r}: unknown loss option(s) {sorted(unknown)} for loss {task.loss or 'default'!r}; "
            f"allowed: {sorted(allowed) or 'none'}."
        )
    return dict(task.loss_options)


def task_loss(task: Task) -> Callable[[Tensor, Any], Tensor]:
    """The loss function of one task: ``loss(output_of_labelled_rows, targets_of_labelled_rows)``."""
    if callable(task.loss):
        return task.loss
    name = task.loss
    if name == "focal":
        if task.kind == "regression":
            raise ValueError(f"Task {task.name!r}: focal loss applies to classification tasks, not regression.")
        options = _check_options(task, {"gamma", "alpha"})
        return lambda out, y: focal_loss(out, y, task.kind, **options)
    if task.kind == "regression":
        name = name or "l1"
        if name not in REGRESSION_LOSSES:
            raise ValueError(f"Task {task.name!r}: unknown regression loss {name!r}; choose {sorted(REGRESSION_LOSSES)} or 'focal'.")
        fn = REGRESSION_LOSSES[name]
        options = _check_options(task, {"huber": {"delta"}, "smooth_l1": {"beta"}}.get(name, set()))
        return lambda out, y: fn(out, y, **options)
    if name not in (None, "bce", "cross_entropy"):
        raise ValueError(f"Task {task.name!r}: unknown loss {name!r}; leave it unset, use 'focal', or pass a callable.")
    if task.kind == "multiclass":
        options = _check_options(task, {"class_weights", "label_smoothing"})
        weight = options.get("class_weights")
        weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        if weight is not None and weight.numel() != task.n_classes:
            raise ValueError(f"Task {task.name!r}: {weight.numel()} class_weights for {task.n_classes} classes.")
        smoothing = float(options.get("label_smoothing", 0.0))
        return lambda out, y: F.cross_entropy(
            out, y, weight=None if weight is None else weight.to(out.device, out.dtype), label_smoothing=smoothing
        )
    options = _check_options(task, {"pos_weight"})
    pos_weight = options.get("pos_weight")
    pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
    return lambda out, y: F.binary_cross_entropy_with_logits(
        out, y, pos_weight=None if pos_weight is None else pos_weight.to(out.device, out.dtype)
    )


class MultiTaskLoss:
    """``loss(outputs, targets, masks) -> {task: scalar}`` over the labelled samples of each task.

    Args:
        tasks: the tasks (a list or mapping of :class:`~hydranet.Task`).
        validate: check targets (shape, class range, NaN) before computing; cheap, vectorised.
    """

    def __init__(self, tasks: Iterable[Task] | Mapping[str, Task], *, validate: bool = True) -> None:
        self.tasks = as_task_dict(tasks)
        self.validate = validate
        self._fns = {name: task_loss(task) for name, task in self.tasks.items()}

    def __call__(
        self, outputs: Mapping[str, Tensor], targets: Mapping[str, Any], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for name, output in outputs.items():
            if name not in self.tasks:
                raise KeyError(f"Output for unknown task {name!r}; tasks are {list(self.tasks)}.")
            if name not in masks or not bool(masks[name].any()):
                continue
            mask = masks[name].to(output.device)
            task = self.tasks[name]
            if isinstance(targets[name], list):  # ragged: the labelled targets as a list
                labelled = [t for t, m in zip(targets[name], mask.tolist()) if m]
                losses[name] = self._fns[name](output[mask], labelled)
                continue
            out, y = self._prepare(task, output[mask], targets[name].to(output.device)[mask])
            losses[name] = self._fns[name](out, y)
        return losses

    def _prepare(self, task: Task, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        n = out.shape[0]
        if out.ndim != 2 or out.shape[1] != task.out_features:
            raise ValueError(
                f"Task {task.name!r} ({task.kind}) needs outputs of shape [batch, {task.out_features}], got "
                f"{tuple(out.shape)}: check the head's output size."
            )
        if task.kind == "multiclass":
            y = y.reshape(n)
            if self.validate and (y.is_floating_point() and not torch.equal(y, y.round())):
                raise ValueError(f"Task {task.name!r}: multiclass targets must be class indices, got fractional values.")
            y = y.long()
            if self.validate and bool(((y < 0) | (y >= task.n_classes)).any()):
                bad = y[(y < 0) | (y >= task.n_classes)][0].item()
                raise ValueError(
                    f"Task {task.name!r}: class index {bad} is out of range [0, {task.n_classes}); "
                    "map labels to 0..num_classes-1 or fix num_classes."
                )
            return out, y
        if task.kind == "regression":
            y = y.reshape(n, -1).to(out.dtype)
            if y.shape[1] != out.shape[1]:
                raise ValueError(f"Task {task.name!r}: targets have {y.shape[1]} values per sample, outputs {out.shape[1]}.")
            if self.validate and bool(torch.isnan(y).any()):
                raise ValueError(f"Task {task.name!r}: NaN in targets marked as labelled; mark them missing (NaN rows only).")
            return out, y
        y = y.reshape(n, -1).to(out.dtype)
        if y.shape[1] != out.shape[1]:
            raise ValueError(
                f"Task {task.name!r} ({task.kind}): targets have {y.shape[1]} values per sample, expected {out.shape[1]}."
            )
        if self.validate and bool(((y != 0) & (y != 1)).any()):
            raise ValueError(f"Task {task.name!r} ({task.kind}): targets must be 0 or 1.")
        return out, y
