"""Training: one multi-task :class:`Step`, the :class:`Trainer` loop around it, callbacks, checkpoints
and single-task baselines.

* :mod:`~hydranet.train.step`: :class:`Step` (forward, masked losses, balancer backward, guards, DDP's
  unused heads), reusable by a LightningModule or your own loop;
* :mod:`~hydranet.train.trainer`: :class:`Trainer` (fit / evaluate / predict / report);
* :mod:`~hydranet.train.callbacks`: :class:`Callback` and the built-ins (progress on the console,
  early stopping, log files, checkpoints, report);
* :mod:`~hydranet.train.checkpoint`: atomic, verified checkpoint files and random states;
* :mod:`~hydranet.train.errors`: :class:`TrainingError`, the base of the errors a user can cause;
* :mod:`~hydranet.train.divergence`: :class:`DivergenceWarning`, for a run whose loss explodes;
* :mod:`~hydranet.train.baselines`: single-task baselines and Δm against them;
* :mod:`~hydranet.train.loaders`: what the loop needs to know of a loader.
"""

from hydranet.runtime import is_main_process
from hydranet.train._setup import OPTIMIZERS, SCHEDULERS, make_balancer, make_optimizer, select_tasks
from hydranet.train.callbacks import Callback, Checkpointing, EarlyStopping, LogFiles, Progress, WriteReport
from hydranet.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from hydranet.train.divergence import DivergenceWarning
from hydranet.train.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    NonFiniteGradientError,
    NonFiniteLossError,
    NonFiniteStateError,
    TrainingError,
)
from hydranet.train.step import Step, StepOutput
from hydranet.train.trainer import Trainer

__all__ = [
    "Callback",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "Checkpointing",
    "DivergenceWarning",
    "EarlyStopping",
    "LogFiles",
    "NonFiniteGradientError",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "OPTIMIZERS",
    "Progress",
    "SCHEDULERS",
    "Step",
    "StepOutput",
    "Trainer",
    "TrainingError",
    "WriteReport",
    "is_main_process",
    "load_checkpoint",
    "make_balancer",
    "make_optimizer",
    "save_checkpoint",
    "seed_everything",
    "select_tasks",
]
