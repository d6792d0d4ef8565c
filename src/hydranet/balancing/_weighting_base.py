"""The bases of the loss weightings (:class:`Weighting`, :class:`LossWeighting`, :class:`GradientWeighting`)
and the checks of the losses they are given; the methods are in :mod:`hydranet.balancing.weighting`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hydranet._checks import did_you_mean
from hydranet.balancing.jacobian import global_task_means
from hydranet.runtime import world_size
from hydranet.tasks import Task

__all__ = [
    "Combined",
    "GradientWeighting",
    "LossWeighting",
    "TaskList",
    "Weighting",
    "check_losses",
    "fast_stack",
    "task_dict",
]

TaskList = Sequence["str | Task"] | Mapping[str, Task]

_CPU = torch.device("cpu")


def task_dict(tasks: TaskList) -> dict[str, Task | None]:
    """``{name: Task or None}`` from task names, Task objects, or a ``{name: Task}`` mapping."""
    items: list[str | Task]
    if isinstance(tasks, Mapping):
        items = list(tasks.values())
    else:
        items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    if not items:
        raise ValueError("No tasks given: pass the task names or hydranet.Task objects, e.g. ['age', 'gender'].")
    out: dict[str, Task | None] = {}
    for item in items:
        if isinstance(item, Task):
            name, task = item.name, item
        elif isinstance(item, str) and item:
            name, task = item, None
        else:
            raise TypeError(f"Expected task names or hydranet.Task objects, got {type(item).__name__}: {item!r}.")
        if name in out:
            raise ValueError(f"Duplicate task name {name!r}: task names must be unique.")
        out[name] = task
    return out


def check_losses(losses: Mapping[str, Tensor], task_names: Sequence[str]) -> tuple[list[str], Tensor, Tensor]:
    """Validate ``{task: scalar loss}``.

    Returns:
        ``(names, L, values)``: the tasks present, in ``task_names`` order; their losses stacked ``[k]``
        (with the graph); the loss values as a CPU float64 tensor ``[k]``.

    Raises:
        ValueError: unknown task, non-scalar loss, loss without graph, NaN or infinite loss.
    """
    if not isinstance(losses, Mapping):
        raise TypeError(f"losses must be a dict {{task: scalar loss tensor}}, got {type(losses).__name__}.")
    if not losses:
        raise ValueError("No task loss given: pass {task: loss} for the tasks present in the batch.")
    known = set(task_names)
    for name in losses:
        if name not in known:
            raise ValueError(
                f"Loss for unknown task {name!r}.{did_you_mean(name, task_names)} "
                f"This balancer was built for tasks {list(task_names)}."
            )
    names = [n for n in task_names if n in losses]
    for name in names:
        loss = losses[name]
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"The loss of task {name!r} is a {type(loss).__name__}; pass the loss tensor with its graph."
            )
        if loss.numel() != 1:
            raise ValueError(
                f"The loss of task {name!r} has shape {list(loss.shape)}; it must be a scalar: "
                "reduce it over the batch first, e.g. loss.mean()."
            )
        if not loss.is_floating_point():
            raise TypeError(f"The loss of task {name!r} has dtype {loss.dtype}; losses must be floating point.")
        if not loss.requires_grad:
            raise ValueError(
                f"The loss of task {name!r} does not require grad: it was computed under torch.no_grad() or "
                "from detached outputs. Compute it from the model's outputs with autograd enabled."
            )
    dtype = losses[names[0]].dtype
    for name in names[1:]:
        dtype = torch.promote_types(dtype, losses[name].dtype)
    stacked = torch.stack([losses[n].reshape(()).to(dtype) for n in names])
    values = stacked.detach().to(_CPU, torch.float64)
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        name = names[int(bad[0])]
        raise ValueError(
            f"The loss of task {name!r} is {values[int(bad[0])].item()} (not finite). Lower the learning rate, "
            f"clip gradients (torch.nn.utils.clip_grad_norm_), or check the targets of {name!r} for NaN, "
            "infinite or out-of-range values."
        )
    return names, stacked, values


def fast_stack(losses: Mapping[str, Tensor], task_names: Sequence[str]) -> tuple[list[str] | None, Tensor | None]:
    """``(names, L)`` as :func:`check_losses` returns them, after only the checks a valid step needs
    (no host copy of the values); ``(None, None)`` when a check fails: :func:`check_losses` then says why."""
    if not isinstance(losses, Mapping) or not losses:
        return None, None
    names = [n for n in task_names if n in losses]
    if len(names) != len(losses):
        return None, None
    items = [losses[n] for n in names]
    dtype = items[0].dtype if isinstance(items[0], Tensor) else None
    for loss in items:
        if (
            not isinstance(loss, Tensor)
            or loss.dim() != 0
            or loss.dtype != dtype
            or not loss.requires_grad
            or not loss.is_floating_point()
        ):
            return None, None
    stacked = torch.stack(items)
    if not bool(torch.isfinite(stacked.detach()).all()):
        return None, None
    return names, stacked


def _require_positive(method: str, values: Tensor, names: Sequence[str], what: str = "loss") -> None:
    low = (values <= 0).nonzero()
    if len(low):
        task = names[int(low[0])]
        raise ValueError(
            f"{method} takes the logarithm of the losses, but the {what} of task {task!r} is "
            f"{values[int(low[0])].item():.6g}. Use it with positive losses (cross-entropy, MSE, L1), "
            "or choose 'ew' or 'uw'."
        )


class Combined(NamedTuple):
    """What a loss weighting hands to the balancer for one batch."""

    total: Tensor  #: the scalar objective to differentiate
    value: float  #: the objective's value at the (rank-averaged) loss values
    weights: Tensor  #: CPU float64 ``[k]``: d objective / d loss of each present task
    grad_norms: Tensor | None  #: CPU float64 ``[k]`` per-task gradient norms, if the method computed them


class Weighting:
    """Common base: the tasks, and the state/parameter protocol used for checkpoints and optimizers."""

    #: ``True`` for methods that rescale per-task gradients (run through the Jacobian path).
    requires_jacobian: bool = False

    def __init__(self, tasks: TaskList) -> None:
        self.tasks = task_dict(tasks)
        self.task_names = list(self.tasks)
        self.n_tasks = len(self.task_names)
        self._index = {n: i for i, n in enumerate(self.task_names)}

    def indices(self, names: Sequence[str]) -> Tensor:
        return torch.tensor([self._index[n] for n in names], dtype=torch.long)

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters the optimizer must update (``[]`` when the method has none)."""
        return []

    def on_epoch_end(self) -> None:
        """Close an epoch (methods using per-epoch statistics); a no-op otherwise."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - set(self.state_dict())
        if extra:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected keys {sorted(extra)}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tasks={self.task_names})"


class LossWeighting(Weighting):
    """A scalar function of the task losses (see the module docstring for the construction)."""

    def __call__(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor] = ()) -> Tensor:
        """The combined objective of ``{task: loss}`` (tasks absent from the batch are left out)."""
        names, stacked, values = check_losses(losses, self.task_names)
        return self.combine(names, stacked, values, shared_params).total

    def combine(
        self, names: Sequence[str], losses: Tensor, values: Tensor, shared_params: Sequence[Tensor] = ()
    ) -> Combined:
        """Objective and weights for the present tasks ``names``: stacked ``losses [k]`` and their CPU
        ``values`` (as returned by :func:`check_losses`)."""
        index = self.indices(names)
        # Under DDP the values are averaged on the losses' device (NCCL needs it); alone, on the CPU.
        rows = losses.detach() if world_size() > 1 else values
        means, counts = global_task_means(rows, index, self.n_tasks)
        values = means.to(_CPU, torch.float64)
        counts = counts.to(_CPU)
        present = counts.nonzero().squeeze(1)
        self._observe(values, present)
        v = values[present].clone().requires_grad_()
        f = self._scalarize(v, present)
        (w_all,) = torch.autograd.grad(f, v, retain_graph=True)
        position = {int(t): j for j, t in enumerate(present)}
        local = torch.tensor([position[int(t)] for t in index], dtype=torch.long)
        weights = w_all[local]
        # Each rank's loss enters DDP's average over all ranks; the concatenated batch averages a task
        # over the ranks that have it: rescale by world / count (1 without DDP).
        scale = world_size() / counts[index].to(torch.float64)
        w_model = (weights * scale).to(device=losses.device, dtype=losses.dtype)
        rest = (f - (w_all * v.detach()).sum()).to(device=losses.device, dtype=losses.dtype)
        total = (w_model * losses).sum() + rest
        return Combined(total, float(f.detach()), weights.detach(), self._grad_norms(index))

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any] | None:
        """``(objective, weights)`` written directly in the losses ``[k]`` of the tasks at positions
        ``index``, for one process and methods linear in the losses: the same value and gradients as
        :meth:`combine` without its detour through the detached values. ``weights()`` gives the CPU
        float64 weights when read. ``None``: the method has no direct form (use :meth:`combine`)."""
        return None

    def _observe(self, values: Tensor, present: Tensor) -> None:
        """Update statistics with the (rank-averaged) loss values ``values[present]``; default: none."""

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        """``f`` of the loss values ``v`` of the tasks at positions ``present`` (differentiable in ``v``)."""
        raise NotImplementedError

    def _grad_norms(self, index: Tensor) -> Tensor | None:
        return None


class GradientWeighting(Weighting):
    """A weighting that rescales per-task gradients of transformed losses (the Jacobian path)."""

    requires_jacobian = True

    def transform(self, losses: Tensor, values: Tensor, names: Sequence[str]) -> Tensor:
        """The per-task objectives whose gradients form the Jacobian (``values``: CPU loss values)."""
        raise NotImplementedError

    def aggregate(self, jacobian: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """``(update [P], weights [k])`` from the Jacobian rows of the tasks at positions ``present``."""
        raise NotImplementedError
