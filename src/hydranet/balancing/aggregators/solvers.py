r"""Exact solvers for the small :math:`T\times T` problems behind the aggregators (numpy, float64).

All of them take the Gram matrix :math:`K = GG^\top` and return weights :math:`w` of the rows, so that
the update is :math:`d = G^\top w`. They rescale :math:`K` by its largest diagonal entry first (the
solutions are invariant or transform in closed form) so that the tolerances are relative.

* :func:`row_space`: the rows of :math:`G` in coordinates of its row space, from :math:`K` alone: the
  reduced factor on which the problems below stay exact when :math:`K` is singular;
* :func:`min_norm_simplex`: :math:`\min_{w \in \Delta} w^\top K w` (the min-norm point of the convex
  hull of the rows, MGDA), through one non-negative least-squares problem (bounded-variable least squares);
* :func:`dual_cone_weights`: the weights of the projection of :math:`G^\top u` onto the dual cone
  :math:`\{x : Gx \ge 0\}` (UPGrad, DualProj), a strictly convex problem in the row space, by NNLS
  (all targets at once by a batched primal-dual active-set method, KKT-checked, BVLS for the rest);
* :func:`power_fixed_point`: the positive solution of :math:`Kw = w^{-1/a}` (Nash-MTL for
  :math:`a = 1`, FairGrad), by damped Newton on a strictly convex potential.

Rank decisions follow the precision :math:`\varepsilon` of the gradients' dtype: an eigenvalue of
:math:`K` below :math:`T\varepsilon\lambda_{\max}` is a rounding artefact of a singular matrix (the
gradients carry no more digits). Dropping it changes the update by at most
:math:`\sqrt{T\varepsilon}\,\lVert G\rVert` per unit weight and keeps the weights bounded by
:math:`\lVert d\rVert / \sqrt{T\varepsilon\lambda_{\max}}`; keeping it would make them blow up
(:math:`10^{13}` and more) with a direction that no longer solves the problem.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear, nnls

from hydranet.balancing.aggregators._active_set import batched_nnls

__all__ = ["dual_cone_weights", "min_norm_simplex", "power_fixed_point", "psd_factor", "row_space"]

#: The precision of float64, the default for rank decisions on Gram matrices of float64 gradients.
FLOAT64_EPS = float(np.finfo(np.float64).eps)


def row_space(gramian: np.ndarray, eps: float = FLOAT64_EPS) -> tuple[np.ndarray, np.ndarray]:
    r"""``(vectors [T, r], roots [r])`` with :math:`K \approx V\,\mathrm{diag}(\sigma^2)\,V^\top`, keeping the
    :math:`r` eigenvalues above :math:`\max(T, 16)\,\varepsilon\lambda_{\max}`.

    With :math:`G = U\Sigma W^\top`, :math:`V = U_r` and :math:`\sigma = \Sigma_r`: row :math:`i` of
    :math:`M = V\,\mathrm{diag}(\sigma)` holds the coordinates of :math:`g_i` in the orthonormal basis
    :math:`W_r = G^\top V \mathrm{diag}(\sigma)^{-1}` of the row space, so :math:`Gy = Mz` for
    :math:`y = W_r z`, and the weights :math:`w = V\mathrm{diag}(\sigma)^{-1} z` are the minimum-norm
    ones with :math:`G^\top w = y`. The subspace is that of the rows whatever their order.
    """
    values, vectors = np.linalg.eigh(gramian)
    largest = float(values[-1]) if values.size else 0.0
    if largest <= 0.0:
        return np.zeros((gramian.shape[0], 0)), np.zeros(0)
    keep = values > largest * max(gramian.shape[0], 16) * eps  # 16: the Gram product's own rounding for few rows
    return vectors[:, keep], np.sqrt(values[keep])


def psd_factor(gramian: np.ndarray) -> np.ndarray:
    """A square matrix :math:`A` with :math:`A^\\top A = K` (from the eigendecomposition; negative
    round-off eigenvalues are set to 0)."""
    values, vectors = np.linalg.eigh(gramian)
    return np.sqrt(np.clip(values, 0.0, None))[:, None] * vectors.T


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    r""":math:`\arg\min_{x\ge 0}\lVert ax - b\rVert` by bounded-variable least squares (Stark & Parker 1995,
    an active-set method that ends on the exact KKT point of its final active set).

    On the wide, rank-deficient factors of singular Gram matrices either active-set method can stop
    short of the optimum (Lawson-Hanson, ``scipy.optimize.nnls``, more often than BVLS): with negative
    gradient entries left, i.e. a projection that conflicts with a task. The KKT conditions are checked
    and the other method is tried when they fail; the point closest to KKT is returned.
    """
    cap = 50 * a.shape[1] + 100  # the active set changes a few times per variable in practice
    if a.shape[0] <= a.shape[1]:  # zero rows change nothing, but scipy's BVLS is reliable only on tall systems
        extra = a.shape[1] + 1 - a.shape[0]
        a, b = np.vstack([a, np.zeros((extra, a.shape[1]))]), np.concatenate([b, np.zeros(extra)])
    best, worst = np.zeros(a.shape[1]), np.inf
    for solve in (
        lambda: lsq_linear(a, b, bounds=(0.0, np.inf), method="bvls", tol=1e-15, max_iter=cap).x,
        lambda: nnls(a, b, maxiter=cap)[0],
        lambda: _unit_columns(lambda c: lsq_linear(c, b, bounds=(0.0, np.inf), method="bvls", tol=1e-15, max_iter=cap).x, a),
        lambda: _unit_columns(lambda c: nnls(c, b, maxiter=cap)[0], a),
    ):
        x = np.clip(solve(), 0.0, None)
        violation = _kkt_violation(a, b, x)
        if violation < worst:
            best, worst = x, violation
        if violation <= 1e-12:  # KKT holds to rounding: the solution
            break
    return best


def _unit_columns(solve, a: np.ndarray) -> np.ndarray:
    """``solve`` on the columns of ``a`` scaled to unit norm (the same problem in ``x_j |a_j|``; other pivots)."""
    norms = np.linalg.norm(a, axis=0)
    norms = np.where(norms > 0, norms, 1.0)
    return solve(a / norms) / norms


def _kkt_violation(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    r"""How far ``x >= 0`` is from the KKT point of the NNLS problem: the gradient
    :math:`a^\top(ax - b)` must be >= 0, and :math:`x_j g_j = 0` (relative to :math:`\lVert a\rVert\lVert b\rVert`)."""
    grad = a.T @ (a @ x - b)
    scale = max(float(np.abs(a).max()) * (float(np.abs(b).max()) + float(np.abs(a @ x).max())), 1e-300)
    slack = float(np.max(np.abs(x * grad))) / max(float(x.max()), 1e-300)  # complementarity, per unit of x
    return max(float(np.max(-grad, initial=0.0)), slack) / scale


def min_norm_simplex(gramian: np.ndarray, eps: float = FLOAT64_EPS) -> np.ndarray:
    r"""Weights :math:`w \in \Delta` (the simplex) minimising :math:`w^\top K w`.

    With the reduced factor :math:`A = M^\top` of :func:`row_space` (:math:`A^\top A = K` up to the
    dropped rounding), the non-negative least-squares problem
    :math:`\min_{u \ge 0} \lVert Au\rVert^2 + (1 - \mathbf 1^\top u)^2` is solved by
    :math:`u = t\,w^\star` with :math:`w^\star` the min-norm weights and
    :math:`t = 1/(1 + \lVert Aw^\star\rVert^2)` (for fixed direction the objective is
    :math:`q/(1+q)`, increasing in :math:`q = \lVert Aw\rVert^2`); hence :math:`w^\star = u / \mathbf 1^\top u`.
    When :math:`K` is singular the minimiser :math:`G^\top w^\star` is unique, the weights are not: they
    are a vertex solution of the active set (on the simplex, so bounded).
    """
    size = gramian.shape[0]
    scale = float(np.max(np.diag(gramian)))
    if scale <= 0.0:
        return np.full(size, 1.0 / size)
    vectors, roots = row_space(gramian / scale, eps)
    system = np.vstack([roots[:, None] * vectors.T, np.ones((1, size))])
    target = np.zeros(system.shape[0])
    target[-1] = 1.0
    u = _nnls(system, target)
    return u / u.sum()


def dual_cone_weights(gramian: np.ndarray, targets: np.ndarray, eps: float = FLOAT64_EPS) -> np.ndarray:
    r"""For each row :math:`u` of ``targets`` ``[m, T]``: minimum-norm weights :math:`w` with
    :math:`G^\top w = \pi(G^\top u)`, the Euclidean projection onto the dual cone :math:`\{x : Gx \ge 0\}`.

    The projection :math:`\pi(x) = \arg\min_{Gy\ge 0}\lVert y - x\rVert` of :math:`x = G^\top u` lies in the
    row space (Quinton & Rey 2024, Prop. 1: :math:`\pi(x) = G^\top v`,
    :math:`v = \arg\min_{v \ge u} v^\top K v`). In the row-space coordinates of :func:`row_space`
    (:math:`x = W_r z_x`, :math:`z_x = M^\top u`, :math:`Gy = Mz`) it is the strictly convex problem
    :math:`\min_{Mz\ge 0}\lVert z - z_x\rVert^2`, whose solution is unique whatever the rank of :math:`K`;
    its dual is the non-negative least-squares problem :math:`z = z_x + M^\top s`, :math:`s = \arg\min_{s\ge 0}\lVert z_x + M^\top s\rVert`.
    KKT: :math:`Mz \ge 0` (no conflict), :math:`s \ge 0`, :math:`s_j (Mz)_j = 0`.

    All targets are solved together by the primal-dual active-set method of
    :func:`~hydranet.balancing.aggregators._active_set.batched_nnls` (one batched solve per iteration,
    two to four iterations on task Gram matrices: about 1 ms for 40 targets against 50 ms one by one,
    ``benchmarks/solvers.py``). An answer is kept only when its active set settled with exact sign tests
    and it satisfies the KKT conditions to :math:`10^{-12}` (relative); any other target is solved alone
    by bounded-variable least squares with the Lawson-Hanson retry (:func:`_nnls`), as before; where that
    answer is not a KKT point either (a ray of NNLS solutions: strictly weak matrices), the projection is
    recovered from the support of ridge-regularised NNLS solutions (:func:`_projection_by_support`).

    Zero rows of :math:`G` (``K[i, i] == 0``) constrain nothing and carry no direction: they are dropped
    before the solve and get weight 0. With :math:`K` non-singular the weights are the :math:`v` above;
    with :math:`K` singular only the direction :math:`G^\top w` is unique (any null vector of :math:`K` can be
    added to :math:`v`), and the weights returned are the minimum-norm ones,
    :math:`w = V\mathrm{diag}(\sigma)^{-1}z`: bounded, and permuted with the rows. A projection of norm
    below :math:`T\varepsilon` (relative to the rows) is rounding noise of an exact 0 and is returned as 0.
    """
    targets = np.asarray(targets, dtype=np.float64)
    out = np.zeros_like(targets)
    live = np.flatnonzero(np.diag(gramian) > 0.0)
    if live.size == 0:
        return out
    sub = gramian[np.ix_(live, live)]
    vectors, roots = row_space(sub / float(np.max(np.diag(sub))), eps)
    coords = roots[:, None] * vectors.T  # M^T: column j is row j of G in row-space coordinates
    u = targets[:, live]
    starts = u @ coords.T  # z_x = M^T u, one row per target
    # all targets at once by the primal-dual active-set method; the problems are positively homogeneous,
    # so each is solved on its target scaled to unit size (the sign tests' tolerance is then relative)
    size = np.max(np.abs(starts), axis=1, keepdims=True)
    size = np.where(size > 0, size, 1.0)
    s, settled = batched_nnls(coords, starts / size)  # min_{s >= 0} |z_x + M^T s|
    s *= size
    # an answer stands when its active sets settled (every sign condition exact) and it is a KKT point to
    # rounding; the others (cycling on singular K, near-parallel tiny rows) are solved one by one as before
    z = starts + s @ coords.T
    for k in np.flatnonzero(~settled | (_kkt_violations(coords, -starts, s) > 1e-12)):
        start = coords @ u[k]  # as the one-by-one solver always did, to the last bit
        s_k = _nnls(coords, -start)
        z[k] = start + coords @ s_k
        if _kkt_violation(coords, -start, s_k) > 1e-12:  # stopped short (a null ray s >= 0 of M^T): by support
            z[k] = _projection_by_support(coords, start, z[k])
    zero = np.linalg.norm(z, axis=1) <= live.size * eps * np.maximum(np.linalg.norm(starts, axis=1), 1.0)
    # a projection at the rounding level of the problem (|g_i| <= 1 here) is 0, as in exact arithmetic
    out[np.ix_(~zero, live)] = (z[~zero] / roots) @ vectors.T
    return out


def _projection_by_support(coords: np.ndarray, start: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    r"""The projection :math:`z` of ``start`` :math:`z_x` onto :math:`\{z : Mz \ge 0\}` when the NNLS
    :math:`\min_{s\ge0}\lVert z_x + M^\top s\rVert` has a ray of solutions (:math:`M^\top u = 0` for some
    :math:`u \ge 0`: 0 on the boundary of the hull of the rows, "strictly weak" matrices), on which the
    active-set methods can stop short.

    The image :math:`z = z_x + M^\top s` is unique even where :math:`s` is not, and it depends on the support
    :math:`F` of an optimal :math:`s` alone: :math:`M_F^\top s_F` is then the unconstrained least-squares
    fit, so :math:`z = (I - P_F)\,z_x` with :math:`P_F` the orthogonal projector onto the span of the
    columns :math:`F` (a rank-revealing least-squares solve, whatever their dependence). Supports are
    taken from the ridge problems :math:`\min_{s\ge0}\lVert z_x + M^\top s\rVert^2 + \delta\lVert s\rVert^2`
    (full column rank, so Lawson-Hanson is exact on them; their solutions tend to the minimum-norm
    optimal :math:`s` as :math:`\delta \to 0`) for several :math:`\delta`. Of the candidates that are
    feasible (:math:`Mz \ge 0` to :math:`10^{-12}`, relative), the one nearest :math:`z_x` is returned:
    the projection is the nearest feasible point, so an exact candidate wins. ``fallback`` (the
    active-set answer) is a candidate too, and is returned when none is feasible.
    """
    size = coords.shape[1]
    scale = max(float(np.linalg.norm(start)), 1e-300)
    candidates = [fallback]
    for delta in (1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14):  # relative to max |g_i|^2 = 1
        system = np.vstack([coords, np.sqrt(delta) * np.eye(size)])
        s = nnls(system, np.concatenate([-start, np.zeros(size)]), maxiter=50 * size + 100)[0]
        support = s > 0.0
        if support.any():
            fit = np.linalg.lstsq(coords[:, support], -start, rcond=None)[0]
            candidates.append(start + coords[:, support] @ fit)
        else:
            candidates.append(start.copy())
    best, nearest = fallback, np.inf
    for z in candidates:
        if float(np.min(coords.T @ z, initial=0.0)) >= -1e-12 * scale:
            distance = float(np.linalg.norm(z - start))
            if distance < nearest:
                best, nearest = z, distance
    return best


def _kkt_violations(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`_kkt_violation` of each row of ``x`` ``[m, n]`` for the right-hand side in the same row of ``b``."""
    fitted = x @ a.T
    grad = (fitted - b) @ a
    scale = float(np.abs(a).max(initial=0.0)) * (np.abs(b).max(axis=1, initial=0.0) + np.abs(fitted).max(axis=1, initial=0.0))
    slack = np.max(np.abs(x * grad), axis=1, initial=0.0) / np.maximum(x.max(axis=1, initial=0.0), 1e-300)
    return np.maximum(np.max(-grad, axis=1, initial=0.0), slack) / np.maximum(scale, 1e-300)


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
