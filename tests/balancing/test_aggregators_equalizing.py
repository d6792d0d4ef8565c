"""IMTL-G (equal projections), Aligned-MTL (equal singular values) and ConFIG (equal cosines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydranet.balancing.aggregators import IMTLG, AlignedMTL, ConFIG


def jacobian(seed: int, tasks: int, params: int, spread: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-spread, spread, size=(tasks, 1))


def run(method, G: np.ndarray) -> np.ndarray:
    return method(torch.tensor(G)).numpy()


def unit_rows(G: np.ndarray) -> np.ndarray:
    return G / np.linalg.norm(G, axis=1, keepdims=True)


# -- IMTL-G ----------------------------------------------------------------------------------------


def test_imtl_g_two_tasks_by_hand():
    # d = a g1 + (1 - a) g2 = (1, 1 - a); d.u1 = 1 = d.u2 = (2 - a)/sqrt 2  =>  a = 2 - sqrt 2
    G = np.array([[1.0, 0.0], [1.0, 1.0]])
    a = 2 - np.sqrt(2)
    np.testing.assert_allclose(IMTLG().weights(torch.tensor(G)).numpy(), [a, 1 - a], rtol=1e-12)
    np.testing.assert_allclose(run(IMTLG(), G), [1.0, np.sqrt(2) - 1], rtol=1e-12)


@pytest.mark.parametrize(("tasks", "params"), [(3, 5), (5, 8), (8, 8)])
def test_imtl_g_projects_equally_on_every_unit_gradient(tasks, params):
    for seed in range(5):
        G = jacobian(seed, tasks, params, spread=2.0)
        weights = IMTLG().weights(torch.tensor(G)).numpy()
        update = weights @ G
        projections = unit_rows(G) @ update
        assert weights.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(projections, projections[0], rtol=1e-8)


def test_imtl_g_leaves_zero_gradients_out():
    G = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    np.testing.assert_allclose(IMTLG().weights(torch.tensor(G)).numpy(), [2 / 3, 0.0, 1 / 3], rtol=1e-12)


# -- Aligned-MTL -----------------------------------------------------------------------------------


def aligned_reference(G: np.ndarray, mode: str) -> np.ndarray:
    """Procrustes: G = U S W^T (rank r) is replaced by s* U W^T, whose singular values all equal s*."""
    U, S, Wt = np.linalg.svd(G, full_matrices=False)
    rank = int((S**2 > (S[0] ** 2) * G.shape[0] * np.finfo(np.float64).eps).sum())
    U, S, Wt = U[:, :rank], S[:rank], Wt[:rank]
    target = {"min": S.min(), "median": np.median(S), "rmse": np.sqrt(np.mean(S**2))}[mode]
    aligned = target * U @ Wt
    np.testing.assert_allclose(np.linalg.svd(aligned, compute_uv=False)[:rank], target, rtol=1e-10)
    return aligned.sum(axis=0)  # equal task weights 1


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("tasks", "params"), [(2, 5), (3, 6), (5, 5), (4, 12)])
def test_aligned_mtl_sums_the_aligned_gradients(mode, tasks, params):
    for seed in range(3):
        G = jacobian(seed, tasks, params)
        np.testing.assert_allclose(run(AlignedMTL(scale_mode=mode), G), aligned_reference(G, mode), rtol=1e-8, atol=1e-10)


def test_aligned_mtl_drops_the_null_directions_of_dependent_gradients():
    G = jacobian(1, 3, 6)
    G[2] = 2.0 * G[0] - G[1]  # rank 2
    np.testing.assert_allclose(run(AlignedMTL(), G), aligned_reference(G, "min"), rtol=1e-7)


# -- ConFIG ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tasks", "params"), [(2, 3), (3, 5), (6, 9)])
def test_config_has_equal_positive_cosines_and_the_summed_projection_as_length(tasks, params):
    for seed in range(5):
        G = jacobian(seed, tasks, params, spread=2.0)
        update = run(ConFIG(), G)
        direction = update / np.linalg.norm(update)
        cosines = unit_rows(G) @ direction
        assert (cosines > 0).all()
        np.testing.assert_allclose(cosines, cosines[0], rtol=1e-8)
        assert np.linalg.norm(update) == pytest.approx((G @ direction).sum(), rel=1e-10)


def test_config_with_two_tasks_follows_the_bisector_of_the_unit_gradients():
    G = np.array([[3.0, 1.0, 0.0], [-1.0, 2.0, 2.0]])
    bisector = unit_rows(G).sum(axis=0)
    bisector /= np.linalg.norm(bisector)
    np.testing.assert_allclose(run(ConFIG(), G), (G @ bisector).sum() * bisector, rtol=1e-12)
