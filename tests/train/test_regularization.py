"""The model's own regulariser in the Step: added to the balanced gradient, never balanced as a task."""

import pytest
import torch

import hydranet as hn
from hydranet.data import Batch
from hydranet.models import MLP, DSelectK, HydraNet
from hydranet.train import Step

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]
C_PARAM, C_FEATURES = 0.3, 0.05


class Quadratic(HydraNet):
    r"""HydraNet with :math:`R = c_p (\lVert W_1\rVert^2 + \lVert W_{head}\rVert^2) + c_f \lVert f\rVert^2`: a
    parameter term (gradient :math:`2 c_p W` by hand) on a shared and a task-specific weight, and a term of
    the batch's features (through the trunk, like DSelect-k's per-example gates)."""

    def regularization(self, features, tasks):
        first = self.backbone[1][0].weight
        head = self.heads["cls"].weight
        return {"params": C_PARAM * (first.square().sum() + head.square().sum()), "features": C_FEATURES * features.square().sum()}


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    targets = {"reg": torch.randn(n, 1, generator=g), "cls": torch.randint(0, 3, (n,), generator=g)}
    masks = {"reg": torch.arange(n) % 2 == 0, "cls": torch.ones(n, dtype=torch.bool)}
    return Batch(x, targets, masks)


def models(cls=Quadratic):
    torch.manual_seed(0)
    net = cls(MLP(5, hidden=(8, 6)), TASKS)
    torch.manual_seed(0)
    plain = HydraNet(MLP(5, hidden=(8, 6)), TASKS)  # the same weights, no regulariser
    return net, plain


def expected_grads(plain, method, settings, batches):
    """The balancer's own gradient (a model without regulariser, a fresh balancer) plus R's gradient:
    :math:`2 c_p W` by hand for the parameter term, autograd of :math:`c_f \\lVert f\\rVert^2` for the
    feature term, each summed over the micro-batches."""
    step = Step(plain, plain.tasks, hn.balancing.make(method, TASKS, **settings))
    for b in batches:
        step(b)
    grads = {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}
    first, head = plain.backbone[1][0].weight, plain.heads["cls"].weight
    names = {id(p): n for n, p in plain.named_parameters()}
    for b in batches:
        grads[names[id(first)]] += 2 * C_PARAM * first.detach()
        grads[names[id(head)]] += 2 * C_PARAM * head.detach()
        _, features = plain(b.inputs, return_features=True)
        params = list(plain.backbone.parameters())
        for p, g in zip(params, torch.autograd.grad(C_FEATURES * features.square().sum(), params)):
            grads[names[id(p)]] += g
    return grads


@pytest.mark.parametrize(
    "method, settings",
    [
        ("ew", {}),
        ("uw", {}),
        ("upgrad", {"jacobian": "features"}),
        ("upgrad", {"jacobian": "gramian"}),
        ("upgrad", {"jacobian": "representation"}),
        ("upgrad", {"jacobian": "loop"}),
    ],
    ids=["ew", "uw", "upgrad-features", "upgrad-gramian", "upgrad-representation", "upgrad-loop"],
)
def test_grad_is_the_balanced_gradient_plus_the_regularizers(one_thread, method, settings):
    net, plain = models()
    b = batch(1)
    out = Step(net, net.tasks, hn.balancing.make(method, TASKS, **settings))(b)
    expected = expected_grads(plain, method, settings, [b])
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():
        _, features = net(b.inputs, return_features=True)
        value = C_PARAM * (net.backbone[1][0].weight.square().sum() + net.heads["cls"].weight.square().sum())
        value = value + C_FEATURES * features.square().sum()
    assert out.info["regularization"] == pytest.approx(float(value), rel=1e-6)
    # not a task: the balancer's diagnostics name the two tasks only
    assert set(out.info["losses"]) == {"reg", "cls"}
    assert set(out.info["weights"] or {}) <= {"reg", "cls"}


@pytest.mark.parametrize("method", ["ew", "upgrad"])
def test_accumulation_scales_the_regularizer_like_the_losses(one_thread, method):
    """Two micro-batches then SGD(lr=1): the update is minus the mean over the micro-batches of (balanced
    gradient + R's gradient), R entering once per optimizer step on average."""
    net, plain = models()
    batches = [batch(1), batch(2)]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    step = Step(net, net.tasks, hn.balancing.make(method, TASKS), optimizer=torch.optim.SGD(net.parameters(), lr=1.0))
    for i, b in enumerate(batches):
        step(b, last_in_group=i == 1)
    step.optimizer_step(micro=2)
    expected = expected_grads(plain, method, {}, batches)
    for name, p in net.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), expected[name] / 2, rtol=1e-5, atol=1e-6, msg=name)


def test_objective_for_automatic_optimization_includes_the_regularizer(one_thread):
    """``backward=False`` (Lightning's automatic optimization) returns the weighted objective plus R."""
    net, _ = models()
    b = batch(3)
    out = Step(net, net.tasks, hn.balancing.make("ew", TASKS))(b, backward=False)
    assert float(out.objective.detach()) == pytest.approx(float(sum(out.losses.values())) + out.info["regularization"], rel=1e-6)


def test_a_model_without_regularizer_reports_none(one_thread):
    _, plain = models()
    out = Step(plain, plain.tasks, hn.balancing.make("ew", TASKS))(batch(1))
    assert "regularization" not in out.info


class NoArguments(HydraNet):
    def regularization(self):
        return 0.5 * self.backbone[1][0].bias.square().sum()


def test_a_regularizer_without_arguments(one_thread):
    torch.manual_seed(0)
    net = NoArguments(MLP(5, hidden=(8,)), TASKS)
    torch.manual_seed(0)
    plain = HydraNet(MLP(5, hidden=(8,)), TASKS)
    Step(net, net.tasks, hn.balancing.make("ew", TASKS))(batch(1))
    Step(plain, plain.tasks, hn.balancing.make("ew", TASKS))(batch(1))
    bias, plain_bias = net.backbone[1][0].bias, plain.backbone[1][0].bias
    torch.testing.assert_close(bias.grad, plain_bias.grad + bias.detach())  # d/db 0.5 |b|^2 = b


class Broken(HydraNet):
    def regularization(self, features, tasks):
        return features.sum(0)  # a vector, not a scalar


def test_a_non_scalar_regularizer_is_an_error(one_thread):
    torch.manual_seed(0)
    net = Broken(MLP(5, hidden=(8,)), TASKS)
    with pytest.raises(TypeError, match="must return a scalar tensor"):
        Step(net, net.tasks, hn.balancing.make("ew", TASKS))(batch(1))


def _dselect_data(seed, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    targets = {"reg": x[:, :1] * 2, "cls": (x[:, 1] > 0).long() + (x[:, 2] > 0).long()}
    return Batch(x, targets, {t: torch.ones(n, dtype=torch.bool) for t in targets})


def _selector_entropy(model, b):
    """Mean entropy of the selectors r(z) over the examples, selectors and tasks (0: every selector binary)."""
    with torch.no_grad():
        _, features = model(b.inputs, return_features=True)
        _, inputs = model._top_inputs(features, model.task_names)
        values = [model.gates[t].selectors(inputs[t].flatten(1)) for t in model.task_names]
        return float(torch.stack([-(r * torch.log(r + 1e-6)).sum(-1).mean() for r in values]).mean())


def _train_dselect(entropy_reg):
    torch.manual_seed(0)
    model = DSelectK(TASKS, MLP(6, hidden=(16,)), num_experts=4, k=2, expert_hidden=(8,), entropy_reg=entropy_reg)
    step = Step(model, model.tasks, hn.balancing.make("ew", TASKS), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    for i in range(20):
        out = step(_dselect_data(i + 1))
        step.optimizer_step()
    return _selector_entropy(model, _dselect_data(0)), out


def test_dselect_entropy_regularization_makes_the_gates_sparser(one_thread):
    """The paper's claim (Hazimeh et al. 2021, Sec. 4): the entropy term drives the selectors to binary,
    i.e. k-sparse gates. Entropy of uniform selectors over 4 experts: log 4 = 1.386."""
    dense, out_dense = _train_dselect(0.0)
    sparse, out_sparse = _train_dselect(0.01)
    assert out_dense.info["regularization"] == 0.0 and out_sparse.info["regularization"] >= 0.0
    assert dense > 1.0  # 20 steps of the task losses alone leave the selectors nearly uniform
    assert sparse < 0.01 < dense / 100


def test_trainer_history_reports_the_regularization(one_thread):
    torch.manual_seed(0)
    model = DSelectK(TASKS, MLP(6, hidden=(16,)), num_experts=3, k=2, expert_hidden=(8,), entropy_reg=0.01)
    b = _dselect_data(1, n=16)
    loader = [b, _dselect_data(2, n=16)]
    history = hn.Trainer(model, model.tasks, balancer="upgrad", lr=1e-2, progress=False, checkpoint=None, device="cpu").fit(loader, epochs=1)
    value = history.epochs[-1].extra["regularization"]
    assert value > 0  # 3 experts: the reachability term 1 / sum r is positive
