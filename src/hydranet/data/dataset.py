"""MultiTaskDataset: several datasets (one task each), or one dataset with several label columns.

``ds[i] -> (input, {task: target})`` holds only the tasks sample ``i`` is labelled for, so that
:func:`~hydranet.data.collate` masks the others. Global indices run over the parts in order: with
``MultiTaskDataset({"a": ds_a, "b": ds_b})``, indices ``[0, len(ds_a))`` are task ``a``'s and
``[len(ds_a), len(ds_a) + len(ds_b))`` task ``b``'s.

Per-task label arrays (:meth:`MultiTaskDataset.labels`) are read without loading inputs (see
:mod:`hydranet.data.labels`) the first time something needs them, such as a class-balanced sampler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from hydranet.data.collate import Batch
from hydranet.data.labels import _missing_value, as_label_array, label_columns, missing_mask
from hydranet.tasks import Task, as_task_dict

__all__ = ["MultiTaskDataset"]


def _check_dataset(name: str, dataset: Any) -> None:
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            f"The dataset of task {name!r} is a {type(dataset).__name__}, which has no __getitem__/__len__; "
            "pass a torch.utils.data.Dataset (e.g. TensorDataset(x, y))."
        )


class MultiTaskDataset(Dataset):
    """Datasets of several tasks behind one index space.

    Args:
        datasets: ``{task: dataset}``; each dataset's items are ``(x, y)`` labelling that one task.
        labels: ``{task: array}`` of the labels of each part, when its dataset cannot give them
            cheaply (no ``targets`` attribute, not a TensorDataset).
        tasks: :class:`~hydranet.Task` objects for the parts (a list or mapping); when given, labels are
            checked against each task's kind and classes.

    Use :meth:`shared` for one dataset whose items carry several labels.
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        *,
        labels: Mapping[str, Any] | None = None,
        tasks: Sequence[Task] | Mapping[str, Task] | None = None,
    ) -> None:
        if not isinstance(datasets, Mapping) or not datasets:
            raise ValueError(
                "MultiTaskDataset needs a non-empty mapping {task: dataset}; for one dataset with several "
                "label columns use MultiTaskDataset.shared(dataset, tasks=[...])."
            )
        self._names = [str(name) for name in datasets]
        self._tasks = self._check_tasks(tasks)
        self._parts: list[Dataset] = []
        for name, dataset in datasets.items():
            _check_dataset(name, dataset)
            if len(dataset) == 0:  # type: ignore[arg-type]
                raise ValueError(f"Task {name!r} has an empty dataset: give it at least one sample or drop the task.")
            self._parts.append(dataset)
        self._shared = False
        self._offsets = np.cumsum([0] + [len(d) for d in self._parts]).astype(np.int64)  # type: ignore[arg-type]
        self._explicit = self._check_explicit(labels, [len(d) for d in self._parts])  # type: ignore[arg-type]
        self._label_cache: dict[str, np.ndarray] = {}
        self._index_cache: dict[str, np.ndarray] = {}

    @classmethod
    def shared(
        cls,
        dataset: Dataset,
        tasks: Sequence[str | Task] | Mapping[str, Task],
        *,
        labels: Mapping[str, Any] | None = None,
    ) -> MultiTaskDataset:
        """One dataset whose items carry several labels, some possibly missing.

        Items may be ``(x, {task: y})``, ``(x, y_1, ..., y_k)`` or ``(x, (y_1, ..., y_k))`` with the
        labels in the order of ``tasks``. A missing label is ``None``, ``-1`` for class labels, NaN
        for regression, or absent from the dict.
        """
        _check_dataset("shared", dataset)
        self = cls.__new__(cls)
        if isinstance(tasks, Mapping):
            tasks = list(tasks.values())
        if isinstance(tasks, (str, Task)) or not tasks:
            raise ValueError("MultiTaskDataset.shared needs a list of tasks (names or hydranet.Task objects).")
        task_objects = [t for t in tasks if isinstance(t, Task)]
        self._names = [t.name if isinstance(t, Task) else str(t) for t in tasks]
        if len(set(self._names)) != len(self._names):
            raise ValueError(f"Duplicate task names in {self._names}.")
        self._tasks = as_task_dict(task_objects) if task_objects else None
        if self._tasks is not None and len(task_objects) != len(self._names):
            raise ValueError("Give tasks either all as names or all as hydranet.Task objects.")
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("The shared dataset is empty.")
        self._parts = [dataset]
        self._shared = True
        self._offsets = np.array([0, len(dataset)], dtype=np.int64)  # type: ignore[arg-type]
        self._explicit = self._check_explicit(labels, [len(dataset)] * len(self._names))  # type: ignore[arg-type]
        self._label_cache = {}
        self._index_cache = {}
        return self

    # -- validation ----------------------------------------------------------------------------------
    def _check_tasks(self, tasks: Sequence[Task] | Mapping[str, Task] | None) -> dict[str, Task] | None:
        if tasks is None:
            return None
        known = as_task_dict(tasks)
        missing = [n for n in self._names if n not in known]
        extra = [n for n in known if n not in self._names]
        if missing or extra:
            raise ValueError(
                f"tasks= must describe exactly the dataset's tasks {self._names}; "
                f"missing {missing}, unknown {extra}."
            )
        return {n: known[n] for n in self._names}

    def _check_explicit(self, labels: Mapping[str, Any] | None, sizes: list[int]) -> dict[str, np.ndarray]:
        if labels is None:
            return {}
        out = {}
        for name, values in labels.items():
            if name not in self._names:
                raise ValueError(f"labels= names an unknown task {name!r}; tasks are {self._names}.")
            array = as_label_array(values)
            size = sizes[self._names.index(name)]
            if len(array) != size:
                raise ValueError(f"labels[{name!r}] has {len(array)} entries for a dataset of {size} samples.")
            out[name] = array
        return out

    def _validate(self, name: str, labels: np.ndarray, positions: np.ndarray) -> None:
        task = (self._tasks or {}).get(name)
        if task is None or task.ragged or labels.dtype == object or task.kind == "regression":
            return
        if task.kind == "multilabel":
            flat = labels.reshape(len(labels), -1)
            if flat.shape[1] != task.num_classes:
                raise ValueError(
                    f"Task {name!r} is multilabel with {task.num_classes} labels, but its targets have "
                    f"{flat.shape[1]} values per sample."
                )
            bad = ~np.isin(flat, (0, 1)).all(axis=1)
            allowed = "0 or 1"
        else:
            values = labels.reshape(len(labels))
            high = 2 if task.kind == "binary" else task.n_classes
            bad = (values < 0) | (values >= high) | (values != np.floor(values))
            allowed = f"integers in [0, {high})"
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"Task {name!r} ({task.kind}) has a label {labels[first].tolist()!r} at dataset index "
                f"{int(positions[first])}; labels must be {allowed} (-1 or None for a missing label). "
                "Map class names to indices, or fix num_classes."
            )

    # -- labels and indices ---------------------------------------------------------------------------
    def _kind(self, name: str) -> str | None:
        return self._tasks[name].kind if self._tasks else None

    def _parse_shared(self, item: Any) -> list[Any]:
        """The labels of one shared item, in task order (None where absent)."""
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(
                f"Items of a shared dataset must be (x, {{task: y}}), (x, y1, y2, ...) or (x, (y1, y2, ...)); "
                f"got {type(item).__name__}."
            )
        rest = item[1:]
        if len(rest) == 1 and isinstance(rest[0], Mapping):
            unknown = set(rest[0]) - set(self._names)
            if unknown:
                raise ValueError(f"Sample labels name unknown task(s) {sorted(unknown)}; tasks are {self._names}.")
            return [rest[0].get(name) for name in self._names]
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)) and len(self._names) > 1:
            rest = tuple(rest[0])
        if len(rest) != len(self._names):
            raise ValueError(
                f"A shared item carries {len(rest)} label(s) for {len(self._names)} task(s) {self._names}; "
                "give one label per task, in task order (None or -1 where missing)."
            )
        return list(rest)

    def _part_item_label(self, item: Any) -> list[Any]:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"Items of a one-task dataset must be (x, y); got {type(item).__name__}.")
        return [item[1]]

    def _read(self, name: str) -> np.ndarray:
        """All labels of the part (or column) of ``name``, missing ones included."""
        if name in self._explicit:
            return self._explicit[name]
        if self._shared:
            if "_columns" not in self.__dict__:
                self.__dict__["_columns"] = label_columns(
                    self._parts[0], len(self._names), self._parse_shared, names=self._names
                )
            return self.__dict__["_columns"][self._names.index(name)]
        return label_columns(self._parts[self._names.index(name)], 1, self._part_item_label)[0]

    def _resolve(self, name: str) -> None:
        self._check_name(name)
        raw = self._read(name)
        k = self._names.index(name)
        if self._shared:
            keep = ~missing_mask(raw, self._kind(name))
            indices = np.flatnonzero(keep).astype(np.int64)
            labels = raw[keep]
            if indices.size == 0:
                raise ValueError(f"Task {name!r} has no labelled sample in the shared dataset.")
        else:
            indices = np.arange(self._offsets[k], self._offsets[k + 1], dtype=np.int64)
            labels = raw
        if labels.dtype == object and not (self._tasks and self._tasks[name].ragged):
            try:
                labels = np.asarray(labels.tolist())
            except ValueError:
                pass  # ragged values stay an object array
        self._validate(name, labels, indices)
        self._index_cache[name] = indices
        self._label_cache[name] = labels

    def _check_name(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(f"Unknown task {name!r}; this dataset's tasks are {self._names}.")

    def task_indices(self, task: str) -> np.ndarray:
        """Sorted global indices of the samples labelled for ``task`` (int64)."""
        self._check_name(task)
        if not self._shared:
            k = self._names.index(task)
            return np.arange(self._offsets[k], self._offsets[k + 1], dtype=np.int64)
        if task not in self._index_cache:
            self._resolve(task)
        return self._index_cache[task]

    def labels(self, task: str) -> np.ndarray:
        """Labels of ``task``, aligned with :meth:`task_indices` (read once, then cached)."""
        if task not in self._label_cache:
            self._resolve(task)
        return self._label_cache[task]

    def class_counts(self, task: str) -> np.ndarray:
        """Samples per class (classification), or positives per label (multilabel)."""
        labels = self.labels(task)
        kind = self._kind(task)
        if kind == "multilabel" or (kind is None and labels.ndim == 2):
            return np.asarray(labels).reshape(len(labels), -1).sum(axis=0).astype(np.int64)
        if kind == "regression" or labels.dtype.kind == "f":
            raise ValueError(f"Task {task!r} has continuous labels: class counts apply to classification tasks.")
        minlength = self._tasks[task].n_classes if self._tasks else 0
        return np.bincount(labels.astype(np.int64).reshape(-1), minlength=minlength)

    # -- structure -------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(self._names)

    @property
    def tasks(self) -> dict[str, Task] | None:
        """``{name: Task}`` when Task objects were given, else None."""
        return dict(self._tasks) if self._tasks else None

    @property
    def is_shared(self) -> bool:
        """True for one dataset with several label columns (tasks' index pools may overlap)."""
        return self._shared

    @property
    def part_ranges(self) -> dict[str, range]:
        """Global index range of each task's dataset (mapping form)."""
        if self._shared:
            return {name: range(0, int(self._offsets[1])) for name in self._names}
        return {n: range(int(self._offsets[k]), int(self._offsets[k + 1])) for k, n in enumerate(self._names)}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        form = "shared" if self._shared else "per-task"
        return f"MultiTaskDataset({form}, {len(self)} samples, tasks={self._names})"

    # -- items -----------------------------------------------------------------------------------------
    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"Index {index} is out of range for a MultiTaskDataset of {n} samples.")
        index %= n
        part = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return part, index - int(self._offsets[part])

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        part, local = self._locate(int(index))
        item = self._parts[part][local]
        if self._shared:
            values = self._parse_shared(item)
            return item[0], {
                name: value
                for name, value in zip(self._names, values)
                if not _missing_value(value, self._kind(name))
            }
        self._part_item_label(item)  # checks the item's structure
        x, y = item
        return x, {self._names[part]: y}

    @cached_property
    def _tensor_backed(self) -> bool:
        return all(isinstance(p, TensorDataset) for p in self._parts) and (
            self._shared or all(len(p.tensors) == 2 for p in self._parts)  # type: ignore[attr-defined]
        )

    def __getitems__(self, indices: Sequence[int]) -> Batch | list[tuple[Any, dict[str, Any]]]:
        """A whole batch in one call: one fancy-indexing operation per part for TensorDatasets."""
        if not self._tensor_backed or len(indices) == 0:
            return [self[i] for i in indices]
        index = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if index.min() < -n or index.max() >= n:
            raise IndexError(f"Batch indices out of range for a MultiTaskDataset of {n} samples.")
        index %= n
        if self._shared:
            return self._shared_batch(index)
        return self._parts_batch(index)

    def _parts_batch(self, index: np.ndarray) -> Batch:
        part_of = np.searchsorted(self._offsets, index, side="right") - 1
        first = self._parts[int(part_of[0])].tensors[0]  # type: ignore[attr-defined]
        inputs = first.new_empty((len(index), *first.shape[1:]))
        present: list[tuple[int, int]] = []
        targets, masks = {}, {}
        for part in np.unique(part_of):
            rows = np.flatnonzero(part_of == part)
            local = torch.from_numpy(index[rows] - self._offsets[part])
            x, y = self._parts[int(part)].tensors  # type: ignore[attr-defined]
            if x.shape[1:] != inputs.shape[1:]:
                raise ValueError(
                    f"Cannot stack inputs of different shapes: {tuple(inputs.shape[1:])} and {tuple(x.shape[1:])} "
                    f"(task {self._names[int(part)]!r}). Resize them to one shape."
                )
            rows_t = torch.from_numpy(rows)
            inputs[rows_t] = x[local].to(inputs.dtype)
            mask = torch.zeros(len(index), dtype=torch.bool)
            mask[rows_t] = True
            target = torch.zeros((len(index), *y.shape[1:]), dtype=y.dtype)
            target[rows_t] = y[local]
            name = self._names[int(part)]
            targets[name], masks[name] = target, mask
            present.append((int(rows[0]), int(part)))
        order = [self._names[p] for _, p in sorted(present)]
        return Batch(inputs, {t: targets[t] for t in order}, {t: masks[t] for t in order}, torch.from_numpy(index))

    def _shared_batch(self, index: np.ndarray) -> Batch | list[tuple[Any, dict[str, Any]]]:
        tensors = self._parts[0].tensors  # type: ignore[attr-defined]
        if len(tensors) - 1 != len(self._names):
            return [self[int(i)] for i in index]
        rows = torch.from_numpy(index)
        targets, masks, first = {}, {}, []
        for k, name in enumerate(self._names):
            values = tensors[k + 1][rows]
            labelled = ~missing_mask(values.numpy(), self._kind(name))
            if not labelled.any():
                continue
            mask = torch.from_numpy(labelled)
            target = torch.zeros_like(values)
            target[mask] = values[mask]
            targets[name], masks[name] = target, mask
            first.append((int(np.argmax(labelled)), k))
        order = [self._names[k] for _, k in sorted(first)]
        return Batch(tensors[0][rows], {t: targets[t] for t in order}, {t: masks[t] for t in order}, rows)
