"""Loss weightings: the weights each method applies, checked against the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hydranet import Task
from hydranet.balancing import WEIGHTINGS
from hydranet.balancing._weighting_gradient import last_layer
from hydranet.balancing.weighting import DBMTL, FAMO, STCH


def leaves(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {t: torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for t, v in values.items()}


def apply(weighting, values: dict[str, float], **kwargs) -> tuple[dict[str, float], float]:
    """Weights (d objective / d loss, read from the losses' gradients) and the objective's value."""
    losses = leaves(values)
    total = weighting(losses, **kwargs)
    total.backward()
    return {t: losses[t].grad.item() for t in losses}, total.item()


def approx(d: dict[str, float], expected, rel=1e-9, abs=1e-12):
    keys = list(d)
    assert np.allclose([d[k] for k in keys], np.asarray(expected, dtype=float), rtol=rel, atol=abs), (d, expected)


@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_every_weighting_builds_from_defaults(name):
    assert WEIGHTINGS[name](["a", "b"]).task_names == ["a", "b"]
    tasks = [Task("a", "regression"), Task("b", "multiclass", num_classes=3)]
    assert WEIGHTINGS[name](tasks).task_names == ["a", "b"]


def test_equal_weighting_is_the_plain_sum():
    weights, total = apply(WEIGHTINGS["ew"](["a", "b", "c"]), {"a": 0.5, "b": 2.0, "c": 7.0})
    approx(weights, [1, 1, 1])
    assert total == pytest.approx(9.5)


def test_static_weights_come_from_tasks_or_a_dict():
    tasks = [Task("a", "regression", weight=2.0), Task("b", "binary", weight=0.5)]
    weights, total = apply(WEIGHTINGS["static"](tasks), {"a": 1.0, "b": 4.0})
    approx(weights, [2.0, 0.5])
    assert total == pytest.approx(4.0)
    weights, _ = apply(WEIGHTINGS["static"](tasks, weights={"b": 3.0}), {"a": 1.0, "b": 4.0})
    approx(weights, [2.0, 3.0])
    with pytest.raises(ValueError, match="Did you mean 'b'"):
        WEIGHTINGS["static"](["a", "b"], weights={"bb": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        WEIGHTINGS["static"](["a", "b"], weights={"a": -1.0})


def test_uncertainty_weighting_uses_the_regression_and_classification_forms():
    tasks = [Task("age", "regression"), Task("gender", "binary")]
    uw = WEIGHTINGS["uw"](tasks)
    s = np.array([0.3, -0.2])
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor(s))
    L = np.array([2.0, 0.7])
    weights, total = apply(uw, {"age": L[0], "gender": L[1]})
    a = np.array([0.5, 1.0])  # 1/(2 sigma^2) for regression, 1/sigma^2 for classification
    approx(weights, a * np.exp(-s), rel=1e-6)
    assert total == pytest.approx(float((a * np.exp(-s) * L + 0.5 * s).sum()), rel=1e-6)
    # log sigma^2 receives d/ds = -a e^{-s} L + 1/2
    assert uw.log_vars.grad is not None
    np.testing.assert_allclose(uw.log_vars.grad.numpy(), -a * np.exp(-s) * L + 0.5, rtol=1e-6)
    assert uw.parameters() == [uw.log_vars]


def test_uncertainty_weighting_trains_toward_sigma_squared_equal_to_loss():
    uw = WEIGHTINGS["uw"](["a"])
    optimizer = torch.optim.SGD(uw.parameters(), lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        uw({"a": torch.tensor(3.0, requires_grad=True)}).backward()
        optimizer.step()
    # optimum of L/(2 sigma^2) + log sigma: sigma^2 = L
    assert math.exp(uw.log_vars.item()) == pytest.approx(3.0, rel=1e-3)


def test_dwa_follows_the_epoch_average_loss_ratios():
    dwa = WEIGHTINGS["dwa"](["a", "b", "c"], temperature=2.0)
    epochs = [
        [{"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.8, "b": 2.2, "c": 2.0}],
        [{"a": 0.6, "b": 2.0, "c": 2.5}, {"a": 0.5, "b": 1.9}],
    ]
    for epoch in epochs:  # equal weights for the first two epochs
        for step in epoch:
            weights, _ = apply(dwa, step)
            approx(weights, [1.0] * len(step))
        dwa.on_epoch_end()
    average = [{t: np.mean([s[t] for s in epoch if t in s]) for t in "abc"} for epoch in epochs]
    r = np.array([average[1][t] / average[0][t] for t in "abc"])
    expected = 3 * np.exp(r / 2.0) / np.exp(r / 2.0).sum()
    weights, _ = apply(dwa, {"a": 0.4, "b": 1.8, "c": 2.0})
    approx(weights, expected)
    weights, _ = apply(dwa, {"b": 1.0})  # an absent task drops its weight; the others keep theirs
    approx(weights, [expected[1]])
    # a task absent for a whole epoch gets the neutral ratio 1
    dwa.on_epoch_end()
    new_avg = {"a": 0.4, "b": (1.8 + 1.0) / 2, "c": 2.0}
    r = np.array([new_avg[t] / average[1][t] for t in "abc"])
    weights, _ = apply(dwa, {"a": 0.3, "b": 1.0})
    approx(weights, (3 * np.exp(r / 2) / np.exp(r / 2).sum())[:2])
    dwa.on_epoch_end()
    r2 = np.array([0.3 / new_avg["a"], 1.0 / new_avg["b"], 1.0])
    weights, _ = apply(dwa, {"a": 1.0, "b": 1.0, "c": 1.0})
    approx(weights, 3 * np.exp(r2 / 2) / np.exp(r2 / 2).sum())


def test_rlw_draws_softmax_of_standard_normal_from_its_seed():
    rlw = WEIGHTINGS["rlw"](["a", "b", "c"], seed=7)
    generator = torch.Generator().manual_seed(7)
    for _ in range(3):
        z = torch.randn(3, generator=generator, dtype=torch.float64).numpy()
        weights, _ = apply(rlw, {"a": 1.0, "b": 2.0, "c": 3.0})
        approx(weights, np.exp(z) / np.exp(z).sum())
    draws = np.array([list(apply(rlw, {"a": 1.0, "b": 1.0, "c": 1.0})[0].values()) for _ in range(1000)])
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)
    np.testing.assert_allclose(draws.mean(axis=0), 1 / 3, atol=0.02)
    # E[softmax(z)_i] for z ~ N(0, I_3), by quadrature-free Monte Carlo with numpy's own generator
    z = np.random.default_rng(0).standard_normal((200_000, 3))
    reference = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).std(axis=0)
    np.testing.assert_allclose(draws.std(axis=0), reference, rtol=0.1)


def test_gls_is_the_geometric_mean():
    weights, total = apply(WEIGHTINGS["gls"](["a", "b", "c"]), {"a": 0.5, "b": 2.0, "c": 8.0})
    geometric = (0.5 * 2.0 * 8.0) ** (1 / 3)
    assert total == pytest.approx(geometric)
    approx(weights, [geometric / (3 * L) for L in (0.5, 2.0, 8.0)])
    with pytest.raises(ValueError, match="task 'b'.*positive losses"):
        apply(WEIGHTINGS["gls"](["a", "b"]), {"a": 0.5, "b": 0.0})


def test_imtl_l_scales_losses_by_exp_s():
    imtl = WEIGHTINGS["imtl_l"](["a", "b"])
    s = np.array([0.4, -1.0])
    with torch.no_grad():
        imtl.log_scales.copy_(torch.tensor(s))
    L = np.array([2.0, 0.25])
    weights, total = apply(imtl, {"a": L[0], "b": L[1]})
    approx(weights, np.exp(s), rel=1e-6)
    assert total == pytest.approx(float((np.exp(s) * L - s).sum()), rel=1e-6)
    np.testing.assert_allclose(imtl.log_scales.grad.numpy(), np.exp(s) * L - 1, rtol=1e-6)


def _adam(theta, grad, state, lr, decay, t, b1=0.9, b2=0.999, eps=1e-8):
    grad = grad + decay * theta
    state["m"] = b1 * state["m"] + (1 - b1) * grad
    state["v"] = b2 * state["v"] + (1 - b2) * grad**2
    m_hat = state["m"] / (1 - b1**t)
    v_hat = state["v"] / (1 - b2**t)
    return theta - lr * m_hat / (np.sqrt(v_hat) + eps)


def test_famo_weights_and_logit_updates_match_the_paper():
    lr, gamma, eps = 0.1, 0.01, 1e-8
    famo = FAMO(["a", "b", "c"], lr=lr, gamma=gamma)
    history = [[2.0, 1.0, 4.0], [1.5, 0.9, 3.0], [1.4, 0.5, 2.9], [1.0, 0.45, 2.0]]
    xi = np.zeros(3)
    adam = {"m": np.zeros(3), "v": np.zeros(3)}
    previous = None
    for t, L in enumerate(history):
        L = np.array(L)
        if previous is not None:  # the balancer's default: this step's losses close the previous update
            delta = np.log(previous + eps) - np.log(L + eps)
            z = np.exp(xi) / np.exp(xi).sum()
            jac = np.diag(z) - np.outer(z, z)  # d softmax / d xi
            xi = _adam(xi, jac.T @ delta, adam, lr, gamma, t)
        z = np.exp(xi) / np.exp(xi).sum()
        D = L + eps
        c = (z / D).sum()
        weights, total = apply(famo, dict(zip("abc", L)))
        approx(weights, z / (c * D), rel=1e-7)
        assert total == pytest.approx(float((z * np.log(D)).sum() / c), rel=1e-7)
        previous = L
    np.testing.assert_allclose(famo.logits.detach().numpy(), xi, rtol=1e-7, atol=1e-12)


def test_famo_explicit_update_is_used_once():
    famo = FAMO(["a", "b"], lr=0.1)
    apply(famo, {"a": 2.0, "b": 1.0})
    famo.update({"a": 1.0, "b": 1.0})  # after optimizer.step(), same batch
    after_update = famo.logits.detach().clone()
    assert after_update[0] < after_update[1]  # task a improved more: it gets less weight
    apply(famo, {"a": 5.0, "b": 0.1})  # no pending update: the logits do not move
    assert torch.equal(famo.logits.detach(), after_update)


def _linear_problem():
    """h = W x; L_i = mean((c_i . h - y_i)^2): per-task gradients of W in closed form."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    W = rng.standard_normal((2, 3))
    c = np.array([[1.0, -0.5], [0.3, 2.0]])
    y = rng.standard_normal((2, 6))

    def losses_and_grads(W):
        h = x @ W.T
        residual = h @ c.T - y.T  # [n, tasks]
        losses = (residual**2).mean(axis=0)
        grads = [2 * (residual[:, i : i + 1] * c[i]).T @ x / len(x) for i in range(2)]  # dL_i/dW [2, 3]
        return losses, grads

    def torch_losses(Wt):
        h = torch.as_tensor(x) @ Wt.T
        residual = h @ torch.as_tensor(c).T - torch.as_tensor(y).T
        return {t: (residual[:, i] ** 2).mean() for i, t in enumerate("ab")}

    return W, losses_and_grads, torch_losses


def test_gradnorm_moves_weights_toward_balanced_gradient_norms():
    W0, reference, torch_losses = _linear_problem()
    Wt = torch.nn.Parameter(torch.tensor(W0))
    gn = WEIGHTINGS["gradnorm"](["a", "b"], alpha=1.5)
    with torch.no_grad():
        gn.loss_weights.copy_(torch.tensor([3.0, 1.0]))  # as if the optimizer moved them: renormalised to sum 2
    L, grads = reference(W0)
    weights, _ = apply_gradnorm(gn, torch_losses(Wt), [Wt])
    w = np.array([1.5, 0.5])
    approx(weights, w, rel=1e-6)
    norms = np.array([np.linalg.norm(g) for g in grads])
    G = w * norms
    target = G.mean() * 1.0**1.5  # first step: L(0) = L, all ratios 1
    np.testing.assert_allclose(gn.loss_weights.grad.numpy(), np.sign(G - target) * norms, rtol=1e-5)
    np.testing.assert_allclose(Wt.grad.numpy(), w[0] * grads[0] + w[1] * grads[1], rtol=1e-6)

    # second step, other parameters: ratios r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))
    gn.loss_weights.grad = None
    W1 = W0 * 0.5
    Wt1 = torch.nn.Parameter(torch.tensor(W1))
    L1, grads1 = reference(W1)
    apply_gradnorm(gn, torch_losses(Wt1), [Wt1])
    norms1 = np.array([np.linalg.norm(g) for g in grads1])
    G1 = w * norms1
    ratio = (L1 / L) / (L1 / L).mean()
    np.testing.assert_allclose(gn.loss_weights.grad.numpy(), np.sign(G1 - G1.mean() * ratio**1.5) * norms1, rtol=1e-5)


def apply_gradnorm(gn, losses, layer):
    total = gn(losses, shared_params=layer)
    leaves_grads = torch.autograd.grad(total, list(losses.values()), retain_graph=True)
    total.backward()
    return dict(zip(losses, [g.item() for g in leaves_grads])), total.item()


def test_gradnorm_takes_the_last_shared_layer():
    a, b, c, d = (torch.zeros(3, 2), torch.zeros(3), torch.zeros(4, 3), torch.zeros(4))
    assert last_layer([a, b, c, d]) == [c, d]
    assert last_layer([a, b, c]) == [c]
    with pytest.raises(ValueError, match="last shared layer"):
        WEIGHTINGS["gradnorm"](["a", "b"])(leaves({"a": 1.0, "b": 2.0}))


def test_stch_warms_up_on_log_losses_then_smooths_the_max_over_nadir_normalised_losses():
    mu = 0.5
    stch = STCH(["a", "b"], mu=mu, warmup_epochs=1)
    weights, total = apply(stch, {"a": 2.0, "b": 0.5})  # epoch 0: sum of log losses
    approx(weights, [1 / 2.0, 1 / 0.5])
    assert total == pytest.approx(math.log(2.0) + math.log(0.5))
    stch.on_epoch_end()
    for step in ({"a": 1.0, "b": 0.5}, {"a": 3.0, "b": 1.5}):  # epoch 1: the nadir point is measured
        weights, _ = apply(stch, step)
        approx(weights, [1 / step["a"], 1 / step["b"]])
    stch.on_epoch_end()
    nadir = np.array([2.0, 1.0])
    np.testing.assert_allclose(stch.nadir.numpy(), nadir)
    L = np.array([1.2, 0.3])
    weights, total = apply(stch, {"a": L[0], "b": L[1]})
    scaled = np.log(L / nadir)
    softmax = np.exp(scaled / mu) / np.exp(scaled / mu).sum()
    approx(weights, 2 * softmax / L, rel=1e-9)
    assert total == pytest.approx(2 * mu * np.log(np.exp(scaled / mu).sum()))


def test_db_mtl_averages_log_loss_gradients_and_equalises_their_norms():
    db = DBMTL(["a", "b", "c"], beta=0.9, beta_sigma=0.5)
    rng = np.random.default_rng(1)
    buffer = np.zeros((3, 5))
    for step, present in enumerate([[0, 1, 2], [0, 2], [0, 1, 2]], start=1):
        G = rng.standard_normal((len(present), 5)) * np.array([[1.0], [10.0], [0.1]])[: len(present)]
        update, alpha = db.aggregate(torch.tensor(G), torch.tensor(present))
        beta = 0.9 / step**0.5
        buffer[present] = beta * buffer[present] + (1 - beta) * G
        norms = np.linalg.norm(buffer[present], axis=1)
        expected_alpha = norms.max() / (norms + 1e-8)
        np.testing.assert_allclose(alpha.numpy(), expected_alpha, rtol=1e-9)
        np.testing.assert_allclose(update.numpy(), expected_alpha @ buffer[present], rtol=1e-9)
    L = torch.tensor([2.0, 0.5], requires_grad=True)
    logs = db.transform(L, L.detach().double(), ["a", "b"]).detach().numpy()
    np.testing.assert_allclose(logs, np.log([2.0, 0.5]), rtol=1e-6)
    with pytest.raises(TypeError, match="not callable"):
        db(leaves({"a": 1.0}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_losses_name_the_task_and_suggest_fixes(bad):
    with pytest.raises(ValueError, match=r"task 'b'.*not finite.*learning rate.*clip.*targets"):
        WEIGHTINGS["ew"](["a", "b"])(leaves({"a": 1.0, "b": bad}))


def test_invalid_losses_are_rejected_with_a_fix():
    ew = WEIGHTINGS["ew"](["alpha", "beta"])
    with pytest.raises(ValueError, match="Did you mean 'alpha'"):
        ew(leaves({"alpah": 1.0}))
    with pytest.raises(ValueError, match=r"shape \[3\].*loss.mean\(\)"):
        ew({"alpha": torch.ones(3, requires_grad=True)})
    with pytest.raises(ValueError, match="does not require grad"):
        ew({"alpha": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="No task loss"):
        ew({})
    with pytest.raises(TypeError, match="tensor"):
        ew({"alpha": 1.0})


@pytest.mark.parametrize("name", ["uw", "dwa", "rlw", "famo", "gradnorm", "stch", "imtl_l"])
def test_state_dict_resumes_exactly(name):
    W0, _, torch_losses = _linear_problem()
    schedule = [np.array([1.0, 1.0]), np.array([0.9, 0.8]), np.array([0.7, 0.75]), np.array([0.6, 0.5])]

    def run(weighting, scales):
        out = []
        for i, scale in enumerate(scales):
            Wt = torch.nn.Parameter(torch.tensor(W0 * scale[0]))
            losses = torch_losses(Wt)
            losses = {"a": losses["a"], "b": losses["b"] * scale[1]}
            total = weighting(losses, shared_params=[Wt])
            weights = torch.autograd.grad(total, list(losses.values()), retain_graph=True)
            total.backward()
            with torch.no_grad():  # a stand-in optimizer step on the method's own parameters
                for p in weighting.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
            weighting.on_epoch_end()
            out.append([w.item() for w in weights])
        return out

    settings = {"stch": {"warmup_epochs": 0}}.get(name, {})
    first = WEIGHTINGS[name](["a", "b"], **settings)
    run(first, schedule[:2])
    saved = first.state_dict()
    expected = run(first, schedule[2:])
    second = WEIGHTINGS[name](["a", "b"], **settings)
    second.load_state_dict(saved)
    np.testing.assert_allclose(run(second, schedule[2:]), expected, rtol=1e-12)
