"""The metric registry: which torchmetrics class each name builds, its direction, each kind's defaults."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hydranet.tasks import Task

if TYPE_CHECKING:
    from torchmetrics import Metric


__all__ = ["METRICS", "DEFAULT_METRICS", "MetricSpec", "higher_is_better", "metric_names", "main_metric"]


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
