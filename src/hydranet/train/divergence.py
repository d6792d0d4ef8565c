"""A warning for a run that diverges while its numbers are still finite.

:class:`DivergenceWarning` watches each task's epoch training loss :math:`L_t^{(e)}` and warns once per
task when

.. math::  L_t^{(e)} > f \\cdot \\min_{e' < e} L_t^{(e')} \\quad\\text{and}\\quad L_t^{(e)} > L_t^{(0)}

with the factor :math:`f` (``divergence_factor``, default :math:`10^3`). The second condition keeps a
loss that fell to almost 0 and rose a little (over-fitting noise) from counting: a diverging loss
leaves its starting scale too (``5e4 -> 1.6e16``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hydranet import runtime
from hydranet.report.history import EpochLog
from hydranet.train.callbacks import Callback

if TYPE_CHECKING:
    from hydranet.train.trainer import Trainer

__all__ = ["DivergenceWarning"]

logger = logging.getLogger("hydranet.train")


class DivergenceWarning(Callback):
    """Warns once per task when its epoch training loss exceeds ``factor`` times its best so far and
    its first value, naming the task, the values and the usual fixes (``RuntimeWarning`` and the
    ``hydranet.train`` logger). A resumed run takes the best and first values from its history. Rank 0
    warns (the epoch means are those of all ranks). The trainer adds one unless
    ``divergence_factor=None``.
    """

    def __init__(self, factor: float = 1e3) -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
            raise ValueError(f"divergence_factor must be a number > 1 (or None for no warning), got {factor!r}.")
        self.factor = float(factor)
        self.first: dict[str, float] = {}
        self.best: dict[str, tuple[float, int]] = {}
        self.warned: set[str] = set()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.first, self.best, self.warned = {}, {}, set()
        for log in trainer.history:
            self._record(log.epoch, log.losses.get("train", {}))

    def on_epoch_end(self, trainer: Trainer, epoch: int, log: EpochLog) -> None:
        losses = log.losses.get("train", {})
        for task, value in losses.items():
            if task in self.warned or task not in self.best or not math.isfinite(value):
                continue
            best, best_epoch = self.best[task]
            if value > self.factor * best and value > self.first[task]:
                self.warned.add(task)
                if runtime.is_main_process():
                    self._warn(trainer, task, value, epoch, best, best_epoch)
        self._record(epoch, losses)

    def _record(self, epoch: int, losses: Mapping[str, float]) -> None:
        for task, value in losses.items():
            if math.isfinite(value):
                self.first.setdefault(task, value)
                if task not in self.best or value < self.best[task][0]:
                    self.best[task] = (value, epoch)

    def _warn(self, trainer: Trainer, task: str, value: float, epoch: int, best: float, best_epoch: int) -> None:
        clip = (
            "clip gradients (grad_clip=1.0)"
            if trainer.grad_clip is None
            else f"clip harder (grad_clip={trainer.grad_clip:g} now)"
        )
        balance = "" if trainer.balancer.name == "uw" else ", or balance the task losses (balancer='uw')"
        ratio = f"{value / best:.3g} times" if best > 0 else "from 0"
        message = (
            f"Task {task!r} is diverging: its training loss grew from {best:.3g} (its best, epoch {best_epoch}) "
            f"to {value:.3g} at epoch {epoch} ({ratio}). Lower the learning rate (lr={trainer.lr:g}), {clip}"
            f"{balance}. divergence_factor=None turns this warning off."
        )
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        logger.warning(message)
