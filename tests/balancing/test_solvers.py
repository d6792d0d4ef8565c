"""The dual-cone solver: the batched active-set path against independent solvers, its fallback, and its
guarantees (KKT, permutation, zero rows).

References: scipy's Lawson-Hanson NNLS on ``G^T`` itself (the projection's Lagrangian dual in parameter
space, no Gram matrix, no factor) and quadprog (TorchJD's projector) on ``min_{v >= u} v^T K v``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls

from hydranet.balancing.aggregators import _active_set, solvers
from hydranet.balancing.aggregators._active_set import batched_nnls
from hydranet.balancing.aggregators.solvers import dual_cone_weights


def projection(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """argmin |y - x| s.t. G y >= 0, as x + G^T mu with mu = argmin_{mu >= 0} |x + G^T mu| (scipy NNLS)."""
    return x + G.T @ nnls(G.T, -x, maxiter=100 * G.shape[0])[0]


def random_rows(seed: int, tasks: int, params: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-1, 1, size=(tasks, 1))


@pytest.mark.parametrize("tasks", [2, 10, 40])
def test_batched_nnls_matches_lawson_hanson_one_problem_at_a_time(tasks):
    rng = np.random.default_rng(tasks)
    factor = rng.normal(size=(tasks + 5, tasks))
    starts = rng.normal(size=(7, tasks + 5))
    s, converged = batched_nnls(factor, starts)
    assert converged.all()
    for k in range(7):
        np.testing.assert_allclose(s[k], nnls(factor, -starts[k])[0], atol=1e-10)


@pytest.mark.parametrize("tasks", [2, 10, 40])
def test_upgrad_projections_match_nnls_in_parameter_space_and_quadprog(tasks):
    quadprog = pytest.importorskip("quadprog")
    for seed in range(3):
        G = random_rows(seed, tasks, 3 * tasks)
        K = G @ G.T
        W = dual_cone_weights(K, np.eye(tasks))
        for i in range(tasks):
            y = W[i] @ G
            np.testing.assert_allclose(y, projection(G, G[i]), atol=1e-9 * np.linalg.norm(G, 2))
            # quadprog: min 1/2 v^T K v s.t. v >= e_i (K is positive definite here: 3T > T parameters)
            v = quadprog.solve_qp(K, np.zeros(tasks), np.eye(tasks), np.eye(tasks)[i])[0]
            np.testing.assert_allclose(y, v @ G, atol=1e-7 * np.linalg.norm(G, 2))
            assert (G @ y).min() >= -1e-12 * np.linalg.norm(G, 2) ** 2  # no conflict


def test_the_active_set_path_answers_generic_problems_without_the_fallback(monkeypatch):
    calls = []
    monkeypatch.setattr(solvers, "_nnls", lambda *a: calls.append(a) or np.zeros(a[0].shape[1]))
    G = random_rows(0, 40, 120)
    W = dual_cone_weights(G @ G.T, np.eye(40))
    assert not calls
    np.testing.assert_allclose(W[3] @ G, projection(G, G[3]), atol=1e-9 * np.linalg.norm(G, 2))


def test_unsettled_or_non_kkt_answers_go_to_the_one_by_one_solver(monkeypatch):
    # an active-set path that never settles: every answer must then come from the BVLS path, unchanged
    monkeypatch.setattr(solvers, "batched_nnls", lambda a, c: (np.zeros((c.shape[0], a.shape[1])), np.zeros(c.shape[0], bool)))
    G = random_rows(1, 10, 30)
    W = dual_cone_weights(G @ G.T, np.eye(10))
    for i in range(10):
        np.testing.assert_allclose(W[i] @ G, projection(G, G[i]), atol=1e-9 * np.linalg.norm(G, 2))
    # a wrong answer that claims to have settled is caught by the KKT check
    monkeypatch.setattr(solvers, "batched_nnls", lambda a, c: (np.zeros((c.shape[0], a.shape[1])), np.ones(c.shape[0], bool)))
    W = dual_cone_weights(G @ G.T, np.eye(10))
    for i in range(10):
        np.testing.assert_allclose(W[i] @ G, projection(G, G[i]), atol=1e-9 * np.linalg.norm(G, 2))


def test_strongly_coupled_problems_settle_on_the_lawson_hanson_answer():
    # a positive definite K with off-diagonal entries near +-1 (far from an M-matrix, where full-block
    # pivoting alone carries no guarantee): every problem settles, on the NNLS solution
    factor = np.linalg.cholesky(np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]) + 0.85 * np.eye(3)).T  # eigenvalues 0.05, 2.75, 2.75
    rng = np.random.default_rng(0)
    starts = rng.normal(size=(200, 3))
    s, converged = batched_nnls(factor, starts)
    assert converged.all()
    for k in range(200):
        np.testing.assert_allclose(s[k], nnls(factor, -starts[k])[0], atol=1e-10)


def test_zero_rows_get_weight_zero_and_permute_with_the_rows():
    G = random_rows(2, 12, 20)
    G[[3, 7]] = 0.0
    W = dual_cone_weights(G @ G.T, np.eye(12))
    assert (W[:, [3, 7]] == 0).all() and (W[[3, 7]] == 0).all()  # a zero target projects to 0
    order = np.random.default_rng(0).permutation(12)
    Wp = dual_cone_weights(G[order] @ G[order].T, np.eye(12))
    np.testing.assert_allclose(Wp @ G[order], (W @ G)[order], atol=1e-10 * np.linalg.norm(G, 2))


def test_rank_deficient_gram_gives_bounded_minimum_norm_weights():
    base = random_rows(3, 6, 20)
    G = np.vstack([base, base[:2] + base[2:4]])  # 8 rows of rank 6
    K = G @ G.T
    W = dual_cone_weights(K, np.eye(8))
    null = np.linalg.svd(G.T)[2][6:]  # left null vectors of G^T, i.e. null space of K
    assert np.abs(W @ null.T).max() <= 1e-8 * np.abs(W).max()  # no null-space component
    for i in range(8):
        np.testing.assert_allclose(W[i] @ G, projection(G, G[i]), atol=1e-8 * np.linalg.norm(G, 2))


def test_scaled_targets_scale_the_weights():
    # pi is positively homogeneous: the per-target normalisation inside the solver must not show
    G = random_rows(4, 10, 25)
    K = G @ G.T
    u = np.random.default_rng(1).normal(size=(3, 10))
    np.testing.assert_allclose(dual_cone_weights(K, u * 1e-8), dual_cone_weights(K, u) * 1e-8, rtol=1e-9, atol=1e-20)


def test_module_exports():
    assert _active_set.__all__ == ["batched_nnls"]


def test_strictly_weak_matrices_project_exactly_where_bvls_stops_short():
    # u^T G = 0 with u >= 0 (0 on a face of the hull): min_{s>=0}|z_x + M^T s| has a ray of solutions, on
    # which BVLS and Lawson-Hanson stopped short (row 4 conflicted with a row at -8% of |G||d| before).
    # Reference: scipy's NNLS on G^T itself; cases from tests/balancing/properties/families.py.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "properties"))
    from families import family

    for seed, tasks, params, scale in [(3, 20, 30, 1.0), (8266, 10, 7, 1e-5)]:
        G = family("strictly_weak", seed, tasks, params).double().numpy() * scale
        W = dual_cone_weights(G @ G.T, np.eye(tasks))
        size = np.linalg.norm(G, 2)
        for i in range(tasks):
            np.testing.assert_allclose(W[i] @ G, projection(G, G[i]), atol=1e-9 * size, err_msg=f"seed {seed}, row {i}")
