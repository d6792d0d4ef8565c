import pytest
import torch
from torch import nn

import hydranet as hn
from hydranet.models.heads import TaskDict, build_heads, head_in_features, make_head

TASKS = {
    t.name: t
    for t in [
        hn.Task("age", "regression", dim=3),
        hn.Task("gender", "binary"),
        hn.Task("race", "multiclass", num_classes=5),
        hn.Task("attrs", "multilabel", num_classes=4),
    ]
}


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_output_size_is_the_tasks_out_features(kind):
    x = torch.randn(6, 10)
    sizes = {name: make_head(task, 10, kind)(x).shape for name, task in TASKS.items()}
    assert sizes == {"age": (6, 3), "gender": (6, 1), "race": (6, 5), "attrs": (6, 4)}


def test_linear_head_is_an_affine_map():
    head = make_head(TASKS["race"], 10)
    assert isinstance(head, nn.Linear)
    x = torch.randn(3, 10)
    assert torch.allclose(head(x), x @ head.weight.T + head.bias)


def test_mlp_head_layers_and_default_hidden_width():
    head = make_head(TASKS["race"], 10, "mlp")
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head[0].out_features == 10  # one hidden layer as wide as the features
    deep = make_head(TASKS["race"], 10, "mlp", hidden=(8, 6), dropout=0.2, activation_name="gelu")
    assert [type(m).__name__ for m in deep] == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [m.out_features for m in deep if isinstance(m, nn.Linear)] == [8, 6, 5]
    x = torch.randn(2, 10)
    expected = deep[6](deep[4](deep[3](deep[1](deep[0](x)))))  # eval mode: dropout is the identity
    assert torch.allclose(deep.eval()(x), expected)


def test_linear_head_with_dropout_drops_its_input():
    head = make_head(TASKS["gender"], 10, "linear", dropout=0.5)
    assert isinstance(head[0], nn.Dropout) and head[0].p == 0.5 and isinstance(head[1], nn.Linear)


def test_head_errors_say_what_to_do():
    with pytest.raises(ValueError, match="unknown head 'conv'.*linear, mlp"):
        make_head(TASKS["race"], 10, "conv")
    with pytest.raises(ValueError, match="hidden= applies to 'mlp' heads"):
        make_head(TASKS["race"], 10, "linear", hidden=(4,))
    with pytest.raises(ValueError, match="positive integers"):
        make_head(TASKS["race"], 10, "mlp", hidden=(0,))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        make_head(TASKS["race"], 10, "mlp", dropout=1.0)
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        make_head(TASKS["race"], 10, "mlp", activation_name="swish")


def test_per_task_settings_by_dict():
    heads = build_heads(
        TASKS,
        10,
        head={"age": "mlp", "race": {"kind": "mlp", "hidden": (7,), "dropout": 0.1}},
        hidden={"age": (3,)},
        dropout={"gender": 0.3},
    )
    assert heads["age"][0].out_features == 3
    assert heads["race"][0].out_features == 7 and isinstance(heads["race"][2], nn.Dropout)
    assert isinstance(heads["gender"][0], nn.Dropout) and heads["gender"][0].p == 0.3
    assert isinstance(heads["attrs"], nn.Linear)  # unlisted tasks take the default


def test_build_heads_errors():
    with pytest.raises(ValueError, match=r"head= names unknown task\(s\) \['colour'\]"):
        build_heads(TASKS, 10, head={"colour": "mlp"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layers'\]"):
        build_heads(TASKS, 10, head={"age": {"kind": "mlp", "layers": 2}})
    with pytest.raises(ValueError, match="no head is an 'mlp': pass head='mlp'"):
        build_heads(TASKS, 10, hidden=(4,))
    with pytest.raises(ValueError, match="hidden= applies to 'mlp' heads"):
        build_heads(TASKS, 10, hidden={"age": (4,)})
    with pytest.raises(ValueError, match="without the feature size: pass feature_dim=D"):
        build_heads(TASKS, None)
    with pytest.raises(TypeError, match=r"heads\['age'\] must be an nn.Module"):
        build_heads(TASKS, 10, heads={"age": lambda z: z})
    assert set(build_heads(TASKS, None, heads={n: nn.Identity() for n in TASKS})) == set(TASKS)


def test_head_in_features_reads_only_what_the_structure_tells():
    assert head_in_features(nn.Linear(7, 2)) == 7
    assert head_in_features(nn.Sequential(nn.Dropout(), nn.ReLU(), nn.Sequential(nn.Linear(9, 2)))) == 9
    assert head_in_features(nn.Sequential(nn.LayerNorm(9), nn.Linear(9, 2))) is None
    assert head_in_features(nn.LazyLinear(3)) is None
    assert head_in_features(nn.Conv2d(3, 4, 1)) is None


def test_task_dict_accepts_names_that_shadow_module_attributes():
    heads = TaskDict({"type": nn.Linear(2, 1), "float": nn.Linear(2, 1), "age": nn.Linear(2, 1)})
    assert list(heads) == ["type", "float", "age"] and isinstance(heads["type"], nn.Linear)
    assert set(heads.state_dict()) == {f"{n}.{p}" for n in ["type", "float", "age"] for p in ["weight", "bias"]}
    heads.float()  # the Module method is intact
    with pytest.raises(TypeError, match="Expected an nn.Module for task 'x'"):
        heads["x"] = 3
