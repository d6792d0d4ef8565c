r"""Bilevel loss weightings: task weights learned on a validation batch (:class:`AutoLambda`).

Such a weighting is an ordinary loss weighting for the training step (:math:`\sum_i\lambda_iL_i`) plus a
**meta-step** that updates :math:`\lambda` from a validation batch. The training loop drives it through
the hook ``meta_step(context)``: every ``meta_every`` optimizer steps, :class:`~hydranet.train.Step`
(``Step.meta_step(train_batch, val_batch)``) hands the weighting a :class:`MetaContext` (closures that
compute the task losses of the training and the validation batch at the model's current parameters,
the parameters themselves, and the model's optimizer), and the weighting does the rest. The
:class:`~hydranet.train.Trainer` takes the validation batches from its ``val_loader`` (``hydranet train``:
``data.val``), cycling through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from hydranet._checks import did_you_mean
from hydranet.balancing._weighting_base import LossWeighting, TaskList
from hydranet.runtime import world_size

__all__ = ["AutoLambda", "MetaContext"]


class MetaContext(NamedTuple):
    """What a meta-step gets from the training loop (see the module docstring)."""

    #: ``{task: loss}`` of the training batch at the current parameters (a fresh forward pass per call).
    train_losses: Callable[[], Mapping[str, Tensor]]
    #: ``{task: loss}`` of the validation batch at the current parameters.
    val_losses: Callable[[], Mapping[str, Tensor]]
    #: The model parameters a virtual step moves (those with ``requires_grad``).
    parameters: Sequence[Tensor]
    #: The model's optimizer (its learning rate, momentum and weight decay make the virtual step), or None.
    optimizer: torch.optim.Optimizer | None


def _mean_over_ranks(tensors: list[Tensor]) -> None:
    """All-reduce in place to the mean over the ranks (a no-op in one process)."""
    world = world_size()
    if world > 1:
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor /= world


class AutoLambda(LossWeighting):
    r"""Auto-Lambda (``auto_lambda``; Liu, James, Davison & Johns, "Auto-Lambda: Disentangling Dynamic Task
    Relationships", TMLR 2022; the authors' ``auto_lambda.py``, github.com/lorenmt/auto-lambda).

    Training step: :math:`f = \sum_i\lambda_iL_i^{\text{train}}(\theta)`. Meta-step (every ``meta_every``
    optimizer steps), a one-step look-ahead on a validation batch for the primary tasks :math:`P`:

    .. math::  \theta' = \theta - \alpha\big(m + \nabla_\theta f + \mu\theta\big),\qquad
               \nabla_\lambda \sum_{i\in P}L_i^{\text{val}}(\theta') \approx
               -\alpha\,\frac{L^{\text{train}}(\theta^+) - L^{\text{train}}(\theta^-)}{2\epsilon},

    with :math:`\alpha` the model's learning rate, :math:`m` its SGD momentum buffer times the momentum,
    :math:`\mu` its weight decay (as the authors' virtual step), :math:`\theta^\pm = \theta \pm
    \epsilon\nabla_{\theta'}\sum_{i\in P}L_i^{\text{val}}(\theta')`, :math:`\epsilon = 0.01/\lVert\nabla_{\theta'}
    \cdot\rVert` (the DARTS finite difference of the mixed second derivative: :math:`\partial f/\partial\lambda_i
    = L_i`). :math:`\lambda` then takes one Adam step (learning rate ``lr``, the authors' 1e-4 for dense
    prediction, 3e-4 for CIFAR-100; start ``init`` = 0.1). The model's parameters are restored exactly after
    the look-ahead (BatchNorm running statistics see the extra forward passes, as in the authors' code).

    Tasks absent from the training batch get no meta-gradient and their :math:`\lambda` and Adam moments stay
    as they are (Adam per task, with per-task step counts; all present: ``torch.optim.Adam``). Under DDP the
    gradients of the virtual step, of the validation loss and the finite-difference losses are averaged over
    the ranks: with the same batch size on every rank and every task on every rank this is the meta-step of
    one process on the concatenated batches; every rank holds the same :math:`\lambda`. Scale: that of
    :math:`\lambda` (not normalised). State: :math:`\lambda`, the Adam moments and step counts. Cost: one
    backward per step, and per meta-step five forward and three backward passes of the model.

    Args:
        primary: the tasks whose validation loss is minimised (default all: the multi-task setting).
        init: the starting weight of every task.
        lr: Adam's learning rate for :math:`\lambda`.
        meta_every: optimizer steps between meta-steps (1: every step, as the authors).
        betas, adam_eps: Adam's.
    """

    #: The training loop gives this weighting validation batches (see the module docstring).
    needs_validation = True

    def __init__(
        self,
        tasks: TaskList,
        primary: Sequence[str] | None = None,
        init: float = 0.1,
        lr: float = 1e-4,
        meta_every: int = 1,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
    ) -> None:
        super().__init__(tasks)
        chosen = list(self.task_names if primary is None else primary)
        for name in chosen:
            if name not in self._index:
                raise ValueError(f"auto_lambda primary: unknown task {name!r}.{did_you_mean(name, self.task_names)}")
        if not chosen:
            raise ValueError("auto_lambda primary must name at least one task (default: all of them).")
        for label, value in (("init", init), ("lr", lr), ("adam_eps", adam_eps)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"auto_lambda {label} must be a finite number >= 0, got {value!r}.")
        if isinstance(meta_every, bool) or not isinstance(meta_every, int) or meta_every < 1:
            raise ValueError(f"auto_lambda meta_every must be an integer >= 1 (optimizer steps), got {meta_every!r}.")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"auto_lambda betas must be two numbers in [0, 1), got {betas!r}.")
        self.primary = chosen
        self.init, self.lr, self.meta_every = float(init), float(lr), int(meta_every)
        self.betas, self.adam_eps = (float(betas[0]), float(betas[1])), float(adam_eps)
        self.reset()

    def reset(self) -> None:
        """Start over: every weight at ``init``, no Adam moments."""
        self.meta_weights = torch.full((self.n_tasks,), self.init, dtype=torch.float64)
        self._m = torch.zeros(self.n_tasks, dtype=torch.float64)
        self._v = torch.zeros(self.n_tasks, dtype=torch.float64)
        self._steps = torch.zeros(self.n_tasks, dtype=torch.float64)

    # -- the training step ---------------------------------------------------------------------
    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        return (self.meta_weights[present] * v).sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        weights = self.meta_weights[index].clone()
        return (weights.to(losses) * losses).sum(), lambda: weights

    # -- the meta-step -------------------------------------------------------------------------
    def meta_step(self, context: MetaContext) -> dict[str, float]:
        """One look-ahead update of :math:`\\lambda` (the class docstring); returns the new weights."""
        params = [p for p in context.parameters if p.requires_grad]
        if not params:
            raise ValueError("auto_lambda's meta-step needs the model's trainable parameters; none were given.")
        alpha, momentum, decay, buffers = self._virtual_step_settings(context.optimizer, params)
        saved = [p.detach().clone() for p in params]
        train = dict(context.train_losses())
        names = [n for n in self.task_names if n in train]
        if not names:
            return self.weights_by_task()
        index = self.indices(names)
        objective = torch.stack([self.meta_weights[i].item() * train[n] for i, n in zip(index.tolist(), names)]).sum()
        grads = self._grads(objective, params)
        try:
            with torch.no_grad():
                for p, g, b in zip(params, grads, buffers):
                    step = g + decay * p
                    if b is not None:
                        step = step + momentum * b
                    p.sub_(alpha * step)
            val = dict(context.val_losses())
            primary = [val[n] for n in self.primary if n in val]
            if not primary:
                raise ValueError(
                    f"auto_lambda's validation batch has none of the primary tasks {self.primary}: give the "
                    "validation loader batches with their labels (e.g. quotas), or change primary."
                )
            direction = self._grads(torch.stack(primary).sum(), params)
            norm = float(torch.sqrt(torch.stack([(d.double() ** 2).sum() for d in direction]).sum()))
            if not norm > 0:
                return self.weights_by_task()
            eps = 0.01 / norm
            ends = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, s, d in zip(params, saved, direction):
                        p.copy_(s + sign * eps * d)
                    losses = context.train_losses()
                    ends.append(torch.stack([losses[n].detach().double().reshape(()) for n in names]))
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        plus, minus = ends
        _mean_over_ranks([plus, minus])
        grad = -alpha * (plus - minus) / (2.0 * eps)
        self._adam(index, grad.cpu())
        return self.weights_by_task()

    def weights_by_task(self) -> dict[str, float]:
        """The current :math:`\\lambda` by task."""
        return dict(zip(self.task_names, self.meta_weights.tolist()))

    @staticmethod
    def _grads(objective: Tensor, params: list[Tensor]) -> list[Tensor]:
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        out = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
        _mean_over_ranks(out)  # DDP: the gradient of the concatenated batch's mean loss
        return out

    @staticmethod
    def _virtual_step_settings(
        optimizer: torch.optim.Optimizer | None, params: list[Tensor]
    ) -> tuple[float, float, float, list[Tensor | None]]:
        """``(alpha, momentum, weight decay, momentum buffers)`` of the first parameter group, as the
        authors read them (momentum only for optimizers that have it, e.g. SGD)."""
        if optimizer is None:
            raise ValueError("auto_lambda's meta-step takes its look-ahead step size from the optimizer: give the Step one.")
        group = optimizer.param_groups[0]
        alpha, decay = float(group["lr"]), float(group.get("weight_decay", 0.0) or 0.0)
        momentum = float(group.get("momentum", 0.0) or 0.0)
        buffers: list[Tensor | None] = []
        for p in params:
            buffer = optimizer.state.get(p, {}).get("momentum_buffer") if momentum else None
            buffers.append(None if buffer is None else buffer.detach())
        return alpha, momentum, decay, buffers

    def _adam(self, index: Tensor, grad: Tensor) -> None:
        b1, b2 = self.betas
        self._steps[index] += 1
        self._m[index] = b1 * self._m[index] + (1 - b1) * grad
        self._v[index] = b2 * self._v[index] + (1 - b2) * grad**2
        m_hat = self._m[index] / (1 - b1 ** self._steps[index])
        denom = torch.sqrt(self._v[index]) / torch.sqrt(1 - b2 ** self._steps[index]) + self.adam_eps
        self.meta_weights[index] -= self.lr * m_hat / denom

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"meta_weights": self.meta_weights.clone(), "m": self._m.clone(), "v": self._v.clone(), "steps": self._steps.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.meta_weights = state["meta_weights"].clone().double()
        self._m, self._v, self._steps = (state[k].clone().double() for k in ("m", "v", "steps"))
