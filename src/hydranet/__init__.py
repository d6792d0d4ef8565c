"""hydranet: multi-task learning for PyTorch.

The subpackages and the top-level names (``hn.Task``, ``hn.Trainer``, ``hn.data``, ...) are imported
on first use (PEP 562), so that ``import hydranet`` is cheap and the ``hydranet`` command can parse its
arguments before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hydranet._version import __version__

if TYPE_CHECKING:
    from hydranet import balancing, data, losses, metrics, models, report, runtime, train
    from hydranet import runtime as distributed
    from hydranet.tasks import Task
    from hydranet.train import Trainer

__all__ = [
    "Task",
    "Trainer",
    "__version__",
    "balancing",
    "data",
    "distributed",
    "losses",
    "metrics",
    "models",
    "report",
    "runtime",
    "train",
]

_SUBMODULES = ("balancing", "data", "losses", "metrics", "models", "report", "runtime", "train")
# The name the README and earlier releases use for the runtime layer.
_ALIASES = {"distributed": "runtime"}
_NAMES = {"Task": "hydranet.tasks", "Trainer": "hydranet.train"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES or name in _ALIASES:
        module = importlib.import_module(f"hydranet.{_ALIASES.get(name, name)}")
        globals()[name] = module
        return module
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hydranet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
