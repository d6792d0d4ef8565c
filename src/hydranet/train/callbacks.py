"""Hooks into :class:`~hydranet.train.Trainer`: subclass :class:`Callback` and override what you need.

Built-in callbacks: :class:`Progress` (progress bars and one kept line per epoch on the console),
:class:`EarlyStopping` (patience on the monitored value), :class:`LogFiles` (``metrics.csv`` and
TensorBoard), :class:`Checkpointing` (``last.pt`` / ``best.pt``, also within epochs) and
:class:`WriteReport` (the report folder when fitting ends). The trainer builds the first four from its
settings (``progress=True``: a :class:`Progress` unless you give one); ``Progress`` and ``LogFiles`` run
before the callbacks you give, ``Checkpointing`` after them.

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

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hydranet import runtime
from hydranet._checks import check_int, check_number
from hydranet.report.history import EpochLog
from hydranet.report.summary import Report, write_report
from hydranet.train._evaluation import evaluate_loader
from hydranet.train.baselines import baseline_scores
from hydranet.train._files import remove_stale_temporaries
from hydranet.train.checkpoint import save_epoch_end, save_mid_epoch

if TYPE_CHECKING:
    from hydranet.train.trainer import Trainer

__all__ = [
    "Callback",
    "CallbackList",
    "Checkpointing",
    "EarlyStopping",
    "LogFiles",
    "Progress",
    "WriteReport",
    "write_run_report",
]


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
                    f"Callbacks must be hydranet.train.Callback instances, got {type(callback).__name__}: "
                    "subclass Callback and override the hooks you need."
                )

    def __getattr__(self, hook: str) -> Any:
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def dispatch(*args: Any) -> None:
            for callback in self.callbacks:
                getattr(callback, hook)(*args)

        return dispatch



class Progress(Callback):
    """What a person watching the run sees, as Lightning and Keras print it (rank 0 only).

    * One kept line per epoch (:func:`hydranet.report.loggers.format_epoch`): the epoch ``i/N``, its
      time, the training loss of each task, each task's first validation metric, Δm, and the best
      monitored value so far, marked ``*`` on the epoch that set it. ``verbose=True`` adds every
      validation metric and loss, and a second line with the balancer's diagnostics (loss weights,
      gradient norms, pairwise cosines, learning rate).
    * In a terminal, a tqdm bar per epoch with the running losses (``leave=False``: the bar goes, the
      epoch line written with ``tqdm.write`` stays).
    * Elsewhere (a file, a pipe, CI, ``nohup``), no bar: a plain line every ``interval`` seconds (or
      every ``every`` batches) with the batch, the batches per second and the running losses.

    Args:
        stream: where to write (default ``sys.stdout`` at the time of writing).
        bars: force bars on or off; default: bars when ``stream`` is a terminal.
        verbose: also every metric and the balancer's diagnostics.
        interval: seconds between plain progress lines (no bars).
        every: also a plain line every this many batches.
        label: put before each line, e.g. ``"baseline left: "``; default the trainer's ``progress_label``
            (set on the trainers of single-task baselines), else none.
    """

    def __init__(
        self,
        *,
        stream: IO[str] | None = None,
        bars: bool | None = None,
        verbose: bool = False,
        interval: float = 30.0,
        every: int | None = None,
        label: str | None = None,
    ) -> None:
        self.stream, self.bars_setting, self.verbose, self.label = stream, bars, bool(verbose), label
        self.interval = check_number("interval", interval, low=0.0)
        self.every = None if every is None else check_int("every", every, 1)
        self._console: Any = None
        self._bar: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from hydranet.report.loggers import ConsoleLogger

        self._console = None
        self._label = self.label if self.label is not None else str(getattr(trainer, "progress_label", ""))
        if not runtime.is_main_process():
            return
        console = ConsoleLogger(self.stream)
        console.bars = console.isatty() if self.bars_setting is None else bool(self.bars_setting)
        self._console = console

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._started = self._last_line = time.perf_counter()
        self._seen = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def _running(self) -> dict[str, float]:
        return {t: self._sums[t] / self._counts[t] for t in self._sums}

    def _epochs(self, trainer: Trainer) -> str:
        return f"{self._label}epoch {trainer.epoch + 1}/{getattr(trainer, 'fit_epochs', trainer.epochs)}"

    def on_batch_end(self, trainer: Trainer, step: int, info: Mapping[str, Any]) -> None:
        console = self._console
        if console is None:
            return
        for task, value in info.get("losses", {}).items():
            self._sums[task] = self._sums.get(task, 0.0) + float(value)
            self._counts[task] = self._counts.get(task, 0) + 1
        self._seen += 1
        position = int(info.get("batch", self._seen))
        state = trainer._epoch_state
        total = state.n_batches if state is not None else None
        losses = "  ".join(f"{t} {v:.4g}" for t, v in self._running().items())
        if console.bars:
            if self._bar is None:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=total, initial=position - 1, desc=self._epochs(trainer), leave=False,
                    dynamic_ncols=True, file=console.stream, unit="batch",
                )
            self._bar.update(1)
            if position % trainer.log_every == 0 or position == 1:
                self._bar.set_postfix_str(f"loss {losses}", refresh=False)
            return
        now = time.perf_counter()
        due = now - self._last_line >= self.interval or (self.every is not None and position % self.every == 0)
        if due and position != total:
            rate = self._seen / max(now - self._started, 1e-9)
            of = f"/{total}" if total is not None else ""
            console.write(f"{self._epochs(trainer)}  batch {position}{of}  {rate:.2f} batches/s  loss {losses}")
            self._last_line = now

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, log: EpochLog) -> None:
        self._close_bar()
        if self._console is None:
            return
        self._console.log(
            epoch,
            log,
            epochs=getattr(trainer, "fit_epochs", trainer.epochs),
            monitor=trainer.monitor,
            best=trainer.best_score,
            best_epoch=trainer.best_epoch,
            verbose=self.verbose,
            label=self._label,
        )

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close_bar()


@dataclass
class EarlyStopping(Callback):
    """Patience on a monitored value.

    A value improves on the best so far when it is larger by more than ``min_delta`` (``mode="max"``)
    or smaller by more than ``min_delta`` (``"min"``); a NaN never improves. After ``patience``
    epochs in a row without improvement, ``stopped`` becomes true (never with ``patience=None``).
    The trainer feeds it the monitored value after each epoch (:meth:`update`), before the other
    callbacks' ``on_epoch_end``, so that they and the checkpoints see whether the epoch improved.
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


class LogFiles(Callback):
    """``folder/metrics.csv`` (every epoch, long format) and, with ``tensorboard``, ``folder/tensorboard/``,
    written by rank 0. A resumed run rewrites the CSV from its history first: no duplicate rows."""

    def __init__(self, folder: str | Path, *, tensorboard: bool = True) -> None:
        self.folder, self.tensorboard = Path(folder), bool(tensorboard)
        self._loggers: list[Any] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        if not runtime.is_main_process():
            return
        from hydranet.report.loggers import CSVLogger, TensorBoardLogger

        csv_logger = CSVLogger(self.folder / "metrics.csv")
        self._loggers = [csv_logger]
        for log in trainer.history:
            csv_logger.log(log.epoch, log)
        if self.tensorboard:
            self._loggers.append(TensorBoardLogger(self.folder / "tensorboard"))

    def on_epoch_end(self, trainer: Trainer, epoch: int, log: EpochLog) -> None:
        for target in self._loggers:
            target.log(epoch, log)

    def on_fit_end(self, trainer: Trainer) -> None:
        for target in self._loggers:
            target.close()
        self._loggers = []


class Checkpointing(Callback):
    """``folder/last.pt`` after every epoch and ``best.pt`` when the monitored value improved, as ``mode``
    (``"last+best"``, ``"last"``, ``"best"``) asks; with ``every``, also ``last.pt`` every this many
    optimizer steps within an epoch (mid-epoch resume). Collective under DDP: rank 0 writes."""

    def __init__(self, folder: str | Path, mode: str = "last+best", *, every: int | None = None) -> None:
        self.folder, self.mode, self.every = Path(folder), mode, every

    def on_fit_start(self, trainer: Trainer) -> None:
        # temporary files of killed saves (.last.pt.<pid>.tmp), never those of a live writer
        if runtime.is_main_process():
            remove_stale_temporaries(self.folder)

    def on_batch_end(self, trainer: Trainer, step: int, info: Mapping[str, Any]) -> None:
        epoch_state = trainer._epoch_state
        if (
            self.every is not None
            and info["stepped"]
            and step % self.every == 0
            and epoch_state is not None
            and info["batch"] != epoch_state.n_batches
        ):
            save_mid_epoch(trainer, self.folder, trainer.epoch, info["batch"], epoch_state.loader, epoch_state.means)

    def on_epoch_end(self, trainer: Trainer, epoch: int, log: EpochLog) -> None:
        save_epoch_end(trainer, self.folder, self.mode, epoch, trainer.improved)


class WriteReport(Callback):
    """Writes the run's report (:meth:`hydranet.train.Trainer.report`) into ``folder`` when fitting ends,
    scored on ``test_loader`` when one is given."""

    def __init__(self, folder: str | Path | None = None, test_loader: Any = None, *, plots: bool = True) -> None:
        self.folder, self.test_loader, self.plots = folder, test_loader, plots

    def on_fit_end(self, trainer: Trainer) -> None:
        trainer.report(self.folder, self.test_loader, plots=self.plots)


def write_run_report(
    trainer: Trainer,
    out_dir: str | Path | None,
    test_loader: Iterable[Any] | None,
    *,
    plots: bool,
    make_trainer: Callable[..., Trainer],
) -> Report:
    """What :meth:`hydranet.train.Trainer.report` does (``make_trainer`` scores the baselines)."""
    folder = Path(out_dir) if out_dir is not None else trainer.out_dir
    if folder is None:
        raise ValueError("report() needs a folder: pass out_dir=, or build the trainer with out_dir=.")
    has_val = any(log.metrics.get("val") for log in trainer.history)
    scores, confusion, baselines = None, trainer.confusion, trainer.baselines
    if test_loader is not None:
        scores, _, confusion = evaluate_loader(trainer.step, trainer.metrics, test_loader)
        if trainer.baseline_models:
            baselines = baseline_scores(trainer, test_loader, make_trainer=make_trainer)
    elif not has_val:
        warnings.warn(
            "No validation or test scores: the report holds the training curves only. Fit with a val_loader, "
            "or pass report(test_loader=...).",
            stacklevel=3,
        )
        scores = {}
    return runtime.on_main(
        lambda: write_report(
            folder,
            trainer.history,
            tasks=list(trainer.tasks.values()),
            scores=scores,
            best_epoch=trainer.best_epoch if has_val and trainer.monitor.startswith("val/") else None,
            baselines=baselines,
            confusion=confusion or None,
            plots=plots,
            baseline_histories=trainer.baseline_histories,
            scores_split="test" if test_loader is not None else None,
        )
    )
