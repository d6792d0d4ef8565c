"""COSMOS and PBI (preference-conditioned scalarizations) and IMTL (IMTL-L scaling with IMTL-G directions).

Expected values: the gradients of COSMOS and PBI in the losses are derived by hand (in each test); the values
and gradients agree with TorchJD 0.18's scalarizers when it is installed. IMTL's weights are LibMTL's closed
form (LibMTL/weighting/IMTL.py, rewritten here in numpy) on the gradients of the scaled losses, computed in
the test by plain autograd, one task at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydranet.balancing import WEIGHTINGS, make
from hydranet.balancing._weighting_imtl import IMTL
from hydranet.balancing._weighting_preference import COSMOS, PBI

TASKS = ["a", "b", "c"]
L = [0.7, 2.0, 0.3]
R = [0.2, 0.5, 0.3]


def loss_gradient(weighting, values=L, tasks=TASKS):
    """(objective value, d objective / d losses) through the weighting's own construction."""
    leaves = {t: torch.tensor(v, dtype=torch.float64, requires_grad=True) for t, v in zip(tasks, values)}
    objective = weighting(leaves)
    objective.backward()
    return float(objective.detach()), np.array([float(leaves[t].grad) for t in tasks])


def test_registered():
    assert WEIGHTINGS["cosmos"] is COSMOS and WEIGHTINGS["pbi"] is PBI and WEIGHTINGS["imtl"] is IMTL


def test_cosmos_value_and_gradient_by_hand():
    lam = 2.0
    r, loss = np.array(R), np.array(L)
    nr, nl, lin = np.linalg.norm(r), np.linalg.norm(loss), r @ loss
    value, grad = loss_gradient(COSMOS(TASKS, weights=R, lambda_=lam))
    assert value == pytest.approx(lin - lam * lin / (nr * nl), rel=1e-12)
    # d/dL [r.L / (|r||L|)] = r / (|r||L|) - (r.L) L / (|r||L|^3)
    expected = r - lam * (r / (nr * nl) - lin * loss / (nr * nl**3))
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
    _, plain = loss_gradient(COSMOS(TASKS, weights=R, lambda_=0.0))
    np.testing.assert_allclose(plain, r, rtol=1e-15)  # lambda = 0: the linear scalarization


def test_pbi_value_and_gradient_by_hand():
    theta, z = 5.0, np.array([0.1, 0.0, 0.2])
    w = np.array(R) / np.linalg.norm(R)
    f = np.array(L) - z
    d1 = f @ w
    perp = f - d1 * w
    d2 = np.sqrt(perp @ perp + 1e-12)
    value, grad = loss_gradient(PBI(TASKS, weights=R, theta=theta, reference=list(z)))
    assert value == pytest.approx(d1 + theta * d2, rel=1e-12)
    # d d1/dL = w; d d2/dL = (I - w w^T) perp / d2 = perp / d2 (perp is orthogonal to w)
    np.testing.assert_allclose(grad, w + theta * perp / d2, rtol=1e-10)


def test_preferences_from_a_mapping_and_absent_tasks():
    weighting = PBI(TASKS, weights={"a": 0.2, "b": 0.5, "c": 0.3}, theta=1.0)
    _, grad = loss_gradient(weighting, values=[0.7, 0.3], tasks=["a", "c"])
    w = np.array([0.2, 0.3]) / np.linalg.norm([0.2, 0.3])  # the ray of the present tasks' preferences
    f = np.array([0.7, 0.3])
    perp = f - (f @ w) * w
    np.testing.assert_allclose(grad, w + perp / np.sqrt(perp @ perp + 1e-12), rtol=1e-10)


def test_drawn_preferences_are_seeded_resumable_and_on_the_simplex():
    first, second = COSMOS(TASKS, seed=3), COSMOS(TASKS, seed=3)
    seen = []
    for step in range(3):
        loss_gradient(first)
        seen.append(first.preference.copy())
        if step == 0:
            state = first.state_dict()
    assert all(p.min() > 0 and p.sum() == pytest.approx(1.0) for p in seen)
    assert not np.allclose(seen[0], seen[1])
    second.load_state_dict(state)
    loss_gradient(second)
    np.testing.assert_array_equal(second.preference, seen[1])  # resumed: the next draw is the same


@pytest.mark.parametrize(
    "kwargs",
    [{"weights": [1.0, float("nan"), 0.0]}, {"weights": [1.0, 2.0]}, {"weights": {"a": 1.0}}, {"lambda_": -1.0}, {"concentration": 0.0}],
)
def test_cosmos_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        COSMOS(TASKS, **kwargs)


def test_pbi_refuses_bad_settings():
    with pytest.raises(ValueError, match="theta"):
        PBI(TASKS, theta=-1.0)
    with pytest.raises(ValueError, match="reference"):
        PBI(TASKS, reference=[0.0, 1.0])


def test_agreement_with_torchjd_scalarizers():
    tj = pytest.importorskip("torchjd.scalarization")
    r = torch.tensor(R, dtype=torch.float64)
    z = torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)
    for ours, theirs in (
        (COSMOS(TASKS, weights=R, lambda_=1.5), tj.COSMOS(lambda_=1.5, weights=r)),
        (PBI(TASKS, weights=R, theta=5.0, reference=[0.1, 0.0, 0.2]), tj.PBI(theta=5.0, weights=r, reference=z)),
    ):
        values = torch.tensor(L, dtype=torch.float64, requires_grad=True)
        expected = theirs(values)
        expected.backward()
        value, grad = loss_gradient(ours)
        assert value == pytest.approx(float(expected), rel=1e-12)
        np.testing.assert_allclose(grad, values.grad.numpy(), rtol=1e-10)


# -- IMTL ------------------------------------------------------------------------------------------


def libmtl_imtl_alpha(grads: np.ndarray) -> np.ndarray:
    """LibMTL's IMTL.backward, in numpy: alpha from D = g_1 - g_i, U = u_1 - u_i."""
    units = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    D = grads[:1] - grads[1:]
    U = units[:1] - units[1:]
    alpha = grads[0] @ U.T @ np.linalg.inv(D @ U.T)
    return np.concatenate([[1 - alpha.sum()], alpha])


def tiny_problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    trunk = torch.nn.Linear(4, 5).double()
    heads = {t: torch.nn.Linear(5, 1).double() for t in TASKS}
    for module in (trunk, *heads.values()):
        for p in module.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 1, generator=gen, dtype=torch.float64)

    def losses():
        features = torch.tanh(trunk(x))
        return {t: ((heads[t](features) - y * (i + 1)) ** 2).mean() for i, t in enumerate(TASKS)}

    return trunk, heads, losses


@pytest.mark.parametrize("seed", range(3))
def test_imtl_update_is_libmtls_on_the_scaled_gradients(seed):
    trunk, heads, losses = tiny_problem(seed)
    balancer = make("imtl", TASKS, jacobian="loop")
    with torch.no_grad():
        balancer.method.log_scales.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    s = balancer.method.log_scales.detach().numpy()
    shared = list(trunk.parameters())
    # reference: gradients of e^{s_i} L_i, task by task
    values = losses()
    rows = []
    for i, t in enumerate(TASKS):
        grads = torch.autograd.grad(np.exp(s[i]) * values[t], shared, retain_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]).numpy())
    grads = np.stack(rows)
    alpha = libmtl_imtl_alpha(grads)
    head_expected = {t: [g.clone() for g in torch.autograd.grad(np.exp(s[i]) * values[t], list(heads[t].parameters()), retain_graph=True)] for i, t in enumerate(TASKS)}
    info = balancer.backward(losses(), shared, {t: list(heads[t].parameters()) for t in TASKS})
    np.testing.assert_allclose([info["weights"][t] for t in TASKS], alpha, rtol=1e-8)
    got = torch.cat([p.grad.flatten() for p in shared]).numpy()
    np.testing.assert_allclose(got, alpha @ grads, rtol=1e-8, atol=1e-12)
    for t in TASKS:
        for p, g in zip(heads[t].parameters(), head_expected[t]):
            torch.testing.assert_close(p.grad, g)
    # s gets d/ds_i (e^{s_i} L_i - s_i) = e^{s_i} L_i - 1
    expected_s = np.exp(s) * np.array([float(values[t]) for t in TASKS]) - 1.0
    np.testing.assert_allclose(balancer.method.log_scales.grad.numpy(), expected_s, rtol=1e-12)


def test_imtl_leaves_absent_tasks_scale_without_gradient_and_saves_its_state():
    trunk, heads, losses = tiny_problem(0)
    balancer = make("imtl", TASKS, jacobian="loop")
    present = {t: v for t, v in losses().items() if t != "b"}
    balancer.backward(present, list(trunk.parameters()), {t: list(heads[t].parameters()) for t in present})
    grad = balancer.method.log_scales.grad
    assert float(grad[1]) == 0.0 and float(grad[0]) != 0.0
    state = balancer.method.state_dict()
    other = IMTL(TASKS)
    other.load_state_dict(state)
    torch.testing.assert_close(other.log_scales.detach(), balancer.method.log_scales.detach())
