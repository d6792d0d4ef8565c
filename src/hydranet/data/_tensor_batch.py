"""Batches of tensor-backed datasets made by fancy indexing, equal to collating the items one by one.

Private to :mod:`hydranet.data.dataset`. A part of a :class:`~hydranet.data.MultiTaskDataset` backed by a
``TensorDataset`` (or a ``Subset`` of one, at any depth) gives a whole batch with one indexing
operation per part and task instead of one ``__getitem__`` per sample: :func:`tensor_batch` builds the
:class:`~hydranet.data.Batch` that :func:`~hydranet.data.collate` would build from the same items
(targets, masks, tasks in order of their first labelled row).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Subset, TensorDataset

from hydranet.data._collate import Batch
from hydranet.data.labels import CLASS_KINDS
from hydranet.tasks import MISSING_INT

__all__ = ["TensorPart", "missing_rows", "tensor_base", "tensor_batch"]


@dataclass
class TensorPart:
    """A part backed by a TensorDataset, for batches made by fancy indexing."""

    inputs: Tensor
    labels: list[Tensor]  # one per task of the part (views of the TensorDataset's tensors)
    kinds: list[str | None]  # each task's kind: which values of a batch are missing (decided per batch)
    rows: Tensor | None  # the TensorDataset rows a Subset selects (None: all, in order)


def tensor_base(dataset: Any) -> tuple[TensorDataset, np.ndarray | None] | None:
    """The TensorDataset under ``dataset`` (through Subsets) and the rows it selects, or None.

    A subclass that overrides ``__getitem__`` (a transform, say) is not indexed around."""
    if isinstance(dataset, TensorDataset) and type(dataset).__getitem__ is TensorDataset.__getitem__:
        return dataset, None
    if isinstance(dataset, Subset) and type(dataset).__getitem__ is Subset.__getitem__:
        found = tensor_base(dataset.dataset)
        if found is not None:
            base, rows = found
            index = np.asarray(dataset.indices, dtype=np.int64)
            return base, index if rows is None else rows[index]
    return None


def missing_rows(values: Tensor, kind: str | None) -> Tensor:
    """``[b]`` bool, True where a batch row is a missing-label marker: :func:`missing_mask`'s rules on a
    tensor, on its own device (no copy to the CPU)."""
    flat = values.reshape(len(values), -1)
    if flat.shape[1] == 0:
        return torch.zeros(len(values), dtype=torch.bool, device=values.device)
    if flat.is_floating_point():
        missing = torch.isnan(flat).all(dim=1)
        if kind in CLASS_KINDS:
            missing |= (flat == MISSING_INT).all(dim=1)
        return missing
    if flat.dtype.is_signed and not flat.is_complex() and kind != "regression":  # signed integers ("i")
        return (flat == MISSING_INT).all(dim=1)
    return torch.zeros(len(values), dtype=torch.bool, device=values.device)  # unsigned, bool: never missing


def tensor_batch(
    index: np.ndarray,
    part_of: np.ndarray,
    parts: Sequence[int],
    fast: Sequence[TensorPart],
    names: Sequence[Sequence[str]],
    offsets: np.ndarray,
    shared: bool,
) -> Batch | None:
    """The batch of global indices ``index`` (``part_of`` their part; ``parts`` the distinct ones, with
    their :class:`TensorPart` ``fast`` and task ``names``; ``offsets`` the parts' first global indices),
    or None when the parts' inputs differ in shape (which ``collate`` reports)."""
    shape = fast[0].inputs.shape[1:]
    if any(f.inputs.shape[1:] != shape for f in fast):
        return None
    size = len(index)
    whole = torch.from_numpy(index)
    spots: list[np.ndarray | None]
    inputs: Tensor | None
    if len(parts) == 1:
        spots = [None]  # the part fills the whole batch
        inputs = None
    else:
        spots = [np.flatnonzero(part_of == p) for p in parts]
        dtype = functools.reduce(torch.promote_types, [f.inputs.dtype for f in fast])
        inputs = torch.empty((size, *shape), dtype=dtype, device=fast[0].inputs.device)
    targets: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    first: dict[str, tuple[int, int]] = {}  # task -> (first labelled row, task position): collate's order
    for p, part, part_names, at in zip(parts, fast, names, spots):
        local = torch.from_numpy((index if at is None else index[at]) - offsets[p])
        source = local if part.rows is None else part.rows[local]
        spot = None if at is None else torch.from_numpy(at)
        if inputs is None:
            inputs = part.inputs[source]
        else:
            inputs[spot] = part.inputs[source].to(inputs.dtype)
        for k, name in enumerate(part_names):
            values = part.labels[k][source]
            missing = missing_rows(values, part.kinds[k])
            own = None if not bool(missing.any()) else ~missing  # None: every row labelled
            if own is not None:
                if not bool(own.any()):
                    continue
                if bool(own.all()):
                    own = None
                else:
                    values[~own] = 0  # collate's filler (values is a fresh copy)
            if spot is None:
                mask = torch.ones(size, dtype=torch.bool) if own is None else own
            else:  # rows of the other parts are unlabelled for this part's task
                spread = values.new_zeros((size, *values.shape[1:]))
                spread[spot] = values
                mask = torch.zeros(size, dtype=torch.bool)
                mask[spot] = True if own is None else own
                values = spread
            targets[name], masks[name] = values, mask
            if own is not None:
                row = int(torch.argmax(mask.to(torch.uint8)))
            else:
                row = 0 if spot is None else int(spot[0])
            first[name] = (row, k if shared else p)
    order = sorted(first, key=first.__getitem__)
    return Batch(inputs, {t: targets[t] for t in order}, {t: masks[t] for t in order}, whole)
