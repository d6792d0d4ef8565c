"""Checkpoint files and random states: atomic, hashed writes, verified loads, every global RNG captured.

A checkpoint is written to a temporary file in the target folder, flushed, fsynced, then renamed over
the previous one (and the folder fsynced), so a crash or a full disk during a save leaves the previous
checkpoint readable; a SHA-256 of the payload, in a footer of the same file, is verified on load
(:mod:`hydranet.train._files`). Loading uses ``torch.load(weights_only=True)``: no code from the file
runs. Weights and validation losses are checked to be finite before every save: a save is refused
(:class:`~hydranet.train.errors.NonFiniteStateError`) rather than overwrite a good file with NaN.

The second half reads and writes a :class:`~hydranet.train.Trainer`'s whole state: model, optimizer,
scheduler, GradScaler, balancer, history, early stopping, baselines and the loop position, with the
random states of every rank (see :mod:`hydranet.train.trainer` on exact resume).
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hydranet import runtime
from hydranet._version import __version__
from hydranet.report.history import History
from hydranet.tasks import Task
from hydranet.train._files import advice, copy_file, read_file, write_file
from hydranet.train.errors import CheckpointError, CheckpointMismatchError, NonFiniteStateError
from hydranet.train.loaders import epoch_sampler, takes_position
from hydranet.train.step import all_finite

if TYPE_CHECKING:
    from hydranet.train.trainer import Trainer

__all__ = [
    "CHECKPOINT_FORMAT",
    "check_savable",
    "check_tasks",
    "copy_atomic",
    "epoch_iterator",
    "last_good_note",
    "load_into",
    "load_checkpoint",
    "read_checked",
    "read_resume",
    "restore",
    "rng_state",
    "save_checkpoint",
    "save_epoch_end",
    "save_mid_epoch",
    "seed_everything",
    "set_rng_state",
    "training_state",
]

CHECKPOINT_FORMAT = "hydranet.checkpoint/1"

logger = logging.getLogger("hydranet.train")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global random state, in a form ``torch.load(weights_only=True)`` reads back."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the random states captured by :func:`rng_state`."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` atomically, with a SHA-256 footer: a temporary file in the same
    folder, flushed and fsynced, then renamed over ``path``. If anything fails, the previous file at
    ``path`` is untouched.

    Raises:
        CheckpointWriteError: the disk is full (or a quota or file-size limit is reached).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(dict(state), path)
    return path


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a checkpoint file (its hash footer included) with the same guarantees as :func:`save_checkpoint`."""
    copy_file(Path(source), Path(target))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a hydranet checkpoint on the CPU (``weights_only``: no code runs while loading), after
    verifying its size and content hash.

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is truncated, damaged, or not a hydranet checkpoint; the message names
            the file and what to use instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {str(path)!r}.")
    state = read_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(
            f"{str(path)!r} is a torch file but not a hydranet checkpoint (format {found!r}, expected "
            f"{CHECKPOINT_FORMAT!r}). {advice(path)} To load bare weights use "
            "model.load_state_dict(torch.load(path))."
        )
    return state


# ------------------------------------------------------------------------------ trainer states


def training_state(trainer: Trainer) -> dict[str, Any]:
    """Everything of ``trainer`` but the loop position: model, optimizer, scheduler, scaler, balancer,
    history, early stopping, baselines and the run's metadata."""
    return {
        "format": CHECKPOINT_FORMAT,
        "hydranet_version": __version__,
        "torch_version": str(torch.__version__),
        "tasks": {name: task.to_dict() for name, task in trainer.tasks.items()},
        "config": {
            "balancer": trainer.balancer.name,
            "optimizer": type(trainer.optimizer).__name__,
            "lr": trainer.lr,
            "weight_decay": trainer.weight_decay,
            "scheduler": None if trainer.scheduler is None else type(trainer.scheduler).__name__,
            "scheduler_interval": trainer.scheduler_interval,
            "accumulate": trainer.accumulate,
            "grad_clip": trainer.grad_clip,
            "amp": trainer.amp,
            "monitor": trainer.monitor,
            "mode": trainer.early_stopping.mode,
            "patience": trainer.patience,
            "min_delta": trainer.min_delta,
            "seed": trainer.seed,
        },
        "model": trainer.step.core.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
        "scaler": None if trainer.scaler is None else trainer.scaler.state_dict(),
        "balancer": trainer.balancer.state_dict(),
        "history": trainer.history.to_dict(),
        "early_stopping": trainer.early_stopping.state_dict(),
        "baselines": trainer.baselines,
        "global_step": trainer.global_step,
    }


def _rank_progress(trainer: Trainer, *, epoch_start: bool) -> dict[str, Any]:
    """Under DDP, ``{"ranks": [random states of rank 0, rank 1, ...]}`` (collective): each rank resumes
    its own, which differ once ranks draw differently (dropout in heads of rank-dependent tasks)."""
    if not runtime.is_distributed():
        return {}
    own = {"rng": rng_state(), **({"rng_epoch_start": trainer.rng_epoch_start} if epoch_start else {})}
    return {"ranks": runtime.gather(own)}


def save_mid_epoch(trainer: Trainer, folder: Path, epoch: int, position: int, loader: Any, means: Any) -> None:
    """``folder/last.pt`` after ``position`` batches of ``epoch`` (collective under DDP)."""
    # Collectives first, on every rank; then rank 0 writes while the others wait for it. The saved
    # means are those of all ranks, resumed by rank 0 alone (the ranks' means add up at epoch end).
    check_savable(trainer, folder / "last.pt", f"epoch {epoch}, batch {position}")
    means_state = means.across_ranks().state_dict()
    ranks = _rank_progress(trainer, epoch_start=True)

    def write() -> None:
        sampler = epoch_sampler(loader)
        state = training_state(trainer)
        state["progress"] = {
            "epoch": epoch,
            "position": position,
            "sampler": sampler.state_dict(position=position) if takes_position(sampler) else None,
            "rng_epoch_start": trainer.rng_epoch_start,
            "rng": rng_state(),
            "means": means_state,
            **ranks,
        }
        save_checkpoint(state, folder / "last.pt")

    runtime.on_main(write)
    trainer.last_good_checkpoint = (
        folder / "last.pt",
        f"epoch {epoch}, batch {position}, optimizer step {trainer.global_step}",
    )


def save_epoch_end(trainer: Trainer, folder: Path, mode: str, epoch: int, improved: bool) -> None:
    """``last.pt`` and (when ``improved``) ``best.pt`` after ``epoch``, as ``mode`` (``"last+best"``,
    ``"last"``, ``"best"``) asks (collective under DDP)."""
    save_last = "last" in mode
    save_best = "best" in mode and improved  # the same on every rank (synchronised values)
    if not (save_last or save_best):
        return
    check_savable(trainer, folder / ("last.pt" if save_last else "best.pt"), f"epoch {epoch}", epoch_end=True)
    ranks = _rank_progress(trainer, epoch_start=False)

    def write() -> None:
        state = training_state(trainer)
        state["progress"] = {"epoch": epoch + 1, "position": 0, "rng": rng_state(), **ranks}
        last, best = folder / "last.pt", folder / "best.pt"
        if save_last:
            save_checkpoint(state, last)
            if save_best:
                copy_atomic(last, best)
        elif save_best:
            save_checkpoint(state, best)

    runtime.on_main(write)
    trainer.last_good_checkpoint = (
        folder / ("last.pt" if save_last else "best.pt"),
        f"after epoch {epoch}, optimizer step {trainer.global_step}",
    )


def check_savable(trainer: Trainer, path: Path, where: str, *, epoch_end: bool = False) -> None:
    """Raise :class:`NonFiniteStateError` rather than write non-finite weights (or, at the end of an
    epoch, a state whose validation loss is not finite) into ``path``; one fused check over the
    weights (the same on every rank, so every rank raises)."""
    core = trainer.step.core
    tensors = [*core.state_dict().values(), *trainer.balancer.parameters()]
    if not all_finite(tensors):
        names = [n for n, v in core.state_dict().items() if v.is_floating_point() and not bool(v.isfinite().all())]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lr = f" (lr={trainer.lr:g})"
        raise NonFiniteStateError(
            f"The checkpoint {path} was not written: the weights hold NaN or infinite values "
            f"({shown or 'the balancer parameters'}) at {where}. Lower the learning rate{lr}, clip gradients "
            "(grad_clip=1.0), or check the inputs for extreme values."
        )
    if not epoch_end or not len(trainer.history):
        return
    for task, value in trainer.history.epochs[-1].losses.get("val", {}).items():
        if not math.isfinite(value):
            raise NonFiniteStateError(
                f"The checkpoint {path} was not written: the validation loss of task {task!r} is {value} after "
                f"{where} although the weights are finite. Check the validation data for NaN or infinite inputs "
                "and targets; if they are clean, the model overflows on them: lower the learning rate or clip "
                "gradients (grad_clip=1.0)."
            )


def last_good_note(trainer: Trainer) -> str:
    """The sentence naming the file that holds the last good state of this run (for error messages)."""
    saved = getattr(trainer, "last_good_checkpoint", None)
    if saved is not None:
        path, where = saved
        return f"The last good state is in {path} ({where}): once the cause is fixed, continue with resume='{path}'."
    if trainer.out_dir is None or trainer.checkpoint == "none":
        return "No checkpoint is written in this run (out_dir=None or checkpoint='none')."
    return f"No checkpoint was written in {trainer.out_dir} by this run yet."


def read_resume(resume: str | Path, folder: Path | None, tasks: Mapping[str, Task]) -> dict[str, Any] | None:
    """The training state to resume from: ``"last"`` (``folder/last.pt``; None when there is none yet)
    or a path; its tasks must be ``tasks``."""
    if str(resume) == "last":
        if folder is None:
            raise ValueError("resume='last' reads out_dir/last.pt: set out_dir=, or pass a path.")
        path = folder / "last.pt"
        if not path.is_file():
            import warnings

            warnings.warn(f"No checkpoint at {path} yet: training from the start.", stacklevel=6)
            return None
    else:
        path = Path(resume)
    state = read_checked(path, tasks)
    if "progress" not in state:
        raise CheckpointError(f"{path} holds weights only, no training state to resume from.")
    state["source"] = str(path)  # named in errors as the last good state until this run saves
    return state


def read_checked(path: str | Path, tasks: Mapping[str, Task]) -> dict[str, Any]:
    """The checkpoint at ``path``, after checking that it was trained for ``tasks``."""
    state = load_checkpoint(path)
    check_tasks(state, tasks, path)
    return state


def check_tasks(state: Mapping[str, Any], tasks: Mapping[str, Task], path: Path | str) -> None:
    """Raise unless the checkpoint ``state`` holds the same tasks, kinds, sizes and class names."""
    saved = state.get("tasks", {})
    mine = {n: t.to_dict() for n, t in tasks.items()}

    # class names too: the same number of classes in another order would decode predictions wrongly
    def shape(spec: Mapping[str, Any]) -> tuple[Any, ...]:
        return (spec["kind"], spec["num_classes"], spec["dim"], spec.get("class_names"))

    def describe(specs: Mapping[str, Any]) -> str:
        return ", ".join(f"{n} ({s['kind']})" for n, s in specs.items())

    if list(saved) != list(mine) or any(shape(saved[n]) != shape(mine[n]) for n in mine):
        raise CheckpointMismatchError(
            f"The checkpoint {str(path)!r} was trained for tasks [{describe(saved)}], but this trainer has "
            f"[{describe(mine)}]. Build the model and trainer with the checkpoint's tasks, or start a new run."
        )


def restore(trainer: Trainer, state: Mapping[str, Any]) -> dict[str, Any]:
    """Load a full training state into ``trainer``; return where the loop continues."""
    source = state.get("source", "the checkpoint")
    trainer.step.core.load_state_dict(state["model"])
    _load_optimizer(trainer, state, source)
    if (state["scheduler"] is None) != (trainer.scheduler is None):
        raise CheckpointMismatchError(
            "The checkpoint was saved " + ("with" if state["scheduler"] is not None else "without")
            + " a learning-rate scheduler; resume with the same scheduler= setting."
        )
    if trainer.scheduler is not None:
        trainer.scheduler.load_state_dict(state["scheduler"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    try:
        trainer.balancer.load_state_dict(state["balancer"])
    except (KeyError, ValueError) as err:
        raise CheckpointMismatchError(
            f"{source}: {err} Resume with the checkpoint's balancer, or start a new run that loads the weights "
            "only (trainer.load_checkpoint(path))."
        ) from err
    trainer.history = History.from_dict(state["history"])
    trainer.early_stopping.load_state_dict(state["early_stopping"])
    if state["baselines"] is not None:
        trainer.baselines = {t: dict(v) for t, v in state["baselines"].items()}
    trainer.global_step = int(state["global_step"])
    progress = dict(state["progress"])
    ranks = progress.pop("ranks", None)
    if ranks is not None and len(ranks) == runtime.world_size():  # this rank's own random states
        progress.update(ranks[runtime.rank()])
    trainer.epoch = int(progress["epoch"])
    if progress["position"] == 0:
        set_rng_state(progress["rng"])
    where = f"epoch {trainer.epoch}" + (f", batch {progress['position']}" if progress["position"] else "")
    trainer.last_good_checkpoint = (Path(source), f"resumed from: {where}, optimizer step {trainer.global_step}")
    return progress


def _load_optimizer(trainer: Trainer, state: Mapping[str, Any], source: str) -> None:
    """The checkpoint's optimizer state, which must be of the configured optimizer's class and shape;
    the learning rate continues from the checkpoint (exact resume), with a notice when the configured
    one differs."""
    config = state.get("config", {})
    saved, mine = config.get("optimizer"), type(trainer.optimizer).__name__
    retry = (
        f"Resume with the checkpoint's optimizer ({saved}), or start a new run that loads the weights only "
        "(trainer.load_checkpoint(path))."
    )
    if saved is not None and saved != mine:
        raise CheckpointMismatchError(
            f"{source} was saved with the optimizer {saved}, but the configured one is {mine}: its state "
            f"(momentum, moment estimates) does not fit. {retry}"
        )
    groups, own = state["optimizer"].get("param_groups", []), trainer.optimizer.param_groups
    if len(groups) != len(own):
        raise CheckpointMismatchError(
            f"{source}: the optimizer state has {len(groups)} parameter group(s), the configured optimizer "
            f"{len(own)} (a balancer with learnable parameters, such as 'uw', adds one). Resume with the "
            f"checkpoint's balancer ({config.get('balancer')!r}) and optimizer, or start a new run that loads the "
            "weights only (trainer.load_checkpoint(path))."
        )
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointMismatchError(
            f"{source}: its optimizer state does not fit the configured {mine} ({type(err).__name__}: {err}). {retry}"
        ) from err
    saved_lr = config.get("lr")
    if saved_lr is None:
        return
    saved_lr = float(saved_lr)
    if not math.isclose(saved_lr, trainer.lr, rel_tol=1e-12):
        now = sorted({float(g["lr"]) for g in trainer.optimizer.param_groups})
        schedule = "" if now == [saved_lr] else f", {', '.join(f'{v:g}' for v in now)} now after its schedule"
        notice = (
            f"Resuming from {source}: training continues with the learning rate of the checkpoint (lr={saved_lr:g}"
            f"{schedule}); the configured lr={trainer.lr:g} is not used (an exact resume restores the optimizer and "
            "scheduler states). To train on with a new learning rate, start a new run from the weights "
            "(trainer.load_checkpoint(path))."
        )
        warnings.warn(notice, UserWarning, stacklevel=5)
        logger.warning(notice)
    # the run's configured lr is now the checkpoint's (saved again in config, named in errors)
    trainer.lr = trainer.step.lr = saved_lr


def epoch_iterator(
    trainer: Trainer, loader: Any, epoch: int, resume_at: Mapping[str, Any] | None, means: Any
) -> tuple[Iterator[Any], int]:
    """The batch iterator of ``epoch`` and the number of batches already consumed (0 unless resuming
    mid-epoch); sets ``trainer.rng_epoch_start``, the random state the epoch's loader started under."""
    sampler = epoch_sampler(loader)
    if resume_at is None or resume_at["position"] == 0:
        if sampler is not None:
            sampler.set_epoch(epoch)
        trainer.rng_epoch_start = rng_state()
        return iter(loader), 0
    # Mid-epoch resume: start the loader under the random state it started with in the original
    # run (its worker seeds, a shuffling sampler's seed), move to the consumed position, then
    # restore the random state of the checkpoint.
    position = int(resume_at["position"])
    trainer.rng_epoch_start = resume_at["rng_epoch_start"]
    set_rng_state(resume_at["rng_epoch_start"])
    if sampler is not None:
        sampler.set_epoch(epoch)
    skip = position
    if resume_at.get("sampler") is not None and takes_position(sampler):
        sampler.load_state_dict(resume_at["sampler"])
        skip = 0
    iterator = iter(loader)
    for _ in range(skip):
        next(iterator)
    set_rng_state(resume_at["rng"])
    if runtime.is_main_process():  # the saved means are all ranks' (see save_mid_epoch)
        means.load_state_dict(resume_at["means"])
    return iterator, position


def load_into(trainer: Trainer, path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``trainer`` (see :meth:`hydranet.train.Trainer.load_checkpoint`)."""
    state = runtime.on_main(lambda: read_checked(path, trainer.tasks))
    trainer.step.core.load_state_dict(state["model"])
    if not weights_only:
        trainer.balancer.load_state_dict(state["balancer"])
        trainer.history = History.from_dict(state["history"])
        trainer.early_stopping.load_state_dict(state["early_stopping"])
        baselines = state["baselines"]
        trainer.baselines = None if baselines is None else {t: dict(v) for t, v in baselines.items()}
        trainer.global_step = int(state["global_step"])
    return state
