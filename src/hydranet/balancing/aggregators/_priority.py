r"""Priority-constrained descent: follow a primary objective, guarantee progress on the others (:class:`PCD`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import linprog
from torch import Tensor

from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator, _precision, _restored, _saved
from hydranet.balancing.aggregators.solvers import row_space

__all__ = ["PCD"]


class PCD(WeightedAggregator):
    r"""Priority-constrained descent (Varam et al., "Not All Objectives Are Born Equal: Priority-Constrained
    Descent for Hierarchical Multi-Objective Optimization", TMLR 2026; TorchJD's ``PCD``).

    Task 0 of the task list is the primary objective. With :math:`\tilde g_i = s_i g_i`,
    :math:`s_i = 1/\sqrt{\hat v_i + \epsilon}` (:math:`\hat v_i` the bias-corrected moving average, decay
    :math:`\beta`, of :math:`\lVert g_i\rVert^2`):

    .. math::  \tilde d = \arg\min_d \tfrac12\lVert d - \tilde g_1\rVert^2\quad\text{s.t.}\quad
               \tilde g_j\cdot d \ge \tau_j \lVert\tilde g_j\rVert^2,\ j \ge 2,
               \qquad d = \frac{\lVert g_1\rVert}{\lVert\tilde d\rVert}\,\tilde d.

    The projection onto the polyhedron is solved exactly in the row space of :math:`\tilde G` (from the
    Gramian: coordinates of the rows by :func:`~hydranet.balancing.aggregators.solvers.row_space`) by a
    primal active-set method started from :math:`\tilde g_1` or, if that violates a constraint, from a
    feasible point of a linear program (HiGHS); :math:`\tilde d = \tilde g_1 + \sum_j \mu_j\tilde g_j` with
    the KKT multipliers :math:`\mu \ge 0`. TorchJD solves the same QP by the dual active-set method of
    Goldfarb & Idnani; the minimiser is unique, so both agree. Special cases (as TorchJD): :math:`g_1 = 0`
    gives 0; infeasible constraints (e.g. two opposite secondary gradients) are dropped
    (:math:`d = g_1`); :math:`\tilde d = 0` up to rounding gives 0. Scale: :math:`\lVert d\rVert = \lVert g_1\rVert`.
    Not symmetric in the tasks. State: the moving averages and their step counts, per task; with
    ``present=`` only the present tasks' averages move. The primary task must be in every batch: a
    Jacobian without it raises (its direction is the one PCD follows). Cost: :math:`O(T^2P)` plus a QP
    of size :math:`T`.

    Args:
        tau: :math:`\tau \in [0, 1]`, one number or one per secondary task (``T - 1``).
        beta: decay :math:`\beta \in [0, 1)` of the moving averages.
        eps: :math:`\epsilon \ge 0`.
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    average: np.ndarray | None
    steps: np.ndarray | None


    gramian_only = True  # everything reads G through K

    def __init__(self, *, tau: float | list[float] = 0.02, beta: float = 0.999, eps: float = 1e-8, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        taus = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        if taus.ndim != 1 or taus.size == 0 or not np.all((taus >= 0) & (taus <= 1)):
            raise ValueError(f"PCD tau must be a number in [0, 1] or a list of them (one per secondary task), got {tau!r}.")
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
            raise ValueError(f"PCD beta must be in [0, 1), got {beta!r}.")
        if not (isinstance(eps, (int, float)) and eps >= 0.0):
            raise ValueError(f"PCD eps must be >= 0, got {eps!r}.")
        self.tau = tau
        self._taus = taus
        self.beta = float(beta)
        self.eps = float(eps)
        self.reset()

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        self._check_tasks(tasks, None if self.average is None else self.average.size)
        if tasks.index[0] != 0:
            raise ValueError(
                "PCD follows the primary task (task 0 of the task list), but it is absent from this batch. Put the "
                "primary task in every batch (e.g. TaskBatchSampler quotas), or use a symmetric method such as 'upgrad'."
            )
        total = tasks.total
        if self._taus.size not in (1, total - 1):
            raise ValueError(f"PCD got {self._taus.size} values of tau for {total - 1} secondary tasks: give one or {total - 1}.")
        if self.average is None:
            self.average, self.steps = np.zeros(total), np.zeros(total)
        assert self.steps is not None  # set with the average
        squares = np.clip(np.diag(gramian), 0.0, None)
        idx = tasks.index
        self.average[idx] = self.beta * self.average[idx] + (1.0 - self.beta) * squares
        self.steps[idx] += 1
        debiased = self.average[idx] / (1.0 - self.beta ** self.steps[idx])
        root = np.sqrt(debiased + self.eps)
        scales = np.divide(1.0, root, out=np.zeros(idx.size), where=root > 0)
        weights = np.zeros(idx.size)
        if squares[0] <= 0.0:
            return weights
        taus = np.broadcast_to(self._taus, (total - 1,))[idx[1:] - 1]
        scaled = gramian * np.outer(scales, scales)
        mu = _projection_multipliers(scaled, taus, _precision(matrix.dtype))
        w = np.concatenate([[1.0], mu])
        norm2 = float(w @ scaled @ w)
        size = float(np.abs(w) @ np.sqrt(np.diag(scaled))) ** 2
        if norm2 <= 10 * _precision(matrix.dtype) * size:
            return weights
        return w * scales * np.sqrt(squares[0] / norm2)

    def reset(self) -> None:
        self.average = None
        self.steps = None

    def state_dict(self) -> dict[str, Any]:
        return {"average": _saved(self.average), "steps": _saved(self.steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.average = _restored(state["average"])
        self.steps = _restored(state["steps"])


def _projection_multipliers(gramian: np.ndarray, taus: np.ndarray, eps: float) -> np.ndarray:
    r"""KKT multipliers :math:`\mu \ge 0` of :math:`\min_x \tfrac12\lVert x - g_1\rVert^2` s.t.
    :math:`g_j\cdot x \ge \tau_j\lVert g_j\rVert^2` (rows :math:`g` of Gram matrix ``gramian``, row 0 primary);
    zeros if the constraints are infeasible. Primal active set in row-space coordinates."""
    count = gramian.shape[0] - 1
    mu = np.zeros(count)
    if count == 0:
        return mu
    vectors, roots = row_space(gramian, eps)
    coords = vectors * roots  # row i: g_i in an orthonormal basis of the row space
    primary, cons = coords[0], coords[1:]
    bound = taus * np.diag(gramian)[1:]
    live = np.diag(gramian)[1:] > 0  # a zero secondary gradient constrains nothing (0 >= 0)
    unit = float(np.sqrt(np.max(np.diag(gramian))))
    tol = 1e-9 * unit**2
    x = primary.copy()
    if np.any(cons[live] @ x < bound[live] - tol):
        lp = linprog(np.zeros(coords.shape[1]), A_ub=-cons[live], b_ub=-bound[live], bounds=(None, None), method="highs")
        if lp.status != 0:
            return mu  # infeasible: TorchJD drops the constraints
        x = lp.x
    active = [j for j in np.flatnonzero(live) if cons[j] @ x <= bound[j] + tol]
    for _ in range(20 * (count + 1)):
        rows = cons[active]
        gap = primary - x
        step = gap - rows.T @ np.linalg.lstsq(rows @ rows.T, rows @ gap, rcond=None)[0] if active else gap
        if np.linalg.norm(step) <= 1e-12 * unit:
            lam = np.linalg.lstsq(rows.T, x - primary, rcond=None)[0] if active else np.zeros(0)
            if lam.size == 0 or lam.min() >= -1e-12 * max(1.0, float(np.abs(lam).max())):
                mu[active] = np.clip(lam, 0.0, None)
                return mu
            active.pop(int(np.argmin(lam)))
            continue
        rates = cons @ step
        blocking = [j for j in np.flatnonzero(live) if j not in active and rates[j] < 0]
        alpha, hit = 1.0, None
        for j in blocking:
            limit = (bound[j] - cons[j] @ x) / rates[j]
            if limit < alpha:
                alpha, hit = max(limit, 0.0), j
        x = x + alpha * step
        if hit is not None:
            active.append(hit)
    lam = np.linalg.lstsq(cons[active].T, x - primary, rcond=None)[0] if active else np.zeros(0)
    mu[active] = np.clip(lam, 0.0, None)
    return mu
