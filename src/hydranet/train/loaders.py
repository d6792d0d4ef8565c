"""What the trainer reads from a loader and its batches.

A loader is anything iterable; the trainer asks of it only what these helpers find: batches as
:class:`~hydranet.data.Batch` (or ``(inputs, targets, masks)`` triples), the sampler that takes
``set_epoch`` and, for exact resume, whether that sampler saves a position. :class:`TaskView`
restricts a multi-task loader to one task, which is how single-task baselines train on the very
batches the multi-task model saw. :func:`check_shards` checks, under DDP, that a loader's sampler
shards over every rank and gives every rank as many batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from hydranet import runtime
from hydranet.data import Batch

__all__ = [
    "TaskView",
    "as_batch",
    "check_shards",
    "epoch_sampler",
    "inputs_of",
    "length_of",
    "move_to",
    "takes_position",
]


def as_batch(batch: Any) -> Batch:
    """The batch as a :class:`Batch`, or a TypeError that says how to make the loader yield one."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[1], Mapping):
        return Batch(batch[0], dict(batch[1]), dict(batch[2]))
    raise TypeError(
        f"The loader yields {type(batch).__name__}; the trainer needs hydranet Batch objects (or "
        "(inputs, targets, masks) triples): use DataLoader(..., collate_fn=hydranet.data.collate)."
    )


def inputs_of(batch: Any) -> Any:
    """The model inputs of a batch: a Batch's inputs, the first item of a tuple, or the batch itself."""
    if isinstance(batch, Batch):
        return batch.inputs
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def move_to(value: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch part on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: move_to(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(move_to(v, device) for v in value)
    return value


def epoch_sampler(loader: Any) -> Any:
    """The loader's sampler that takes ``set_epoch`` (batch sampler first), or None."""
    for attribute in ("batch_sampler", "sampler"):
        sampler = getattr(loader, attribute, None)
        if sampler is not None and callable(getattr(sampler, "set_epoch", None)):
            return sampler
    return None


def takes_position(sampler: Any) -> bool:
    """Whether the sampler saves and restores a position (``state_dict(position=...)``)."""
    if not (callable(getattr(sampler, "state_dict", None)) and callable(getattr(sampler, "load_state_dict", None))):
        return False
    try:
        return "position" in inspect.signature(sampler.state_dict).parameters
    except (TypeError, ValueError):
        return False


def length_of(loader: Any) -> int | None:
    """``len(loader)``, or None for loaders without a length."""
    try:
        return len(loader)
    except TypeError:
        return None


class TaskView:
    """A loader restricted to one task: other tasks' labels and rows are dropped, batches without the
    task are skipped (under DDP only those that no rank has the task in, so that all ranks skip the
    same ones). Used to train single-task baselines on the multi-task loaders."""

    def __init__(self, loader: Any, task: str) -> None:
        self.loader, self.task = loader, task
        # set_epoch must still reach the real sampler.
        self.batch_sampler = getattr(loader, "batch_sampler", None)
        self.sampler = getattr(loader, "sampler", None)

    def __len__(self) -> int:
        per_task = getattr(self.batch_sampler, "batches_per_task", None)
        if isinstance(per_task, Mapping) and self.task in per_task:
            return int(per_task[self.task])
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        task = self.task
        for raw in self.loader:
            batch = as_batch(raw)
            mask = batch.masks.get(task)
            present = mask is not None and bool(mask.any())
            if not runtime.count([present])[0]:
                continue
            if mask is None or not present:  # other ranks have the task: this rank comes with no sample of it
                yield Batch(_take_rows(batch.inputs, torch.zeros(0, dtype=torch.long)), {}, {}, None)
                continue
            rows = mask.nonzero().squeeze(1)
            target = batch.targets[task]
            target = [target[int(i)] for i in rows] if isinstance(target, list) else target[rows]
            yield Batch(_take_rows(batch.inputs, rows), {task: target}, {task: mask[rows]}, None)


def _take_rows(value: Any, rows: Tensor) -> Any:
    """The given rows of every tensor in a (nested) batch part."""
    if isinstance(value, Tensor):
        return value[rows.to(value.device)]
    if isinstance(value, Mapping):
        return {k: _take_rows(v, rows) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_take_rows(v, rows) for v in value)
    return value


def check_shards(loader: Any, name: str, *, same_length: bool) -> None:
    """Under DDP: the loader's sampler shards over all ranks, and (``same_length``, training) every rank
    runs as many batches, or some rank would wait forever for the others' gradients. Every rank decides
    on the same gathered facts, so all raise together (collective; nothing outside a process group)."""
    if not runtime.is_distributed():
        return
    sampler = epoch_sampler(loader) or getattr(loader, "sampler", None)
    facts = runtime.gather((length_of(loader), getattr(sampler, "num_replicas", None)))
    world = runtime.world_size()
    replicas = {r for _, r in facts if r is not None}
    if replicas and replicas != {world}:
        raise ValueError(
            f"The {name}'s sampler shards the data over {sorted(replicas)} replica(s), but {world} processes "
            "train: build the samplers after the process group starts (inside hydranet.distributed."
            "process_group()), so that they take the world size from it."
        )
    lengths = [n for n, _ in facts]
    if same_length and (None in lengths or len(set(lengths)) > 1):
        shown = ", ".join(f"rank {r}: {'no length' if n is None else n}" for r, n in enumerate(lengths))
        raise ValueError(
            f"Under DDP every rank must run the same number of training batches, and the {name} gives "
            f"{shown}. Use hydranet.data.TaskBatchSampler (equal batches on every rank) or a "
            "DistributedSampler, with a loader that has a length."
        )
