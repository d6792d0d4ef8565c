"""Every aggregator on degenerate Jacobians: TorchJD-style matrix families (``families.py``) at scales from
1e-10 to 1e15, in float32 and float64.

Properties (the lists below say which methods promise which):

* finiteness: every method, family, scale and dtype;
* permutation invariance: permuting the rows changes nothing in ``d`` (not for PCGrad, GradVac and
  GradDrop, whose random visiting orders / masks are drawn per row position, nor for the stateful
  MoCo and ExcessMTL, nor for Nash-MTL / FairGrad on singular K, where the solver's ridge fallback is
  an approximation);
* linearity under positive scaling ``d(cG) = c d(G)`` for the homogeneous methods;
* non-conflict ``G d >= -tol |G| |d|`` for UPGrad, DualProj, MGDA and CAGrad with ``c >= 1``.

Methods with a minimum row count (``min_rows``: Krum ``f + 3``, TrimmedMean ``2 trim + 1``) run on the shapes
they accept; the finiteness test checks that they refuse the others with an error and skips them, saying why.

Tolerances: the solvers work on the Gram matrix and drop eigenvalues below ``T eps lambda_max``
(``eps`` the precision of the dtype): the update is exact up to ``sqrt(T eps) |G|`` relative, and the
rounding of ``d = w @ G`` in the dtype adds ``sqrt(eps / T)`` relative (solvers.py). ``TOL`` is ten times
``sqrt(eps)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from families import FAMILIES, SCALES, family
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize, nnls

from hydranet.balancing.aggregators import AGGREGATORS, CAGrad, DualProj, IMTLG, MoCo, UPGrad

NAMES = sorted(AGGREGATORS)
PERMUTATION_INVARIANT = ["mean", "sum", "mgda", "upgrad", "dualproj", "imtl_g", "cagrad", "aligned_mtl", "config"]
# Krum: ties between different rows have probability 0 here (identical rows give the same update).
PERMUTATION_INVARIANT_ON_FAMILIES = PERMUTATION_INVARIANT + ["krum", "trimmed_mean"]
HOMOGENEOUS = [
    "mean", "sum", "pcgrad", "gradvac", "graddrop", "mgda", "cagrad", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "config",
    "krum", "trimmed_mean", "constant",
]  # fmt: skip
NON_CONFLICTING = {
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "mgda": AGGREGATORS["mgda"],
    "cagrad_c1": lambda: CAGrad(c=1.0),
    "cagrad_c2": lambda: CAGrad(c=2.0),
}
DTYPES = [torch.float64, torch.float32]
# CAGrad: SLSQP polished by Newton on its face, the degenerate case decided by the exact MGDA solver: 1e-8 in
# float64 (tighter than the 1e-6 of the others, to hold the polish to its promise).
RTOL = {"cagrad": 1e-8}
TOL = {dtype: 10 * torch.finfo(dtype).eps ** 0.5 for dtype in DTYPES}
SHAPES = [(2, 5), (5, 8), (10, 7), (20, 30)]  # (10, 7): more tasks than parameters


def build(name: str):
    if name == "nash_mtl":
        return AGGREGATORS[name](max_norm=None)
    return AGGREGATORS[name]()


def matrices(seeds: int = 2, method: str | None = None):
    """The suite's matrices; with ``method``, only the shapes it accepts (``min_rows``: Krum needs f + 3 rows)."""
    least = getattr(build(method), "min_rows", 1) if method is not None else 1
    for name in FAMILIES:
        for tasks, params in SHAPES:
            if tasks < least:
                continue
            for seed in range(seeds):
                yield f"{name}-{tasks}x{params}-{seed}", family(name, seed, tasks, params)


def conflict(G: torch.Tensor, d: torch.Tensor, dtype: torch.dtype) -> float:
    """``min_i g_i . d / (|G| max(|d|, TOL |G|))`` in float64: negative is a conflict. An update below
    ``TOL |G|`` is zero at the solvers' accuracy (an exact 0 computed with rounding, e.g. at a
    Pareto-stationary point), and its direction is noise."""
    G, d = G.double(), d.double()
    norm = float(torch.linalg.matrix_norm(G, ord=2))
    size = norm * max(float(d.norm()), TOL[dtype] * norm)
    return 0.0 if size == 0.0 else float((G @ d).min()) / size


# -- finiteness ------------------------------------------------------------------------------------


def skip_if_too_few_rows(method, tasks: int) -> None:
    """Methods with a minimum row count (``min_rows``: Krum needs ``f + 3``, TrimmedMean ``2t + 1``)
    refuse smaller Jacobians by design, with an error; those shapes are skipped, saying why."""
    needed = getattr(method, "min_rows", 1)
    if tasks < needed:
        with pytest.raises(ValueError, match="needs at least"):  # the refusal names the minimum
            method(family("normal", 0, tasks, 5))
        pytest.skip(f"{type(method).__name__} needs at least {needed} rows (min_rows) and refuses {tasks}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_every_family_and_scale_gives_a_finite_update(name, shape):
    tasks, params = shape
    skip_if_too_few_rows(build(name), tasks)
    for kind in FAMILIES:
        base = family(kind, 0, tasks, params)
        for scale in SCALES:
            for dtype in DTYPES:
                G = (base * scale).to(dtype)
                update = build(name)(G)
                assert bool(torch.isfinite(update).all()), (kind, scale, dtype)


# -- non-conflict ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(NON_CONFLICTING))
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_non_conflicting_methods_conflict_with_no_row_of_any_family(method, dtype):
    for label, base in matrices():
        for scale in (1e-10, 1.0, 1e15):
            G = (base * scale).to(dtype)
            assert conflict(G, NON_CONFLICTING[method]()(G), dtype) >= -TOL[dtype], (label, scale)


# -- permutation invariance ------------------------------------------------------------------------


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT_ON_FAMILIES)
def test_permuting_the_rows_of_any_family_leaves_the_update_unchanged(name):
    rng = np.random.default_rng(0)
    for label, G in matrices(method=name):
        expected = build(name)(G)
        size = max(float(expected.norm()), float(torch.linalg.matrix_norm(G, ord=2)))
        for _ in range(3):
            got = build(name)(G[rng.permutation(G.shape[0])])
            assert float((got - expected).norm()) <= RTOL.get(name, 1e-6) * size, (label, got, expected)


cases = st.tuples(st.sampled_from(sorted(FAMILIES)), st.integers(0, 10**6), st.sampled_from(SHAPES))


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
@settings(deadline=None)
@given(case=cases, scale=st.sampled_from(SCALES), order=st.randoms(use_true_random=False))
def test_permutation_invariance_on_drawn_degenerate_matrices(name, case, scale, order):
    kind, seed, (tasks, params) = case
    G = family(kind, seed, tasks, params) * scale
    rows = list(range(tasks))
    order.shuffle(rows)
    expected = build(name)(G)
    size = max(float(expected.norm()), float(torch.linalg.matrix_norm(G, ord=2)))
    assert float((build(name)(G[rows]) - expected).norm()) <= RTOL.get(name, 1e-6) * size


def test_upgrad_permutation_on_a_strictly_weak_matrix_found_by_hypothesis():
    # 0 on the boundary of the hull: a ray of NNLS solutions, on which the active-set methods stopped short
    G = family("strictly_weak", 8266, 10, 7) * 1e-5
    expected = UPGrad()(G)
    size = max(float(expected.norm()), float(torch.linalg.matrix_norm(G, ord=2)))
    for seed in range(20):
        rows = np.random.default_rng(seed).permutation(10)
        assert float((UPGrad()(G[rows]) - expected).norm()) <= 1e-6 * size


# -- linearity under scaling -----------------------------------------------------------------------


@pytest.mark.parametrize("name", HOMOGENEOUS)
def test_the_homogeneous_methods_scale_with_the_gradients_on_every_family(name):
    for label, G in matrices(seeds=1, method=name):
        expected = build(name)(G)
        size = max(float(expected.norm()), float(torch.linalg.matrix_norm(G, ord=2)))
        for scale in SCALES:
            got = build(name)(G * scale) / scale
            assert float((got - expected).norm()) <= RTOL.get(name, 1e-6) * size, (label, scale, float((got - expected).norm()), size)


# -- the dual-cone projection against an independent solver ----------------------------------------


def projection_by_nnls(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """argmin |y - x| s.t. G y >= 0 from the Lagrangian dual in parameter space, y = x + G^T mu with
    mu = argmin_{mu >= 0} |x + G^T mu| (scipy's NNLS on G itself, no Gram matrix, no factor)."""
    return x + G.T @ nnls(G.T, -x, maxiter=100 * G.shape[0])[0]


def projection_by_slsqp(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The same projection as a generic constrained QP (scipy's SLSQP on the primal)."""
    result = minimize(
        lambda y: 0.5 * np.sum((y - x) ** 2), x, jac=lambda y: y - x, method="SLSQP",
        constraints=[{"type": "ineq", "fun": lambda y: G @ y, "jac": lambda y: G}], options={"ftol": 1e-16, "maxiter": 2000},
    )  # fmt: skip
    return result.x


def assert_kkt(G: np.ndarray, x: np.ndarray, y: np.ndarray, tol: float) -> None:
    """KKT of min |y - x|^2 s.t. G y >= 0: G y >= 0, y - x = G^T mu with mu >= 0 and mu_i (G y)_i = 0."""
    scale = np.linalg.norm(G, 2)
    products = G @ y
    assert products.min() >= -tol * scale * max(np.linalg.norm(y), np.linalg.norm(x)), products
    active = products <= tol * scale * np.linalg.norm(x)  # only active rows may carry a multiplier
    mu = nnls(G[active].T, y - x)[0] if active.any() else np.zeros(0)
    residual = (G[active].T @ mu if active.any() else 0.0) - (y - x)
    assert np.linalg.norm(residual) <= tol * np.linalg.norm(x), residual


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_upgrad_projections_solve_the_qp_on_every_family(kind):
    for seed in range(2):
        for tasks, params in [(5, 8), (10, 7), (20, 30)]:
            G = family(kind, seed, tasks, params).numpy()
            K = G @ G.T
            from hydranet.balancing.aggregators.solvers import dual_cone_weights

            weights = dual_cone_weights(K, np.eye(tasks))
            for i in range(tasks):
                x, y = G[i], weights[i] @ G
                assert_kkt(G, x, y, tol=1e-7)
                for other in (projection_by_nnls(G, x), projection_by_slsqp(G, x)):
                    # both feasible: the strictly convex objective decides (our y is never worse)
                    assert np.linalg.norm(y - x) <= np.linalg.norm(other - x) + 1e-7 * np.linalg.norm(x)
                np.testing.assert_allclose(y, projection_by_nnls(G, x), atol=1e-6 * np.linalg.norm(G, 2))
            expected = np.mean([projection_by_nnls(G, g) for g in G], axis=0)
            np.testing.assert_allclose(UPGrad()(torch.tensor(G)).numpy(), expected, atol=1e-6 * np.linalg.norm(G, 2))


def test_upgrad_with_two_zero_rows_among_ten_is_right_for_every_row_order():
    G = family("normal", 0, 10, 7).numpy() * 3.0
    G[[2, 5]] = 0.0
    expected = np.mean([projection_by_nnls(G, g) for g in G], axis=0)
    rng = np.random.default_rng(1)
    for _ in range(100):
        order = rng.permutation(10)
        for method, target in ((UPGrad(), expected), (DualProj(), projection_by_nnls(G, G.mean(axis=0)))):
            d = method(torch.tensor(G[order])).numpy()
            np.testing.assert_allclose(d, target, atol=1e-9 * np.abs(G).max())
            assert (G @ d).min() >= -1e-9 * np.abs(G).max() ** 2


@pytest.mark.parametrize("name", ["upgrad", "dualproj"])
def test_dual_cone_weights_are_bounded_and_zero_rows_get_weight_zero(name):
    # On rank-deficient K any null vector can be added to the weights: the minimum-norm ones are
    # returned, |w| <= |d| / sigma_min(kept) (a few units here, not 1e13).
    for kind in ("strictly_weak", "strong_stationary", "zero_rows", "duplicates"):
        for seed in range(3):
            G = family(kind, seed, 20, 30)
            w = AGGREGATORS[name]().weights(G)
            assert float(w.abs().max()) < 1e3, (kind, seed, w)
            assert bool((w[G.norm(dim=1) == 0] == 0).all())
            null = torch.linalg.svd(G.T)[2][G.shape[0] - 1 :] if kind != "duplicates" else None
            if null is not None and torch.linalg.matrix_rank(G) < G.shape[0]:
                assert float((null @ w).abs().max()) <= 1e-6 * float(w.norm())  # no null-space component


@pytest.mark.parametrize("method", [UPGrad, DualProj])
def test_strictly_weak_matrices_in_float32_are_finite_and_match_the_float64_path(method):
    # TorchJD's rank-19-of-20 matrices. Rounded to float32 the matrix is another (full-rank) matrix whose
    # dual cone can differ a lot (0 on the boundary of the hull is an ill-conditioned case), so the
    # reference is the float64 path on the same float32 values.
    for seed in range(5):
        G = family("strictly_weak", seed, 20, 30).float()
        got = method()(G).double()
        assert bool(torch.isfinite(got).all())
        expected = method()(G.double())
        assert float((got - expected).norm()) <= TOL[torch.float32] * float(torch.linalg.matrix_norm(G.double(), ord=2))
        assert conflict(G, got, torch.float32) >= -TOL[torch.float32]


# -- MoCo, CAGrad, IMTL-G ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e10, 1e15])
@pytest.mark.parametrize("dtype", DTYPES)
def test_moco_takes_huge_gradients(scale, dtype):
    agg = MoCo()
    for seed in range(3):
        update = agg((family("normal", seed, 5, 8) * scale).to(dtype))
        assert bool(torch.isfinite(update).all())
        assert agg.lambdas.min() >= 0 and agg.lambdas.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("c", [1.0, 1.5, 4.0])
@pytest.mark.parametrize("kind", ["strong_stationary", "strictly_weak", "zero_rows"])
def test_cagrad_with_c_at_least_one_never_conflicts_when_zero_is_in_the_hull(c, kind):
    for seed in range(4):
        G = family(kind, seed, 6, 9)
        d = CAGrad(c=c, rescale=0)(G)
        assert conflict(G, d, torch.float64) >= -TOL[torch.float64], (seed, G @ d)
        g0 = G.mean(dim=0)
        assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9)  # inside the ball


def test_cagrad_in_the_degenerate_case_returns_the_projection_of_the_mean():
    # 0 = g1 / 3 + 2 g2 / 3 is in the hull: g_w = 0 at the optimum, and every point of the ball with Gd >= 0
    # is optimal. The closest to g0 = (1/3, 1/3) is its projection onto the dual cone {x = 0, y >= 0}:
    # (0, 1/3) (by hand), where g0 itself conflicts with g2 (g2 . g0 = -1/3).
    G = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for c in (1.0, 2.0):
        np.testing.assert_allclose(CAGrad(c=c, rescale=0)(G).numpy(), [0.0, 1.0 / 3.0], atol=1e-9)


def test_imtl_g_on_linearly_dependent_gradients():
    # g3 = g1 + g2: the paper's system is singular and d = 0 satisfies it; the generalisation gives the
    # least-squares equal-projection direction, independent of the row order and far from 0.
    g1, g2 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)
    G = torch.stack([g1, g2, g1 + g2])
    d = IMTLG()(G)
    assert float(d.norm()) > 0.3
    for order in ([1, 0, 2], [2, 1, 0], [0, 2, 1]):
        torch.testing.assert_close(IMTLG()(G[order]), d, rtol=1e-9, atol=1e-12)
    # duplicated gradients: equal projections are attainable, and the weights sum to 1
    H = torch.cat([family("normal", 0, 4, 9), family("normal", 0, 4, 9)[:2]])
    w = IMTLG().weights(H)
    units = H / H.norm(dim=1, keepdim=True)
    projections = units @ (w @ H)
    torch.testing.assert_close(projections, projections[:1].expand(6), rtol=1e-9, atol=0.0)
    assert float(w.sum()) == pytest.approx(1.0)
