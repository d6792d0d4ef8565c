"""hydranet.train.Step outside the Trainer: gradients, losses, accumulation, the non-finite guard."""

import math

import pytest
import torch

import hydranet as hn
from hydranet.data import Batch
from hydranet.losses import MultiTaskLoss
from hydranet.models import MLP, HydraNet
from hydranet.train import NonFiniteLossError, Step, StepOutput

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    targets = {"reg": torch.randn(n, 1, generator=g), "cls": torch.randint(0, 3, (n,), generator=g)}
    masks = {"reg": torch.arange(n) % 2 == 0, "cls": torch.ones(n, dtype=torch.bool)}  # half the reg labels
    return Batch(x, targets, masks)


def model(seed=0):
    torch.manual_seed(seed)
    return HydraNet(MLP(5, hidden=(8,)), TASKS)


def test_ew_step_leaves_the_gradient_of_the_summed_masked_losses(one_thread):
    net, reference = model(), model()
    b = batch(1)
    out = Step(net, net.tasks, hn.balancing.make("ew", TASKS))(b)
    # independent: autograd of sum_t L_t, each loss a mean over the task's labelled rows (regression's
    # default loss is L1, multiclass's the cross-entropy)
    outputs = reference(b.inputs, tasks=["reg", "cls"])
    mask = b.masks["reg"]
    expected = torch.nn.functional.l1_loss(outputs["reg"][mask], b.targets["reg"][mask]) + torch.nn.functional.cross_entropy(
        outputs["cls"], b.targets["cls"]
    )
    expected.backward()
    assert isinstance(out, StepOutput) and set(out.losses) == {"reg", "cls"}
    assert float(sum(out.losses.values())) == pytest.approx(float(expected.detach()), rel=1e-6)
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_losses_are_those_of_multitaskloss(one_thread):
    net = model()
    b = batch(2)
    out = Step(net, net.tasks, hn.balancing.make("ew", TASKS))(b)
    with torch.no_grad():
        expected = MultiTaskLoss(TASKS)(net(b.inputs), b.targets, b.masks)
    for task, value in expected.items():
        assert float(out.losses[task]) == pytest.approx(float(value), rel=1e-6)


def test_optimizer_step_averages_accumulated_micro_batches(one_thread):
    """Two micro-batches then one SGD step = one step on the mean of the two gradients."""
    net, reference = model(), model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    step = Step(net, net.tasks, hn.balancing.make("ew", TASKS), optimizer=opt)
    step(batch(3), last_in_group=False)
    step(batch(4))
    step.optimizer_step(micro=2)
    grads = []
    for seed in (3, 4):
        reference.zero_grad()
        Step(reference, reference.tasks, hn.balancing.make("ew", TASKS))(batch(seed))
        grads.append([p.grad.clone() for p in reference.parameters()])
    with torch.no_grad():
        for p, g1, g2 in zip(reference.parameters(), *grads):
            p -= 0.1 * (g1 + g2) / 2
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    assert all(p.grad is None for p in net.parameters())  # cleared for the next group


def test_a_batch_without_trained_tasks_computes_nothing(one_thread):
    net = model()
    b = Batch(torch.randn(4, 5), {}, {})
    out = Step(net, net.tasks, hn.balancing.make("ew", TASKS))(b)
    assert out.losses == {} and out.info == {} and all(p.grad is None for p in net.parameters())


def test_non_finite_loss_names_the_task_and_writes_no_gradient(one_thread):
    net = model()
    b = batch(5)
    with torch.no_grad():  # a diverged head: its outputs, hence its loss, are NaN
        for p in net.task_parameters("reg"):
            p.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match=r"task 'reg' is nan at epoch 2, batch 7 \(optimizer step 3\)"):
        Step(net, net.tasks, hn.balancing.make("ew", TASKS), lr=0.1)(b, epoch=2, position=7, global_step=3)
    assert all(p.grad is None for p in net.parameters())


def test_optimizer_step_needs_an_optimizer():
    net = model()
    with pytest.raises(ValueError, match="optimizer="):
        Step(net, net.tasks, hn.balancing.make("ew", TASKS)).optimizer_step()
