"""MultiTaskDataset: several datasets (one task each), or one dataset with several label columns.

``ds[i] -> (input, {task: target})`` holds only the tasks sample ``i`` is labelled for, so that
:func:`~hydranet.data.collate` masks the others. Global indices run over the parts in order: with
``MultiTaskDataset({"a": ds_a, "b": ds_b})``, indices ``[0, len(ds_a))`` are task ``a``'s and
``[len(ds_a), len(ds_a) + len(ds_b))`` task ``b``'s. With :meth:`MultiTaskDataset.shared`, index ``i``
is item ``i`` of the one dataset, and a task's samples are those whose label for it is not missing
(conventions in :mod:`hydranet.data.labels`): the tasks' index pools may overlap.

Per-task label arrays (:meth:`MultiTaskDataset.labels`) are read without loading inputs (see
:mod:`hydranet.data.labels`). Labels the dataset knows from metadata (``labels=``, a ``targets``
attribute, a TensorDataset) are read and checked at construction; labels that only loading every item
would give are read the first time something needs them (a class-balanced sampler, ``task_indices`` of
a shared dataset), with a :class:`~hydranet.data.labels.LabelScanWarning`. Both are cached.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from hydranet.data._collate import Batch
from hydranet.data._tensor_batch import TensorPart, tensor_base, tensor_batch
from hydranet.data.labels import (
    as_label_array,
    check_labels,
    is_missing,
    item_labels,
    missing_mask,
    read_label_columns,
    read_labels,
    stack_labels,
    tensor_label_columns,
)
from hydranet.tasks import Task, as_task_dict

__all__ = ["MultiTaskDataset", "Sample"]

Sample = tuple[Any, dict[str, Any]]


def _check_dataset(dataset: Any, what: str) -> Any:
    if isinstance(dataset, (Tensor, np.ndarray)):
        raise TypeError(
            f"{what} is a {type(dataset).__name__}, not a dataset: wrap inputs and labels in "
            "torch.utils.data.TensorDataset(inputs, labels)."
        )
    if isinstance(dataset, Mapping):
        raise TypeError(
            f"{what} is a {type(dataset).__name__}, not a dataset. MultiTaskDataset({{task: dataset}}) takes one "
            "torch.utils.data.Dataset per task."
        )
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            f"{what} is an IterableDataset, which cannot be indexed: MultiTaskDataset needs map-style datasets "
            "(with __getitem__ and __len__)."
        )
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or isinstance(dataset, (str, bytes)):
        raise TypeError(
            f"{what} is a {type(dataset).__name__}, which is not a map-style dataset (no __getitem__ and __len__); "
            "pass a torch.utils.data.Dataset such as TensorDataset(inputs, labels)."
        )
    return dataset


class _LazyIndices:
    """The dataset index of the k-th labelled sample, computed only when a message needs one."""

    def __init__(self, labelled: np.ndarray) -> None:
        self._labelled = labelled

    def __getitem__(self, k: int) -> int:
        return int(np.flatnonzero(self._labelled)[k])


def _show(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _part_tasks(tasks: Any, names: list[str]) -> dict[str, Task]:
    """``tasks=`` of ``MultiTaskDataset({task: dataset})``: one Task per dataset, named like its key."""
    if isinstance(tasks, Task):
        tasks = [tasks]
    given = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    if any(isinstance(t, str) for t in given):
        raise TypeError(
            "In MultiTaskDataset({task: dataset}) the task names are the mapping's keys; tasks= gives their "
            "hydranet.Task objects, e.g. tasks=[hn.Task('digits', 'multiclass', num_classes=10), ...]."
        )
    known = as_task_dict(given)
    missing = [n for n in names if n not in known]
    unknown = [n for n in known if n not in names]
    if missing or unknown:
        raise ValueError(
            f"tasks= must hold one Task per dataset, named like the keys {names}; missing {missing}, "
            f"unknown {unknown}."
        )
    return {n: known[n] for n in names}

def _shared_tasks(tasks: Any) -> tuple[list[str], dict[str, Task] | None]:
    """``tasks=`` of :meth:`MultiTaskDataset.shared`: ``(names, {name: Task} or None for names only)``."""
    if isinstance(tasks, (str, Task)):
        raise TypeError(
            f"tasks= takes a list of tasks, got a single {type(tasks).__name__}: write tasks=[{tasks!r}]."
        )
    if isinstance(tasks, Mapping):
        renamed = [k for k, t in tasks.items() if not isinstance(t, Task) or t.name != k]
        if renamed:
            raise ValueError(
                f"tasks= as a mapping must be {{name: Task with that name}}; check the keys {renamed}."
            )
        tasks = list(tasks.values())
    given = list(tasks)
    if not given:
        raise ValueError(
            "MultiTaskDataset.shared needs at least one task: tasks=['age', 'gender'] or Task objects."
        )
    if all(isinstance(t, Task) for t in given):
        task_dict = as_task_dict(given)
        return list(task_dict), task_dict
    if all(isinstance(t, str) and t for t in given):
        if len(set(given)) != len(given):
            raise ValueError(f"Duplicate task names in tasks={given}: task names must be unique.")
        return given, None
    raise TypeError(
        f"tasks= must be all names or all hydranet.Task objects, got {[type(t).__name__ for t in given]}; "
        "give Task objects for every task to have labels checked."
    )


class MultiTaskDataset(Dataset):
    """The data of several tasks behind one index space.

    Args:
        datasets: ``{task: dataset}``; each dataset's items are ``(x, y)`` and label that one task
            (every item is labelled).
        labels: ``{task: array}``, the labels of some parts in item order, for datasets that cannot
            give them cheaply (no ``targets`` attribute, not a TensorDataset).
        tasks: the parts' :class:`~hydranet.Task` objects (a list or ``{name: Task}``, one per key of
            ``datasets``); labels are then checked against each task's kind and classes.

    Use :meth:`shared` for one dataset whose items carry several labels, some possibly missing.

    Example:
        >>> ds = MultiTaskDataset({"digits": digits, "fashion": fashion})
        >>> x, y = ds[len(digits)]            # y == {"fashion": ...}
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        *,
        labels: Mapping[str, Any] | None = None,
        tasks: Sequence[Task] | Mapping[str, Task] | None = None,
    ) -> None:
        if not isinstance(datasets, Mapping) or not datasets:
            raise TypeError(
                "MultiTaskDataset needs a non-empty mapping {task: dataset}, got "
                f"{type(datasets).__name__}; for one dataset with several labels per item use "
                "MultiTaskDataset.shared(dataset, tasks=[...])."
            )
        names = list(datasets)
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise TypeError(f"Task names must be non-empty strings; got {bad!r} as keys of the datasets mapping.")
        parts = [_check_dataset(d, f"The dataset of task {n!r}") for n, d in datasets.items()]
        task_dict = None if tasks is None else _part_tasks(tasks, names)
        self._setup(names, parts, shared=False, tasks=task_dict, labels=labels)

    @classmethod
    def shared(
        cls,
        dataset: Dataset,
        tasks: Sequence[str] | Sequence[Task] | Mapping[str, Task],
        *,
        labels: Mapping[str, Any] | None = None,
    ) -> MultiTaskDataset:
        """One dataset whose items carry several labels, some possibly missing.

        Args:
            dataset: items ``(x, {task: y})``, ``(x, y_1, ..., y_k)`` or ``(x, (y_1, ..., y_k))`` with
                the labels in the order of ``tasks``. A missing label is ``None`` or absent from the
                dict, ``-1`` for class labels, NaN for regression, a row of ``-1`` for multilabel.
            tasks: the task names, or their :class:`~hydranet.Task` objects (then labels are checked).
            labels: ``{task: array}`` of ``len(dataset)`` labels in item order (missing values
                allowed), for columns the dataset cannot give cheaply.
        """
        names, task_dict = _shared_tasks(tasks)
        self = cls.__new__(cls)
        self._setup(names, [_check_dataset(dataset, "The shared dataset")], shared=True, tasks=task_dict, labels=labels)
        return self

    # -- construction ----------------------------------------------------------------------------------
    def _setup(
        self,
        names: list[str],
        parts: list[Any],
        *,
        shared: bool,
        tasks: dict[str, Task] | None,
        labels: Mapping[str, Any] | None,
    ) -> None:
        self._names = names
        self._tasks = tasks
        self._parts = parts
        self._shared = shared
        sizes = [len(p) for p in parts]
        for k, size in enumerate(sizes):
            if size == 0:
                what = "The shared dataset" if shared else f"The dataset of task {names[k]!r}"
                raise ValueError(f"{what} is empty: give it at least one item, or leave the task out.")
        self._offsets = np.cumsum([0, *sizes]).astype(np.int64)
        self._fast = [self._tensor_part(k) for k in range(len(parts))]
        self._explicit = self._check_explicit(labels)
        self._labelled: dict[str, np.ndarray] = {}  # bool [n] of a shared task with missing labels
        self._labels: dict[str, np.ndarray] = {}
        self._resolve(self._names, scan=False)

    def _size(self, task: str) -> int:
        k = 0 if self._shared else self._names.index(task)
        return int(self._offsets[k + 1] - self._offsets[k])

    def _where(self, task: str) -> str:
        return "the shared dataset" if self._shared else f"the dataset of task {task!r}"

    def _check_explicit(self, labels: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
        if labels is None:
            return {}
        if not isinstance(labels, Mapping):
            raise TypeError(
                f"labels= must be a mapping {{task: array}} with one label per item, got {type(labels).__name__}."
            )
        out = {}
        for name, values in labels.items():
            if name not in self._names:
                raise ValueError(f"labels= names an unknown task {name!r}; the tasks are {self._names}.")
            try:
                array = as_label_array(values)
            except TypeError as error:
                raise TypeError(f"labels[{name!r}]: {error}") from None
            size = self._size(name)
            if len(array) != size:
                missing = " (None, -1 or NaN where missing)" if self._shared else ""
                raise ValueError(
                    f"labels[{name!r}] has {len(array)} entries but {self._where(name)} has {size} items: give one "
                    f"label per item, in item order{missing}."
                )
            out[name] = array
        return out

    def _tensor_part(self, k: int) -> TensorPart | None:
        found = tensor_base(self._parts[k])
        if found is None:
            return None
        base, rows = found
        names = self._names if self._shared else [self._names[k]]
        columns = tensor_label_columns(base, len(names))
        if columns is None:
            shapes = [tuple(t.shape) for t in base.tensors]
            if self._shared:
                raise ValueError(
                    f"The shared TensorDataset holds tensors of shapes {shapes}: for the {len(names)} tasks {names} "
                    f"give TensorDataset(inputs, y_1, ..., y_{len(names)}) in task order, or TensorDataset(inputs, Y) "
                    f"with Y of shape [n, {len(names)}]."
                )
            raise ValueError(
                f"The dataset of task {names[0]!r} is a TensorDataset of {len(shapes)} tensors {shapes}; its items "
                "must be (x, y): use TensorDataset(inputs, labels), or MultiTaskDataset.shared(...) for several "
                "labels per item."
            )
        # Which rows of a batch are labelled is decided per batch (missing_rows, the rules of
        # missing_mask): a mask per task and sample kept here would cost as much as an int8 label matrix.
        kinds = [self._kind(name) for name in names]
        return TensorPart(base.tensors[0], columns, kinds, None if rows is None else torch.from_numpy(rows))

    # -- labels and indices ----------------------------------------------------------------------------
    def _kind(self, task: str) -> str | None:
        return self._tasks[task].kind if self._tasks else None

    def _resolve(self, names: list[str], *, scan: bool) -> None:
        """Read, check and cache the labels of ``names`` (from metadata only unless ``scan``)."""
        todo = [t for t in names if t not in self._labels]
        raw = {t: self._explicit[t] for t in todo if t in self._explicit}
        rest = [t for t in todo if t not in raw]
        if self._shared:
            if rest:
                raw.update(read_label_columns(self._parts[0], self._names, need=rest, scan=scan))
        else:
            for t in rest:
                column = read_labels(self._parts[self._names.index(t)], t, scan=scan)
                if column is not None:
                    raw[t] = column
        for t in todo:
            if t in raw:
                self._store(t, raw[t])
                self._explicit.pop(t, None)  # the checked arrays replace it

    def _store(self, task: str, raw: np.ndarray) -> None:
        # Memory: a label column of n entries costs its own bytes plus, where some labels are missing,
        # one bool per sample; indices are made on demand (int64 indices kept per task would cost 8 bytes
        # a label, 8 times an int8 label matrix). Labels keep their dtype (see check_labels).
        missing = missing_mask(raw, self._kind(task))
        indices: _LazyIndices | None = None
        if self._shared:
            count = len(raw) - int(np.count_nonzero(missing))
            if count == 0:
                raise ValueError(
                    f"Task {task!r} has no labelled sample: all {len(raw)} of its labels in the shared dataset are "
                    "missing (None, -1, NaN). Check its label column, or leave the task out."
                )
            if count < len(raw):
                labelled = ~missing
                del missing
                values = raw[labelled]
                labelled.setflags(write=False)
                self._labelled[task] = labelled
                indices = _LazyIndices(labelled)
            else:
                values = raw
        else:
            if missing.any():
                k = int(np.flatnonzero(missing)[0])
                raise ValueError(
                    f"Task {task!r}: item {k} of its dataset has a missing label ({_show(raw[k])!r}). In "
                    "MultiTaskDataset({task: dataset}) a dataset labels all its items: leave unlabelled items out "
                    "(torch.utils.data.Subset), or use MultiTaskDataset.shared(...), where labels may be missing."
                )
            values = raw
        task_obj = (self._tasks or {}).get(task)
        if task_obj is not None:
            values = check_labels(values, task_obj, indices=indices, where=self._where(task))
        else:
            values = stack_labels(values)
        values = values.view()  # read-only without touching the caller's array (it may be shared)
        values.setflags(write=False)
        self._labels[task] = values

    def _require(self, task: str) -> None:
        self._check_name(task)
        if task not in self._labels:
            # One scan of a shared dataset reads every column still unknown.
            self._resolve([t for t in self._names if t not in self._labels] if self._shared else [task], scan=True)

    def _check_name(self, task: str) -> None:
        if task not in self._names:
            raise KeyError(f"Unknown task {task!r}; this dataset's tasks are {self._names}.")

    def task_indices(self, task: str) -> np.ndarray:
        """Sorted global indices of the samples labelled for ``task`` (int64, read-only)."""
        self._check_name(task)
        if not self._shared:
            k = self._names.index(task)
            indices = np.arange(self._offsets[k], self._offsets[k + 1], dtype=np.int64)
            indices.setflags(write=False)
            return indices
        self._require(task)
        labelled = self._labelled.get(task)
        indices = np.arange(len(self), dtype=np.int64) if labelled is None else np.flatnonzero(labelled)
        indices.setflags(write=False)
        return indices

    def labels(self, task: str) -> np.ndarray:
        """Labels of ``task`` aligned with :meth:`task_indices` (read-only).

        class indices ``[n]`` for binary and multiclass (in the labels' integer dtype: an int8 column stays
        int8; int64 from floats), ``[n, C]`` 0/1 for multilabel, float ``[n]`` or
        ``[n, dim]`` for regression when the task's :class:`~hydranet.Task` is known; as given
        otherwise (a 1-d object array for ragged labels).
        """
        self._require(task)
        return self._labels[task]

    def class_counts(self, task: str) -> np.ndarray:
        """Samples per class (``np.bincount``, ``n_classes`` long when the Task is known), or for a
        multilabel task the number of positives of each label."""
        labels = self.labels(task)
        kind = self._kind(task)
        if kind == "regression" or labels.dtype.kind not in "biuf":
            raise ValueError(f"Task {task!r} is not a classification task: class counts apply to class labels.")
        if kind == "multilabel" or (kind is None and labels.ndim == 2 and np.isin(labels, (0, 1)).all()):
            return labels.sum(axis=0).astype(np.int64)
        flat = labels.reshape(len(labels), -1)
        if flat.shape[1] != 1 or (flat.dtype.kind == "f" and (flat != np.floor(flat)).any()) or (flat < 0).any():
            raise ValueError(
                f"Task {task!r} has labels that are not class indices (one integer >= 0 per sample); declare its "
                "kind with tasks=[hn.Task(...)] or fix the labels."
            )
        minlength = self._tasks[task].n_classes if self._tasks else 0
        return np.bincount(flat[:, 0].astype(np.int64), minlength=minlength)

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
        """True for one dataset with several label columns (the tasks' index pools may overlap)."""
        return self._shared

    @property
    def part_ranges(self) -> dict[str, range]:
        """Global index range of each task's dataset; for a shared dataset, its whole range for every
        task (use :meth:`task_indices` for the samples actually labelled)."""
        if self._shared:
            return {name: range(0, len(self)) for name in self._names}
        return {n: range(int(self._offsets[k]), int(self._offsets[k + 1])) for k, n in enumerate(self._names)}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        form = "shared" if self._shared else "per-task"
        return f"MultiTaskDataset({form}, {len(self)} samples, tasks={self._names})"

    # -- items -----------------------------------------------------------------------------------------
    def _sample(self, part: int, local: int, item: Any) -> Sample:
        """``(x, {task: y})`` from an item of part ``part``, missing labels left out."""
        names = self._names if self._shared else [self._names[part]]
        try:
            values = item_labels(item, names)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Item {local} of {self._where(names[0])}: {error}") from None
        return item[0], {t: v for t, v in zip(names, values) if not is_missing(v, self._kind(t))}

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        i = operator.index(index)
        if not -n <= i < n:
            raise IndexError(f"Index {i} is out of range for a MultiTaskDataset of {n} samples.")
        i %= n
        part = int(np.searchsorted(self._offsets, i, side="right")) - 1
        local = i - int(self._offsets[part])
        return self._sample(part, local, self._parts[part][local])

    def __getitems__(self, indices: Sequence[int]) -> Batch | list[Sample]:
        """A whole batch in one call (what ``DataLoader`` asks for).

        Tensor-backed parts (TensorDataset, or a Subset of one) give a ready :class:`Batch` made with
        one fancy-indexing operation per part, equal to ``collate([ds[i] for i in indices])`` with
        ``indices`` set. Otherwise the items, in order, fetched per part with the part's own
        ``__getitems__`` where it has one.
        """
        index = np.asarray(indices)
        if index.size == 0:
            return []
        if index.ndim != 1 or index.dtype.kind not in "iu":
            raise TypeError(f"__getitems__ takes a list of integer indices, got {index.dtype} of shape {index.shape}.")
        index = index.astype(np.int64, copy=False)
        n = len(self)
        bad = (index < -n) | (index >= n)
        if bad.any():
            raise IndexError(
                f"Index {int(index[bad][0])} is out of range for a MultiTaskDataset of {n} samples."
            )
        index = index % n
        part_of = np.searchsorted(self._offsets, index, side="right") - 1
        parts = np.unique(part_of).tolist()
        batch = self._tensor_batch(index, part_of, parts)
        return batch if batch is not None else self._items(index, part_of, parts)

    def _items(self, index: np.ndarray, part_of: np.ndarray, parts: list[int]) -> list[Sample]:
        out: list[Any] = [None] * len(index)
        for p in parts:
            rows = np.flatnonzero(part_of == p).tolist()
            local = (index[rows] - self._offsets[p]).tolist()
            dataset = self._parts[p]
            getitems = getattr(dataset, "__getitems__", None)
            items = getitems(local) if callable(getitems) else [dataset[i] for i in local]
            if len(items) != len(local):
                raise ValueError(
                    f"{type(dataset).__name__}.__getitems__ returned {len(items)} items for {len(local)} indices."
                )
            for r, i, item in zip(rows, local, items):
                out[r] = self._sample(p, i, item)
        return out

    def _tensor_batch(self, index: np.ndarray, part_of: np.ndarray, parts: list[int]) -> Batch | None:
        """The batch by fancy indexing (:func:`~hydranet.data._tensor_batch.tensor_batch`), or None where a
        part is not tensor-backed, a task is ragged or the inputs differ in shape."""
        fast = [f for f in (self._fast[p] for p in parts) if f is not None]
        if len(fast) < len(parts):
            return None
        names = [self._names if self._shared else [self._names[p]] for p in parts]
        if self._tasks and any(self._tasks[t].ragged for part in names for t in part):
            return None  # ragged tasks are collated as lists
        return tensor_batch(index, part_of, parts, fast, names, self._offsets, self._shared)
