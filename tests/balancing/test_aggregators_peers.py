"""The aggregators added from TorchJD and LibMTL: Constant, Random, Krum, TrimmedMean, MoDo, SDMGrad, PCD, CR-MOGM.

Where each expected value comes from is said at the test: a hand derivation on a small input, an
independent re-derivation (another algorithm or the authors' loop written out again), or TorchJD 0.18
run on the same input (``pytest.importorskip("torchjd")``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from hydranet.balancing.aggregators import (
    AGGREGATORS,
    CRMOGM,
    MGDA,
    PCD,
    Constant,
    Krum,
    MoDo,
    Random,
    SDMGrad,
    TrimmedMean,
)
from hydranet.balancing.aggregators._stochastic import project_simplex

sys.path.insert(0, str(Path(__file__).parent / "properties"))
from families import FAMILIES, SCALES, family  # noqa: E402

NEW = ["constant", "random", "krum", "trimmed_mean", "modo", "sdmgrad", "pcd", "cr_mogm"]
D = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=D)


# -- Constant / Random -------------------------------------------------------------------------------


def test_constant_weights_rows_by_task_and_keeps_them_with_present():
    # hand: 1*[1,0] + 2*[0,1] + 3*[1,1] = [4, 5]; present rows 0 and 2: 1*[1,0] + 3*[1,1] = [4, 3]
    G = t([[1, 0], [0, 1], [1, 1]])
    agg = Constant(weights=[1.0, 2.0, 3.0])
    assert torch.equal(agg(G), t([4, 5]))
    assert torch.equal(agg(G[[0, 2]], present=[True, False, True]), t([4, 3]))
    assert torch.allclose(Constant()(G), G.mean(0))
    with pytest.raises(ValueError, match="one weight per task"):
        agg(G[:2])
    with pytest.raises(ValueError, match="finite"):
        Constant(weights=[1.0, float("nan")])


def test_random_is_a_softmax_of_normal_draws_from_its_generator():
    # re-derivation: the same uniform draws, Box-Muller by hand, softmax by torch
    G = torch.randn(5, 7, dtype=D, generator=torch.Generator().manual_seed(3))
    agg = Random(seed=11)
    u = torch.rand((2, 5), generator=torch.Generator().manual_seed(11), dtype=D)
    z = torch.sqrt(-2 * torch.log(1 - u[0])) * torch.cos(2 * torch.pi * u[1])
    w = agg.weights(G)
    assert torch.allclose(w, torch.softmax(z, 0), atol=1e-12) and abs(float(w.sum()) - 1) < 1e-12
    state = agg.state_dict()
    following = agg(G)
    agg.load_state_dict(state)
    assert torch.equal(agg(G), following)


# -- Krum / TrimmedMean ------------------------------------------------------------------------------


def test_krum_drops_the_outlier():
    # hand: f=1, one nearest neighbour each; squared scores [1, 1, 4, 181]: rows 0, 1, 2 kept
    G = t([[0, 0], [1, 0], [0, 2], [10, 10]])
    assert torch.allclose(Krum(n_byzantine=1, n_selected=3)(G), t([1 / 3, 2 / 3]))
    assert torch.equal(Krum(n_byzantine=1)(G), t([0, 0]))  # tie of rows 0 and 1: lowest row first
    with pytest.raises(ValueError, match="at least 4 gradients"):
        Krum(n_byzantine=1)(G[:3])


def test_trimmed_mean_by_hand():
    # hand: columns sorted [1, 2, 100] and [-5, 0, 3], middle values 2 and 0
    G = t([[1, -5], [2, 0], [100, 3]])
    assert torch.equal(TrimmedMean(trim=1)(G), t([2, 0]))
    assert torch.allclose(TrimmedMean()(G), G.mean(0))
    with pytest.raises(ValueError, match="at least 3"):
        TrimmedMean(trim=1)(G[:2])


# -- MoDo / SDMGrad ----------------------------------------------------------------------------------


def test_simplex_projection_against_a_qp():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.normal(size=6) * 3
        qp = minimize(lambda x: 0.5 * np.sum((x - y) ** 2), np.full(6, 1 / 6), jac=lambda x: x - y, method="SLSQP",
                      bounds=[(0, None)] * 6, constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                      options={"ftol": 1e-15})  # fmt: skip
        np.testing.assert_allclose(project_simplex(y), qp.x, atol=1e-7)


def test_modo_one_step_by_hand_and_present_keeps_absent_weights():
    # hand: K = diag(1, 4), lambda = [.5, .5], gamma = .1: y = [.45, .3], theta = -.125 -> [.575, .425]
    G = t([[1, 0], [0, 2]])
    agg = MoDo(gamma=0.1, rho=0.0)
    assert torch.allclose(agg(G), t([0.575, 0.85]))
    np.testing.assert_allclose(agg.state, [0.575, 0.425])
    # three tasks, task 1 absent: its weight 1/3 stays, the others step on their face (mass 2/3)
    agg = MoDo(gamma=0.1, rho=0.0)
    G3 = t([[1, 0], [0, 0], [0, 2]])
    d = agg(G3[[0, 2]], present=[True, False, True])
    assert torch.allclose(d, t([0.575, 0.85]))
    np.testing.assert_allclose(agg.state, [0.575 * 2 / 3, 1 / 3, 0.425 * 2 / 3])


def test_modo_sampled_matches_the_libmtl_rule():
    # re-derivation of LibMTL's MoDo.backward on three fixed Jacobians (loop projection of the authors' code)
    g = torch.Generator().manual_seed(5)
    G1, G2, G3 = (torch.randn(3, 8, dtype=D, generator=g) for _ in range(3))

    def libmtl_projection(y):
        m = len(y)
        s = torch.sort(y, descending=True)[0]
        tmpsum, tmax_f = 0.0, (torch.sum(y) - 1.0) / m
        for i in range(m - 1):
            tmpsum += s[i]
            tmax = (tmpsum - 1) / (i + 1.0)
            if tmax > s[i + 1]:
                tmax_f = tmax
                break
        return torch.clamp(y - tmax_f, min=0)

    lam = torch.full((3,), 1 / 3, dtype=D)
    agg = MoDo(gamma=0.05, rho=0.1)
    for _ in range(4):
        lam = libmtl_projection(lam - 0.05 * (G1 @ (G2.T @ lam) + 0.1 * lam))
        assert torch.allclose(agg.sampled(G1, G2, G3), lam @ G3, atol=1e-12)


def libmtl_sdmgrad(zeta, xi1, xi2, w, lamda=0.3, niter=20, lr=5.0):
    """LibMTL's SDMGrad.backward written out again (torch SGD with momentum, their simplex projection)."""
    GG = xi1 @ xi2.T
    scale = torch.mean(torch.sqrt(torch.clamp(torch.diag(GG), min=0)))
    GG = GG / (scale.pow(2) + 1e-8)
    Gg = torch.mean(GG, dim=1)
    w = w.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr, momentum=0.5)
    for _ in range(niter):
        opt.zero_grad()
        w.grad = GG @ w.detach() + lamda * Gg
        opt.step()
        v = w.data.numpy()
        u = np.sort(v)[::-1]
        cssv = np.cumsum(u)
        rho = np.nonzero(u * np.arange(1, v.size + 1) > (cssv - 1))[0][-1]
        w.data.copy_(torch.from_numpy((v - (cssv[rho] - 1) / (rho + 1)).clip(min=0)))
    w = w.detach()
    return ((zeta * w.view(-1, 1)).sum(0) + lamda * zeta.mean(0)) / (1 + lamda), w


def test_sdmgrad_matches_the_libmtl_rule_over_steps():
    g = torch.Generator().manual_seed(7)
    agg = SDMGrad(eps=1e-8)  # LibMTL's constant
    w = torch.full((4,), 0.25, dtype=D)
    for _ in range(3):
        zeta, xi1, xi2 = (torch.randn(4, 10, dtype=D, generator=g) for _ in range(3))
        expected, w = libmtl_sdmgrad(zeta, xi1, xi2, w)
        assert torch.allclose(agg.sampled(xi1, xi2, zeta), expected, atol=1e-10)


# -- PCD ---------------------------------------------------------------------------------------------


def test_pcd_by_hand():
    # hand: first call, eps=0: the scaled rows are unit, u1 = [1, 0], u2 = [-1, 1]/sqrt2, tau = .5;
    # the projection of u1 onto u2.d >= .5 adds mu u2, mu = .5 + 1/sqrt2; then |d| = |g1| = 2
    G = t([[2, 0], [-3, 3]])
    mu = 0.5 + 2**-0.5
    d = np.array([1 - mu * 2**-0.5, mu * 2**-0.5])
    np.testing.assert_allclose(PCD(tau=0.5, eps=0.0)(G).numpy(), 2 * d / np.linalg.norm(d), atol=1e-12)
    # no conflict: g1 itself; infeasible secondaries (opposite): g1
    assert torch.allclose(PCD(eps=0.0)(t([[1, 0], [1, 1]])), t([1, 0]))
    assert torch.allclose(PCD(tau=0.5, eps=0.0)(t([[1, 0], [0, 1], [0, -1]])), t([1, 0]))
    with pytest.raises(ValueError, match="primary task"):
        PCD()(t([[1, 0]]), present=[False, True])


def test_pcd_solves_the_qp_on_random_inputs():
    # independent: the primal QP by SLSQP on the normalised rows
    rng = np.random.default_rng(2)
    for _ in range(10):
        G = rng.normal(size=(4, 6))
        U = G / np.linalg.norm(G, axis=1, keepdims=True)
        cons = [{"type": "ineq", "fun": (lambda x, j=j: U[j] @ x - 0.3)} for j in range(1, 4)]
        qp = minimize(lambda x: 0.5 * np.sum((x - U[0]) ** 2), U[0], method="SLSQP", constraints=cons, options={"ftol": 1e-15})
        expected = qp.x * np.linalg.norm(G[0]) / np.linalg.norm(qp.x)
        np.testing.assert_allclose(PCD(tau=0.3, eps=0.0)(torch.tensor(G)).numpy(), expected, atol=1e-6)


# -- CR-MOGM -----------------------------------------------------------------------------------------


def test_cr_mogm_averages_mgda_weights():
    # hand: MGDA on orthogonal rows weights 1/|g|^2, normalised: norms (1, 2) -> [.8, .2], (2, 1) -> [.2, .8];
    # the first call gives the wrapped weights, the second .5 * [.8, .2] + .5 * [.2, .8]
    agg = CRMOGM(method="mgda", alpha=0.5)
    assert torch.allclose(agg.weights(t([[1, 0], [0, 2]])), t([0.8, 0.2]))
    assert torch.allclose(agg.weights(t([[2, 0], [0, 1]])), t([0.5, 0.5]))
    # present: task 1 absent keeps no weight yet, and starts at its fresh one (MGDA on I_3: 1/3 each)
    agg = CRMOGM(method="mgda", alpha=0.5)
    agg.weights(t([[1, 0], [0, 2]]), present=[True, False, True])
    assert np.isnan(agg.smoothed[1])
    agg.weights(torch.eye(3, dtype=D))
    np.testing.assert_allclose(agg.smoothed, [0.4 + 1 / 6, 1 / 3, 0.1 + 1 / 6])
    G = t([[1, 0], [0, 2]])
    assert torch.allclose(CRMOGM(method="mgda", alpha=0.0)(G), MGDA()(G))
    with pytest.raises(ValueError, match="no weights"):
        CRMOGM(method="trimmed_mean")


# -- degenerate families ----------------------------------------------------------------------------

SHAPES = [(3, 5), (5, 8), (10, 7), (20, 30)]


@pytest.mark.parametrize("name", NEW)
def test_finite_on_every_degenerate_family_scale_and_dtype(name):
    for kind in FAMILIES:
        for tasks, params in SHAPES:
            base = family(kind, 0, tasks, params)
            for scale in SCALES:
                for dtype in (torch.float64, torch.float32):
                    update = AGGREGATORS[name]()((base * scale).to(dtype))
                    assert bool(torch.isfinite(update).all()), (name, kind, tasks, scale, dtype)


HOMOGENEOUS = {
    "constant": Constant,
    "krum": Krum,
    "trimmed_mean": TrimmedMean,
    "sdmgrad": SDMGrad,  # eps = 0: the weights are scale-free
    "pcd": lambda: PCD(eps=0.0),
    "cr_mogm": CRMOGM,
}


@pytest.mark.parametrize("name", sorted(HOMOGENEOUS))
def test_homogeneous_on_every_family(name):
    for kind in FAMILIES:
        for tasks, params in SHAPES:
            G = family(kind, 1, tasks, params)
            expected = HOMOGENEOUS[name]()(G)
            size = max(float(expected.norm()), float(torch.linalg.matrix_norm(G, ord=2)))
            for scale in SCALES:
                got = HOMOGENEOUS[name]()(G * scale) / scale
                assert float((got - expected).norm()) <= 1e-6 * size, (name, kind, tasks, scale)


@pytest.mark.parametrize("name", ["constant", "trimmed_mean", "sdmgrad", "cr_mogm"])
def test_permutation_invariant_on_every_family(name):
    rng = np.random.default_rng(0)
    for kind in FAMILIES:
        for tasks, params in SHAPES:
            G = family(kind, 2, tasks, params)
            expected = AGGREGATORS[name]()(G)
            order = rng.permutation(tasks)
            size = max(float(expected.norm()), float(torch.linalg.matrix_norm(G, ord=2)))
            assert float((AGGREGATORS[name]()(G[order]) - expected).norm()) <= 1e-6 * size, (kind, tasks)


@pytest.mark.parametrize("name", ["modo", "sdmgrad", "pcd", "cr_mogm"])
def test_present_leaves_absent_state_and_matches_full_when_complete(name):
    g = torch.Generator().manual_seed(1)
    G = torch.randn(4, 6, dtype=D, generator=g)
    full, masked = AGGREGATORS[name](), AGGREGATORS[name]()
    for _ in range(3):
        assert torch.equal(full(G), masked(G, present=[True] * 4))
    before = {k: (None if v is None or isinstance(v, dict) else v.clone()) for k, v in masked.state_dict().items()}
    masked(G[[0, 1, 3]], present=[True, True, False, True])
    for key, value in masked.state_dict().items():
        if before.get(key) is not None:
            assert torch.equal(value[2], before[key][2]), key


# -- side by side with TorchJD 0.18 ------------------------------------------------------------------


def test_agreement_with_torchjd():
    tj = pytest.importorskip("torchjd.aggregation")
    g = torch.Generator().manual_seed(4)
    G = torch.randn(6, 9, dtype=D, generator=g)
    pairs = [
        (Krum(n_byzantine=2, n_selected=2, squared=False), tj.Krum(n_byzantine=2, n_selected=2)),
        (TrimmedMean(trim=2), tj.TrimmedMean(trim_number=2)),
        (Constant(weights=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), tj.Constant(t([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]))),
    ]
    for ours, theirs in pairs:
        assert torch.allclose(ours(G), theirs(G), atol=1e-10), type(ours).__name__
    # PCD: TorchJD's dual active set against our primal one, over steps (same EMA)
    ours, theirs = PCD(tau=0.2), tj.PCD(tau=0.2)
    for _ in range(3):
        G = torch.randn(4, 9, dtype=D, generator=g)
        assert torch.allclose(ours(G), theirs(G), atol=1e-8)
    # CR-MOGM around Krum (whose weights agree exactly above; TorchJD's UPGrad regularises K by 1e-4 and
    # its IMTL-G normalises differently, so they would test those, not the smoothing); SDMGrad with TorchJD's lr and LibMTL's eps (TorchJD's weighting of A = G G^T)
    ours = CRMOGM(method="krum", alpha=0.3, settings={"n_byzantine": 1, "squared": False})
    theirs = tj.GramianWeightedAggregator(tj.CRMOGMWeighting(tj.KrumWeighting(n_byzantine=1), alpha=0.3))
    sdm, sdm_tj = SDMGrad(lr=10.0, eps=1e-8), tj.SDMGradWeighting()
    for _ in range(3):
        G = torch.randn(4, 9, dtype=D, generator=g)
        assert torch.allclose(ours(G), theirs(G), atol=1e-8)
        assert torch.allclose(sdm.weights(G), sdm_tj(G @ G.T), atol=1e-10)
