import pytest
import torch
from torch import nn

import hydranet as hn
from hydranet.losses import MultiTaskLoss
from hydranet.models import MLP, ConvNet, HydraNet, build_backbone

TASKS = [
    hn.Task("age", "regression"),
    hn.Task("gender", "binary"),
    hn.Task("race", "multiclass", num_classes=5),
    hn.Task("attrs", "multilabel", num_classes=3),
]


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls, self.out_features = inner, 0, inner.out_features

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_backbone_runs_once_and_only_requested_heads_run():
    backbone = Counting(MLP(8, hidden=(16,)))
    model = HydraNet(backbone, TASKS)
    ran = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    out = model(torch.randn(4, 8))
    assert backbone.calls == 1 and sorted(ran) == sorted(t.name for t in TASKS)
    ran.clear()
    out = model(torch.randn(4, 8), tasks=["race"])
    assert backbone.calls == 2 and ran == ["race"] and list(out) == ["race"]


def test_output_shapes_follow_task_kinds():
    model = HydraNet(MLP(8, hidden=(16,)), TASKS, head="mlp", hidden=(8,))
    out, features = model(torch.randn(4, 8), return_features=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"age": (4, 1), "gender": (4, 1), "race": (4, 5), "attrs": (4, 3)}
    assert features.shape == (4, 16)


def test_feature_size_by_dry_run_and_errors():
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = HydraNet(backbone, TASKS[:1], input_shape=(1, 12, 12))
    assert model.feature_dim == 4
    with pytest.raises(ValueError, match="feature_dim=... or input_shape"):
        HydraNet(nn.Sequential(nn.Flatten()), TASKS[:1])
    with pytest.raises(ValueError, match=r"heads need \[batch, features\]"):
        HydraNet(nn.Conv2d(1, 4, 3), TASKS[:1], input_shape=(1, 8, 8))
    wrong = HydraNet(MLP(8, hidden=(16,)), TASKS[:1], feature_dim=10)
    with pytest.raises(ValueError, match=r"features \[batch, 10\]"):
        wrong(torch.randn(2, 8))
    with pytest.raises(KeyError, match="Unknown task"):
        HydraNet(MLP(8, hidden=(4,)), TASKS)(torch.randn(2, 8), tasks=["colour"])
    with pytest.raises(ValueError, match="unknown task"):
        HydraNet(MLP(8, hidden=(4,)), TASKS, heads={"colour": nn.Linear(4, 1)})


def test_parameters_are_split_into_shared_and_per_task():
    model = HydraNet(MLP(8, hidden=(16,)), TASKS)
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t.name)} for t in TASKS]
    assert shared == {id(p) for p in model.backbone.parameters()}
    assert all(not (s & shared) for s in per_task)
    assert sum(len(s) for s in per_task) + len(shared) == len(list(model.parameters()))


def test_gradients_reach_the_backbone_from_every_head():
    for task in TASKS:
        model = HydraNet(MLP(8, hidden=(16,)), TASKS)
        model(torch.randn(4, 8), tasks=[task.name])[task.name].sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())


def test_convnet_channels_last_and_bf16_autocast():
    model = HydraNet(ConvNet(1, widths=(8, 16)), TASKS[1:3])
    x = torch.randn(3, 1, 28, 28).to(memory_format=torch.channels_last)
    assert model(x)["race"].shape == (3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x)["race"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="expects images"):
        ConvNet()(torch.randn(2, 28, 28))


def test_registry_and_state_dict_round_trip():
    backbone = build_backbone("mlp", in_features=4, hidden=(8,))
    model = HydraNet(backbone, TASKS)
    copy = HydraNet(build_backbone("mlp", in_features=4, hidden=(8,)), TASKS)
    copy.load_state_dict(model.state_dict())
    x = torch.randn(2, 4)
    assert all(torch.equal(model(x)[k], copy(x)[k]) for k in model.tasks)
    with pytest.raises(ValueError, match="Unknown backbone 'resnet'"):
        build_backbone("resnet")


def test_trains_a_two_task_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y_reg = x[:, :2].sum(1)
    y_cls = (x[:, 2] > 0).long() + (x[:, 3] > 0).long()
    tasks = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]
    model = HydraNet(MLP(6, hidden=(32,)), tasks)
    loss_fn = MultiTaskLoss(tasks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks = {"reg": torch.ones(256, dtype=torch.bool), "cls": torch.ones(256, dtype=torch.bool)}
    targets = {"reg": y_reg, "cls": y_cls}
    first = None
    for _ in range(150):
        losses = loss_fn(model(x), targets, masks)
        total = sum(losses.values())
        first = first if first is not None else total.item()
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < 0.3 * first


def test_torch_compile_forward_backward():
    model = HydraNet(MLP(4, hidden=(8,)), TASKS[:2])
    compiled = torch.compile(model, backend="eager")
    out = compiled(torch.randn(3, 4))
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.shared_parameters())
