"""Auto-Lambda: the meta-step against the authors' algorithm re-implemented here (github.com/lorenmt/auto-lambda,
``auto_lambda.py``: a deep copy of the model for the virtual step, the finite-difference Hessian, then
torch.optim.Adam on the weights), against the exact hypergradient by autograd through the virtual step, and
through the Trainer's meta-step hook and the config check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.balancing import WEIGHTINGS, MetaContext
from hydranet.balancing._weighting_bilevel import AutoLambda

TASKS = ["a", "b"]


class Net(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Linear(3, 4).double()
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1).double() for t in TASKS})

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return {t: self.heads[t](h).squeeze(1) for t in TASKS}


def data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    return x, {"a": x[:, 0] * 2, "b": -x[:, 1] + x[:, 2]}


def losses_of(net, batch):
    x, y = batch
    out = net(x)
    return {t: ((out[t] - y[t]) ** 2).mean() for t in TASKS}


def authors_meta_step(net, optimizer, weights, meta_optimizer, train, val):
    """auto_lambda.py's unrolled_backward + meta_optimizer.step(), on our two-task loss."""
    alpha = optimizer.param_groups[0]["lr"]
    model_ = copy.deepcopy(net)
    loss = sum(w * l for w, l in zip(weights, losses_of(net, train).values()))
    grads = torch.autograd.grad(loss, list(net.parameters()))
    with torch.no_grad():
        for p, p_, g in zip(net.parameters(), model_.parameters(), grads):
            p_.copy_(p - alpha * (g + optimizer.param_groups[0]["weight_decay"] * p))
    val_loss = sum(losses_of(model_, val).values())
    d_model = torch.autograd.grad(val_loss, list(model_.parameters()))
    eps = 0.01 / torch.cat([d.view(-1) for d in d_model]).norm()
    with torch.no_grad():
        for p, d in zip(net.parameters(), d_model):
            p += eps * d
    plus = torch.autograd.grad(sum(w * l for w, l in zip(weights, losses_of(net, train).values())), weights)[0]
    with torch.no_grad():
        for p, d in zip(net.parameters(), d_model):
            p -= 2 * eps * d
    minus = torch.autograd.grad(sum(w * l for w, l in zip(weights, losses_of(net, train).values())), weights)[0]
    with torch.no_grad():
        for p, d in zip(net.parameters(), d_model):
            p += eps * d
    weights.grad = -alpha * (plus - minus) / (2 * eps)
    meta_optimizer.step()


def context(net, optimizer, train, val):
    return MetaContext(lambda: losses_of(net, train), lambda: losses_of(net, val), list(net.parameters()), optimizer)


def test_registered():
    assert WEIGHTINGS["auto_lambda"] is AutoLambda


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_meta_steps_equal_the_authors_algorithm(decay):
    ours_net, their_net = Net(), Net()
    ours_opt = torch.optim.SGD(ours_net.parameters(), lr=0.1, weight_decay=decay)
    their_opt = torch.optim.SGD(their_net.parameters(), lr=0.1, weight_decay=decay)
    method = AutoLambda(TASKS, lr=1e-2)
    weights = torch.tensor([0.1, 0.1], dtype=torch.float64, requires_grad=True)
    meta_optimizer = torch.optim.Adam([weights], lr=1e-2)
    for step in range(3):
        train, val = data(2 * step), data(2 * step + 1)
        before = [p.detach().clone() for p in ours_net.parameters()]
        method.meta_step(context(ours_net, ours_opt, train, val))
        authors_meta_step(their_net, their_opt, weights, meta_optimizer, train, val)
        torch.testing.assert_close(method.meta_weights, weights.detach(), rtol=1e-9, atol=1e-12)
        for p, b in zip(ours_net.parameters(), before):
            assert torch.equal(p.detach(), b)  # parameters restored exactly
        # the ordinary training step in between, the same on both sides
        for net, opt, w in ((ours_net, ours_opt, method.meta_weights), (their_net, their_opt, weights.detach())):
            opt.zero_grad()
            sum(wi * li for wi, li in zip(w, losses_of(net, train).values())).backward()
            opt.step()


def test_the_finite_difference_is_the_exact_hypergradient_to_its_order():
    # d/d lambda  sum_i L_i^val(theta - alpha sum_j lambda_j grad L_j^train(theta)), by autograd
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    train, val = data(0), data(1)
    lam = torch.tensor([0.3, 0.7], dtype=torch.float64, requires_grad=True)
    params = list(net.parameters())
    grads = torch.autograd.grad(sum(l * v for l, v in zip(lam, losses_of(net, train).values())), params, create_graph=True)
    moved = [p - 0.05 * g for p, g in zip(params, grads)]
    functional = torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], moved)), (val[0],))
    val_loss = sum(((functional[t] - val[1][t]) ** 2).mean() for t in TASKS)
    (exact,) = torch.autograd.grad(val_loss, lam)
    method = AutoLambda(TASKS, init=0.0, lr=1.0, betas=(0.0, 0.0), adam_eps=0.0)  # one Adam step = -lr sign(grad)
    method.meta_weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    method.lr = 1e-300  # read the gradient back through the first moment instead
    method.betas = (0.5, 0.5)
    method.meta_step(context(net, opt, train, val))
    approx = method._m / 0.5
    np.testing.assert_allclose(approx.numpy(), exact.numpy(), rtol=1e-3)


def test_absent_tasks_keep_their_weight_and_adam_state():
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    method = AutoLambda(TASKS, lr=1e-2)
    train, val = data(0), data(1)
    only_a = MetaContext(lambda: {"a": losses_of(net, train)["a"]}, lambda: losses_of(net, val), list(net.parameters()), opt)
    method.meta_step(only_a)
    assert float(method.meta_weights[1]) == 0.1 and float(method._steps[1]) == 0.0
    assert float(method.meta_weights[0]) != 0.1
    state = method.state_dict()
    other = AutoLambda(TASKS)
    other.load_state_dict(state)
    torch.testing.assert_close(other.meta_weights, method.meta_weights)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        AutoLambda(TASKS, primary=["c"])
    with pytest.raises(ValueError, match="meta_every"):
        AutoLambda(TASKS, meta_every=0)


def test_the_trainer_runs_meta_steps_on_the_validation_loader():
    tasks = [hn.Task("a", "regression"), hn.Task("b", "regression")]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 5, generator=g)
    ds = hn.data.MultiTaskDataset.shared(TensorDataset(x, x[:, 0], x[:, 1] - x[:, 2]), tasks=tasks)

    def loader():
        sampler = hn.data.TaskBatchSampler(ds, batch_size=16, seed=0, schedule="joint")
        return DataLoader(ds, batch_sampler=sampler, collate_fn=hn.data.collate)

    torch.manual_seed(0)
    net = hn.models.HydraNet(hn.models.MLP(5, hidden=(8,)), tasks)
    trainer = hn.Trainer(net, tasks, balancer="auto_lambda", balancer_options={"lr": 1e-2}, progress=False, tensorboard=False, epochs=2)
    trainer.fit(loader(), loader())
    weights = trainer.balancer.method.meta_weights
    assert float(trainer.balancer.method._steps.min()) == 2 * 3  # one meta-step per optimizer step
    assert not torch.allclose(weights, torch.full_like(weights, 0.1))
    fresh = hn.Trainer(net, tasks, balancer="auto_lambda", progress=False, tensorboard=False, epochs=1)
    with pytest.raises(ValueError, match="val_loader"):
        fresh.fit(loader())


def test_the_config_asks_for_data_val():
    from hydranet.cli.config import ConfigError, validate_config

    raw = {"tasks": {"a": {"kind": "regression"}}, "data": {"train": {"source": "builtin", "name": "multi_mnist"}},
           "balancer": {"name": "auto_lambda", "lr": 1e-3}}  # fmt: skip
    with pytest.raises(ConfigError, match="data.val"):
        validate_config(raw)
    raw["data"]["val"] = {"source": "builtin", "name": "multi_mnist"}
    assert validate_config(raw).balancer == {"name": "auto_lambda", "lr": 1e-3}
