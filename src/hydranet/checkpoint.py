"""Checkpoint files and random states: atomic writes, safe loads, and every global RNG captured.

A checkpoint is written to a temporary file in the target folder, flushed, fsynced, then renamed over
the previous one (and the folder fsynced), so a crash or a full disk during a save leaves the previous
checkpoint readable. Loading uses ``torch.load(weights_only=True)``: no code from the file runs.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = ["CHECKPOINT_FORMAT", "copy_atomic", "load_checkpoint", "rng_state", "save_checkpoint", "seed_everything", "set_rng_state"]

CHECKPOINT_FORMAT = "hydranet.checkpoint/1"


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
    """Write ``state`` with ``torch.save`` atomically: a temporary file in the same folder, flushed and
    fsynced, then renamed over ``path``. If anything fails, the previous file at ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda handle: torch.save(dict(state), handle))
    return path


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a checkpoint file with the same guarantees as :func:`save_checkpoint`."""

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as src:
            while chunk := src.read(1 << 24):
                handle.write(chunk)

    _write_atomic(target, copy)


def _write_atomic(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary file beside ``target``, flush and fsync it, rename it over ``target``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a hydranet checkpoint on the CPU (``weights_only``: no code runs while loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {str(path)!r}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{str(path)!r} is not a readable hydranet checkpoint ({type(err).__name__}); pass the best.pt or "
            "last.pt that training wrote."
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a hydranet checkpoint (format {state.get('format') if isinstance(state, dict) else None!r}, "
            f"expected {CHECKPOINT_FORMAT!r}); to load bare weights use model.load_state_dict(torch.load(path))."
        )
    return state
