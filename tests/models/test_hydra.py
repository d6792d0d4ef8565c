import datetime
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import hydranet as hn
from hydranet.losses import MultiTaskLoss
from hydranet.models import (
    BACKBONES,
    MLP,
    ConvNet,
    CrossStitch,
    HydraNet,
    MMoE,
    UnknownTaskError,
    build_architecture,
)

TASKS = [
    hn.Task("age", "regression"),
    hn.Task("gender", "binary"),
    hn.Task("race", "multiclass", num_classes=5),
    hn.Task("attrs", "multilabel", num_classes=3),
    hn.Task("pose", "regression", dim=2),
]
SHAPES = {"age": (4, 1), "gender": (4, 1), "race": (4, 5), "attrs": (4, 3), "pose": (4, 2)}


pytestmark = pytest.mark.usefixtures("one_thread")


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls


def record_heads(model):
    ran = []
    for name in model.task_names:
        model.heads[name].register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    return ran


def test_backbone_runs_once_per_forward_and_only_requested_heads_run():
    model = HydraNet(MLP(8, hidden=(16,)), TASKS)
    calls, ran = count_calls(model.backbone), record_heads(model)
    out = model(torch.randn(4, 8))
    assert len(calls) == 1 and sorted(ran) == sorted(SHAPES) and set(out) == set(SHAPES)
    ran.clear()
    out = model(torch.randn(4, 8), tasks=["race"])
    assert len(calls) == 2 and ran == ["race"] and list(out) == ["race"]
    ran.clear()
    out = model(torch.randn(4, 8), tasks="gender")  # one name works too
    assert ran == ["gender"] and list(out) == ["gender"]


def test_output_shapes_follow_task_kinds_and_features_are_returned():
    model = HydraNet(MLP(8, hidden=(16,)), TASKS, head="mlp", hidden=(8,))
    out, features = model(torch.randn(4, 8), return_features=True)
    assert {k: tuple(v.shape) for k, v in out.items()} == SHAPES
    assert features.shape == (4, 16)
    again = model.heads_from_features(features, ["pose", "age"])
    assert list(again) == ["pose", "age"] and torch.equal(again["pose"], out["pose"])


def test_tasks_as_mapping_and_task_names():
    model = HydraNet(MLP(8, hidden=(16,)), {t.name: t for t in TASKS})
    assert model.task_names == [t.name for t in TASKS]
    assert model.tasks["race"].num_classes == 5


def test_a_task_may_be_called_type_or_train():
    tasks = [hn.Task("type", "multiclass", num_classes=4), hn.Task("train", "binary")]
    model = HydraNet(MLP(8, hidden=(16,)), tasks)
    assert model(torch.randn(2, 8))["type"].shape == (2, 4)
    assert "heads.type.weight" in model.state_dict()
    model.train()  # the Module method still works
    assert model.training


def test_feature_size_from_attribute_declaration_or_dry_run():
    assert HydraNet(MLP(8, hidden=(16, 12)), TASKS).feature_dim == 12
    plain = nn.Sequential(nn.Flatten(), nn.Linear(8, 6))
    assert HydraNet(plain, TASKS, feature_dim=6).feature_dim == 6
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = HydraNet(conv, TASKS, input_shape=(1, 12, 12))
    assert model.feature_dim == 4
    assert model.backbone.training and model.backbone[1].num_batches_tracked == 0  # dry run left no trace


def test_feature_size_errors_tell_which_argument_to_pass():
    with pytest.raises(ValueError, match=r"feature_dim=D .* or input_shape="):
        HydraNet(nn.Sequential(nn.Flatten()), TASKS)
    with pytest.raises(ValueError, match=r"returns features of shape \[2, 4, 6, 6\].*pooling and flattening"):
        HydraNet(nn.Conv2d(1, 4, 3), TASKS, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"says the backbone returns 16 features, but a dry run .* returned 7"):
        HydraNet(nn.Sequential(nn.Linear(3, 7)), TASKS, feature_dim=16, input_shape=(3,))
    with pytest.raises(ValueError, match=r"MLP failed on a dry run with input_shape=\(9,\).*without the batch"):
        HydraNet(MLP(8, hidden=(4,)), TASKS, input_shape=(9,))


def test_declared_size_that_is_wrong_fails_at_first_forward_with_shapes():
    model = HydraNet(MLP(8, hidden=(16,)), TASKS, feature_dim=10)
    with pytest.raises(ValueError, match=r"task 'age' expects features \[batch, 10\], but it was given shape \[2, 16"):
        model(torch.randn(2, 8))


def test_explicit_head_mismatch_is_caught_at_construction_or_first_forward():
    # seed 004: a head reading the wrong tensor; here the width says so before training starts
    with pytest.raises(ValueError, match=r"task 'race' expects 1024 input features but it is given 16"):
        HydraNet(MLP(8, hidden=(16,)), TASKS, heads={"race": nn.Linear(1024, 5)})
    odd = nn.Sequential(nn.Unflatten(1, (4, 4)), nn.Flatten(), nn.Linear(15, 5))  # width not readable up front
    with pytest.raises(ValueError, match=r"head of task 'race' fails on the backbone's features of shape \[2, 16\]"):
        HydraNet(MLP(8, hidden=(16,)), TASKS, heads={"race": odd}, input_shape=(8,))
    backbone = nn.Sequential(nn.Linear(8, 16))  # no size known: checked on the first forward
    model = HydraNet(backbone, TASKS[2:3], heads={"race": nn.Linear(12, 5)})
    with pytest.raises(ValueError, match=r"expects features \[batch, 12\], but it was given shape \[3, 16\]"):
        model(torch.randn(3, 8))


def test_explicit_heads_mix_with_built_ones_and_are_validated():
    custom = nn.Sequential(nn.Dropout(0.1), nn.Linear(16, 5))
    model = HydraNet(MLP(8, hidden=(16,)), TASKS, heads={"race": custom})
    assert model.heads["race"] is custom and model(torch.randn(2, 8))["race"].shape == (2, 5)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['colour'\]"):
        HydraNet(MLP(8, hidden=(4,)), TASKS, heads={"colour": nn.Linear(4, 1)})
    shared = nn.Linear(16, 1)
    with pytest.raises(ValueError, match="own head module"):
        HydraNet(MLP(8, hidden=(16,)), TASKS[:2], heads={"age": shared, "gender": shared})
    backbone = MLP(8, hidden=(16,))
    with pytest.raises(ValueError, match="also used by another task or by the shared part"):
        HydraNet(nn.Sequential(backbone, nn.Linear(16, 16)), TASKS[:1], heads={"age": nn.Sequential(backbone[1][0])})


def test_unknown_task_name_lists_the_known_tasks():
    model = HydraNet(MLP(8, hidden=(4,)), TASKS)
    with pytest.raises(UnknownTaskError, match=r"Unknown task 'rase'.*'age', 'gender', 'race'.*Did you mean 'race'"):
        model(torch.randn(2, 8), tasks=["rase"])
    with pytest.raises(KeyError):  # also a KeyError (and a ValueError) for callers that catch either
        model.task_parameters("colour")


def test_parameters_are_partitioned_into_shared_and_per_task():
    model = HydraNet(MLP(8, hidden=(16,)), TASKS)
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t.name)} for t in TASKS]
    assert shared == {id(p) for p in model.backbone.parameters()}
    assert all(not (s & shared) for s in per_task)
    assert per_task[2] == {id(p) for p in model.heads["race"].parameters()}
    assert sum(len(s) for s in per_task) + len(shared) == len(list(model.parameters()))


def test_gradients_reach_the_backbone_from_every_head():
    torch.manual_seed(0)
    for task in TASKS:
        model = HydraNet(MLP(8, hidden=(16,)), TASKS)
        model(torch.randn(4, 8), tasks=[task.name])[task.name].sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_parameters())
        others = [p for t in TASKS if t is not task for p in model.task_parameters(t.name)]
        assert all(p.grad is None for p in others)


def test_convnet_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = HydraNet(ConvNet(1, widths=(8, 16)), TASKS[1:3])
    x = torch.randn(3, 1, 28, 28)
    reference = model(x)
    last = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(last["race"], reference["race"], atol=1e-5)
    model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x)["race"], reference["race"], atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out["race"].dtype == torch.bfloat16
        losses = MultiTaskLoss(TASKS[1:3])(out, {"gender": torch.tensor([0, 1, 1]), "race": torch.tensor([0, 4, 2])})
    assert all(v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = HydraNet(ConvNet(1, widths=(4, 8)), TASKS, head="mlp", hidden=(6,))
    model(torch.randn(4, 1, 12, 12))  # moves the BatchNorm statistics
    copy = HydraNet(ConvNet(1, widths=(4, 8)), TASKS, head="mlp", hidden=(6,))
    copy.load_state_dict(model.state_dict())
    model.eval(), copy.eval()
    x = torch.randn(2, 1, 12, 12)
    assert all(torch.equal(model(x)[k], copy(x)[k]) for k in model.tasks)


def test_torch_compile_forward_and_backward():
    torch._dynamo.reset()
    model = HydraNet(MLP(4, hidden=(8,)), TASKS[:3])
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 4)
    out = compiled(x, tasks=["age", "race"])
    assert torch.allclose(out["race"], model(x, tasks=["race"])["race"])
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in model.shared_parameters())
    assert model.heads["gender"].weight.grad is None


def test_ddp_with_batches_that_hold_some_of_the_tasks(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, timeout=datetime.timedelta(seconds=30)
    )
    try:
        torch.manual_seed(0)
        model = HydraNet(MLP(8, hidden=(16,)), TASKS[:3])
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        for tasks in (["age"], ["gender", "race"], None):
            out = ddp(torch.randn(4, 8), tasks=tasks)
            sum(v.sum() for v in out.values()).backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_trains_a_two_task_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    tasks = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]
    targets = {"reg": x[:, :2].sum(1), "cls": (x[:, 2] > 0).long() + (x[:, 3] > 0).long()}
    model = HydraNet(MLP(6, hidden=(32,)), tasks)
    loss_fn = MultiTaskLoss(tasks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(150):
        losses = loss_fn(model(x), targets)
        total = sum(losses.values())
        history.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert history[-1] < 0.25 * history[0]


def test_build_architecture_from_config_values():
    tasks = TASKS[:3]
    model = build_architecture("hydra", backbone={"name": "convnet", "widths": [4, 8]}, tasks=tasks,
                               input_shape=(3, 16, 16), head="mlp", hidden=[6], dropout=0.1)
    assert isinstance(model, HydraNet) and model.backbone.in_channels == 3 and model.feature_dim == 8
    mmoe = build_architecture("mmoe", backbone="mlp", tasks=tasks, input_shape=(5,), num_experts=3, expert_hidden=[7])
    assert isinstance(mmoe, MMoE) and mmoe.n_shared == 3 and mmoe.expert_dim == 7
    assert mmoe(torch.randn(2, 5))["race"].shape == (2, 5)
    stitched = build_architecture("cross_stitch", backbone={"name": "mlp", "hidden": [8]}, tasks=tasks,
                                  input_shape=(5,))
    assert isinstance(stitched, CrossStitch)
    columns = [list(c.parameters())[0] for c in stitched.columns]
    assert not torch.equal(columns[0], columns[1])  # a fresh network per column
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['experts'\] for architecture 'mmoe'.*num_experts"):
        build_architecture("mmoe", backbone="mlp", tasks=tasks, input_shape=(5,), experts=3)
    with pytest.raises(ValueError, match="Did you mean 'mmoe'"):
        build_architecture("moe", backbone="mlp", tasks=tasks, input_shape=(5,))
    with pytest.raises(ValueError, match="Unknown backbone 'resnet'"):
        build_architecture("hydra", backbone="resnet", tasks=tasks, input_shape=(5,))


def test_the_snippets_of_the_models_doc_run():
    doc = Path(__file__).resolve().parents[2] / "docs" / "models.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    torch.manual_seed(0)
    registry = dict(BACKBONES)  # the page registers a backbone
    try:
        for block in blocks:
            exec(compile(block, str(doc), "exec"), namespace)  # noqa: S102 - our own documentation
    finally:
        BACKBONES.clear()
        BACKBONES.update(registry)
