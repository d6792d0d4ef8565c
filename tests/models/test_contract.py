"""The HydraNet contract on MTAN, DSelect-k and LTB: shapes, requested heads, partition, representation path."""

import pytest
import torch
from torch import nn

import hydranet as hn
from hydranet.balancing import make
from hydranet.losses import MultiTaskLoss
from hydranet.models import LTB, MLP, MTAN, ConvNet, DSelectK, build_architecture

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3), hn.Task("bin", "binary")]
SHAPES = {"reg": (4, 1), "cls": (4, 3), "bin": (4, 1)}

pytestmark = pytest.mark.usefixtures("one_thread")


def _finalized_ltb():
    model = LTB(MLP(6, hidden=(8, 7, 6)), TASKS)
    with torch.no_grad():  # a tree with a shared trunk, a two-task branch and a one-task branch
        model.choices[0][0].logits.copy_(torch.tensor([0.0, 3.0, 0.0]))
        model.choices[0][1].logits.copy_(torch.tensor([0.0, 3.0, 0.0]))
        model.choices[0][2].logits.copy_(torch.tensor([0.0, 3.0, 0.0]))
        for i, parent in enumerate((0, 0, 2)):
            model.choices[1][i].logits.copy_(torch.nn.functional.one_hot(torch.tensor(parent), 3).float() * 3)
    model.finalize()
    return model


def architectures():
    """One small instance of each architecture (and set-up) on 6 input values or 1×8×8 images."""
    torch.manual_seed(0)
    return {
        "mtan_mlp": (MTAN(MLP(6, hidden=(8, 5)), TASKS, input_shape=(6,)), (6,)),
        "mtan_conv": (MTAN(ConvNet(1, widths=(4, 6)), TASKS, input_shape=(1, 8, 8), head="mlp"), (1, 8, 8)),
        "dselect": (DSelectK(TASKS, MLP(6, hidden=(8,)), num_experts=4, k=2, expert_hidden=(5,)), (6,)),
        "dselect_static": (DSelectK(TASKS, feature_dim=6, num_experts=3, k=1, per_example=False), (6,)),
        "ltb": (LTB(MLP(6, hidden=(8, 7, 5)), TASKS), (6,)),
        "ltb_bottom": (LTB(nn.Sequential(nn.Linear(8, 5), nn.Tanh()), TASKS, MLP(6, hidden=(8,)), feature_dim=5), (6,)),
        "ltb_finalized": (_finalized_ltb(), (6,)),
    }


def _heads_ran(model):
    ran = []
    for name in model.task_names:
        model.heads[name].register_forward_hook(lambda m, i, o, n=name: ran.append(n))
    return ran


@pytest.mark.parametrize("name", list(architectures()))
def test_output_shapes_and_only_requested_heads_run(name):
    model, shape = architectures()[name]
    model.eval()  # LTB: the argmax choice, so that two forward passes agree
    x = torch.randn(4, *shape)
    out, features = model(x, return_features=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == SHAPES
    again = model.heads_from_features(features, ["bin"])
    assert list(again) == ["bin"] and torch.allclose(again["bin"], out["bin"], atol=1e-6)
    ran = _heads_ran(model)
    assert list(model(x, tasks=["cls"])) == ["cls"] and ran == ["cls"]
    ran.clear()
    assert list(model(x, tasks="reg")) == ["reg"] and ran == ["reg"]


def test_task_specific_modules_of_other_tasks_do_not_run():
    model, _ = architectures()["mtan_conv"]
    calls = []
    for task in TASKS:
        model.attention[task.name].register_forward_hook(lambda m, i, o, n=task.name: calls.append(n))
        for module in model.attention[task.name]:
            module.register_forward_hook(lambda m, i, o, n=task.name: calls.append(n))
    model(torch.randn(2, 1, 8, 8), tasks=["bin"])
    assert set(calls) == {"bin"}
    ltb = _finalized_ltb()
    ran = []
    for l, layer in enumerate(ltb.blocks):
        for i, block in enumerate(layer):
            block.register_forward_hook(lambda m, inp, o, key=(l, i): ran.append(key))
    ltb(torch.randn(2, 6), tasks=["bin"])
    # the shared nodes run once, as a backbone does (trunk (0, 1), node (1, 0) of "reg" and "cls"), then the
    # own branch of "bin" (node (1, 2), leaf 2); the pruned nodes and the other leaves do not run
    assert ran == [(0, 1), (1, 0), (1, 2), (2, 2)]


@pytest.mark.parametrize("name", list(architectures()))
def test_parameter_partition_is_disjoint_complete_and_exact(name):
    """Task parameters reach only their task's loss; shared ones reach the losses only through the features."""
    model, shape = architectures()[name]
    model.eval()
    x = torch.randn(5, *shape)
    shared = model.shared_parameters()
    own = {t.name: model.task_parameters(t.name) for t in TASKS}
    everything = {id(p) for p in model.parameters()}
    ids = [id(p) for p in shared] + [id(p) for ps in own.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == everything
    for task in TASKS:
        outputs, features = model(x, return_features=True)
        feats = [features] if isinstance(features, torch.Tensor) else list(features)
        loss = outputs[task.name].square().mean()
        direct = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        through = torch.autograd.grad(loss, feats, retain_graph=True, allow_unused=True)
        pairs = [(f, g) for f, g in zip(feats, through) if g is not None]
        via = torch.autograd.grad([f for f, _ in pairs], shared, grad_outputs=[g for _, g in pairs],
                                  retain_graph=True, allow_unused=True)
        for a, b in zip(direct, via):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)
        others = [p for t in TASKS if t is not task for p in own[t.name]]
        assert all(g is None or not g.any() for g in torch.autograd.grad(loss, others, allow_unused=True))
        mine = torch.autograd.grad(loss, own[task.name], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in mine)


def _targets(n):
    return {"reg": torch.randn(n), "cls": torch.arange(n) % 3, "bin": (torch.arange(n) % 2).float()}


def _balanced_grads(model, x, name, jacobian):
    model.zero_grad()
    torch.manual_seed(3)  # the same Gumbel noise for every path
    outputs, features = model(x, return_features=True)
    losses = MultiTaskLoss(TASKS)(outputs, _targets(x.shape[0]))
    balancer = make(name, TASKS, jacobian=jacobian)
    task_params = {t.name: model.task_parameters(t.name) for t in TASKS}
    info = balancer.backward(losses, model.shared_parameters(), task_params, features=features)
    return info, [None if p.grad is None else p.grad.clone() for p in model.shared_parameters()]


@pytest.mark.parametrize("name", list(architectures()))
def test_representation_path_runs_a_balancer_step(name):
    model, shape = architectures()[name]
    x = torch.randn(6, *shape)
    info, grads = _balanced_grads(model, x, "upgrad", "representation")
    assert info["jacobian"] == "representation" and info["tasks"] == [t.name for t in TASKS]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is not None for t in TASKS for p in model.task_parameters(t.name))
    # the mean is linear: through the representation it equals the mean of the parameter gradients
    _, rep = _balanced_grads(model, x, "mean", "representation")
    _, loop = _balanced_grads(model, x, "mean", "loop")
    for a, b in zip(rep, loop):
        assert torch.allclose(a, b, atol=1e-5)


def test_representation_is_refused_where_it_does_not_apply():
    shared_blocks = MTAN(ConvNet(1, widths=(4, 6)), TASKS, input_shape=(1, 8, 8), share_blocks=True)
    assert shared_blocks(torch.randn(2, 1, 8, 8))["cls"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"share_blocks=True\) has no shared representation.*'loop' / 'vmap'"):
        shared_blocks(torch.randn(2, 1, 8, 8), return_features=True)
    assert {id(p) for p in shared_blocks.blocks.parameters()} <= {id(p) for p in shared_blocks.shared_parameters()}
    ltb = LTB(MLP(6, hidden=(8, 5)), TASKS)
    ltb.finalize([[0, 1, 2]])  # every task its own column: nothing shared
    assert ltb(torch.randn(2, 6))["cls"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"starts at the raw input.*bottom="):
        ltb(torch.randn(2, 6), return_features=True)


def _train(model, x, steps, lr=1e-2, regularize=None):
    torch.manual_seed(1)
    targets = {"reg": x[:, 0] - 2 * x[:, 1], "cls": (x[:, 2] > 0).long() + (x[:, 3] > 0.5).long()}
    loss_fn = MultiTaskLoss(TASKS[:2])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(steps):
        if isinstance(model, LTB):
            model.anneal(epoch // 10)
        outputs, features = model(x, tasks=["reg", "cls"], return_features=True)
        losses = loss_fn(outputs, targets)
        total = sum(losses.values())
        history.append(total.item())
        if regularize:
            total = total + sum(regularize(model, features).values())
        opt.zero_grad()
        total.backward()
        opt.step()
    return history


@pytest.mark.parametrize(
    "build",
    [
        lambda: MTAN(MLP(6, hidden=(32, 16)), TASKS[:2], input_shape=(6,)),
        lambda: DSelectK(TASKS[:2], MLP(6, hidden=(32,)), num_experts=4, k=2, expert_hidden=(16,), entropy_reg=1e-3),
        lambda: LTB(MLP(6, hidden=(16, 16)), TASKS[:2]),
    ],
    ids=["mtan", "dselect_k", "ltb"],
)
def test_trains_a_two_task_problem(build):
    torch.manual_seed(0)
    model = build()
    reg = (lambda m, f: m.regularization(f, ["reg", "cls"])) if isinstance(model, DSelectK) else None
    history = _train(model, torch.randn(256, 6), 150, regularize=reg)
    assert history[-1] < 0.3 * history[0]


def test_mtan_trains_on_images():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    model = MTAN(ConvNet(1, widths=(8, 8)), TASKS[:2], input_shape=(1, 8, 8))
    targets = {"reg": x[:, 0, :4].mean((1, 2)) * 4, "cls": (x[:, 0, 4:].mean((1, 2)) > 0).long() * 2}
    loss_fn, opt = MultiTaskLoss(TASKS[:2]), torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(60):
        total = sum(loss_fn(model(x), targets).values())
        history.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert history[-1] < 0.5 * history[0]


def test_build_architecture_names():
    mtan = build_architecture("mtan", backbone={"name": "convnet", "widths": [4, 6]}, tasks=TASKS, input_shape=(3, 8, 8),
                              attention_hidden=2)
    assert isinstance(mtan, MTAN) and mtan.attention["cls"][0][0].out_channels == 2
    dsk = build_architecture("dselect_k", backbone="mlp", tasks=TASKS, input_shape=(5,), num_experts=4, k=1)
    assert isinstance(dsk, DSelectK) and dsk.gates["cls"].k == 1 and dsk(torch.randn(2, 5))["cls"].shape == (2, 3)
    ltb = build_architecture("ltb", backbone={"name": "mlp", "hidden": [8, 8]}, tasks=TASKS, input_shape=(5,),
                             branches=[2, 3])
    assert isinstance(ltb, LTB) and ltb.branches == [2, 3]
    nodes = [next(iter(block.parameters())) for block in ltb.blocks[0]]
    assert not torch.equal(nodes[0], nodes[1])  # a fresh network per node
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['kk'\] for architecture 'dselect_k'.*k,"):
        build_architecture("dselect_k", backbone="mlp", tasks=TASKS, input_shape=(5,), kk=1)


def test_state_dict_round_trip_and_bf16():
    for name, (model, shape) in architectures().items():
        if name == "ltb_finalized":
            continue
        model.eval()
        x = torch.randn(3, *shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x)["cls"].dtype == torch.bfloat16, name
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        fresh = architectures()[name][0].eval()
        fresh.load_state_dict(model.state_dict())
        assert torch.allclose(fresh(x)["cls"], model(x)["cls"]), name
