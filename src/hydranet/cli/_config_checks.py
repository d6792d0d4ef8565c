"""The checks of a config across keys: data sources and splits, names against the registries
(schedules, balance methods, backbones, balancers, schedulers, metrics) and against the config's tasks.

Each takes a section already checked against its table (:mod:`hydranet.cli._schema`) and raises a
:class:`~hydranet.cli.config.ConfigError` naming the key, what was found and what is allowed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any

from hydranet._checks import did_you_mean
from hydranet.cli._schema import (
    SOURCE_CHECKS,
    SOURCE_KEYS,
    SPLIT_KEYS,
    SPLITS,
    TASK_KEYS,
    ConfigError,
    _check_section,
    _checked,
    _choice,
    _int,
    _number,
    _unknown,
)

__all__ = [
    "check_balancer",
    "check_data",
    "check_model",
    "check_sampler",
    "check_task",
    "check_tasks",
    "check_trainer",
    "source_tasks",
]


def _check_source(spec: Any, path: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or "source" not in spec:
        raise ConfigError(
            f"'{path}' must be a data source mapping with a 'source' key ({', '.join(SOURCE_KEYS)}), got {spec!r}."
        )
    source = spec["source"]
    _choice(f"{path}.source", source, tuple(SOURCE_KEYS))
    required, optional = SOURCE_KEYS[source]
    allowed = required | optional | {"source"}
    for key in spec:
        if key not in allowed:
            raise _unknown(str(key), allowed, f"{path}.")
    for key in sorted(required):
        if key not in spec:
            raise ConfigError(f"Missing required key '{path}.{key}' for source '{source}'.")
    out = {"source": source}
    for key, value in spec.items():
        if key != "source" and value is not None:
            out[key] = _checked(SOURCE_CHECKS[key], f"'{path}.{key}'", value)
    if source == "builtin":
        _choice(f"{path}.split", out.get("split", "train"), SPLITS)
    return out


def _check_split(spec: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    split = _check_section(spec, SPLIT_KEYS, "data.split.")
    shares = {part: split[part] for part in ("val", "test") if split[part]}
    if not shares:
        raise ConfigError(
            "'data.split' needs val and/or test shares, e.g. {val: 0.1, test: 0.1}; train takes the rest."
        )
    if sum(shares.values()) >= 1:
        raise ConfigError(
            f"'data.split': val + test must be below 1 (train takes the rest), got {sum(shares.values()):g}."
        )
    for part in shares:
        if part in data:
            raise ConfigError(
                f"'data.split.{part}' and 'data.{part}' both give a {part} set: keep one (a share of data.train, or "
                "a source of its own)."
            )
    train = data["train"]
    if isinstance(train, Mapping) and train.get("source") == "builtin":
        raise ConfigError(
            "'data.split': builtin data has its own splits; use data.val: {source: builtin, name: ..., split: val}."
        )
    return split


def check_data(data: Mapping[str, Any], task_list: list[str]) -> dict[str, Any]:
    for key in data:
        if key not in (*SPLITS, "split"):
            raise _unknown(str(key), {*SPLITS, "split"}, "data.")
    if "train" not in data:
        raise ConfigError("Missing required key 'data.train'.")
    out: dict[str, Any] = {}
    for split, spec in data.items():
        if split == "split":
            out["split"] = _check_split(spec, data)
            continue
        if isinstance(spec, Mapping) and "source" in spec:
            out[split] = {"shared": _check_source(spec, f"data.{split}")}
            continue
        if not isinstance(spec, Mapping) or not spec:
            raise ConfigError(
                f"'data.{split}' must be one source ({{source: ...}}) shared by all tasks, "
                f"or a mapping {{task: source}}; got {spec!r}."
            )
        for task in spec:
            if task not in task_list:
                raise ConfigError(
                    f"'data.{split}.{task}' names a task that is not declared under 'tasks'."
                    f"{did_you_mean(task, task_list)} Declared: {', '.join(task_list) or 'none'}."
                )
        out[split] = {"per_task": {t: _check_source(s, f"data.{split}.{t}") for t, s in spec.items()}}
    return out


def source_tasks(spec: Mapping[str, Any], declared: list[str]) -> list[str] | None:
    """The task names a shared source gives, known without reading it; None when only the data says."""
    kind = spec["source"]
    named = spec.get("tasks")
    if isinstance(named, Mapping):
        return list(named)
    if named is not None:
        return [named] if isinstance(named, str) else list(named)
    if kind == "builtin" and spec["name"] == "multi_mnist":
        from hydranet.data.builtin import multi_mnist_tasks

        return [t.name for t in multi_mnist_tasks()]
    if kind in ("filenames", "folder") and "pattern" in spec:
        return list(re.compile(spec["pattern"]).groupindex)
    if kind == "folder" and "separator" not in spec:
        return ["label"]  # read_folders: the whole folder name is the label of one task
    if kind == "npz":
        labels = spec.get("labels")
        return ([labels] if isinstance(labels, str) else list(labels)) if labels else list(declared)
    return None


def check_task(path: str, task: Any, known: list[str] | None) -> None:
    if known is not None and task not in known:
        raise ConfigError(
            f"'{path}' names the task {task!r}, which the config does not have.{did_you_mean(task, known)} Tasks: {', '.join(known)}."
        )


def check_sampler(sampler: dict[str, Any], known: list[str] | None) -> None:
    from hydranet.data.balance import BALANCE_METHODS
    from hydranet.data.sampler import LENGTHS
    from hydranet.data.schedule import SCHEDULES

    schedule = sampler["schedule"]
    if isinstance(schedule, str):
        _choice("sampler.schedule", schedule, (*SCHEDULES, "joint"))
    elif isinstance(schedule, Mapping):
        for task, weight in schedule.items():
            check_task(f"sampler.schedule.{task}", task, known)
            _checked(_number(0.0), f"'sampler.schedule.{task}'", weight)
    balance = sampler["balance"]
    if isinstance(balance, str):
        _choice("sampler.balance", balance, BALANCE_METHODS)
    elif isinstance(balance, Mapping):
        for task, method in balance.items():
            check_task(f"sampler.balance.{task}", task, known)
            if method is not None:
                _choice(f"sampler.balance.{task}", method, BALANCE_METHODS)
    quotas = sampler["quotas"]
    if quotas is not None:
        if schedule is not None:
            raise ConfigError(
                "'sampler.quotas' and 'sampler.schedule' exclude each other: quota batches follow no schedule."
            )
        for task, n in quotas.items():
            check_task(f"sampler.quotas.{task}", task, known)
            _checked(_int(1), f"'sampler.quotas.{task}'", n)
        total = sum(quotas.values())
        if total != sampler["batch_size"]:
            raise ConfigError(
                f"'sampler.quotas' sum to {total}, but 'sampler.batch_size' is {sampler['batch_size']}: make them equal."
            )
    length = sampler["length"]
    if isinstance(length, str):
        _choice("sampler.length", length, LENGTHS)
    else:
        _checked(_int(1), "'sampler.length'", length)


def check_model(model: dict[str, Any], known: list[str] | None) -> None:
    from hydranet.models import BACKBONES

    backbone = model["backbone"]
    name = backbone if isinstance(backbone, str) else backbone.get("name")
    if not isinstance(name, str):
        raise ConfigError(
            f"'model.backbone' needs a name ({', '.join(BACKBONES)}, torchvision:NAME, timm:NAME); got {backbone!r}."
        )
    if ":" not in name:
        _choice("model.backbone.name" if isinstance(backbone, dict) else "model.backbone", name, tuple(BACKBONES))
    head = model["head"]
    for task, kind in head.items() if isinstance(head, Mapping) else [(None, head)]:
        if task is not None:
            check_task(f"model.head.{task}", task, known)
        _choice("model.head" + (f".{task}" if task is not None else ""), kind, ("linear", "mlp"))
    hidden = model["hidden"]
    if hidden is not None:
        for k, width in enumerate(hidden if isinstance(hidden, list) else [hidden]):
            _checked(_int(1), f"'model.hidden[{k}]'" if isinstance(hidden, list) else "'model.hidden'", width)
    bias = model["init_output_bias"]
    if isinstance(bias, Mapping):
        unknown = set(bias) - {"balanced"}
        if unknown:
            raise _unknown(str(sorted(unknown)[0]), {"balanced"}, "model.init_output_bias.")
        balanced = bias.get("balanced") or []
        if not isinstance(balanced, list):
            raise ConfigError(f"'model.init_output_bias.balanced' must be a list of tasks, got {balanced!r}.")
        for task in balanced:
            check_task("model.init_output_bias.balanced", task, known)


def check_balancer(raw: Any) -> dict[str, Any]:
    from hydranet.balancing import AGGREGATORS, WEIGHTINGS

    path = "balancer" if isinstance(raw, str) else "balancer.name"
    balancer = {"name": raw} if isinstance(raw, str) else dict(raw)
    name = balancer.get("name")
    if not isinstance(name, str):
        raise ConfigError(
            "'balancer.name' is required: a weighting (ew, uw, dwa, ...) or an aggregator (pcgrad, upgrad, ...)."
        )
    key = name.strip().lower().replace("-", "_")
    if key not in WEIGHTINGS and key not in AGGREGATORS:
        raise ConfigError(
            f"'{path}': unknown balancer {name!r}.{did_you_mean(key, [*WEIGHTINGS, *AGGREGATORS])} Loss weightings: "
            f"{', '.join(sorted(WEIGHTINGS))}; gradient aggregators: {', '.join(sorted(AGGREGATORS))}."
        )
    balancer["name"] = key
    # The settings the method's constructor takes (a weighting's first argument is the tasks), and the
    # Balancer's own (see hydranet.balancing.make).
    cls, skip = (WEIGHTINGS[key], 1) if key in WEIGHTINGS else (AGGREGATORS[key], 0)
    parameters = list(inspect.signature(cls).parameters.values())
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        allowed = [p.name for p in parameters[skip:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        allowed += ["jacobian", "normalize", "chunk_size"]
        for setting in balancer:
            if setting != "name" and setting not in allowed:
                raise ConfigError(
                    f"Unknown key 'balancer.{setting}': {key!r} has no such setting.{did_you_mean(setting, allowed)} "
                    f"Its settings: {', '.join(allowed)}."
                )
    return balancer


def check_trainer(trainer: dict[str, Any], known: list[str] | None, tasks: dict[str, dict[str, Any]]) -> None:
    from hydranet.train._setup import SCHEDULERS

    scheduler = trainer["scheduler"]
    if scheduler is not None:
        name = scheduler.get("name") if isinstance(scheduler, Mapping) else scheduler
        _choice("trainer.scheduler" + (".name" if isinstance(scheduler, Mapping) else ""), name, tuple(SCHEDULERS))
    baselines = trainer["baselines"]
    if isinstance(baselines, str):
        _choice("trainer.baselines", baselines, ("train",))
    elif isinstance(baselines, Mapping):
        for task in baselines:
            check_task(f"trainer.baselines.{task}", task, known)
    monitor = trainer["monitor"]
    if monitor is None or monitor in ("val/loss", "train/loss", "val/delta_m"):
        return
    parts = monitor.split("/")
    if len(parts) != 3 or parts[0] not in ("train", "val"):
        raise ConfigError(
            f"'trainer.monitor' is {monitor!r}; use val/loss, val/delta_m, train/loss, val/TASK/METRIC or SPLIT/TASK/loss."
        )
    split, task, metric = parts
    check_task("trainer.monitor", task, known)
    if metric == "loss" or task not in tasks:
        return  # the kind of a task the data defines is known once it is read (the trainer checks then)
    from hydranet.metrics import metric_names
    from hydranet.tasks import Task

    names = metric_names(Task(name=task, **tasks[task]), tasks[task].get("metrics"))
    if split != "val" or metric not in names:
        raise ConfigError(
            f"'trainer.monitor' is {monitor!r}: task {task!r} has no {split} metric {metric!r}.{did_you_mean(metric, names)} "
            f"Use val/{task}/METRIC with one of loss, {', '.join(names)}, or train/{task}/loss."
        )


def check_tasks(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    from hydranet.tasks import Task

    tasks = {}
    for name, spec in raw.items():
        checked = _check_section(spec or {}, TASK_KEYS, f"tasks.{name}.")
        try:  # the Task's own checks (num_classes against kind, class_names, loss), before any data
            Task(name=str(name), **checked)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"'tasks.{name}': {err}") from err
        tasks[str(name)] = checked
    return tasks
