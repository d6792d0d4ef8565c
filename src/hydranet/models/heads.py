"""Heads built from a :class:`~hydranet.Task`: output size from its kind and classes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hydranet.tasks import Task

__all__ = ["make_head"]


def make_head(task: Task, in_features: int, kind: str = "linear", hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Module:
    """A ``linear`` head, or an ``mlp`` head (``hidden`` sizes, ReLU, dropout) ending in ``task.out_features``."""
    if kind == "linear":
        return nn.Linear(in_features, task.out_features)
    if kind != "mlp":
        raise ValueError(f"Task {task.name!r}: unknown head {kind!r}; use 'linear', 'mlp' or pass a module.")
    if not hidden:
        raise ValueError(f"Task {task.name!r}: an 'mlp' head needs hidden sizes, e.g. hidden=(128,).")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    layers.append(nn.Linear(width, task.out_features))
    return nn.Sequential(*layers)
