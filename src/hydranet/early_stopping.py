"""Early stopping: patience on a monitored value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """Patience on a monitored value.

    A value improves on the best so far when it is larger by more than ``min_delta`` (``mode="max"``)
    or smaller by more than ``min_delta`` (``"min"``); a NaN never improves. After ``patience``
    epochs in a row without improvement, ``stopped`` becomes true (never with ``patience=None``).
    """

    mode: str
    patience: int | None = None
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False

    def update(self, value: float, epoch: int) -> bool:
        """Record the value of ``epoch``; return whether it is a new best."""
        value = float(value)
        if self.best is None and math.isfinite(value):
            better = True
        elif self.mode == "max":
            better = self.best is not None and value > self.best + self.min_delta
        else:
            better = self.best is not None and value < self.best - self.min_delta
        if better:
            self.best, self.best_epoch, self.wait = value, int(epoch), 0
            return True
        self.wait += 1
        if self.patience is not None and self.wait >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped": self.stopped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped = int(state["wait"]), bool(state["stopped"])
