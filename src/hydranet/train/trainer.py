r"""Trainer: the training loop around :class:`~hydranet.train.step.Step`, evaluation, prediction.

The loop delegates: one multi-task step (forward, losses, balancer backward, guards) to
:class:`~hydranet.train.step.Step`; checkpoints, early stopping and log files to the callbacks of
:mod:`hydranet.train.callbacks`; single-task baselines and Δm to :mod:`hydranet.train.baselines`;
building the optimizer, scheduler and balancer from settings to :mod:`hydranet.train._setup`.

One optimizer step over a group of :math:`k` micro-batches (``accumulate=k``):

.. math::  g = \frac{1}{k}\sum_{j=1}^{k} \mathrm{balancer}\big(\{L_t(B_j)\}_t\big)

where :math:`L_t(B_j)` is task :math:`t`'s loss averaged over its labelled samples of micro-batch
:math:`B_j` (:class:`~hydranet.losses.MultiTaskLoss`), and ``balancer`` is the gradient the balancer
writes into ``.grad`` (for ``ew``: :math:`\nabla \sum_t L_t`). Each micro-batch goes through the
balancer on its own (memory stays that of one micro-batch); the accumulated gradient is divided by
the number of micro-batches. With equal weighting this is exactly one step on the concatenated batch
whenever every micro-batch holds the same number of labelled samples of each task (full batches of a
quota or one-task-per-batch sampler). Then: gradient clipping (total norm of the model's
parameters), the optimizer step, and per-step schedulers.

**Exact resume.** A checkpoint holds the model, optimizer, scheduler, GradScaler and balancer states,
the random states (Python, NumPy, torch CPU, CUDA), the epoch, the number of batches of that epoch
already *consumed* by the loop (a DataLoader with workers prefetches, so the sampler's own counter runs
ahead), the sampler's state at that position, the running epoch averages, the history and the early
stopping state. Resuming replays the epoch's data-loader start under the random state it had (so the
loader draws the same seeds), continues the sampler at the consumed position (or skips that many
batches for samplers without a state), then restores the random state of the checkpoint: the next
batches, dropout masks and updates are those of an uninterrupted run. Checkpoints are written to a
temporary file in the same folder, flushed, fsynced, then renamed over the previous one, so a crash
during a save never leaves a broken or missing checkpoint.

**Distributed.** Inside a process group (``torchrun``, :func:`hydranet.distributed.process_group`) the
model trains as DistributedDataParallel, every rank on its shard of every step. Loss weightings use
DDP's gradient all-reduce, with a zero-valued term for the heads a rank does not use in a step (DDP's
reducer waits for every parameter's gradient); gradient methods run inside ``no_sync()`` and
all-reduce the task Jacobian themselves. Ranks agree every step on which tasks any of them has (one
tiny all-reduce): the heads of tasks no rank had get no gradient, as in one process. Epoch means,
validation losses and metrics are reduced over the ranks, so every rank monitors and stops on the same
numbers; rank 0 alone logs and writes checkpoints and reports while the others wait, and reads the
checkpoint to resume from for everyone. See ``docs/distributed.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from hydranet import runtime
from hydranet._checks import check_int, check_number
from hydranet.balancing import Balancer
from hydranet.metrics import MultiTaskMetrics, delta_m
from hydranet.report.history import History
from hydranet.report.summary import Report
from hydranet.tasks import Task
from hydranet.train import _setup
from hydranet.train._evaluation import evaluate_loader, predict_loader
from hydranet.train._means import Means
from hydranet.train._meta import MetaSchedule
from hydranet.train.baselines import train_baselines
from hydranet.train.callbacks import (
    Callback,
    CallbackList,
    Checkpointing,
    EarlyStopping,
    LogFiles,
    Progress,
    write_run_report,
)
from hydranet.train.checkpoint import (
    epoch_iterator,
    last_good_note,
    load_into,
    read_resume,
    restore,
    seed_everything,
    training_state,
)
from hydranet.train.divergence import DivergenceWarning
from hydranet.train.errors import NonFiniteLossError
from hydranet.train.loaders import as_batch, check_shards, epoch_sampler, length_of
from hydranet.train.step import Step, unwrap, wrap_model

__all__ = ["Trainer"]

logger = logging.getLogger("hydranet.train")


@dataclass
class _EpochState:
    """What the callbacks may read of the running epoch (mid-epoch checkpoints)."""

    loader: Any
    means: Means
    n_batches: int | None


class Trainer:
    """Trains a multi-task model: loop, validation, early stopping, checkpoints, exact resume, AMP.

    Args:
        model: a model with the HydraNet contract: ``model(x, tasks=None, return_features=False)``,
            ``.tasks``, ``shared_parameters()``, ``task_parameters(task)``. Inside a process group of
            several processes (``torchrun``, :mod:`hydranet.distributed`) it is wrapped in
            DistributedDataParallel; a model wrapped already is taken as it is.
        tasks: the tasks to train (Task objects or names); default every task of the model.
        balancer: a method name for :func:`hydranet.balancing.make` (``"ew"``, ``"uw"``, ``"pcgrad"``,
            ...) or a :class:`~hydranet.balancing.Balancer`. Its learnable parameters (``uw``, ...) join
            the optimizer as their own parameter group, without weight decay.
        balancer_options: settings of a balancer given by name (``{"temperature": 2.0}``).
        loss: ``(outputs, targets, masks) -> {task: loss}``; default
            :class:`~hydranet.losses.MultiTaskLoss` of the tasks (each loss averaged over its labelled
            samples).
        metrics: ``{task: [metric names]}`` overriding the tasks' metrics.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, ``{"name": ..., **options}``, an
            :class:`~torch.optim.Optimizer` over the model's parameters, or a factory
            ``param_groups -> Optimizer``.
        lr, weight_decay: learning rate and the model parameters' weight decay (named optimizers and
            schedulers).
        scheduler: ``None``, a name of :data:`SCHEDULERS`, ``{"name": ..., "interval": ..., **options}``
            (options go to the torch scheduler), a torch scheduler, or a factory ``optimizer -> scheduler``.
        scheduler_interval: ``"step"`` or ``"epoch"``; default that of the named scheduler, ``"epoch"``
            for objects and factories. ``ReduceLROnPlateau`` steps on the monitored value each epoch.
        epochs: epochs of :meth:`fit` when it is not given one.
        grad_clip: clip the total gradient norm of the model's parameters to this value.
        on_nonfinite: ``"skip"`` (default) or ``"stop"``: what an optimizer step does whose gradient is
            NaN or infinite although the losses are finite (see :class:`~hydranet.train.step.Step`); it
            is never applied. Skipped steps are counted (``skipped`` in the batch info,
            ``extra["skipped_steps"]`` of the epoch's record).
        max_skips: skipped steps in a row that stop training with
            :class:`~hydranet.train.errors.NonFiniteGradientError`.
        divergence_factor: warn once per task when its epoch training loss exceeds this many times its
            best (:class:`~hydranet.train.divergence.DivergenceWarning`); ``None``: no warning.
        accumulate: micro-batches per optimizer step (see the module docstring).
        amp: ``None``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a GradScaler).
        device: ``"auto"`` (CUDA when available, else CPU), or a device; inside a process group
            ``"auto"`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``.
        monitor: ``"val/loss"``, ``"val/delta_m"``, ``"val/<task>/<metric>"``, ``"val/<task>/loss"``,
            ``"train/loss"`` or ``"train/<task>/loss"``; default ``"val/delta_m"`` with baselines, else
            ``"val/loss"`` (``"train/loss"`` when fitting without a validation loader). It picks the best
            checkpoint and drives early stopping and ``"plateau"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric: losses min, Δm max, registry metrics
            by their direction).
        patience: stop after this many epochs without improvement (``None``: never).
        min_delta: the smallest change that counts as an improvement.
        out_dir: folder of the checkpoints ``last.pt`` and ``best.pt``, ``metrics.csv`` and
            ``tensorboard/`` (and by default of :meth:`report`); ``None`` writes nothing.
        checkpoint: ``"last+best"``, ``"last"``, ``"best"`` or ``"none"``.
        checkpoint_every: also save ``last.pt`` every this many optimizer steps within an epoch.
        baselines: single-task scores for Δm: ``{task: score of its main metric}`` or
            ``{task: {metric: score}}``; or ``"train"`` to train the single-task baselines first (see
            :meth:`train_baselines`).
        model_factory: ``model_factory([task]) -> model`` builds a baseline's model; default a copy of
            the model with the weights it had when given to the trainer.
        progress: progress on the console (rank 0): a kept line per epoch, tqdm bars in a terminal, plain
            lines elsewhere (:class:`~hydranet.train.callbacks.Progress`; give one in ``callbacks`` to
            configure it).
        callbacks: :class:`~hydranet.train.callbacks.Callback` objects.
        seed: seeds Python, NumPy and torch at the start of :meth:`fit`.
        log_every: batches between progress-bar updates and log lines.
        tensorboard: also log to TensorBoard when ``out_dir`` is set.

    Raises:
        ValueError, TypeError: at construction, for any inconsistent setting, naming the fix.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task | str] | Mapping[str, Task] | None = None,
        balancer: str | Balancer = "ew",
        *,
        balancer_options: Mapping[str, Any] | None = None,
        loss: Callable[..., Mapping[str, Tensor]] | None = None,
        metrics: Mapping[str, Sequence[str]] | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | Callable[..., Optimizer] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str | Mapping[str, Any] | Any | None = None,
        scheduler_interval: str | None = None,
        epochs: int = 10,
        grad_clip: float | None = None,
        on_nonfinite: str = "skip",
        max_skips: int = 10,
        divergence_factor: float | None = 1e3,
        accumulate: int = 1,
        amp: str | None = None,
        device: str | torch.device = "auto",
        monitor: str | None = None,
        mode: str = "auto",
        patience: int | None = None,
        min_delta: float = 0.0,
        out_dir: str | Path | None = None,
        checkpoint: str | None = "last+best",
        checkpoint_every: int | None = None,
        baselines: str | Mapping[str, Any] | None = None,
        model_factory: Callable[[list[Task]], nn.Module] | None = None,
        progress: bool = True,
        callbacks: Iterable[Callback] = (),
        seed: int = 0,
        log_every: int = 50,
        tensorboard: bool = True,
    ) -> None:
        """Check every setting (errors name the fix) and build the step, optimizer and callbacks.

        Longer than 80 lines because the signature takes 33 settings, one a line, and the body checks
        each in a line or two and sets the loop's state; the building is delegated to :mod:`hydranet.train._setup`.
        """
        core: Any = _setup.check_contract(unwrap(model))
        self.tasks = _setup.select_tasks(core.tasks, tasks)
        self.device = runtime.device_for(device)
        if not isinstance(model, nn.parallel.DistributedDataParallel):
            model.to(self.device)
        # Inside a process group the model trains as DistributedDataParallel (a no-op alone).
        self.model = wrap_model(model, self.device)

        self.lr = check_number("lr", lr, low=0.0, strict=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0)
        self.epochs = check_int("epochs", epochs, 1)
        self.accumulate = check_int("accumulate", accumulate, 1)
        self.log_every = check_int("log_every", log_every, 1)
        self.seed = check_int("seed", seed, 0)
        self.grad_clip = None if grad_clip is None else check_number("grad_clip", grad_clip, low=0.0, strict=True)
        self.patience = None if patience is None else check_int("patience", patience, 1)
        self.min_delta = check_number("min_delta", min_delta, low=0.0)
        if checkpoint_every is not None:
            check_int("checkpoint_every", checkpoint_every, 1)
        self.progress, self.tensorboard = bool(progress), bool(tensorboard)
        self.callbacks = CallbackList(callbacks)

        self.balancer = _setup.make_balancer(balancer, balancer_options, self.tasks)
        self.metric_names = dict(metrics or {})
        self.metrics = MultiTaskMetrics(list(self.tasks.values()), self.metric_names).to(self.device)
        self.amp = _setup.check_amp(amp, self.device, self.balancer)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.optimizer_spec = optimizer
        self.optimizer = _setup.make_optimizer(optimizer, core, self.balancer, self.lr, self.weight_decay)
        self.scheduler_spec = scheduler
        self.scheduler_interval = _setup.check_scheduler(scheduler, scheduler_interval)
        self.scheduler: Any = None
        self.step = Step(
            self.model, self.tasks, self.balancer, loss, optimizer=self.optimizer, amp=self.amp,
            scaler=self.scaler, grad_clip=self.grad_clip, device=self.device, lr=self.lr,
            on_nonfinite=on_nonfinite, max_skips=max_skips,
        )
        self.divergence = None if divergence_factor is None else DivergenceWarning(divergence_factor)
        #: ``(path, where)`` of the file that holds the last good state (saved or resumed from), for errors
        self.last_good_checkpoint: tuple[Path, str] | None = None
        self.loss_fn = self.step.loss_fn

        self._train_baselines = baselines == "train"
        self.baselines = _setup.check_baselines_setting(
            baselines, self.tasks, self.metric_names, optimizer, scheduler, model_factory, model
        )
        self.model_factory = model_factory
        self.initial_state = (
            {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
            if self._train_baselines and model_factory is None
            else None
        )
        self.baseline_histories: dict[str, History] = {}
        self.baseline_models: dict[str, nn.Module] = {}

        if monitor is not None:
            _setup.check_monitor(monitor, self.tasks, self.metric_names)
        self._monitor_setting = monitor
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
        self.mode_setting = mode
        self.monitor = self._fit_monitor(has_val=True)

        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint = _setup.check_checkpoint(checkpoint, self.out_dir, checkpoint_every)
        self.checkpoint_every = checkpoint_every

        self.history = History()
        self.early_stopping = EarlyStopping(_setup.resolve_mode(mode, self.monitor), patience, self.min_delta)
        self.global_step = 0
        #: put before each progress line (the baselines' trainers set ``"baseline TASK: "``)
        self.progress_label = ""
        self._meta: MetaSchedule | None = None
        self.epoch = 0
        self.should_stop = False
        self.improved = False  # whether the last epoch improved the monitored value (best checkpoint)
        self.confusion: dict[str, np.ndarray] = {}
        self.rng_epoch_start: dict[str, Any] | None = None  # random state when the epoch's loader started
        self._epoch_state: _EpochState | None = None

    # ------------------------------------------------------------------------------------- fit

    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        *,
        epochs: int | None = None,
        resume: str | Path | None = None,
    ) -> History:
        """Train for ``epochs`` epochs (default the trainer's), validating after each one.

        Args:
            train_loader: yields :class:`~hydranet.data.Batch` objects (a ``DataLoader`` with
                ``collate_fn=hydranet.data.collate``); its sampler's ``set_epoch`` is called every epoch.
            val_loader: validation batches; per-task metrics, losses and Δm every epoch.
            epochs: total number of epochs, counting those of a resumed run.
            resume: ``"last"`` (``out_dir/last.pt``; a fresh start when there is none yet) or
                a checkpoint path: continue exactly where that run was.

        Returns:
            the :class:`~hydranet.report.History`, one record per epoch (also ``self.history``).
        """
        epochs = check_int("epochs", self.epochs if epochs is None else epochs, 1)
        self.fit_epochs = epochs  # this fit's total, for the progress lines
        self.monitor = self._fit_monitor(has_val=val_loader is not None)
        check_shards(train_loader, "train_loader", same_length=True)
        if val_loader is not None:
            check_shards(val_loader, "val_loader", same_length=False)
        state = self._resume_state(resume)
        if self._train_baselines and self.baselines is None and (state is None or state.get("baselines") is None):
            self.train_baselines(train_loader, val_loader, epochs=epochs)

        seed_everything(self.seed)
        self.history, self.global_step, self.epoch = History(), 0, 0
        self.early_stopping = EarlyStopping(_setup.resolve_mode(self.mode_setting, self.monitor), self.patience, self.min_delta)
        self.scheduler = _setup.make_scheduler(
            self.scheduler_spec, self.optimizer, self.scheduler_interval, self._steps_per_epoch(train_loader),
            epochs, self.early_stopping.mode,
        )
        resume_at = restore(self, state) if state is not None else None
        start = self.epoch
        self.should_stop = False
        self._meta = MetaSchedule.of(self.step, val_loader)  # bilevel weightings: meta-steps on val batches
        callbacks = _fit_callbacks(self)
        callbacks.on_fit_start(self)
        try:
            for epoch in range(start, epochs):
                if self.early_stopping.stopped:
                    break
                self.epoch = epoch
                at = resume_at if epoch == start else None
                _run_epoch(self, callbacks, train_loader, val_loader, epoch, epochs, at)
                # A callback may stop one rank only: then all stop, or the others would wait for it.
                self.should_stop = runtime.count([self.should_stop])[0] > 0
                if self.should_stop or self.early_stopping.stopped:
                    break
            self.epoch = self.history.epochs[-1].epoch + 1 if len(self.history) else start
        except NonFiniteLossError as err:  # name the file that holds the last good state
            err.args = (f"{err} {last_good_note(self)}", *err.args[1:])
            raise
        finally:
            callbacks.on_fit_end(self)
        return self.history

    def _fit_monitor(self, has_val: bool) -> str:
        """The monitored value of this fit: the one asked for, or the default given the data."""
        with_baselines = self.baselines is not None or self._train_baselines
        return _setup.fit_monitor(self._monitor_setting, with_baselines, self.patience is not None, has_val)

    def _steps_per_epoch(self, loader: Any) -> int | None:
        n = length_of(loader)
        return None if n is None else -(-n // self.accumulate)

    def _optimizer_step(self, micro: int, position: int | None = None) -> float | None:
        """The step's optimizer step, then the count and the per-step scheduler."""
        norm = self.step.optimizer_step(micro, epoch=self.epoch, global_step=self.global_step, position=position)
        self.global_step += 1
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        return norm

    # ------------------------------------------------------------------------------ evaluation

    def evaluate(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        """``{task: {metric: value, "loss": value}}`` over ``loader``: each task's metrics and its loss
        averaged over its labelled samples. Tasks without a labelled sample are left out. Under DDP every
        rank evaluates its batches and the results are reduced over the ranks (collective)."""
        scores, losses, _ = evaluate_loader(self.step, self.metrics, loader)
        out = {t: dict(scores.get(t, {})) for t in self.tasks if t in scores or t in losses}
        for task, value in losses.items():
            out[task]["loss"] = value
        return out

    def predict(
        self, loader: Iterable[Any], *, return_logits: bool = False, return_indices: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
        """Predictions of every task for every sample of ``loader``, in the loader's order, on the CPU.

        Classification: probabilities (sigmoid for binary ``[N, 1]`` and multilabel ``[N, C]``, softmax
        for multiclass ``[N, C]``: :func:`hydranet.tasks.probabilities`), or the logits with
        ``return_logits=True``; regression: the values ``[N, dim]``. The loader may yield Batches,
        ``(inputs, ...)`` tuples or bare input tensors. ``return_indices=True`` also returns the dataset
        indices of the rows (Batches built by :class:`~hydranet.data.MultiTaskDataset` carry them), for
        samplers that shuffle. Under DDP each rank predicts its own batches (no collective).
        """
        return predict_loader(self.step, loader, return_logits=return_logits, return_indices=return_indices)

    # ------------------------------------------------------------------------------- baselines

    def train_baselines(
        self, train_loader: Iterable[Any], val_loader: Iterable[Any] | None, *, epochs: int | None = None
    ) -> dict[str, dict[str, float]]:
        """Train one single-task model per task and keep each one's best validation score of its main
        metric as that task's baseline (``self.baselines``, used for Δm); see
        :func:`hydranet.train.baselines.train_baselines`."""
        epochs = self.epochs if epochs is None else epochs
        found = train_baselines(self, train_loader, val_loader, epochs=epochs, make_trainer=Trainer)
        self.baselines = _setup.check_baselines(found, self.tasks, self.metric_names)
        return self.baselines

    # ----------------------------------------------------------------------------- checkpoints

    @property
    def checkpoint_dir(self) -> Path | None:
        """Where ``last.pt`` and ``best.pt`` go: ``out_dir``."""
        return self.out_dir

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the best monitored value so far."""
        return self.early_stopping.best_epoch

    @property
    def best_score(self) -> float | None:
        """The best monitored value so far."""
        return self.early_stopping.best

    def state_dict(self) -> dict[str, Any]:
        """Everything but the loop position (see :func:`hydranet.train.checkpoint.training_state`)."""
        return training_state(self)

    def _resume_state(self, resume: str | Path | None) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start afresh), read by rank 0 and sent to every rank, so
        that all ranks take the same decision and a folder only rank 0 can see is enough."""
        if resume is None:
            return None
        return runtime.on_main(lambda: read_resume(resume, self.checkpoint_dir, self.tasks))

    def load_checkpoint(self, path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
        """Load a checkpoint into this trainer's model (tasks are checked) and return it.

        ``weights_only=True`` loads the model weights; ``False`` also the balancer state, history,
        baselines and early-stopping record (what :meth:`report` and Δm need). To continue training
        from a checkpoint, use ``fit(..., resume=path)``. Under DDP rank 0 reads the file for every rank.
        """
        return load_into(self, path, weights_only=weights_only)

    # ------------------------------------------------------------------------------ reporting

    def report(
        self, out_dir: str | Path | None = None, test_loader: Iterable[Any] | None = None, *, plots: bool = True
    ) -> Report:
        """Write the run's report into ``out_dir`` (default the trainer's): curves, ``summary.md``,
        ``metrics.json`` and ``history.json`` (see :func:`hydranet.report.write_report`).

        Scores are the validation scores of the best epoch, or with ``test_loader`` the current model's
        scores on it; trained baselines (``baselines="train"``) are then scored on the same test data,
        so Δm compares like with like. Without either, the report holds the training curves only.
        Under DDP every rank calls it (test scores are collective); rank 0 writes the files and every rank
        returns its :class:`~hydranet.report.Report` once they are complete.
        """
        return write_run_report(self, out_dir, test_loader, plots=plots, make_trainer=Trainer)


# Parts of the loop that read and write the trainer, kept out of the class so that it stays the API.


def _fit_callbacks(trainer: Trainer) -> CallbackList:
    """The progress lines and log files first, then the callbacks given, then the checkpoints (written
    last, once every callback has seen the epoch)."""
    first: list[Callback] = []
    last: list[Callback] = []
    if trainer.progress and not any(isinstance(c, Progress) for c in trainer.callbacks.callbacks):
        first.append(Progress())
    if trainer.divergence is not None:
        first.append(trainer.divergence)
    if trainer.out_dir is not None:
        first.append(LogFiles(trainer.out_dir, tensorboard=trainer.tensorboard))
        if trainer.checkpoint != "none":
            last.append(Checkpointing(trainer.out_dir, trainer.checkpoint, every=trainer.checkpoint_every))
    return CallbackList([*first, *trainer.callbacks.callbacks, *last])


def _run_epoch(
    trainer: Trainer,
    callbacks: CallbackList,
    loader: Any,
    val_loader: Any,
    epoch: int,
    epochs: int,
    resume_at: Mapping[str, Any] | None,
) -> None:
    """One epoch: the batches (micro-batches grouped into optimizer steps, their means), then its record."""
    started = time.perf_counter()
    callbacks.on_epoch_start(trainer, epoch)
    trainer.model.train()
    means = Means()
    iterator, position = epoch_iterator(trainer, loader, epoch, resume_at, means)
    n_batches = length_of(loader)
    trainer._epoch_state = _EpochState(loader, means, n_batches)
    micro = 0
    try:
        for raw in iterator:
            position += 1
            stepped = micro + 1 == trainer.accumulate or position == n_batches
            batch = as_batch(raw)
            if micro == 0 and trainer._meta is not None:
                trainer._meta(batch, trainer.global_step)
            out = trainer.step(
                batch, last_in_group=stepped, epoch=epoch, position=position, global_step=trainer.global_step
            )
            info = out.info
            micro += 1
            for task, value in info.get("losses", {}).items():
                means.add(f"loss/{task}", value)
            means.add_diagnostics(info)
            if "regularization" in info:  # the model's own term (Step.regularization), outside the balancing
                means.add("extra/regularization", info["regularization"])
            if stepped:
                means.add("extra/lr", float(trainer.optimizer.param_groups[0]["lr"]))
                norm = trainer._optimizer_step(micro, position)
                if trainer.step.last_skipped:
                    means.add("skipped/steps", 1.0)
                micro = 0
                if norm is not None:
                    info["grad_norm"] = norm
                    means.add("extra/grad_norm", norm)
            info["batch"], info["stepped"] = position, stepped
            info["skipped"] = stepped and trainer.step.last_skipped
            callbacks.on_batch_end(trainer, trainer.global_step, info)
            if position % trainer.log_every == 0 and runtime.is_main_process():
                logger.debug("epoch %d batch %d: %s", epoch, position, means.mean("loss"))
        if micro:  # a loader without a length ended inside an accumulation group
            trainer._optimizer_step(micro, position)
    finally:
        trainer._epoch_state = None
    trainer.rng_epoch_start = None
    trainer.balancer.on_epoch_end()
    _finish_epoch(trainer, callbacks, epoch, val_loader, means, started)


def _finish_epoch(
    trainer: Trainer, callbacks: CallbackList, epoch: int, val_loader: Any, means: Means, started: float
) -> None:
    """The epoch's record: means over the ranks, validation, the monitored value, epoch schedulers."""
    means = means.across_ranks()  # every rank logs, monitors and stops on the same numbers
    train_losses = means.mean("loss")
    values: dict[str, float] = {"train/loss": float(sum(train_losses.values()))}
    values.update({f"train/{t}/loss": v for t, v in train_losses.items()})
    losses = {"train": train_losses}
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    extra: dict[str, float] = {}
    confusion: dict[str, np.ndarray] = {}
    if val_loader is not None:
        # Same validation order in an uninterrupted and a resumed run (a sampler may shuffle per epoch).
        val_sampler = epoch_sampler(val_loader)
        if val_sampler is not None:
            val_sampler.set_epoch(epoch)
        scores, val_losses, confusion = evaluate_loader(trainer.step, trainer.metrics, val_loader)
        callbacks.on_validation_end(trainer, scores)
        losses["val"], metrics["val"] = val_losses, scores
        values["val/loss"] = float(sum(val_losses.values()))
        values.update({f"val/{t}/loss": v for t, v in val_losses.items()})
        values.update({f"val/{t}/{m}": v for t, ms in scores.items() for m, v in ms.items()})
        if trainer.baselines:
            values["val/delta_m"] = extra["val/delta_m"] = delta_m(scores, trainer.baselines)
        extra["val/loss"] = values["val/loss"]
    extra["train/loss"] = values["train/loss"]
    extra.update(means.mean("extra"))  # grad_norm, lr: means over the epoch's optimizer steps
    if means.sums.get("skipped/steps"):  # every rank skips the same steps (the gradients are all-reduced)
        extra["skipped_steps"] = means.sums["skipped/steps"] / runtime.world_size()
    extra["seconds"] = time.perf_counter() - started
    log = means.record(epoch, losses, metrics, extra)
    trainer.history.append(log)
    if trainer.monitor not in values:
        raise ValueError(f"monitor={trainer.monitor!r} has no value after epoch {epoch}; available: {sorted(values)}.")
    trainer.improved = trainer.early_stopping.update(values[trainer.monitor], epoch)
    if trainer.improved:
        trainer.confusion = confusion
    if trainer.scheduler is not None and trainer.scheduler_interval == "epoch":
        if isinstance(trainer.scheduler, ReduceLROnPlateau):
            trainer.scheduler.step(values[trainer.monitor])
        else:
            trainer.scheduler.step()
    if runtime.is_main_process():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()) if k.count("/") == 1 or k == trainer.monitor)
        logger.debug("epoch %d: %s (%.1f s)", epoch, shown, extra["seconds"])  # Progress prints it
    callbacks.on_epoch_end(trainer, epoch, log)
