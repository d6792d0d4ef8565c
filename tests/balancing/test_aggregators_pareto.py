"""MGDA, CAGrad, UPGrad and DualProj against closed forms, optimality conditions and independent solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, nnls

from hydranet.balancing.aggregators import MGDA, CAGrad, DualProj, UPGrad


def jacobian(seed: int, tasks: int, params: int, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-spread, spread, size=(tasks, 1))


def run(method, G: np.ndarray) -> np.ndarray:
    return method(torch.tensor(G)).numpy()


def project_onto_dual_cone(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """argmin_y |y - x|^2 subject to G y >= 0 through its Lagrangian dual in parameter space:
    y = x + G^T mu with mu = argmin_{mu >= 0} |x + G^T mu|^2 (an NNLS problem on G itself)."""
    mu = nnls(G.T, -x)[0]
    return x + G.T @ mu


def assert_is_projection_onto_dual_cone(G: np.ndarray, x: np.ndarray, y: np.ndarray, tol: float) -> None:
    """KKT of min |y - x|^2 s.t. Gy >= 0: y - x = G^T mu, mu >= 0, Gy >= 0, mu_i (Gy)_i = 0."""
    mu = np.linalg.lstsq(G.T, y - x, rcond=None)[0]
    size = np.abs(x).max()
    products = G @ y
    mu_scale = size / np.abs(G).max()
    np.testing.assert_allclose(G.T @ mu, y - x, atol=tol * size)
    assert (mu >= -tol * mu_scale).all(), mu
    assert (products >= -tol * size * np.abs(G).max()).all(), products
    assert np.abs(mu * products).max() <= tol * size**2, mu * products


# -- MGDA ------------------------------------------------------------------------------------------


def test_mgda_two_tasks_match_the_closed_form():
    rng = np.random.default_rng(0)
    pairs = [rng.normal(size=(2, 4)) * rng.uniform(0.1, 10, size=(2, 1)) for _ in range(30)]
    pairs.append(np.array([[1.0, 0.0], [2.0, 0.0]]))  # gamma = 2, clipped to 1: the shorter gradient
    pairs.append(np.array([[3.0, 0.0], [1.0, 0.0]]))  # gamma < 0, clipped to 0
    for g1, g2 in pairs:
        gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0.0, 1.0)
        np.testing.assert_allclose(run(MGDA(), np.stack([g1, g2])), gamma * g1 + (1 - gamma) * g2, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("tasks", "params"), [(3, 5), (6, 4), (12, 30), (40, 100)])
def test_mgda_weights_satisfy_the_optimality_conditions(tasks, params):
    # min w^T K w on the simplex: w >= 0, sum 1, (K w)_i >= w^T K w with equality where w_i > 0.
    for seed in range(5):
        G = jacobian(seed, tasks, params)
        w = MGDA().weights(torch.tensor(G)).numpy()
        K = G @ G.T
        value, marginal, scale = w @ K @ w, K @ w, np.diag(K).max()
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
        assert (marginal >= value - 1e-9 * scale).all()
        np.testing.assert_allclose(marginal[w > 1e-9], value, atol=1e-9 * scale)


def test_mgda_is_zero_at_a_pareto_stationary_point():
    G = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # 0 = (g1 + g2 + g3) / 3 is in the hull
    assert np.abs(run(MGDA(), G)).max() < 1e-12


# -- UPGrad and DualProj ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_upgrad_averages_the_projections_of_every_gradient(seed):
    G = jacobian(seed, 3 + seed % 3, 6)
    expected = np.mean([project_onto_dual_cone(G, g) for g in G], axis=0)
    np.testing.assert_allclose(run(UPGrad(), G), expected, rtol=1e-6, atol=1e-8 * np.abs(G).max())


@pytest.mark.parametrize("seed", range(6))
def test_dualproj_is_the_projection_of_the_mean(seed):
    G = jacobian(seed, 3 + seed % 3, 6)
    update = run(DualProj(), G)
    assert_is_projection_onto_dual_cone(G, G.mean(axis=0), update, tol=1e-9)
    assert_is_projection_onto_dual_cone(G, G.mean(axis=0), project_onto_dual_cone(G, G.mean(axis=0)), tol=1e-9)
    np.testing.assert_allclose(update, project_onto_dual_cone(G, G.mean(axis=0)), rtol=1e-6, atol=1e-8 * np.abs(G).max())


def test_upgrad_weights_solve_the_dual_problem_of_each_projection():
    # The mean of v_i = argmin_{v >= e_i} v^T K v; each v_i projects g_i: G^T v_i passes the KKT check.
    G = jacobian(3, 4, 7)
    from hydranet.balancing.aggregators.solvers import dual_cone_weights

    V = dual_cone_weights(G @ G.T, np.eye(4))
    for i in range(4):
        assert_is_projection_onto_dual_cone(G, G[i], G.T @ V[i], tol=1e-9)
    np.testing.assert_allclose(UPGrad().weights(torch.tensor(G)).numpy(), V.mean(axis=0), rtol=1e-12)


def test_without_conflicts_upgrad_and_dualproj_are_the_mean():
    G = np.abs(jacobian(4, 4, 5))  # all pairwise products positive
    for method in (UPGrad(), DualProj()):
        np.testing.assert_allclose(run(method, G), G.mean(axis=0), rtol=1e-12)


def test_upgrad_by_hand_on_two_conflicting_gradients():
    # g1 = (1, 0), g2 = (-1, 1): dual cone {x1 >= 0, x2 >= x1}. pi(g1) = (1/2, 1/2), pi(g2) = (0, 1)
    G = np.array([[1.0, 0.0], [-1.0, 1.0]])
    np.testing.assert_allclose(run(UPGrad(), G), [0.25, 0.75], atol=1e-12)
    # mean (0, 1/2) is already in the cone
    np.testing.assert_allclose(run(DualProj(), G), [0.0, 0.5], atol=1e-12)


# -- CAGrad ----------------------------------------------------------------------------------------


def cagrad_primal(G: np.ndarray, c: float) -> np.ndarray:
    """max_d min_i g_i.d subject to |d - g0| <= c |g0|, in the variables (d, t) with a generic solver."""
    g0 = G.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    start = np.append(g0, (G @ g0).min())
    result = minimize(
        lambda z: -z[-1],
        start,
        jac=lambda z: np.append(np.zeros(G.shape[1]), -1.0),
        constraints=[
            {"type": "ineq", "fun": lambda z: G @ z[:-1] - z[-1]},
            {"type": "ineq", "fun": lambda z: radius**2 - np.sum((z[:-1] - g0) ** 2)},
        ],
        method="SLSQP",
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    d = result.x[:-1]
    assert np.sum((d - g0) ** 2) <= radius**2 * (1 + 1e-7)  # feasible (the solver may stop at its precision)
    return d


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_solves_the_papers_max_min_problem(seed, c):
    G = jacobian(seed, 2 + seed % 4, 5, spread=0.5)
    update = run(CAGrad(c=c, rescale=0), G)
    np.testing.assert_allclose(update, cagrad_primal(G, c), rtol=1e-5, atol=1e-6 * np.abs(G).max())
    g0 = G.mean(axis=0)
    assert np.linalg.norm(update - g0) == pytest.approx(c * np.linalg.norm(g0), rel=1e-8)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_meets_the_optimality_certificate_of_the_max_min_problem_to_rounding(seed, c):
    # Sufficient conditions for max_d min_i g_i.d s.t. |d - g0| <= r (Lagrangian duality, independent of the
    # solver): d = g0 + r g_w / |g_w| with w in the simplex supported on the tasks attaining min_i g_i.d.
    # Our weights are 1/T + (r / |g_w|) w, so w is read back from them and checked to 1e-10 (SLSQP alone:
    # ~1e-5, the primal reference above).
    G = jacobian(seed, 2 + seed % 5, 6, spread=0.5)
    T, g0 = G.shape[0], G.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    weights = CAGrad(c=c, rescale=0).weights(torch.tensor(G)).numpy()
    w = weights - 1.0 / T
    assert w.min() >= -1e-12
    w = w / w.sum()
    d = G.T @ weights
    gw = G.T @ w
    np.testing.assert_allclose(d, g0 + radius * gw / np.linalg.norm(gw), rtol=1e-12, atol=1e-12 * np.abs(G).max())
    products = G @ d
    support = w > 1e-9
    assert products[support].max() - products.min() <= 1e-10 * np.abs(products).max()


def test_cagrad_rescaling_options_and_c_zero():
    G = jacobian(1, 3, 4)
    raw = run(CAGrad(c=0.4, rescale=0), G)
    np.testing.assert_allclose(run(CAGrad(c=0.4), G), raw / (1 + 0.4**2), rtol=1e-12)
    np.testing.assert_allclose(run(CAGrad(c=0.4, rescale=2), G), raw / 1.4, rtol=1e-12)
    np.testing.assert_allclose(run(CAGrad(c=0.0), G), G.mean(axis=0), rtol=1e-12)


def test_cagrad_two_tasks_against_a_grid_over_the_simplex():
    # The dual: w minimises g_w.g0 + c|g0||g_w| over w = (a, 1 - a); a fine grid brackets the solver's a.
    G = np.array([[2.0, 0.3, -0.5], [-1.0, 1.2, 0.4]])
    c = 0.5
    g0 = G.mean(axis=0)
    grid = np.linspace(0.0, 1.0, 200001)
    gw = grid[:, None] * G[0] + (1 - grid[:, None]) * G[1]
    objective = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
    a = grid[np.argmin(objective)]
    gw_best = a * G[0] + (1 - a) * G[1]
    expected = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw_best) * gw_best
    np.testing.assert_allclose(run(CAGrad(c=c, rescale=0), G), expected, rtol=1e-4)
