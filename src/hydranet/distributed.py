"""The process group: whether this process is the one that logs, saves and shows progress."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_main_process"]


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0: the process that logs, saves and shows progress."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
