r"""CR-MOGM: any row weighting with its weights smoothed over the steps (:class:`CRMOGM`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from hydranet.balancing.aggregators._registry import get_aggregator
from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator, _restored, _saved

__all__ = ["CRMOGM"]


class CRMOGM(WeightedAggregator):
    r"""Conflict-reduction smoothing of another method's weights (Zhou, Zhang, Chen, Liu & Li, "On the
    Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022; TorchJD's
    ``CRMOGMWeighting``).

    With :math:`\hat\lambda_k` the weights of the wrapped method (``method``, any registered row
    weighting) at step :math:`k`:

    .. math::  \lambda_k = \alpha\,\lambda_{k-1} + (1 - \alpha)\,\hat\lambda_k,\qquad
               \lambda_1 = \hat\lambda_1,\qquad d = G^\top\lambda_k.

    A task's first weights are the wrapped method's (TorchJD 0.18 starts the same way; its earlier
    versions started from :math:`\mathbf 1/T`, the mean's scale, whatever the wrapped method's).
    ``alpha = 0`` is the wrapped method; ``alpha = 1`` freezes the first weights. The default 0.1 is
    TorchJD's; the paper's Corollary 1 lets :math:`\alpha_k \to 1` as the learning rate decays: set
    ``agg.alpha`` between steps. With ``present=`` only the present tasks' :math:`\lambda` move (the
    wrapped method sees the present rows and the mask); the absent ones keep theirs, and a task present
    for the first time starts at its fresh weight. Scale: that of the wrapped method. State:
    :math:`\lambda` (:math:`T` numbers) and the wrapped method's state. Cost: the wrapped method's plus
    :math:`O(T)`.

    Args:
        method: name of the wrapped row weighting (``"mgda"``, ``"upgrad"``, ...).
        alpha: :math:`\alpha \in [0, 1]`.
        settings: keyword settings of the wrapped method (without ``normalize``: set it here).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator` (applies to the wrapped method).
    """

    def __init__(
        self, *, method: str = "upgrad", alpha: float = 0.1, settings: Mapping[str, Any] | None = None, normalize: bool = False
    ) -> None:
        super().__init__(normalize=normalize)
        settings = dict(settings or {})
        if "normalize" in settings:
            raise ValueError("CRMOGM: pass normalize= to CRMOGM itself, not in settings= (it applies to the wrapped rows).")
        inner = get_aggregator(method, **settings)
        if not isinstance(inner, WeightedAggregator) or isinstance(inner, CRMOGM):
            raise ValueError(
                f"CRMOGM smooths the weights of a row weighting, but {method!r} is {type(inner).__name__}, which "
                "has no weights (or is CRMOGM itself). Wrap e.g. 'upgrad', 'mgda', 'imtl_g' or 'nash_mtl'."
            )
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"CRMOGM alpha must be a number in [0, 1], got {alpha!r}.")
        self.method = method
        self.alpha = float(alpha)
        self.settings = settings
        self.inner = inner
        self.uses_gram = inner.uses_gram
        self.gramian_only = inner.gramian_only
        self.smoothed: np.ndarray | None = None

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        self._check_tasks(tasks, None if self.smoothed is None else self.smoothed.size)
        fresh = np.asarray(self.inner._weights(matrix, gramian, tasks), dtype=np.float64)
        if self.smoothed is None:
            self.smoothed = np.full(tasks.total, np.nan)  # NaN: the task has not been seen yet
        previous = self.smoothed[tasks.index]
        mixed = np.where(np.isnan(previous), fresh, self.alpha * previous + (1.0 - self.alpha) * fresh)
        self.smoothed[tasks.index] = mixed
        return mixed.copy()

    def reset(self) -> None:
        self.smoothed = None
        self.inner.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": _saved(self.smoothed), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.smoothed = _restored(state["weights"])
        self.inner.load_state_dict(state["inner"])
