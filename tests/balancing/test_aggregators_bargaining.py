"""Nash-MTL and FairGrad: the weights solve G G^T w = w^(-1/alpha)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from hydranet.balancing.aggregators import FairGrad, NashMTL


def jacobian(seed: int, tasks: int, params: int, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-spread, spread, size=(tasks, 1))


def weights(method, G: np.ndarray) -> np.ndarray:
    return method.weights(torch.tensor(G)).numpy()


@pytest.mark.parametrize(("tasks", "params"), [(2, 3), (4, 6), (10, 30), (40, 80)])
def test_nash_weights_solve_the_bargaining_equation(tasks, params):
    for seed in range(3):
        G = jacobian(seed, tasks, params, spread=2.0)
        alpha = weights(NashMTL(max_norm=None), G)
        K = G @ G.T
        assert (alpha > 0).all()
        np.testing.assert_allclose(alpha * (K @ alpha), 1.0, rtol=1e-9)
        assert np.linalg.norm(alpha @ G) == pytest.approx(np.sqrt(tasks), rel=1e-9)


def test_nash_clips_the_update_to_max_norm():
    G = torch.tensor(jacobian(0, 3, 5))
    free = NashMTL(max_norm=None)(G)
    clipped = NashMTL(max_norm=0.5)(G)
    torch.testing.assert_close(clipped, free * 0.5 / np.sqrt(3), rtol=1e-10, atol=0)
    assert NashMTL()(G).norm().item() == pytest.approx(1.0)  # the default max_norm
    torch.testing.assert_close(NashMTL(max_norm=10.0)(G), free)


def test_nash_reuses_its_weights_between_updates_and_keeps_them_as_warm_start():
    G1, G2, G3, G4 = (jacobian(s, 3, 5) for s in range(4))
    agg = NashMTL(max_norm=None, update_weights_every=3)
    first = weights(agg, G1)
    np.testing.assert_allclose(weights(agg, G2), first)  # computed on G1, reused
    np.testing.assert_allclose(weights(agg, G3), first)
    fourth = weights(agg, G4)  # recomputed
    K4 = G4 @ G4.T
    np.testing.assert_allclose(fourth * (K4 @ fourth), 1.0, rtol=1e-9)
    state = agg.state_dict()
    assert state["step"] == 4
    np.testing.assert_allclose(state["alpha"].numpy(), fourth)


def test_nash_gives_zero_weight_to_a_task_without_gradient():
    G = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(weights(NashMTL(max_norm=None), G), [1.0, 0.0, 0.5], rtol=1e-10)


def test_nash_stays_bounded_at_a_pareto_stationary_point():
    # 0 is in the convex hull: no solution exists; the regularised one gives a small update of norm < sqrt T
    G = np.array([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    update = NashMTL(max_norm=None)(torch.tensor(G)).numpy()
    assert np.isfinite(update).all() and np.linalg.norm(update) < np.sqrt(3)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_matches_the_authors_least_squares_solution(alpha):
    for seed in range(3):
        G = jacobian(seed, 4, 7, spread=0.5)
        K = G @ G.T
        reference = least_squares(
            lambda w: K @ w - w ** (-1.0 / alpha), np.full(4, 0.25), bounds=(0, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15
        ).x
        w = weights(FairGrad(alpha=alpha), G)
        np.testing.assert_allclose(K @ w, w ** (-1.0 / alpha), rtol=1e-9)
        np.testing.assert_allclose(w, reference, rtol=1e-6)


def test_fairgrad_with_alpha_one_is_nash_without_clipping():
    G = torch.tensor(jacobian(5, 5, 9))
    torch.testing.assert_close(FairGrad(alpha=1.0)(G), NashMTL(max_norm=None)(G), rtol=1e-10, atol=1e-12)


def test_fairgrad_two_orthogonal_tasks_by_hand():
    # K = diag(1, 4): w1 = 1, 4 w2 = w2^(-1/2) => w2 = 4^(-2/3)
    G = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(weights(FairGrad(alpha=2.0), G), [1.0, 4 ** (-2 / 3)], rtol=1e-10)
