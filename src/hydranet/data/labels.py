"""Reading labels without loading inputs.

A class-balanced sampler needs every label of a task, and reading them by loading each image is what
makes hand-written samplers slow. Labels are taken, in this order, from:

1. an explicit array (``labels=`` of :class:`~hydranet.data.MultiTaskDataset`);
2. a ``targets`` (torchvision convention) or ``labels`` attribute of the dataset;
3. the label tensor(s) of a :class:`~torch.utils.data.TensorDataset`;
4. a :class:`~torch.utils.data.Subset` of any of those (mapped through its ``indices``);
5. as a last resort, iterating the dataset, announced with a :class:`LabelScanWarning` and a
   progress bar.

Missing labels: ``None`` for any kind; ``-1`` for integer class labels (binary, multiclass); NaN for
regression; a multilabel row of all ``-1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from hydranet.tasks import MISSING_INT

__all__ = ["LabelScanWarning", "as_label_array", "label_columns", "missing_mask"]


class LabelScanWarning(UserWarning):
    """Labels were read by iterating the dataset, which loads every input."""


def as_label_array(values: Any) -> np.ndarray:
    """A numpy array from a tensor, list or array; ``None`` entries make an object array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return values
    values = list(values)
    if any(v is None for v in values):
        return np.array(values, dtype=object)
    return np.asarray([v.numpy() if isinstance(v, torch.Tensor) else v for v in values])


def missing_mask(labels: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Boolean ``[n]``: True where a label is missing (see the module docstring for the conventions)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if labels.dtype == object:
        return np.fromiter((_missing_value(v, kind) for v in labels), dtype=bool, count=n)
    flat = labels.reshape(n, -1)
    if labels.dtype.kind == "f":
        if kind in ("binary", "multiclass", "multilabel"):
            return np.all((flat == MISSING_INT) | np.isnan(flat), axis=1)
        return np.all(np.isnan(flat), axis=1)
    if labels.dtype.kind in "iu" and kind != "regression":
        return np.all(flat == MISSING_INT, axis=1)
    return np.zeros(n, dtype=bool)


def _missing_value(value: Any, kind: str | None) -> bool:
    if value is None:
        return True
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype == object:
        return False
    if array.size == 0:
        return False
    if array.dtype.kind == "f":
        if np.all(np.isnan(array)):
            return True
        return kind != "regression" and bool(np.all(array == MISSING_INT))
    if array.dtype.kind in "iu":
        return kind != "regression" and bool(np.all(array == MISSING_INT))
    return False


def _attribute_labels(dataset: Any) -> Any | None:
    for name in ("targets", "labels"):
        value = getattr(dataset, name, None)
        if value is not None and not callable(value):
            return value
    return None


def label_columns(
    dataset: Dataset,
    n_columns: int,
    parse: Callable[[Any], Sequence[Any]],
    *,
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """``n_columns`` label arrays of ``dataset`` (one per task), each ``[len(dataset), ...]``.

    ``parse`` turns one item into its ``n_columns`` labels; it is used only by the last-resort scan.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if isinstance(dataset, Subset):
        parent = label_columns(dataset.dataset, n_columns, parse, names=names)
        index = np.asarray(dataset.indices, dtype=np.int64)
        return [column[index] for column in parent]
    value = _attribute_labels(dataset)
    if value is not None:
        columns = _split_columns(value, n_columns, names)
        if columns is not None and all(len(c) == n for c in columns):
            return columns
    if isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1:]
        if len(labels) == n_columns:
            return [as_label_array(t) for t in labels]
        if len(labels) == 1 and n_columns > 1 and labels[0].ndim == 2 and labels[0].shape[1] == n_columns:
            return [as_label_array(labels[0][:, j]) for j in range(n_columns)]
    return _scan(dataset, n_columns, parse)


def _split_columns(value: Any, n_columns: int, names: Sequence[str] | None) -> list[np.ndarray] | None:
    if isinstance(value, dict):
        if names is None or any(name not in value for name in names):
            return None
        return [as_label_array(value[name]) for name in names]
    array = as_label_array(value)
    if n_columns == 1:
        return [array]
    if array.ndim == 2 and array.shape[1] == n_columns and array.dtype != object:
        return [array[:, j] for j in range(n_columns)]
    return None


def _scan(dataset: Dataset, n_columns: int, parse: Callable[[Any], Sequence[Any]]) -> list[np.ndarray]:
    from tqdm.auto import tqdm

    warnings.warn(
        f"Reading the labels of {type(dataset).__name__} by loading each of its {len(dataset)} items. "  # type: ignore[arg-type]
        "Give them without loading inputs: labels= of MultiTaskDataset, a `targets` attribute on the "
        "dataset, or a TensorDataset.",
        LabelScanWarning,
        stacklevel=4,
    )
    columns: list[list[Any]] = [[] for _ in range(n_columns)]
    for k in tqdm(range(len(dataset)), desc="reading labels", leave=False, mininterval=1.0):  # type: ignore[arg-type]
        for column, value in zip(columns, parse(dataset[k])):
            column.append(value)
    return [as_label_array(c) for c in columns]
