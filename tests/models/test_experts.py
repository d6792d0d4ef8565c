import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hydranet as hn
from hydranet.losses import MultiTaskLoss
from hydranet.models import CGC, MLP, PLE, ConvNet, CrossStitch, MLPExperts, MMoE

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3), hn.Task("bin", "binary")]


pytestmark = pytest.mark.usefixtures("one_thread")


def architectures():
    """One small instance of every soft-sharing set-up, on 6 input values."""
    torch.manual_seed(0)
    return {
        "mmoe": MMoE(TASKS, feature_dim=6, num_experts=3, expert_hidden=(5,)),
        "mmoe_bottom": MMoE(TASKS, MLP(6, hidden=(8,)), num_experts=2, expert_hidden=(4, 5), head="mlp"),
        "cgc": CGC(TASKS, MLP(6, hidden=(8,)), shared_experts=2, task_experts=2, expert_hidden=(5,)),
        "ple": PLE(TASKS, feature_dim=6, levels=3, shared_experts=2, task_experts=1, expert_hidden=(5,)),
        "cross_stitch": CrossStitch(MLP(6, hidden=(8, 7)), TASKS, head="mlp", hidden=(4,)),
        "cross_stitch_bottom": CrossStitch(
            nn.Sequential(nn.Linear(8, 5), nn.Tanh()), TASKS, MLP(6, hidden=(8,)), feature_dim=5
        ),
    }


def test_mlp_experts_equal_independent_mlps():
    torch.manual_seed(0)
    bank = MLPExperts(3, 4, (5, 2), "tanh")
    x = torch.randn(6, 4)
    out = bank(x)
    assert out.shape == (6, 3, 2)
    for e in range(3):
        h = torch.tanh(x @ bank.weights[0][e] + bank.biases[0][e])
        h = torch.tanh(h @ bank.weights[1][e] + bank.biases[1][e])
        assert torch.allclose(out[:, e], h, atol=1e-6)


def test_mmoe_matches_the_formula():
    torch.manual_seed(0)
    model = MMoE(TASKS, feature_dim=4, num_experts=3, expert_hidden=(5,))
    x = torch.randn(7, 4)
    out = model(x)
    bank, gates = model.levels[0].shared, model.levels[0].gates
    experts = [torch.relu(x @ bank.weights[0][i] + bank.biases[0][i]) for i in range(3)]  # E_i(u)
    for task in TASKS:
        g = torch.softmax(x @ gates[task.name].weight.T + gates[task.name].bias, dim=1)  # softmax(W_k u)
        mixture = sum(g[:, i : i + 1] * experts[i] for i in range(3))
        expected = mixture @ model.heads[task.name].weight.T + model.heads[task.name].bias
        assert torch.allclose(out[task.name], expected, atol=1e-5)


def _mix(gate, x, pool):
    return torch.einsum("bn,bnh->bh", torch.softmax(gate(x), dim=1), torch.stack(pool, dim=1))


def _experts(bank, x):
    return [torch.relu(x @ bank.weights[0][i] + bank.biases[0][i]) for i in range(bank.num)]


def test_ple_matches_the_formula():
    torch.manual_seed(0)
    model = PLE(TASKS, feature_dim=4, levels=2, shared_experts=2, task_experts=2, expert_hidden=(5,))
    x = torch.randn(7, 4)
    out = model(x)
    low, top = model.levels
    shared = _experts(low.shared, x)
    own = {t.name: _experts(low.task_experts[t.name], x) for t in TASKS}
    # level 1: each task mixes its experts and the shared ones; the shared gate mixes all of them
    g = {t.name: _mix(low.gates[t.name], x, own[t.name] + shared) for t in TASKS}
    g_shared = _mix(low.shared_gate, x, [e for t in TASKS for e in own[t.name]] + shared)
    # level 2 (top): task experts read g^k, shared experts read g^s
    shared2 = _experts(top.shared, g_shared)
    for task in TASKS:
        k = task.name
        mixture = _mix(top.gates[k], g[k], _experts(top.task_experts[k], g[k]) + shared2)
        assert torch.allclose(out[k], model.heads[k](mixture), atol=1e-5)


def test_cgc_and_mmoe_are_one_level_ple():
    torch.manual_seed(0)
    cgc = CGC(TASKS, feature_dim=4, shared_experts=2, task_experts=1)
    assert cgc.n_levels == 1 and cgc.levels[0].shared_gate is None
    mmoe = MMoE(TASKS, feature_dim=4, num_experts=5)
    assert mmoe.n_shared == 5 and mmoe.n_task == 0 and len(mmoe.levels[0].task_experts) == 0
    assert mmoe.levels[0].gates["cls"].out_features == 5


def test_cross_stitch_mixes_columns_after_every_stage():
    torch.manual_seed(0)
    model = CrossStitch(nn.Sequential(nn.Linear(4, 3)), TASKS[:2], feature_dim=3)
    assert len(model.stitches) == 1
    assert torch.allclose(model.stitches[0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    with torch.no_grad():
        model.stitches[0].copy_(torch.tensor([[0.6, 0.4], [0.3, 0.7]]))
    x = torch.randn(5, 4)
    features = model.features(x)
    columns = [model.columns[k][0](x) for k in range(2)]
    assert features.shape == (5, 2, 3)
    assert torch.allclose(features[:, 0], 0.6 * columns[0] + 0.4 * columns[1], atol=1e-6)
    assert torch.allclose(features[:, 1], 0.3 * columns[0] + 0.7 * columns[1], atol=1e-6)
    out = model(x)
    assert torch.allclose(out["cls"], model.heads["cls"](features[:, 1]))


def test_cross_stitch_stages_and_initialisation():
    three = CrossStitch(ConvNet(1, widths=(4, 8)), TASKS)
    assert len(three.stitches) == 2  # after each conv stage; the pooling joins the last one
    a = three.stitches[0]
    assert torch.allclose(a.diagonal(), torch.full((3,), 0.9)) and torch.allclose(a.sum(1), torch.ones(3))
    assert three(torch.randn(2, 1, 16, 16))["cls"].shape == (2, 3)
    mlp = CrossStitch(MLP(6, hidden=(8, 8, 8)), TASKS)
    assert len(mlp.stitches) == 3  # the leading Flatten joins the first stage
    copies = CrossStitch(MLP(6, hidden=(8,)), TASKS[:2])
    w = [c[0][1][0].weight for c in copies.columns]
    assert torch.equal(w[0], w[1]) and w[0] is not w[1]  # copies of one column: same start, own parameters


@pytest.mark.parametrize("name", list(architectures()))
def test_outputs_features_and_requested_tasks(name):
    model = architectures()[name]
    x = torch.randn(4, 6)
    out, features = model(x, return_features=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"reg": (4, 1), "cls": (4, 3), "bin": (4, 1)}
    again = model.heads_from_features(features, ["bin"])
    assert list(again) == ["bin"] and torch.allclose(again["bin"], out["bin"], atol=1e-6)
    ran = []
    for task in TASKS:
        model.heads[task.name].register_forward_hook(lambda m, i, o, n=task.name: ran.append(n))
    assert list(model(x, tasks=["cls"])) == ["cls"] and ran == ["cls"]


@pytest.mark.parametrize("name", list(architectures()))
def test_parameter_partition_is_exact(name):
    """Task parameters reach only their task's loss; shared ones reach the losses only through the features."""
    model = architectures()[name]
    x = torch.randn(5, 6)
    shared = model.shared_parameters()
    everything = {id(p) for p in model.parameters()}
    own = {t.name: model.task_parameters(t.name) for t in TASKS}
    assert {id(p) for p in shared} | {id(p) for ps in own.values() for p in ps} == everything
    assert len(shared) + sum(map(len, own.values())) == len(everything)
    for task in TASKS:
        outputs, features = model(x, return_features=True)
        loss = outputs[task.name].square().mean()
        direct = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        through = torch.autograd.grad(loss, features, retain_graph=True)[0]
        via_features = torch.autograd.grad(features, shared, grad_outputs=through, retain_graph=True, allow_unused=True)
        for a, b in zip(direct, via_features):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)
        others = [p for t in TASKS if t is not task for p in own[t.name]]
        assert all(g is None or not g.any() for g in torch.autograd.grad(loss, others, allow_unused=True))


def test_gradients_reach_the_bottom_from_every_task():
    for model in (architectures()["cgc"], architectures()["cross_stitch_bottom"]):
        for task in TASKS:
            model.zero_grad()
            model(torch.randn(4, 6), tasks=[task.name])[task.name].sum().backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.bottom.parameters())


def test_bottom_runs_once_and_split_features():
    model = PLE(TASKS, MLP(6, hidden=(8,)), levels=2, shared_experts=3, task_experts=1, expert_hidden=(5,))
    calls = []
    model.bottom.register_forward_hook(lambda m, i, o: calls.append(1))
    _, features = model(torch.randn(4, 6), return_features=True)
    assert len(calls) == 1 and features.shape == (4, 3 * 5 + 3 * 5)
    shared, inputs = model.split_features(features)
    assert shared.shape == (4, 3, 5) and inputs.shape == (4, 3, 5)
    mmoe = MMoE(TASKS, MLP(6, hidden=(8,)), num_experts=2, expert_hidden=(5,))
    shared, inputs = mmoe.split_features(mmoe.features(torch.randn(4, 6)))
    assert shared.shape == (4, 2, 5) and inputs.shape == (4, 1, 8)


def test_raw_input_is_a_constant_of_the_features():
    model = MMoE(TASKS, feature_dim=6, num_experts=2)
    out, features = model(torch.randn(3, 6), return_features=True)
    grad = torch.autograd.grad(out["cls"].sum(), features)[0]
    assert grad[:, -6:].abs().sum() == 0 and grad[:, :-6].abs().sum() > 0


def test_experts_from_a_factory_on_raw_images():
    torch.manual_seed(0)
    mmoe = MMoE(TASKS, expert=lambda: ConvNet(1, widths=(4,)), num_experts=2, input_shape=(1, 8, 8))
    x = torch.randn(3, 1, 8, 8)
    assert mmoe.expert_dim == 4 and mmoe(x)["cls"].shape == (3, 3)
    cgc = CGC(TASKS, expert=lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
              input_shape=(1, 8, 8))
    out, features = cgc(x, return_features=True)
    assert cgc.expert_dim == 2  # measured with a dry run
    assert torch.allclose(cgc.heads_from_features(features)["reg"], out["reg"])


def test_construction_errors():
    with pytest.raises(ValueError, match=r"without a bottom reads the input directly: pass input_shape="):
        MMoE(TASKS)
    with pytest.raises(ValueError, match=r"cannot tell the bottom's feature size: pass feature_dim=D or input_shape"):
        MMoE(TASKS, nn.Sequential(nn.Linear(6, 4)))
    with pytest.raises(ValueError, match="MMoE sets"):
        MMoE(TASKS, feature_dim=4, levels=2)
    with pytest.raises(ValueError, match="CGC has one level"):
        CGC(TASKS, feature_dim=4, levels=2)
    with pytest.raises(ValueError, match="shared_experts=0 leaves nothing shared"):
        PLE(TASKS, feature_dim=4, shared_experts=0)
    with pytest.raises(ValueError, match="expert_hidden must be positive"):
        PLE(TASKS, feature_dim=4, expert_hidden=())
    with pytest.raises(ValueError, match=r"pass input_shape=\(...\)"):
        MMoE(TASKS, expert=lambda: ConvNet(1), feature_dim=64)
    with pytest.raises(TypeError, match=r"nn.Sequential of stages.*got Linear"):
        CrossStitch(nn.Linear(3, 2), TASKS)
    with pytest.raises(ValueError, match="no parameters"):
        CrossStitch(nn.Sequential(nn.ReLU()), TASKS, feature_dim=3)
    with pytest.raises(ValueError, match="alpha_same"):
        CrossStitch(MLP(3, hidden=(2,)), TASKS, alpha_same=0.0)
    model = MMoE(TASKS, feature_dim=6)
    with pytest.raises(ValueError, match=r"expects features \[batch, 262\]"):
        model.heads_from_features(torch.randn(2, 5))


def _train(model, steps=150, lr=1e-2):
    torch.manual_seed(1)
    x = torch.randn(256, 6)
    targets = {"reg": x[:, 0] - 2 * x[:, 1], "cls": (x[:, 2] > 0).long() + (x[:, 3] > 0.5).long()}
    tasks = TASKS[:2]
    loss_fn = MultiTaskLoss(tasks)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        losses = loss_fn(model(x, tasks=["reg", "cls"]), targets)
        total = sum(losses.values())
        history.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    return history


@pytest.mark.parametrize(
    "build",
    [
        lambda t: MMoE(t, MLP(6, hidden=(32,)), num_experts=3, expert_hidden=(16,)),
        lambda t: PLE(t, feature_dim=6, levels=2, shared_experts=2, task_experts=1, expert_hidden=(16,)),
        lambda t: CrossStitch(MLP(6, hidden=(16, 16)), t),
    ],
    ids=["mmoe", "ple", "cross_stitch"],
)
def test_trains_a_two_task_problem(build):
    torch.manual_seed(0)
    history = _train(build(TASKS[:2]))
    assert history[-1] < 0.25 * history[0]


def test_torch_compile_forward_and_backward():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = PLE(TASKS, feature_dim=4, levels=2, shared_experts=1, task_experts=1, expert_hidden=(3,))
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(2, 4)
    out = compiled(x, tasks=["cls"])
    assert torch.allclose(out["cls"], model(x, tasks=["cls"])["cls"], atol=1e-6)
    F.cross_entropy(out["cls"], torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in model.task_parameters("cls"))


def test_amp_bf16_and_state_dict_round_trip():
    for name, model in architectures().items():
        x = torch.randn(3, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            assert out["cls"].dtype == torch.bfloat16, name
            loss = MultiTaskLoss(TASKS[1:2])({"cls": out["cls"]}, {"cls": torch.tensor([0, 1, 2])})["cls"]
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.task_parameters("cls")), name
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        fresh = architectures()[name]
        assert not torch.equal(fresh(x)["cls"], model(x)["cls"]), name
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(fresh(x)["cls"], model(x)["cls"]), name
