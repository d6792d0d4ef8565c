"""One YAML file for a whole run: tasks, data, sampler, loader, model, balancer, trainer.

A config is validated as a whole before anything is built: an unknown key, a wrong type, a value
outside its range or its choices, a balancer or a task name that does not exist is a
:class:`ConfigError` that names the key (``sampler.schedule``), what was found, and what is allowed
(with the closest valid name). Numbers may be written as YAML reads them (``lr: 1e-3`` is a string to
PyYAML, and accepted). Example::

    seed: 0
    tasks:
      ones: {kind: binary}
      fives: {kind: binary}
    data:
      train:                      # one dataset per task ...
        ones:  {source: inline, samples: [{input: 1.0, label: 1, count: 5}, {input: -1.0, label: 0, count: 5}]}
        fives: {source: inline, samples: [{input: 5.0, label: 1, count: 50}, {input: -5.0, label: 0, count: 5}]}
      # ... or one dataset for all tasks: train: {source: builtin, name: multi_mnist, split: train}
      split: {val: 0.2, seed: 0}  # or a val: section of its own
    sampler: {batch_size: 8, schedule: round_robin, balance: {fives: inverse}}
    model: {backbone: {name: mlp, hidden: [32]}, init_output_bias: true}
    balancer: {name: uw}
    trainer: {epochs: 3, lr: 0.001}

See ``docs/config.md`` for every key. :func:`config_key` turns the errors of what a section builds (the
model, the sampler, the trainer) into a ``ConfigError`` naming that section.
"""

from __future__ import annotations

import codecs
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hydranet._checks import check_bool, check_int, check_number, did_you_mean

__all__ = [
    "SCHEMA",
    "SOURCE_KEYS",
    "Config",
    "ConfigError",
    "config_key",
    "load_config",
    "parse_override",
    "task_names",
    "validate_config",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""


Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Key:
    """One allowed key: its accepted types, default and, where finite, its choices.

    ``check(name, value) -> value`` replaces the type check where given (numbers written as strings,
    ranges); ``choices`` may be a function returning them (names of a registry, read when checked).
    """

    types: tuple[type, ...]
    default: Any = None
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] | None = None
    required: bool = False
    doc: str = ""
    check: Check | None = None


def _int(low: int | None = None, high: int | None = None) -> Check:
    return lambda name, value: check_int(name, value, low, high)


def _number(low: float | None = None, high: float | None = None, *, strict: bool = False) -> Check:
    return lambda name, value: check_number(name, value, low, high, strict=strict)


def _bool(name: str, value: Any) -> bool:
    try:
        return check_bool(name, value)
    except TypeError:  # check_bool speaks Python (True or False); a config says true or false
        raise TypeError(f"{name} must be true or false, got {value!r}.") from None


def _architectures() -> tuple[str, ...]:
    from hydranet.models import ARCHITECTURES

    return tuple(ARCHITECTURES)


def _optimizers() -> tuple[str, ...]:
    from hydranet.train._setup import OPTIMIZERS

    return tuple(OPTIMIZERS)


_num = (int, float)
_strmap = (str, dict)

TASK_KEYS: dict[str, Key] = {
    "kind": Key((str,), required=True, choices=("regression", "binary", "multiclass", "multilabel")),
    "num_classes": Key((int,), check=_int(1)),
    "dim": Key((int,), check=_int(1)),
    "loss": Key((str,)),
    "loss_options": Key((dict,), default={}),
    "metrics": Key((list,)),
    "class_names": Key((list,)),
    "ragged": Key((bool,), default=False),
    "weight": Key(_num, default=1.0, check=_number(0.0)),
}

SAMPLER_KEYS: dict[str, Key] = {
    "batch_size": Key((int,), default=32, check=_int(1)),
    "schedule": Key(_strmap, default=None, doc="round_robin | proportional | temperature | joint | {task: weight}"),
    "quotas": Key((dict,), doc="{task: samples per batch}; must sum to batch_size"),
    "balance": Key(_strmap, doc="inverse | sqrt | effective | repeat_factor | {task: strategy}"),
    "length": Key((str, int), default="max_size_cycle", doc="max_size_cycle | min_size | all | batches per epoch"),
    "temperature": Key(_num, default=2.0, check=_number(0.0, strict=True)),
    "size_cap": Key((int,), check=_int(1)),
    "drop_last": Key((bool,), default=False),
    "replacement": Key((bool,), default=False),
}

LOADER_KEYS: dict[str, Key] = {
    "num_workers": Key((int,), default=0, check=_int(0)),
    "pin_memory": Key((bool,), default=False),
    "persistent_workers": Key((bool,), default=False),
    "prefetch_factor": Key((int,), check=_int(1)),
}

MODEL_KEYS: dict[str, Key] = {
    "architecture": Key((str,), default="hydra", choices=_architectures),
    "backbone": Key((dict, str), default={"name": "mlp"}),
    "head": Key(_strmap, default="linear", doc="linear | mlp | {task: linear|mlp}"),
    "hidden": Key((list, int)),
    "dropout": Key(_num, default=0.0, check=_number(0.0, 1.0)),
    "options": Key((dict,), default={}, doc="extra arguments of the architecture (experts, levels, ...)"),
    "init_output_bias": Key((bool, dict), default=False, doc="true | {balanced: [task, ...]}"),
}

TRAINER_KEYS: dict[str, Key] = {
    "epochs": Key((int,), default=10, check=_int(1)),
    "optimizer": Key((str,), default="adamw", choices=_optimizers),
    "lr": Key(_num, default=1e-3, check=_number(0.0, strict=True)),
    "weight_decay": Key(_num, default=0.0, check=_number(0.0)),
    "scheduler": Key((str, dict)),
    "grad_clip": Key(_num, check=_number(0.0, strict=True)),
    "accumulate": Key((int,), default=1, check=_int(1)),
    "amp": Key((str,), choices=("bf16", "fp16")),
    "device": Key((str,), default="auto"),
    "monitor": Key((str,)),
    "mode": Key((str,), default="auto", choices=("auto", "min", "max")),
    "patience": Key((int,), check=_int(1)),
    "min_delta": Key(_num, default=0.0, check=_number(0.0)),
    "checkpoint_every": Key((int,), check=_int(1)),
    "baselines": Key((str, dict), doc="'train' or {task: score}"),
    "progress": Key((bool,), default=True),
}

TOP_KEYS: dict[str, Key] = {
    "seed": Key((int,), default=0, check=_int(0)),
    "output": Key((str,), default="runs/hydranet"),
    "tasks": Key((dict,), default={}),
    "data": Key((dict,), required=True),
    "sampler": Key((dict,), default={}),
    "loader": Key((dict,), default={}),
    "model": Key((dict,), default={}),
    "balancer": Key((dict, str), default={"name": "ew"}),
    "trainer": Key((dict,), default={}),
}

SECTIONS: dict[str, dict[str, Key]] = {
    "sampler": SAMPLER_KEYS,
    "loader": LOADER_KEYS,
    "model": MODEL_KEYS,
    "trainer": TRAINER_KEYS,
}

_IMAGES = {"tasks", "image_size", "verify", "on_error", "extensions"}

#: Data sources: name -> (required keys, optional keys). Builders live in hydranet.cli.sources.
SOURCE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "inline": ({"samples"}, set()),
    "builtin": ({"name"}, {"split", "options"}),
    "npz": ({"path", "inputs"}, {"labels"}),
    "csv": (
        {"path"},
        _IMAGES - {"extensions"}
        | {"path_column", "feature_columns", "root", "encoding", "duplicates", "allow_outside_root", "delimiter"},
    ),
    "folder": ({"path"}, _IMAGES | {"pattern", "separator", "recursive"}),
    "filenames": ({"path", "pattern"}, _IMAGES | {"recursive"}),
    "hf": ({"path"}, {"split", "input", "tasks", "data_files", "cache_dir", "image_size", "unknown"}),
}

SPLITS = ("train", "val", "test")
#: ``data.split``: one source cut into train / val / test (see :meth:`hydranet.data.readers.ReaderDataset.split`).
SPLIT_KEYS: dict[str, Key] = {
    "val": Key(_num, check=_number(0.0, 1.0, strict=False)),
    "test": Key(_num, check=_number(0.0, 1.0, strict=False)),
    "seed": Key((int,), check=_int(0)),
    "stratify": Key((str,), default="auto", doc="a class task, auto (the first one), or null"),
}

SCHEMA = {"top": TOP_KEYS, **SECTIONS, "task": TASK_KEYS, "data.split": SPLIT_KEYS}


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", dict: "mapping", list: "list", bool: "true/false"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _unknown(key: str, allowed: Mapping[str, Any] | set[str], path: str) -> ConfigError:
    hint = did_you_mean(key, allowed)
    return ConfigError(f"Unknown key '{path}{key}'.{hint} Allowed keys: {', '.join(sorted(allowed))}.")


def _checked(check: Check, name: str, value: Any) -> Any:
    """``check(name, value)``, its ValueError / TypeError as a ConfigError."""
    try:
        return check(name, value)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from err


def _choice(path: str, value: Any, choices: tuple[Any, ...], what: str = "") -> Any:
    if value in choices:
        return value
    hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
    label = f" {what}" if what else ""
    raise ConfigError(f"'{path}' is{label} {value!r};{hint} allowed values: {', '.join(map(str, choices))}.")


def _check_section(values: Any, keys: Mapping[str, Key], path: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{path.rstrip('.')}' must be a mapping of keys to values, got {type(values).__name__}.")
    for key in values:
        if key not in keys:
            raise _unknown(str(key), keys, path)
    out: dict[str, Any] = {}
    for name, key in keys.items():
        if name not in values or values[name] is None:
            if key.required:
                raise ConfigError(f"Missing required key '{path}{name}'.")
            out[name] = key.default
            continue
        value = values[name]
        if key.check is not None:
            value = _checked(key.check, f"'{path}{name}'", value)
        # bool is an int in Python; a 'true' where a number is expected is a mistake.
        elif (isinstance(value, bool) and bool not in key.types) or not isinstance(value, key.types):
            raise ConfigError(f"'{path}{name}' must be {_type_names(key.types)}, got {type(value).__name__} {value!r}.")
        if key.choices is not None:
            choices = key.choices() if callable(key.choices) else key.choices
            _choice(f"{path}{name}", value, choices)
        out[name] = value
    return out


# ------------------------------------------------------------------------------ data sources


def _image_size(name: str, value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2:
        return [check_int(f"{name}[{k}]", v, 1) for k, v in enumerate(value)]
    if isinstance(value, list):
        raise ValueError(f"{name} must be one size or [height, width], got {value!r}.")
    return check_int(name, value, 1, hint="pixels, or [height, width]")


def _verify(name: str, value: Any) -> Any:
    if value is True or value is False or value == "decode":
        return value
    raise ValueError(f"{name} must be true, false or decode, got {value!r}.")


def _one_of(*choices: str) -> Check:
    def check(name: str, value: Any) -> Any:
        if value in choices:
            return value
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}.{hint}")

    return check


def _strings(name: str, value: Any) -> Any:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise TypeError(f"{name} must be a name or a list of names, got {value!r}.")
    return value


def _string(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string, got {value!r}.")
    return value


def _encoding(name: str, value: Any) -> Any:
    _string(name, value)
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(
            f"{name} is {value!r}, which Python does not know; e.g. utf-8, utf-8-sig, latin-1, cp1252."
        ) from None
    return value


def _pattern(name: str, value: Any) -> Any:
    _string(name, value)
    try:
        compiled = re.compile(value)
    except re.error as err:
        raise ValueError(f"{name} is not a valid regular expression ({err}): {value!r}.") from None
    if not compiled.groupindex:
        raise ValueError(f"{name} needs one named group per task, e.g. (?P<age>\\d+)_(?P<gender>\\d)_; got {value!r}.")
    return value


def _tasks_option(name: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return _strings(name, value)


def _mapping(name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping, got {value!r}.")
    return dict(value)


#: Checks of the values of a source's keys (the keys themselves are in SOURCE_KEYS).
SOURCE_CHECKS: dict[str, Check] = {
    "path": _string,
    "inputs": _string,
    "labels": _strings,
    "name": _string,
    "split": _string,
    "options": _mapping,
    "samples": lambda name, value: value if isinstance(value, list) else _strings(name, None),
    "tasks": _tasks_option,
    "image_size": _image_size,
    "verify": _verify,
    "on_error": _one_of("error", "skip"),
    "unknown": _one_of("error", "missing"),
    "extensions": _strings,
    "pattern": _pattern,
    "separator": _string,
    "recursive": _bool,
    "path_column": _string,
    "feature_columns": _strings,
    "root": _string,
    "delimiter": _string,
    "encoding": _encoding,
    "duplicates": _one_of("error", "drop", "keep"),
    "allow_outside_root": _bool,
    "input": _strings,
    "data_files": lambda name, value: value if isinstance(value, Mapping) else _strings(name, value),
    "cache_dir": _string,
}


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


def _check_data(data: Mapping[str, Any], task_list: list[str]) -> dict[str, Any]:
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


def _source_tasks(spec: Mapping[str, Any], declared: list[str]) -> list[str] | None:
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


def task_names(cfg: Config) -> list[str] | None:
    """The tasks a config trains, known without reading data (declared, per-task data, what a source
    names: builtin data, a reader's ``tasks`` or pattern groups); None when only the data knows them."""
    declared = list(cfg.tasks)
    entry = cfg.data["train"]
    if "per_task" in entry:
        return declared
    found = _source_tasks(entry["shared"], declared)
    if found is None:
        return None
    return list(dict.fromkeys([*found, *declared]))


# ------------------------------------------------------------------------------ cross-checks


def _check_task(path: str, task: Any, known: list[str] | None) -> None:
    if known is not None and task not in known:
        raise ConfigError(
            f"'{path}' names the task {task!r}, which the config does not have.{did_you_mean(task, known)} Tasks: {', '.join(known)}."
        )


def _check_sampler(sampler: dict[str, Any], known: list[str] | None) -> None:
    from hydranet.data.balance import BALANCE_METHODS
    from hydranet.data.sampler import LENGTHS
    from hydranet.data.schedule import SCHEDULES

    schedule = sampler["schedule"]
    if isinstance(schedule, str):
        _choice("sampler.schedule", schedule, (*SCHEDULES, "joint"))
    elif isinstance(schedule, Mapping):
        for task, weight in schedule.items():
            _check_task(f"sampler.schedule.{task}", task, known)
            _checked(_number(0.0), f"'sampler.schedule.{task}'", weight)
    balance = sampler["balance"]
    if isinstance(balance, str):
        _choice("sampler.balance", balance, BALANCE_METHODS)
    elif isinstance(balance, Mapping):
        for task, method in balance.items():
            _check_task(f"sampler.balance.{task}", task, known)
            if method is not None:
                _choice(f"sampler.balance.{task}", method, BALANCE_METHODS)
    quotas = sampler["quotas"]
    if quotas is not None:
        if schedule is not None:
            raise ConfigError(
                "'sampler.quotas' and 'sampler.schedule' exclude each other: quota batches follow no schedule."
            )
        for task, n in quotas.items():
            _check_task(f"sampler.quotas.{task}", task, known)
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


def _check_model(model: dict[str, Any], known: list[str] | None) -> None:
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
            _check_task(f"model.head.{task}", task, known)
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
            _check_task("model.init_output_bias.balanced", task, known)


def _check_balancer(raw: Any) -> dict[str, Any]:
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


def _check_trainer(trainer: dict[str, Any], known: list[str] | None, tasks: dict[str, dict[str, Any]]) -> None:
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
            _check_task(f"trainer.baselines.{task}", task, known)
    monitor = trainer["monitor"]
    if monitor is None or monitor in ("val/loss", "train/loss", "val/delta_m"):
        return
    parts = monitor.split("/")
    if len(parts) != 3 or parts[0] not in ("train", "val"):
        raise ConfigError(
            f"'trainer.monitor' is {monitor!r}; use val/loss, val/delta_m, train/loss, val/TASK/METRIC or SPLIT/TASK/loss."
        )
    split, task, metric = parts
    _check_task("trainer.monitor", task, known)
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


@dataclass
class Config:
    """A validated config: plain dicts per section, defaults filled in."""

    seed: int
    output: str
    tasks: dict[str, dict[str, Any]]
    data: dict[str, Any]
    sampler: dict[str, Any]
    loader: dict[str, Any]
    model: dict[str, Any]
    balancer: dict[str, Any]
    trainer: dict[str, Any]
    source: Path | None = None
    #: Datasets built from this config, kept for the other splits (one read of a source cut by data.split).
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return (self.source.parent / p).resolve()


def _check_tasks(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
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


def validate_config(raw: Any, source: Path | None = None) -> Config:
    """Check a parsed YAML document as a whole and fill in defaults (nothing is built or read)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"A config must be a YAML mapping at the top level, got {type(raw).__name__}.")
    top = _check_section(raw, TOP_KEYS, "")
    tasks = _check_tasks(top["tasks"])
    sections = {name: _check_section(top[name], keys, f"{name}.") for name, keys in SECTIONS.items()}
    balancer = _check_balancer(top["balancer"])
    data = _check_data(top["data"], list(tasks))
    from hydranet.balancing import WEIGHTINGS  # bilevel weightings (auto_lambda) learn their weights on val batches

    method = WEIGHTINGS.get(balancer["name"])
    if getattr(method, "needs_validation", False) and not {"val", "split"} & set(data):
        raise ConfigError(
            f"'balancer: {balancer['name']}' learns its task weights on validation batches: add data.val or data.split."
        )
    if "split" in data and data["split"]["seed"] is None:
        data["split"]["seed"] = top["seed"]
    cfg = Config(
        seed=top["seed"], output=top["output"], tasks=tasks, data=data, balancer=balancer, source=source, **sections
    )
    known = task_names(cfg)
    if "split" in data and data["split"]["stratify"] not in (None, "auto"):
        _check_task("data.split.stratify", data["split"]["stratify"], known)
    for split in ("val", "test"):
        entry = data.get(split, {})
        for task in entry.get("per_task", {}):
            _check_task(f"data.{split}.{task}", task, known)
    _check_sampler(cfg.sampler, known)
    _check_model(cfg.model, known)
    _check_trainer(cfg.trainer, known, tasks)
    return cfg


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate a YAML config. ``overrides`` maps dotted keys to values (``trainer.epochs``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start}); is it a config?") from err
    raw = raw or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return validate_config(raw, source=path.resolve())


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Cannot set '{dotted}': '{key}' is not a mapping.")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``trainer.epochs=3`` -> ("trainer.epochs", 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key.subkey=value.")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


@contextmanager
def config_key(path: str) -> Iterator[None]:
    """Turn a ``ValueError`` / ``TypeError`` raised on purpose while building what ``path`` describes (the
    model, the sampler, the trainer) into a :class:`ConfigError` naming ``path``. Errors of another kind,
    or raised by a failing operation rather than a ``raise`` (a bug), pass unchanged."""
    from hydranet.cli.errors import one_line, raised_on_purpose

    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        if isinstance(err, UnicodeError) or not raised_on_purpose(err):
            raise
        raise ConfigError(f"'{path}': {one_line(err)}") from err
