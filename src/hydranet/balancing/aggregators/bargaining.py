r"""Fair allocations of the update among tasks: Nash-MTL (proportional fairness) and FairGrad
(:math:`\alpha`-fairness). Both solve :math:`K w = w^{-1/\alpha}` on the Gram matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator, _restored, _saved
from hydranet.balancing.aggregators.solvers import power_fixed_point

__all__ = ["FairGrad", "NashMTL"]


class NashMTL(WeightedAggregator):
    r"""Multi-task learning as a bargaining game (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik &
    Fetaya, ICML 2022).

    The Nash bargaining solution :math:`d = G^\top\alpha` maximises :math:`\sum_i \log(g_i\cdot d)` over the
    ball; its weights solve

    .. math::  G G^\top \alpha = 1/\alpha \quad(\text{elementwise}),\qquad \alpha > 0,

    i.e. :math:`\alpha_i\,(g_i\cdot d) = 1` for every task. The paper approximates this with a sequence of
    convex problems (20 CCP iterations with cvxpy); here the same equation is solved exactly: it is the
    stationarity condition of the strictly convex :math:`\tfrac12\alpha^\top K\alpha - \sum_i\log\alpha_i`,
    minimised by damped Newton (see :func:`~hydranet.balancing.aggregators.solvers.power_fixed_point`).
    Tasks with a zero gradient get weight 0. When 0 lies in the convex hull of the gradients (a
    Pareto-stationary point) no solution exists and a :math:`10^{-10}` relative ridge is added.

    Scale: :math:`\lVert d\rVert = \sqrt T` for the exact solution, whatever the gradients' magnitude
    (:math:`d(cG) = d(G)`); then, as in the authors' training code, :math:`d` is clipped to norm
    ``max_norm`` (default 1.0; ``None`` keeps :math:`\sqrt T`).

    State: the last :math:`\alpha` (``alpha``; it warm-starts the next solve), the tasks of the last solve
    and the step counter; with ``update_weights_every=k`` the weights are recomputed every :math:`k` calls
    and reused in between (the paper's speed-up). Cost: :math:`O(T^2P)` plus a few :math:`T\times T` Newton steps.

    Some tasks present (``present=``, the set :math:`S`): the bargaining problem of the present tasks,
    :math:`K_{SS}\,\alpha_S = 1/\alpha_S` with :math:`K_{SS}` the Gram matrix of the :math:`|S|` rows,
    warm-started from the present tasks' previous :math:`\alpha_S` (a cold start when one of them was
    never solved); the absent tasks keep their :math:`\alpha`. The solve is exact (to the solver's
    :math:`10^{-12}` tolerance), so the warm start only saves work: the weights are those of the
    sub-problem, :math:`\lVert d\rVert = \sqrt{|S|}` before clipping. With ``update_weights_every``
    :math:`> 1` the weights are reused only while the present tasks are those of the last solve; another
    set is solved at once.

    Args:
        max_norm: clip the update to this norm (> 0), or ``None``.
        update_weights_every: recompute the weights every this many calls (>= 1).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    alpha: np.ndarray | None
    solved: np.ndarray | None


    def __init__(self, *, max_norm: float | None = 1.0, update_weights_every: int = 1, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"NashMTL max_norm must be > 0 (or None for no clipping), got {max_norm!r}.")
        if isinstance(update_weights_every, bool) or not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise ValueError(f"NashMTL update_weights_every must be an integer >= 1, got {update_weights_every!r}.")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.update_weights_every = update_weights_every
        self.reset()

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        self._check_tasks(tasks, None if self.alpha is None else self.alpha.shape[0])
        if self.alpha is None:
            self.alpha = np.full(tasks.total, np.nan)  # NaN: never solved (the solver then starts cold)
        present = np.zeros(tasks.total, dtype=bool)
        present[tasks.index] = True
        if self.solved is None or not np.array_equal(present, self.solved) or self.step % self.update_weights_every == 0:
            self.alpha[tasks.index] = power_fixed_point(gramian, 1.0, start=self.alpha[tasks.index])
            self.solved = present
        self.step += 1
        weights = self.alpha[tasks.index]
        norm = np.sqrt(max(float(weights @ gramian @ weights), 0.0))
        if self.max_norm is not None and norm > self.max_norm:
            weights *= self.max_norm / norm
        return weights

    def reset(self) -> None:
        self.alpha = None
        self.solved = None  # the tasks of the last solve (a boolean mask)
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        solved = None if self.solved is None else torch.tensor(self.solved)
        return {"alpha": _saved(self.alpha), "solved": solved, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.alpha = _restored(state["alpha"])
        self.step = int(state["step"])
        if "solved" in state:
            solved = state["solved"]
            self.solved = None if solved is None else torch.as_tensor(solved, dtype=torch.bool).numpy().copy()
        else:  # a checkpoint from before the solved-task mask: every solve had all the tasks
            self.solved = None if self.alpha is None else np.ones(self.alpha.shape[0], dtype=bool)


class FairGrad(WeightedAggregator):
    r"""Fair resource allocation in multi-task learning (Ban & Ji, ICML 2024).

    :math:`\alpha`-fair allocation of the update among tasks: the weights :math:`w > 0` solve

    .. math::  G G^\top w = w^{-1/\alpha}\quad(\text{elementwise}),\qquad d = G^\top w,

    i.e. :math:`g_i\cdot d = w_i^{-1/\alpha}`. :math:`\alpha = 1` is proportional fairness (Nash-MTL's
    equation), :math:`\alpha\to\infty` approaches max-min fairness, :math:`\alpha\to 0` utilitarian. The
    authors solve it with ``scipy.optimize.least_squares``; here it is solved exactly as the stationarity
    condition of the strictly convex :math:`\tfrac12 w^\top K w - \sum_i h(w_i)`, :math:`h' = w^{-1/\alpha}`
    (damped Newton). Zero rows get weight 0.

    Scale: no normalisation; :math:`d(cG) = c^{(1-\alpha)/(1+\alpha)}\,d(G)` (for :math:`\alpha=1` the norm is
    :math:`\sqrt T` whatever the gradients' magnitude). Stateless. Cost: :math:`O(T^2P)` plus a few
    :math:`T\times T` Newton steps.

    Args:
        alpha: fairness parameter (> 0).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    def __init__(self, *, alpha: float = 1.0, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if not alpha > 0:
            raise ValueError(
                f"FairGrad needs alpha > 0 (1: proportional fairness, larger: closer to max-min), got alpha={alpha!r}."
            )
        self.alpha = float(alpha)

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        return power_fixed_point(gramian, self.alpha)
