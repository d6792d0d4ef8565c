"""Loggers of a run, epoch by epoch: :class:`CSVLogger` writes the rows of each epoch in long format
(``epoch,split,task,metric,value``, one line per value), :class:`TensorBoardLogger` as scalars tagged
``split/task/metric`` (the ``tensorboard`` extra).

Rows are ``(split, task, metric, value)``: losses are ``(split, task, "loss")``, metrics
``(split, task, metric)``, balancer values ``("balancer", task, "weight" | "grad_norm")`` and
``("balancer", "a:b", "cosine")`` for a task pair, extras ``("", "", name)``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydranet.report.history import EpochLog, Row

__all__ = ["CSVLogger", "TensorBoardLogger"]


def _rows_of(values: EpochLog | Mapping[str, Any]) -> list[Row]:
    if isinstance(values, EpochLog):
        return values.rows()
    rows: list[Row] = []
    for split, per_task in values.items():
        if not isinstance(per_task, Mapping) or not all(isinstance(v, Mapping) for v in per_task.values()):
            raise TypeError(
                "log() takes an EpochLog or a mapping {split: {task: {metric: value}}}; "
                f"the entry {split!r} is not a mapping of tasks to mappings."
            )
        rows += [(str(split), str(t), str(m), float(v)) for t, ms in per_task.items() for m, v in ms.items()]
    return sorted(rows)


class CSVLogger:
    """Appends one line per value to a CSV file with the columns ``epoch,split,task,metric,value``.

    Long format, so tasks and metrics may come and go between epochs; pivot it with pandas, e.g.
    ``df.pivot_table(index="epoch", columns=["split", "task", "metric"], values="value")``. Values are
    written with Python's shortest round-trip ``repr``; rows of an epoch are sorted.

    Args:
        path: the CSV file (its folder is created).
        append: continue an existing file (resumed training) instead of starting a new one.
    """

    COLUMNS = ("epoch", "split", "task", "metric", "value")

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (append and self.path.exists() and self.path.stat().st_size > 0)
        self._file = self.path.open("w" if fresh else "a", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._writer.writerow(self.COLUMNS)
            self._file.flush()

    def log(self, epoch: int, values: EpochLog | Mapping[str, Any]) -> None:
        """Write the rows of ``values`` (an :class:`EpochLog` or ``{split: {task: {metric: value}}}``)."""
        self._writer.writerows((int(epoch), s, t, m, repr(v)) for s, t, m, v in _rows_of(values))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CSVLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger:
    """Writes each value as a TensorBoard scalar tagged ``split/task/metric`` at step ``epoch``.

    View with ``tensorboard --logdir DIR``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install 'hydranet[tensorboard]', "
                "or build the Trainer with tensorboard=False."
            ) from error

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, epoch: int, values: EpochLog | Mapping[str, Any]) -> None:
        for split, task, metric, value in _rows_of(values):
            tag = "/".join(part for part in (split, task, metric) if part)
            self._writer.add_scalar(tag, value, global_step=int(epoch))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
