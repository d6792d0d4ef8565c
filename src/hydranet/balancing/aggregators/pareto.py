r"""Conflict-averse directions from multi-objective optimisation: MGDA, CAGrad, UPGrad, DualProj.

MGDA, UPGrad and DualProj return a direction :math:`d` with :math:`g_i \cdot d \ge 0` for every task
(no task's loss increases to first order); CAGrad maximises the worst task's improvement in a ball
around the average gradient. All four are weightings of the rows, computed from the Gram matrix.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from torch import Tensor

from hydranet.balancing.aggregators._preference import Preference, check_preference, preference_rows
from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator, _precision
from hydranet.balancing.aggregators.solvers import dual_cone_weights, min_norm_simplex

__all__ = ["CAGrad", "DualProj", "MGDA", "UPGrad"]


class MGDA(WeightedAggregator):
    r"""Multiple-gradient descent (Désidéri 2012; Sener & Koltun, NeurIPS 2018).

    The min-norm point of the convex hull of the task gradients:

    .. math::  d = G^\top w^\star,\qquad w^\star = \arg\min_{w \in \Delta} \lVert G^\top w\rVert^2
               = \arg\min_{w\ge 0,\ \mathbf 1^\top w = 1} w^\top K w

    solved exactly (an NNLS reformulation, see :func:`~hydranet.balancing.aggregators.solvers.min_norm_simplex`).
    Guarantees :math:`g_i\cdot d \ge \lVert d\rVert^2 \ge 0` for all :math:`i`; :math:`d = 0` exactly when the
    point is Pareto-stationary (0 in the hull). Scale: a **convex combination** (weights sum to 1), so
    :math:`d(cG) = c\,d(G)`; with one task :math:`d = g_1`. The update is dominated by the smallest
    gradients (``normalize=True`` is the paper's "l2" normalisation). Stateless. Cost:
    :math:`O(T^2P + T^3)`.
    """

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        return min_norm_simplex(gramian, _precision(matrix.dtype))


class UPGrad(WeightedAggregator):
    r"""Unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective
    Optimization", 2024).

    Each task gradient is projected onto the dual cone of the rows,
    :math:`\pi(x) = \arg\min_{y:\ Gy \ge 0} \lVert y - x\rVert`, and the projections are averaged:

    .. math::  d = \frac1T \sum_i \pi(g_i),\qquad \pi(G^\top e_i) = G^\top v_i,\quad
               v_i = \arg\min_{v \ge e_i} v^\top K v

    (each :math:`v_i` is an exact NNLS solve). Guarantees :math:`Gd \ge 0` (non-conflicting); it is the
    mean when no pair of gradients conflicts (then every :math:`\pi(g_i) = g_i`). Scale: the **mean** of the
    projections (TorchJD's convention with the uniform preference vector), :math:`d(cG) = c\,d(G)`.
    Stateless. Cost: :math:`O(T^2P)` plus :math:`T` NNLS problems of size :math:`T`.

    With a preference vector :math:`p` (TorchJD's ``pref_vector``): :math:`d = \sum_i \pi(p_i g_i)`
    (:math:`= \sum_i p_i\pi(g_i)` for :math:`p \ge 0`); the default is :math:`p = \mathbf 1/T`.

    Args:
        pref_vector: one finite weight per task of the task list, or ``None`` (:math:`1/T` each).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    gramian_only = True  # the weights read G only through K = G G^T

    def __init__(self, *, pref_vector: Preference = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self.pref_vector = check_preference(pref_vector, "UPGrad")

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        pref = preference_rows(self.pref_vector, tasks, 1.0 / size, "UPGrad")
        # pi is positively homogeneous: pi(p_i g_i) = |p_i| pi(sign(p_i) g_i), so the solves see unit targets
        # (the solver's tolerances are relative to them) whatever the scale of p
        signs = np.where(pref < 0, -1.0, 1.0)
        return np.abs(pref) @ dual_cone_weights(gramian, np.diag(signs), _precision(matrix.dtype))


class DualProj(WeightedAggregator):
    r"""Projection of the mean gradient onto the dual cone (Quinton & Rey 2024).

    .. math::  d = \pi\Big(\frac1T\sum_i g_i\Big) = G^\top v,\qquad v = \arg\min_{v \ge \mathbf 1/T} v^\top K v.

    Guarantees :math:`Gd \ge 0`; equals the mean when the mean conflicts with no task. Scale: the
    projection of the **mean** gradient, :math:`d(cG) = c\,d(G)`. Stateless. Cost: :math:`O(T^2P)` plus one
    NNLS problem of size :math:`T`.

    With a preference vector :math:`p` (TorchJD's ``pref_vector``): :math:`d = \pi(\sum_i p_i g_i)`; the
    default is :math:`p = \mathbf 1/T`.

    Args:
        pref_vector: one finite weight per task of the task list, or ``None`` (:math:`1/T` each).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    gramian_only = True  # the weights read G only through K = G G^T

    def __init__(self, *, pref_vector: Preference = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self.pref_vector = check_preference(pref_vector, "DualProj")

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        pref = preference_rows(self.pref_vector, tasks, 1.0 / size, "DualProj")
        return dual_cone_weights(gramian, pref[None, :], _precision(matrix.dtype))[0]


class CAGrad(WeightedAggregator):
    r"""Conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021).

    The direction that maximises the worst task's improvement within a ball around the mean gradient
    :math:`g_0 = \frac1T\sum_i g_i`: :math:`\max_d \min_i g_i\cdot d` subject to
    :math:`\lVert d - g_0\rVert \le c\lVert g_0\rVert`. Its dual gives

    .. math::  w = \arg\min_{w\in\Delta}\ g_w\cdot g_0 + \sqrt\phi\,\lVert g_w\rVert,\quad
               g_w = G^\top w,\ \phi = c^2\lVert g_0\rVert^2,\qquad
               d = \frac{1}{s}\Big(g_0 + \frac{\sqrt\phi}{\lVert g_w\rVert}\, g_w\Big)

    The simplex problem (convex, :math:`T` variables) is solved with SLSQP on the Gram matrix to
    :math:`10^{-14}` in the objective, then polished by Newton's method on the KKT system of the face
    SLSQP ends on (supports corrected until the KKT conditions hold), so that :math:`w` and :math:`d` are
    exact to rounding (SLSQP alone: :math:`\sim 10^{-5}` relative). ``c = 0`` gives the mean.

    Degenerate case: if :math:`g_w = 0` at the optimum (0 is in the convex hull of the gradients) the
    formula is undefined; the max-min value is then 0 and every :math:`d` of the ball with
    :math:`Gd \ge 0` attains it. Of these the one closest to :math:`g_0` is returned: the projection of
    :math:`g_0` onto the dual cone :math:`\{x: Gx\ge 0\}` (DualProj's direction before its :math:`1/T`),
    which lies in the ball whenever the value is 0. The same point replaces the formula's when
    :math:`c \ge 1` and the formula's :math:`d` conflicts with a task through the solver's rounding (0
    near the hull: :math:`g_w/\lVert g_w\rVert` is then ill-determined): for :math:`c \ge 1` the ball holds
    :math:`d = 0`, so the exact :math:`d` never conflicts (:math:`\min_i g_i\cdot d \ge 0`), and neither does
    the returned one.

    Scale: the paper's :math:`d` has the scale of the **mean** gradient; the authors' code (and LibMTL)
    divide it by :math:`s = 1 + c^2` (``rescale=1``, the default here), :math:`s = 1 + c` (``rescale=2``) or
    :math:`s = 1` (``rescale=0``, the paper's formula). :math:`d(cG) = c\,d(G)`. Stateless. Cost:
    :math:`O(T^2P)` plus a small SLSQP problem.

    Args:
        c: radius of the ball relative to :math:`\lVert g_0\rVert` (>= 0; the paper uses 0.4-0.5).
        rescale: 0, 1 or 2, see above.
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    def __init__(self, *, c: float = 0.5, rescale: int = 1, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if not c >= 0:
            raise ValueError(
                f"CAGrad needs c >= 0 (the radius of the ball around the mean gradient), got c={c!r}; "
                "the paper uses 0.4 or 0.5."
            )
        if rescale not in (0, 1, 2):
            raise ValueError(
                f"CAGrad rescale must be 0 (no rescaling), 1 (divide by 1 + c^2) or 2 (divide by 1 + c), got {rescale!r}."
            )
        self.c = float(c)
        self.rescale = int(rescale)

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        divisor = (1.0, 1.0 + self.c**2, 1.0 + self.c)[self.rescale]
        weights = np.full(size, 1.0 / size)
        scale = float(np.max(np.diag(gramian)))
        if scale <= 0.0:
            return weights / divisor
        unit = gramian / scale  # the weights are invariant to a rescaling of K
        along_mean = unit.mean(axis=1)  # g_i . g_0
        radius = self.c * np.sqrt(max(float(unit.mean()), 0.0))  # sqrt(phi) = c |g_0|
        if radius > 0.0:
            eps = _precision(matrix.dtype)
            hull = min_norm_simplex(unit, eps)
            # 0 in the hull (exactly, by the MGDA solver): the max-min value is 0 when the dual cone meets the
            # ball, and the closest maximiser is the projection of g0 (decided here, not from SLSQP's |g_w|,
            # which converges slowly to the kink at g_w = 0)
            if float(hull @ unit @ hull) <= 100 * size * eps:
                cone = dual_cone_weights(unit, weights[None, :], eps)[0]
                gap = cone - weights
                if float(gap @ unit @ gap) <= radius**2 * (1.0 + 1e-9):
                    return cone / divisor
            w = _cagrad_simplex(unit, along_mean, radius)
            norm = np.sqrt(max(float(w @ unit @ w), 0.0))
            formula = weights + (radius / norm) * w if norm > _DEGENERATE else None
            if formula is None or (self.c >= 1.0 and float(np.min(unit @ formula)) < 0.0):
                weights = self._closest_maximiser(unit, radius, formula, _precision(matrix.dtype))
            else:
                weights = formula
        return weights / divisor

    @staticmethod
    def _closest_maximiser(unit: np.ndarray, radius: float, formula: np.ndarray | None, eps: float) -> np.ndarray:
        r"""The projection of :math:`g_0` onto the dual cone when it is in the ball and not worse than
        the formula's point (by the primal objective :math:`\min_i g_i\cdot d`), else the formula's."""
        size = unit.shape[0]
        mean = np.full(size, 1.0 / size)
        cone = dual_cone_weights(unit, mean[None, :], eps)[0]
        gap = cone - mean
        inside = float(gap @ unit @ gap) <= radius**2 * (1.0 + 1e-9)
        if formula is None:
            return cone if inside else mean
        return cone if inside and float(np.min(unit @ cone)) >= float(np.min(unit @ formula)) else formula


# |g_w| below this (K scaled to a unit largest diagonal): 0 is in the hull up to rounding.
_DEGENERATE = 1e-9


def _cagrad_simplex(gramian: np.ndarray, linear: np.ndarray, radius: float) -> np.ndarray:
    r""":math:`\arg\min_{w\in\Delta} \ell^\top w + r\sqrt{w^\top K w}` by SLSQP with exact gradients."""
    size = gramian.shape[0]

    def objective(w: np.ndarray) -> float:
        return float(linear @ w + radius * np.sqrt(max(float(w @ gramian @ w), 0.0)))

    def gradient(w: np.ndarray) -> np.ndarray:
        norm = np.sqrt(max(float(w @ gramian @ w), 0.0))
        return linear + (radius / norm) * (gramian @ w) if norm > 1e-15 else linear

    result = minimize(
        objective,
        np.full(size, 1.0 / size),
        jac=gradient,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * size,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-14, "maxiter": 500},
    )
    w = np.clip(result.x, 0.0, None)
    w = w / w.sum()
    polished = _polish_on_face(gramian, linear, radius, w)
    return w if polished is None else polished


def _cagrad_kkt(gramian: np.ndarray, linear: np.ndarray, radius: float, w: np.ndarray) -> float:
    r"""How far :math:`w \in \Delta` is from the KKT point of the simplex problem: with
    :math:`
abla = \ell + rKw/\sqrt{w^	op Kw}` and :math:`
u = w^	op
abla`, the largest of
    :math:`w_i|
abla_i - 
u|` (stationarity on the support) and :math:`
u - 
abla_i` (no descent
    leaving the face)."""
    norm = np.sqrt(max(float(w @ gramian @ w), 0.0))
    if norm <= 1e-15:
        return np.inf
    grad = linear + (radius / norm) * (gramian @ w)
    nu = float(w @ grad)
    return float(max(np.max(w * np.abs(grad - nu)), np.max(nu - grad), 0.0))


def _polish_on_face(gramian: np.ndarray, linear: np.ndarray, radius: float, start: np.ndarray) -> np.ndarray | None:
    r"""Newton's method on the KKT system of the face of the simplex SLSQP ended on, so that :math:`w`
    (and :math:`d`) are exact to rounding instead of to SLSQP's :math:`\sqrt{	ext{ftol}}`.

    On the support :math:`S` the optimum solves :math:`\ell_S + rK_{SS}w_S/\lVert g_w
Vert = 
u\mathbf 1`,
    :math:`\mathbf 1^	op w_S = 1`; Newton's step uses the Hessian
    :math:`r(K_{SS}/n - K_{SS}w\,w^	op K_{SS}/n^3)`, :math:`n = \lVert g_w
Vert` (least squares on the
    directions of :math:`\ker K`, which do not move :math:`d`). A weight that turns negative leaves the
    support, a task off the support with :math:`
abla_j < 
u` enters it; the point is kept only if its KKT
    residual (:func:`_cagrad_kkt`) is below SLSQP's. ``None``: no better point found."""
    size = start.size
    best, best_residual = None, _cagrad_kkt(gramian, linear, radius, start)
    support = start > 1e-9 * start.max()
    w = np.where(support, start, 0.0)
    for _ in range(2 * size + 2):  # support changes
        idx = np.flatnonzero(support)
        K = gramian[np.ix_(idx, idx)]
        x = w[idx] / w[idx].sum()
        for _ in range(30):
            Kx = K @ x
            norm = np.sqrt(max(float(x @ Kx), 0.0))
            if norm <= 1e-15:
                return best
            grad = linear[idx] + (radius / norm) * Kx
            nu = float(x @ grad)
            hessian = (radius / norm) * (K - np.outer(Kx, Kx) / norm**2)
            system = np.block([[hessian, -np.ones((idx.size, 1))], [np.ones((1, idx.size)), np.zeros((1, 1))]])
            rhs = -np.concatenate([grad - nu, [x.sum() - 1.0]])
            step = np.linalg.lstsq(system, rhs, rcond=None)[0][:-1]
            x = x + step
            if np.abs(step).max() <= 1e-15:
                break
        if x.min() < 0.0:  # the face was wrong: drop the most negative weight and start again
            support[idx[int(np.argmin(x))]] = False
            w = np.where(support, np.clip(start, 1e-12, None), 0.0)
            continue
        w = np.zeros(size)
        w[idx] = x
        residual = _cagrad_kkt(gramian, linear, radius, w)
        if residual < best_residual:
            best, best_residual = w, residual
        norm = np.sqrt(max(float(w @ gramian @ w), 0.0))
        grad = linear + (radius / norm) * (gramian @ w)
        nu = float(w @ grad)
        outside = np.flatnonzero(~support & (grad < nu - 1e-13 * max(1.0, abs(nu))))
        if outside.size == 0:
            return best
        support[outside[int(np.argmin(grad[outside]))]] = True
        w = np.where(support, np.maximum(w, 1e-12), 0.0)
    return best
