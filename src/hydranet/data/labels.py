"""Reading labels without loading inputs, and what a missing label looks like.

A class-balanced sampler needs every label of a task, and reading them by loading each image is what
makes hand-written samplers slow. :func:`read_labels` and :func:`read_label_columns` take them, in
this order, from:

1. a ``targets`` (torchvision convention) or ``labels`` attribute holding one entry per item — for
   several tasks, a 2-D array with one column per task or a dict ``{task: array}``;
2. the label tensor(s) of a :class:`~torch.utils.data.TensorDataset` — one per task, or one 2-D
   tensor with one column per task (see :func:`tensor_label_columns`);
3. a :class:`~torch.utils.data.Subset` (mapped through its ``indices``) or a
   :class:`~torch.utils.data.ConcatDataset` (concatenated) of datasets that have them;
4. as a last resort, loading every item, announced with a :class:`LabelScanWarning` and a progress bar.

(:class:`~hydranet.data.MultiTaskDataset` puts its ``labels=`` argument before all of these.)

Missing labels (:func:`missing_mask`, :func:`is_missing`), by the task's kind:

==============  =================================================================================
any kind        ``None``
binary,         ``-1`` (integer or float); NaN
multiclass
multilabel      ``None``, or a row whose values are all ``-1``, all NaN or all ``None``
regression      NaN (all values NaN for a vector target); ``-1`` is an ordinary value
kind unknown    ``None``; NaN; ``-1`` in integer labels only (a float ``-1.0`` may be a regression
                value)
==============  =================================================================================

Arrays hold one entry per sample: a numeric array ``[n, ...]``, or, where entries are ``None`` or
differ in shape, a 1-d object array of ``n`` entries (see :func:`as_label_array`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from hydranet._checks import check_bool
from hydranet.data._none import none_mask
from hydranet.tasks import MISSING_INT, Task

__all__ = [
    "CLASS_KINDS",
    "LabelScanWarning",
    "as_label_array",
    "check_labels",
    "is_missing",
    "item_labels",
    "missing_mask",
    "read_label_columns",
    "read_labels",
    "stack_labels",
    "tensor_label_columns",
]

#: Kinds whose labels are class indices or 0/1 vectors, where ``-1`` marks a missing label.
CLASS_KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel")

_ATTRIBUTES = ("targets", "labels")


class _IndexLookup(Protocol):
    """What :func:`check_labels` needs of ``indices``: the dataset index of the k-th label."""

    def __getitem__(self, k: int, /) -> int: ...


class LabelScanWarning(UserWarning):
    """Labels were read by loading every item of a dataset (inputs included)."""


# ------------------------------------------------------------------------------------ arrays


def as_label_array(values: Any) -> np.ndarray:
    """One label per sample as a numpy array.

    A tensor becomes its numpy array (on the CPU); a sequence becomes a numeric array when its
    entries are numbers or same-shape vectors, else (``None`` entries, or shapes that differ) a 1-d
    object array of ``n`` entries, each ``None`` or a value (tensors converted to numpy).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = values if isinstance(values, np.ndarray) else np.asarray(values)
    except ValueError:  # entries of different shapes
        array = None
    if array is not None and array.ndim == 0:
        raise TypeError(f"Labels must hold one entry per sample; got the single value {values!r}.")
    if array is not None and array.dtype != object:
        return array
    entries = list(values)
    out = np.empty(len(entries), dtype=object)
    for k, value in enumerate(entries):  # only for object labels: None entries or ragged shapes
        out[k] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    return out


def stack_labels(labels: np.ndarray) -> np.ndarray:
    """An object array of same-shape entries as one numeric array; anything else unchanged."""
    if labels.dtype != object or labels.ndim != 1 or len(labels) == 0:
        return labels
    try:
        dense = np.asarray(list(labels))
    except ValueError:  # shapes differ: ragged labels stay one object per sample
        return labels
    return labels if dense.dtype == object else dense


def _missing_rows(flat: np.ndarray, kind: str | None) -> np.ndarray:
    """``[n]`` bool for a ``[n, m]`` array: True where the whole row is a missing-label marker."""
    n, m = flat.shape
    if m == 0:  # an empty target (no boxes) is a label, not a missing one
        return np.zeros(n, dtype=bool)
    code = flat.dtype.kind
    if code == "f":
        missing = np.isnan(flat).all(axis=1)
        if kind in CLASS_KINDS:
            missing |= (flat == MISSING_INT).all(axis=1)
        return missing
    if code == "i" and kind != "regression":
        return (flat == MISSING_INT).all(axis=1)
    if code == "O":
        return np.asarray(none_mask(flat).all(axis=1))
    return np.zeros(n, dtype=bool)


def missing_mask(labels: Any, kind: str | None = None) -> np.ndarray:
    """``[n]`` bool, True where a sample's label is missing (conventions in the module docstring).

    Args:
        labels: one entry per sample (anything :func:`as_label_array` accepts).
        kind: the task's kind (``"binary"``, ``"multiclass"``, ``"multilabel"``, ``"regression"``),
            or ``None`` when unknown.
    """
    labels = as_label_array(labels)
    n = len(labels)
    if labels.dtype != object or labels.ndim > 1:
        return _missing_rows(labels.reshape(n, -1), kind)
    none = np.fromiter((v is None for v in labels), dtype=bool, count=n)
    mask = none.copy()
    rest = stack_labels(labels[~none])
    if rest.dtype != object or rest.ndim > 1:
        mask[~none] = _missing_rows(rest.reshape(len(rest), -1), kind)
    else:  # ragged entries: one check each
        mask[~none] = [is_missing(v, kind) for v in rest]
    return mask


def is_missing(value: Any, kind: str | None = None) -> bool:
    """Whether one sample's label is missing; the same rules as :func:`missing_mask`."""
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(value)
        except ValueError:  # a ragged nested list is a label
            return False
    if array.dtype == object and array.ndim == 0:
        return False
    return bool(_missing_rows(array.reshape(1, -1), kind)[0])


# ------------------------------------------------------------------------------------ items


def _structure(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        inner = ", ".join(type(v).__name__ for v in item[:6]) + (", ..." if len(item) > 6 else "")
        return f"a {type(item).__name__} of {len(item)} ({inner})"
    return f"a {type(item).__name__}"


def item_labels(item: Any, tasks: Sequence[str]) -> list[Any]:
    """The labels one item carries, in the order of ``tasks`` (``None`` where the item has none).

    Items are ``(x, y)`` for one task, and for several ``(x, {task: y})``, ``(x, y_1, ..., y_k)`` or
    ``(x, (y_1, ..., y_k))`` — a 1-d tensor or array ``(x, row)`` with one entry per task included.
    """
    expected = "(x, y)" if len(tasks) == 1 else "(x, {task: y}), (x, y1, y2, ...) or (x, (y1, y2, ...))"
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(
            f"Items must be {expected} for task(s) {list(tasks)}; found {_structure(item)}. Make the "
            "dataset's __getitem__ return the input first, then the label(s)."
        )
    rest = tuple(item[1:])
    if len(rest) == 1:
        (labels,) = rest
        if isinstance(labels, Mapping):
            unknown = sorted(set(labels) - set(tasks), key=str)
            if unknown:
                raise ValueError(
                    f"An item's labels name unknown task(s) {unknown}; the tasks are {list(tasks)}. "
                    "Rename the keys, or add the tasks."
                )
            return [labels.get(t) for t in tasks]
        if len(tasks) > 1:
            if isinstance(labels, (tuple, list)):
                rest = tuple(labels)
            elif isinstance(labels, (torch.Tensor, np.ndarray)) and labels.ndim == 1:
                rest = tuple(labels)
    if len(rest) != len(tasks):
        raise ValueError(
            f"Items must be {expected}: one label per task, in the order {list(tasks)} (None where missing); "
            f"found {_structure(item)}, i.e. {len(rest)} label(s) for {len(tasks)} task(s)."
        )
    return list(rest)


# ------------------------------------------------------------------------------------ sources


def tensor_label_columns(dataset: TensorDataset, n_tasks: int) -> list[torch.Tensor] | None:
    """The label tensor of each of ``n_tasks`` tasks of a TensorDataset (views), or None if it has none.

    ``TensorDataset(x, y_1, ..., y_k)`` gives ``y_j``; ``TensorDataset(x, Y)`` with ``Y`` of shape
    ``[n, k]`` (``k > 1``) gives its columns. Items then read ``(x, y_1, ..., y_k)`` and ``(x, row)``,
    which :func:`item_labels` splits the same way.
    """
    labels = dataset.tensors[1:]
    if len(labels) == n_tasks:
        return list(labels)
    if len(labels) == 1 and n_tasks > 1 and labels[0].ndim == 2 and labels[0].shape[1] == n_tasks:
        return list(labels[0].unbind(dim=1))
    return None


def _attribute(dataset: Any, n: int) -> Any | None:
    for name in _ATTRIBUTES:
        value = getattr(dataset, name, None)
        if value is None or callable(value):
            continue
        if isinstance(value, Mapping) or _length(value) == n:
            return value
    return None


def _length(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _split(value: Any, tasks: Sequence[str], need: Collection[str], n: int) -> dict[str, np.ndarray]:
    """The columns of ``need`` in an attribute's value (a dict per task, or one column per task)."""
    if isinstance(value, Mapping):
        return {t: as_label_array(value[t]) for t in need if t in value and _length(value[t]) == n}
    if len(tasks) == 1:
        return {tasks[0]: as_label_array(value)} if tasks[0] in need else {}
    try:
        table = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    except ValueError:
        return {}
    if table.ndim != 2 or table.shape[1] != len(tasks):
        return {}
    return {t: as_label_array(table[:, j]) for j, t in enumerate(tasks) if t in need}


def _metadata(dataset: Any, tasks: Sequence[str], need: Collection[str]) -> dict[str, np.ndarray]:
    """The columns of ``need`` that ``dataset`` knows without loading items."""
    n = _length(dataset)
    if n is None:
        return {}
    value = _attribute(dataset, n)
    found = _split(value, tasks, need, n) if value is not None else {}
    rest = [t for t in need if t not in found]
    if not rest:
        return found
    if isinstance(dataset, TensorDataset):
        columns = tensor_label_columns(dataset, len(tasks))
        if columns is not None:
            found.update({t: as_label_array(c) for t, c in zip(tasks, columns) if t in rest})
    elif isinstance(dataset, Subset):
        parent = _metadata(dataset.dataset, tasks, rest)
        index = np.asarray(dataset.indices, dtype=np.int64)
        found.update({t: column[index] for t, column in parent.items()})
    elif isinstance(dataset, ConcatDataset):
        children = [_metadata(d, tasks, rest) for d in dataset.datasets]
        for t in rest:
            if all(t in c for c in children):
                found[t] = _concatenate([c[t] for c in children])
    return found


def _concatenate(columns: list[np.ndarray]) -> np.ndarray:
    if any(c.dtype == object for c in columns):
        return as_label_array([v for c in columns for v in (c if c.dtype == object else list(c))])
    return np.concatenate(columns)


def _scan(dataset: Any, tasks: Sequence[str], need: Sequence[str]) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    n = len(dataset)
    notes = []
    for name in _ATTRIBUTES:
        value = getattr(dataset, name, None)
        size = None if value is None or callable(value) or isinstance(value, Mapping) else _length(value)
        if size is not None and size != n:
            notes.append(f" Its `{name}` attribute has {size} entries for {n} items, so it was not used.")
    example = "{" + ", ".join(f"{t!r}: array" for t in need) + "}"
    warnings.warn(
        f"Reading the labels of task(s) {list(need)} by loading all {n} items of {type(dataset).__name__}, "
        f"inputs included.{''.join(notes)} To read them without loading inputs, pass labels={example} to "
        "MultiTaskDataset, give the dataset a `targets` attribute with one label per item (one column per "
        "task for a shared dataset), or use a TensorDataset.",
        LabelScanWarning,
        stacklevel=3,
    )
    positions = [list(tasks).index(t) for t in need]
    columns: list[list[Any]] = [[None] * n for _ in need]
    for i in tqdm(range(n), desc="reading labels", unit="item", leave=False, mininterval=0.5):
        item = dataset[i]
        try:
            values = item_labels(item, tasks)
        except (TypeError, ValueError) as error:
            raise type(error)(f"Item {i} of {type(dataset).__name__}: {error}") from None
        for column, p in zip(columns, positions):
            column[i] = values[p]
    return {t: as_label_array(c) for t, c in zip(need, columns)}


def read_label_columns(
    dataset: Dataset,
    tasks: Sequence[str],
    *,
    need: Collection[str] | None = None,
    scan: bool = True,
) -> dict[str, np.ndarray]:
    """The label column of each task of a dataset whose items carry several labels.

    Args:
        dataset: items as described in :func:`item_labels`, labels in the order of ``tasks``.
        tasks: all the task names, in the order the items carry their labels.
        need: the tasks to read (default: all).
        scan: if a column is not in the dataset's metadata, load every item to read it (with a
            :class:`LabelScanWarning`); if False, leave it out of the result.

    Returns:
        ``{task: array}``, each array holding ``len(dataset)`` entries, missing labels included.
    """
    check_bool("scan", scan)
    tasks = list(tasks)
    need = [t for t in tasks if need is None or t in need]
    found = _metadata(dataset, tasks, need)
    rest = [t for t in need if t not in found]
    if rest and scan:
        found.update(_scan(dataset, tasks, rest))
    return {t: found[t] for t in need if t in found}


def read_labels(dataset: Dataset, task: str = "y", *, scan: bool = True) -> np.ndarray | None:
    """The labels of a dataset of ``(x, y)`` items, ``len(dataset)`` entries (None if not found and
    ``scan`` is False). ``task`` names the task in messages and in dict-valued metadata."""
    return read_label_columns(dataset, [task], scan=scan).get(task)


# ------------------------------------------------------------------------------------ checks


def check_labels(
    labels: np.ndarray,
    task: Task,
    *,
    indices: Sequence[int] | np.ndarray | _IndexLookup | None = None,
    where: str = "the dataset",
) -> np.ndarray:
    """Check present (non-missing) labels against a task and return them as the task's array.

    Binary and multiclass labels must be integers in ``[0, n_classes)`` (returned ``[n]`` in their own
    integer dtype, so an int8 column stays one byte a label; bools as int8, whole-number floats as int64);
    multilabel ones ``num_classes`` values in {0, 1} (``[n, C]``, dtype kept); regression ones one
    number, or ``dim`` numbers, per sample (float ``[n]`` or ``[n, dim]``). Ragged tasks are returned
    unchanged. Errors name the task, the offending value, its index and the fix.

    Args:
        labels: ``[n, ...]`` labels without missing entries.
        task: the task they label.
        indices: the dataset index of each label, for messages (default: ``0 .. n - 1``).
        where: the dataset the indices refer to, for messages.
    """
    if task.ragged:
        return labels

    def at(k: int) -> str:
        return f"index {int(indices[k]) if indices is not None else k} of {where}"

    name = f"Task {task.name!r} ({task.kind})"
    dense = stack_labels(labels)
    if dense.dtype == object:
        raise ValueError(_shape_mismatch(name, task, labels, at))
    if len(dense) and dense.dtype.kind not in "biuf":
        fix = (
            "convert them to floats"
            if task.kind == "regression"
            else f"map them to class indices 0..{task.n_classes - 1} (keep the names in Task(class_names=...))"
        )
        raise ValueError(f"{name}: labels must be numbers; found {dense[0].item()!r} at {at(0)}: {fix}.")
    if task.kind == "regression":
        return _regression_labels(name, task, dense, at)
    if task.kind == "multilabel":
        return _multilabel_labels(name, task, dense, at)
    return _class_labels(name, task, dense, at)


def _regression_labels(name: str, task: Task, dense: np.ndarray, at: Callable[[int], str]) -> np.ndarray:
    """One number, or ``dim`` numbers, per sample: float ``[n]`` or ``[n, dim]``."""
    per_sample = dense.shape[1:]
    width = int(task.dim or 1)
    if per_sample not in ((), (width,)) or (per_sample == () and width != 1):
        size = int(np.prod(per_sample)) if per_sample else 1
        raise ValueError(
            f"{name}: labels have shape {per_sample} per sample (found at {at(0)}) but the task has "
            f"dim={width}. Declare Task(..., dim={size}) with one flat vector per sample, or fix the targets."
        )
    return dense if dense.dtype.kind == "f" else dense.astype(np.float64)


def _multilabel_labels(name: str, task: Task, dense: np.ndarray, at: Callable[[int], str]) -> np.ndarray:
    """``num_classes`` values in {0, 1} per sample, ``[n, C]`` in their dtype."""
    per_sample = dense.shape[1:]
    width = task.n_classes
    if per_sample != (width,):
        raise ValueError(
            f"{name}: each label must be a vector of {width} values 0/1 (num_classes={width}); found "
            f"shape {per_sample} at {at(0)}. Fix num_classes, or give one 0/1 entry per label."
        )
    bad = ~((dense == 0) | (dense == 1)).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: label {dense[k].tolist()} at {at(k)} holds values other than 0 and 1. Use 1 for "
            "present and 0 for absent; a sample without labels is a row of all -1 (or None)."
        )
    return dense


def _class_labels(name: str, task: Task, dense: np.ndarray, at: Callable[[int], str]) -> np.ndarray:
    """One integer class index in ``[0, n_classes)`` per sample, ``[n]`` in its integer dtype."""
    per_sample = dense.shape[1:]
    if per_sample == (1,):  # a [n, 1] column of class indices
        dense = dense[:, 0]
    elif per_sample != ():
        raise ValueError(
            f"{name}: expected one class index per sample; found shape {per_sample} at {at(0)}. For one-hot "
            "labels give argmax(1); for several 0/1 labels per sample use kind='multilabel'."
        )
    high = task.n_classes
    fractional = dense != np.floor(dense) if dense.dtype.kind == "f" else np.zeros(len(dense), dtype=bool)
    bad = fractional | (dense < 0) | (dense >= high)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        value = dense[k].item()
        if fractional[k]:
            fix = f"class labels are whole numbers 0..{high - 1}"
        elif value < 0:
            fix = (
                f"class indices are 0..{high - 1}, and the only negative label is {MISSING_INT}, which marks a "
                f"missing label (as does None). Map the labels to 0..{high - 1}, or write {MISSING_INT} where a "
                "sample has no label (MultiTaskDataset.shared allows missing labels)"
            )
        elif task.kind == "binary":
            fix = "binary labels are 0 or 1 (-1 or None where missing); for more classes use kind='multiclass'"
        else:
            fix = f"set num_classes={int(dense.max()) + 1} (the largest label), or map the labels to 0..{high - 1}"
        raise ValueError(f"{name}: label {value!r} at {at(k)} is not a class in [0, {high}): {fix}.")
    return _class_dtype(dense)


def _class_dtype(dense: np.ndarray) -> np.ndarray:
    """Integer class indices keep their dtype (an int8 column stays 1 byte a label); bools become int8
    (``np.bincount`` refuses bools) and whole-number floats int64."""
    if dense.dtype.kind in "iu":
        return dense
    return dense.astype(np.int8 if dense.dtype.kind == "b" else np.int64)


def _expected_shapes(task: Task) -> tuple[tuple[int, ...], ...]:
    """The per-sample label shapes a task accepts (its declared size)."""
    if task.kind == "multilabel":
        return ((task.n_classes,),)
    if task.kind == "regression":
        width = int(task.dim or 1)
        return ((), (1,)) if width == 1 else ((width,),)
    return ((), (1,))


def _shape_mismatch(name: str, task: Task, labels: np.ndarray, at: Any) -> str:
    """The message for labels whose shapes differ: the first sample whose shape is not the declared one."""
    expected = _expected_shapes(task)
    declared = (
        f"num_classes={task.num_classes}" if task.kind == "multilabel"
        else f"dim={int(task.dim or 1)}" if task.kind == "regression"
        else "one class index per sample"
    )
    shapes = [np.shape(v) for v in labels]  # an object array: one Python object per sample anyway
    wrong = [j for j, s in enumerate(shapes) if s not in expected]
    if not wrong:  # only () and (1,) mixed: cannot happen after stack_labels, kept for safety
        wrong = [next(j for j, s in enumerate(shapes) if s != shapes[0])]
    k = wrong[0]
    others = f" ({len(wrong) - 1} more sample(s) have a shape other than {expected[0]})" if len(wrong) > 1 else ""
    text = (
        f"{name}: the label at {at(k)} has shape {shapes[k]}, but the task declares {declared}, i.e. shape "
        f"{expected[0]} per sample{others}. Fix that sample's label"
    )
    if task.kind == "multilabel":
        return text + f" (a 0/1 vector of {task.num_classes} entries; all -1 where missing), or correct num_classes."
    if task.kind == "regression":
        return text + (
            ", or correct dim. Only a task whose samples have a variable number of values by design "
            "(boxes per image) is declared ragged=True."
        )
    return text + "; for several 0/1 labels per sample use kind='multilabel'."
