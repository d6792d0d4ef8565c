import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import hydranet as hn
from hydranet.data import MultiTaskDataset
from hydranet.models import MLP, HydraNet, MMoE, init_output_bias

pytestmark = pytest.mark.usefixtures("one_thread")


def dataset():
    x = torch.randn(6, 4)
    age = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 200.0])
    rare = torch.tensor([1, 0, 0, 0, 0, 0])
    kind = torch.tensor([0, 0, 0, 1, 1, 2])
    attrs = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0], [0, 0], [0, 0]])
    tasks = [
        hn.Task("age", "regression"),
        hn.Task("rare", "binary"),
        hn.Task("kind", "multiclass", num_classes=4),
        hn.Task("attrs", "multilabel", num_classes=2),
    ]
    data = TensorDataset(x, age, rare, kind, attrs)
    return MultiTaskDataset.shared(data, tasks=tasks), tasks


def test_biases_are_the_best_constants_by_hand():
    ds, tasks = dataset()
    model = HydraNet(MLP(4, hidden=(8,)), tasks, head="mlp", hidden=(5,))
    written = init_output_bias(model, ds)
    assert written["age"].tolist() == [35.0]  # median of 10..50, 200: L1 ignores the outlier
    assert written["rare"].item() == pytest.approx(math.log(2 / 8 / (6 / 8)))  # (1 + 1) / (6 + 2)
    expected = [math.log((3 + 1) / 10), math.log(3 / 10), math.log(2 / 10), math.log(1 / 10)]
    np.testing.assert_allclose(written["kind"].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(written["attrs"].numpy(), [math.log(4 / 4), math.log(2 / 6)], rtol=1e-6, atol=1e-7)
    assert torch.equal(model.heads["age"][-1].bias.detach(), written["age"])


def test_mse_takes_the_mean_and_balanced_tasks_start_uniform():
    ds, tasks = dataset()
    tasks = [hn.Task("age", "regression", loss="mse"), *tasks[1:]]
    model = MMoE(tasks, MLP(4, hidden=(8,)), num_experts=2)
    written = init_output_bias(model, ds, balanced=["kind", "rare"])
    assert written["age"].item() == pytest.approx(350 / 6)
    assert written["kind"].tolist() == [0.0] * 4 and written["rare"].tolist() == [0.0]


def test_the_initial_regression_loss_drops_to_the_spread_of_the_targets():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    age = 40 + 5 * torch.randn(256)
    ds = MultiTaskDataset.shared(TensorDataset(x, age), tasks=[hn.Task("age", "regression")])
    model = HydraNet(MLP(4, hidden=(8,)), ds.tasks.values())
    before = (model(x)["age"][:, 0] - age).abs().mean().item()
    init_output_bias(model, ds)
    after = (model(x)["age"][:, 0] - age).abs().mean().item()
    assert before > 35 and after < 6


def test_errors_name_the_fix():
    ds, tasks = dataset()
    model = HydraNet(MLP(4, hidden=(8,)), tasks)
    with pytest.raises(ValueError, match=r"balanced= names unknown task\(s\) \['colour'\]"):
        init_output_bias(model, ds, balanced=["colour"])
    with pytest.raises(TypeError, match="needs a hydranet model"):
        init_output_bias(nn.Linear(2, 2), ds)
    custom = HydraNet(MLP(4, hidden=(8,)), tasks, heads={"age": nn.Sequential(nn.Linear(8, 1), nn.Tanh(), nn.Linear(1, 1, bias=False))})
    with pytest.raises(ValueError, match="head of task 'age' does not end in an nn.Linear with a bias"):
        init_output_bias(custom, ds)
