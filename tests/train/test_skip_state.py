"""A skipped optimizer step (non-finite gradient) leaves every stateful balancer as it was before the step."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hydranet as hn
from hydranet.balancing import AGGREGATORS, WEIGHTINGS
from hydranet.data import Batch
from hydranet.models import MLP, HydraNet
from hydranet.train import Step

# three tasks: Krum needs T >= 3 gradients
TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3), hn.Task("bin", "binary")]


class _NaNGradient(torch.autograd.Function):
    """Identity forward; a NaN gradient on the way back (the losses stay finite: a singular point of the
    backward pass, as a sqrt at 0 would give)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


class PoisonedLinear(nn.Linear):
    """A head whose weight receives a NaN gradient while ``on``; the gradient it passes back to the
    features (hence the task Jacobian of the shared parameters) stays finite, so a gradient method
    aggregates a finite Jacobian, moves its state, and the step is then skipped."""

    on = False

    def forward(self, x):
        weight = _NaNGradient.apply(self.weight) if self.on else self.weight
        return nn.functional.linear(x, weight, self.bias)


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    targets = {
        "reg": torch.randn(n, 1, generator=g),
        "cls": torch.randint(0, 3, (n,), generator=g),
        "bin": torch.randint(0, 2, (n, 1), generator=g).float(),
    }
    return Batch(x, targets, {t: torch.ones(n, dtype=torch.bool) for t in targets})


def setup(name):
    torch.manual_seed(0)
    model = HydraNet(MLP(5, hidden=(8,)), TASKS)
    head = model.heads["cls"]
    poisoned = PoisonedLinear(head.in_features, head.out_features)
    poisoned.load_state_dict(head.state_dict())
    model.heads["cls"] = poisoned
    balancer = hn.balancing.make(name, TASKS)
    optimizer = torch.optim.SGD(list(model.parameters()) + balancer.parameters(), lr=0.1)
    return model, Step(model, model.tasks, balancer, optimizer=optimizer)


def train(step, seed):
    step(batch(seed))
    step.optimizer_step()
    assert not step.last_skipped


def _stateful(name):
    """Whether ``name``'s balancer holds state after a step (decided by running one, not by a list)."""
    _, step = setup(name)
    train(step, 1)
    return bool(step.balancer.state_dict()["state"])


STATEFUL = [name for name in sorted({**WEIGHTINGS, **AGGREGATORS}) if _stateful(name)]


def assert_same(a, b, where="state"):
    """Recursive equality of state dicts: tensors with torch.equal (NaN-aware), arrays, numbers, nesting."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_stateful_methods_are_found():
    # the registry's known stateful methods (their docstrings say what the state is) are among those tested
    assert {"dwa", "famo", "uw", "gradvac", "nash_mtl", "moco", "excess_mtl", "rlw", "pcgrad"} <= set(STATEFUL)


@pytest.mark.parametrize("name", STATEFUL)
def test_a_skipped_step_leaves_the_state_and_the_next_step_as_without_it(one_thread, name):
    model, step = setup(name)
    reference_model, reference = setup(name)
    for s in (step, reference):
        train(s, 1)
    before = step.balancer.state_dict()
    model.heads["cls"].on = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the skip's warning
        step(batch(2))
        step.optimizer_step()
    assert step.last_skipped
    model.heads["cls"].on = False
    assert_same(step.balancer.state_dict(), before)
    # the next good step gives what it gives without the bad one
    for s in (step, reference):
        train(s, 3)
    assert_same(step.balancer.state_dict(), reference.balancer.state_dict())
    for p, q in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(p, q)


def test_a_stopped_step_leaves_the_state_too(one_thread):
    model, step = setup("moco")
    step.on_nonfinite = "stop"
    train(step, 1)
    before = step.balancer.state_dict()
    model.heads["cls"].on = True
    step(batch(2))
    with pytest.raises(hn.train.errors.NonFiniteGradientError):
        step.optimizer_step()
    assert_same(step.balancer.state_dict(), before)


def test_accumulation_restores_the_state_of_the_group_start(one_thread):
    """Two micro-batches, the second one bad: the state goes back to before the first."""
    model, step = setup("gradvac")
    train(step, 1)
    before = step.balancer.state_dict()
    step(batch(2), last_in_group=False)
    model.heads["cls"].on = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        step(batch(3))
        step.optimizer_step(micro=2)
    assert step.last_skipped
    assert_same(step.balancer.state_dict(), before)


@pytest.mark.parametrize("name", ["gradvac", "upgrad", "pcgrad"])
def test_a_non_finite_jacobian_is_a_skipped_step(one_thread, name):
    """A NaN in the task Jacobian itself (finite losses): the aggregator refuses G before its state moves
    (NonFiniteJacobianError), and the Step treats it as any non-finite gradient: the optimizer step is
    skipped with the usual warning, weights and state unchanged; with on_nonfinite="stop" it raises."""
    from hydranet.train.errors import NonFiniteGradientError

    model, step = setup(name)
    train(step, 1)
    before = step.balancer.state_dict()
    weights = [p.detach().clone() for p in model.parameters()]
    handle = model.backbone.register_forward_hook(lambda module, args, out: _NaNGradient.apply(out))
    with pytest.warns(RuntimeWarning, match="Skipped optimizer step 2"):
        step(batch(2))
        step.optimizer_step(global_step=1)
    assert step.last_skipped
    assert_same(step.balancer.state_dict(), before)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    step.on_nonfinite = "stop"
    with pytest.raises(NonFiniteGradientError, match="although every task loss is finite"):
        step(batch(3))
        step.optimizer_step(global_step=1)
    handle.remove()
    train(step, 4)  # training goes on once the gradients are finite again
