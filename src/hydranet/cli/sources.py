"""Datasets from the ``data:`` section of a config.

Each source kind builds a plain dataset (items ``(x, y)`` or ``(x, {task: y})``) plus, where the
source knows them, the tasks it defines. :func:`build_split` assembles a :class:`MultiTaskDataset`
for one split: one source per task, or one source shared by all tasks.

Source kinds: ``inline`` (values written in the config: small examples and smoke tests),
``builtin`` (embedded real data, :mod:`hydranet.data.builtin`), ``npz`` (arrays in a NumPy file),
``csv``, ``folder`` and ``filenames`` (the on-disk layouts of :mod:`hydranet.data.readers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hydranet.cli.config import Config, ConfigError
from hydranet.data.dataset import MultiTaskDataset
from hydranet.tasks import Task

__all__ = ["build_split", "build_tasks"]


def _inline(spec: Mapping[str, Any], path: str) -> TensorDataset:
    """``samples: [{input: 1.0, label: 1, count: 5}, ...]`` -> a TensorDataset of inputs and labels."""
    inputs, labels = [], []
    for k, row in enumerate(spec["samples"]):
        if not isinstance(row, Mapping) or "input" not in row or "label" not in row:
            raise ConfigError(f"'{path}.samples[{k}]' must be a mapping with 'input', 'label' and optional 'count'.")
        count = int(row.get("count", 1))
        x = np.asarray(row["input"], dtype=np.float32).reshape(-1)
        inputs.append(np.broadcast_to(x, (count, x.size)))
        labels.append(np.full(count, row["label"]))
    if not inputs:
        raise ConfigError(f"'{path}.samples' is empty: list at least one sample.")
    label_array = np.concatenate(labels)
    dtype = torch.float32 if label_array.dtype.kind == "f" else torch.int64
    return TensorDataset(torch.from_numpy(np.concatenate(inputs)), torch.as_tensor(label_array, dtype=dtype))


def _npz(spec: Mapping[str, Any], cfg: Config, path: str, tasks: list[str]) -> tuple[TensorDataset, list[str]]:
    file = cfg.resolve(spec["path"])
    if not file.is_file():
        raise ConfigError(f"'{path}.path': file {str(file)!r} does not exist.")
    arrays = np.load(file)
    label_keys = spec.get("labels") or tasks
    if isinstance(label_keys, str):
        label_keys = [label_keys]
    missing = [k for k in [spec["inputs"], *label_keys] if k not in arrays]
    if missing:
        raise ConfigError(f"'{path}': {file.name} has no array(s) {missing}; it holds {sorted(arrays.files)}.")
    tensors = [torch.from_numpy(np.asarray(arrays[spec["inputs"]], dtype=np.float32))]
    tensors += [torch.from_numpy(np.asarray(arrays[k])) for k in label_keys]
    return TensorDataset(*tensors), list(label_keys)


def build_tasks(cfg: Config, extra: Mapping[str, Task] | None = None) -> dict[str, Task]:
    """Tasks declared in the config, completed by those a source defines (builtin data, readers)."""
    tasks = dict(extra or {})
    for name, spec in cfg.tasks.items():
        tasks[name] = Task(name=name, **spec)
    if not tasks:
        raise ConfigError("No tasks: declare them under 'tasks' (name: {kind: ...}) or use a source that defines them.")
    return tasks


def _reader(kind: str, spec: Mapping[str, Any], cfg: Config, tasks: Mapping[str, Task] | None) -> MultiTaskDataset:
    from hydranet.data import readers

    options = {k: v for k, v in spec.items() if k not in ("source", "path")}
    if tasks is not None:
        # Another split, or a saved run, read with the training tasks: their class names fix the class
        # indices, so a split that lacks a class (or meets them in another order) still agrees.
        named = options.get("tasks")
        names = list(named) if isinstance(named, (list, dict)) else list(tasks)
        options["tasks"] = [tasks[n] for n in names if n in tasks]
    if "root" in options:
        options["root"] = cfg.resolve(options["root"])
    function: Any = {"csv": readers.read_manifest, "folder": readers.read_folders, "filenames": readers.read_filenames}[kind]
    return function(cfg.resolve(spec["path"]), **options)


def _shared(
    spec: Mapping[str, Any], cfg: Config, split: str, path: str, tasks: Mapping[str, Task] | None
) -> MultiTaskDataset:
    kind = spec["source"]
    if kind == "builtin":
        from hydranet.data import builtin

        return builtin.load(spec["name"], split=spec.get("split", split), seed=cfg.seed, **spec.get("options", {}))
    if kind in ("csv", "folder", "filenames"):
        return _reader(kind, spec, cfg, tasks)
    if kind == "npz":
        dataset, names = _npz(spec, cfg, path, list(cfg.tasks))
        return MultiTaskDataset.shared(dataset, tasks=_declared(cfg, names, path))
    raise ConfigError(f"'{path}': source '{kind}' gives one task; write it under a task name (data.{split}.TASK).")


def _declared(cfg: Config, names: list[str], path: str) -> list[Task]:
    undeclared = [n for n in names if n not in cfg.tasks]
    if undeclared:
        raise ConfigError(f"'{path}': declare task(s) {undeclared} under 'tasks' (with their kind).")
    return [Task(name=n, **cfg.tasks[n]) for n in names]


def build_split(cfg: Config, split: str, tasks: Mapping[str, Task] | None = None) -> MultiTaskDataset | None:
    """The :class:`MultiTaskDataset` of one split (``train``, ``val``, ``test``), or None if absent.

    ``tasks``: the tasks of the training split (or of a checkpoint). Readers that build class
    vocabularies from the data (folder names, file names, manifests) then use the training classes
    and their order instead of the ones this split happens to hold.
    """
    if split not in cfg.data:
        return None
    entry = cfg.data[split]
    if "shared" in entry:
        return _shared(entry["shared"], cfg, split, f"data.{split}", tasks)
    parts: dict[str, Any] = {}
    for task, spec in entry["per_task"].items():
        path = f"data.{split}.{task}"
        kind = spec["source"]
        if kind == "inline":
            parts[task] = _inline(spec, path)
        elif kind == "npz":
            parts[task], _ = _npz(spec, cfg, path, [task])
        else:
            raise ConfigError(
                f"'{path}': source '{kind}' describes several labels; use it as the shared source 'data.{split}'."
            )
    return MultiTaskDataset(parts, tasks=_declared(cfg, list(parts), f"data.{split}"))
