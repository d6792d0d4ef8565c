"""The inputs of a Hugging Face dataset: which columns, read as one tensor, or fetched row by row.

Private to :mod:`hydranet.data.readers.hf`. Numeric input columns are read once into a float32 array
(batches are then one indexing operation); an ``Image`` or other single column stays in the dataset
and :class:`HFSamples` fetches and decodes it when a sample is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hydranet._checks import did_you_mean
from hydranet.data.labels import missing_mask
from hydranet.data.readers._hf_arrow import (
    Problems,
    arrow_column,
    describe,
    import_datasets,
    is_numeric,
    make_problems,
    valid_mask,
)
from hydranet.data.readers.images import ImageReadError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["HFSamples", "feature_inputs", "input_columns"]


# -- inputs ------------------------------------------------------------------------------------------------
def input_columns(features: Mapping[str, Any], input: str | Sequence[str] | None) -> list[str]:
    hf = import_datasets()
    columns = list(features)
    if input is None:
        images = [c for c, f in features.items() if isinstance(f, hf.Image)]
        if len(images) != 1:
            found = f"its Image columns are {images}" if images else "it has no Image column"
            raise ValueError(
                f"Which column is the input? {found.capitalize()}; pass input='column' (an Image or other column) "
                f"or input=['feature', ...] (numeric columns). Columns: {', '.join(map(repr, columns))}."
            )
        return images
    names = [input] if isinstance(input, str) else list(input)
    if not names:
        raise ValueError("input= is empty: name the input column, or the numeric feature columns.")
    for name in names:
        if name not in features:
            raise ValueError(
                f"input= names {name!r}, which is not a column of the dataset.{did_you_mean(name, columns)} "
                f"Its columns: {', '.join(map(repr, columns))}."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"input= names a column twice: {names}.")
    if len(names) > 1:
        odd = [n for n in names if not is_numeric(features[n])]
        if odd:
            raise ValueError(
                f"input={names} mixes types: {', '.join(f'{n!r} is {describe(features[n])}' for n in odd)}. "
                "Several input columns are stacked into one float tensor, so each must hold numbers (or "
                "fixed-length lists of them); an Image or text column is one input on its own."
            )
    return names


def _dense(array: pa.Array, name: str) -> np.ndarray:
    """float32 ``[n, ...]`` of a numeric column (lists and ArrayND nested), NaN where a row is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array.type, pa.ExtensionType):
        array = array.storage
    t = array.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        valid = valid_mask(array)
        present = array.filter(pa.array(valid))
        lengths = np.unique(pc.list_value_length(present).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ValueError(
                f"Input column {name!r} holds lists of different lengths ({', '.join(map(str, lengths[:5]))}"
                f"{', ...' if len(lengths) > 5 else ''}): the inputs are stacked into one tensor, so every row needs "
                "the same length. Pad or cut them first (dataset.map), or pass it as the only input with transform=."
            )
        size = int(lengths[0]) if len(lengths) else 0
        inner = _dense(present.flatten(), name)
        out = np.full((len(array), size, *inner.shape[1:]), np.nan, dtype=np.float32)
        out[valid] = inner.reshape(-1, size, *inner.shape[1:])
        return out
    return np.asarray(pc.cast(array, pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)


def feature_inputs(
    dataset: Any, names: Sequence[str], rows: np.ndarray | None
) -> tuple[np.ndarray, list[Problems]]:
    """``(float32 inputs [n, ...], problems)``: one column keeps its shape, several are flattened side by side."""
    n = len(dataset)
    parts, problems = [], []
    for name in names:
        values = _dense(arrow_column(dataset, name, rows), name)
        bad = np.flatnonzero(~np.isfinite(values.reshape(n, -1)).all(axis=1))
        problems.append(make_problems(bad, [f"input {name!r} is None or not finite"] * len(bad)))
        parts.append(values)
    if len(parts) == 1:
        values = parts[0] if parts[0].ndim > 1 else parts[0][:, None]
    else:
        values = np.concatenate([p.reshape(n, -1) for p in parts], axis=1)
    return values, problems


# -- samples -----------------------------------------------------------------------------------------------
class HFSamples(Dataset):
    """Rows of a Hugging Face dataset: ``samples[i] -> (transform(input), {task: label})``.

    Args:
        dataset: the ``datasets.Dataset``; only its ``column`` is fetched, and only on ``__getitem__``.
        column: the input column: an ``Image`` column (decoded, converted to RGB) or any other.
        rows: the dataset position of each sample (rows left out by the reader are absent).
        labels: ``{task: array [n]}``: int64 class indices (-1 missing), float32 values (NaN missing),
            multilabel ``[n, C]`` 0/1 rows (a row of -1 missing), float32 ``[n, dim]`` vectors.
        kinds: ``{task: kind}``, to tell missing labels by the conventions of :mod:`hydranet.data.labels`.
        transform: applied to the decoded value.

    Picklable (``DataLoader`` workers): a dataset saved on disk pickles as its memory-mapped files.
    ``__getitems__`` fetches a batch of rows in one call, which ``MultiTaskDataset`` uses.
    """

    def __init__(
        self,
        dataset: Any,
        column: str,
        rows: np.ndarray,
        labels: Mapping[str, np.ndarray],
        kinds: Mapping[str, str],
        transform: Callable[[Any], Any],
    ) -> None:
        hf = import_datasets()
        self.column = column
        self.image = isinstance(dataset.features[column], hf.Image)
        data = dataset.select_columns([column])
        if self.image and not data.features[column].decode:
            data = data.cast_column(column, hf.Image(decode=True))
        self.dataset = data
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = {name: np.asarray(values) for name, values in labels.items()}
        for name, values in self.targets.items():
            if len(values) != len(self.rows):
                raise ValueError(f"labels[{name!r}] has {len(values)} entries for {len(self.rows)} rows.")
        self._present = {name: ~missing_mask(values, kinds[name]) for name, values in self.targets.items()}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def _labels(self, index: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, values in self.targets.items():
            if self._present[name][index]:
                out[name] = torch.as_tensor(values[index])
        return out

    def _input(self, value: Any, row: int) -> Any:
        if self.image:
            if value is None:
                raise ImageReadError(f"Row {row} of the dataset has no image in column {self.column!r}.")
            value = value.convert("RGB")
        return self.transform(value)

    def _fetch(self, rows: list[int]) -> list[Any]:
        try:
            return self.dataset[rows][self.column]
        except Exception as err:  # decoding errors of any image library: find and name the row
            if len(rows) > 1:
                return [self._fetch([r])[0] for r in rows]
            raise ImageReadError(
                f"Cannot decode row {rows[0]} of column {self.column!r}: {type(err).__name__}: {err}."
            ) from err

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        row = int(self.rows[index])
        (value,) = self._fetch([row])
        return self._input(value, row), self._labels(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, dict[str, torch.Tensor]]]:
        rows = self.rows[np.asarray(indices, dtype=np.int64)].tolist()
        values = self._fetch(rows)
        return [(self._input(v, r), self._labels(i)) for v, r, i in zip(values, rows, indices)]

    def __repr__(self) -> str:
        return f"HFSamples({len(self)} rows, input={self.column!r}, tasks={list(self.targets)})"
