r"""One multi-task step, usable by the :class:`~hydranet.train.Trainer`, a LightningModule or your own loop.

:class:`Step` does what happens between a batch and the gradients:

1. the forward pass: the backbone once, the heads of the tasks present in the batch only, under
   autocast when AMP is on;
2. the masked task losses :math:`L_t(B)`, each averaged over the samples labelled for task :math:`t`
   (:class:`~hydranet.losses.MultiTaskLoss` by default);
3. a guard: a NaN or infinite loss raises :class:`NonFiniteLossError` before anything is updated;
4. the balancer's backward pass, which writes its combined gradient into ``.grad`` (for ``ew``:
   :math:`\nabla \sum_t L_t`);
5. the model's own regulariser, when the model defines ``regularization`` (DSelect-k's gate entropy):
   :math:`R` is not a task, so it stays out of the balancing (the Jacobian, the Gramian, the weights,
   :math:`\Delta_m`) and its gradient is added to the balanced one: ``.grad`` holds
   :math:`d + \nabla R`, where :math:`d` is what the balancer writes (:meth:`Step.regularization`).

A skipped optimizer step (non-finite gradient, see ``on_nonfinite``, or fp16's GradScaler) leaves the
balancer's state (GradVac's targets, Nash-MTL's weights, MoCo's tracked gradients, DWA's loss history,
random generators, ...) as it was before the step: the state is saved before the first micro-batch of
each optimizer step and restored on a skip.

Under DistributedDataParallel, DDP's reducer waits for a gradient of every parameter: the heads a
rank does not use get a zero-valued loss term (:class:`UnusedParameters`), and ranks agree on which
tasks any of them has (one tiny all-reduce), so that the heads of tasks no rank had get no gradient, as
in one process.

:meth:`Step.optimizer_step` is separate: the loop decides when to step (gradient accumulation), and
the step averages the accumulated gradients, unscales them (fp16), clips and steps::

    step = Step(model, tasks, balancer, optimizer=optimizer)
    for i, batch in enumerate(loader):
        out = step(batch, last_in_group=(i + 1) % k == 0)   # gradients accumulate in .grad
        if (i + 1) % k == 0:
            step.optimizer_step(micro=k)
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from hydranet import runtime
from hydranet._checks import check_choice, check_int
from hydranet.balancing import Balancer
from hydranet.data import Batch
from hydranet.tasks import Task
from hydranet.balancing.aggregators import NonFiniteJacobianError
from hydranet.train.errors import NonFiniteGradientError, NonFiniteLossError

__all__ = [
    "AMP_DTYPES",
    "NONFINITE_POLICIES",
    "NonFiniteLossError",
    "Step",
    "StepOutput",
    "UnusedParameters",
    "all_finite",
    "unwrap",
    "wrap_model",
]

#: Autocast dtypes of the AMP modes.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: What :meth:`Step.optimizer_step` does with a NaN or infinite update: skip it, or stop.
NONFINITE_POLICIES = ("skip", "stop")


def all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every entry of ``tensors`` is finite, with one host synchronisation.

    ``torch._foreach_norm(..., ord=inf)`` is the largest magnitude of each tensor in one fused kernel per
    device and dtype (no overflow, unlike the 2-norm; NaN propagates); the maxima are stacked and tested
    together.
    """
    tensors = [t for t in tensors if t.is_floating_point() or t.is_complex()]
    if not tensors:
        return True
    maxima = torch._foreach_norm([t.detach() for t in tensors], ord=math.inf)
    device = maxima[0].device
    return bool(torch.isfinite(torch.stack([m.to(device, torch.float32) for m in maxima])).all())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel inside a process group (unchanged outside one, or when it is
    wrapped already).

    ``find_unused_parameters`` stays off: it costs a traversal of the autograd graph every step, and
    :class:`Step` instead gives the heads that a step does not use a zero gradient, so DDP's reducer
    finds a gradient for every parameter.
    """
    if not runtime.is_distributed() or isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    index = device.index if device.index is not None else runtime.local_rank()
    device_ids = [index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class UnusedParameters:
    """The parameters a step leaves without a gradient, made acceptable to DDP's reducer.

    Without ``find_unused_parameters`` the reducer waits for a gradient of every parameter in every
    synchronised backward pass. A head whose task is not in a rank's batch gets none, the reducer never
    finishes, and the next step fails or hangs. :meth:`zero_term` is a loss term of value 0 that reaches
    exactly those parameters (``0 * sum(p)`` for each), so each gets a zero gradient on this rank and
    the all-reduce averages it with the real gradient of the ranks that had the task. After the step,
    :meth:`release` sets ``.grad`` back to ``None`` for the parameters of the tasks no rank had, so the
    optimizer leaves them alone (momentum and weight decay would move them otherwise), as it does in one
    process.

    Args:
        model: the unwrapped model.
        shared: its shared parameters (always reached).
        owned: ``{task: parameters of that task only}`` for the trained tasks; every other trainable
            parameter of ``model`` (heads of tasks that are not trained) counts as never reached.
    """

    def __init__(self, model: nn.Module, shared: Sequence[Tensor], owned: Mapping[str, Sequence[Tensor]]) -> None:
        self._shared = {id(p) for p in shared}
        self._owned = {task: [p for p in params if p.requires_grad] for task, params in owned.items()}
        self._trainable = [p for p in model.parameters() if p.requires_grad]
        self._cache: dict[frozenset[str], list[Tensor]] = {}

    def _outside(self, tasks: Collection[str]) -> list[Tensor]:
        """The trainable parameters that are neither shared nor owned by one of ``tasks``."""
        key = frozenset(tasks)
        if key not in self._cache:
            inside = self._shared | {id(p) for t in key for p in self._owned.get(t, ())}
            self._cache[key] = [p for p in self._trainable if id(p) not in inside]
        return self._cache[key]

    def zero_term(self, present: Collection[str]) -> Tensor | None:
        """``0 * sum(p)`` over the parameters the tasks ``present`` on this rank do not reach (None: all reached)."""
        params = self._outside(present)
        if not params:
            return None
        return sum(p.sum() for p in params) * 0.0  # type: ignore[return-value]

    def release(self, reached: Collection[str]) -> None:
        """Drop the (zero) gradients of the parameters that no rank's tasks ``reached`` since the last step."""
        for param in self._outside(reached):
            param.grad = None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back (fp16 loss scaling applied
    where the balancer's gradient enters the model, so the loss values it weighs stay unscaled)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


@dataclass
class StepOutput:
    """What one :class:`Step` call did.

    Attributes:
        losses: ``{task: loss}`` (detached scalars) of the tasks in the batch; empty when no trained
            task was in it (then nothing was computed and no gradient written).
        info: the balancer's diagnostics (``losses`` as floats, ``weights``, ``grad_norms``,
            ``cosines``, ...), as :meth:`hydranet.balancing.Balancer.backward` returns them.
        objective: with ``Step(..., backward=False)``: the loss weighting's objective, for the caller's
            own backward pass (None otherwise, and when no trained task was in the batch).
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    objective: Tensor | None = None


def _grads(params: Sequence[Tensor]) -> list[Tensor]:
    """The gradients of ``params`` that exist."""
    return [p.grad for p in params if p.grad is not None]


def _nonfinite_rows(value: Any, mask: Tensor | None = None) -> Tensor | None:
    """The batch rows (dim 0) where the floating tensors of ``value`` (a tensor, a mapping or a sequence
    of them, a list of per-row tensors) hold a NaN or an infinity, among the rows of ``mask``; None when
    every value is finite."""
    bad: Tensor | None = None
    if isinstance(value, Tensor):
        if not value.is_floating_point() or value.dim() == 0:
            return None
        bad = ~torch.isfinite(value.detach().reshape(value.shape[0], -1)).all(1)
    elif isinstance(value, Mapping):
        found = [r for r in (_nonfinite_rows(v) for v in value.values()) if r is not None]
        return torch.unique(torch.cat(found)) if found else None
    elif isinstance(value, (list, tuple)):
        if value and all(v is None or isinstance(v, Tensor) for v in value) and mask is not None and len(value) == len(mask):
            # ragged targets: one tensor (or None) per row
            bad = torch.tensor([v is not None and v.is_floating_point() and not bool(torch.isfinite(v).all()) for v in value])
        else:
            found = [r for r in (_nonfinite_rows(v) for v in value) if r is not None]
            return torch.unique(torch.cat(found)) if found else None
    if bad is None:
        return None
    if mask is not None and mask.shape == bad.shape:
        bad = bad & mask.to(bad.device)
    rows = bad.nonzero().flatten().cpu()
    return rows if rows.numel() else None


def _regularizer(model: Any) -> tuple[Callable[..., Any], bool] | None:
    """The model's ``regularization`` method and whether it takes ``(features, tasks)``; None without one."""
    hook = getattr(model, "regularization", None)
    if not callable(hook):
        return None
    try:
        parameters = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):  # a builtin or C extension: assume the documented (features, tasks)
        return hook, True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return hook, any(p.kind in positional for p in parameters)


def _mean_over_ranks(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor | None]:
    """The gradients averaged over the ranks (one all-reduce, float32), None where no rank had one."""
    flat = torch.cat(
        [(g if g is not None else p.new_zeros(p.shape)).reshape(-1).float() for g, p in zip(grads, params)]
        + [torch.tensor([g is not None for g in grads], dtype=torch.float32, device=params[0].device)]
    )
    dist.all_reduce(flat)
    reached = flat[-len(params) :] > 0
    flat = flat[: -len(params)] / runtime.world_size()
    out: list[Tensor | None] = []
    start = 0
    for p, keep in zip(params, reached.tolist()):
        out.append(flat[start : start + p.numel()].view_as(p).to(p.dtype) if keep else None)
        start += p.numel()
    return out


def _samples(rows: Tensor, batch: Batch) -> str:
    first = int(rows[0])
    text = f"sample {first} of the batch"
    if batch.indices is not None and first < len(batch.indices):
        text += f" (dataset index {int(batch.indices[first])})"
    return text + ("" if len(rows) == 1 else f"; {len(rows)} samples in all")


def _blame(task: str, batch: Batch, outputs: Mapping[str, Any], lr: str) -> tuple[str, str]:
    """Where a non-finite loss of ``task`` comes from, checked in the order the values flow: the
    inputs, the task's targets, the model's outputs; and the fix. Runs only after the loss failed."""
    mask = batch.masks.get(task)
    rows = _nonfinite_rows(batch.inputs)
    if rows is not None:
        return (
            f"the inputs hold non-finite values ({_samples(rows, batch)})",
            "Check the input data for NaN or infinite values (missing features or pixels, a division by zero in "
            "a transform) and clean or impute them; a model cannot learn from them.",
        )
    rows = _nonfinite_rows(batch.targets.get(task), mask)
    if rows is not None:
        return (
            f"the targets of {task!r} hold non-finite values ({_samples(rows, batch)})",
            f"Check the targets of {task!r}: a missing label must have masks[{task!r}] False "
            "(hydranet.data.collate does this for None and NaN labels), other values must be finite.",
        )
    rows = _nonfinite_rows(outputs.get(task))
    if rows is not None:
        return (
            f"the model's outputs for {task!r} are non-finite ({_samples(rows, batch)}) while the inputs and "
            "targets are finite, so the weights diverged",
            f"Lower the learning rate{lr}, clip gradients (grad_clip=1.0), or balance the task losses (balancer='uw').",
        )
    return (
        "the inputs, targets and outputs are finite, so the loss itself overflowed",
        f"Check the targets of {task!r} for extreme or out-of-range values, lower the learning rate{lr}, or "
        "clip gradients (grad_clip=1.0).",
    )


def _where(epoch: int | None, position: int | None) -> str:
    if epoch is None:
        return "this batch" if position is None else f"batch {position}"
    return f"epoch {epoch}" + ("" if position is None else f", batch {position}")


class Step:
    """One multi-task step: forward, masked losses, finiteness guard, balancer backward.

    Args:
        model: a model with the HydraNet contract (``model(x, tasks=..., return_features=...)``,
            ``shared_parameters()``, ``task_parameters(task)``), DDP-wrapped or not.
        tasks: the trained tasks, ``{name: Task}``.
        balancer: the :class:`~hydranet.balancing.Balancer` that turns the losses into gradients.
        loss: ``(outputs, targets, masks) -> {task: loss}``; default
            :class:`~hydranet.losses.MultiTaskLoss` of ``tasks``.
        optimizer: the optimizer :meth:`optimizer_step` steps (not needed to compute gradients only).
        amp: ``None``, ``"bf16"`` or ``"fp16"`` (autocast dtype of the forward pass).
        scaler: the ``torch.amp.GradScaler`` of fp16 training.
        grad_clip: clip the total gradient norm of the model's parameters to this value in
            :meth:`optimizer_step`.
        device: where batches go; default the device of the model's first parameter.
        lr: the learning rate named in the error of a non-finite loss.
        on_nonfinite: what :meth:`optimizer_step` does when the (averaged, unscaled) gradient holds a NaN
            or an infinity although the losses were finite: ``"skip"`` (default) leaves the weights and
            the optimizer state as they were, counts the step in :attr:`skipped_steps` and warns;
            ``"stop"`` raises :class:`~hydranet.train.errors.NonFiniteGradientError` before the update.
            ``"skip"`` is the default because one bad batch (a singular point of a loss, an overflow)
            should not end a long run, as AMP's GradScaler skips such steps; ``max_skips`` in a row
            still stop the run, since then the model itself is broken. With fp16 the GradScaler's own
            skip is kept (it also lowers the loss scale).
        max_skips: skipped optimizer steps in a row that stop training
            (:class:`~hydranet.train.errors.NonFiniteGradientError`).
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, Task],
        balancer: Balancer,
        loss: Callable[..., Mapping[str, Tensor]] | None = None,
        *,
        optimizer: Optimizer | None = None,
        amp: str | None = None,
        scaler: Any = None,
        grad_clip: float | None = None,
        device: torch.device | None = None,
        lr: float | None = None,
        on_nonfinite: str = "skip",
        max_skips: int = 10,
    ) -> None:
        self.on_nonfinite = check_choice("on_nonfinite", on_nonfinite, NONFINITE_POLICIES)
        self.max_skips = check_int("max_skips", max_skips, 1)
        #: optimizer steps skipped for a non-finite update, in all, and in a row up to the last step
        self.skipped_steps, self.skips_in_a_row = 0, 0
        #: whether the last :meth:`optimizer_step` was skipped
        self.last_skipped = False
        self.model = model
        # Any: the HydraNet contract (tasks, shared_parameters(), task_parameters()), not an nn.Module method
        self.core: Any = cast(Any, unwrap(model))
        self.tasks = dict(tasks)
        self.balancer = balancer
        if loss is None:
            from hydranet.losses import MultiTaskLoss

            loss = MultiTaskLoss(list(self.tasks.values()))
        self.loss_fn = loss
        self.optimizer, self.amp, self.scaler, self.grad_clip, self.lr = optimizer, amp, scaler, grad_clip, lr
        self.device: torch.device = device if device is not None else next(self.core.parameters()).device
        self.ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        self.unused = UnusedParameters(
            self.core, self.core.shared_parameters(), {t: self.core.task_parameters(t) for t in self.tasks}
        )
        self._group_tasks: set[str] = set()  # under DDP: tasks some rank had since the last optimizer step
        # the model's own regulariser (see regularization()): resolved once, not per step
        self._regularizer = _regularizer(self.core)
        # the balancer's state before the first micro-batch of this optimizer step, restored on a skip
        self._saved_state: dict[str, Any] | None = None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = AMP_DTYPES.get(self.amp, torch.float32) if self.amp is not None else torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp is not None)

    def forward(self, model: nn.Module, batch: Batch, tasks: list[str], *, features: bool = False) -> Any:
        """``model(batch.inputs, tasks=tasks)`` under the step's autocast."""
        with self._autocast():
            return model(batch.inputs, tasks=tasks, return_features=features)

    def regularization(self, features: Any, tasks: Sequence[str]) -> Tensor | None:
        r"""The model's regulariser :math:`R` of this batch as one float32 scalar; None when the model has none.

        The contract: a model may define ``regularization(features, tasks)`` (``features``: what
        ``model(x, return_features=True)`` returned with the outputs, ``tasks``: the trained tasks in the
        batch) or ``regularization()`` (a term of the parameters only), returning a scalar tensor or
        ``{name: scalar}`` (summed), already scaled as the model defines (DSelect-k: ``entropy_reg``).
        The step adds :math:`\nabla R` to the balanced gradient (never through the task balancing) and
        reports :math:`R` as ``info["regularization"]``.
        """
        if self._regularizer is None:
            return None
        hook, takes_features = self._regularizer
        with self._autocast():
            value = hook(features, list(tasks)) if takes_features else hook()
        if isinstance(value, Mapping):
            terms = [v.reshape(()).float() for v in value.values()]
            value = torch.stack(terms).sum() if terms else torch.zeros((), device=self.device)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise TypeError(
                f"{type(self.core).__name__}.regularization must return a scalar tensor or {{name: scalar tensor}}, "
                f"got {type(value).__name__}{'' if not isinstance(value, Tensor) else f' of shape {tuple(value.shape)}'}."
            )
        return value.reshape(()).float()

    def _regularization_backward(self, term: Tensor) -> None:
        """Add :math:`\nabla R` to ``.grad`` (gradient methods: the balancer writes its own part after this,
        so the graph is kept). Under DDP the balancer reduces its gradients itself and DDP's reducer is
        idle, so :math:`\nabla R` is averaged over the ranks here, as DDP would average it."""
        params = [p for p in self.core.parameters() if p.requires_grad]
        grads: Sequence[Tensor | None] = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        if self.ddp and runtime.world_size() > 1:
            grads = _mean_over_ranks(grads, params)
        for param, grad in zip(params, grads):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad.detach()
            else:
                param.grad.add_(grad)

    def __call__(
        self,
        batch: Batch,
        *,
        last_in_group: bool = True,
        epoch: int | None = None,
        position: int | None = None,
        global_step: int | None = None,
        backward: bool = True,
    ) -> StepOutput:
        """Forward, losses and backward of one (micro-)batch; the gradients are added to ``.grad``.

        Args:
            batch: a :class:`~hydranet.data.Batch`.
            last_in_group: whether this is the last micro-batch before an optimizer step (under DDP the
                gradients are all-reduced then, inside ``no_sync()`` otherwise).
            epoch, position, global_step: where the loop is, named in errors.
            backward: ``False`` (loss weightings only): no backward pass; the output's ``objective`` is
                the scalar to differentiate (:meth:`hydranet.balancing.Balancer.objective`), for a loop
                that runs the backward pass itself (Lightning's automatic optimization).

        Raises:
            NonFiniteLossError: a task loss is NaN or infinite (nothing was written into ``.grad``).
        """
        batch = batch.to(self.device, non_blocking=True)
        tasks = [t for t in batch.tasks if t in self.tasks]
        if not self._agree_on_tasks(tasks, _where(epoch, position)):
            return StepOutput()
        synchronised = self.synchronised(last_in_group)
        with self._sync_context(synchronised):
            want_features = self.balancer.requires_features or (self._regularizer is not None and self._regularizer[1])
            out = self.forward(self.model, batch, tasks, features=want_features)
            outputs, features = out if want_features else (out, None)
            scale: Tensor | None = None
            if self.scaler is not None:
                # The current loss scale as a tensor (no host sync); calling scale() also lets the
                # scaler's unscale_/step accept this iteration.
                scale = self.scaler.scale(torch.ones((), device=self.device))
                outputs = {t: _ScaleGrad.apply(o, scale) for t, o in outputs.items()}
            with torch.autocast(self.device.type, enabled=False):
                outputs = {t: o.float() for t, o in outputs.items()}
                losses = {t: v for t, v in self.loss_fn(outputs, batch.targets, batch.masks).items() if t in self.tasks}
            if not losses:
                return StepOutput()
            self._check_finite(losses, epoch, position, global_step, batch, outputs)
            detached = {t: v.detach() for t, v in losses.items()}
            reg = self.regularization(features, list(losses))
            reg_value = None if reg is None else self._check_regularization(reg, epoch, position, global_step)
            # R's gradient enters the model directly, not through the scaled outputs: scale it here (fp16)
            term = None if reg is None or not reg.requires_grad else (reg if scale is None else reg * scale)
            if synchronised:
                # DDP's reducer waits for a gradient of every parameter: give the heads this rank does not
                # use a zero one (the loss values do not change).
                zero = self.unused.zero_term(losses)
                if zero is not None:
                    first = next(iter(losses))
                    losses = {**losses, first: losses[first] + zero.to(losses[first].dtype)}
            task_params = {t: self.core.task_parameters(t) for t in self.tasks}
            if not backward:
                total, lazy = self.balancer.objective(losses, self.core.shared_parameters())
                info = dict(lazy)
                if reg_value is not None:
                    info["regularization"] = reg_value
                return StepOutput(detached, info, total if term is None else total + term)
            if self._saved_state is None:  # the first micro-batch of this optimizer step
                self._saved_state = self.balancer.state_dict()
            shared = self.core.shared_parameters()
            if term is not None and not self.balancer.uses_jacobian:
                # one backward pass of the weighted objective and R (one DDP all-reduce)
                total, lazy = self.balancer.objective(losses, shared)
                (total + term).backward()
                if all(p.grad is None for p in shared if p.requires_grad):
                    raise ValueError(
                        "No task loss reaches the shared parameters: pass the parameters the losses were computed "
                        "with (model.shared_parameters()) and keep requires_grad=True on them."
                    )
                info = dict(lazy)
            else:
                if term is not None:
                    self._regularization_backward(term)
                given = features if self.balancer.requires_features else None
                try:
                    info = dict(self.balancer.backward(losses, shared, task_params, given))
                except NonFiniteJacobianError:
                    # finite losses, non-finite task gradients: a non-finite gradient like any other; a NaN
                    # in .grad hands it to optimizer_step's check (skip or stop) or fp16's GradScaler
                    info = {}
                    first = next(p for p in shared if p.requires_grad)
                    first.grad = torch.full_like(first, float("nan"))
            if reg_value is not None:
                info["regularization"] = reg_value
            return StepOutput(detached, info)

    def meta_step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        """The meta-step hook of bilevel weightings (``balancer.method.needs_validation``, e.g. ``auto_lambda``):
        hands the weighting a :class:`~hydranet.balancing.MetaContext` whose closures compute the task
        losses of ``train_batch`` and ``val_batch`` at the model's current parameters (unwrapped model: no
        DDP hooks; no autocast), and returns what the weighting's ``meta_step`` returns (its new weights).
        The :class:`~hydranet.train.Trainer` calls it every ``meta_every`` optimizer steps with the next
        batch of its ``val_loader``; a loop of your own calls it the same way, before the step's call."""
        from hydranet.balancing import MetaContext

        hook = getattr(self.balancer.method, "meta_step", None)
        if hook is None:
            raise TypeError(f"{self.balancer.name!r} has no meta-step: only bilevel weightings (e.g. 'auto_lambda') do.")
        train_batch = train_batch.to(self.device, non_blocking=True)
        val_batch = val_batch.to(self.device, non_blocking=True)

        def losses(batch: Batch) -> dict[str, Tensor]:
            tasks = [t for t in batch.tasks if t in self.tasks]
            if not tasks:
                return {}
            outputs = {t: o.float() for t, o in self.core(batch.inputs, tasks=tasks).items()}
            return {t: v for t, v in self.loss_fn(outputs, batch.targets, batch.masks).items() if t in self.tasks}

        params = [p for p in self.core.parameters() if p.requires_grad]
        context = MetaContext(lambda: losses(train_batch), lambda: losses(val_batch), params, self.optimizer)
        return hook(context)

    def synchronised(self, last_in_group: bool) -> bool:
        """Whether DDP all-reduces the gradients of this backward pass: not outside DDP, not when the
        balancer reduces the gradients itself (gradient methods average the task Jacobian over the ranks),
        not on the micro-batches before the last of an accumulation group (their gradients join the
        last one's all-reduce)."""
        return self.ddp and last_in_group and not self.balancer.handles_ddp_sync

    def _sync_context(self, synchronised: bool) -> contextlib.AbstractContextManager[Any]:
        """``model.no_sync()`` for a DDP backward pass that must not all-reduce."""
        if not self.ddp or synchronised:
            return contextlib.nullcontext()
        if not isinstance(self.model, nn.parallel.DistributedDataParallel):
            # ``ddp`` set for a wrapper outside the Step (Lightning's DDP strategy wraps the
            # LightningModule, not the model): the caller enters that wrapper's no_sync()
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _agree_on_tasks(self, tasks: list[str], where: str) -> bool:
        """Under DDP: whether some rank has a task in this batch (all ranks then train on it, or all skip
        it), and which tasks some rank has (:meth:`optimizer_step` needs them). Alone: whether ``tasks``
        is empty."""
        if not self.ddp:
            return bool(tasks)
        counts = runtime.count([bool(tasks)] + [t in tasks for t in self.tasks])
        world = runtime.world_size()
        if 0 < counts[0] < world:
            raise ValueError(
                f"At {where}, {world - counts[0]} of {world} ranks have no labelled sample "
                f"of a trained task ({', '.join(self.tasks)}) while the others have some. Under DDP every rank "
                "must take part in every step: use hydranet.data.TaskBatchSampler (one task per batch gives every "
                "rank the same task; quotas give every rank every task), or make sure each rank's batch holds a "
                "label of some trained task."
            )
        self._group_tasks.update(t for t, n in zip(self.tasks, counts[1:]) if n)
        return counts[0] > 0

    def _check_finite(
        self,
        losses: Mapping[str, Tensor],
        epoch: int | None,
        position: int | None,
        global_step: int | None,
        batch: Batch,
        outputs: Mapping[str, Any],
    ) -> None:
        values = torch.stack([v.detach().reshape(()) for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        task = next(t for t, v in zip(losses, values.tolist()) if not math.isfinite(v))
        step = "" if global_step is None else f" (optimizer step {global_step})"
        lr = "" if self.lr is None else f" (lr={self.lr:g})"
        cause, fix = _blame(task, batch, outputs, lr)
        raise NonFiniteLossError(
            f"The loss of task {task!r} is {values[list(losses).index(task)].item()} at "
            f"{_where(epoch, position)}{step}: {cause}. {fix}"
        )

    def _check_regularization(
        self, reg: Tensor, epoch: int | None, position: int | None, global_step: int | None
    ) -> float:
        """The regulariser's value; :class:`NonFiniteLossError` when it is NaN or infinite."""
        value = float(reg.detach())
        if not math.isfinite(value):
            step = "" if global_step is None else f" (optimizer step {global_step})"
            raise NonFiniteLossError(
                f"The regularization of {type(self.core).__name__} is {value} at {_where(epoch, position)}{step} "
                "while every task loss is finite: check the model's regularization() (a log or division at 0), "
                "or lower its scale."
            )
        return value

    def _restore_state(self) -> None:
        """Put the balancer's state back as it was before this optimizer step (the step was not applied)."""
        if self._saved_state is not None:
            self.balancer.load_state_dict(self._saved_state)

    def optimizer_step(
        self, micro: int = 1, *, epoch: int | None = None, global_step: int = 0, position: int | None = None
    ) -> float | None:
        """Average the gradients of ``micro`` accumulated micro-batches, unscale (fp16), clip, check that
        the update is finite, step the optimizer and clear the gradients; return the total gradient norm
        before clipping (None without ``grad_clip``). ``global_step`` (steps taken before this one),
        ``epoch`` and ``position`` (the batch) are named in warnings and errors.

        A NaN or infinite gradient (one fused check over every gradient, or the clipped norm) is never
        applied: the step is skipped (:attr:`last_skipped`, :attr:`skipped_steps`) or raises, as
        ``on_nonfinite`` says. With fp16 the GradScaler decides (it skips such steps and lowers the scale).

        Raises:
            NonFiniteGradientError: with ``on_nonfinite="stop"``, or after ``max_skips`` skips in a row.
        """
        if self.optimizer is None:
            raise ValueError("Step.optimizer_step needs the optimizer: build the Step with optimizer=.")
        self.last_skipped = False
        if self.ddp:  # heads of tasks no rank had: no gradient, as in one process
            self.unused.release(self._group_tasks)
        model_params = [p for p in self.core.parameters() if p.grad is not None]
        own_params = [p for p in self.balancer.parameters() if p.grad is not None]
        if not (model_params or own_params):  # no task in the whole group: nothing to update
            self.zero_grad()
            return None
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            for grad in _grads(own_params):  # their gradient did not pass through the scaled outputs
                grad.mul_(scale)
            self.scaler.unscale_(self.optimizer)
        if micro > 1:
            for params in (model_params, own_params):  # one foreach call per device group
                if params:
                    torch._foreach_div_(_grads(params), float(micro))
        norm = None
        if self.grad_clip is not None and model_params:
            norm = float(torch.nn.utils.clip_grad_norm_(model_params, self.grad_clip))
            finite = math.isfinite(norm) and all_finite(_grads(own_params))
        else:
            finite = self.scaler is not None or all_finite(_grads(model_params) + _grads(own_params))
        if self.scaler is not None:
            before = scale  # read before unscale_ above
            self.scaler.step(self.optimizer)  # skips a non-finite step itself
            self.scaler.update()
            if self.scaler.get_scale() < before:  # the scaler skipped it (and lowered the scale)
                self._restore_state()
        elif not finite:
            self._skip(norm, epoch, global_step, position)
        else:
            self.skips_in_a_row = 0
            self.optimizer.step()
        self.zero_grad()
        return norm

    def _skip(self, norm: float | None, epoch: int | None, global_step: int, position: int | None) -> None:
        """Count a non-finite update that is not applied; raise when the policy or ``max_skips`` says so."""
        what = "the gradient holds NaN or infinite values" if norm is None else f"the gradient norm is {norm}"
        where = f"optimizer step {global_step + 1}" + ("" if epoch is None else f" ({_where(epoch, position)})")
        lr = "" if self.lr is None else f" (lr={self.lr:g})"
        fix = (
            f"Clip gradients (grad_clip=1.0), lower the learning rate{lr}, or look for a loss with a singular "
            "point (a sqrt, log or division at 0)."
        )
        self._restore_state()
        if self.on_nonfinite == "stop":
            self.zero_grad()
            raise NonFiniteGradientError(
                f"At {where} {what} although every task loss is finite; the weights were not updated "
                f"(on_nonfinite='stop'). {fix}"
            )
        self.skipped_steps += 1
        self.skips_in_a_row += 1
        self.last_skipped = True
        if self.skips_in_a_row >= self.max_skips:
            self.zero_grad()
            raise NonFiniteGradientError(
                f"At {where} {what}: {self.skips_in_a_row} optimizer steps in a row had a non-finite gradient "
                f"and were skipped (max_skips={self.max_skips}); the weights were not updated. {fix}"
            )
        warnings.warn(
            f"Skipped optimizer step {global_step + 1}"
            + ("" if epoch is None else f" ({_where(epoch, position)})")
            + f": {what} although every task loss is finite; the weights and the optimizer state are unchanged "
            f"({self.skipped_steps} skipped so far; {self.max_skips} in a row stop training).",
            RuntimeWarning,
            stacklevel=3,
        )

    def release_unused(self) -> None:
        """Under DDP: drop the zero gradients of the heads that no rank's tasks reached since the last
        optimizer step, and forget those tasks. For a loop that steps the optimizer itself (Lightning):
        call it before each optimizer step (:meth:`optimizer_step` does the same)."""
        if self.ddp:
            self.unused.release(self._group_tasks)
        self._group_tasks.clear()
        self._saved_state = None  # the loop steps itself: no skip to undo

    def zero_grad(self) -> None:
        """Clear the gradients of the model and the balancer, the tasks seen since the last step, and the
        balancer state saved for a skip."""
        self._group_tasks.clear()
        self._saved_state = None
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        for p in self.balancer.parameters():
            p.grad = None
