"""One YAML file for a whole run: tasks, data, sampler, loader, model, balancer, trainer.

A config is validated as a whole before anything is built: an unknown key, a wrong type or a value
outside its choices is a :class:`ConfigError` that names the key (``sampler.schedule``), what was
found, and what is allowed. Example::

    seed: 0
    tasks:
      ones: {kind: binary}
      fives: {kind: binary}
    data:
      train:                      # one dataset per task ...
        ones:  {source: inline, samples: [{input: 1.0, label: 1, count: 5}, {input: -1.0, label: 0, count: 5}]}
        fives: {source: inline, samples: [{input: 5.0, label: 1, count: 50}, {input: -5.0, label: 0, count: 5}]}
      # ... or one dataset for all tasks: train: {source: builtin, name: multi_mnist, split: train}
    sampler: {batch_size: 8, schedule: round_robin, balance: {fives: inverse}}
    model: {backbone: {name: mlp, hidden: [32]}}
    balancer: {name: uw}
    trainer: {epochs: 3, lr: 0.001}

See ``docs/config.md`` for every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hydranet._checks import did_you_mean

__all__ = ["ConfigError", "Config", "load_config", "validate_config", "SCHEMA"]


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""


ANY = object()  # marks free-form sub-mappings (settings passed through to a constructor)


@dataclass(frozen=True)
class Key:
    """One allowed key: its accepted types, default and, where finite, its choices."""

    types: tuple[type, ...] | Any
    default: Any = None
    choices: tuple[Any, ...] | None = None
    required: bool = False
    doc: str = ""


_num = (int, float)
_intlike = (int,)
_strmap = (str, dict)

TASK_KEYS: dict[str, Key] = {
    "kind": Key((str,), required=True, choices=("regression", "binary", "multiclass", "multilabel")),
    "num_classes": Key(_intlike),
    "dim": Key(_intlike),
    "loss": Key((str,)),
    "loss_options": Key((dict,), default={}),
    "metrics": Key((list,)),
    "class_names": Key((list,)),
    "ragged": Key((bool,), default=False),
    "weight": Key(_num, default=1.0),
}

SAMPLER_KEYS: dict[str, Key] = {
    "batch_size": Key(_intlike, default=32),
    "schedule": Key(_strmap, default=None, doc="round_robin | proportional | temperature | joint | {task: weight}"),
    "quotas": Key((dict,), doc="{task: samples per batch}; must sum to batch_size"),
    "balance": Key(_strmap, doc="inverse | sqrt | effective | repeat_factor | {task: strategy}"),
    "length": Key((str, int), default="max_size_cycle", doc="max_size_cycle | min_size | all | batches per epoch"),
    "temperature": Key(_num, default=2.0),
    "size_cap": Key(_intlike),
    "drop_last": Key((bool,), default=False),
    "replacement": Key((bool,), default=False),
}

LOADER_KEYS: dict[str, Key] = {
    "num_workers": Key(_intlike, default=0),
    "pin_memory": Key((bool,), default=False),
    "persistent_workers": Key((bool,), default=False),
    "prefetch_factor": Key(_intlike),
}

MODEL_KEYS: dict[str, Key] = {
    "architecture": Key((str,), default="hydra", choices=("hydra", "mmoe", "cgc", "ple", "cross_stitch")),
    "backbone": Key((dict, str), default={"name": "mlp"}),
    "head": Key(_strmap, default="linear", doc="linear | mlp | {task: linear|mlp}"),
    "hidden": Key((list, int)),
    "dropout": Key(_num, default=0.0),
    "options": Key((dict,), default={}, doc="extra arguments of the architecture (experts, levels, ...)"),
}

TRAINER_KEYS: dict[str, Key] = {
    "epochs": Key(_intlike, default=10),
    "optimizer": Key((str,), default="adamw", choices=("sgd", "adam", "adamw")),
    "lr": Key(_num, default=1e-3),
    "weight_decay": Key(_num, default=0.0),
    "scheduler": Key((str, dict)),
    "grad_clip": Key(_num),
    "accumulate": Key(_intlike, default=1),
    "amp": Key((str,), choices=("bf16", "fp16")),
    "device": Key((str,), default="auto"),
    "monitor": Key((str,)),
    "mode": Key((str,), default="auto", choices=("auto", "min", "max")),
    "patience": Key(_intlike),
    "min_delta": Key(_num, default=0.0),
    "checkpoint_every": Key(_intlike),
    "baselines": Key((str, dict), doc="'train' or {task: score}"),
    "progress": Key((bool,), default=True),
}

TOP_KEYS: dict[str, Key] = {
    "seed": Key(_intlike, default=0),
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

#: Data sources: name -> (required keys, optional keys). Builders live in hydranet.cli.sources.
SOURCE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "inline": ({"samples"}, set()),
    "builtin": ({"name"}, {"split", "options"}),
    "npz": ({"path", "inputs"}, {"labels"}),
    "csv": ({"path"}, {"path_column", "feature_columns", "tasks", "root", "image_size", "verify", "on_error"}),
    "folder": ({"path"}, {"pattern", "separator", "tasks", "image_size", "verify", "on_error", "extensions"}),
    "filenames": ({"path", "pattern"}, {"tasks", "image_size", "verify", "on_error", "extensions"}),
}

SPLITS = ("train", "val", "test")

SCHEMA = {"top": TOP_KEYS, **SECTIONS, "task": TASK_KEYS}


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", dict: "mapping", list: "list", bool: "true/false"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _unknown(key: str, allowed: Mapping[str, Any] | set[str], path: str) -> ConfigError:
    hint = did_you_mean(key, allowed)
    return ConfigError(f"Unknown key '{path}{key}'.{hint} Allowed keys: {', '.join(sorted(allowed))}.")


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
        # bool is an int in Python; a 'true' where a number is expected is a mistake.
        if (isinstance(value, bool) and bool not in key.types) or not isinstance(value, key.types):
            raise ConfigError(
                f"'{path}{name}' must be {_type_names(key.types)}, got {type(value).__name__} {value!r}."
            )
        if key.choices is not None and value not in key.choices:
            raise ConfigError(f"'{path}{name}' is {value!r}; allowed values: {', '.join(map(str, key.choices))}.")
        out[name] = value
    return out


def _check_source(spec: Any, path: str) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or "source" not in spec:
        raise ConfigError(
            f"'{path}' must be a data source mapping with a 'source' key "
            f"({', '.join(SOURCE_KEYS)}), got {spec!r}."
        )
    source = spec["source"]
    if source not in SOURCE_KEYS:
        raise ConfigError(f"'{path}.source' is {source!r}; allowed values: {', '.join(SOURCE_KEYS)}.")
    required, optional = SOURCE_KEYS[source]
    allowed = required | optional | {"source"}
    for key in spec:
        if key not in allowed:
            raise _unknown(str(key), allowed, f"{path}.")
    for key in required:
        if key not in spec:
            raise ConfigError(f"Missing required key '{path}.{key}' for source '{source}'.")
    return dict(spec)


def _check_data(data: Mapping[str, Any], task_names: list[str]) -> dict[str, Any]:
    for key in data:
        if key not in SPLITS:
            raise _unknown(str(key), set(SPLITS), "data.")
    if "train" not in data:
        raise ConfigError("Missing required key 'data.train'.")
    out: dict[str, Any] = {}
    for split, spec in data.items():
        if isinstance(spec, Mapping) and "source" in spec:
            out[split] = {"shared": _check_source(spec, f"data.{split}")}
            continue
        if not isinstance(spec, Mapping) or not spec:
            raise ConfigError(
                f"'data.{split}' must be one source ({{source: ...}}) shared by all tasks, "
                f"or a mapping {{task: source}}; got {spec!r}."
            )
        for task in spec:
            if task_names and task not in task_names:
                raise ConfigError(
                    f"'data.{split}.{task}' names a task that is not declared under 'tasks' "
                    f"(declared: {', '.join(task_names)})."
                )
        out[split] = {"per_task": {t: _check_source(s, f"data.{split}.{t}") for t, s in spec.items()}}
    return out


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

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return (self.source.parent / p).resolve()


def validate_config(raw: Any, source: Path | None = None) -> Config:
    """Check a parsed YAML document and fill in defaults."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"A config must be a YAML mapping at the top level, got {type(raw).__name__}.")
    top = _check_section(raw, TOP_KEYS, "")
    tasks = {}
    for name, spec in top["tasks"].items():
        tasks[str(name)] = _check_section(spec or {}, TASK_KEYS, f"tasks.{name}.")
    sections = {name: _check_section(top[name], keys, f"{name}.") for name, keys in SECTIONS.items()}
    balancer = top["balancer"]
    if isinstance(balancer, str):
        balancer = {"name": balancer}
    if "name" not in balancer or not isinstance(balancer["name"], str):
        raise ConfigError("'balancer.name' is required: a weighting (ew, uw, dwa, ...) or an aggregator (pcgrad, upgrad, ...).")
    data = _check_data(top["data"], list(tasks))
    from hydranet.balancing import WEIGHTINGS  # bilevel weightings (auto_lambda) learn their weights on val batches

    method = WEIGHTINGS.get(str(balancer["name"]).strip().lower().replace("-", "_"))
    if getattr(method, "needs_validation", False) and not {"val", "split"} & set(data):
        raise ConfigError(f"'balancer: {balancer['name']}' learns its task weights on validation batches: add data.val or data.split.")
    return Config(
        seed=top["seed"],
        output=top["output"],
        tasks=tasks,
        data=data,
        balancer=dict(balancer),
        source=source,
        **sections,
    )


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate a YAML config. ``overrides`` maps dotted keys to values (``trainer.epochs``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
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

