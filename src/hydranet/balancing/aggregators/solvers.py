r"""Exact solvers for the small :math:`T\times T` problems behind the aggregators (numpy, float64).

All of them take the Gram matrix :math:`K = GG^\top` and return weights :math:`w` of the rows, so that
the update is :math:`d = G^\top w`. They rescale :math:`K` by its largest diagonal entry first (the
solutions are invariant or transform in closed form) so that the tolerances are relative.

* :func:`min_norm_simplex`: :math:`\min_{w \in \Delta} w^\top K w` (the min-norm point of the convex
  hull of the rows, MGDA), through one non-negative least-squares problem (Lawson-Hanson active set);
* :func:`dual_cone_weights`: :math:`\min_{v \ge u} v^\top K v`, the weights of the projection of
  :math:`G^\top u` onto the dual cone :math:`\{x : Gx \ge 0\}` (UPGrad, DualProj), also by NNLS;
* :func:`power_fixed_point`: the positive solution of :math:`Kw = w^{-1/a}` (Nash-MTL for
  :math:`a = 1`, FairGrad), by damped Newton on a strictly convex potential.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def psd_factor(gramian: np.ndarray) -> np.ndarray:
    """A square matrix :math:`A` with :math:`A^\\top A = K` (from the eigendecomposition; negative
    round-off eigenvalues are set to 0)."""
    values, vectors = np.linalg.eigh(gramian)
    return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # The default iteration cap (3n) can be too tight for degenerate Gram matrices; the active set
    # changes at most a few times per variable in practice.
    return nnls(a, b, maxiter=50 * a.shape[1] + 100)[0]


def min_norm_simplex(gramian: np.ndarray) -> np.ndarray:
    r"""Weights :math:`w \in \Delta` (the simplex) minimising :math:`w^\top K w`.

    With :math:`A^\top A = K`, the non-negative least-squares problem
    :math:`\min_{u \ge 0} \lVert Au\rVert^2 + (1 - \mathbf 1^\top u)^2` is solved by
    :math:`u = t\,w^\star` with :math:`w^\star` the min-norm weights and
    :math:`t = 1/(1 + \lVert Aw^\star\rVert^2)` (for fixed direction the objective is
    :math:`q/(1+q)`, increasing in :math:`q = \lVert Aw\rVert^2`); hence :math:`w^\star = u / \mathbf 1^\top u`.
    """
    size = gramian.shape[0]
    scale = float(np.max(np.diag(gramian)))
    if scale <= 0.0:
        return np.full(size, 1.0 / size)
    system = np.vstack([psd_factor(gramian / scale), np.ones((1, size))])
    target = np.zeros(size + 1)
    target[-1] = 1.0
    u = _nnls(system, target)
    return u / u.sum()


def dual_cone_weights(gramian: np.ndarray, targets: np.ndarray) -> np.ndarray:
    r"""For each row :math:`u` of ``targets`` ``[m, T]``: :math:`v = \arg\min_{v \ge u} v^\top K v`.

    :math:`G^\top v` is the Euclidean projection of :math:`G^\top u` onto the dual cone
    :math:`\{x : Gx \ge 0\}` (Quinton & Rey 2024, Prop. 1). With :math:`v = u + s`, :math:`s \ge 0`, it is
    the NNLS problem :math:`\min_{s\ge 0} \lVert As + Au\rVert^2`. KKT: :math:`Kv \ge 0` (the projection
    conflicts with no row), :math:`s \ge 0`, :math:`s_j (Kv)_j = 0`.
    """
    scale = float(np.max(np.diag(gramian)))
    if scale <= 0.0:
        return targets.astype(np.float64, copy=True)
    factor = psd_factor(gramian / scale)
    return np.stack([u + _nnls(factor, -factor @ u) for u in targets])


def power_fixed_point(gramian: np.ndarray, a: float, start: np.ndarray | None = None) -> np.ndarray:
    r"""The positive solution of :math:`Kw = w^{-1/a}` (elementwise power); rows with :math:`K_{ii} = 0` get 0.

    It is the unique minimiser of the strictly convex
    :math:`f(w) = \tfrac12 w^\top K w - \sum_i h(w_i)` with :math:`h'(w) = w^{-1/a}`
    (:math:`h = \log` for :math:`a = 1`), found by Newton's method with a backtracking line search that
    keeps :math:`w > 0`, to a relative residual of :math:`10^{-12}`. :math:`K` is scaled by its largest
    diagonal :math:`s` first (the solution scales as :math:`s^{-a/(a+1)}`). When 0 lies in the convex
    hull of the rows, :math:`f` is unbounded below and no solution exists; the iteration then does not
    converge and is repeated with :math:`10^{-10}\,\mathrm{diag}(K)` added to :math:`K`, which bounds the
    weights (the update :math:`G^\top w` then has a norm below :math:`\sqrt{T}`).
    ``start`` (a previous solution) warm-starts the iteration.
    """
    size = gramian.shape[0]
    out = np.zeros(size)
    live = np.diag(gramian) > 0.0
    if not live.any():
        return out
    sub = gramian[np.ix_(live, live)]
    scale = float(np.max(np.diag(sub)))
    to_unit = scale ** (a / (a + 1.0))  # w = x / to_unit, x solving the problem for K / scale
    matrix = sub / scale
    if start is not None and start.shape == (size,) and np.all(start[live] > 0):
        first = start[live] * to_unit
    else:
        first = (np.diag(matrix) * np.sqrt(sub.shape[0])) ** (-a / (a + 1.0))
    x, converged = _newton_power(matrix, a, first)
    if not converged:
        x, _ = _newton_power(matrix + 1e-10 * np.diag(np.diag(matrix)), a, first)
    out[live] = x / to_unit
    return out


def _newton_power(matrix: np.ndarray, a: float, x: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, bool]:
    exponent = -1.0 / a

    def potential(z: np.ndarray) -> float:
        barrier = np.log(z).sum() if a == 1.0 else (z ** (1.0 + exponent)).sum() / (1.0 + exponent)
        return 0.5 * z @ matrix @ z - barrier

    value = potential(x)
    for _ in range(max_iter):
        power = x**exponent
        grad = matrix @ x - power
        if np.max(np.abs(grad) / power) <= 1e-12:
            return x, True
        try:
            step = np.linalg.solve(matrix + np.diag(-exponent * power / x), -grad)
        except np.linalg.LinAlgError:  # x ran off along a null direction of K: no solution
            return x, False
        slope = grad @ step
        t = 1.0
        while t >= 1e-16:
            trial = x + t * step
            if np.all(trial > 0):
                trial_value = potential(trial)
                if trial_value <= value + 1e-4 * t * slope + 1e-13 * abs(value):  # slack for rounding
                    break
            t *= 0.5
        else:
            return x, False
        x, value = trial, trial_value
    return x, False
