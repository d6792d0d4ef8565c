"""Hooks into :class:`~hydranet.train.Trainer`: subclass :class:`Callback` and override what you need.

The trainer calls, in this order::

    on_fit_start(trainer)
    for each epoch:
        on_epoch_start(trainer, epoch)
        on_batch_end(trainer, step, info)        # after every batch (micro-batch)
        on_validation_end(trainer, metrics)      # when there is a validation loader
        on_epoch_end(trainer, epoch, log)
    on_fit_end(trainer)                          # also when training stops early or fails

Callbacks run in the order given to the trainer. A callback stops training after the current epoch
by setting ``trainer.should_stop = True``. ``on_validation_end`` receives the validation scores
``{task: {metric: value}}`` as the trainer will use them: a callback may edit or add values there,
and early stopping, Δm, the history and the logs see the edited scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hydranet.report import EpochLog
    from hydranet.train import Trainer

__all__ = ["Callback", "CallbackList"]


class Callback:
    """Base class of trainer hooks; every hook does nothing by default."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch (after a resumed checkpoint is loaded)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first batch of ``epoch`` (counted from 0)."""

    def on_batch_end(self, trainer: Trainer, step: int, info: Mapping[str, Any]) -> None:
        """After every training batch.

        Args:
            step: optimizer steps taken so far (``trainer.global_step``).
            info: the balancer's diagnostics (``losses``, ``weights``, ``grad_norms``, ``cosines``, ...)
                plus ``batch`` (position in the epoch, from 1), ``stepped`` (whether this batch ended an
                accumulation group, so the optimizer stepped) and, when gradients are clipped and the
                optimizer stepped, ``grad_norm`` (the total norm before clipping).
        """

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, dict[str, float]]) -> None:
        """After validation; ``metrics`` is ``{task: {metric: value}}`` and may be edited in place."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, log: EpochLog) -> None:
        """After the epoch's record ``log`` is in ``trainer.history`` and early stopping has seen it,
        before the epoch's checkpoints are written."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch, or when training stops on an error."""


class CallbackList:
    """Dispatches each hook to several callbacks, in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"Callbacks must be hydranet.callbacks.Callback instances, got {type(callback).__name__}: "
                    "subclass Callback and override the hooks you need."
                )

    def __getattr__(self, hook: str) -> Any:
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def dispatch(*args: Any) -> None:
            for callback in self.callbacks:
                getattr(callback, hook)(*args)

        return dispatch
