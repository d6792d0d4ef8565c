"""Datasets from the ``data:`` section of a config.

Each source kind builds a plain dataset (items ``(x, y)`` or ``(x, {task: y})``) plus, where the
source knows them, the tasks it defines. :func:`build_split` assembles a :class:`MultiTaskDataset`
for one split: one source per task, or one source shared by all tasks; with ``data.split`` the
training source is read once and cut into train / val / test (stratified by a class task, every part
with the classes and class indices of the one read).

Source kinds: ``inline`` (values written in the config: small examples and smoke tests),
``builtin`` (embedded real data, :mod:`hydranet.data.builtin`), ``npz`` (arrays in a NumPy file),
``csv``, ``folder``, ``filenames`` and ``hf`` (the on-disk layouts of :mod:`hydranet.data.readers`).

Errors of a source name its key: a damaged ``.npz`` or a text file in another encoding is a
:class:`~hydranet.cli.errors.CommandError` (exit 1), a reader refusing the options or the layout a
:class:`~hydranet.cli.config.ConfigError` (exit 2); the readers' Python phrasing (``on_error='skip'``)
is rephrased as the config key (``on_error: skip``).
"""

from __future__ import annotations

import inspect
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hydranet.cli.config import Config, ConfigError
from hydranet.cli.errors import CommandError, one_line, raised_on_purpose
from hydranet.data.dataset import MultiTaskDataset
from hydranet.tasks import Task

__all__ = ["build_split", "build_tasks", "split_parts"]


@contextmanager
def _reading(path: str) -> Iterator[None]:
    """Errors of reading the source at ``path`` (``data.train``), naming it (see the module docstring)."""
    try:
        yield
    except (ConfigError, CommandError):
        raise
    except UnicodeDecodeError as err:
        raise CommandError(
            f"'{path}': a file is not {err.encoding} text ({err.reason} at byte {err.start}): set '{path}.encoding' "
            "to the file's encoding (e.g. latin-1, cp1252)."
        ) from err
    except zipfile.BadZipFile as err:
        raise CommandError(f"'{path}': a file is not a valid zip archive ({err}); re-create it.") from err
    except (ValueError, TypeError) as err:
        if not raised_on_purpose(err):  # a failing operation, not a message for the user: not a config problem
            raise
        raise ConfigError(f"'{path}': {one_line(err).replace('in the data source', f'under {path!r}')}") from err


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
    label_keys = spec.get("labels") or tasks
    if isinstance(label_keys, str):
        label_keys = [label_keys]
    try:
        with np.load(file) as arrays:
            missing = [k for k in [spec["inputs"], *label_keys] if k not in arrays]
            if missing:
                raise ConfigError(f"'{path}': {file.name} has no array(s) {missing}; it holds {sorted(arrays.files)}.")
            tensors = [torch.from_numpy(np.asarray(arrays[spec["inputs"]], dtype=np.float32))]
            tensors += [torch.from_numpy(np.asarray(arrays[k])) for k in label_keys]
    except (zipfile.BadZipFile, EOFError, ValueError) as err:  # damaged, truncated, or not an .npz at all
        if isinstance(err, ConfigError):
            raise
        raise CommandError(
            f"'{path}.path': {str(file)!r} is not a readable .npz file ({type(err).__name__}: {one_line(err)}); "
            "write it with numpy.savez."
        ) from err
    sizes = {len(t) for t in tensors}
    if len(sizes) > 1:
        raise ConfigError(
            f"'{path}': the arrays of {file.name} differ in length ({sorted(sizes)}): one row per sample."
        )
    return TensorDataset(*tensors), list(label_keys)


def build_tasks(cfg: Config, extra: Mapping[str, Task] | None = None) -> dict[str, Task]:
    """Tasks declared in the config, completed by those a source defines (builtin data, readers)."""
    tasks = dict(extra or {})
    for name, spec in cfg.tasks.items():
        tasks[name] = Task(name=name, **spec)
    if not tasks:
        raise ConfigError("No tasks: declare them under 'tasks' (name: {kind: ...}) or use a source that defines them.")
    return tasks


def tasks_differ(trained: Mapping[str, Task] | list[str], config: list[str], where: str) -> CommandError:
    """The error for a saved run (or a training split) whose tasks are not the config's."""

    def describe(tasks: Mapping[str, Task] | list[str]) -> str:
        if isinstance(tasks, Mapping):
            return ", ".join(f"{n} ({t.kind})" for n, t in tasks.items())
        return ", ".join(tasks)

    return CommandError(
        f"the tasks differ: {where} has tasks [{describe(trained)}], but the config's data has [{describe(config)}]; "
        "use the config the checkpoint was trained with (or a checkpoint of this config)."
    )


def _reader(
    kind: str, spec: Mapping[str, Any], cfg: Config, tasks: Mapping[str, Task] | None, path: str
) -> MultiTaskDataset:
    from hydranet.data import readers

    options = {k: v for k, v in spec.items() if k not in ("source", "path")}
    if tasks is not None:
        # Another split, or a saved run, read with the training tasks: their class names fix the class
        # indices, so a split that lacks a class (or meets them in another order) still agrees.
        named = options.get("tasks")
        names = list(named) if isinstance(named, (list, dict)) else [named] if isinstance(named, str) else list(tasks)
        if any(n not in tasks for n in names):
            raise tasks_differ(dict(tasks), names, "the trained model")
        options["tasks"] = [tasks[n] for n in names]
    if "root" in options:
        options["root"] = cfg.resolve(options["root"])
    if kind == "hf":
        options.setdefault("cache_dir", str(Path(cfg.output) / "hf-cache"))  # inside the run's folder
        return readers.read_hf_path(cfg.resolve(spec["path"]), **options)
    function: Any = {"csv": readers.read_manifest, "folder": readers.read_folders, "filenames": readers.read_filenames}[
        kind
    ]
    if "recursive" in options and "recursive" not in inspect.signature(function).parameters:
        # read_folders reads every image below a label folder, sub-folders included
        if not options.pop("recursive"):
            raise ConfigError(
                f"'{path}.recursive': the folder source always reads the sub-folders of each label folder."
            )
    return function(cfg.resolve(spec["path"]), **options)


def _shared(
    spec: Mapping[str, Any], cfg: Config, split: str, path: str, tasks: Mapping[str, Task] | None
) -> MultiTaskDataset:
    kind = spec["source"]
    if kind == "builtin":
        from hydranet.data import builtin

        return builtin.load(spec["name"], split=spec.get("split", split), seed=cfg.seed, **spec.get("options", {}))
    if kind in ("csv", "folder", "filenames", "hf"):
        return _reader(kind, spec, cfg, tasks, path)
    if kind == "npz":
        dataset, names = _npz(spec, cfg, path, list(cfg.tasks))
        return MultiTaskDataset.shared(dataset, tasks=_declared(cfg, names, path))
    raise ConfigError(f"'{path}': source '{kind}' gives one task; write it under a task name (data.{split}.TASK).")


def _declared(cfg: Config, names: list[str], path: str) -> list[Task]:
    undeclared = [n for n in names if n not in cfg.tasks]
    if undeclared:
        raise ConfigError(f"'{path}': declare task(s) {undeclared} under 'tasks' (with their kind).")
    return [Task(name=n, **cfg.tasks[n]) for n in names]


def _per_task(spec: Mapping[str, Any], cfg: Config, path: str, task: str) -> TensorDataset:
    kind = spec["source"]
    if kind == "inline":
        return _inline(spec, path)
    if kind == "npz":
        return _npz(spec, cfg, path, [task])[0]
    raise ConfigError(f"'{path}': source '{kind}' describes several labels; use it as the shared source 'data.SPLIT'.")


def _build(cfg: Config, split: str, tasks: Mapping[str, Task] | None) -> MultiTaskDataset:
    entry = cfg.data[split]
    if "shared" in entry:
        with _reading(f"data.{split}"):
            return _shared(entry["shared"], cfg, split, f"data.{split}", tasks)
    parts: dict[str, Any] = {}
    for task, spec in entry["per_task"].items():
        with _reading(f"data.{split}.{task}"):
            parts[task] = _per_task(spec, cfg, f"data.{split}.{task}", task)
    return MultiTaskDataset(parts, tasks=_declared(cfg, list(parts), f"data.{split}"))


# ------------------------------------------------------------------------------ data.split


def _fractions(spec: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    names = ["train"] + [p for p in ("val", "test") if spec[p]]
    shares = [spec[p] for p in names[1:]]
    return names, [1.0 - sum(shares), *shares]


def _cut_tensors(
    dataset: TensorDataset, names: list[str], cfg: Config, spec: Mapping[str, Any], where: str
) -> dict[str, TensorDataset]:
    """A TensorDataset ``(x, label of names[0], ...)`` cut into the parts of ``data.split``."""
    from hydranet.data.split import STRATIFY_KINDS, split_indices

    parts, fractions = _fractions(spec)
    stratify = spec["stratify"]
    classes = [n for n in names if cfg.tasks.get(n, {}).get("kind") in STRATIFY_KINDS]
    if stratify not in (None, "auto") and stratify in names and stratify not in classes:
        raise ConfigError(
            f"'data.split.stratify': {stratify!r} is a {cfg.tasks[stratify]['kind']} task; stratify by a binary or "
            "multiclass task, or set stratify: null."
        )
    by = classes[0] if stratify == "auto" and classes else stratify if stratify in classes else None
    strata = None if by is None else dataset.tensors[1 + names.index(by)].numpy().astype(np.int64)
    indices = split_indices(len(dataset), fractions, seed=spec["seed"], strata=strata)
    for name, index in zip(parts, indices):
        if index.size == 0:
            raise ConfigError(f"'data.split.{name}': {where} has {len(dataset)} samples, too few for this share.")
    return {
        name: TensorDataset(*(t[torch.from_numpy(index)] for t in dataset.tensors))
        for name, index in zip(parts, indices)
    }


def split_parts(cfg: Config, tasks: Mapping[str, Task] | None = None) -> dict[str, MultiTaskDataset]:
    """``data.train`` read once and cut as ``data.split`` asks: ``{"train": ..., "val": ..., "test": ...}``
    (the parts asked for). Readers cut with :meth:`~hydranet.data.readers.ReaderDataset.split`, so every
    part has the read's class vocabularies; arrays (``npz``, ``inline``) with :func:`~hydranet.data.split.split_indices`."""
    from hydranet.cli.config import config_key
    from hydranet.data.readers import ReaderDataset

    spec = cfg.data["split"]
    entry = cfg.data["train"]
    names, _ = _fractions(spec)
    if "per_task" in entry:
        cuts = {}
        for task, source in entry["per_task"].items():
            with _reading(f"data.train.{task}"):
                cuts[task] = _cut_tensors(
                    _per_task(source, cfg, f"data.train.{task}", task), [task], cfg, spec, f"data.train.{task}"
                )
        declared = _declared(cfg, list(cuts), "data.train")
        return {p: MultiTaskDataset({t: cut[p] for t, cut in cuts.items()}, tasks=declared) for p in names}
    source = entry["shared"]
    if source["source"] == "npz":
        with _reading("data.train"):
            dataset, labels = _npz(source, cfg, "data.train", list(cfg.tasks))
        cut = _cut_tensors(dataset, labels, cfg, spec, "data.train")
        declared = _declared(cfg, labels, "data.train")
        return {p: MultiTaskDataset.shared(cut[p], tasks=declared) for p in names}
    whole = _build(cfg, "train", tasks)
    if not isinstance(whole, ReaderDataset):  # the config refuses data.split for builtin data
        raise ConfigError(f"'data.split': source {source['source']!r} cannot be split; give data.val / data.test.")
    with config_key("data.split"):
        found = whole.split(
            val=spec["val"] or None, test=spec["test"] or None, seed=spec["seed"], stratify=spec["stratify"]
        )
    return {p: getattr(found, p) for p in names}


def build_split(cfg: Config, split: str, tasks: Mapping[str, Task] | None = None) -> MultiTaskDataset | None:
    """The :class:`MultiTaskDataset` of one split (``train``, ``val``, ``test``), or None if absent.

    ``tasks``: the tasks of the training split (or of a checkpoint). Readers that build class
    vocabularies from the data (folder names, file names, manifests) then use the training classes
    and their order instead of the ones this split happens to hold. With ``data.split``, the parts of
    one read of ``data.train`` (kept in ``cfg.cache``: the other splits reuse it).
    """
    if "split" in cfg.data and (split == "train" or cfg.data["split"].get(split)):
        if "split" not in cfg.cache:
            cfg.cache["split"] = split_parts(cfg, tasks)
        return cfg.cache["split"][split]
    if split not in cfg.data:
        return None
    return _build(cfg, split, tasks)
