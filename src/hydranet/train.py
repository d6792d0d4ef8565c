r"""Trainer: the training loop, evaluation, early stopping, checkpoints with exact resume, AMP.

One optimizer step over a group of :math:`k` micro-batches (``accumulate=k``):

.. math::  g = \frac{1}{k}\sum_{j=1}^{k} \mathrm{balancer}\big(\{L_t(B_j)\}_t\big)

where :math:`L_t(B_j)` is task :math:`t`'s loss averaged over its labelled samples of micro-batch
:math:`B_j` (:class:`~hydranet.losses.MultiTaskLoss`), and ``balancer`` is the gradient the balancer
writes into ``.grad`` (for ``ew``: :math:`\nabla \sum_t L_t`). Each micro-batch goes through the
balancer on its own (memory stays that of one micro-batch); the accumulated gradient is divided by
the number of micro-batches. With equal weighting this is exactly one step on the concatenated batch
whenever every micro-batch holds the same number of labelled samples of each task (full batches of a
quota or one-task-per-batch sampler). Then: gradient clipping (total norm of the model's
parameters), the optimizer step, and per-step schedulers.

**Exact resume.** A checkpoint holds the model, optimizer, scheduler, GradScaler and balancer states,
the random states (Python, NumPy, torch CPU, CUDA), the epoch, the number of batches of that epoch
already *consumed* by the loop (a DataLoader with workers prefetches, so the sampler's own counter runs
ahead), the sampler's state at that position, the running epoch averages, the history and the early
stopping state. Resuming replays the epoch's data-loader start under the random state it had (so the
loader draws the same seeds), continues the sampler at the consumed position (or skips that many
batches for samplers without a state), then restores the random state of the checkpoint: the next
batches, dropout masks and updates are those of an uninterrupted run. Checkpoints are written to a
temporary file in the same folder, flushed, fsynced, then renamed over the previous one, so a crash
during a save never leaves a broken or missing checkpoint.

**Distributed.** Inside a process group (``torchrun``, :func:`hydranet.distributed.process_group`) the
model trains as DistributedDataParallel, every rank on its shard of every step. Loss weightings use
DDP's gradient all-reduce, with a zero-valued term for the heads a rank does not use in a step (DDP's
reducer waits for every parameter's gradient); gradient methods run inside ``no_sync()`` and
all-reduce the task Jacobian themselves. Ranks agree every step on which tasks any of them has (one
tiny all-reduce): the heads of tasks no rank had get no gradient, as in one process. Epoch means,
validation losses and metrics are reduced over the ranks, so every rank monitors and stops on the same
numbers; rank 0 alone logs and writes checkpoints and reports while the others wait, and reads the
checkpoint to resume from for everyone. See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from hydranet import runtime as distributed
from hydranet.balancing import Balancer, make
from hydranet.balancing.weighting import GradNorm, did_you_mean
from hydranet.callbacks import Callback, CallbackList
from hydranet.checkpoint import CHECKPOINT_FORMAT, copy_atomic, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from hydranet.data.collate import Batch
from hydranet.runtime import is_main_process
from hydranet.early_stopping import EarlyStopping
from hydranet.loaders import TaskView, as_batch, epoch_sampler, inputs_of, length_of, move_to, takes_position
from hydranet.metrics import MultiTaskMetrics, delta_m, higher_is_better, main_metric, metric_names
from hydranet.report import CSVLogger, EpochLog, History, Report, TensorBoardLogger, write_report
from hydranet.tasks import Task

__all__ = [
    "Trainer",
    "Callback",
    "EarlyStopping",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "SCHEDULERS",
    "is_main_process",
    "save_checkpoint",
    "load_checkpoint",
    "seed_everything",
]

logger = logging.getLogger("hydranet.train")

CHECKPOINT_MODES = ("last+best", "last", "best", "none")
AMP_MODES = (None, "bf16", "fp16")

#: Optimizers by name: ``(class, default options)``.
OPTIMIZERS: dict[str, tuple[type[Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
    "adamw": (torch.optim.AdamW, {}),
}

#: Schedulers by name, and whether they step after every optimizer step or once per epoch.
SCHEDULERS: dict[str, str] = {
    "cosine": "step",  # cosine annealing to 0 over the whole run
    "onecycle": "step",  # one cycle peaking at lr
    "step": "epoch",  # lr * gamma (0.1) every step_size epochs (default: a third of the run)
    "exponential": "epoch",  # lr * gamma (0.9) every epoch
    "plateau": "epoch",  # lr * factor (0.1) when the monitored value stalls
}


class NonFiniteLossError(FloatingPointError):
    """A task loss (or the gradient norm) became NaN or infinite; training stopped without saving."""


# ----------------------------------------------------------------------------------------- helpers


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


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


class _Means:
    """Running means keyed by strings, with a plain-dict state for checkpoints."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: float) -> None:
        if math.isfinite(value):
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def mean(self, prefix: str) -> dict[str, float]:
        """``{rest: mean}`` of the keys ``prefix/rest``."""
        start = len(prefix) + 1
        return {k[start:]: s / self.counts[k] for k, s in self.sums.items() if k.startswith(prefix + "/")}

    def across_ranks(self) -> _Means:
        """The running means over the values of every rank (this object outside a process group): what
        one process training on the ranks' batches together would have averaged."""
        if not distributed.is_distributed():
            return self
        total = distributed.sum_by_key(
            {**{f"sum {k}": v for k, v in self.sums.items()}, **{f"count {k}": n for k, n in self.counts.items()}}
        )
        out = _Means()
        for key, value in total.items():
            kind, name = key.split(" ", 1)
            if kind == "sum":
                out.sums[name] = value
            else:
                out.counts[name] = int(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


# ----------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains a multi-task model: loop, validation, early stopping, checkpoints, exact resume, AMP.

    Args:
        model: a model with the HydraNet contract: ``model(x, tasks=None, return_features=False)``,
            ``.tasks``, ``shared_parameters()``, ``task_parameters(task)``. Inside a process group of
            several processes (``torchrun``, :mod:`hydranet.distributed`) it is wrapped in
            DistributedDataParallel; a model wrapped already is taken as it is.
        tasks: the tasks to train (Task objects or names); default every task of the model.
        balancer: a method name for :func:`hydranet.balancing.make` (``"ew"``, ``"uw"``, ``"pcgrad"``,
            ...) or a :class:`~hydranet.balancing.Balancer`. Its learnable parameters (``uw``, ...) join
            the optimizer as their own parameter group, without weight decay.
        balancer_options: settings of a balancer given by name (``{"temperature": 2.0}``).
        loss: ``(outputs, targets, masks) -> {task: loss}``; default
            :class:`~hydranet.losses.MultiTaskLoss` of the tasks (each loss averaged over its labelled
            samples).
        metrics: ``{task: [metric names]}`` overriding the tasks' metrics.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, ``{"name": ..., **options}``, an
            :class:`~torch.optim.Optimizer` over the model's parameters, or a factory
            ``param_groups -> Optimizer``.
        lr, weight_decay: learning rate and the model parameters' weight decay (named optimizers and
            schedulers).
        scheduler: ``None``, a name of :data:`SCHEDULERS`, ``{"name": ..., "interval": ..., **options}``
            (options go to the torch scheduler), a torch scheduler, or a factory ``optimizer -> scheduler``.
        scheduler_interval: ``"step"`` or ``"epoch"``; default that of the named scheduler, ``"epoch"``
            for objects and factories. ``ReduceLROnPlateau`` steps on the monitored value each epoch.
        epochs: epochs of :meth:`fit` when it is not given one.
        grad_clip: clip the total gradient norm of the model's parameters to this value.
        accumulate: micro-batches per optimizer step (see the module docstring).
        amp: ``None``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a GradScaler).
        device: ``"auto"`` (CUDA when available, else CPU), or a device; inside a process group
            ``"auto"`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``.
        monitor: ``"val/loss"``, ``"val/delta_m"``, ``"val/<task>/<metric>"``, ``"val/<task>/loss"``,
            ``"train/loss"`` or ``"train/<task>/loss"``; default ``"val/delta_m"`` with baselines, else
            ``"val/loss"`` (``"train/loss"`` when fitting without a validation loader). It picks the best
            checkpoint and drives early stopping and ``"plateau"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric: losses min, Δm max, registry metrics
            by their direction).
        patience: stop after this many epochs without improvement (``None``: never).
        min_delta: the smallest change that counts as an improvement.
        out_dir: folder of the checkpoints ``last.pt`` and ``best.pt``, ``metrics.csv`` and
            ``tensorboard/`` (and by default of :meth:`report`); ``None`` writes nothing.
        checkpoint: ``"last+best"``, ``"last"``, ``"best"`` or ``"none"``.
        checkpoint_every: also save ``last.pt`` every this many optimizer steps within an epoch.
        baselines: single-task scores for Δm: ``{task: score of its main metric}`` or
            ``{task: {metric: score}}``; or ``"train"`` to train the single-task baselines first (see
            :meth:`train_baselines`).
        model_factory: ``model_factory([task]) -> model`` builds a baseline's model; default a copy of
            the model with the weights it had when given to the trainer.
        progress: tqdm progress bars (on rank 0, when the output is a terminal).
        callbacks: :class:`~hydranet.callbacks.Callback` objects.
        seed: seeds Python, NumPy and torch at the start of :meth:`fit`.
        log_every: batches between progress-bar updates and log lines.
        tensorboard: also log to TensorBoard when ``out_dir`` is set.

    Raises:
        ValueError, TypeError: at construction, for any inconsistent setting, naming the fix.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task | str] | Mapping[str, Task] | None = None,
        balancer: str | Balancer = "ew",
        *,
        balancer_options: Mapping[str, Any] | None = None,
        loss: Callable[..., Mapping[str, Tensor]] | None = None,
        metrics: Mapping[str, Sequence[str]] | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | Callable[..., Optimizer] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str | Mapping[str, Any] | Any | None = None,
        scheduler_interval: str | None = None,
        epochs: int = 10,
        grad_clip: float | None = None,
        accumulate: int = 1,
        amp: str | None = None,
        device: str | torch.device = "auto",
        monitor: str | None = None,
        mode: str = "auto",
        patience: int | None = None,
        min_delta: float = 0.0,
        out_dir: str | Path | None = None,
        checkpoint: str | None = "last+best",
        checkpoint_every: int | None = None,
        baselines: str | Mapping[str, Any] | None = None,
        model_factory: Callable[[list[Task]], nn.Module] | None = None,
        progress: bool = True,
        callbacks: Iterable[Callback] = (),
        seed: int = 0,
        log_every: int = 50,
        tensorboard: bool = True,
    ) -> None:
        core = _unwrap(model)
        for attribute in ("tasks", "shared_parameters", "task_parameters"):
            if not hasattr(core, attribute):
                raise TypeError(
                    f"{type(core).__name__} has no {attribute!r}: the trainer needs a model with the HydraNet "
                    "contract (tasks, shared_parameters(), task_parameters(task), forward(x, tasks=...))."
                )
        self.tasks = self._select_tasks(core.tasks, tasks)
        self.device = distributed.device_for(device)
        if not isinstance(model, nn.parallel.DistributedDataParallel):
            model.to(self.device)
        # Inside a process group the model trains as DistributedDataParallel (a no-op alone).
        self.model = distributed.wrap_model(model, self.device)
        self._ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        self._unused = distributed.UnusedParameters(
            core, core.shared_parameters(), {t: core.task_parameters(t) for t in self.tasks}
        )
        self._group_tasks: set[str] = set()  # under DDP: tasks some rank had since the last optimizer step

        _check_number("lr", lr, low=0.0, strict=True)
        _check_number("weight_decay", weight_decay, low=0.0)
        _check_int("epochs", epochs, 1)
        _check_int("accumulate", accumulate, 1)
        _check_int("log_every", log_every, 1)
        _check_int("seed", seed, 0)
        if grad_clip is not None:
            _check_number("grad_clip", grad_clip, low=0.0, strict=True)
        if patience is not None:
            _check_int("patience", patience, 1)
        _check_number("min_delta", min_delta, low=0.0)
        if checkpoint_every is not None:
            _check_int("checkpoint_every", checkpoint_every, 1)
        self.lr, self.weight_decay, self.epochs = float(lr), float(weight_decay), int(epochs)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.accumulate, self.log_every, self.seed = int(accumulate), int(log_every), int(seed)
        self.progress, self.tensorboard = bool(progress), bool(tensorboard)
        self.callbacks = CallbackList(callbacks)

        self.balancer = self._make_balancer(balancer, balancer_options)
        self.loss_fn = loss if loss is not None else self._default_loss()
        self.metric_names = dict(metrics or {})
        self.metrics = MultiTaskMetrics(list(self.tasks.values()), self.metric_names).to(self.device)

        self.amp = self._check_amp(amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None

        self._optimizer_spec = optimizer
        self.optimizer = self._make_optimizer(optimizer)
        self._scheduler_spec = scheduler
        self._scheduler_interval = self._check_scheduler(scheduler, scheduler_interval)
        self.scheduler: Any = None

        self.baselines: dict[str, dict[str, float]] | None = None
        self._train_baselines = baselines == "train"
        if baselines is not None and not self._train_baselines:
            self.baselines = self._check_baselines(baselines)
        if self._train_baselines:
            if isinstance(optimizer, Optimizer) or _is_scheduler(scheduler):
                raise ValueError(
                    "baselines='train' builds a fresh optimizer and scheduler for every baseline: give them by "
                    "name, as a dict or as a factory, not as objects bound to this model's parameters."
                )
            if model_factory is None and isinstance(model, nn.parallel.DistributedDataParallel):
                raise ValueError("baselines='train' with a DDP model needs model_factory= to build each baseline.")
        self.model_factory = model_factory
        self._initial_state = (
            {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
            if self._train_baselines and model_factory is None
            else None
        )
        self.baseline_histories: dict[str, History] = {}
        self.baseline_models: dict[str, nn.Module] = {}

        if monitor is not None:
            self._check_monitor(monitor)
        self._monitor_setting = monitor
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
        self.mode_setting = mode
        self.monitor = self._fit_monitor(has_val=True)
        self.patience, self.min_delta = patience, float(min_delta)

        if checkpoint is None:
            checkpoint = "none"
        if checkpoint not in CHECKPOINT_MODES:
            raise ValueError(
                f"checkpoint={checkpoint!r} is not valid; choose one of {', '.join(CHECKPOINT_MODES)}."
                f"{did_you_mean(checkpoint, CHECKPOINT_MODES)}"
            )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint = checkpoint
        if checkpoint_every is not None and (self.out_dir is None or "last" not in checkpoint):
            raise ValueError(
                "checkpoint_every saves last.pt within epochs: set out_dir= and checkpoint='last' or 'last+best'."
            )
        self.checkpoint_every = checkpoint_every

        self.history = History()
        self.early_stopping = EarlyStopping(self._resolve_mode(self.monitor), patience, self.min_delta)
        self.global_step = 0
        self.epoch = 0
        self.should_stop = False
        self._confusion: dict[str, np.ndarray] = {}
        self._rng_epoch_start: dict[str, Any] | None = None  # random state when the epoch's loader started

    # ------------------------------------------------------------------------------ construction

    @staticmethod
    def _select_tasks(model_tasks: Mapping[str, Task], tasks: Any) -> dict[str, Task]:
        model_tasks = dict(model_tasks)
        if tasks is None:
            return model_tasks
        items = list(tasks.values()) if isinstance(tasks, Mapping) else [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
        if not items:
            raise ValueError("tasks= is empty: pass the tasks to train, or None for all of the model's tasks.")
        chosen: dict[str, Task] = {}
        for item in items:
            name = item.name if isinstance(item, Task) else item
            if not isinstance(name, str) or name not in model_tasks:
                raise ValueError(
                    f"Task {name!r} is not one of the model's tasks {list(model_tasks)}.{did_you_mean(str(name), model_tasks)}"
                )
            if isinstance(item, Task) and (item.kind, item.out_features) != (
                model_tasks[name].kind,
                model_tasks[name].out_features,
            ):
                raise ValueError(
                    f"Task {name!r} is {item.kind} with {item.out_features} output(s) here but "
                    f"{model_tasks[name].kind} with {model_tasks[name].out_features} in the model: build both from "
                    "the same Task objects."
                )
            chosen[name] = item if isinstance(item, Task) else model_tasks[name]
        return chosen

    def _make_balancer(self, balancer: str | Balancer, options: Mapping[str, Any] | None) -> Balancer:
        if isinstance(balancer, Balancer):
            if options:
                raise ValueError("balancer_options apply to a balancer given by name; configure the instance instead.")
            if set(balancer.task_names) != set(self.tasks):
                raise ValueError(
                    f"The balancer was built for tasks {balancer.task_names}, the trainer trains {list(self.tasks)}: "
                    "build it with hydranet.balancing.make(name, tasks) for the same tasks."
                )
            return balancer
        if not isinstance(balancer, str):
            raise TypeError(f"balancer must be a method name or a hydranet.balancing.Balancer, got {type(balancer).__name__}.")
        return make(balancer, list(self.tasks.values()), **dict(options or {}))

    def _default_loss(self) -> Callable[..., Mapping[str, Tensor]]:
        from hydranet.losses import MultiTaskLoss

        return MultiTaskLoss(list(self.tasks.values()))

    def _check_amp(self, amp: str | None) -> str | None:
        if amp not in AMP_MODES:
            raise ValueError(f"amp={amp!r} is not valid; choose None, 'bf16' or 'fp16'.")
        if amp == "fp16":
            if self.device.type != "cuda":
                raise ValueError(
                    f"amp='fp16' needs a CUDA device (its GradScaler runs on CUDA); the device is {self.device}. "
                    "Use amp='bf16', which runs on CPU and CUDA without loss scaling."
                )
            if self.balancer.uses_jacobian or isinstance(self.balancer.method, GradNorm):
                raise ValueError(
                    f"amp='fp16' multiplies the gradients by a changing loss scale, which {self.balancer.name!r} is "
                    "not invariant to (it reads per-task gradients). Use amp='bf16', which needs no loss scaling."
                )
        return amp

    def _param_groups(self) -> list[dict[str, Any]]:
        core = _unwrap(self.model)
        groups = [{"params": [p for p in core.parameters() if p.requires_grad], "weight_decay": self.weight_decay}]
        extra = self.balancer.parameters()
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        return groups

    def _make_optimizer(self, spec: Any) -> Optimizer:
        if isinstance(spec, Optimizer):
            known = {id(p) for group in spec.param_groups for p in group["params"]}
            extra = [p for p in self.balancer.parameters() if id(p) not in known]
            if extra:
                spec.add_param_group({"params": extra, "weight_decay": 0.0})
            return spec
        if callable(spec) and not isinstance(spec, (str, Mapping)):
            optimizer = spec(self._param_groups())
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"The optimizer factory returned {type(optimizer).__name__}, not a torch Optimizer.")
            return optimizer
        name, options = _named(spec, "optimizer")
        if name not in OPTIMIZERS:
            raise ValueError(
                f"Unknown optimizer {name!r}.{did_you_mean(name, OPTIMIZERS)} Choose one of {', '.join(OPTIMIZERS)}, "
                "or pass a torch Optimizer or a factory."
            )
        cls, defaults = OPTIMIZERS[name]
        try:
            return cls(self._param_groups(), lr=self.lr, **{**defaults, **options})
        except TypeError as err:
            raise ValueError(f"Optimizer {name!r}: {err}.") from None

    @staticmethod
    def _check_scheduler(spec: Any, interval: str | None) -> str | None:
        if interval not in (None, "step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step', 'epoch' or None, got {interval!r}.")
        if spec is None:
            return None
        if isinstance(spec, (str, Mapping)):
            name, options = _named(spec, "scheduler")
            if name not in SCHEDULERS:
                raise ValueError(
                    f"Unknown scheduler {name!r}.{did_you_mean(name, SCHEDULERS)} Choose one of "
                    f"{', '.join(SCHEDULERS)}, or pass a torch scheduler or a factory."
                )
            interval = interval or options.get("interval")
            fixed = {"onecycle": "step", "plateau": "epoch"}  # per batch by design / on per-epoch values
            if interval not in (None, "step", "epoch") or (name in fixed and interval not in (None, fixed[name])):
                raise ValueError(
                    f"Scheduler {name!r}: interval {interval!r} is not valid; use 'step' or 'epoch' "
                    "('onecycle' steps every batch, 'plateau' every epoch)."
                )
            return interval or SCHEDULERS[name]
        if isinstance(spec, ReduceLROnPlateau):
            return "epoch"
        if not (_is_scheduler(spec) or callable(spec)):
            raise TypeError(f"scheduler must be a name, a dict, a torch scheduler or a factory, got {type(spec).__name__}.")
        return interval or "epoch"

    def _check_baselines(self, baselines: Any) -> dict[str, dict[str, float]]:
        if not isinstance(baselines, Mapping) or not baselines:
            raise ValueError(
                f"baselines must be 'train' or a non-empty mapping {{task: score}}, got {baselines!r}."
            )
        out: dict[str, dict[str, float]] = {}
        for task, value in baselines.items():
            if task not in self.tasks:
                raise ValueError(f"baselines name task {task!r}, which is not trained; tasks: {list(self.tasks)}.")
            names = metric_names(self.tasks[task], self.metric_names.get(task))
            if isinstance(value, Mapping):
                scores = dict(value)
            else:
                scores = {main_metric(self.tasks[task], self.metric_names.get(task))[0]: value}
            for metric, score in scores.items():
                if metric not in names:
                    raise ValueError(f"baselines[{task!r}] names metric {metric!r}; the task's metrics are {list(names)}.")
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) or score == 0:
                    raise ValueError(
                        f"The baseline of {task}/{metric} must be a finite, non-zero number (Δm divides by it), got {score!r}."
                    )
            out[task] = {m: float(s) for m, s in scores.items()}
        return out

    def _check_monitor(self, monitor: str) -> None:
        if monitor in ("val/loss", "train/loss", "val/delta_m"):
            return
        parts = monitor.split("/") if isinstance(monitor, str) else []
        if len(parts) == 3 and parts[0] in ("train", "val") and parts[1] in self.tasks:
            split, task, metric = parts
            if metric == "loss":
                return
            names = metric_names(self.tasks[task], self.metric_names.get(task))
            if split == "val" and metric in names:
                return
            raise ValueError(
                f"monitor={monitor!r}: task {task!r} has no {split} metric {metric!r}; "
                f"use 'val/{task}/<metric>' with one of {['loss', *names]}, or 'train/{task}/loss'."
            )
        raise ValueError(
            f"monitor={monitor!r} is not valid; use 'val/loss', 'val/delta_m', 'train/loss', 'val/<task>/<metric>' "
            f"or '<split>/<task>/loss' with a task among {list(self.tasks)}."
        )

    def _resolve_mode(self, monitor: str) -> str:
        if self.mode_setting != "auto":
            return self.mode_setting
        metric = monitor.rsplit("/", 1)[-1]
        if metric == "loss":
            return "min"
        if metric == "delta_m":
            return "max"
        return "max" if higher_is_better(metric) else "min"

    # ------------------------------------------------------------------------------- scheduler

    def _make_scheduler(self, steps_per_epoch: int | None, epochs: int) -> Any:
        spec = self._scheduler_spec
        if spec is None:
            return None
        if _is_scheduler(spec):
            return spec
        if callable(spec) and not isinstance(spec, (str, Mapping)):
            scheduler = spec(self.optimizer)
            if not _is_scheduler(scheduler):
                raise TypeError(f"The scheduler factory returned {type(scheduler).__name__}, not a torch scheduler.")
            return scheduler
        name, options = _named(spec, "scheduler")
        options.pop("interval", None)
        lr_scheduler = torch.optim.lr_scheduler
        total = None
        if self._scheduler_interval == "step":
            if steps_per_epoch is None:
                raise ValueError(
                    f"scheduler {name!r} steps every batch and needs the number of steps: use a loader with a length."
                )
            total = steps_per_epoch * epochs
        try:
            if name == "cosine":
                return lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total if total else epochs, **options)
            if name == "onecycle":
                lrs = [group["lr"] for group in self.optimizer.param_groups]
                return lr_scheduler.OneCycleLR(self.optimizer, max_lr=lrs, total_steps=total, **options)
            if name == "step":
                options.setdefault("step_size", max(1, (total or epochs) // 3))
                return lr_scheduler.StepLR(self.optimizer, **options)
            if name == "exponential":
                options.setdefault("gamma", 0.9)
                return lr_scheduler.ExponentialLR(self.optimizer, **options)
            options.setdefault("mode", self.early_stopping.mode)
            return lr_scheduler.ReduceLROnPlateau(self.optimizer, **options)
        except TypeError as err:
            raise ValueError(f"Scheduler {name!r}: {err}.") from None

    # ------------------------------------------------------------------------------------- fit

    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        *,
        epochs: int | None = None,
        resume: str | Path | None = None,
    ) -> History:
        """Train for ``epochs`` epochs (default the trainer's), validating after each one.

        Args:
            train_loader: yields :class:`~hydranet.data.Batch` objects (a ``DataLoader`` with
                ``collate_fn=hydranet.data.collate``); its sampler's ``set_epoch`` is called every epoch.
            val_loader: validation batches; per-task metrics, losses and Δm every epoch.
            epochs: total number of epochs, counting those of a resumed run.
            resume: ``"last"`` (``out_dir/last.pt``; a fresh start when there is none yet) or
                a checkpoint path: continue exactly where that run was.

        Returns:
            the :class:`~hydranet.report.History`, one record per epoch (also ``self.history``).
        """
        epochs = self.epochs if epochs is None else epochs
        _check_int("epochs", epochs, 1)
        self.monitor = self._fit_monitor(has_val=val_loader is not None)
        self._check_shards(train_loader, "train_loader", same_length=True)
        if val_loader is not None:
            self._check_shards(val_loader, "val_loader", same_length=False)
        state = self._resume_state(resume)
        if self._train_baselines and self.baselines is None and (state is None or state.get("baselines") is None):
            self.train_baselines(train_loader, val_loader, epochs=epochs)

        seed_everything(self.seed)
        self.history, self.global_step, self.epoch = History(), 0, 0
        self.early_stopping = EarlyStopping(self._resolve_mode(self.monitor), self.patience, self.min_delta)
        self.scheduler = self._make_scheduler(self._steps_per_epoch(train_loader), epochs)
        resume_at = self._restore(state) if state is not None else None
        start = self.epoch
        self.should_stop = False
        loggers = self._open_loggers()
        self.callbacks.on_fit_start(self)
        try:
            for epoch in range(start, epochs):
                if self.early_stopping.stopped:
                    break
                self.epoch = epoch
                self._run_epoch(train_loader, val_loader, epoch, epochs, resume_at if epoch == start else None, loggers)
                # A callback may stop one rank only: then all stop, or the others would wait for it.
                self.should_stop = distributed.count([self.should_stop])[0] > 0
                if self.should_stop or self.early_stopping.stopped:
                    break
            self.epoch = self.history.epochs[-1].epoch + 1 if len(self.history) else start
        finally:
            for log in loggers:
                log.close()
            self.callbacks.on_fit_end(self)
        return self.history

    @staticmethod
    def _check_shards(loader: Any, name: str, *, same_length: bool) -> None:
        """Under DDP: the loader's sampler shards over all ranks, and (training) every rank runs as many
        batches, or some rank would wait forever for the others' gradients. Every rank decides on the
        same gathered facts, so all raise together."""
        if not distributed.is_distributed():
            return
        sampler = epoch_sampler(loader) or getattr(loader, "sampler", None)
        facts = distributed.gather((length_of(loader), getattr(sampler, "num_replicas", None)))
        world = distributed.world_size()
        replicas = {r for _, r in facts if r is not None}
        if replicas and replicas != {world}:
            raise ValueError(
                f"The {name}'s sampler shards the data over {sorted(replicas)} replica(s), but {world} processes "
                "train: build the samplers after the process group starts (inside hydranet.distributed."
                "process_group()), so that they take the world size from it."
            )
        lengths = [n for n, _ in facts]
        if same_length and (None in lengths or len(set(lengths)) > 1):
            shown = ", ".join(f"rank {r}: {'no length' if n is None else n}" for r, n in enumerate(lengths))
            raise ValueError(
                f"Under DDP every rank must run the same number of training batches, and the {name} gives "
                f"{shown}. Use hydranet.data.TaskBatchSampler (equal batches on every rank) or a "
                "DistributedSampler, with a loader that has a length."
            )

    def _fit_monitor(self, has_val: bool) -> str:
        """The monitored value of this fit: the one asked for, or the default given the data."""
        if self._monitor_setting is not None:
            monitor = self._monitor_setting
        else:
            monitor = "val/delta_m" if self.baselines is not None or self._train_baselines else "val/loss"
        if not has_val and monitor.startswith("val/"):
            if self._monitor_setting is not None or self.patience is not None or monitor == "val/delta_m":
                raise ValueError(
                    f"monitor={monitor!r} (early stopping, baselines, Δm) needs validation scores: pass val_loader=, "
                    "or monitor a training loss (monitor='train/loss')."
                )
            monitor = "train/loss"
        return monitor

    def _steps_per_epoch(self, loader: Any) -> int | None:
        n = length_of(loader)
        return None if n is None else -(-n // self.accumulate)

    def _run_epoch(
        self,
        loader: Any,
        val_loader: Any,
        epoch: int,
        epochs: int,
        resume_at: Mapping[str, Any] | None,
        loggers: list[Any],
    ) -> None:
        started = time.perf_counter()
        self.callbacks.on_epoch_start(self, epoch)
        self.model.train()
        means = _Means()
        iterator, position = self._epoch_iterator(loader, epoch, resume_at, means)
        n_batches = length_of(loader)
        bar = self._progress_bar(n_batches, position, f"epoch {epoch + 1}/{epochs}")
        micro = 0
        try:
            for raw in iterator:
                position += 1
                last_in_group = micro + 1 == self.accumulate or position == n_batches
                info = self._train_batch(as_batch(raw), last_in_group, epoch, position)
                micro += 1
                for task, value in info.get("losses", {}).items():
                    means.add(f"loss/{task}", value)
                self._record_diagnostics(means, info)
                stepped = last_in_group
                if stepped:
                    means.add("extra/lr", float(self.optimizer.param_groups[0]["lr"]))
                    norm = self._step(micro)
                    micro = 0
                    if norm is not None:
                        info["grad_norm"] = norm
                        means.add("extra/grad_norm", norm)
                info["batch"], info["stepped"] = position, stepped
                self.callbacks.on_batch_end(self, self.global_step, info)
                if bar is not None:
                    bar.update(1)
                    if position % self.log_every == 0:
                        bar.set_postfix({t: f"{v:.4g}" for t, v in means.mean("loss").items()}, refresh=False)
                if position % self.log_every == 0 and is_main_process():
                    logger.debug("epoch %d batch %d: %s", epoch, position, means.mean("loss"))
                if (
                    stepped
                    and self.checkpoint_every is not None
                    and self.global_step % self.checkpoint_every == 0
                    and position != n_batches
                ):
                    self._save_mid_epoch(epoch, position, loader, means)
            if micro:  # a loader without a length ended inside an accumulation group
                self._step(micro)
        finally:
            if bar is not None:
                bar.close()
        self._rng_epoch_start = None
        self.balancer.on_epoch_end()
        self._finish_epoch(epoch, val_loader, means, started, loggers)

    def _epoch_iterator(
        self, loader: Any, epoch: int, resume_at: Mapping[str, Any] | None, means: _Means
    ) -> tuple[Iterator[Any], int]:
        """The epoch's batch iterator and the number of batches already consumed."""
        sampler = epoch_sampler(loader)
        if resume_at is None or resume_at["position"] == 0:
            if sampler is not None:
                sampler.set_epoch(epoch)
            self._rng_epoch_start = rng_state()
            return iter(loader), 0
        # Mid-epoch resume: start the loader under the random state it started with in the original
        # run (its worker seeds, a shuffling sampler's seed), move to the consumed position, then
        # restore the random state of the checkpoint.
        position = int(resume_at["position"])
        self._rng_epoch_start = resume_at["rng_epoch_start"]
        set_rng_state(self._rng_epoch_start)
        if sampler is not None:
            sampler.set_epoch(epoch)
        skip = position
        if resume_at.get("sampler") is not None and takes_position(sampler):
            sampler.load_state_dict(resume_at["sampler"])
            skip = 0
        iterator = iter(loader)
        for _ in range(skip):
            next(iterator)
        set_rng_state(resume_at["rng"])
        if is_main_process():  # the saved means are all ranks' (see _save_mid_epoch)
            means.load_state_dict(resume_at["means"])
        return iterator, position

    def _forward(self, model: nn.Module, batch: Batch, tasks: list[str], *, features: bool = False) -> Any:
        with torch.autocast(self.device.type, dtype=_AMP_DTYPES.get(self.amp, torch.float32), enabled=self.amp is not None):
            return model(batch.inputs, tasks=tasks, return_features=features)

    def _agree_on_tasks(self, tasks: list[str], epoch: int, position: int) -> bool:
        """Under DDP: whether some rank has a task in this batch (all ranks then train on it, or all skip
        it), and which tasks some rank has (:meth:`_step` needs them). Alone: whether ``tasks`` is empty."""
        if not self._ddp:
            return bool(tasks)
        counts = distributed.count([bool(tasks)] + [t in tasks for t in self.tasks])
        world = distributed.world_size()
        if 0 < counts[0] < world:
            raise ValueError(
                f"At epoch {epoch}, batch {position}, {world - counts[0]} of {world} ranks have no labelled sample "
                f"of a trained task ({', '.join(self.tasks)}) while the others have some. Under DDP every rank "
                "must take part in every step: use hydranet.data.TaskBatchSampler (one task per batch gives every "
                "rank the same task; quotas give every rank every task), or make sure each rank's batch holds a "
                "label of some trained task."
            )
        self._group_tasks.update(t for t, n in zip(self.tasks, counts[1:]) if n)
        return counts[0] > 0

    def _train_batch(self, batch: Batch, last_in_group: bool, epoch: int, position: int) -> dict[str, Any]:
        batch = batch.to(self.device, non_blocking=True)
        tasks = [t for t in batch.tasks if t in self.tasks]
        if not self._agree_on_tasks(tasks, epoch, position):
            return {}
        core = _unwrap(self.model)
        synchronised = self._synchronised(last_in_group)
        with self._sync_context(synchronised):
            out = self._forward(self.model, batch, tasks, features=self.balancer.requires_features)
            outputs, features = out if self.balancer.requires_features else (out, None)
            if self.scaler is not None:
                # The current loss scale as a tensor (no host sync); calling scale() also lets the
                # scaler's unscale_/step accept this iteration.
                scale = self.scaler.scale(torch.ones((), device=self.device))
                outputs = {t: _ScaleGrad.apply(o, scale) for t, o in outputs.items()}
            with torch.autocast(self.device.type, enabled=False):
                outputs = {t: o.float() for t, o in outputs.items()}
                losses = {t: v for t, v in self.loss_fn(outputs, batch.targets, batch.masks).items() if t in self.tasks}
            if not losses:
                return {}
            self._check_finite(losses, epoch, position)
            if synchronised:
                # DDP's reducer waits for a gradient of every parameter: give the heads this rank does not
                # use a zero one (the loss values do not change).
                zero = self._unused.zero_term(losses)
                if zero is not None:
                    first = next(iter(losses))
                    losses = {**losses, first: losses[first] + zero.to(losses[first].dtype)}
            task_params = {t: core.task_parameters(t) for t in self.tasks}
            return dict(self.balancer.backward(losses, core.shared_parameters(), task_params, features))

    def _synchronised(self, last_in_group: bool) -> bool:
        """Whether DDP all-reduces the gradients of this backward pass: not outside DDP, not when the
        balancer reduces the gradients itself (gradient methods average the task Jacobian over the ranks),
        not on the micro-batches before the last of an accumulation group (their gradients join the
        last one's all-reduce)."""
        return self._ddp and last_in_group and not self.balancer.handles_ddp_sync

    def _sync_context(self, synchronised: bool) -> contextlib.AbstractContextManager[Any]:
        """``model.no_sync()`` for a DDP backward pass that must not all-reduce."""
        if not self._ddp or synchronised:
            return contextlib.nullcontext()
        return self.model.no_sync()  # type: ignore[operator]

    def _check_finite(self, losses: Mapping[str, Tensor], epoch: int, position: int) -> None:
        values = torch.stack([v.detach().reshape(()) for v in losses.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [t for t, v in zip(losses, values.tolist()) if not math.isfinite(v)]
        raise NonFiniteLossError(
            f"The loss of task {bad[0]!r} is {values[list(losses).index(bad[0])].item()} at epoch {epoch}, batch "
            f"{position} (optimizer step {self.global_step}). Lower the learning rate (lr={self.lr:g}), clip "
            f"gradients (grad_clip=1.0), or check the targets of {bad[0]!r} for NaN, infinite or out-of-range "
            "values. No checkpoint was written for this epoch; the best checkpoint is untouched."
        )

    def _record_diagnostics(self, means: _Means, info: Mapping[str, Any]) -> None:
        for task, value in (info.get("weights") or {}).items():
            means.add(f"weight/{task}", float(value))
        for task, value in (info.get("grad_norms") or {}).items():
            means.add(f"grad_norm/{task}", float(value))
        cosines = info.get("cosines")
        if cosines is not None:
            rows = list(info.get("tasks") or [])
            matrix = np.asarray(cosines, dtype=np.float64)
            for i, j in zip(*np.triu_indices(len(rows), k=1)):
                a, b = sorted((rows[i], rows[j]))
                means.add(f"cosine/{a}:{b}", float(matrix[i, j]))

    def _step(self, micro: int) -> float | None:
        """Average the accumulated gradients, unscale (fp16), clip, step; return the pre-clip norm."""
        core = _unwrap(self.model)
        if self._ddp:  # heads of tasks no rank had: no gradient, as in one process
            self._unused.release(self._group_tasks)
        model_params = [p for p in core.parameters() if p.grad is not None]
        own_params = [p for p in self.balancer.parameters() if p.grad is not None]
        if not (model_params or own_params):  # no task in the whole group: nothing to update
            self._after_step()
            return None
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            for p in own_params:  # their gradient did not pass through the scaled outputs
                p.grad.mul_(scale)
            self.scaler.unscale_(self.optimizer)
        if micro > 1:
            for params in (model_params, own_params):  # one foreach call per device group
                if params:
                    torch._foreach_div_([p.grad for p in params], float(micro))
        norm = None
        if self.grad_clip is not None and model_params:
            total = torch.nn.utils.clip_grad_norm_(model_params, self.grad_clip)
            norm = float(total)
            if not math.isfinite(norm) and self.scaler is None:
                raise NonFiniteLossError(
                    f"The gradient norm is {norm} at optimizer step {self.global_step + 1} (epoch {self.epoch}). "
                    "Lower the learning rate, or check the targets and inputs for extreme values."
                )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._after_step()
        return norm

    def _after_step(self) -> None:
        self._group_tasks.clear()
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.balancer.parameters():
            p.grad = None
        self.global_step += 1
        if self.scheduler is not None and self._scheduler_interval == "step":
            self.scheduler.step()

    def _finish_epoch(
        self, epoch: int, val_loader: Any, means: _Means, started: float, loggers: list[Any]
    ) -> None:
        means = means.across_ranks()  # every rank logs, monitors and stops on the same numbers
        train_losses = means.mean("loss")
        values: dict[str, float] = {"train/loss": float(sum(train_losses.values()))}
        values.update({f"train/{t}/loss": v for t, v in train_losses.items()})
        losses = {"train": train_losses}
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        extra: dict[str, float] = {}
        confusion: dict[str, np.ndarray] = {}
        if val_loader is not None:
            # Same validation order in an uninterrupted and a resumed run (a sampler may shuffle per epoch).
            val_sampler = epoch_sampler(val_loader)
            if val_sampler is not None:
                val_sampler.set_epoch(epoch)
            scores, val_losses, confusion = self._evaluate(val_loader)
            self.callbacks.on_validation_end(self, scores)
            losses["val"] = val_losses
            metrics["val"] = scores
            values["val/loss"] = float(sum(val_losses.values()))
            values.update({f"val/{t}/loss": v for t, v in val_losses.items()})
            values.update({f"val/{t}/{m}": v for t, ms in scores.items() for m, v in ms.items()})
            if self.baselines:
                values["val/delta_m"] = delta_m(scores, self.baselines)
                extra["val/delta_m"] = values["val/delta_m"]
            extra["val/loss"] = values["val/loss"]
        extra["train/loss"] = values["train/loss"]
        extra.update(means.mean("extra"))  # grad_norm, lr: means over the epoch's optimizer steps
        extra["seconds"] = time.perf_counter() - started
        cosines: dict[str, dict[str, float]] = {}
        for pair, value in means.mean("cosine").items():
            a, b = pair.split(":")
            cosines.setdefault(a, {})[b] = value
        log = EpochLog(
            epoch=epoch,
            losses=losses,
            metrics=metrics,
            weights=means.mean("weight"),
            grad_norms=means.mean("grad_norm"),
            cosines=cosines,
            extra=extra,
        )
        self.history.append(log)
        for target in loggers:
            target.log(epoch, log)

        if self.monitor not in values:
            raise ValueError(
                f"monitor={self.monitor!r} has no value after epoch {epoch}; available: {sorted(values)}."
            )
        improved = self.early_stopping.update(values[self.monitor], epoch)
        if improved:
            self._confusion = confusion
        if self.scheduler is not None and self._scheduler_interval == "epoch":
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(values[self.monitor])
            else:
                self.scheduler.step()
        if is_main_process():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()) if k.count("/") == 1 or k == self.monitor)
            logger.info("epoch %d: %s (%.1f s)", epoch, shown, extra["seconds"])
        self.callbacks.on_epoch_end(self, epoch, log)
        self._save_epoch_end(epoch, improved)

    # ------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def _evaluate(
        self, loader: Iterable[Any]
    ) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, np.ndarray]]:
        """Scores, per-task losses (mean over labelled samples) and confusion matrices over ``loader``.

        Under DDP the batches go through the module inside the wrapper: evaluation needs no gradient
        all-reduce, so ranks may run different numbers of batches; losses and metrics are reduced over the
        ranks at the end (collective calls: every rank evaluates)."""
        was_training = self.model.training
        self.model.eval()
        self.metrics.reset()
        names = list(self.tasks)
        sums = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        counts = torch.zeros(len(names), dtype=torch.float64, device=self.device)
        try:
            for raw in loader:
                batch = as_batch(raw).to(self.device, non_blocking=True)
                tasks = [t for t in batch.tasks if t in self.tasks]
                if not tasks:
                    continue
                outputs = {t: o.float() for t, o in self._forward(_unwrap(self.model), batch, tasks).items()}
                for task, value in self.loss_fn(outputs, batch.targets, batch.masks).items():
                    if task in self.tasks:
                        i = names.index(task)
                        n = batch.masks[task].sum()
                        sums[i] += value.detach().double() * n
                        counts[i] += n
                self.metrics.update(outputs, batch.targets, batch.masks)
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(sums)
                dist.all_reduce(counts)
            scores = self.metrics.compute()
            confusion = self.metrics.confusion_matrices()
        finally:
            self.model.train(was_training)
        means = (sums / counts.clamp(min=1)).tolist()
        losses = {t: means[i] for i, t in enumerate(names) if counts[i] > 0}
        return scores, losses, confusion

    def evaluate(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        """``{task: {metric: value, "loss": value}}`` over ``loader``: each task's metrics and its loss
        averaged over its labelled samples. Tasks without a labelled sample are left out."""
        scores, losses, _ = self._evaluate(loader)
        out = {t: dict(scores.get(t, {})) for t in self.tasks if t in scores or t in losses}
        for task, value in losses.items():
            out[task]["loss"] = value
        return out

    @torch.no_grad()
    def predict(
        self, loader: Iterable[Any], *, return_logits: bool = False, return_indices: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
        """Predictions of every task for every sample of ``loader``, in the loader's order, on the CPU.

        Classification: probabilities (sigmoid for binary ``[N, 1]`` and multilabel ``[N, C]``, softmax
        for multiclass ``[N, C]``), or the logits with ``return_logits=True``; regression: the values
        ``[N, dim]``. The loader may yield Batches, ``(inputs, ...)`` tuples or bare input tensors.
        ``return_indices=True`` also returns the dataset indices of the rows (Batches built by
        :class:`~hydranet.data.MultiTaskDataset` carry them), for samplers that shuffle. Under DDP each
        rank predicts its own batches (through the module inside the wrapper, no collective).
        """
        was_training = self.model.training
        self.model.eval()
        names = list(self.tasks)
        collected: dict[str, list[Tensor]] = {t: [] for t in names}
        indices: list[Tensor] = []
        try:
            for raw in loader:
                inputs = move_to(inputs_of(raw), self.device)
                with torch.autocast(
                    self.device.type, dtype=_AMP_DTYPES.get(self.amp, torch.float32), enabled=self.amp is not None
                ):
                    outputs = _unwrap(self.model)(inputs, tasks=names)
                for task in names:
                    value = outputs[task].float()
                    if not return_logits:
                        value = _probabilities(self.tasks[task], value)
                    collected[task].append(value.cpu())
                if return_indices:
                    if not isinstance(raw, Batch) or raw.indices is None:
                        raise ValueError(
                            "return_indices=True needs Batches that carry dataset indices (MultiTaskDataset with "
                            "TensorDatasets builds them); this loader's batches have none."
                        )
                    indices.append(raw.indices.cpu())
        finally:
            self.model.train(was_training)
        predictions = {t: torch.cat(v) if v else torch.empty(0) for t, v in collected.items()}
        if return_indices:
            return predictions, torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
        return predictions

    # ------------------------------------------------------------------------------- baselines

    def train_baselines(
        self, train_loader: Iterable[Any], val_loader: Iterable[Any], *, epochs: int | None = None
    ) -> dict[str, dict[str, float]]:
        """Train one single-task model per task and keep each one's best validation score of its main
        metric as that task's baseline (``self.baselines``, used for Δm).

        Each baseline starts from the weights the multi-task model had when given to the trainer (or
        from ``model_factory([task])``), runs only its task's head with equal weighting and the same
        optimizer, scheduler, clipping, accumulation, AMP, seed, patience and number of epochs, on the
        same loaders restricted to its task: with one task per batch it trains on exactly the batches
        of its task that the multi-task model sees (as many passes over its data), with mixed or joint
        batches on its task's rows of every batch. Its best epoch is chosen on that main metric.
        """
        if val_loader is None:
            raise ValueError("Training baselines needs a val_loader: a baseline is its task's best validation score.")
        epochs = self.epochs if epochs is None else epochs
        baselines: dict[str, dict[str, float]] = {}
        for task in self.tasks:
            metric = main_metric(self.tasks[task], self.metric_names.get(task))[0]
            child = Trainer(
                self._baseline_model(self.tasks[task]),
                [self.tasks[task]],
                balancer="ew",
                loss=self.loss_fn,
                metrics={task: self.metric_names[task]} if task in self.metric_names else None,
                optimizer=self._optimizer_spec,
                lr=self.lr,
                weight_decay=self.weight_decay,
                scheduler=self._scheduler_spec,
                scheduler_interval=self._scheduler_interval,
                epochs=epochs,
                grad_clip=self.grad_clip,
                accumulate=self.accumulate,
                amp=self.amp,
                device=self.device,
                monitor=f"val/{task}/{metric}",
                patience=self.patience,
                min_delta=self.min_delta,
                out_dir=None,
                progress=self.progress,
                seed=self.seed,
                log_every=self.log_every,
            )
            if is_main_process():
                logger.info("training the single-task baseline of %r (%s)", task, metric)
            child.fit(TaskView(train_loader, task), TaskView(val_loader, task), epochs=epochs)
            best = child.early_stopping.best
            if best is None or best == 0:
                raise ValueError(
                    f"The single-task baseline of {task!r} scored {best} on {metric}, so Δm (relative to it) is "
                    f"undefined. Train longer (epochs=), or make another metric the task's main one "
                    f"(metrics={{{task!r}: [...]}} or Task(metrics=[...]))."
                )
            baselines[task] = {metric: float(best)}
            self.baseline_histories[task] = child.history
            self.baseline_models[task] = _unwrap(child.model).cpu()  # kept to score on other data (report)
        self.baselines = self._check_baselines(baselines)
        return self.baselines

    def _baseline_model(self, task: Task) -> nn.Module:
        if self.model_factory is not None:
            model = self.model_factory([task])
        else:
            model = copy.deepcopy(_unwrap(self.model))
            model.load_state_dict(self._initial_state)  # type: ignore[arg-type]
        return model

    # ----------------------------------------------------------------------------- checkpoints

    @property
    def checkpoint_dir(self) -> Path | None:
        """Where ``last.pt`` and ``best.pt`` go: ``out_dir``."""
        return self.out_dir

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the best monitored value so far."""
        return self.early_stopping.best_epoch

    @property
    def best_score(self) -> float | None:
        """The best monitored value so far."""
        return self.early_stopping.best

    def state_dict(self) -> dict[str, Any]:
        """Everything but the loop position: model, optimizer, scheduler, scaler, balancer, history,
        early stopping, baselines and the run's metadata."""
        core = _unwrap(self.model)
        import hydranet

        return {
            "format": CHECKPOINT_FORMAT,
            "hydranet_version": hydranet.__version__,
            "torch_version": str(torch.__version__),
            "tasks": {name: task.to_dict() for name, task in self.tasks.items()},
            "config": {
                "balancer": self.balancer.name,
                "optimizer": type(self.optimizer).__name__,
                "lr": self.lr,
                "weight_decay": self.weight_decay,
                "scheduler": None if self.scheduler is None else type(self.scheduler).__name__,
                "scheduler_interval": self._scheduler_interval,
                "accumulate": self.accumulate,
                "grad_clip": self.grad_clip,
                "amp": self.amp,
                "monitor": self.monitor,
                "mode": self.early_stopping.mode,
                "patience": self.patience,
                "min_delta": self.min_delta,
                "seed": self.seed,
            },
            "model": core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "history": self.history.to_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "baselines": self.baselines,
            "global_step": self.global_step,
        }

    def _rank_progress(self, *, epoch_start: bool) -> dict[str, Any]:
        """Under DDP, ``{"ranks": [random states of rank 0, rank 1, ...]}`` (collective): each rank resumes
        its own, which differ once ranks draw differently (dropout in heads of rank-dependent tasks)."""
        if not distributed.is_distributed():
            return {}
        own = {"rng": rng_state(), **({"rng_epoch_start": self._rng_epoch_start} if epoch_start else {})}
        return {"ranks": distributed.gather(own)}

    def _save_mid_epoch(self, epoch: int, position: int, loader: Any, means: _Means) -> None:
        # Collectives first, on every rank; then rank 0 writes while the others wait for it. The saved
        # means are those of all ranks, resumed by rank 0 alone (the ranks' means add up at epoch end).
        means_state = means.across_ranks().state_dict()
        ranks = self._rank_progress(epoch_start=True)

        def write() -> None:
            sampler = epoch_sampler(loader)
            state = self.state_dict()
            state["progress"] = {
                "epoch": epoch,
                "position": position,
                "sampler": sampler.state_dict(position=position) if takes_position(sampler) else None,
                "rng_epoch_start": self._rng_epoch_start,
                "rng": rng_state(),
                "means": means_state,
                **ranks,
            }
            save_checkpoint(state, self.checkpoint_dir / "last.pt")  # type: ignore[operator]

        distributed.on_main(write)

    def _save_epoch_end(self, epoch: int, improved: bool) -> None:
        if self.checkpoint_dir is None or self.checkpoint == "none":
            return
        save_last = "last" in self.checkpoint
        save_best = "best" in self.checkpoint and improved  # the same on every rank (synchronised values)
        if not (save_last or save_best):
            return
        ranks = self._rank_progress(epoch_start=False)

        def write() -> None:
            state = self.state_dict()
            state["progress"] = {"epoch": epoch + 1, "position": 0, "rng": rng_state(), **ranks}
            last, best = self.checkpoint_dir / "last.pt", self.checkpoint_dir / "best.pt"  # type: ignore[operator]
            if save_last:
                save_checkpoint(state, last)
                if save_best:
                    copy_atomic(last, best)
            elif save_best:
                save_checkpoint(state, best)

        distributed.on_main(write)

    def _resume_state(self, resume: str | Path | None) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start afresh), read by rank 0 and sent to every rank, so
        that all ranks take the same decision and a folder only rank 0 can see is enough."""
        if resume is None:
            return None
        return distributed.on_main(lambda: self._read_resume(resume))

    def _read_resume(self, resume: str | Path) -> dict[str, Any] | None:
        if str(resume) == "last":
            if self.checkpoint_dir is None:
                raise ValueError("resume='last' reads out_dir/last.pt: set out_dir=, or pass a path.")
            path = self.checkpoint_dir / "last.pt"
            if not path.is_file():
                warnings.warn(f"No checkpoint at {path} yet: training from the start.", stacklevel=6)
                return None
        else:
            path = Path(resume)
        state = self._read_checked(path)
        if "progress" not in state:
            raise ValueError(f"{path} holds weights only, no training state to resume from.")
        return state

    def _read_checked(self, path: str | Path) -> dict[str, Any]:
        state = load_checkpoint(path)
        self._check_tasks(state, path)
        return state

    def _check_tasks(self, state: Mapping[str, Any], path: Path | str) -> None:
        saved = state.get("tasks", {})
        mine = {n: t.to_dict() for n, t in self.tasks.items()}
        # class names too: the same number of classes in another order would decode predictions wrongly
        shape = lambda spec: (spec["kind"], spec["num_classes"], spec["dim"], spec.get("class_names"))  # noqa: E731
        if list(saved) != list(mine) or any(shape(saved[n]) != shape(mine[n]) for n in mine):
            describe = lambda specs: ", ".join(f"{n} ({s['kind']})" for n, s in specs.items())  # noqa: E731
            raise ValueError(
                f"The checkpoint {str(path)!r} was trained for tasks [{describe(saved)}], but this trainer has "
                f"[{describe(mine)}]. Build the model and trainer with the checkpoint's tasks, or start a new run."
            )

    def _restore(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """Load a full training state; return where the loop continues."""
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError(
                "The checkpoint was saved " + ("with" if state["scheduler"] is not None else "without")
                + " a learning-rate scheduler; resume with the same scheduler= setting."
            )
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.balancer.load_state_dict(state["balancer"])
        self.history = History.from_dict(state["history"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        if state["baselines"] is not None:
            self.baselines = {t: dict(v) for t, v in state["baselines"].items()}
        self.global_step = int(state["global_step"])
        progress = dict(state["progress"])
        ranks = progress.pop("ranks", None)
        if ranks is not None and len(ranks) == distributed.world_size():  # this rank's own random states
            progress.update(ranks[distributed.rank()])
        self.epoch = int(progress["epoch"])
        if progress["position"] == 0:
            set_rng_state(progress["rng"])
        return progress

    def load_checkpoint(self, path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
        """Load a checkpoint into this trainer's model (tasks are checked) and return it.

        ``weights_only=True`` loads the model weights; ``False`` also the balancer state, history,
        baselines and early-stopping record (what :meth:`report` and Δm need). To continue training
        from a checkpoint, use ``fit(..., resume=path)``. Under DDP rank 0 reads the file for every rank.
        """
        state = distributed.on_main(lambda: self._read_checked(path))
        _unwrap(self.model).load_state_dict(state["model"])
        if not weights_only:
            self.balancer.load_state_dict(state["balancer"])
            self.history = History.from_dict(state["history"])
            self.early_stopping.load_state_dict(state["early_stopping"])
            self.baselines = None if state["baselines"] is None else {t: dict(v) for t, v in state["baselines"].items()}
            self.global_step = int(state["global_step"])
        return state

    # ------------------------------------------------------------------------------ reporting

    def _open_loggers(self) -> list[Any]:
        if self.out_dir is None or not is_main_process():
            return []
        csv_logger = CSVLogger(self.out_dir / "metrics.csv")
        for log in self.history:  # a resumed run rewrites the file from its history: no duplicates
            csv_logger.log(log.epoch, log)
        loggers: list[Any] = [csv_logger]
        if self.tensorboard:
            loggers.append(TensorBoardLogger(self.out_dir / "tensorboard"))
        return loggers

    def _progress_bar(self, total: int | None, initial: int, description: str) -> Any:
        if not (self.progress and is_main_process()):
            return None
        from tqdm.auto import tqdm

        # disable=None: tqdm switches itself off when the output is not a terminal.
        return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True, disable=None, file=sys.stderr)

    def report(
        self, out_dir: str | Path | None = None, test_loader: Iterable[Any] | None = None, *, plots: bool = True
    ) -> Report:
        """Write the run's report into ``out_dir`` (default the trainer's): curves, ``summary.md``,
        ``metrics.json`` and ``history.json`` (see :func:`hydranet.report.write_report`).

        Scores are the validation scores of the best epoch, or with ``test_loader`` the current model's
        scores on it; trained baselines (``baselines="train"``) are then scored on the same test data,
        so Δm compares like with like. Without either, the report holds the training curves only.
        Under DDP every rank calls it (test scores are collective); rank 0 writes the files and every rank
        returns its :class:`~hydranet.report.Report` once they are complete.
        """
        folder = Path(out_dir) if out_dir is not None else self.out_dir
        if folder is None:
            raise ValueError("report() needs a folder: pass out_dir=, or build the trainer with out_dir=.")
        has_val = any(log.metrics.get("val") for log in self.history)
        scores, confusion, baselines = None, self._confusion, self.baselines
        if test_loader is not None:
            scores, _, confusion = self._evaluate(test_loader)
            if self.baseline_models:
                baselines = self._baseline_scores(test_loader)
        elif not has_val:
            warnings.warn(
                "No validation or test scores: the report holds the training curves only. Fit with a val_loader, "
                "or pass report(test_loader=...).",
                stacklevel=2,
            )
            scores = {}
        return distributed.on_main(
            lambda: write_report(
                folder,
                self.history,
                tasks=list(self.tasks.values()),
                scores=scores,
                best_epoch=self.best_epoch if has_val and self.monitor.startswith("val/") else None,
                baselines=baselines,
                confusion=confusion or None,
                plots=plots,
                baseline_histories=self.baseline_histories,
                scores_split="test" if test_loader is not None else None,
            )
        )

    def _baseline_scores(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        """Main-metric scores of the trained baseline models on ``loader``."""
        scores = {}
        for task, model in self.baseline_models.items():
            metric = main_metric(self.tasks[task], self.metric_names.get(task))[0]
            judge = Trainer(
                model,
                [self.tasks[task]],
                loss=self.loss_fn,
                metrics={task: self.metric_names[task]} if task in self.metric_names else None,
                amp=self.amp,
                device=self.device,
                progress=False,
            )
            scores[task] = {metric: judge.evaluate(TaskView(loader, task))[task][metric]}
            model.cpu()
        return scores


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _probabilities(task: Task, logits: Tensor) -> Tensor:
    if task.kind == "multiclass":
        return torch.softmax(logits, dim=-1)
    if task.kind in ("binary", "multilabel"):
        return torch.sigmoid(logits)
    return logits


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (LRScheduler, ReduceLROnPlateau))


def _named(spec: str | Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec.strip().lower(), {}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"A {what} given as a mapping needs a 'name' key, e.g. {{'name': 'step', 'step_size': 5}}; got {spec!r}.")
    options = dict(spec)
    return str(options.pop("name")).strip().lower(), options


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


def _check_number(name: str, value: Any, *, low: float, strict: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}.")
