"""Balancer.backward: the gradients it accumulates, checked against closed-form per-task gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydranet.balancing import AGGREGATORS, WEIGHTINGS, Balancer, make

TASKS = ("a", "b", "c")


class Tiny:
    """h = tanh(A x) shared; o_t = h . b_t + c_t per task; L_t = mean((o_t - y_t)^2); gradients by hand."""

    def __init__(self, seed: int = 0, tasks=TASKS) -> None:
        rng = np.random.default_rng(seed)
        self.tasks = tasks
        self.x = rng.standard_normal((8, 3))
        self.A = rng.standard_normal((4, 3))
        self.b = {t: rng.standard_normal(4) for t in tasks}
        self.c = {t: float(rng.standard_normal()) for t in tasks}
        self.y = {t: rng.standard_normal(8) * (1 + i) for i, t in enumerate(tasks)}
        self.At = torch.nn.Parameter(torch.tensor(self.A))
        self.heads = {
            t: [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (self.b[t], self.c[t])] for t in tasks
        }

    def forward(self, tasks=None):
        h = torch.tanh(torch.as_tensor(self.x) @ self.At.T)
        losses = {}
        for t in tasks or self.tasks:
            b, c = self.heads[t]
            losses[t] = ((h @ b + c - torch.as_tensor(self.y[t])) ** 2).mean()
        return h, losses

    def hand(self):
        """Per task: loss, dL/dA (flat), dL/dh [n, 4], (dL/db, dL/dc)."""
        h = np.tanh(self.x @ self.A.T)
        out = {}
        for t in self.tasks:
            r = h @ self.b[t] + self.c[t] - self.y[t]
            dh = 2 * r[:, None] * self.b[t] / len(r)
            out[t] = {
                "loss": float((r**2).mean()),
                "A": ((dh * (1 - h**2)).T @ self.x).ravel(),
                "h": dh,
                "b": 2 * (r[:, None] * h).mean(axis=0),
                "c": 2 * r.mean(),
            }
        return out

    def chain(self, dh):
        """dA from a gradient of the features h."""
        h = np.tanh(self.x @ self.A.T)
        return ((dh * (1 - h**2)).T @ self.x).ravel()

    def backward(self, balancer, tasks=None, **kwargs):
        h, losses = self.forward(tasks)
        return balancer.backward(losses, [self.At], self.heads, features=h, **kwargs)


def close(actual, expected, rtol=1e-9):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("name, settings, coef", [
    ("ew", {}, {"a": 1.0, "b": 1.0, "c": 1.0}),
    ("static", {"weights": {"a": 2.0, "b": 0.5, "c": 0.0}}, {"a": 2.0, "b": 0.5, "c": 0.0}),
])
def test_weighting_gradient_is_the_weighted_sum(name, settings, coef):
    model = Tiny()
    info = model.backward(make(name, TASKS, **settings))
    ref = model.hand()
    close(model.At.grad.ravel(), sum(coef[t] * ref[t]["A"] for t in TASKS))
    for t in TASKS:
        close(model.heads[t][0].grad, coef[t] * ref[t]["b"])
        close(model.heads[t][1].grad, coef[t] * ref[t]["c"])
    assert info["weights"] == pytest.approx(coef)
    assert info["total"] == pytest.approx(sum(coef[t] * ref[t]["loss"] for t in TASKS))
    assert info["cosines"] is None and info["jacobian"] is None


DETERMINISTIC = [n for n in ("mean", "sum", "mgda", "upgrad", "imtl_g", "dualproj", "aligned_mtl") if n in AGGREGATORS]


@pytest.mark.parametrize("path", ["loop", "vmap"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_gradient_method_sets_the_aggregate_of_the_task_jacobian(name, path):
    model = Tiny()
    balancer = make(name, TASKS, jacobian=path)
    info = model.backward(balancer)
    ref = model.hand()
    G = torch.tensor(np.stack([ref[t]["A"] for t in TASKS]))
    close(model.At.grad.ravel(), AGGREGATORS[name]()(G).numpy(), rtol=1e-6)
    for t in TASKS:  # heads: the unweighted gradient of their own loss
        close(model.heads[t][0].grad, ref[t]["b"])
        close(model.heads[t][1].grad, ref[t]["c"])
    assert info["jacobian"] == path
    norms = np.linalg.norm(G.numpy(), axis=1)
    close(list(info["grad_norms"].values()), norms)
    close(info["cosines"], (G.numpy() @ G.numpy().T) / np.outer(norms, norms))
    assert info["total"] == pytest.approx(sum(ref[t]["loss"] for t in TASKS))


@pytest.mark.parametrize("name", [n for n in ("mean", "upgrad") if n in AGGREGATORS])
def test_representation_path_is_the_chain_rule_of_the_aggregated_feature_gradient(name):
    model = Tiny()
    balancer = make(name, TASKS, jacobian="representation")
    assert balancer.requires_features
    info = model.backward(balancer)
    ref = model.hand()
    J = torch.tensor(np.stack([ref[t]["h"].ravel() for t in TASKS]))  # [T, B*D]
    d = AGGREGATORS[name]()(J).numpy().reshape(ref["a"]["h"].shape)
    close(model.At.grad.ravel(), model.chain(d), rtol=1e-6)
    for t in TASKS:
        close(model.heads[t][0].grad, ref[t]["b"])
    assert info["jacobian"] == "representation"


def test_representation_path_accepts_several_feature_tensors():
    model = Tiny()
    x = torch.as_tensor(model.x)
    h1, h2 = torch.tanh(x @ model.At[:2].T), torch.tanh(x @ model.At[2:].T)  # e.g. two experts
    h = torch.cat([h1, h2], dim=1)
    losses = {t: ((h @ b + c - torch.as_tensor(model.y[t])) ** 2).mean() for t, (b, c) in model.heads.items()}
    make("mean", TASKS, jacobian="representation").backward(losses, [model.At], model.heads, features=[h1, h2])
    ref = model.hand()
    close(model.At.grad.ravel(), model.chain(sum(ref[t]["h"] for t in TASKS) / 3))


class NotBatchable(torch.autograd.Function):
    """Identity whose backward reads a Python number: vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad + 0 * grad.sum().item()


def test_a_balancer_warns_once_when_vmap_falls_back_to_the_loop():
    ref = Tiny().hand()
    model = Tiny()
    balancer = make("mean", TASKS, jacobian="vmap")
    with pytest.warns(RuntimeWarning, match="falling back") as record:
        for _ in range(2):
            h = torch.tanh(NotBatchable.apply(torch.as_tensor(model.x) @ model.At.T))
            losses = {t: ((h @ b + c - torch.as_tensor(model.y[t])) ** 2).mean() for t, (b, c) in model.heads.items()}
            info = balancer.backward(losses, [model.At], model.heads)
    assert sum(issubclass(r.category, RuntimeWarning) for r in record) == 1
    assert info["jacobian"] == "loop"
    close(model.At.grad.ravel(), 2 * sum(ref[t]["A"] for t in TASKS) / 3)


def test_absent_tasks_are_skipped():
    ref = Tiny().hand()
    model = Tiny()
    model.backward(make("mean", TASKS), tasks=["b"])  # one task: the gradient method gives its gradient
    close(model.At.grad.ravel(), ref["b"]["A"])
    assert model.heads["a"][0].grad is None and model.heads["c"][0].grad is None
    close(model.heads["b"][0].grad, ref["b"]["b"])

    model = Tiny()
    info = model.backward(make("mean", TASKS, jacobian="representation"), tasks=["a", "c"])
    close(model.At.grad.ravel(), model.chain((ref["a"]["h"] + ref["c"]["h"]) / 2))
    assert info["tasks"] == ["a", "c"] and list(info["weights"]) == ["a", "c"]

    model = Tiny()
    info = model.backward(make("static", TASKS, weights={"a": 2.0, "b": 3.0, "c": 4.0}), tasks=["c"])
    close(model.At.grad.ravel(), 4.0 * ref["c"]["A"])
    assert info["weights"] == {"c": 4.0}


@pytest.mark.parametrize("name", ["ew", "mean"])
def test_backward_accumulates_like_loss_backward(name):
    ref = Tiny().hand()
    model = Tiny()
    balancer = make(name, TASKS)
    model.backward(balancer)
    once = model.At.grad.clone()
    model.backward(balancer)
    close(model.At.grad, 2 * once.numpy())
    close(model.heads["a"][0].grad, 2 * ref["a"]["b"])


def test_normalize_aggregates_unit_gradients():
    model = Tiny()
    info = model.backward(make("sum", TASKS, normalize=True))
    ref = model.hand()
    close(model.At.grad.ravel(), sum(ref[t]["A"] / np.linalg.norm(ref[t]["A"]) for t in TASKS))
    close(list(info["grad_norms"].values()), [np.linalg.norm(ref[t]["A"]) for t in TASKS])  # before normalising


def test_db_mtl_runs_on_log_loss_gradients():
    model = Tiny()
    model.backward(make("db_mtl", TASKS, beta=0.5))
    ref = model.hand()
    G = np.stack([ref[t]["A"] / ref[t]["loss"] for t in TASKS]) * 0.5  # first EMA step: (1 - beta) g
    norms = np.linalg.norm(G, axis=1)
    close(model.At.grad.ravel(), (norms.max() / (norms + 1e-8)) @ G, rtol=1e-6)
    for t in TASKS:
        close(model.heads[t][0].grad, ref[t]["b"] / ref[t]["loss"], rtol=1e-6)


def test_gradnorm_and_uw_expose_their_parameters():
    assert make("gradnorm", TASKS).parameters()[0].shape == (3,)
    assert make("uw", TASKS).parameters()[0].shape == (3,)
    assert make("ew", TASKS).parameters() == []
    model = Tiny()
    balancer = make("gradnorm", TASKS)
    info = model.backward(balancer)
    ref = model.hand()
    close(list(info["grad_norms"].values()), [np.linalg.norm(ref[t]["A"]) for t in TASKS])  # A is the last layer
    assert balancer.parameters()[0].grad is not None


def test_ddp_helpers_describe_each_route():
    assert make("upgrad" if "upgrad" in AGGREGATORS else "mean", TASKS).handles_ddp_sync
    assert make("db_mtl", TASKS).handles_ddp_sync
    assert not make("dwa", TASKS).handles_ddp_sync
    assert make("mean", TASKS).requires_features  # auto: uses the features for the features-first Jacobian
    assert not make("mean", TASKS, jacobian="vmap").requires_features
    assert not make("ew", TASKS).requires_features


def test_make_accepts_instances_and_reports_unknown_names():
    dwa = WEIGHTINGS["dwa"](TASKS)
    assert make(dwa, TASKS).method is dwa
    assert make(dwa, TASKS).name == "dwa"
    assert isinstance(make(AGGREGATORS["mean"](), TASKS), Balancer)
    with pytest.raises(ValueError, match="Did you mean 'pcgrad'.*Loss weightings: .*dwa.*gradient aggregators: .*mean"):
        make("pcgrd", TASKS)
    with pytest.raises(ValueError, match="has no setting 'temprature'. Did you mean 'temperature'"):
        make("dwa", TASKS, temprature=3)
    with pytest.raises(ValueError, match="instance"):
        make(dwa, TASKS, temperature=3)
    with pytest.raises(ValueError, match="loss weighting.*jacobian= and normalize="):
        make("uw", TASKS, jacobian="vmap")
    with pytest.raises(ValueError, match="jacobian='loop' or 'vmap'"):
        make("db_mtl", TASKS, jacobian="representation")
    with pytest.raises(ValueError, match="choose one of auto, loop, vmap, features, gramian, representation"):
        make("mean", TASKS, jacobian="loops")
    with pytest.raises(ValueError, match="same task list"):
        Balancer(WEIGHTINGS["ew"](["a", "b"]), TASKS)


def test_backward_errors_say_how_to_fix_them():
    model = Tiny()
    h, losses = model.forward()
    balancer = make("mean", TASKS)
    with pytest.raises(ValueError, match="task 'b'.*not finite.*learning rate"):
        balancer.backward({**losses, "b": losses["b"] * float("nan")}, [model.At], model.heads)
    with pytest.raises(ValueError, match="task 'a'.*not finite"):
        make("ew", TASKS).backward({**losses, "a": losses["a"] * float("inf")}, [model.At], model.heads)
    with pytest.raises(ValueError, match="scalar"):
        balancer.backward({"a": losses["a"].repeat(2)}, [model.At], model.heads)
    with pytest.raises(ValueError, match="task_params has no entry for task 'c'"):
        balancer.backward(losses, [model.At], {"a": model.heads["a"], "b": model.heads["b"]})
    with pytest.raises(ValueError, match="also in shared_params"):
        balancer.backward(losses, [model.At], {**model.heads, "a": [model.At]})
    with pytest.raises(ValueError, match="needs the shared features"):
        make("mean", TASKS, jacobian="representation").backward(losses, [model.At], model.heads)
    with pytest.raises(ValueError, match="shared_params is empty"):
        balancer.backward(losses, [], model.heads)


@pytest.mark.parametrize(
    "name, jacobian", [("ew", "auto"), ("mean", "loop"), ("mean", "vmap"), ("mean", "representation")]
)
def test_a_backbone_the_losses_do_not_reach_is_an_error(name, jacobian):
    model = Tiny()
    stranger = torch.nn.Parameter(torch.ones(3))
    h, losses = model.forward()
    with pytest.raises(ValueError, match="No task loss reaches the .*shared parameters"):
        make(name, TASKS, jacobian=jacobian).backward(losses, [stranger], model.heads, features=h)
    if jacobian == "representation":
        detached = h.detach().requires_grad_()
        with pytest.raises(ValueError, match="No task loss depends on the features"):
            balancer = make(name, TASKS, jacobian=jacobian)
            balancer.backward(model.forward()[1], [model.At], model.heads, features=detached)


def test_state_dict_round_trip_and_mismatch():
    balancer = make("dwa", TASKS)
    model = Tiny()
    model.backward(balancer)
    balancer.on_epoch_end()
    state = balancer.state_dict()
    other = make("dwa", TASKS)
    other.load_state_dict(state)
    assert torch.equal(other.method.state_dict()["history"][0], state["state"]["history"][0])
    with pytest.raises(ValueError, match="'dwa' for tasks"):
        make("uw", TASKS).load_state_dict(state)


def _train(name: str, steps: int = 30) -> tuple[float, float]:
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    targets = {
        "a": (x @ torch.tensor([1.0, -1.0, 0.5, 0.0])).unsqueeze(1),
        "b": (x[:, :2].sum(1, keepdim=True) > 0).float(),
    }
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh())
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(16, 1), "b": torch.nn.Linear(16, 1)})
    settings = {"stch": {"warmup_epochs": 1}}.get(name, {})
    balancer = make(name, ["a", "b"], **settings)
    params = list(backbone.parameters()) + list(heads.parameters())
    optimizer = torch.optim.SGD(params + balancer.parameters(), lr=0.1)
    task_params = {t: list(heads[t].parameters()) for t in heads}

    def losses():
        h = backbone(x)
        return h, {
            "a": torch.nn.functional.mse_loss(heads["a"](h), targets["a"]),
            "b": torch.nn.functional.binary_cross_entropy_with_logits(heads["b"](h), targets["b"]),
        }

    with torch.no_grad():
        start = sum(v.item() for v in losses()[1].values())
    for step in range(steps):
        optimizer.zero_grad()
        h, task_losses = losses()
        balancer.backward(task_losses, list(backbone.parameters()), task_params, features=h)
        optimizer.step()
        if step % 5 == 4:
            balancer.on_epoch_end()
    with torch.no_grad():
        end = sum(v.item() for v in losses()[1].values())
    return start, end


@pytest.mark.parametrize("name", sorted(WEIGHTINGS) + sorted(AGGREGATORS))
def test_every_method_trains_a_two_task_model(name):
    needed = getattr(AGGREGATORS[name](), "min_rows", 1) if name in AGGREGATORS else 1
    if needed > 2:  # Krum refuses fewer than f + 3 rows, with an error (test_aggregators.py)
        pytest.skip(f"{name} needs at least {needed} tasks (min_rows); this model has 2")
    start, end = _train(name)
    assert end < 0.8 * start, (name, start, end)
