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

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The key tables and value checks live in _schema, the cross-key checks in _config_checks; their public
# names are this module's, as before the split.
from hydranet.cli._config_checks import (
    check_balancer,
    check_data,
    check_model,
    check_sampler,
    check_task,
    check_tasks,
    check_trainer,
    source_tasks,
)
from hydranet.cli._schema import (
    LOADER_KEYS as LOADER_KEYS,
    MODEL_KEYS as MODEL_KEYS,
    SAMPLER_KEYS as SAMPLER_KEYS,
    SCHEMA,
    SECTIONS,
    SOURCE_CHECKS as SOURCE_CHECKS,
    SOURCE_KEYS,
    SPLIT_KEYS as SPLIT_KEYS,
    SPLITS as SPLITS,
    TASK_KEYS as TASK_KEYS,
    TOP_KEYS,
    TRAINER_KEYS as TRAINER_KEYS,
    Check as Check,
    ConfigError,
    Key as Key,
    _check_section,
)

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


def task_names(cfg: Config) -> list[str] | None:
    """The tasks a config trains, known without reading data (declared, per-task data, what a source
    names: builtin data, a reader's ``tasks`` or pattern groups); None when only the data knows them."""
    declared = list(cfg.tasks)
    entry = cfg.data["train"]
    if "per_task" in entry:
        return declared
    found = source_tasks(entry["shared"], declared)
    if found is None:
        return None
    return list(dict.fromkeys([*found, *declared]))


def validate_config(raw: Any, source: Path | None = None) -> Config:
    """Check a parsed YAML document as a whole and fill in defaults (nothing is built or read)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"A config must be a YAML mapping at the top level, got {type(raw).__name__}.")
    top = _check_section(raw, TOP_KEYS, "")
    tasks = check_tasks(top["tasks"])
    sections = {name: _check_section(top[name], keys, f"{name}.") for name, keys in SECTIONS.items()}
    balancer = check_balancer(top["balancer"])
    data = check_data(top["data"], list(tasks))
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
        check_task("data.split.stratify", data["split"]["stratify"], known)
    for split in ("val", "test"):
        entry = data.get(split, {})
        for task in entry.get("per_task", {}):
            check_task(f"data.{split}.{task}", task, known)
    check_sampler(cfg.sampler, known)
    check_model(cfg.model, known)
    check_trainer(cfg.trainer, known, tasks)
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
