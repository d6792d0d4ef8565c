"""Multi-task models: one backbone with a head per task (:class:`HydraNet`), soft sharing
(:class:`MMoE`, :class:`CGC`, :class:`PLE`, :class:`DSelectK`, :class:`CrossStitch`), per-task attention
(:class:`MTAN`) and learned branching (:class:`LTB`), on the backbones of :mod:`hydranet.models.backbones`.

Every architecture follows one contract: ``model(x, tasks=None, return_features=False) -> {task:
output}``, ``model.tasks``, ``model.shared_parameters()``, ``model.task_parameters(task)`` and
``model.heads_from_features(features, tasks)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from hydranet._checks import did_you_mean
from hydranet.models.backbones import BACKBONES, MLP, ConvNet, LeNet, build_backbone, from_timm, from_torchvision
from hydranet.models.branching import LTB
from hydranet.models.dselect import DSelectGate, DSelectK, smooth_step
from hydranet.models.experts import CGC, PLE, CrossStitch, MLPExperts, MMoE, ModuleExperts
from hydranet.models.heads import TaskDict, build_heads, make_head
from hydranet.models.hydra import HeadOptions, HydraNet, MultiTaskModel, UnknownTaskError, find_feature_dim
from hydranet.models.mtan import MTAN
from hydranet.models.init import init_output_bias
from hydranet.tasks import Task

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "CGC",
    "ConvNet",
    "CrossStitch",
    "DSelectGate",
    "DSelectK",
    "HeadOptions",
    "HydraNet",
    "LTB",
    "LeNet",
    "MLP",
    "MLPExperts",
    "MMoE",
    "MTAN",
    "ModuleExperts",
    "MultiTaskModel",
    "PLE",
    "TaskDict",
    "UnknownTaskError",
    "build_architecture",
    "build_backbone",
    "build_heads",
    "find_feature_dim",
    "from_timm",
    "from_torchvision",
    "init_output_bias",
    "make_head",
    "smooth_step",
]

#: Architectures by config name.
ARCHITECTURES: dict[str, type[MultiTaskModel]] = {
    "hydra": HydraNet,
    "mmoe": MMoE,
    "cgc": CGC,
    "ple": PLE,
    "cross_stitch": CrossStitch,
    "mtan": MTAN,
    "dselect_k": DSelectK,
    "ltb": LTB,
}

#: Architectures whose ``backbone`` is the shared network itself, and those that copy it as a column per
#: task (or node); the others read the backbone's features as their shared bottom.
_BACKBONE_ARCHITECTURES: tuple[type[MultiTaskModel], ...] = (HydraNet, MTAN)
_COLUMN_ARCHITECTURES: tuple[type[MultiTaskModel], ...] = (CrossStitch, LTB)


def build_architecture(
    name: str,
    *,
    backbone: nn.Module | str | Mapping[str, Any],
    tasks: Iterable[Task] | Mapping[str, Task],
    input_shape: int | Sequence[int] | None = None,
    head: Any = "linear",
    hidden: Any = None,
    dropout: Any = 0.0,
    **options: Any,
) -> MultiTaskModel:
    """A multi-task model from a config: an architecture name and a backbone (module, name or spec).

    ``backbone`` is a module, a registry name, or ``{"name": ..., **arguments}`` for
    :func:`~hydranet.models.backbones.build_backbone`. It is the shared backbone of ``"hydra"`` and
    ``"mtan"``, the shared bottom of ``"mmoe"``, ``"cgc"``, ``"ple"`` and ``"dselect_k"``, and the column of
    ``"cross_stitch"`` (one fresh copy per task) and ``"ltb"`` (one per node). ``options`` are the
    architecture's own arguments (``num_experts``, ``levels``, ``k``, ``branches``, ...).
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {name!r}.{did_you_mean(name, ARCHITECTURES)} Choose one of {', '.join(ARCHITECTURES)}."
        )
    cls = ARCHITECTURES[name]
    accepted = _accepted(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        given = {"tasks", "backbone", "bottom", "column", "input_shape", "head", "hidden", "dropout"}
        allowed = sorted(accepted - given)
        raise ValueError(f"Unknown option(s) {unknown} for architecture {name!r}; allowed: {', '.join(allowed)}.")
    make: Callable[[], nn.Module] = _backbone_factory(backbone, input_shape)
    common = dict(head=head, hidden=hidden, dropout=dropout, input_shape=input_shape, **options)
    # The families take (backbone, tasks), (column, tasks) or (tasks, bottom): checked by name above.
    build: Callable[..., MultiTaskModel] = cls
    if cls in _BACKBONE_ARCHITECTURES:
        return build(make(), tasks, **common)
    if cls in _COLUMN_ARCHITECTURES:
        return build(make if not isinstance(backbone, nn.Module) else backbone, tasks, **common)
    return build(tasks, make(), **common)


def _accepted(cls: type) -> set[str]:
    """Keyword arguments of an architecture, including those its ``__init__`` passes on to its parent's."""
    names: set[str] = set()
    for klass in cls.__mro__[: cls.__mro__.index(MultiTaskModel)]:
        if "__init__" in vars(klass):
            names |= set(inspect.signature(vars(klass)["__init__"]).parameters)
    return names - {"self", "kwargs"}


def _backbone_factory(backbone: nn.Module | str | Mapping[str, Any], input_shape: Any) -> Callable[[], nn.Module]:
    if isinstance(backbone, nn.Module):
        return lambda: backbone
    if isinstance(backbone, str):
        spec: dict[str, Any] = {"name": backbone}
    elif isinstance(backbone, Mapping):
        spec = dict(backbone)
    else:
        raise TypeError(f"backbone must be a module, a name or {{'name': ..., ...}}, got {type(backbone).__name__}.")
    if "name" not in spec:
        raise ValueError(f"A backbone spec needs a 'name' (one of {', '.join(BACKBONES)}); got {spec}.")
    name = spec.pop("name")
    built = [build_backbone(name, input_shape=input_shape, **spec)]  # fails here, with the backbone's own message

    def make() -> nn.Module:  # the first call returns the backbone built above, later calls fresh ones
        return built.pop() if built else build_backbone(name, input_shape=input_shape, **spec)

    return make
