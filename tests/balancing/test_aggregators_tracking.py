"""MoCo and ExcessMTL step by step against the update rules written here on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from hydranet.balancing.aggregators import ExcessMTL, MoCo
from hydranet.balancing.aggregators.tracking import project_simplex


def jacobian(seed: int, tasks: int, params: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(tasks, params))


def simplex_projection_by_bisection(v: np.ndarray) -> np.ndarray:
    """The projection onto the simplex is max(v - theta, 0) with theta solving sum max(v - theta, 0) = 1."""
    theta = brentq(lambda t: np.maximum(v - t, 0.0).sum() - 1.0, v.min() - 1.0, v.max())
    return np.maximum(v - theta, 0.0)


def test_simplex_projection():
    rng = np.random.default_rng(0)
    for v in [rng.normal(size=5) * 3 for _ in range(20)] + [np.array([0.2, 0.3, 0.5]), np.array([5.0, -5.0])]:
        np.testing.assert_allclose(project_simplex(v), simplex_projection_by_bisection(v), atol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_moco_follows_the_tracking_and_projected_weight_updates(rho):
    beta, beta_sigma, gamma, gamma_sigma = 0.5, 0.5, 0.1, 0.5
    agg = MoCo(beta=beta, beta_sigma=beta_sigma, gamma=gamma, gamma_sigma=gamma_sigma, rho=rho)
    Y, lam = np.zeros((3, 6)), np.full(3, 1 / 3)
    for k in range(1, 5):
        G = jacobian(k, 3, 6) * [[1.0], [3.0], [0.5]]
        Y = Y - beta / k**beta_sigma * (Y - G)
        lam = simplex_projection_by_bisection(lam - gamma / k**gamma_sigma * (Y @ Y.T + rho * np.eye(3)) @ lam)
        update = agg(torch.tensor(G)).numpy()
        np.testing.assert_allclose(update, Y.T @ lam, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(agg.lambdas, lam, rtol=1e-10, atol=1e-12)


def test_moco_with_beta_one_and_no_decay_tracks_the_current_gradients():
    agg = MoCo(beta=1.0, beta_sigma=0.0)
    G = jacobian(0, 2, 4)
    agg(torch.tensor(G))
    torch.testing.assert_close(agg.tracked, torch.tensor(G))


def excess_reference(Gs: list[np.ndarray], step_size: float, eps: float) -> list[np.ndarray]:
    """The authors' update: S += g^2, e = sum g^2 / sqrt(S + eps), w <- T normalise(w exp(step e / e_first))."""
    tasks = Gs[0].shape[0]
    S, w, first, out = np.zeros_like(Gs[0]), np.ones(tasks), np.full(tasks, np.nan), []
    for G in Gs:
        S = S + G**2
        e = (G**2 / np.sqrt(S + eps)).sum(axis=1)
        for i in range(tasks):
            if not np.isnan(first[i]):
                w[i] *= np.exp(step_size * e[i] / first[i])
            elif e[i] > 0:
                first[i] = e[i]
        w = tasks * w / w.sum()
        out.append(w.copy())
    return out


def test_excess_mtl_weights_follow_the_excess_risk_estimates():
    Gs = [jacobian(k, 3, 5) * [[1.0], [0.1 * k], [2.0]] for k in range(1, 6)]
    Gs[0][1] = 0.0  # task 1 has no gradient at first: its reference estimate comes later
    agg = ExcessMTL(step_size=0.5)
    for G, expected in zip(Gs, excess_reference(Gs, 0.5, 1e-7)):
        w = agg.weights(torch.tensor(G)).numpy()
        np.testing.assert_allclose(w, expected, rtol=1e-10)
        assert w.sum() == pytest.approx(3.0)
    assert not np.allclose(w, 1.0)


def test_excess_mtl_starts_with_the_plain_sum():
    G = torch.tensor(jacobian(0, 4, 3))
    torch.testing.assert_close(ExcessMTL()(G), G.sum(dim=0))
