"""DSelect-k: the smooth-step and the gate against the paper's formulas (Hazimeh et al., NeurIPS 2021)."""

import math

import pytest
import torch

import hydranet as hn
from hydranet.models import MLP, DSelectGate, DSelectK, smooth_step
from hydranet.models.dselect import binary_codes

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smooth_step_values_by_hand():
    # S(t) = 0 for t <= -g/2, 1 for t >= g/2, -2/g^3 t^3 + 3/(2g) t + 1/2 between (paper, eq. 1)
    t = torch.tensor([-3.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 3.0], dtype=torch.float64)
    # gamma = 2: cubic -t^3/4 + 3t/4 + 1/2; at 0.25: -1/256 + 3/16 + 1/2 = 0.68359375; at 0.5: 0.84375
    expected = [0.0, 0.0, 0.15625, 0.31640625, 0.5, 0.68359375, 0.84375, 1.0, 1.0]
    assert smooth_step(t, gamma=2.0).tolist() == pytest.approx(expected, abs=1e-12)
    # gamma = 1: 0 at -1/2, 1 at 1/2, cubic -2t^3 + 1.5t + 0.5; at 0.25: -1/32 + 3/8 + 1/2 = 0.84375
    assert smooth_step(t, gamma=1.0).tolist() == pytest.approx([0, 0, 0, 0.15625, 0.5, 0.84375, 1, 1, 1], abs=1e-12)


def test_smooth_step_is_continuously_differentiable_at_the_joins():
    for gamma in (0.5, 1.0, 3.0):
        for edge in (-gamma / 2, gamma / 2):
            t = torch.tensor([edge - 1e-7, edge + 1e-7], dtype=torch.float64, requires_grad=True)
            s = smooth_step(t, gamma)
            assert abs(s[0].item() - s[1].item()) < 1e-6
            (grad,) = torch.autograd.grad(s.sum(), t)
            assert grad.abs().max() < 1e-5  # the cubic's slope 3/(2g) - 6t^2/g^3 is 0 at t = ±g/2
        t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        (slope,) = torch.autograd.grad(smooth_step(t, gamma).sum(), t)
        assert slope.item() == pytest.approx(3 / (2 * gamma))


def test_binary_codes_most_significant_bit_first():
    assert binary_codes(5).int().tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert binary_codes(2).int().tolist() == [[0], [1]]


def test_static_gate_with_fixed_selectors_reproduces_the_hand_mixture():
    gate = DSelectGate(4, k=2, gamma=1.0)
    with torch.no_grad():
        gate.z.copy_(torch.tensor([[1.0, -1.0], [0.25, 3.0]]))  # selector 1: S = (1, 0) -> code 10 = expert 2
        gate.alpha.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax: (1/4, 3/4)
    # selector 2: S(0.25) = 0.84375, S(3) = 1: codes 01 -> (1 - 0.84375) * 1, 11 -> 0.84375 * 1, others 0
    r2 = [0.0, 1 - 0.84375, 0.0, 0.84375]
    expected = torch.tensor([0.75 * r2[0], 0.75 * r2[1], 0.25 + 0.75 * r2[2], 0.75 * r2[3]])
    assert torch.allclose(gate.selectors(), torch.tensor([[0.0, 0.0, 1.0, 0.0], r2]))
    assert torch.allclose(gate(), expected) and gate().sum().item() == pytest.approx(1.0)


def test_model_output_is_the_gated_mixture_of_the_experts():
    torch.manual_seed(0)
    model = DSelectK(TASKS, feature_dim=4, num_experts=4, k=2, expert_hidden=(5,))
    x = torch.randn(6, 4)
    out = model(x)
    bank = model.levels[0].shared
    experts = torch.stack([torch.relu(x @ bank.weights[0][i] + bank.biases[0][i]) for i in range(4)], 1)
    for task in TASKS:
        gate = model.gates[task.name]
        z = (x @ gate.z_layer.weight.T + gate.z_layer.bias).view(6, 2, 2)
        alpha = torch.softmax(x @ gate.alpha_layer.weight.T + gate.alpha_layer.bias, dim=1)
        s = smooth_step(z)
        # r_i = prod_l S(z_l)^b_il (1 - S(z_l))^(1 - b_il), codes 00, 01, 10, 11
        r = torch.stack([(1 - s[..., 0]) * (1 - s[..., 1]), (1 - s[..., 0]) * s[..., 1],
                         s[..., 0] * (1 - s[..., 1]), s[..., 0] * s[..., 1]], dim=-1)
        q = (alpha.unsqueeze(-1) * r).sum(1)
        mixture = (q.unsqueeze(-1) * experts).sum(1)
        assert torch.allclose(out[task.name], model.heads[task.name](mixture), atol=1e-6)


def test_binary_selectors_give_a_k_sparse_mixture():
    gate = DSelectGate(8, k=3, gamma=1.0)
    with torch.no_grad():
        gate.z.copy_(torch.tensor([[1.0, -1.0, 1.0], [-0.7, -0.9, 0.6], [1.0, -1.0, 1.0]]))  # experts 5, 1, 5
    q = gate()
    assert (q > 0).sum() == 2 and q[[1, 5]].sum().item() == pytest.approx(1.0)


def test_training_drives_the_gate_to_k_sparse():
    """With the entropy term, the selectors become binary: at most k experts keep a non-zero weight."""
    torch.manual_seed(0)
    gate = DSelectGate(8, k=2, gamma=1.0)
    target = torch.tensor([0.0, 0, 0, 0.7, 0, 0, 0.3, 0])
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(300):
        loss = (gate() - target).square().sum() + gate.regularization(entropy_reg=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q, r = gate().detach(), gate.selectors().detach()
    assert ((r == 0) | (r == 1)).all() and (r.sum(1) == 1).all()  # every selector exactly one-hot
    assert (q > 0).sum() <= 2 and q[3] > 0 and q.sum().item() == pytest.approx(1.0)  # k-sparse, on the big target
    assert (q - target).square().sum() < (torch.full((8,), 1 / 8) - target).square().sum()


def test_regularization_by_hand():
    gate = DSelectGate(3, k=1, gamma=1.0)  # 2 bits, code 11 names no expert
    with torch.no_grad():
        gate.z.copy_(torch.tensor([[0.0, 1.0]]))  # S = (1/2, 1): r = (0, 1/2, 0) over experts 00, 01, 10
    r = torch.tensor([0.0, 0.5, 0.0])
    entropy = -(r * torch.log(r + 1e-6)).sum()
    assert gate.regularization(entropy_reg=0.1).item() == pytest.approx(0.1 * entropy.item() + 1 / 0.5, rel=1e-6)
    assert DSelectGate(4, k=1).regularization().item() == 0.0  # power of two, no entropy: nothing to add
    model = DSelectK(TASKS, MLP(4, hidden=(6,)), num_experts=3, k=2, entropy_reg=0.01)
    _, features = model(torch.randn(5, 4), return_features=True)
    reg = model.regularization(features, ["cls"])
    assert list(reg) == ["cls"] and reg["cls"].ndim == 0 and reg["cls"].item() > 5  # 5 examples x 2 selectors x >= 1
    reg["cls"].backward()
    assert model.gates["cls"].z_layer.weight.grad is not None and model.gates["reg"].z_layer.weight.grad is None


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    gate = DSelectGate(4, k=2, gamma=2.0, in_features=5)
    assert gate.z_layer.weight.abs().max() <= 0.02 and gate.z_layer.bias.abs().max() <= 0.02  # U(-g/100, g/100)
    assert gate.alpha_layer.weight.abs().max() <= 0.05
    static = DSelectGate(4, k=2)
    assert static.z.shape == (2, 2) and static.alpha.shape == (2,) and static.z.abs().max() <= 0.01


def test_construction_errors():
    with pytest.raises(ValueError, match="num_experts >= 2"):
        DSelectK(TASKS, feature_dim=4, num_experts=1)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, num_experts=4\]"):
        DSelectK(TASKS, feature_dim=4, num_experts=4, k=5)
    with pytest.raises(ValueError, match="gamma must be a positive"):
        DSelectK(TASKS, feature_dim=4, gamma=0)
    with pytest.raises(ValueError, match="entropy_reg must be a number >= 0"):
        DSelectK(TASKS, feature_dim=4, entropy_reg=-1)
