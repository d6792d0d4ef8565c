"""PCGrad, GradVac and GradDrop against the papers' update rules, written here on plain vectors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from hydranet.balancing.aggregators import GradDrop, GradVac, PCGrad


def as_tensor(rows) -> torch.Tensor:
    return torch.tensor(np.array(rows, dtype=np.float64))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def pcgrad_reference(G: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    """Algorithm 1 of Yu et al. (2020) with the given visiting order of the other tasks for each task."""
    total = np.zeros(G.shape[1])
    for i, order in enumerate(orders):
        g = G[i].copy()
        for j in order:
            if g @ G[j] < 0:
                g = g - (g @ G[j]) / (G[j] @ G[j]) * G[j]
        total += g
    return total


def test_pcgrad_two_conflicting_gradients_by_hand():
    # g1.g2 = -2: g1' = g1 - (-2/2) g2 = (1, 1); g2' = g2 - (-2/4) g1 = (0, 1); sum (1, 2)
    G = as_tensor([[2.0, 0.0], [-1.0, 1.0]])
    torch.testing.assert_close(PCGrad()(G), as_tensor([1.0, 2.0]))
    torch.testing.assert_close(PCGrad().weights(G), as_tensor([1.5, 2.0]))


def test_pcgrad_leaves_agreeing_gradients_alone():
    G = as_tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    torch.testing.assert_close(PCGrad()(G), G.sum(dim=0))


def test_pcgrad_with_three_tasks_is_one_of_the_random_order_outcomes():
    G = np.array([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.1], [-0.6, -0.9, 0.4]])
    others = [[j for j in range(3) if j != i] for i in range(3)]
    outcomes = [
        pcgrad_reference(G, [list(p0), list(p1), list(p2)])
        for p0, p1, p2 in itertools.product(*(itertools.permutations(o) for o in others))
    ]
    seen = set()
    for seed in range(40):
        update = PCGrad(seed=seed)(torch.tensor(G)).numpy()
        matches = [k for k, outcome in enumerate(outcomes) if np.allclose(update, outcome, rtol=1e-12, atol=1e-12)]
        assert matches, update
        seen.add(tuple(np.round(update, 10)))
    assert len(seen) > 1  # the order is drawn, and it matters here


def test_gradvac_starts_as_pcgrad():
    G = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for seed in range(3):
        torch.testing.assert_close(GradVac(seed=seed)(G), PCGrad(seed=seed)(G), rtol=1e-12, atol=1e-12)


def test_gradvac_raises_the_cosine_to_the_ema_target():
    g1, g2 = np.array([2.0, 0.5, 0.0]), np.array([-1.0, 1.0, 0.5])
    phi = cosine(g1, g2)
    assert phi < 0
    beta = 0.3
    agg = GradVac(beta=beta)
    agg(as_tensor([g1, g2]))  # targets start at 0: this step is PCGrad, then targets = beta * phi
    torch.testing.assert_close(agg.state_dict()["targets"], as_tensor([[0.0, beta * phi], [beta * phi, 0.0]]))
    target = beta * phi
    # Paper: add k g_j to g_i, k > 0, so that cos(g_i + k g_j, g_j) equals the target (solved here by root finding).
    k1 = brentq(lambda k: cosine(g1 + k * g2, g2) - target, 0.0, 100.0)
    k2 = brentq(lambda k: cosine(g2 + k * g1, g1) - target, 0.0, 100.0)
    expected = (g1 + k1 * g2) + (g2 + k2 * g1)
    torch.testing.assert_close(agg(as_tensor([g1, g2])), torch.tensor(expected), rtol=1e-10, atol=1e-12)
    ema = (1 - beta) * target + beta * phi  # the cosine observed before the edit enters the average
    torch.testing.assert_close(agg.state_dict()["targets"], as_tensor([[0.0, ema], [ema, 0.0]]))


def test_gradvac_also_edits_agreeing_gradients_below_a_positive_target():
    agg = GradVac(beta=1.0)  # the target becomes the last cosine seen
    close = as_tensor([[1.0, 0.0], [1.0, 1.0]])  # cosine 1/sqrt 2
    agg(close)
    g1, g2 = np.array([1.0, 0.0]), np.array([0.2, 1.0])  # cosine 0.196 < 0.707 though not conflicting
    update = agg(as_tensor([g1, g2])).numpy()
    target = 1 / np.sqrt(2)
    k1 = brentq(lambda k: cosine(g1 + k * g2, g2) - target, 0.0, 100.0)
    k2 = brentq(lambda k: cosine(g2 + k * g1, g1) - target, 0.0, 100.0)
    np.testing.assert_allclose(update, g1 + k1 * g2 + g2 + k2 * g1, rtol=1e-10)


def test_graddrop_keeps_agreeing_coordinates_and_drops_by_sign_purity():
    # columns: all positive | balanced (purity 1/2) | all zero | purity 3/4 | all negative
    G = as_tensor([[1.0, -2.0, 0.0, 3.0, -1.0], [1.0, 2.0, 0.0, -1.0, -0.5]])
    updates = GradDrop(seed=0)(G.repeat(1, 4000)).view(4000, 5)  # one independent draw per coordinate
    assert torch.all(updates[:, 0] == 2.0) and torch.all(updates[:, 2] == 0.0) and torch.all(updates[:, 4] == -1.5)
    assert set(updates[:, 1].tolist()) == {2.0, -2.0} and set(updates[:, 3].tolist()) == {3.0, -1.0}
    # P(keep the positive entries) = purity: 0.5 and 0.75 (4000 draws: standard error < 0.008)
    assert abs((updates[:, 1] > 0).double().mean().item() - 0.5) < 0.03
    assert abs((updates[:, 3] > 0).double().mean().item() - 0.75) < 0.03


def test_graddrop_leak_keeps_that_share_of_every_gradient():
    G = as_tensor([[1.0, -2.0, 3.0], [-1.0, 2.0, -1.0]])
    torch.testing.assert_close(GradDrop(leak=1.0)(G), G.sum(dim=0))
    plain, leaky = GradDrop(seed=4)(G), GradDrop(leak=0.25, seed=4)(G)
    torch.testing.assert_close(leaky, 0.25 * G.sum(dim=0) + 0.75 * plain)


@pytest.mark.parametrize("method", [PCGrad, GradVac, GradDrop])
def test_a_given_generator_is_used_and_reset_rewinds_it(method):
    G = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    agg = method(generator=torch.Generator().manual_seed(11))
    first = [agg(G) for _ in range(3)]
    agg.reset()
    assert all(torch.equal(a, agg(G)) for a in first)
    assert torch.equal(first[0], method(seed=11)(G))  # the same stream as a generator seeded with 11
