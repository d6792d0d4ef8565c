"""The errors a user can cause while training, under one base class, :class:`TrainingError`.

Each message names the problem, where it happened and the fix. The classes also keep the built-in
base they had before (``FloatingPointError``, ``ValueError``, ``OSError``), so ``except ValueError``
and the like go on working::

    TrainingError
    ├── NonFiniteLossError      (FloatingPointError)  a task loss is NaN or infinite
    │   ├── NonFiniteGradientError                    the update is NaN / inf (on_nonfinite="stop", or too many skips)
    │   └── NonFiniteStateError                       weights or validation losses not finite: a save was refused
    ├── CheckpointError         (ValueError)          a file is no readable hydranet checkpoint (truncated, damaged, foreign)
    │   └── CheckpointMismatchError                   a valid checkpoint of another setup (tasks, optimizer, scheduler)
    └── CheckpointWriteError    (OSError)             a checkpoint could not be written (disk full, quota, file size limit)
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "NonFiniteGradientError",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "TrainingError",
]


class TrainingError(Exception):
    """Base of the errors of :mod:`hydranet.train` that a user can cause (bad data, settings or files)."""


class NonFiniteLossError(TrainingError, FloatingPointError):
    """A task loss (or the update) became NaN or infinite; training stopped, naming the last good checkpoint."""


class NonFiniteGradientError(NonFiniteLossError):
    """The gradient of a finite loss is NaN or infinite: with ``on_nonfinite="stop"`` at once, with
    ``"skip"`` after ``max_skips`` skipped optimizer steps in a row. The weights were not updated."""


class NonFiniteStateError(NonFiniteLossError):
    """The weights or the validation losses are not finite: the checkpoint was not written (the previous
    file is kept)."""


class CheckpointError(TrainingError, ValueError):
    """A file is not a readable hydranet checkpoint: truncated, damaged (its content hash differs) or
    written by another program."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint that does not fit this trainer: other tasks, another optimizer, scheduler or
    balancer."""


class CheckpointWriteError(TrainingError, OSError):
    """A checkpoint could not be written (a full disk, a quota, a file-size limit); the previous file is
    untouched."""
