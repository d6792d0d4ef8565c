"""Collating multi-task samples into a :class:`Batch`.

A sample is ``(input, {task: target})`` with only the tasks that sample is labelled for. A batch
keeps, for every task present in at least one sample:

* ``targets[task]``: a tensor ``[B, ...]`` (rows of unlabelled samples hold a filler value and must
  not be read), or for ragged tasks a list of ``B`` tensors (``None`` where unlabelled);
* ``masks[task]``: a bool tensor ``[B]``, True where the sample carries that task's label.

Losses and metrics read ``targets[task][masks[task]]``: missing labels are masked, never imputed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "collate", "make_collate"]


@dataclass
class Batch:
    """A collated multi-task batch.

    Unpacks as ``inputs, targets, masks = batch``. Supports ``.to(device)`` and ``pin_memory()``
    (so ``DataLoader(pin_memory=True)`` works).
    """

    inputs: Any
    targets: dict[str, Tensor | list[Tensor | None]]
    masks: dict[str, Tensor]
    indices: Tensor | None = field(default=None)

    @property
    def tasks(self) -> list[str]:
        """Tasks with at least one labelled sample in this batch, in a stable order."""
        return [t for t, m in self.masks.items() if bool(m.any())]

    def __len__(self) -> int:
        first = next(iter(self.masks.values()), None)
        if first is not None:
            return int(first.shape[0])
        return int(_first_tensor(self.inputs).shape[0])

    def __iter__(self) -> Iterator[Any]:
        return iter((self.inputs, self.targets, self.masks))

    def counts(self) -> dict[str, int]:
        """Number of labelled samples per task."""
        return {t: int(m.sum()) for t, m in self.masks.items()}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda v: _apply(v, lambda t: t.to(device, non_blocking=non_blocking))  # noqa: E731
        return Batch(move(self.inputs), move(self.targets), move(self.masks), self.indices)

    def pin_memory(self) -> Batch:
        pin = lambda v: _apply(v, lambda t: t.pin_memory())  # noqa: E731
        return Batch(pin(self.inputs), pin(self.targets), pin(self.masks), self.indices)


def _apply(value: Any, fn: Any) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _apply(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_apply(v, fn) for v in value)
    return value


def _first_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        return _first_tensor(next(iter(value.values())))
    if isinstance(value, (list, tuple)):
        return _first_tensor(value[0])
    raise TypeError(f"Cannot find a tensor in batch inputs of type {type(value).__name__}.")


def _as_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return torch.as_tensor(value)


def _stack_inputs(inputs: Sequence[Any], indices: Sequence[int] | None) -> Any:
    first = inputs[0]
    if isinstance(first, Mapping):
        return {k: _stack_inputs([x[k] for x in inputs], indices) for k in first}
    if isinstance(first, tuple) and not isinstance(first, Tensor):
        return tuple(_stack_inputs([x[j] for x in inputs], indices) for j in range(len(first)))
    tensors = [_as_tensor(x) for x in inputs]
    shape = tensors[0].shape
    for pos, t in enumerate(tensors):
        if t.shape != shape:
            where = f"dataset index {indices[pos]}" if indices is not None else f"batch position {pos}"
            raise ValueError(
                f"Cannot stack inputs of different shapes: {tuple(shape)} and {tuple(t.shape)} ({where}). "
                "Resize them in the dataset's transform (e.g. hydranet.data.readers.default_transform(size=...)) "
                "or pass a collate function that pads."
            )
    return torch.stack(tensors)


def collate(
    samples: Sequence[tuple[Any, Mapping[str, Any]]],
    *,
    ragged: Sequence[str] = (),
    indices: Sequence[int] | None = None,
) -> Batch:
    """Collate ``[(input, {task: target}), ...]`` into a :class:`Batch`.

    Args:
        samples: items of a :class:`~hydranet.data.MultiTaskDataset`.
        ragged: tasks whose targets are kept as a list of tensors. A task whose targets differ in
            shape within the batch is treated as ragged automatically.
        indices: dataset indices of the samples, used only to name the culprit in errors.

    A :class:`Batch` passes through unchanged: ``MultiTaskDataset.__getitems__`` builds one directly
    for tensor-backed data, with one fancy-indexing operation instead of one call per sample.
    """
    if isinstance(samples, Batch):
        return samples
    if len(samples) == 0:
        raise ValueError("Cannot collate an empty batch.")
    batch_size = len(samples)
    task_order: dict[str, None] = {}
    for _, labels in samples:
        if not isinstance(labels, Mapping):
            raise TypeError(
                f"Expected samples of the form (input, {{task: target}}), got labels of type "
                f"{type(labels).__name__}. Wrap your datasets in hydranet.data.MultiTaskDataset."
            )
        for task in labels:
            task_order.setdefault(task, None)

    inputs = _stack_inputs([s[0] for s in samples], indices)
    targets: dict[str, Tensor | list[Tensor | None]] = {}
    masks: dict[str, Tensor] = {}
    for task in task_order:
        rows = [labels.get(task) for _, labels in samples]
        mask = torch.tensor([r is not None for r in rows], dtype=torch.bool)
        present = [_as_tensor(r) for r in rows if r is not None]
        shapes = {tuple(t.shape) for t in present}
        if task in ragged or len(shapes) > 1:
            targets[task] = [None if r is None else _as_tensor(r) for r in rows]
        else:
            ref = present[0]
            out = torch.zeros((batch_size, *ref.shape), dtype=_common_dtype(present))
            out[mask] = torch.stack(present).to(out.dtype)
            targets[task] = out
        masks[task] = mask
    idx = torch.as_tensor(indices, dtype=torch.long) if indices is not None else None
    return Batch(inputs, targets, masks, idx)


def _common_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def make_collate(ragged: Sequence[str] = ()) -> Any:
    """A ``collate_fn`` that keeps the given tasks ragged (picklable, for worker processes)."""
    return _RaggedCollate(tuple(ragged))


class _RaggedCollate:
    def __init__(self, ragged: tuple[str, ...]) -> None:
        self.ragged = ragged

    def __call__(self, samples: Sequence[tuple[Any, Mapping[str, Any]]]) -> Batch:
        return collate(samples, ragged=self.ragged)
