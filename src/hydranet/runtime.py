"""Running under ``torchrun``: the process group's start and shutdown, and the collectives hydranet uses.

``torchrun --nproc_per_node=N script.py`` (or ``hydranet train``) starts N processes and tells each
one its place through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). :func:`process_group` reads them::

    with hn.distributed.process_group():      # a no-op without torchrun (WORLD_SIZE unset or 1)
        main()                                # build loaders, model and Trainer in here

* **Backend and device**: NCCL with ``cuda:LOCAL_RANK`` when CUDA is available, gloo on the CPU.
* **Ownership**: a group that was already started (by the caller, by another library) is used as it
  is and left running; only a group :func:`process_group` started is shut down by it.
* **Shutdown**: ``destroy_process_group()`` while a DistributedDataParallel model and its tensors are
  still alive lets a gloo thread free tensors while Python tears itself down, and the process aborts at
  exit *after* training succeeded (measured: 4 of 25 two-process runs; torchrun then reports a
  failure). :func:`shutdown` collects garbage, destroys the group, and collects again (0 of 40). So
  that the model is garbage by then, build it inside a function called in the ``with`` block, not in
  the block itself: its locals are released when it returns. On an error the traceback's frames are
  cleared first, for the same reason.

Everything else here is a no-op, or the plain single-process answer, outside a process group of more
than one process: code written with these helpers runs unchanged with and without ``torchrun``.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "Process",
    "process_group",
    "start",
    "shutdown",
    "launched_world_size",
    "is_distributed",
    "is_main_process",
    "world_size",
    "rank",
    "local_rank",
    "default_backend",
    "device_for",
    "barrier",
    "on_main",
    "gather",
    "count",
    "sum_by_key",
]

T = TypeVar("T")

#: The variables torchrun sets that :func:`start` needs to join a group.
TORCHRUN_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Process:
    """Where this process stands: its rank among ``world_size``, its rank on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, saves and shows progress."""
        return self.rank == 0


# ------------------------------------------------------------------------------ the process group


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 outside torchrun."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"WORLD_SIZE={value!r} is not a number of processes; launch with torchrun.") from None


def default_backend() -> str:
    """``"nccl"`` when CUDA (and NCCL) is available, else ``"gloo"``."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def start(backend: str | None = None, *, timeout: datetime.timedelta | None = None) -> bool:
    """Join the process group torchrun describes in the environment; return whether this call started it.

    Nothing happens (``False``) outside torchrun (``WORLD_SIZE`` unset or 1) or when a group is already
    up. ``backend`` defaults to :func:`default_backend`; with NCCL the process's GPU becomes
    ``cuda:LOCAL_RANK``. ``timeout`` bounds every collective (torch's default otherwise).
    """
    if dist.is_available() and dist.is_initialized():
        return False
    if launched_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; install a build that has it.")
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: start the processes with "
            "torchrun (e.g. torchrun --standalone --nproc_per_node=2 ...), which sets all of them."
        )
    backend = backend or default_backend()
    if backend == "nccl":
        if not torch.cuda.is_available() or local_rank() >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank()} has no GPU ({torch.cuda.device_count()} visible): start at most one "
                "process per GPU (--nproc_per_node), or use backend='gloo'."
            )
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return True


def shutdown() -> None:
    """Destroy the process group without the abort at exit (see the module docstring): collect the
    garbage that may hold the group's tensors, destroy the group, collect what that released."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


@contextlib.contextmanager
def process_group(backend: str | None = None, *, timeout: datetime.timedelta | None = None) -> Iterator[Process]:
    """Run the block in the torchrun process group (started and shut down here), or alone without torchrun.

    Yields the :class:`Process`. On a normal exit every rank waits for the others (so no process tears
    the group down while another still talks to it), then the group is shut down. On an error it is shut
    down at once: the other ranks may never reach a barrier, and torchrun stops them anyway. A group
    that was up before the block is left up.
    """
    started = start(backend, timeout=timeout)
    try:
        yield current()
    except BaseException as error:
        if started:
            # The traceback keeps the failed frames' locals (a DDP model, its tensors) alive: clear them
            # so that the shutdown releases them before the group goes.
            traceback.clear_frames(error.__traceback__)
            shutdown()
        raise
    if started:
        barrier()
        shutdown()


def current() -> Process:
    """This process's :class:`Process` (rank 0 of 1 outside a process group)."""
    backend = dist.get_backend() if is_distributed() else None
    return Process(rank(), world_size(), local_rank(), device_for("auto"), backend)


# ------------------------------------------------------------------------------ where am I


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0: the process that logs, saves and shows progress."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    """Processes in the group; 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank; 0 outside a group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``); 0 outside torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for(requested: str | torch.device = "auto") -> torch.device:
    """The device this process trains on.

    ``"auto"``: CUDA when available, else the CPU. Inside a process group a CUDA device without an
    index (``"auto"``, ``"cuda"``) becomes ``cuda:LOCAL_RANK``: one GPU per process, as DDP needs.
    """
    if isinstance(requested, str) and requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={requested!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:1'.") from None
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


# ------------------------------------------------------------------------------ collectives


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: the current GPU with NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (no-op outside a process group)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def on_main(function: Callable[[], T]) -> T:
    """Run ``function`` on rank 0 only and return its result on every rank.

    The other ranks wait for it, so after the call a file rank 0 wrote is complete for everyone. An
    exception on rank 0 is raised on every rank (no rank is left waiting for the others); results and
    exceptions travel pickled, so keep them small or made of tensors (a checkpoint is fine).
    """
    if not is_distributed():
        return function()
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload = [(True, function())]
        except Exception as error:  # re-raised below, on every rank
            payload = [(False, error)]
    dist.broadcast_object_list(payload, src=0, device=_collective_device())
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def gather(value: T) -> list[T]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` outside a group)."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def count(flags: Sequence[bool]) -> list[int]:
    """For each flag, the number of ranks on which it is true (the flags themselves outside a group)."""
    if not is_distributed():
        return [int(bool(f)) for f in flags]
    tensor = torch.tensor([bool(f) for f in flags], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_by_key(values: Mapping[str, float]) -> dict[str, float]:
    """Sum ``{key: number}`` over the ranks, a key missing on a rank counting as 0; the union of the
    keys, in sorted order, on every rank."""
    if not is_distributed():
        return dict(values)
    keys = sorted({key for keys in gather(sorted(values)) for key in keys})
    tensor = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))
