"""Every Jacobian path of the Balancer gives the same update; the loss-weighting fast path equals the old one.

The reference is an independent computation: the task Jacobian G of the shared parameters by one
``torch.autograd.grad`` per task (float64), aggregated by the aggregator itself (``agg(G)``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hydranet.balancing import AGGREGATORS, WEIGHTINGS, make
from hydranet.balancing.jacobian import features_cover

TASKS = [f"t{i}" for i in range(5)]
PATHS = ["loop", "vmap", "features", "gramian", "auto"]
GRAMIAN_ONLY = sorted(n for n, cls in AGGREGATORS.items() if getattr(cls, "gramian_only", False))
# Randomised or stateful methods start from the same state in each fresh balancer, so paths compare too.
METHODS = sorted(AGGREGATORS) + ["db_mtl"]


class Model:
    """A random float64 MLP trunk (tanh) and one linear head per task; some tasks absent when asked."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh()
        ).double()
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(5, 1).double() for t in TASKS})
        self.x = torch.randn(7, 4, dtype=torch.float64)
        self.y = torch.randn(7, len(TASKS), dtype=torch.float64) * torch.arange(1, len(TASKS) + 1)

    def losses(self, present):
        h = self.trunk(self.x)
        return h, {t: ((self.heads[t](h).squeeze(1) - self.y[:, i]) ** 2).mean() for i, t in enumerate(TASKS) if t in present}

    def shared(self):
        return list(self.trunk.parameters())

    def task_params(self):
        return {t: list(self.heads[t].parameters()) for t in TASKS}

    def step(self, balancer, present):
        for p in list(self.trunk.parameters()) + list(self.heads.parameters()):
            p.grad = None
        h, losses = self.losses(present)
        info = balancer.backward(losses, self.shared(), self.task_params(), features=h)
        shared = torch.cat([p.grad.reshape(-1) for p in self.shared()])
        heads = {t: torch.cat([p.grad.reshape(-1) for p in self.heads[t].parameters()]) for t in present}
        return shared, heads, info


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("present", [TASKS, ["t0", "t2", "t3"]], ids=["all", "some"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", METHODS)
def test_every_gradient_method_gives_the_same_direction_on_every_path(name, seed, present):
    model = Model(seed)
    reference = None
    for path in PATHS:
        if path == "gramian" and name not in GRAMIAN_ONLY:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # solver notes of some aggregators
            shared, heads, info = model.step(make(name, TASKS, jacobian=path), present)
        if reference is None:
            reference = shared, heads
            continue
        assert cosine(shared, reference[0]) >= 0.9999, (name, path)
        torch.testing.assert_close(shared, reference[0], rtol=1e-6, atol=1e-10, msg=f"{name} {path}")
        for t in present:  # heads: the plain gradient of their own loss on every path
            torch.testing.assert_close(heads[t], reference[1][t], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in ("upgrad", "mgda", "mean") if n in AGGREGATORS])
def test_the_features_path_equals_the_aggregate_of_the_jacobian_by_one_backward_per_task(name):
    model = Model(3)
    h, losses = model.losses(TASKS)
    G = torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], model.shared(), retain_graph=True)])
        for t in TASKS
    ])
    expected = AGGREGATORS[name]()(G)
    for path in ("features", "gramian"):
        if path == "gramian" and name not in GRAMIAN_ONLY:
            continue
        shared, _, info = model.step(make(name, TASKS, jacobian=path), TASKS)
        torch.testing.assert_close(shared, expected, rtol=1e-7, atol=1e-12)
        assert info["jacobian"] == path
        norms = G.norm(dim=1)
        np.testing.assert_allclose(list(info["grad_norms"].values()), norms.numpy(), rtol=1e-9)
        np.testing.assert_allclose(info["cosines"], (G @ G.T / torch.outer(norms, norms)).numpy(), rtol=1e-9)


def test_auto_reports_its_choice():
    model = Model(0)
    h, losses = model.losses(TASKS)
    assert make("upgrad", TASKS).backward(losses, model.shared(), model.task_params(), features=h)["jacobian"] == "features"
    _, losses = model.losses(TASKS)
    assert make("upgrad", TASKS).backward(losses, model.shared(), model.task_params())["jacobian"] == "vmap"
    if "upgrad" in GRAMIAN_ONLY:  # past the size threshold: the Gramian
        balancer = make("upgrad", TASKS)
        balancer.gramian_above = 1
        h, losses = model.losses(TASKS)
        assert balancer.backward(losses, model.shared(), model.task_params(), features=h)["jacobian"] == "gramian"


def test_auto_takes_the_losses_path_when_the_features_are_not_the_only_route():
    model = Model(0)
    h = model.trunk(model.x)
    w = model.trunk[0].weight  # a head that also reads a shared parameter directly
    losses = {t: ((model.heads[t](h).squeeze(1) + w.sum() - model.y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)}
    assert not features_cover(torch.stack(list(losses.values())), [h], model.shared())
    info = make("mean", TASKS).backward(losses, model.shared(), model.task_params(), features=h)
    assert info["jacobian"] == "vmap"
    G = torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], model.shared(), retain_graph=True)])
        for t in TASKS
    ])
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.shared()]), G.mean(0))


def test_chunked_trunk_backward_and_gramian_blocks_change_nothing():
    model = Model(2)
    full, _, _ = model.step(make("upgrad", TASKS, jacobian="features"), TASKS)
    chunked, _, _ = model.step(make("upgrad", TASKS, jacobian="features", chunk_size=2), TASKS)
    torch.testing.assert_close(chunked, full)
    if "upgrad" in GRAMIAN_ONLY:
        balancer = make("upgrad", TASKS, jacobian="gramian", chunk_size=3)
        balancer.gramian_block = 10  # one parameter per group
        blocked, _, _ = model.step(balancer, TASKS)
        torch.testing.assert_close(blocked, full, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3])
def test_jacobian_blocks_give_the_gramian_and_combination_of_the_concatenated_matrix(chunk_size):
    """Reference: G by one autograd.grad per task (float64), K = G G^T and w^T G on it; the third
    parameter is not reached by the features (zero columns in the reference)."""
    from hydranet.balancing._jacobian_features import JacobianBlocks, feature_jacobian, trunk_jacobian

    model = Model(3)
    unused = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    shared = model.shared() + [unused]
    h, losses = model.losses(TASKS)
    roots = list(losses.values())
    expected = torch.stack([
        torch.cat([
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(torch.autograd.grad(r, shared, retain_graph=True, allow_unused=True), shared)
        ])
        for r in roots
    ])
    jf, _, _ = feature_jacobian(roots, [h])
    blocks, reached = trunk_jacobian([h], jf, shared, chunk_size=chunk_size, as_blocks=True)
    assert isinstance(blocks, JacobianBlocks) and reached == [True] * 4 + [False]
    torch.testing.assert_close(blocks.gramian(), expected @ expected.T)
    w = torch.linspace(-1.0, 2.0, len(TASKS), dtype=torch.float64)
    torch.testing.assert_close(blocks.combine(w), w @ expected)
    matrix, _ = trunk_jacobian([h], jf, shared, chunk_size=chunk_size)
    torch.testing.assert_close(matrix, expected)


class NotBatchable(torch.autograd.Function):
    """Identity whose backward reads a Python number: vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad + 0 * grad.sum().item()


def test_the_features_path_falls_back_to_the_loop_with_one_warning():
    model = Model(4)
    balancer = make("mean", TASKS, jacobian="features")
    with pytest.warns(RuntimeWarning, match="falling back") as record:
        for _ in range(2):
            for p in list(model.trunk.parameters()) + list(model.heads.parameters()):
                p.grad = None
            h = model.trunk[3](model.trunk[2](NotBatchable.apply(model.trunk[1](model.trunk[0](model.x)))))
            losses = {t: ((model.heads[t](h).squeeze(1) - model.y[:, i]) ** 2).mean() for i, t in enumerate(TASKS)}
            info = balancer.backward(losses, model.shared(), model.task_params(), features=h)
    assert sum(issubclass(r.category, RuntimeWarning) for r in record) == 1
    assert info["jacobian"] == "features-loop"
    G = torch.stack([
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], model.shared(), retain_graph=True)])
        for t in TASKS
    ])
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.shared()]), G.mean(0))


def test_gramian_path_is_refused_for_methods_that_need_the_jacobian():
    with pytest.raises(ValueError, match="jacobian='gramian' does not apply"):
        make("pcgrad", TASKS, jacobian="gramian")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        make("upgrad", TASKS, chunk_size=0)


LINEAR = ["ew", "static", "uw", "imtl_l", "rlw", "dwa"]


@pytest.mark.parametrize("present", [TASKS, ["t1", "t4"]], ids=["all", "some"])
@pytest.mark.parametrize("name", LINEAR)
def test_loss_weighting_fast_path_equals_the_combined_objective(name, present):
    """The direct objective against LossWeighting.combine (the construction through detached values)."""
    grads = []
    infos = []
    for fast in (True, False):
        model = Model(5)
        balancer = make(name, TASKS)
        if name == "dwa":  # weights other than 1: two epochs of history
            balancer.method._history = [torch.rand(len(TASKS), dtype=torch.float64) + 0.5 for _ in range(2)]
        if not fast:
            balancer.method.direct = lambda losses, index: None
        for p in balancer.parameters():
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(1))
        shared, heads, info = model.step(balancer, present)
        grads.append((shared, heads, [p.grad.clone() for p in balancer.parameters()]))
        infos.append(dict(info))
    (s1, h1, b1), (s2, h2, b2) = grads
    torch.testing.assert_close(s1, s2, rtol=1e-6, atol=1e-12)
    for t in present:
        torch.testing.assert_close(h1[t], h2[t], rtol=1e-6, atol=1e-12)
    for a, b in zip(b1, b2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert infos[0]["weights"] == pytest.approx(infos[1]["weights"], rel=1e-6)
    assert infos[0]["total"] == pytest.approx(infos[1]["total"], rel=1e-6)
    assert infos[0]["losses"] == pytest.approx(infos[1]["losses"], rel=1e-12)
    assert infos[0]["tasks"] == infos[1]["tasks"] == [t for t in TASKS if t in present]


def test_step_info_is_a_dict_computed_when_read():
    model = Model(0)
    info = model.step(make("uw", TASKS), TASKS)[2]
    assert set(info) == {"tasks", "losses", "total", "weights", "grad_norms", "cosines", "jacobian"}
    assert dict(info)["weights"] == info["weights"]
    info["extra"] = 1
    assert info["extra"] == 1 and len(info) == 8
    assert all(k in WEIGHTINGS for k in LINEAR)
