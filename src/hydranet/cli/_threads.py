"""How many CPU threads a command uses, chosen with the machine's load in mind.

torch starts one intra-op thread per CPU it may run on, and its OpenMP threads spin while they wait
for work. On a machine other processes also use, those threads compete with them and with each other:
``hydranet demo`` took 51 minutes on a shared 2-core machine (1,479 s of CPU for about 166 s of
work). So the command line

* sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported (waiting threads sleep instead of
  spinning), unless the environment sets it already;
* takes ``threads = max(1, cpus - round(load))`` per process, where ``cpus`` are the CPUs this process
  may run on (``os.sched_getaffinity``) and ``load`` is the 1-minute load average (``os.getloadavg``),
  read before this process has done any work, so it counts the other processes only; under
  ``torchrun`` the CPUs left are shared by the node's processes (``LOCAL_WORLD_SIZE``);
* lets ``--threads N`` or ``OMP_NUM_THREADS`` decide instead.

:func:`prepare` runs before torch is imported, :func:`apply` after.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ThreadChoice", "apply", "choose", "prepare"]


@dataclass(frozen=True)
class ThreadChoice:
    """The number of intra-op threads of this process and why."""

    threads: int
    cpus: int
    load: float | None
    processes: int
    reason: str

    def describe(self) -> str:
        """One line for the console, e.g. ``threads: 1 of 2 CPUs (load 1.2 from other processes)``."""
        per = f" per process ({self.processes} processes)" if self.processes > 1 else ""
        return f"threads: {self.threads}{per} of {self.cpus} CPUs ({self.reason}; --threads N to choose)"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose(requested: int | None = None, *, cpus: int | None = None, load: float | None = None) -> ThreadChoice:
    """The thread count of this process: ``requested`` (``--threads``), else ``OMP_NUM_THREADS``, else
    the CPUs the other processes leave free, shared by the ``LOCAL_WORLD_SIZE`` processes of this node.

    ``cpus`` and ``load`` default to the machine's (given in tests).
    """
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise ValueError(f"--threads must be a positive number of threads, got {requested!r}.")
    cpus = _cpus() if cpus is None else int(cpus)
    processes = _env_int("LOCAL_WORLD_SIZE") or 1
    if requested is not None:
        return ThreadChoice(requested, cpus, None, processes, "--threads")
    from_env = _env_int("OMP_NUM_THREADS")
    if from_env is not None:
        return ThreadChoice(from_env, cpus, None, processes, "OMP_NUM_THREADS")
    load = _load() if load is None else float(load)
    if load is None:
        return ThreadChoice(max(1, cpus // processes), cpus, None, processes, "load unknown")
    # Under torchrun the node's other ranks start at the same time: they are not in the load yet.
    free = max(1, cpus - round(load))
    return ThreadChoice(max(1, free // processes), cpus, load, processes, f"load {load:.1f} from other processes")


def prepare() -> None:
    """Before torch is imported: waiting OpenMP threads sleep instead of spinning (unless set already)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def apply(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count (imports torch)."""
    import torch

    torch.set_num_threads(choice.threads)
