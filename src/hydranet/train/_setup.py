"""What the :class:`~hydranet.train.Trainer` builds from its settings, each checked on its own: the task
selection, the balancer, the optimizer, the scheduler, AMP, the monitored value and the baselines."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from hydranet._checks import did_you_mean
from hydranet.balancing import Balancer, make
from hydranet.balancing.weighting import GradNorm
from hydranet.metrics import higher_is_better, main_metric, metric_names
from hydranet.tasks import Task

__all__ = [
    "AMP_MODES",
    "CHECKPOINT_MODES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "check_amp",
    "check_baselines",
    "check_baselines_setting",
    "check_checkpoint",
    "check_contract",
    "check_monitor",
    "check_scheduler",
    "fit_monitor",
    "is_scheduler",
    "make_balancer",
    "make_optimizer",
    "make_scheduler",
    "resolve_mode",
    "select_tasks",
]

CHECKPOINT_MODES = ("last+best", "last", "best", "none")
AMP_MODES = (None, "bf16", "fp16")

#: Optimizers by name: ``(class, default options)``.
OPTIMIZERS: dict[str, tuple[Callable[..., Optimizer], dict[str, Any]]] = {
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


def check_contract(model: nn.Module) -> nn.Module:
    """``model`` if it has the HydraNet contract the trainer relies on."""
    for attribute in ("tasks", "shared_parameters", "task_parameters"):
        if not hasattr(model, attribute):
            raise TypeError(
                f"{type(model).__name__} has no {attribute!r}: the trainer needs a model with the HydraNet "
                "contract (tasks, shared_parameters(), task_parameters(task), forward(x, tasks=...))."
            )
    return model


def select_tasks(model_tasks: Mapping[str, Task], tasks: Any) -> dict[str, Task]:
    """``{name: Task}`` of the tasks to train: ``tasks`` (Tasks or names), checked against the model's."""
    model_tasks = dict(model_tasks)
    if tasks is None:
        return model_tasks
    if isinstance(tasks, Mapping):
        items = list(tasks.values())
    else:
        items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
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


def make_balancer(balancer: str | Balancer, options: Mapping[str, Any] | None, tasks: Mapping[str, Task]) -> Balancer:
    """The balancer given by name (with ``options``) or as an instance built for ``tasks``."""
    if isinstance(balancer, Balancer):
        if options:
            raise ValueError("balancer_options apply to a balancer given by name; configure the instance instead.")
        if set(balancer.task_names) != set(tasks):
            raise ValueError(
                f"The balancer was built for tasks {balancer.task_names}, the trainer trains {list(tasks)}: "
                "build it with hydranet.balancing.make(name, tasks) for the same tasks."
            )
        return balancer
    if not isinstance(balancer, str):
        raise TypeError(f"balancer must be a method name or a hydranet.balancing.Balancer, got {type(balancer).__name__}.")
    return make(balancer, list(tasks.values()), **dict(options or {}))


def check_amp(amp: str | None, device: torch.device, balancer: Balancer) -> str | None:
    """``amp`` if the device and the balancer support it."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} is not valid; choose None, 'bf16' or 'fp16'.")
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError(
                f"amp='fp16' needs a CUDA device (its GradScaler runs on CUDA); the device is {device}. "
                "Use amp='bf16', which runs on CPU and CUDA without loss scaling."
            )
        if balancer.uses_jacobian or isinstance(balancer.method, GradNorm):
            raise ValueError(
                f"amp='fp16' multiplies the gradients by a changing loss scale, which {balancer.name!r} is "
                "not invariant to (it reads per-task gradients). Use amp='bf16', which needs no loss scaling."
            )
    return amp


def _param_groups(model: nn.Module, balancer: Balancer, weight_decay: float) -> list[dict[str, Any]]:
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    extra = balancer.parameters()
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    return groups


def make_optimizer(spec: Any, model: nn.Module, balancer: Balancer, lr: float, weight_decay: float) -> Optimizer:
    """The optimizer of ``model`` (weight decay ``weight_decay``) and of the balancer's own parameters
    (a group without weight decay), from a name, a dict, an Optimizer or a factory."""
    if isinstance(spec, Optimizer):
        known = {id(p) for group in spec.param_groups for p in group["params"]}
        extra = [p for p in balancer.parameters() if id(p) not in known]
        if extra:
            spec.add_param_group({"params": extra, "weight_decay": 0.0})
        return spec
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        optimizer = spec(_param_groups(model, balancer, weight_decay))
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
        return cls(_param_groups(model, balancer, weight_decay), lr=lr, **{**defaults, **options})
    except TypeError as err:
        raise ValueError(f"Optimizer {name!r}: {err}.") from None


def check_scheduler(spec: Any, interval: str | None) -> str | None:
    """The interval (``"step"`` or ``"epoch"``) the scheduler ``spec`` steps at (None: no scheduler)."""
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
    if not (is_scheduler(spec) or callable(spec)):
        raise TypeError(f"scheduler must be a name, a dict, a torch scheduler or a factory, got {type(spec).__name__}.")
    return interval or "epoch"


def make_scheduler(
    spec: Any, optimizer: Optimizer, interval: str | None, steps_per_epoch: int | None, epochs: int, mode: str
) -> Any:
    """The scheduler of ``spec`` over ``optimizer`` for a run of ``epochs`` epochs (``mode``: the
    monitored value's direction, for ``"plateau"``)."""
    if spec is None:
        return None
    if is_scheduler(spec):
        return spec
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        scheduler = spec(optimizer)
        if not is_scheduler(scheduler):
            raise TypeError(f"The scheduler factory returned {type(scheduler).__name__}, not a torch scheduler.")
        return scheduler
    name, options = _named(spec, "scheduler")
    options.pop("interval", None)
    lr_scheduler = torch.optim.lr_scheduler
    total = None
    if interval == "step":
        if steps_per_epoch is None:
            raise ValueError(
                f"scheduler {name!r} steps every batch and needs the number of steps: use a loader with a length."
            )
        total = steps_per_epoch * epochs
    try:
        if name == "cosine":
            return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total if total else epochs, **options)
        if name == "onecycle":
            lrs = [group["lr"] for group in optimizer.param_groups]
            return lr_scheduler.OneCycleLR(optimizer, max_lr=lrs, total_steps=total, **options)
        if name == "step":
            options.setdefault("step_size", max(1, (total or epochs) // 3))
            return lr_scheduler.StepLR(optimizer, **options)
        if name == "exponential":
            options.setdefault("gamma", 0.9)
            return lr_scheduler.ExponentialLR(optimizer, **options)
        options.setdefault("mode", mode)
        return lr_scheduler.ReduceLROnPlateau(optimizer, **options)
    except TypeError as err:
        raise ValueError(f"Scheduler {name!r}: {err}.") from None


def check_baselines(
    baselines: Any, tasks: Mapping[str, Task], metrics: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """``{task: {metric: score}}`` of given single-task scores (a bare number is the main metric's)."""
    if not isinstance(baselines, Mapping) or not baselines:
        raise ValueError(f"baselines must be 'train' or a non-empty mapping {{task: score}}, got {baselines!r}.")
    out: dict[str, dict[str, float]] = {}
    for task, value in baselines.items():
        if task not in tasks:
            raise ValueError(f"baselines name task {task!r}, which is not trained; tasks: {list(tasks)}.")
        names = metric_names(tasks[task], metrics.get(task))
        if isinstance(value, Mapping):
            scores = dict(value)
        else:
            scores = {main_metric(tasks[task], metrics.get(task))[0]: value}
        for metric, score in scores.items():
            if metric not in names:
                raise ValueError(f"baselines[{task!r}] names metric {metric!r}; the task's metrics are {list(names)}.")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) or score == 0:
                raise ValueError(
                    f"The baseline of {task}/{metric} must be a finite, non-zero number (Δm divides by it), got {score!r}."
                )
        out[task] = {m: float(s) for m, s in scores.items()}
    return out


def check_baselines_setting(
    baselines: Any,
    tasks: Mapping[str, Task],
    metrics: Mapping[str, Any],
    optimizer: Any,
    scheduler: Any,
    model_factory: Any,
    model: nn.Module,
) -> dict[str, dict[str, float]] | None:
    """The given baselines (None for none, or for ``"train"``, which trains them at fit time), after
    checking that ``"train"`` can build a fresh optimizer, scheduler and model per baseline."""
    if baselines is None:
        return None
    if baselines != "train":
        return check_baselines(baselines, tasks, metrics)
    if isinstance(optimizer, Optimizer) or is_scheduler(scheduler):
        raise ValueError(
            "baselines='train' builds a fresh optimizer and scheduler for every baseline: give them by "
            "name, as a dict or as a factory, not as objects bound to this model's parameters."
        )
    if model_factory is None and isinstance(model, nn.parallel.DistributedDataParallel):
        raise ValueError("baselines='train' with a DDP model needs model_factory= to build each baseline.")
    return None


def check_checkpoint(checkpoint: str | None, out_dir: Any, every: int | None) -> str:
    """The checkpoint mode (``None`` is ``"none"``), consistent with ``out_dir`` and ``checkpoint_every``."""
    if checkpoint is None:
        checkpoint = "none"
    if checkpoint not in CHECKPOINT_MODES:
        raise ValueError(
            f"checkpoint={checkpoint!r} is not valid; choose one of {', '.join(CHECKPOINT_MODES)}."
            f"{did_you_mean(checkpoint, CHECKPOINT_MODES)}"
        )
    if every is not None and (out_dir is None or "last" not in checkpoint):
        raise ValueError(
            "checkpoint_every saves last.pt within epochs: set out_dir= and checkpoint='last' or 'last+best'."
        )
    return checkpoint


def fit_monitor(setting: str | None, with_baselines: bool, with_patience: bool, has_val: bool) -> str:
    """The monitored value of a fit: ``setting``, or ``"val/delta_m"`` with baselines, ``"val/loss"``
    without, ``"train/loss"`` without validation data (when nothing needs validation scores)."""
    monitor = setting if setting is not None else "val/delta_m" if with_baselines else "val/loss"
    if not has_val and monitor.startswith("val/"):
        if setting is not None or with_patience or monitor == "val/delta_m":
            raise ValueError(
                f"monitor={monitor!r} (early stopping, baselines, Δm) needs validation scores: pass val_loader=, "
                "or monitor a training loss (monitor='train/loss')."
            )
        monitor = "train/loss"
    return monitor


def check_monitor(monitor: str, tasks: Mapping[str, Task], metrics: Mapping[str, Any]) -> None:
    """Raise when ``monitor`` names no value the trainer records."""
    if monitor in ("val/loss", "train/loss", "val/delta_m"):
        return
    parts = monitor.split("/") if isinstance(monitor, str) else []
    if len(parts) == 3 and parts[0] in ("train", "val") and parts[1] in tasks:
        split, task, metric = parts
        if metric == "loss":
            return
        names = metric_names(tasks[task], metrics.get(task))
        if split == "val" and metric in names:
            return
        raise ValueError(
            f"monitor={monitor!r}: task {task!r} has no {split} metric {metric!r}; "
            f"use 'val/{task}/<metric>' with one of {['loss', *names]}, or 'train/{task}/loss'."
        )
    raise ValueError(
        f"monitor={monitor!r} is not valid; use 'val/loss', 'val/delta_m', 'train/loss', 'val/<task>/<metric>' "
        f"or '<split>/<task>/loss' with a task among {list(tasks)}."
    )


def resolve_mode(mode: str, monitor: str) -> str:
    """``"min"`` or ``"max"``: ``mode``, or with ``"auto"`` the direction of the monitored value."""
    if mode != "auto":
        return mode
    metric = monitor.rsplit("/", 1)[-1]
    if metric == "loss":
        return "min"
    if metric == "delta_m":
        return "max"
    return "max" if higher_is_better(metric) else "min"


def is_scheduler(obj: Any) -> bool:
    """Whether ``obj`` is a torch learning-rate scheduler."""
    return isinstance(obj, (LRScheduler, ReduceLROnPlateau))


def _named(spec: str | Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec.strip().lower(), {}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"A {what} given as a mapping needs a 'name' key, e.g. {{'name': 'step', 'step_size': 5}}; got {spec!r}.")
    options = dict(spec)
    return str(options.pop("name")).strip().lower(), options
