"""``pref_vector`` for UPGrad, DualProj, Aligned-MTL and ConFIG (TorchJD's preference vectors).

Expected values come from independent re-derivations: the dual-cone projection by scipy's NNLS on G itself
(the Lagrangian dual in parameter space, no Gram matrix), Aligned-MTL from the SVD of G (the aligned
Jacobian sigma_min U W^T of the paper), ConFIG from numpy's pseudo-inverse of the unit rows, and TorchJD
0.18's own aggregators when it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from hydranet.balancing.aggregators import AlignedMTL, ConFIG, DualProj, UPGrad

PREF = [0.5, 2.0, 1.0, 0.25]


def jacobian(seed: int, tasks: int = 4, params: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-0.5, 0.5, size=(tasks, 1))


def projection(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """argmin |y - x| s.t. G y >= 0: y = x + G^T mu, mu = argmin_{mu >= 0} |x + G^T mu| (NNLS)."""
    return x + G.T @ nnls(G.T, -x, maxiter=1000)[0]


def run(method, G: np.ndarray, **kwargs) -> np.ndarray:
    return method(torch.tensor(G), **kwargs).numpy()


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_sums_the_projections_of_the_preference_weighted_gradients(seed):
    G = jacobian(seed)
    p = np.array(PREF)
    expected = sum(projection(G, p[i] * G[i]) for i in range(4))
    np.testing.assert_allclose(run(UPGrad(pref_vector=PREF), G), expected, atol=1e-9 * np.abs(G).max())
    # a negative preference projects -|p_i| g_i, which is not -|p_i| pi(g_i)
    q = np.array([1.0, -0.5, 0.3, 0.2])
    expected = sum(projection(G, q[i] * G[i]) for i in range(4))
    np.testing.assert_allclose(run(UPGrad(pref_vector=q), G), expected, atol=1e-9 * np.abs(G).max())


@pytest.mark.parametrize("seed", range(4))
def test_dualproj_projects_the_preference_weighted_sum(seed):
    G = jacobian(seed)
    expected = projection(G, np.array(PREF) @ G)
    np.testing.assert_allclose(run(DualProj(pref_vector=PREF), G), expected, atol=1e-9 * np.abs(G).max())


@pytest.mark.parametrize("seed", range(4))
def test_aligned_mtl_combines_the_aligned_rows_with_the_preference(seed):
    G = jacobian(seed)
    U, sigma, Wt = np.linalg.svd(G, full_matrices=False)
    aligned = sigma.min() * U @ Wt  # the paper's aligned Jacobian (condition number 1)
    np.testing.assert_allclose(run(AlignedMTL(pref_vector=PREF), G), np.array(PREF) @ aligned, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_config_aims_at_cosines_proportional_to_the_preference(seed):
    G = jacobian(seed)
    units = G / np.linalg.norm(G, axis=1, keepdims=True)
    x = np.linalg.pinv(units) @ np.array(PREF)
    x /= np.linalg.norm(x)
    d = run(ConFIG(pref_vector=PREF), G)
    np.testing.assert_allclose(d, (G @ x).sum() * x, rtol=1e-9, atol=1e-12)
    cosines = units @ d / np.linalg.norm(d)
    np.testing.assert_allclose(cosines / cosines[0], np.array(PREF) / PREF[0], rtol=1e-9)


def test_the_default_preference_is_each_methods_uniform_one():
    G = torch.tensor(jacobian(7))
    for method, uniform in ((UPGrad, 0.25), (DualProj, 0.25), (AlignedMTL, 1.0), (ConFIG, 1.0)):
        torch.testing.assert_close(method(pref_vector=[uniform] * 4)(G), method()(G), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", [UPGrad, DualProj, AlignedMTL, ConFIG])
def test_present_rows_take_their_tasks_preference_entries(method):
    G = torch.tensor(jacobian(3, tasks=3))
    mask = torch.tensor([True, False, True, True])
    got = method(pref_vector=PREF)(G, present=mask)
    expected = method(pref_vector=[PREF[0], PREF[2], PREF[3]])(G)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="pref_vector of 4 entries"):
        method(pref_vector=PREF)(G)  # 3 rows, 4 preferences, no mask


@pytest.mark.parametrize("method", [UPGrad, DualProj, AlignedMTL, ConFIG])
def test_a_bad_preference_is_refused_at_construction(method):
    for bad in ([1.0, float("nan")], [[1.0, 2.0]], []):
        with pytest.raises(ValueError, match="pref_vector"):
            method(pref_vector=bad)


def test_agreement_with_torchjd_on_preferences():
    tj = pytest.importorskip("torchjd.aggregation")
    from torchjd.linalg import QuadprogProjector

    p = torch.tensor(PREF, dtype=torch.float64)
    exact = QuadprogProjector(norm_eps=0.0, reg_eps=0.0)  # TorchJD's defaults regularise K by 1e-4
    pairs = [
        (UPGrad(pref_vector=PREF), tj.UPGrad(pref_vector=p, projector=exact)),
        (DualProj(pref_vector=PREF), tj.DualProj(pref_vector=p, projector=exact)),
        (AlignedMTL(pref_vector=PREF), tj.AlignedMTL(pref_vector=p)),
        (ConFIG(pref_vector=PREF), tj.ConFIG(pref_vector=p)),
    ]
    for seed in range(3):
        G = torch.tensor(jacobian(seed))
        for ours, theirs in pairs:
            torch.testing.assert_close(ours(G), theirs(G), rtol=1e-7, atol=1e-9, msg=type(ours).__name__)
