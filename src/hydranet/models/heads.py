r"""Heads: the task-specific end of a multi-task model, built from a :class:`~hydranet.Task`.

A head maps a feature vector :math:`z \in \mathbb{R}^D` to the task's output
:math:`\hat y \in \mathbb{R}^{K}`, :math:`K` = ``task.out_features`` (regression values, one binary
logit, or one logit per class / label):

* ``"linear"``: :math:`\hat y = W\,\mathrm{dropout}(z) + b`;
* ``"mlp"``: :math:`\hat y = W_L\,\sigma(\dots \sigma(W_1 z + b_1) \dots) + b_L` with dropout after each
  activation; hidden sizes default to ``(D,)``, one hidden layer as wide as the features.

:class:`TaskDict` holds one module per task. It is an ``nn.ModuleDict`` that also accepts task names
such as ``"type"`` or ``"train"``, which ``nn.ModuleDict`` refuses because they shadow ``nn.Module``
attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from torch import nn

from hydranet.tasks import Task, TaskDict

__all__ = [
    "HEAD_KINDS",
    "ACTIVATIONS",
    "TaskDict",
    "make_head",
    "build_heads",
    "head_in_features",
    "HeadSpec",
    "activation",
]

HEAD_KINDS: tuple[str, ...] = ("linear", "mlp")

#: Activation functions by name, for heads, MLP backbones and experts.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}

#: How a head is described: ``"linear"``, ``"mlp"``, or ``{"kind": ..., "hidden": ..., "dropout": ...,
#: "activation": ...}``.
HeadSpec = Union[str, Mapping[str, Any]]
_SPEC_KEYS = ("kind", "hidden", "dropout", "activation")


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (see :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def _sizes(hidden: int | Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    if hidden is None:
        return None
    sizes = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ValueError(f"{what}: hidden sizes must be positive integers, e.g. hidden=(128,); got {hidden!r}.")
    return sizes


def make_head(
    task: Task,
    in_features: int,
    kind: str = "linear",
    hidden: int | Sequence[int] | None = None,
    dropout: float = 0.0,
    activation_name: str = "relu",
) -> nn.Module:
    """A head for ``task`` reading ``[batch, in_features]`` vectors and returning ``[batch, task.out_features]``.

    Args:
        task: the task; its ``out_features`` is the head's output size.
        in_features: size ``D`` of the feature vectors.
        kind: ``"linear"`` or ``"mlp"``.
        hidden: hidden sizes of an ``mlp`` head (default ``(in_features,)``).
        dropout: dropout probability on the head's input (``linear``) or after each hidden activation (``mlp``).
        activation_name: activation between the layers of an ``mlp`` head.
    """
    where = f"Task {task.name!r}"
    if kind not in HEAD_KINDS:
        raise ValueError(
            f"{where}: unknown head {kind!r}; use one of {', '.join(HEAD_KINDS)}, or pass the module itself in heads=."
        )
    if not (isinstance(in_features, int) and in_features > 0):
        raise ValueError(f"{where}: in_features must be a positive integer, got {in_features!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout!r}.")
    sizes = _sizes(hidden, where)
    if kind == "linear":
        if sizes is not None:
            raise ValueError(f"{where}: hidden= applies to 'mlp' heads; use head='mlp' or drop hidden.")
        linear = nn.Linear(in_features, task.out_features)
        return nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear
    layers: list[nn.Module] = []
    width = in_features
    for size in sizes or (in_features,):
        layers += [nn.Linear(width, size), activation(activation_name)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, task.out_features))
    return nn.Sequential(*layers)


def _per_task(value: Any, name: str, tasks: Mapping[str, Task], what: str) -> Any:
    """Resolve a setting that is either one value for all tasks or a ``{task: value}`` mapping."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in tasks]
        if unknown:
            raise ValueError(f"{what} names unknown task(s) {unknown}; the tasks are {list(tasks)}.")
        return value.get(name)
    return value


def build_heads(
    tasks: Mapping[str, Task],
    in_features: int | None,
    *,
    heads: Mapping[str, nn.Module] | None = None,
    head: HeadSpec | Mapping[str, HeadSpec] = "linear",
    hidden: int | Sequence[int] | Mapping[str, int | Sequence[int]] | None = None,
    dropout: float | Mapping[str, float] = 0.0,
) -> TaskDict:
    """One head per task: the given module from ``heads``, or one built by :func:`make_head`.

    ``head``, ``hidden`` and ``dropout`` are either one value for every built head or a
    ``{task: value}`` mapping; a ``head`` entry may also be a dict ``{"kind", "hidden", "dropout",
    "activation"}``. ``in_features`` may be ``None`` only when every head is given.
    """
    given = dict(heads or {})
    unknown = [k for k in given if k not in tasks]
    if unknown:
        raise ValueError(f"heads= names unknown task(s) {unknown}; the tasks are {list(tasks)}.")
    for name, module in given.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"heads[{name!r}] must be an nn.Module, got {type(module).__name__}.")
    out = TaskDict()
    wanted_mlp = False
    for name in tasks:
        if name in given:
            out[name] = given[name]
            continue
        spec = _per_task(head, name, tasks, "head=")
        spec = "linear" if spec is None else spec
        settings: dict[str, Any] = {"kind": spec} if isinstance(spec, str) else dict(spec)
        bad = [k for k in settings if k not in _SPEC_KEYS]
        if bad:
            raise ValueError(f"head spec for task {name!r} has unknown key(s) {bad}; allowed: {list(_SPEC_KEYS)}.")
        settings.setdefault("kind", "linear")
        task_hidden = _per_task(hidden, name, tasks, "hidden=")
        task_dropout = _per_task(dropout, name, tasks, "dropout=")
        wanted_mlp = wanted_mlp or settings["kind"] == "mlp"
        if settings["kind"] == "mlp" or isinstance(hidden, Mapping):  # a per-task size on a linear head is an error
            settings.setdefault("hidden", task_hidden)
        settings.setdefault("dropout", 0.0 if task_dropout is None else task_dropout)
        if in_features is None:
            raise ValueError(
                f"Cannot build a head for task {name!r} without the feature size: pass feature_dim=D (the size of "
                "the vectors the backbone returns) or input_shape=(...) (one sample's shape, without the batch "
                "dimension) so the model can run the backbone once and measure it."
            )
        out[name] = make_head(
            tasks[name],
            in_features,
            settings["kind"],
            settings.get("hidden"),
            settings["dropout"],
            settings.get("activation", "relu"),
        )
    if hidden is not None and not wanted_mlp and not isinstance(hidden, Mapping):
        raise ValueError("hidden= sets the hidden sizes of 'mlp' heads, but no head is an 'mlp': pass head='mlp'.")
    return out


def head_in_features(module: nn.Module) -> int | None:
    """The input width a head expects, when its structure tells: an ``nn.Linear``, or an ``nn.Sequential``
    that starts with one (after width-preserving layers such as dropout or activations). ``None`` otherwise."""
    if isinstance(module, nn.Linear):
        return module.in_features if module.in_features > 0 else None  # LazyLinear: 0 until first call
    if isinstance(module, nn.Sequential):
        for child in module:
            if isinstance(child, (nn.Linear, nn.Sequential)):
                return head_in_features(child)
            if not isinstance(child, _WIDTH_PRESERVING):
                return None
    return None


_WIDTH_PRESERVING = (nn.Dropout, nn.Identity, *ACTIVATIONS.values(), nn.Sigmoid, nn.ELU, nn.Hardswish, nn.Mish)
