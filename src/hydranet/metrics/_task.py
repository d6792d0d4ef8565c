"""Per-task and multi-task metric collections over the labelled samples (torchmetrics, imported lazily)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from hydranet.metrics._specs import METRICS, _OPTIONS, _metric_class, higher_is_better, main_metric, metric_names
from hydranet.tasks import Task, as_task_dict, probabilities

if TYPE_CHECKING:
    from torchmetrics import Metric


__all__ = ["TaskMetrics", "MultiTaskMetrics"]


@lru_cache(maxsize=1)
def _count_class() -> type[Metric]:
    """A metric counting the labelled samples seen (summed across ranks on compute); a class built on
    first use, since torchmetrics is imported lazily."""
    from torchmetrics import Metric

    class _Count(Metric):
        full_state_update = False
        total: Tensor

        def __init__(self) -> None:
            super().__init__(**_OPTIONS)
            self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

        def update(self, n: int) -> None:
            self.total += n

        def compute(self) -> Tensor:
            return self.total

    return _Count


@contextmanager
def _quiet_before_update() -> Iterator[None]:
    # A rank (or task) without samples computes too, since compute is a collective call; torchmetrics
    # warns there that compute came before update, which is expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
        yield


def _confusion(task: Task) -> Metric:
    if task.kind == "binary":
        return _metric_class("classification", "BinaryConfusionMatrix")(**_OPTIONS)
    if task.kind == "multiclass":
        return _metric_class("classification", "MulticlassConfusionMatrix")(num_classes=task.n_classes, **_OPTIONS)
    return _metric_class("classification", "MultilabelConfusionMatrix")(num_labels=task.n_classes, **_OPTIONS)


class TaskMetrics(nn.Module):
    """The metrics of one task, accumulated over labelled samples.

    Args:
        task: the task.
        metrics: registry names; default ``task.metrics`` or the defaults of the kind.
        confusion: also accumulate a confusion matrix (classification tasks).

    Move it with the model (``.to(device)``): outputs, targets and states must share a device.
    """

    def __init__(self, task: Task, metrics: Sequence[str] | None = None, *, confusion: bool = True) -> None:
        super().__init__()
        if not isinstance(task, Task):
            raise TypeError(f"Expected a hydranet.Task, got {type(task).__name__}.")
        self.task = task
        self.names = metric_names(task, metrics)
        # Any: torchmetrics is imported lazily, and nn.Module attribute access types as Tensor | Module
        self.metrics: Any = nn.ModuleDict({name: METRICS[name].build[task.kind](task) for name in self.names})
        self.confusion = _confusion(task) if (confusion and task.is_classification and not task.ragged) else None
        self.count: Any = _count_class()()

    @property
    def main(self) -> tuple[str, bool]:
        """``(name, higher_is_better)`` of the main metric (the first one)."""
        return main_metric(self.task, self.names)

    def _prepare(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Probabilities (classification) or values (regression), and targets, in torchmetrics' shapes."""
        task, n = self.task, target.shape[0]
        output = output.detach().float()
        if output.shape[0] != n:
            raise ValueError(f"Task {task.name!r}: {output.shape[0]} outputs for {n} targets.")
        if task.kind == "regression":
            preds, target = output.reshape(n, -1), target.detach().float().reshape(n, -1)
            if preds.shape != target.shape:
                raise ValueError(
                    f"Task {task.name!r}: outputs of shape {tuple(output.shape)} do not match targets of "
                    f"{target.shape[1]} value(s) per sample; set Task(dim=...) to the target size."
                )
            return (preds.squeeze(1), target.squeeze(1)) if preds.shape[1] == 1 else (preds, target)
        width = output[0].numel() if n else task.out_features
        if width != task.out_features:
            raise ValueError(
                f"Task {task.name!r}: expected {task.out_features} logit(s) per sample, got output shape "
                f"{tuple(output.shape)}."
            )
        if task.kind == "binary":
            return probabilities(task, output.reshape(n)), target.reshape(n).long()
        if task.kind == "multiclass":
            return probabilities(task, output.reshape(n, -1)), target.reshape(n).long()
        return probabilities(task, output.reshape(n, -1)), target.reshape(n, -1).long()

    def update(self, output: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Accumulate one batch; rows where ``mask`` is False are ignored."""
        if not self.names and self.confusion is None:
            return
        if mask is not None:
            mask = mask.to(device=output.device, dtype=torch.bool)
            if not bool(mask.any()):
                return
            output, target = output[mask], target[mask.to(target.device)]
        preds, target = self._prepare(output, target.to(output.device))
        for metric in self.metrics.values():
            metric.update(preds, target)
        if self.confusion is not None:
            self.confusion.update(preds, target)
        self.count.update(target.shape[0])

    def _global_count(self) -> int:
        with _quiet_before_update():
            return int(self.count.compute())

    def _shape_states(self) -> None:
        """On a rank without samples, give data-shaped states their shape and dtype (see module doc)."""
        if int(self.count.total) > 0:
            return
        task, device = self.task, self.count.total.device
        width = task.out_features
        if task.kind == "binary":
            preds, target = torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device)
        elif task.kind == "multiclass":
            preds, target = torch.empty(0, width, device=device), torch.empty(0, dtype=torch.long, device=device)
        elif task.kind == "multilabel":
            preds, target = torch.empty(0, width, device=device), torch.empty(0, width, dtype=torch.long, device=device)
        else:
            shape = (0,) if width == 1 else (0, width)
            preds, target = torch.empty(shape, device=device), torch.empty(shape, device=device)
        for name, metric in self.metrics.items():
            if METRICS[name].shapes_from_data and not metric.update_called:
                metric.update(preds, target)

    def compute(self) -> dict[str, float]:
        """``{metric: value}`` over all samples seen (on all ranks); ``{}`` if there were none."""
        if self._global_count() == 0:
            return {}
        self._shape_states()
        with _quiet_before_update():
            return {name: float(metric.compute()) for name, metric in self.metrics.items()}

    def confusion_matrix(self) -> np.ndarray | None:
        """Counts, rows = true class, columns = predicted class: ``[C, C]`` (``[2, 2]`` for binary), or
        ``[C, 2, 2]`` per label for multilabel. ``None`` without a confusion matrix or samples."""
        if self.confusion is None or self._global_count() == 0:
            return None
        with _quiet_before_update():
            return self.confusion.compute().cpu().numpy().astype(np.int64)

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        if self.confusion is not None:
            self.confusion.reset()
        self.count.reset()


class MultiTaskMetrics(nn.Module):
    """Metrics of several tasks, fed with the model's outputs and a collated batch.

    Args:
        tasks: the tasks (a list or a ``{name: Task}`` mapping).
        metrics: ``{task: [names]}`` overriding ``Task.metrics`` / the defaults for some tasks.
        confusion: also accumulate confusion matrices of classification tasks.

    Example::

        metrics = MultiTaskMetrics(tasks)
        for inputs, targets, masks in loader:
            metrics.update(model(inputs), targets, masks)
        metrics.compute()   # {"left": {"accuracy": 0.93, "f1": 0.92}, "age": {"mae": 4.1, "rmse": 5.6}}
    """

    def __init__(
        self,
        tasks: Iterable[Task] | Mapping[str, Task],
        metrics: Mapping[str, Sequence[str]] | None = None,
        *,
        confusion: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = as_task_dict(tasks)
        metrics = dict(metrics or {})
        unknown = sorted(set(metrics) - set(self.tasks))
        if unknown:
            raise ValueError(f"metrics= names unknown task(s) {unknown}; tasks are {sorted(self.tasks)}.")
        self.per_task: Any = nn.ModuleDict(
            {name: TaskMetrics(task, metrics.get(name), confusion=confusion) for name, task in self.tasks.items()}
        )

    def __getitem__(self, task: str) -> TaskMetrics:
        return self.per_task[task]

    def update(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Any] | Any,
        masks: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Accumulate one batch.

        Args:
            outputs: ``{task: output}`` of the model (logits for classification).
            targets: ``{task: targets [B, ...]}`` of a :class:`~hydranet.data.Batch`, or the batch itself.
            masks: ``{task: bool [B]}``; a task without a mask counts every row as labelled.

        Tasks missing from ``outputs`` or ``targets``, or without a labelled row, are skipped; outputs
        of tasks this object does not track are ignored.
        """
        if hasattr(targets, "masks") and hasattr(targets, "targets"):  # a Batch
            targets, masks = targets.targets, targets.masks if masks is None else masks
        masks = masks or {}
        for name, task_metrics in self.per_task.items():
            if name in outputs and name in targets:
                task_metrics.update(outputs[name], targets[name], masks.get(name))

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}``; tasks without any labelled sample (on any rank) are left out."""
        results = {name: tm.compute() for name, tm in self.per_task.items()}
        return {name: values for name, values in results.items() if values}

    def confusion_matrices(self) -> dict[str, np.ndarray]:
        """``{task: counts}`` of classification tasks with samples (see :meth:`TaskMetrics.confusion_matrix`)."""
        matrices = {name: tm.confusion_matrix() for name, tm in self.per_task.items()}
        return {name: m for name, m in matrices.items() if m is not None}

    def main_metrics(self) -> dict[str, tuple[str, bool]]:
        """``{task: (main metric, higher_is_better)}`` for tasks with metrics."""
        return {name: tm.main for name, tm in self.per_task.items() if tm.names}

    def higher_is_better(self) -> dict[str, dict[str, bool]]:
        """``{task: {metric: higher_is_better}}``, the shape :func:`delta_m` accepts."""
        return {name: {m: higher_is_better(m) for m in tm.names} for name, tm in self.per_task.items() if tm.names}

    def reset(self) -> None:
        for task_metrics in self.per_task.values():
            task_metrics.reset()
