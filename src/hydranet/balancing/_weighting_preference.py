r"""Preference-conditioned scalarizations of the task losses: COSMOS and PBI (TorchJD's ``scalarization``).

Both are loss weightings (:class:`~hydranet.balancing.weighting.LossWeighting`): a scalar :math:`f` of the
loss values of the tasks present, built like the others (value and gradient of :math:`f`, the same
weights on every rank under DDP). A preference vector :math:`r` (one entry per task) says which trade-off
to aim for; with ``weights=None`` a fresh :math:`r \sim \mathrm{Dirichlet}(\alpha\mathbf 1)` is drawn at
every step (the paper's way to cover the whole Pareto front with one model), from a seeded generator
that is the same on every rank and part of ``state_dict()``. The current preference is
``weighting.preference`` (COSMOS also feeds it to the model as an input; that is the model's business).
With some tasks absent, :math:`r` and :math:`L` are restricted to the present tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hydranet._checks import did_you_mean
from hydranet.balancing._weighting_base import LossWeighting, TaskList

__all__ = ["COSMOS", "PBI"]

# Added under PBI's square root so that its gradient stays finite on the preference ray (TorchJD's value).
_PBI_EPS = 1e-12
# torch.nn.functional.cosine_similarity's floor on |r| |L| (TorchJD's COSMOS calls it).
_COSINE_EPS = 1e-8


class _Preferred(LossWeighting):
    """Holds the preference vector: fixed (``weights``) or drawn per step from a Dirichlet distribution."""

    def __init__(
        self, tasks: TaskList, weights: Mapping[str, float] | Sequence[float] | None, concentration: float, seed: int
    ) -> None:
        super().__init__(tasks)
        label = type(self).__name__
        if not (isinstance(concentration, (int, float)) and math.isfinite(concentration) and concentration > 0):
            raise ValueError(f"{label} concentration (of the Dirichlet preferences) must be > 0, got {concentration!r}.")
        self.concentration = float(concentration)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self.fixed = weights is not None
        self.preference = self._check_weights(weights) if weights is not None else np.full(self.n_tasks, 1.0 / self.n_tasks)

    def _check_weights(self, weights: Mapping[str, float] | Sequence[float]) -> np.ndarray:
        label = type(self).__name__
        if isinstance(weights, Mapping):
            for name in weights:
                if name not in self._index:
                    raise ValueError(f"{label} weights: unknown task {name!r}.{did_you_mean(name, self.task_names)}")
            missing = [n for n in self.task_names if n not in weights]
            if missing:
                raise ValueError(f"{label} weights: give a preference for every task; missing {missing}.")
            values = np.array([float(weights[n]) for n in self.task_names])
        else:
            values = np.asarray(weights, dtype=np.float64)
        if values.shape != (self.n_tasks,) or not np.all(np.isfinite(values)) or values.min() < 0 or values.sum() <= 0:
            raise ValueError(
                f"{label} weights must be {self.n_tasks} finite numbers >= 0, not all zero (one per task, or a "
                f"{{task: weight}} mapping), got {weights!r}."
            )
        return values

    def _observe(self, values: Tensor, present: Tensor) -> None:
        if not self.fixed:  # one draw per step, for all T tasks: the stream does not depend on who is present
            self.preference = self._rng.dirichlet(np.full(self.n_tasks, self.concentration))

    def _present_preference(self, present: Tensor) -> Tensor:
        return torch.as_tensor(self.preference, dtype=torch.float64)[present]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state, "preference": torch.as_tensor(self.preference.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._rng.bit_generator.state = state["rng"]
        self.preference = np.asarray(state["preference"], dtype=np.float64).copy()


class COSMOS(_Preferred):
    r"""COSMOS (``cosmos``; Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
    Learning", ICDM 2021; TorchJD's ``COSMOS`` scalarizer).

    .. math::  f(L) = r^\top L - \lambda\,\frac{r^\top L}{\max(\lVert r\rVert\,\lVert L\rVert, 10^{-8})}

    a linear scalarization rewarded by the cosine between the losses and the preference :math:`r`
    (:math:`\lambda = 0`: linear scalarization), so that the solution lies near the ray of :math:`r`.
    The weights (:math:`\partial f/\partial L`) are
    :math:`r - \lambda\big(r/(\lVert r\rVert\lVert L\rVert) - (r^\top L)\,L/(\lVert r\rVert\lVert L\rVert^3)\big)`.
    Scale: that of :math:`r^\top L` (:math:`r` on the simplex when drawn). State: the generator and the
    current preference. Cost: :math:`O(T)` per step.

    Args:
        weights: the preference :math:`r \ge 0` (per task, or ``{task: r}``); ``None``: drawn per step.
        lambda_: :math:`\lambda \ge 0` (the paper uses 0.01 to 8 depending on the data).
        concentration: :math:`\alpha` of the Dirichlet draws (1: uniform on the simplex).
        seed: seed of the draws.
    """

    def __init__(
        self,
        tasks: TaskList,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        lambda_: float = 1.0,
        concentration: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(tasks, weights, concentration, seed)
        if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
            raise ValueError(f"COSMOS lambda_ (the cosine reward) must be a finite number >= 0, got {lambda_!r}.")
        self.lambda_ = float(lambda_)

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        r = self._present_preference(present)
        linear = r @ v
        cosine = linear / torch.clamp(r.norm() * v.norm(), min=_COSINE_EPS)
        return linear - self.lambda_ * cosine


class PBI(_Preferred):
    r"""Penalty-based boundary intersection (``pbi``; Zhang & Li, "MOEA/D: A Multiobjective Evolutionary
    Algorithm Based on Decomposition", IEEE TEC 2007; TorchJD's ``PBI`` scalarizer).

    With :math:`\hat w = r/\lVert r\rVert` and the reference (ideal) point :math:`z^\star`:

    .. math::  d_1 = (L - z^\star)^\top\hat w,\qquad d_2 = \sqrt{\lVert (L - z^\star) - d_1\hat w\rVert^2 + 10^{-12}},
               \qquad f = d_1 + \theta d_2

    (the :math:`10^{-12}` keeps the gradient finite on the ray, as TorchJD). The weights are
    :math:`\hat w + \theta\,p/d_2` with :math:`p` the perpendicular part. Scale: that of the losses
    (:math:`\lVert\hat w\rVert = 1`). State: the generator and the current preference. Cost: :math:`O(T)`.

    Args:
        weights: the preference :math:`r \ge 0` (per task, or ``{task: r}``); ``None``: drawn per step.
        theta: :math:`\theta \ge 0`, the penalty on the distance to the ray (the paper uses 5).
        reference: :math:`z^\star`, a lower bound of the losses (per task, or ``{task: z}``); ``None``: 0.
        concentration: :math:`\alpha` of the Dirichlet draws.
        seed: seed of the draws.
    """

    def __init__(
        self,
        tasks: TaskList,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        theta: float = 5.0,
        reference: Mapping[str, float] | Sequence[float] | None = None,
        concentration: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(tasks, weights, concentration, seed)
        if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta >= 0):
            raise ValueError(f"PBI theta (the penalty on the distance to the preference ray) must be >= 0, got {theta!r}.")
        self.theta = float(theta)
        if reference is None:
            self.reference = np.zeros(self.n_tasks)
        else:
            values = [reference[n] for n in self.task_names] if isinstance(reference, Mapping) else reference
            self.reference = np.asarray(values, dtype=np.float64)
            if self.reference.shape != (self.n_tasks,) or not np.all(np.isfinite(self.reference)):
                raise ValueError(f"PBI reference must be {self.n_tasks} finite numbers (one per task), got {reference!r}.")

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        r = self._present_preference(present)
        direction = r / r.norm() if float(r.norm()) > 0 else r
        shifted = v - torch.as_tensor(self.reference, dtype=torch.float64)[present]
        along = shifted @ direction
        perpendicular = shifted - along * direction
        return along + self.theta * torch.sqrt(perpendicular @ perpendicular + _PBI_EPS)
