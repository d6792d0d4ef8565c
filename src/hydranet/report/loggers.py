"""Loggers of a run, epoch by epoch: :class:`ConsoleLogger` prints one line per epoch for a person to
read (:func:`format_epoch`), :class:`CSVLogger` writes the rows of each epoch in long format
(``epoch,split,task,metric,value``, one line per value), :class:`TensorBoardLogger` as scalars tagged
``split/task/metric`` (the ``tensorboard`` extra). :func:`describe_outputs` says what a run wrote where.

Rows are ``(split, task, metric, value)``: losses are ``(split, task, "loss")``, metrics
``(split, task, metric)``, balancer values ``("balancer", task, "weight" | "grad_norm")`` and
``("balancer", "a:b", "cosine")`` for a task pair, extras ``("", "", name)``.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from hydranet.report.history import EpochLog, Row

__all__ = ["CSVLogger", "ConsoleLogger", "TensorBoardLogger", "describe_outputs", "format_epoch"]


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


def _monitored(name: str, value: float) -> str:
    return f"{value:+.2f}%" if name.endswith("delta_m") else _num(value)


def format_epoch(
    log: EpochLog,
    *,
    epochs: int | None = None,
    monitor: str | None = None,
    best: float | None = None,
    best_epoch: int | None = None,
    verbose: bool = False,
    label: str = "",
) -> list[str]:
    """The console lines of one epoch: one line, and with ``verbose`` the balancer's diagnostics too.

    The line holds the epoch (from 1, of ``epochs``), its time, each task's training loss, each task's
    first validation metric (every metric and the validation losses with ``verbose``), Δm when there
    are baselines, and the monitored value's best so far, marked ``*`` when this epoch set it::

        epoch 2/5  11.8 s  train loss left 0.31  right 0.42 | val left accuracy 0.94  right accuracy 0.92 | Δm -0.52% | best val/delta_m -0.52% *
    """
    head = f"{label}epoch {log.epoch + 1}" + (f"/{epochs}" if epochs else "")
    parts = [head + (f"  {log.extra['seconds']:.1f} s" if "seconds" in log.extra else "")]
    train = log.losses.get("train", {})
    if train:
        parts[0] += "  train loss " + "  ".join(f"{t} {_num(v)}" for t, v in train.items())
    val_metrics, val_losses = log.metrics.get("val", {}), log.losses.get("val", {})
    shown = []
    for task in dict.fromkeys([*val_metrics, *val_losses]):
        metrics = list(val_metrics.get(task, {}).items())
        picked = metrics if verbose else metrics[:1]
        if verbose and task in val_losses or not picked and task in val_losses:
            picked.append(("loss", val_losses[task]))
        shown.append(f"{task} " + " ".join(f"{m} {_num(v)}" for m, v in picked))
    if shown:
        parts.append("val " + "  ".join(shown))
    if "val/delta_m" in log.extra:
        parts.append(f"Δm {log.extra['val/delta_m']:+.2f}%")
    if monitor is not None and best is not None:
        mark = " *" if best_epoch == log.epoch else f" (epoch {best_epoch + 1})" if best_epoch is not None else ""
        parts.append(f"best {monitor} {_monitored(monitor, best)}{mark}")
    lines = [" | ".join(parts)]
    if verbose:
        balancer = []
        if log.weights:
            balancer.append("weights " + "  ".join(f"{t} {_num(v)}" for t, v in log.weights.items()))
        if log.grad_norms:
            balancer.append("grad norms " + "  ".join(f"{t} {_num(v)}" for t, v in log.grad_norms.items()))
        pairs = log.cosine_pairs()
        if pairs:
            balancer.append("cosines " + "  ".join(f"{a}:{b} {v:+.2f}" for (a, b), v in pairs.items()))
        extra = [f"{k} {_num(v)}" for k, v in log.extra.items() if k in ("lr", "grad_norm")]
        if extra:
            balancer.append("  ".join(extra))
        if balancer:
            lines.append("    balancer: " + " | ".join(balancer))
    return lines


class ConsoleLogger:
    """Lines for a person, on ``stream`` (default: ``sys.stdout`` at the time of writing).

    With ``bars=True`` lines go through ``tqdm.write``, which prints them above the progress bars of
    the same stream and redraws the bars below: the lines stay, the bars move. ``isatty()`` tells
    whether the stream is a terminal (bars) or a file, a pipe or CI (plain lines only).
    """

    def __init__(self, stream: IO[str] | None = None, *, bars: bool = False) -> None:
        self._stream, self.bars = stream, bool(bars)

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def isatty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def write(self, line: str) -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def log(self, epoch: int, values: EpochLog, **options: Any) -> None:
        """Print the lines of :func:`format_epoch` (``options`` are its keywords)."""
        for line in format_epoch(values, **options):
            self.write(line)


#: What a run writes into its folder, in the order :func:`describe_outputs` lists it.
_OUTPUTS = (
    ("checkpoints", ("best.pt", "last.pt")),
    ("report", ("summary.md", "metrics.json", "history.json", "metrics.png")),
    ("logs", ("metrics.csv", "tensorboard")),
)


def describe_outputs(folder: str | Path) -> str:
    """One line per kind of output found in ``folder`` (checkpoints, report, logs), with its path."""
    folder = Path(folder)
    lines = [f"outputs in {folder.resolve()}:"]
    for kind, names in _OUTPUTS:
        found = [n + ("/" if (folder / n).is_dir() else "") for n in names if (folder / n).exists()]
        if kind == "report":
            found += sorted(p.name for p in folder.glob("*.png") if p.name not in names)
        if found:
            lines.append(f"  {kind + ':':<12} " + ", ".join(found))
    if len(lines) == 1:
        lines.append("  (nothing written)")
    return "\n".join(lines)


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
