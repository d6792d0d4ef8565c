"""When the Trainer runs a bilevel weighting's meta-step, and with which validation batch (:class:`MetaSchedule`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from hydranet.data import Batch
from hydranet.train.loaders import as_batch
from hydranet.train.step import Step

__all__ = ["MetaSchedule"]


class MetaSchedule:
    """Every ``meta_every`` optimizer steps (the weighting's), before the first micro-batch of the step:
    ``step.meta_step(train_batch, next validation batch)``, cycling through ``val_loader``."""

    def __init__(self, step: Step, val_loader: Iterable[Any], every: int) -> None:
        self.step, self.val_loader, self.every = step, val_loader, every
        self._iterator: Iterator[Any] | None = None
        self.last: dict[str, float] | None = None

    @classmethod
    def of(cls, step: Step, val_loader: Iterable[Any] | None) -> MetaSchedule | None:
        """The schedule of ``step``'s balancer, or ``None`` when it has no meta-step."""
        method = step.balancer.method
        if not getattr(method, "needs_validation", False):
            return None
        if val_loader is None:
            raise ValueError(
                f"{step.balancer.name!r} learns its task weights on validation batches: pass val_loader to "
                "Trainer.fit (hydranet train: a data.val section)."
            )
        return cls(step, val_loader, int(getattr(method, "meta_every", 1)))

    def __call__(self, train_batch: Batch, global_step: int) -> None:
        if global_step % self.every:
            return
        self.last = self.step.meta_step(train_batch, self._next())

    def _next(self) -> Batch:
        for _ in range(2):  # a fresh pass when the loader is exhausted
            if self._iterator is None:
                self._iterator = iter(self.val_loader)
            try:
                return as_batch(next(self._iterator))
            except StopIteration:
                self._iterator = None
        raise ValueError("The validation loader yields no batch: the meta-step needs at least one.")
