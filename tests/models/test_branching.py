"""LTB: hard choices reproduce the chosen path; finalize fixes the argmax tree (Guo et al., ICML 2020)."""

import pytest
import torch
import torch.nn.functional as F

import hydranet as hn
from hydranet.models import LTB, MLP

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _set(model, tree, strength=4.0):
    with torch.no_grad():
        for layer, parents in zip(model.choices, tree):
            for choice, parent in zip(layer, parents):
                choice.logits.copy_(F.one_hot(torch.tensor(parent), choice.logits.numel()).float() * strength)


def _path(model, x, task_index, tree):
    """The chosen path by hand: node of each layer from the leaf down, then the blocks bottom-up."""
    nodes = [task_index]
    for parents in reversed(tree):
        nodes.insert(0, parents[nodes[0]])
    h = x
    for layer, node in zip(model.blocks, nodes):
        h = layer[node](h)
    return h


def test_hard_one_hot_choice_reproduces_the_chosen_path():
    torch.manual_seed(0)
    model = LTB(MLP(5, hidden=(6, 6, 4)), TASKS, branches=[3, 2, 2])
    tree = [[2, 0], [1, 1]]  # layer 2 nodes read layer-1 nodes 2 and 0; both leaves read layer-2 node 1
    _set(model, tree)
    model.eval()  # the argmax choice
    x = torch.randn(4, 5)
    out = model(x)
    for i, task in enumerate(TASKS):
        assert torch.allclose(out[task.name], model.heads[task.name](_path(model, x, i, tree)), atol=1e-6)
    assert model.parents() == tree
    # in training, a straight-through sample at a tiny temperature picks the same parents (logit gap 4)
    model.train()
    model.tau = 1e-3
    torch.manual_seed(1)
    assert torch.allclose(model(x)["cls"], out["cls"], atol=1e-5)
    assert torch.allclose(model.decisions(2), F.one_hot(torch.tensor([2, 0]), 3).float(), atol=1e-6)


def test_soft_choice_is_the_weighted_sum_of_parents_and_gradients_reach_the_logits():
    torch.manual_seed(0)
    model = LTB(lambda: MLP(5, hidden=(6, 4)), TASKS, hard=False, tau=1.0)  # fresh nodes: parents differ
    x = torch.randn(3, 5)
    torch.manual_seed(2)
    out = model(x, tasks=["reg"])
    torch.manual_seed(2)  # the same Gumbel noise, by hand: softmax((logits + g) / tau)
    g = -torch.log(torch.empty(2).exponential_())
    d = torch.softmax((model.choices[0][0].logits + g) / 1.0, dim=0)
    h = [block(x) for block in model.blocks[0]]
    assert torch.allclose(out["reg"], model.heads["reg"](model.blocks[1][0](d[0] * h[0] + d[1] * h[1])), atol=1e-6)
    out["reg"].sum().backward()
    assert model.choices[0][0].logits.grad.abs().sum() > 0 and model.choices[0][1].logits.grad is None


def test_finalize_fixes_and_prunes_the_argmax_tree():
    torch.manual_seed(0)
    model = LTB(MLP(5, hidden=(6, 6, 4)), TASKS, branches=[3, 2, 2])
    tree = [[2, 0], [1, 1]]
    _set(model, tree)
    model.eval()
    x = torch.randn(4, 5)
    before = model(x)
    assert model.finalize() == tree and model.tree == tree and model.choices is None
    after = model(x)
    assert all(torch.allclose(before[t], after[t], atol=1e-6) for t in before)
    # the leaves read layer-2 node 1, which reads layer-1 node 0: layer-1 nodes 1, 2 and layer-2 node 0 are removed
    assert not list(model.blocks[0][1].parameters()) and not list(model.blocks[0][2].parameters())
    assert not list(model.blocks[1][0].parameters())
    assert list(model.blocks[0][0].parameters()) and list(model.blocks[1][1].parameters())
    # both tasks share everything below the leaves: task parameters are leaf and head
    for i, task in enumerate(TASKS):
        own = {id(p) for p in model.task_parameters(task.name)}
        assert own == {id(p) for p in [*model.blocks[2][i].parameters(), *model.heads[task.name].parameters()]}
    model.train()
    assert all(torch.allclose(model(x)[t], after[t], atol=1e-6) for t in before)  # no sampling left
    with pytest.raises(ValueError, match="already called"):
        model.finalize()


def test_finalize_gives_own_branches_to_tasks_and_accepts_a_saved_tree():
    torch.manual_seed(0)
    model = LTB(MLP(5, hidden=(6, 6, 4)), TASKS)
    model.finalize([[0, 0], [0, 1]])  # one trunk node, then a branch per task from layer 2 on
    own = {id(p) for p in model.task_parameters("cls")}
    assert {id(p) for p in model.blocks[1][1].parameters()} <= own
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in model.blocks[0][0].parameters()}
    copy = LTB(MLP(5, hidden=(6, 6, 4)), TASKS)
    copy.finalize(model.parents())
    copy.load_state_dict(model.state_dict())
    x = torch.randn(2, 5)
    assert torch.equal(copy(x)["cls"], model(x)["cls"])
    with pytest.raises(ValueError, match="one parent index per node"):
        LTB(MLP(5, hidden=(6, 4)), TASKS).finalize([[0, 5]])


def test_temperature_schedule():
    model = LTB(MLP(5, hidden=(6, 4)), TASKS, tau=2.0, tau_decay=0.5, tau_min=0.3)
    assert [model.temperature(e) for e in range(4)] == [2.0, 1.0, 0.5, 0.3]
    assert model.anneal(1) == 1.0 and model.tau == 1.0


def test_construction_errors():
    with pytest.raises(ValueError, match="the last one the number of tasks"):
        LTB(MLP(5, hidden=(6, 4)), TASKS, branches=[2, 3])
    with pytest.raises(ValueError, match="leaves nothing to share"):
        LTB(MLP(5, hidden=(6,)), TASKS)
    with pytest.raises(TypeError, match="nn.Sequential of stages"):
        LTB(torch.nn.Linear(3, 2), TASKS)
    with pytest.raises(ValueError, match="tau_decay"):
        LTB(MLP(5, hidden=(6, 4)), TASKS, tau_decay=0)
    assert LTB(MLP(5, hidden=(6, 6, 4)), TASKS, branches=1).branches == [1, 1, 2]
