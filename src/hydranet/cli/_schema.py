"""The key tables of a config's sections and the checks of single values (no cross-key checks).

Each section (``top``, ``sampler``, ``loader``, ``model``, ``trainer``, a task, ``data.split``) is a table
of :class:`Key`: accepted types, default, choices, a value check. :data:`SOURCE_KEYS` and
:data:`SOURCE_CHECKS` describe the data sources. :func:`_check_section` checks one section against its
table. The checks across keys and against registries and task names live in
:mod:`hydranet.cli._config_checks`; the public face is :mod:`hydranet.cli.config`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hydranet._checks import check_bool, check_int, check_number, did_you_mean

__all__ = [
    "LOADER_KEYS",
    "MODEL_KEYS",
    "SAMPLER_KEYS",
    "SCHEMA",
    "SECTIONS",
    "SOURCE_CHECKS",
    "SOURCE_KEYS",
    "SPLITS",
    "SPLIT_KEYS",
    "TASK_KEYS",
    "TOP_KEYS",
    "TRAINER_KEYS",
    "Check",
    "ConfigError",
    "Key",
]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""

    # Raised from the private modules, named by its public home (tracebacks, pickles, error mapping).
    __module__ = "hydranet.cli.config"


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
