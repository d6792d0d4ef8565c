"""HydraNet: one shared backbone, one head per task; the backbone runs once per batch.

.. math:: z = f_\\theta(x), \\qquad \\hat y_t = h_{\\phi_t}(z) \\quad \\text{for each requested task } t

Only the heads of the requested tasks run, so a homogeneous batch (one task) costs one head.
``shared_parameters()`` are :math:`\\theta`, ``task_parameters(t)`` are :math:`\\phi_t`, and
``forward(..., return_features=True)`` also returns :math:`z`, the representation that
representation-level balancing differentiates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hydranet.models.heads import make_head
from hydranet.tasks import Task, as_task_dict

__all__ = ["HydraNet"]


def _feature_size(backbone: nn.Module, feature_dim: int | None, input_shape: Sequence[int] | None) -> int:
    if feature_dim is not None:
        return int(feature_dim)
    for attribute in ("out_features", "feature_dim", "num_features"):
        value = getattr(backbone, attribute, None)
        if isinstance(value, int):
            return value
    if input_shape is None:
        raise ValueError(
            f"Cannot tell the feature size of {type(backbone).__name__}: pass feature_dim=... or "
            "input_shape=(C, H, W) for a dry run."
        )
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.zeros(2, *input_shape))
    backbone.train(was_training)
    if features.ndim != 2:
        raise ValueError(
            f"The backbone returns features of shape {tuple(features.shape)} for input_shape={tuple(input_shape)}; "
            "heads need [batch, features]: end the backbone with pooling and flattening."
        )
    return int(features.shape[1])


class HydraNet(nn.Module):
    """A shared backbone with one head per task.

    Args:
        backbone: maps inputs to features ``[batch, D]``.
        tasks: the tasks (list or mapping of :class:`~hydranet.Task`).
        heads: explicit head modules ``{task: module}`` for some or all tasks.
        head: ``"linear"`` or ``"mlp"``, or ``{task: "linear" | "mlp"}``, for heads built from tasks.
        hidden: hidden sizes of ``mlp`` heads.
        dropout: dropout of ``mlp`` heads.
        feature_dim: the backbone's feature size ``D``, if it has no ``out_features`` attribute.
        input_shape: the shape of one input, to find ``D`` with a dry run.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Iterable[Task] | Mapping[str, Task],
        *,
        heads: Mapping[str, nn.Module] | None = None,
        head: str | Mapping[str, str] = "linear",
        hidden: Sequence[int] | int | None = None,
        dropout: float = 0.0,
        feature_dim: int | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.tasks = as_task_dict(tasks)
        self.backbone = backbone
        self.feature_dim = _feature_size(backbone, feature_dim, input_shape)
        heads = dict(heads or {})
        unknown = set(heads) - set(self.tasks)
        if unknown:
            raise ValueError(f"heads= names unknown task(s) {sorted(unknown)}; tasks are {list(self.tasks)}.")
        hidden_sizes = (hidden,) if isinstance(hidden, int) else tuple(hidden or ())
        self.heads = nn.ModuleDict()
        for name, task in self.tasks.items():
            if name in heads:
                self.heads[name] = heads[name]
                continue
            kind = head.get(name, "linear") if isinstance(head, Mapping) else head
            self.heads[name] = make_head(task, self.feature_dim, kind, hidden_sizes, dropout)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def _requested(self, tasks: Sequence[str] | None) -> list[str]:
        if tasks is None:
            return list(self.tasks)
        unknown = [t for t in tasks if t not in self.heads]
        if unknown:
            raise KeyError(f"Unknown task(s) {unknown}; this model's tasks are {list(self.tasks)}.")
        return list(tasks)

    def heads_from_features(self, features: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Run the heads of ``tasks`` (all by default) on backbone features."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"Heads expect features [batch, {self.feature_dim}], got {tuple(features.shape)}: the backbone's "
                "output size differs from feature_dim."
            )
        return {t: self.heads[t](features) for t in self._requested(tasks)}

    def forward(
        self, x: Any, tasks: Sequence[str] | None = None, return_features: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
        requested = self._requested(tasks)
        features = self.backbone(x)
        outputs = self.heads_from_features(features, requested)
        return (outputs, features) if return_features else outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the backbone (shared by every task)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters of one task's head."""
        self._requested([task])
        return [p for p in self.heads[task].parameters() if p.requires_grad]
