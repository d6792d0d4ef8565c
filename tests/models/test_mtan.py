"""MTAN: the attention masks against the paper's formula (Liu et al., CVPR 2019), computed by hand."""

import pytest
import torch
from torch import nn

import hydranet as hn
from hydranet.models import MLP, MTAN, ConvNet, LeNet
from hydranet.models.mtan import split_stages

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(x, bn):  # eval-mode BatchNorm: (x - mean) / sqrt(var + eps) * w + b, per channel (dim 1)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def _randomise_norms(model):
    torch.manual_seed(5)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_conv_attention_mask_is_the_sigmoid_of_the_formula():
    torch.manual_seed(0)
    model = MTAN(ConvNet(1, widths=(2, 3)), TASKS, input_shape=(1, 8, 8))
    _randomise_norms(model)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    p1, p2 = model.features(x)
    att, block = model.attention["cls"], model.task_blocks["cls"][0]

    def conv1x1(z, conv):  # sum over input channels: w[o, c] z[b, c, h, w] + bias[o]
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], z) + conv.bias.view(1, -1, 1, 1)

    def mask(z, a):  # h(g(z)): 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN -> sigmoid
        return torch.sigmoid(_bn(conv1x1(torch.relu(_bn(conv1x1(z, a[0]), a[1])), a[3]), a[4]))

    a1 = mask(p1, att[0])
    conv = block.layers[0]  # f_2: 3x3 conv -> BN -> ReLU, then max pooling to p2's 2x2
    f = torch.relu(_bn(nn.functional.conv2d(a1 * p1, conv.weight, conv.bias, padding=1), block.layers[1]))
    f = nn.functional.max_pool2d(f, 2)
    a2 = mask(torch.cat([p2, f], dim=1), att[1])
    masks = model.masks((p1, p2), "cls")
    assert torch.allclose(masks[0], a1, atol=1e-6) and torch.allclose(masks[1], a2, atol=1e-6)
    assert ((a2 > 0) & (a2 < 1)).all()
    pooled = (a2 * p2).mean((2, 3))  # ConvNet's tail: global average pooling
    assert torch.allclose(model(x)["cls"], model.heads["cls"](pooled), atol=1e-6)


def test_vector_attention_on_an_mlp():
    torch.manual_seed(0)
    model = MTAN(MLP(4, hidden=(3, 2)), TASKS, input_shape=(4,))
    _randomise_norms(model)
    model.eval()
    x = torch.randn(5, 4)
    p1, p2 = model.features(x)
    att, block = model.attention["reg"], model.task_blocks["reg"][0]

    def mask(z, a):
        return torch.sigmoid(_bn(torch.relu(_bn(z @ a[0].weight.T + a[0].bias, a[1])) @ a[3].weight.T + a[3].bias, a[4]))

    a1 = mask(p1, att[0])
    f = torch.relu(_bn((a1 * p1) @ block.layers[0].weight.T + block.layers[0].bias, block.layers[1]))
    a2 = mask(torch.cat([p2, f], dim=1), att[1])
    assert torch.allclose(model(x)["reg"], model.heads["reg"](a2 * p2), atol=1e-6)


def test_stages_shapes_and_hidden_width():
    stages, tail = split_stages(ConvNet(1, widths=(4, 8, 8)))
    assert len(stages) == 3 and len(tail) == 1  # the global pooling is the tail
    stages, tail = split_stages(MLP(6, hidden=(5, 4)))
    assert len(stages) == 2 and len(tail) == 0 and isinstance(stages[0][0], nn.Flatten)
    model = MTAN(ConvNet(3, widths=(4, 8)), TASKS, input_shape=(3, 16, 16), attention_hidden=2)
    assert model.stage_shapes == [(4, 8, 8), (8, 4, 4)]
    first, second = model.attention["reg"]
    assert (first[0].in_channels, first[0].out_channels, first[3].out_channels) == (4, 2, 4)
    assert second[0].in_channels == 16  # [p_j; f_j(previous)]
    lenet = MTAN(LeNet(1), TASKS, input_shape=(1, 28, 28))  # maps, then vectors
    assert lenet.stage_shapes == [(6, 14, 14), (400,), (120,), (84,)]
    assert lenet(torch.randn(2, 1, 28, 28))["cls"].shape == (2, 3)


def test_task_parameters_are_the_attention_branch_and_head():
    model = MTAN(MLP(4, hidden=(3, 2)), TASKS, input_shape=(4,))
    own = {id(p) for p in model.task_parameters("cls")}
    expected = [*model.attention["cls"].parameters(), *model.task_blocks["cls"].parameters(), *model.heads["cls"].parameters()]
    assert own == {id(p) for p in expected}
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.stages.parameters()}


def test_construction_errors():
    with pytest.raises(ValueError, match=r"needs input_shape=\(...\)"):
        MTAN(MLP(4, hidden=(3,)), TASKS)
    with pytest.raises(TypeError, match="nn.Sequential of stages"):
        MTAN(nn.Linear(4, 3), TASKS, input_shape=(4,))
    with pytest.raises(ValueError, match="no stage with parameters"):
        MTAN(nn.Sequential(nn.Flatten()), TASKS, input_shape=(4,))
    with pytest.raises(ValueError, match=r"heads read vectors \[batch, D\]"):
        MTAN(nn.Sequential(nn.Conv2d(1, 2, 3)), TASKS, input_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="attention_hidden must be a positive integer"):
        MTAN(MLP(4, hidden=(3,)), TASKS, input_shape=(4,), attention_hidden=0)
    with pytest.raises(ValueError, match="failed on a dry run"):
        MTAN(MLP(4, hidden=(3,)), TASKS, input_shape=(5,))
