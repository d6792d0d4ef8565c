"""Tasks: the vocabulary every other module speaks.

A :class:`Task` names one prediction problem and fixes what its targets look like:

============  ==========================  ===========================  =====================
kind          target per sample           model output per sample      missing label
============  ==========================  ===========================  =====================
regression    float, or ``dim`` floats    ``dim`` floats               ``None`` or NaN
binary        0 or 1                      1 logit                      ``None`` or -1
multiclass    int in ``[0, num_classes)``  ``num_classes`` logits       ``None`` or -1
multilabel    ``num_classes`` 0/1 values  ``num_classes`` logits       ``None`` (all -1 too)
============  ==========================  ===========================  =====================

Targets whose shape varies from sample to sample (boxes, landmarks) are *ragged*: declare
``ragged=True`` and they are collated as a list of tensors.

Per kind, the output activation maps a model's raw outputs to what they mean (:func:`probabilities`):
the sigmoid for binary and multilabel logits, the softmax over the last axis for multiclass logits,
the identity for regression values. Metrics and predictions both go through it. :class:`TaskDict`
holds one module per task (heads, gates, losses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["KINDS", "MISSING_INT", "Task", "TaskDict", "TaskKind", "as_task_dict", "probabilities"]

TaskKind = Literal["regression", "binary", "multiclass", "multilabel"]
KINDS: tuple[str, ...] = ("regression", "binary", "multiclass", "multilabel")

#: Integer label that marks "no label for this task" in classification label columns.
MISSING_INT = -1


@dataclass(frozen=True)
class Task:
    """One task of a multi-task model.

    Args:
        name: unique identifier, used as the key of targets, outputs, losses and metrics.
        kind: ``"regression"``, ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_classes: number of classes (``multiclass``, at least 2) or of labels (``multilabel``,
            at least 1). Not used by ``regression``; ``binary`` accepts ``None`` or 2.
        dim: output size of a ``regression`` task (default 1).
        loss: ``None`` for the default of the kind, a loss name understood by
            :mod:`hydranet.losses`, or a callable ``loss(output, target) -> scalar``.
        loss_options: keyword arguments of the named loss (``class_weights``, ``label_smoothing``,
            ``focal_gamma``, ...).
        metrics: metric names for this task; ``None`` takes the defaults of the kind.
        class_names: human-readable names of the classes, index-aligned.
        ragged: the targets have a per-sample shape (e.g. a variable number of boxes).
        weight: static weight of this task's loss for the ``static`` weighting.
    """

    name: str
    kind: TaskKind
    num_classes: int | None = None
    dim: int | None = None
    loss: str | Callable[..., Any] | None = None
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    metrics: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    ragged: bool = False
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.isidentifier():
            raise ValueError(
                f"Task name {self.name!r} is not valid: use a non-empty identifier such as 'age' or 'left_digit'."
            )
        if self.kind not in KINDS:
            raise ValueError(f"Task {self.name!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}.")
        if self.kind == "multiclass":
            if self.num_classes is None or int(self.num_classes) < 2:
                raise ValueError(
                    f"Task {self.name!r}: a multiclass task needs num_classes >= 2, got {self.num_classes!r}."
                )
        elif self.kind == "multilabel":
            if self.num_classes is None or int(self.num_classes) < 1:
                raise ValueError(
                    f"Task {self.name!r}: a multilabel task needs num_classes >= 1 (the number of labels), "
                    f"got {self.num_classes!r}."
                )
        elif self.kind == "binary":
            if self.num_classes not in (None, 2):
                raise ValueError(
                    f"Task {self.name!r}: a binary task has 2 classes; got num_classes={self.num_classes!r}. "
                    "Use kind='multiclass' for more."
                )
        elif self.num_classes is not None:
            raise ValueError(
                f"Task {self.name!r}: a regression task has no classes; use dim= for several outputs."
            )
        if self.dim is not None and (self.kind != "regression" or int(self.dim) < 1):
            raise ValueError(f"Task {self.name!r}: dim applies to regression tasks only and must be >= 1.")
        if self.class_names is not None:
            # one form, so that a task read back from a checkpoint or config (lists) equals the original
            object.__setattr__(self, "class_names", list(self.class_names))
        if self.class_names is not None and len(self.class_names) != self.n_classes:
            raise ValueError(
                f"Task {self.name!r}: {len(self.class_names)} class names for {self.n_classes} classes."
            )
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"Task {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}.")
        object.__setattr__(self, "loss_options", dict(self.loss_options))

    @property
    def n_classes(self) -> int:
        """Number of classes of a classification task (2 for binary), 0 for regression."""
        if self.kind == "binary":
            return 2
        if self.kind == "regression":
            return 0
        return int(self.num_classes)  # type: ignore[arg-type]

    @property
    def out_features(self) -> int:
        """Size of the model output for this task: logits, or regression values."""
        if self.kind == "regression":
            return int(self.dim or 1)
        if self.kind == "binary":
            return 1
        return int(self.num_classes)  # type: ignore[arg-type]

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-friendly description (a callable loss is stored by name only)."""
        loss = self.loss if (self.loss is None or isinstance(self.loss, str)) else getattr(self.loss, "__name__", "custom")
        return {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "dim": self.dim,
            "loss": loss,
            "loss_options": dict(self.loss_options),
            "metrics": list(self.metrics) if self.metrics is not None else None,
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "ragged": self.ragged,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Task:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"Unknown task field(s) {sorted(unknown)}; allowed: {sorted(known)}.")
        return cls(**spec)


def as_task_dict(tasks: Iterable[Task] | Mapping[str, Task]) -> dict[str, Task]:
    """Normalise a list or mapping of tasks to ``{name: task}``, rejecting duplicates and empties."""
    if isinstance(tasks, Mapping):
        items = list(tasks.values())
    elif isinstance(tasks, Task):
        items = [tasks]
    else:
        items = list(tasks)
    if not items:
        raise ValueError("No tasks given: pass at least one hydranet.Task.")
    out: dict[str, Task] = {}
    for task in items:
        if not isinstance(task, Task):
            raise TypeError(f"Expected hydranet.Task objects, got {type(task).__name__}: {task!r}.")
        if task.name in out:
            raise ValueError(f"Duplicate task name {task.name!r}: task names must be unique.")
        out[task.name] = task
    return out


def probabilities(task: Task, outputs: Tensor) -> Tensor:
    r"""The output activation of ``task``'s kind applied to raw outputs ``[N, K]`` (or ``[N]``):
    :math:`\sigma(z)` for binary and multilabel, :math:`\mathrm{softmax}(z)` over the last axis for
    multiclass, the values themselves for regression."""
    if task.kind == "multiclass":
        return torch.softmax(outputs, dim=-1)
    if task.kind in ("binary", "multilabel"):
        return torch.sigmoid(outputs)
    return outputs


class TaskDict(nn.ModuleDict):
    """An ``nn.ModuleDict`` keyed by task name; any identifier is a valid key (``"type"`` included).

    ``nn.ModuleDict`` refuses names such as ``"type"`` or ``"train"`` because they shadow ``nn.Module``
    attributes; modules are stored under their task name, so state-dict keys read ``heads.type.weight``.
    """

    def __setitem__(self, key: str, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"Expected an nn.Module for task {key!r}, got {type(module).__name__}.")
        # nn.ModuleDict.add_module rejects names of Module attributes; item access never needs them.
        self._modules[key] = module
