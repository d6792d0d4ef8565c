"""Per-task gradients: loop and vmap agree with each other and with closed-form gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydranet.balancing.jacobian import (
    TaskJacobian,
    gather_task_columns,
    global_task_means,
    jacobian_loop,
    jacobian_vmap,
)


def tiny_problem(seed=0):
    """h = tanh(A x); o_i = h . b_i; L_i = mean((o_i - y_i)^2), with the gradients of A and b by hand."""
    rng = np.random.default_rng(seed)
    x, A, B, y = (rng.standard_normal(shape) for shape in ((5, 3), (4, 3), (2, 4), (5, 2)))
    h = np.tanh(x @ A.T)
    residual = h @ B.T - y  # [n, 2]
    dA, dB = [], []
    for i in range(2):
        dh = 2 * residual[:, i : i + 1] * B[i] / len(x)  # dL_i/dh [n, 4]
        dA.append(((dh * (1 - h**2)).T @ x).ravel())
        dB.append((2 * residual[:, i : i + 1] * h / len(x)).sum(axis=0))
    tensors = [torch.tensor(v, requires_grad=True) for v in (A, B)]
    At, Bt = tensors
    ht = torch.tanh(torch.as_tensor(x) @ At.T)
    losses = ((ht @ Bt.T - torch.as_tensor(y)) ** 2).mean(dim=0)
    expected = np.stack([np.concatenate([dA[i], np.outer(np.eye(2)[i], dB[i]).ravel()]) for i in range(2)])
    return losses, tensors, expected


def test_loop_and_vmap_equal_the_hand_computed_gradients():
    losses, inputs, expected = tiny_problem()
    loop, reached_loop = jacobian_loop(losses, inputs)
    vmap, reached_vmap = jacobian_vmap(losses, inputs)
    np.testing.assert_allclose(loop.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(vmap.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert reached_loop == reached_vmap == [True, True]


@settings(max_examples=15, deadline=None)
@given(tasks=st.integers(1, 4), width=st.integers(1, 5), seed=st.integers(0, 1000))
def test_loop_equals_vmap_on_random_graphs(tasks, width, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, width, generator=generator)
    w1 = torch.randn(width, width, generator=generator, requires_grad=True)
    w2 = torch.randn(tasks, width, generator=generator, requires_grad=True)
    losses = (torch.sin(x @ w1) @ w2.T).pow(2).mean(dim=0)
    loop, _ = jacobian_loop(losses, [w1, w2])
    vmap, _ = jacobian_vmap(losses, [w1, w2])
    torch.testing.assert_close(loop, vmap)


def test_unreached_inputs_give_zero_columns_and_are_reported():
    w = torch.ones(3, requires_grad=True)
    unused = torch.ones(2, requires_grad=True)
    losses = torch.stack([(w * 2).sum(), (w**2).sum()])
    for compute in (jacobian_loop, jacobian_vmap):
        jac, reached = compute(losses, [w, unused])
        assert reached == [True, False]
        np.testing.assert_allclose(jac.numpy(), [[2, 2, 2, 0, 0], [2, 2, 2, 0, 0]])


class NotBatchable(torch.autograd.Function):
    """An operator whose backward reads a Python number: it has no vmap rule."""

    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, grad):
        return grad * 3 + 0 * grad.sum().item()


def test_vmap_failure_falls_back_to_the_loop_with_one_warning():
    engine = TaskJacobian("vmap")
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.warns(RuntimeWarning, match="falling back to one backward pass per task") as record:
        for _ in range(3):
            out = NotBatchable.apply(w)
            jac, _ = engine(torch.stack([out.sum(), out.pow(2).sum()]), [w])
            np.testing.assert_allclose(jac.numpy(), [[3, 3], [18, 36]])
    assert len([r for r in record if issubclass(r.category, RuntimeWarning)]) == 1
    assert engine.last_method == "loop"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second engine of a model that works: no warning
        TaskJacobian("auto")(torch.stack([(w * 2).sum(), w.sum()]), [w])


def test_auto_uses_vmap_for_several_tasks_and_the_loop_for_one():
    w = torch.ones(2, requires_grad=True)
    engine = TaskJacobian("auto")
    engine(torch.stack([w.sum(), (2 * w).sum()]), [w])
    assert engine.last_method == "vmap"
    engine(torch.stack([w.sum()]), [w])
    assert engine.last_method == "loop"
    with pytest.raises(ValueError, match="auto, loop, vmap"):
        TaskJacobian("batched")


def test_single_process_synchronisation_only_scatters_rows():
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    means, counts = global_task_means(rows, torch.tensor([0, 2]), 3)
    np.testing.assert_allclose(means.numpy(), [[1, 2], [0, 0], [3, 4]])
    np.testing.assert_allclose(counts.numpy(), [1, 0, 1])
    matrix, counts, own = gather_task_columns(rows, torch.tensor([1, 2]), 3)
    np.testing.assert_allclose(matrix.numpy(), [[0, 0], [1, 2], [3, 4]])
    assert own == slice(0, 2)
