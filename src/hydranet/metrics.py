r"""Per-task metrics (on torchmetrics) and the multi-task score :math:`\Delta_m`.

**Metrics.** :class:`MultiTaskMetrics` keeps one :class:`TaskMetrics` per task. ``update(outputs,
targets, masks)`` takes the model's raw outputs (logits: :func:`hydranet.tasks.probabilities` maps them) and a
collated batch's targets and masks, and accumulates over the labelled samples only; ``compute()``
returns ``{task: {metric: float}}``. Metric names come from one registry, :data:`METRICS`, with the same
meaning for every task kind:

==========  ===================================================  =============================
name        binary / multiclass / multilabel                     regression
==========  ===================================================  =============================
accuracy    fraction correct (micro) / per-label mean (macro)    -
f1          F1 of class 1 / macro over classes / macro           -
precision   like f1                                              -
recall      like f1                                              -
auroc       ROC AUC / macro one-vs-rest / macro over labels      -
ap          average precision, averaged like auroc               -
mae         -                                                    mean absolute error
mse         -                                                    mean squared error
rmse        -                                                    root mean squared error
r2          -                                                    R², averaged over outputs
==========  ===================================================  =============================

(binary and multilabel predictions are thresholded at probability 0.5.) ``auroc`` and ``ap`` are exact:
they keep every prediction of the epoch.

**Distributed.** Every state is a torchmetrics state, so ``compute()`` all-gathers and reduces each
state when ``torch.distributed`` is initialised (sums for counts, concatenation for the kept
predictions): ``compute()`` and ``confusion_matrices()`` are collective calls, every rank calls them.
A rank that saw no labelled sample of a task still takes part: its states are given their shape with
an empty batch first, because torchmetrics would otherwise gather mismatched shapes.

**Δm.** For tasks (or metrics) :math:`k = 1..K` with multi-task score :math:`M_k`, single-task baseline
:math:`B_k` and :math:`s_k = 1` if lower is better (else 0),

.. math:: \Delta_m = \frac{100}{K} \sum_{k=1}^{K} (-1)^{s_k} \frac{M_k - B_k}{|B_k|}  \quad [\%]

(Maninis et al., 2019; Liu et al., 2021). Positive means the multi-task model is better on average.
See :func:`delta_m` for how several metrics per task are averaged.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from typing import TYPE_CHECKING

from hydranet.tasks import Task, as_task_dict, probabilities

if TYPE_CHECKING:
    from torchmetrics import Metric

__all__ = [
    "METRICS",
    "DEFAULT_METRICS",
    "MetricSpec",
    "higher_is_better",
    "metric_names",
    "main_metric",
    "TaskMetrics",
    "MultiTaskMetrics",
    "relative_change",
    "delta_m",
]


@dataclass(frozen=True)
class MetricSpec:
    """A metric of the registry.

    Attributes:
        name: registry name.
        higher_is_better: direction, read from torchmetrics' ``higher_is_better`` class attribute.
        build: ``{kind: factory(task) -> torchmetrics.Metric}`` for the kinds the metric supports.
        shapes_from_data: the states take their shape from the data (kept predictions, or per-output
            sums), so a rank without samples must be fed an empty batch before a distributed compute.
    """

    name: str
    higher_is_better: bool
    build: Mapping[str, Callable[[Task], Metric]]
    shapes_from_data: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.build)


# Without the cache, every compute() synchronises on every rank. With it, a rank that fed a new batch
# since its last compute would synchronise while another returned its cached value: a hang.
_OPTIONS: dict[str, Any] = {"compute_with_cache": False}


def _metric_class(module: str, name: str) -> type[Metric]:
    """A torchmetrics class by name, imported on first use: torchmetrics imports matplotlib and more
    at import time, which ``import hydranet`` should not pay for."""
    return getattr(importlib.import_module(f"torchmetrics.{module}"), name)


def _classification(
    name: str, higher: bool, classes: str, *, micro: bool = False, shapes_from_data: bool = False
) -> MetricSpec:
    # Multiclass accuracy is the plain fraction of correct predictions (micro); every other
    # multiclass / multilabel score is the unweighted mean over classes (macro).
    mc_average = "micro" if micro else "macro"
    cls = lambda prefix: _metric_class("classification", prefix + classes)  # noqa: E731
    return MetricSpec(
        name=name,
        higher_is_better=higher,
        build={
            "binary": lambda task: cls("Binary")(**_OPTIONS),
            "multiclass": lambda task: cls("Multiclass")(num_classes=task.n_classes, average=mc_average, **_OPTIONS),
            "multilabel": lambda task: cls("Multilabel")(num_labels=task.n_classes, average="macro", **_OPTIONS),
        },
        shapes_from_data=shapes_from_data,
    )


def _regression(name: str, higher: bool, cls: str, shapes_from_data: bool = False, **options: Any) -> MetricSpec:
    return MetricSpec(
        name=name,
        higher_is_better=higher,
        build={"regression": lambda task: _metric_class("regression", cls)(**options, **_OPTIONS)},
        shapes_from_data=shapes_from_data,
    )


#: The metric registry: ``{name: MetricSpec}``. The directions are torchmetrics' ``higher_is_better``
#: class attributes (a test checks that they agree).
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        _classification("accuracy", True, "Accuracy", micro=True),
        _classification("f1", True, "F1Score"),
        _classification("precision", True, "Precision"),
        _classification("recall", True, "Recall"),
        _classification("auroc", True, "AUROC", shapes_from_data=True),
        _classification("ap", True, "AveragePrecision", shapes_from_data=True),
        _regression("mae", False, "MeanAbsoluteError"),
        _regression("mse", False, "MeanSquaredError"),
        _regression("rmse", False, "MeanSquaredError", squared=False),
        # R² keeps one sum per output, shaped by the first update.
        _regression("r2", True, "R2Score", shapes_from_data=True),
    )
}

#: Metrics of each kind when a task names none; the first is the task's main metric.
#: Binary and multilabel tasks lead with F1: their labels are often imbalanced, and accuracy then
#: rewards predicting the majority (0.9 for a constant "no" on a 1:9 task).
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "multiclass": ("accuracy", "f1"),
    "binary": ("f1", "accuracy", "auroc"),
    "multilabel": ("f1", "accuracy", "auroc"),
    "regression": ("mae", "rmse"),
}


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the registry metric ``name`` is better."""
    return _spec(name).higher_is_better


def _spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(METRICS)}.")
    return METRICS[name]


def metric_names(task: Task, metrics: Sequence[str] | None = None) -> tuple[str, ...]:
    """The validated metric names of ``task``: ``metrics``, else ``task.metrics``, else the defaults
    of its kind (none for a ragged task)."""
    names = metrics if metrics is not None else task.metrics
    if names is None:
        return () if task.ragged else DEFAULT_METRICS[task.kind]
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    if task.ragged and names:
        raise ValueError(
            f"Task {task.name!r} has ragged targets, which no registry metric reads; "
            "give it metrics=[] and evaluate it with your own code."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"Task {task.name!r}: metric names repeat in {list(names)}.")
    for name in names:
        spec = _spec(name)
        if task.kind not in spec.kinds:
            usable = [m for m, s in METRICS.items() if task.kind in s.kinds]
            raise ValueError(
                f"Metric {name!r} does not apply to {task.kind} task {task.name!r}; use one of {', '.join(usable)}."
            )
    return names


def main_metric(task: Task, metrics: Sequence[str] | None = None) -> tuple[str, bool]:
    """``(name, higher_is_better)`` of the metric used for Δm and early stopping by default.

    It is the first of the task's metrics: of ``metrics`` or ``task.metrics`` when given, else of
    :data:`DEFAULT_METRICS`: accuracy (multiclass), F1 (binary; macro F1 for multilabel), MAE
    (regression).
    """
    names = metric_names(task, metrics)
    if not names:
        raise ValueError(f"Task {task.name!r} has no metric, hence no main metric; give it metrics=[...].")
    return names[0], higher_is_better(names[0])


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


# ----------------------------------------------------------------------------------------------- Δm

Key = tuple[str, "str | None"]


def _check_value(value: Any, what: str, key: Key) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} of {_show(key)} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} of {_show(key)} is {number}; Δm needs finite scores and baselines.")
    return number


def _show(key: Key) -> str:
    return key[0] if key[1] is None else f"{key[0]}/{key[1]}"


def _flatten(values: Mapping[Any, Any], what: str) -> dict[Key, Any]:
    """``{task: v}``, ``{(task, metric): v}``, ``{"task/metric": v}`` or ``{task: {metric: v}}`` ->
    ``{(task, metric or None): v}``."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(values).__name__}.")
    flat: dict[Key, Any] = {}
    for key, value in values.items():
        items: list[tuple[Key, Any]]
        if isinstance(value, Mapping):
            if not isinstance(key, str):
                raise TypeError(f"{what}: nested mappings must be keyed by task name, got {key!r}.")
            items = [((key, str(metric)), v) for metric, v in value.items()]
        elif isinstance(key, tuple) and len(key) == 2:
            items = [((str(key[0]), str(key[1])), value)]
        elif isinstance(key, str):
            task, sep, metric = key.partition("/")
            items = [((task, metric if sep else None), value)]
        else:
            raise TypeError(f"{what}: keys must be task names, 'task/metric' strings or (task, metric) pairs; got {key!r}.")
        for flat_key, v in items:
            if flat_key in flat:
                raise ValueError(f"{what}: {_show(flat_key)} is given twice.")
            flat[flat_key] = v
    return flat


def _direction(hib: Mapping[Key, Any] | bool | None, key: Key) -> bool:
    if isinstance(hib, bool):
        return hib
    if hib is None:
        if key[1] is None:
            raise ValueError(
                f"Cannot tell whether higher is better for task {key[0]!r} (no metric name): pass "
                "higher_is_better={task: bool} or key the scores by 'task/metric'."
            )
        return higher_is_better(key[1])
    if key not in hib:
        raise ValueError(f"higher_is_better has no entry for {_show(key)}.")
    value = hib[key]
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"higher_is_better of {_show(key)} must be a bool, got {value!r}.")
    return bool(value)


def relative_change(score: float, baseline: float, higher_is_better: bool) -> float:
    r"""Signed relative improvement over a baseline, in percent:
    :math:`100 \cdot (-1)^{s} (M - B) / |B|`, with :math:`s = 1` when lower is better.

    Positive means better than the baseline. Raises if the baseline is 0 (undefined) or a value is
    not finite.
    """
    key: Key = ("score", None)
    score, baseline = _check_value(score, "score", key), _check_value(baseline, "baseline", key)
    return _relative(score, baseline, bool(higher_is_better), key)


def _relative(score: float, baseline: float, hib: bool, key: Key) -> float:
    if baseline == 0:
        raise ValueError(
            f"The baseline of {_show(key)} is 0, so its relative change is undefined. Use a metric whose "
            "baseline is not 0 for Δm (e.g. accuracy or AUROC instead of an F1 of 0, RMSE instead of an "
            "error of exactly 0), or leave this entry out of the baselines."
        )
    change = (score - baseline) / abs(baseline) * 100.0
    return change if hib else -change


def delta_m(
    scores: Mapping[Any, Any],
    baselines: Mapping[Any, Any],
    higher_is_better: Mapping[Any, Any] | bool | None = None,
    *,
    per: Literal["task", "metric"] = "task",
) -> float:
    r"""The multi-task score :math:`\Delta_m`, in percent (positive: better than the baselines).

    .. math:: \Delta_m = \frac{100}{K} \sum_{k=1}^{K} (-1)^{s_k} \frac{M_k - B_k}{|B_k|}

    with :math:`s_k = 1` if lower is better for entry :math:`k`, else 0 (:math:`|B_k| = B_k` for the
    usual positive scores; the absolute value keeps "better" positive for a negative R² baseline).

    Args:
        scores: multi-task scores :math:`M`. Keys are task names (one number per task, e.g. its main
            metric), or ``(task, metric)`` pairs, or ``"task/metric"`` strings; ``{task: {metric: v}}``
            (what :meth:`MultiTaskMetrics.compute` returns) is read as ``(task, metric)`` pairs.
        baselines: single-task scores :math:`B`, keyed the same way. Δm is over the entries of
            ``baselines``; each must be in ``scores`` (extra scores are ignored).
        higher_is_better: one bool for all entries, or a mapping keyed like ``baselines``; ``None``
            reads it from the metric registry by metric name (needs metric-keyed entries).
        per: how entries are averaged when a task has several metrics.

            * ``"task"`` (hydranet's default): average each task's relative changes first, then average
              over tasks, so every task counts the same however many metrics it reports.
            * ``"metric"``: one plain average over all (task, metric) entries, the per-metric average
              of Maninis et al. (2019) and Liu et al. (2021), where a task with more metrics weighs more.

            With one metric per task both are equal. Example: task ``a`` with one metric at +6% and
            task ``b`` with three metrics at -2% each: ``per="task"`` gives (6 + (-2)) / 2 = +2%,
            ``per="metric"`` gives (6 - 2 - 2 - 2) / 4 = 0%.

    Raises:
        ValueError: a baseline is 0 (relative change undefined), a baseline entry is missing from
            ``scores`` or from ``higher_is_better``, a value is NaN or infinite, or there are no baselines.
    """
    if per not in ("task", "metric"):
        raise ValueError(f"per must be 'task' or 'metric', got {per!r}.")
    flat_baselines = _flatten(baselines, "baselines")
    if not flat_baselines:
        raise ValueError("baselines is empty: give at least one task's single-task score.")
    flat_scores = _flatten(scores, "scores")
    missing = [_show(k) for k in flat_baselines if k not in flat_scores]
    if missing:
        have = ", ".join(sorted(_show(k) for k in flat_scores))
        raise ValueError(f"scores lack {missing}, which baselines give; scores have: {have}.")
    hib = higher_is_better if isinstance(higher_is_better, bool) or higher_is_better is None else _flatten(
        higher_is_better, "higher_is_better"
    )

    changes: dict[Key, float] = {}
    for key, baseline in flat_baselines.items():
        b = _check_value(baseline, "the baseline", key)
        m = _check_value(flat_scores[key], "the score", key)
        changes[key] = _relative(m, b, _direction(hib, key), key)
    if per == "metric":
        return float(np.mean(list(changes.values())))
    by_task: dict[str, list[float]] = {}
    for (task, _), change in changes.items():
        by_task.setdefault(task, []).append(change)
    return float(np.mean([np.mean(values) for values in by_task.values()]))
