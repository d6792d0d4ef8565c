"""Trainer: the loop, evaluation, early stopping, atomic checkpoints and exact resume.

One step: ``outputs = model(x, tasks=batch.tasks)``, masked task losses
(:class:`~hydranet.losses.MultiTaskLoss`), ``balancer.backward(...)`` sets the gradients, optional
clipping, ``optimizer.step()`` every ``accumulate`` batches. Losses are means over each task's
labelled samples; with accumulation each micro-batch's losses are divided by ``accumulate``.

A checkpoint holds the model, optimizer, scheduler, balancer, sampler position (batches *consumed*,
not prefetched), RNG states, history and early-stopping state, so ``fit(..., resume=path)`` continues
with the same next batches and ends with the same weights as an uninterrupted run. Files are written
to a temporary file, flushed, fsynced and renamed: a failed save leaves the previous file intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hydranet.balancing import Balancer, make
from hydranet.losses import MultiTaskLoss
from hydranet.metrics import MultiTaskMetrics, delta_m, main_metric
from hydranet.report import CSVLogger, DiagnosticsMeter, EpochLog, History, Report, TensorBoardLogger, write_report
from hydranet.tasks import Task, as_task_dict

__all__ = ["Trainer", "Callback", "save_atomic"]


class Callback:
    """Hooks called by :class:`Trainer`; set ``trainer.should_stop = True`` to stop after the epoch."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer: Trainer, step: int, info: Mapping[str, Any]) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, log: EpochLog) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sampler_of(loader: DataLoader) -> Any:
    for candidate in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if candidate is not None and hasattr(candidate, "set_epoch"):
            return candidate
    return None


class Trainer:
    """Fit, evaluate and predict a multi-task model.

    Args:
        model: a model with the HydraNet contract (``forward(x, tasks=..., return_features=...)``,
            ``shared_parameters()``, ``task_parameters(task)``).
        tasks: the tasks (default: ``model.tasks``).
        balancer: a name for :func:`hydranet.balancing.make` or a :class:`~hydranet.balancing.Balancer`.
        balancer_options: settings of a balancer given by name.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"``, or ``callable(params) -> Optimizer``.
        lr, weight_decay: of a named optimizer.
        scheduler: ``None``, ``"cosine"`` or ``"step"`` (stepped per epoch), or
            ``callable(optimizer) -> LRScheduler``.
        epochs: default number of epochs of :meth:`fit`.
        grad_clip: maximum gradient norm, or None.
        accumulate: batches per optimizer step.
        amp: ``None``, ``"bf16"`` or ``"fp16"`` (fp16 needs CUDA).
        device: ``"auto"`` (CUDA if available), or a device.
        monitor: ``"val/loss"``, ``"val/delta_m"`` or ``"val/<task>/<metric>"``; default Δm when
            baselines are known, else the validation loss.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's direction).
        patience: epochs without improvement before stopping (None: never stop early).
        min_delta: smallest change that counts as an improvement.
        out_dir: folder for checkpoints (``last.pt``, ``best.pt``), ``metrics.csv`` and TensorBoard logs.
        checkpoint_every: also save ``last.pt`` every N steps (mid-epoch resume).
        baselines: ``{task: main-metric score}`` of single-task models, or ``"train"`` to train them
            (needs ``model_factory``) with the same settings and budget, one task each.
        model_factory: ``callable(tasks) -> model``, to build the single-task baselines.
        progress: show tqdm progress bars.
        callbacks: :class:`Callback` objects.
        seed: seeds Python, NumPy and torch at the start of :meth:`fit`.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Iterable[Task] | Mapping[str, Task] | None = None,
        balancer: str | Balancer = "ew",
        *,
        balancer_options: Mapping[str, Any] | None = None,
        optimizer: str | Callable[..., torch.optim.Optimizer] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str | Callable[..., Any] | None = None,
        epochs: int = 10,
        grad_clip: float | None = None,
        accumulate: int = 1,
        amp: str | None = None,
        device: str | torch.device = "auto",
        monitor: str | None = None,
        mode: str = "auto",
        patience: int | None = None,
        min_delta: float = 0.0,
        out_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        baselines: str | Mapping[str, float] | None = None,
        model_factory: Callable[[list[Task]], nn.Module] | None = None,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
    ) -> None:
        self.tasks = as_task_dict(tasks if tasks is not None else model.tasks)  # type: ignore[arg-type]
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1 (batches per optimizer step), got {accumulate}.")
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}.")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
        if baselines == "train" and model_factory is None:
            raise ValueError("baselines='train' needs model_factory=callable(tasks) -> model to build single-task models.")
        if isinstance(baselines, str) and baselines != "train":
            raise ValueError(f"baselines must be 'train', a mapping {{task: score}} or None, got {baselines!r}.")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on CPU.")
        self.model = model.to(self.device)
        self.balancer = balancer if isinstance(balancer, Balancer) else make(balancer, list(self.tasks.values()), **dict(balancer_options or {}))
        self.loss_fn = MultiTaskLoss(self.tasks)
        self.optimizer = self._make_optimizer(optimizer, lr, weight_decay)
        self.scheduler = self._make_scheduler(scheduler, epochs)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.amp = amp
        self.epochs, self.grad_clip, self.accumulate = int(epochs), grad_clip, int(accumulate)
        self.baselines: dict[str, float] | None = dict(baselines) if isinstance(baselines, Mapping) else None
        self._train_baselines = baselines == "train"
        self.baseline_trainers: dict[str, Trainer] = {}
        self.model_factory = model_factory
        self.settings = {"balancer": balancer, "balancer_options": balancer_options, "optimizer": optimizer, "lr": lr,
                         "weight_decay": weight_decay, "scheduler": scheduler, "grad_clip": grad_clip,
                         "accumulate": accumulate, "amp": amp, "device": device, "progress": progress, "seed": seed}
        self.monitor = monitor
        self.mode = mode
        self.patience, self.min_delta = patience, float(min_delta)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.progress, self.callbacks, self.seed = progress, list(callbacks), int(seed)
        self.history = History()
        self.epoch, self.global_step = 0, 0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.should_stop = False
        self._position = 0
        self._epoch_sums: dict[str, list[float]] = {}
        self._meter = DiagnosticsMeter()
        self._resume_state: dict[str, Any] | None = None

    # -- construction ---------------------------------------------------------------------------------
    def _make_optimizer(self, optimizer: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        extra = list(self.balancer.parameters())
        if extra:
            groups.append({"params": extra, "weight_decay": 0.0})
        if callable(optimizer):
            return optimizer(groups)
        classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        if optimizer not in classes:
            raise ValueError(f"Unknown optimizer {optimizer!r}; choose {sorted(classes)} or pass a callable.")
        options = {"momentum": 0.9} if optimizer == "sgd" else {}
        return classes[optimizer](groups, lr=lr, weight_decay=weight_decay, **options)

    def _make_scheduler(self, scheduler: Any, epochs: int) -> Any:
        if scheduler is None:
            return None
        if callable(scheduler):
            return scheduler(self.optimizer)
        if scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, epochs))
        if scheduler == "step":
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1, epochs // 3), gamma=0.1)
        raise ValueError(f"Unknown scheduler {scheduler!r}; choose 'cosine', 'step' or pass a callable.")

    # -- one step -------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.amp is None:
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _forward(self, batch: Any, features: bool = False) -> tuple[dict[str, torch.Tensor], Any, Any]:
        batch = batch.to(self.device, non_blocking=True)
        tasks = [t for t in batch.tasks if t in self.tasks]
        with self._autocast():
            result = self.model(batch.inputs, tasks=tasks, return_features=features)
        outputs, feats = result if features else (result, None)
        outputs = {t: o.float() for t, o in outputs.items()}
        return outputs, feats, batch

    def _train_step(self, batch: Any) -> dict[str, Any] | None:
        outputs, features, batch = self._forward(batch, self.balancer.requires_features)
        if not outputs:
            return None
        losses = self.loss_fn(outputs, batch.targets, batch.masks)
        for task, loss in losses.items():
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The loss of task {task!r} is {loss.item()} at step {self.global_step} (epoch {self.epoch}). "
                    "Lower the learning rate, set grad_clip=..., or check that task's targets."
                )
        scale = 1.0 / self.accumulate * (self.scaler.get_scale() if self.scaler is not None else 1.0)
        scaled = {t: loss * scale for t, loss in losses.items()} if scale != 1.0 else losses
        shared = self.model.shared_parameters()  # type: ignore[operator]
        task_params = {t: self.model.task_parameters(t) for t in losses}  # type: ignore[operator]
        info = self.balancer.backward(scaled, shared, task_params, features=features)
        self._position += 1
        if self._position % self.accumulate == 0:
            self._optimizer_step()
        for task, loss in losses.items():
            sums = self._epoch_sums.setdefault(task, [0.0, 0.0])
            sums[0] += float(loss.detach())
            sums[1] += 1
        self._meter.update(info, tasks=info.get("tasks"))
        return {"losses": {t: float(v.detach()) for t, v in losses.items()}, **info}

    def _optimizer_step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    # -- fit ------------------------------------------------------------------------------------------
    def fit(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None = None,
        epochs: int | None = None,
        resume: str | Path | None = None,
    ) -> History:
        """Train for ``epochs`` (default: the constructor's), evaluating on ``val_loader`` after each epoch."""
        epochs = self.epochs if epochs is None else int(epochs)
        if self._train_baselines and self.baselines is None:
            self.baselines = self.train_baselines(train_loader, val_loader, epochs)
        _seed_everything(self.seed)
        if resume is not None:
            self.load_checkpoint(self._checkpoint_path(resume))
        sampler = _sampler_of(train_loader)
        for callback in self.callbacks:
            callback.on_fit_start(self)
        csv = CSVLogger(self.out_dir / "metrics.csv", append=resume is not None) if self.out_dir else None
        board = TensorBoardLogger(self.out_dir / "tensorboard") if self.out_dir else None
        try:
            while self.epoch < epochs and not self.should_stop:
                log = self._run_epoch(train_loader, val_loader, sampler)
                for logger in (csv, board):
                    if logger is not None:
                        logger.log(log.epoch, log)
        finally:
            for logger in (csv, board):
                if logger is not None:
                    logger.close()
        for callback in self.callbacks:
            callback.on_fit_end(self)
        return self.history

    def _run_epoch(self, train_loader: DataLoader, val_loader: DataLoader | None, sampler: Any) -> EpochLog:
        from tqdm.auto import tqdm

        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            if sampler is not None:
                sampler.load_state_dict(state)
        else:
            self._position, self._epoch_sums = 0, {}
            self._meter.reset()
            if sampler is not None:
                sampler.set_epoch(self.epoch)
        for callback in self.callbacks:
            callback.on_epoch_start(self, self.epoch)
        self.model.train()
        bar = tqdm(train_loader, desc=f"epoch {self.epoch + 1}", disable=not self.progress, leave=False,
                   initial=self._position, total=len(train_loader) if hasattr(train_loader, "__len__") else None)
        for batch in bar:
            info = self._train_step(batch)
            if info is None:
                continue
            if self.progress:
                bar.set_postfix({t: f"{v:.3f}" for t, v in info["losses"].items()}, refresh=False)
            for callback in self.callbacks:
                callback.on_batch_end(self, self.global_step, info)
            if self.checkpoint_every and self.out_dir and self._position % self.checkpoint_every == 0:
                self.save_checkpoint(self.out_dir / "last.pt", sampler=sampler)
        bar.close()
        if self._position % self.accumulate:
            self._optimizer_step()  # a partial accumulation at the end of the epoch still counts
        self.balancer.on_epoch_end()
        if self.scheduler is not None:
            self.scheduler.step()
        log = EpochLog(epoch=self.epoch, losses={"train": {t: s / max(n, 1) for t, (s, n) in self._epoch_sums.items()}},
                       **self._meter.summary())
        if val_loader is not None:
            metrics, losses, _ = self._evaluate(val_loader)
            log.metrics["val"], log.losses["val"] = metrics, losses
            if self.baselines:
                log.extra["val_delta_m"] = self._delta_m(metrics)
            for callback in self.callbacks:
                callback.on_validation_end(self, metrics)
        self.history.append(log)
        self.epoch += 1
        self._position = 0
        improved = self._early_stopping(log)
        if self.out_dir:
            self.save_checkpoint(self.out_dir / "last.pt", sampler=sampler, epoch_done=True)
            if improved:
                self.save_checkpoint(self.out_dir / "best.pt", sampler=sampler, epoch_done=True)
        for callback in self.callbacks:
            callback.on_epoch_end(self, log.epoch, log)
        return log

    # -- early stopping --------------------------------------------------------------------------------
    def _monitored(self, log: EpochLog) -> tuple[float, bool] | None:
        monitor = self.monitor or ("val/delta_m" if self.baselines else "val/loss")
        if "val" not in log.metrics:
            return None
        if monitor == "val/loss":
            return sum(log.losses["val"].values()), False
        if monitor == "val/delta_m":
            if not self.baselines:
                raise ValueError("monitor='val/delta_m' needs baselines (numbers or 'train').")
            return log.extra["val_delta_m"], True
        parts = monitor.split("/")
        if len(parts) != 3 or parts[0] != "val" or parts[1] not in log.metrics["val"]:
            raise ValueError(f"Cannot monitor {monitor!r}: use 'val/loss', 'val/delta_m' or 'val/<task>/<metric>'.")
        from hydranet.metrics import higher_is_better

        return log.metrics["val"][parts[1]][parts[2]], higher_is_better(parts[2])

    def _early_stopping(self, log: EpochLog) -> bool:
        monitored = self._monitored(log)
        if monitored is None:
            return True
        value, higher = monitored
        maximise = higher if self.mode == "auto" else self.mode == "max"
        signed = value if maximise else -value
        if self.best_score is None or signed > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.bad_epochs = signed, log.epoch, 0
            return True
        self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            self.should_stop = True
        return False

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, loader: DataLoader) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, np.ndarray]]:
        self.model.eval()
        metrics = MultiTaskMetrics(list(self.tasks.values())).to(self.device)
        sums: dict[str, list[float]] = {}
        for batch in loader:
            outputs, _, batch = self._forward(batch)
            if not outputs:
                continue
            for task, loss in self.loss_fn(outputs, batch.targets, batch.masks).items():
                n = int(batch.masks[task].sum())
                entry = sums.setdefault(task, [0.0, 0])
                entry[0] += float(loss) * n
                entry[1] += n
            metrics.update(outputs, batch.targets, batch.masks)
        self.model.train()
        return metrics.compute(), {t: s / n for t, (s, n) in sums.items()}, metrics.confusion_matrices()

    def evaluate(self, loader: DataLoader) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}`` over the labelled samples of ``loader``."""
        return self._evaluate(loader)[0]

    @torch.no_grad()
    def predict(self, loader: DataLoader, return_logits: bool = False) -> dict[str, torch.Tensor]:
        """Outputs for every sample of ``loader``, in loader order: probabilities (sigmoid/softmax) or values."""
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for batch in loader:
            batch = batch.to(self.device)
            with self._autocast():
                outputs = self.model(batch.inputs, tasks=list(self.tasks))
            for task, out in outputs.items():
                out = out.float()
                if not return_logits:
                    kind = self.tasks[task].kind
                    out = out.softmax(1) if kind == "multiclass" else out.sigmoid() if kind != "regression" else out
                parts[task].append(out.cpu())
        self.model.train()
        return {t: torch.cat(v) for t, v in parts.items() if v}

    def _delta_m(self, metrics: Mapping[str, Mapping[str, float]]) -> float:
        assert self.baselines is not None
        scores, directions = {}, {}
        for task, baseline in self.baselines.items():
            name, higher = main_metric(self.tasks[task])
            scores[task], directions[task] = metrics[task][name], higher
        return delta_m(scores, self.baselines, directions)

    # -- baselines -----------------------------------------------------------------------------------
    def train_baselines(self, train_loader: DataLoader, val_loader: DataLoader | None, epochs: int) -> dict[str, float]:
        """Train one single-task model per task (same settings, data and epochs); their main val metric."""
        if val_loader is None:
            raise ValueError("baselines='train' needs a val_loader to score the single-task models.")
        assert self.model_factory is not None
        scores = {}
        for name, task in self.tasks.items():
            settings = {**self.settings, "balancer": "ew", "balancer_options": None}
            single = Trainer(self.model_factory([task]), [task], epochs=epochs, **settings)
            single.fit(train_loader, val_loader, epochs=epochs)
            metric, _ = main_metric(task)
            scores[name] = single.evaluate(val_loader)[name][metric]
            self.baseline_trainers[name] = single
            if self.progress:
                print(f"baseline {name}: val {metric} = {scores[name]:.4f}")
        return scores

    # -- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint_path(self, resume: str | Path) -> Path:
        if str(resume) in ("last", "best"):
            if self.out_dir is None:
                raise ValueError(f"resume={resume!r} needs out_dir to find {resume}.pt.")
            return self.out_dir / f"{resume}.pt"
        return Path(resume)

    def save_checkpoint(self, path: str | Path, sampler: Any = None, epoch_done: bool = False) -> None:
        """Write everything needed to continue exactly (atomically)."""
        sampler_state = None
        if sampler is not None and not epoch_done:
            sampler_state = sampler.state_dict(position=self._position)
        save_atomic(
            {
                "format": 1,
                "tasks": [t.to_dict() for t in self.tasks.values()],
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "balancer": self.balancer.state_dict(),
                "sampler": sampler_state,
                "rng": _rng_state(),
                "epoch": self.epoch,
                "global_step": self.global_step,
                "position": self._position if not epoch_done else 0,
                "epoch_sums": self._epoch_sums if not epoch_done else {},
                "meter": self._meter if not epoch_done else None,
                "history": self.history.to_dict(),
                "early_stopping": [self.best_score, self.best_epoch, self.bad_epochs, self.should_stop],
                "baselines": self.baselines,
            },
            path,
        )

    def load_checkpoint(self, path: str | Path, weights_only: bool = False) -> None:
        """Restore a checkpoint; ``weights_only`` restores the model alone (for evaluation)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint at {path}.")
        state = torch.load(path, map_location=self.device, weights_only=False)
        names = [t["name"] for t in state["tasks"]]
        if names != list(self.tasks):
            raise ValueError(f"The checkpoint {path} was trained for tasks {names}, this trainer has {list(self.tasks)}.")
        self.model.load_state_dict(state["model"])
        if weights_only:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.balancer.load_state_dict(state["balancer"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.history = History.from_dict(state["history"])
        self.best_score, self.best_epoch, self.bad_epochs, self.should_stop = state["early_stopping"]
        self.baselines = state["baselines"]
        self._position = state["position"]
        self._epoch_sums = state["epoch_sums"]
        if state["meter"] is not None:
            self._meter = state["meter"]
        self._resume_state = state["sampler"]
        _set_rng_state(state["rng"])

    # -- report ----------------------------------------------------------------------------------------
    def report(self, out_dir: str | Path, test_loader: DataLoader | None = None) -> Report:
        """Write the report (plots, summary.md, metrics.json); scores on ``test_loader`` if given."""
        scores, confusion, split, baselines = None, None, "val", self.baselines
        if test_loader is not None:
            scores, _, confusion = self._evaluate(test_loader)
            split = "test"
            if self.baseline_trainers:  # trained baselines are scored on the same test data
                baselines = {
                    task: single.evaluate(test_loader)[task][main_metric(self.tasks[task])[0]]
                    for task, single in self.baseline_trainers.items()
                }
        return write_report(
            out_dir, self.history, tasks=list(self.tasks.values()), scores=scores, split=split,
            best_epoch=self.best_epoch, baselines=baselines, confusion=confusion,
        )

