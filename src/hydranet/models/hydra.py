r"""HydraNet: one shared backbone, one head per task; the backbone runs once per batch.

.. math::

    z = f_\theta(x) \in \mathbb{R}^{B \times D}, \qquad
    \hat y_t = h_{\phi_t}(z) \quad \text{for each requested task } t

Only the heads of the requested tasks run: a batch that holds one task costs the backbone and one head.
``shared_parameters()`` are :math:`\theta`, ``task_parameters(t)`` are :math:`\phi_t`, and
``forward(x, return_features=True)`` also returns :math:`z`, the representation that
representation-level balancing differentiates (:math:`\partial L_t / \partial z`).

:class:`MultiTaskModel` is the contract every architecture of :mod:`hydranet.models` follows (HydraNet,
MMoE, CGC/PLE, cross-stitch):

* ``model(x, tasks=None, return_features=False) -> {task: output}`` (or ``(outputs, features)``);
* ``model.tasks`` (``{name: Task}``), ``model.task_names``;
* ``model.shared_parameters()`` and ``model.task_parameters(task)``: a partition of the parameters in
  which every shared parameter reaches the task losses only through ``features``, and the parameters
  of task :math:`t` only reach the loss of :math:`t`;
* ``model.heads_from_features(features, tasks)``: the task-specific rest of the forward pass.

``features`` is one tensor, or a tuple of tensors where the task-specific part starts from several
places (the stages of :class:`~hydranet.models.MTAN`, the branch points of a finalized
:class:`~hydranet.models.LTB`); the balancer accepts both.

The head keywords every architecture takes (``heads``, ``head``, ``hidden``, ``dropout``) travel
together as :class:`HeadOptions`; :meth:`MultiTaskModel._attach_heads` builds and checks the heads from
them, once for all architectures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hydranet._checks import did_you_mean
from hydranet.models.heads import HeadSpec, build_heads, head_in_features
from hydranet.tasks import Task, TaskDict, as_task_dict

__all__ = [
    "MultiTaskModel",
    "HydraNet",
    "HeadOptions",
    "Features",
    "UnknownTaskError",
    "find_feature_dim",
    "dry_run",
    "flat_size",
    "DropoutArg",
    "HeadArg",
    "HiddenArg",
    "TaskSelection",
]

#: Attributes a backbone may carry to announce its feature size (hydranet / torchvision-style, timm).
_FEATURE_ATTRIBUTES: tuple[str, ...] = ("out_features", "feature_dim", "head_hidden_size", "num_features")

TaskSelection = Sequence[str] | str | None

#: The types of the head keywords, shared by every architecture's signature.
HeadArg = HeadSpec | Mapping[str, HeadSpec]
HiddenArg = int | Sequence[int] | Mapping[str, int | Sequence[int]] | None
DropoutArg = float | Mapping[str, float]
#: What ``features`` returns: one tensor, or a tuple of tensors (one per place the task-specific part reads).
Features = Tensor | tuple[Tensor, ...]


@dataclass(frozen=True)
class HeadOptions:
    """How an architecture's heads are made: given modules, and the look of the built ones.

    The fields are the head keywords of every architecture (see :class:`HydraNet`): ``heads`` (explicit
    modules for some tasks), ``head`` (``"linear"``, ``"mlp"`` or per-task specs), ``hidden`` (sizes of
    ``mlp`` heads) and ``dropout``.
    """

    heads: Mapping[str, nn.Module] | None = None
    head: HeadArg = "linear"
    hidden: HiddenArg = None
    dropout: DropoutArg = 0.0

    @property
    def given(self) -> set[str]:
        """The tasks whose head module was given."""
        return set(self.heads or {})


class UnknownTaskError(KeyError, ValueError):
    """A task name the model has no head for; the message lists the known tasks."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def _unknown(name: Any, known: Sequence[str]) -> UnknownTaskError:
    hint = did_you_mean(name, known)
    return UnknownTaskError(f"Unknown task {name!r}: this model's tasks are {', '.join(map(repr, known))}.{hint}")


def _shape(input_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(
            f"input_shape must be one sample's shape without the batch dimension, e.g. (3, 64, 64) or (20,); "
            f"got {input_shape!r}."
        )
    return shape


def dry_run(module: nn.Module, input_shape: int | Sequence[int]) -> Tensor:
    """Run ``module`` once on a batch of two zero inputs of ``input_shape``, in eval mode, without gradients.

    Eval mode keeps BatchNorm statistics untouched; the batch of two keeps layers that need more than one
    sample per channel happy. The input takes the device and floating dtype of the module's parameters.
    """
    shape = _shape(input_shape)
    ref = next((t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (None, None)
    x = torch.zeros(2, *shape, device=device, dtype=dtype)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as err:
        raise ValueError(
            f"{type(module).__name__} failed on a dry run with input_shape={shape}: {err}. Check that input_shape is "
            "one sample's shape without the batch dimension, e.g. (3, 64, 64), or pass feature_dim= instead."
        ) from err
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor):
        raise ValueError(
            f"{type(module).__name__} returned {type(out).__name__} on a dry run; a backbone must return one feature "
            "tensor [batch, D]. Wrap it in a module that returns the features."
        )
    return out


def find_feature_dim(
    backbone: nn.Module,
    feature_dim: int | None = None,
    input_shape: int | Sequence[int] | None = None,
    *,
    vectors: bool = True,
) -> tuple[int | None, Tensor | None]:
    """The width ``D`` of the features a backbone returns, and the dry-run features when one was run.

    Sources, in order: the declared ``feature_dim``; an integer attribute of the backbone among
    :data:`FEATURE_ATTRIBUTES`; a dry run with ``input_shape``. With ``input_shape`` the dry run always
    happens and must agree with a declared or announced size. ``(None, None)`` when nothing tells.
    With ``vectors=False``, features that are not ``[batch, D]`` (feature maps for dense heads) are
    accepted and give ``D = None``.
    """
    declared, source = None, ""
    if feature_dim is not None:
        if not (isinstance(feature_dim, int) and feature_dim > 0):
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}.")
        declared, source = feature_dim, "feature_dim"
    else:
        for attribute in _FEATURE_ATTRIBUTES:
            value = getattr(backbone, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                declared, source = value, f"{type(backbone).__name__}.{attribute}"
                break
    if input_shape is None:
        return declared, None
    features = dry_run(backbone, input_shape)
    if features.ndim != 2 and not vectors and feature_dim is None:
        return None, features
    if features.ndim != 2:
        raise ValueError(
            f"The backbone returns features of shape {list(features.shape)} for input_shape={_shape(input_shape)}; "
            "heads read vectors [batch, D]. End the backbone with pooling and flattening, e.g. "
            "nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten()), or pass your own heads= modules."
        )
    measured = int(features.shape[1])
    if declared is not None and declared != measured:
        raise ValueError(
            f"{source} says the backbone returns {declared} features, but a dry run with input_shape="
            f"{_shape(input_shape)} returned {measured}: pass feature_dim={measured} or fix the backbone."
        )
    return measured, features


class MultiTaskModel(nn.Module):
    """Base of the multi-task architectures: task selection, parameter partition, the forward contract.

    Subclasses implement :meth:`features` (the shared part), :meth:`heads_from_features` (the
    task-specific part) and :meth:`_task_modules` (the modules that belong to one task only).
    """

    heads: TaskDict  # set by _attach_heads, last in every constructor

    def __init__(self, tasks: Iterable[Task] | Mapping[str, Task]) -> None:
        super().__init__()
        self.tasks: dict[str, Task] = as_task_dict(tasks)

    @property
    def task_names(self) -> list[str]:
        """The task names, in the order the tasks were given."""
        return list(self.tasks)

    def select_tasks(self, tasks: TaskSelection = None) -> list[str]:
        """Validate a task selection: ``None`` (all tasks), one name, or a sequence of names."""
        if tasks is None:
            return list(self.tasks)
        names = [tasks] if isinstance(tasks, str) else list(dict.fromkeys(tasks))
        for name in names:
            if name not in self.tasks:
                raise _unknown(name, list(self.tasks))
        return names

    def features(self, x: Any) -> Features:
        """The shared representation the task-specific modules read."""
        raise NotImplementedError

    def heads_from_features(self, features: Any, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """``{task: output}`` for ``tasks`` (all by default), from the output of :meth:`features`.

        ``features`` is typed ``Any`` here: each architecture takes what its own :meth:`features` returns
        (a tensor, or a tuple of node outputs for LTB), and narrows the type in its override."""
        raise NotImplementedError

    def _task_modules(self, task: str) -> list[nn.Module]:
        """The modules whose parameters only reach the loss of ``task``."""
        raise NotImplementedError

    def forward(
        self, x: Any, tasks: TaskSelection = None, return_features: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Features]:
        """``{task: output}`` for the requested tasks (all by default); the shared part runs once.

        Args:
            x: a batch of inputs.
            tasks: the tasks to predict, e.g. ``batch.tasks``; only their task-specific modules run.
            return_features: also return the shared representation (for representation-level balancing).
        """
        names = self.select_tasks(tasks)
        features = self.features(x)
        outputs = self.heads_from_features(features, names)
        return (outputs, features) if return_features else outputs

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters that only affect ``task``'s output (its head, and task-specific gates or experts)."""
        if task not in self.tasks:
            raise _unknown(task, list(self.tasks))
        seen: set[int] = set()
        params = []
        for module in self._task_modules(task):
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not task-specific: the backbone (and shared experts, stitch units)."""
        owned = {id(p) for t in self.tasks for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in owned]

    def _check_partition(self) -> None:
        """Reject a task-specific parameter that is also used elsewhere: it would in fact be shared."""
        uses: dict[int, int] = {}
        for _, p in self.named_parameters(remove_duplicate=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
        for task in self.tasks:
            own: dict[int, int] = {}
            for module in self._task_modules(task):
                for _, p in module.named_parameters(remove_duplicate=False):
                    own[id(p)] = own.get(id(p), 0) + 1
            if any(uses[i] > n for i, n in own.items()):
                raise ValueError(
                    f"A parameter of task {task!r}'s own modules is also used by another task or by the shared "
                    "part: give each task its own head module; layers used by several tasks belong in the backbone."
                )

    def _attach_heads(self, width: int | None, options: HeadOptions, probe: Tensor | None = None) -> TaskDict:
        """Build ``self.heads`` reading ``[batch, width]``, check widths and the partition, probe them on ``probe``.

        Call it last in a constructor: the partition check covers every module built before it.
        """
        self.heads = build_heads(
            self.tasks, width, heads=options.heads, head=options.head, hidden=options.hidden, dropout=options.dropout
        )
        self._set_head_widths(width, options.given)
        self._check_partition()
        if probe is not None:
            self._probe_heads(probe)
        return self.heads

    def _set_head_widths(self, width: int | None, given: set[str]) -> None:
        """Record the input width of each head; built heads read exactly ``[batch, width]``."""
        self._head_in: dict[str, tuple[int | None, bool]] = {
            name: (width, True) if name not in given else (head_in_features(self.heads[name]), False)
            for name in self.tasks
        }
        for name, (expected, built) in self._head_in.items():
            if not built and expected is not None and width is not None and expected != width:
                raise ValueError(
                    f"The head of task {name!r} expects {expected} input features but it is given {width}: build the "
                    f"head with {width} inputs, or leave it out of heads= to have it built from the task."
                )

    def _head(self, name: str, features: Tensor) -> Tensor:
        """Run one head after checking the width of what it reads (static shapes: free under torch.compile)."""
        width, built = self._head_in[name]
        if width is not None and (features.shape[-1] != width or (built and features.ndim != 2)):
            if built:
                fix = "End the backbone with pooling and flattening, or pass feature_dim= matching its output."
            else:
                fix = f"Build the head with {features.shape[-1]} input features."
            raise ValueError(
                f"The head of task {name!r} expects features [batch, {width}], but it was given shape "
                f"{list(features.shape)}. {fix}"
            )
        return self.heads[name](features)

    def _probe_heads(self, probe: Tensor) -> None:
        """Run every head once on the dry-run features: a head that cannot read them fails here, not in training."""
        for name in self.tasks:
            module = self.heads[name]
            was_training = module.training
            module.eval()
            try:
                with torch.no_grad():
                    module(probe)
            except Exception as err:
                raise ValueError(
                    f"The head of task {name!r} fails on the backbone's features of shape {list(probe.shape)} "
                    f"(dry run): {err}"
                ) from err
            finally:
                module.train(was_training)

    def extra_repr(self) -> str:
        return "tasks=[" + ", ".join(f"{t.name}: {t.kind}({t.out_features})" for t in self.tasks.values()) + "]"


class HydraNet(MultiTaskModel):
    r"""A shared backbone with one head per task; the backbone runs once per batch.

    Args:
        backbone: maps a batch of inputs to features ``[batch, D]`` (see :mod:`hydranet.models.backbones`).
        tasks: the tasks, a list or ``{name: Task}`` mapping.
        heads: explicit head modules ``{task: module}`` for some or all tasks; the others are built.
        head: how built heads look: ``"linear"``, ``"mlp"``, or ``{task: "linear" | "mlp" | {"kind",
            "hidden", "dropout", "activation"}}``.
        hidden: hidden sizes of ``mlp`` heads (default ``(D,)``), or ``{task: sizes}``.
        dropout: dropout of built heads, or ``{task: p}``.
        feature_dim: ``D``, when the backbone has no ``out_features`` (or ``feature_dim``,
            ``num_features``) attribute.
        input_shape: one sample's shape without the batch dimension, e.g. ``(3, 64, 64)``: the backbone
            runs once on zeros to measure ``D`` and to check explicit heads against it.

    The feature size is checked against every head whose input width can be read (a linear layer
    first) at construction when the dry run or a declared size allows it, and on every forward pass
    otherwise, with both shapes in the message.

    Example::

        model = HydraNet(ConvNet(in_channels=3), [Task("age", "regression"), Task("gender", "binary")])
        outputs = model(images)                       # {"age": [B, 1], "gender": [B, 1]}
        outputs = model(images, tasks=["gender"])     # the age head does not run
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Iterable[Task] | Mapping[str, Task],
        heads: Mapping[str, nn.Module] | None = None,
        head: HeadArg = "linear",
        hidden: HiddenArg = None,
        dropout: DropoutArg = 0.0,
        feature_dim: int | None = None,
        input_shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}.")
        self.backbone = backbone
        built = [name for name in self.tasks if name not in (heads or {})]
        self.feature_dim, probe = find_feature_dim(backbone, feature_dim, input_shape, vectors=bool(built))
        self._attach_heads(self.feature_dim, HeadOptions(heads, head, hidden, dropout), probe)

    def features(self, x: Any) -> Tensor:
        """The backbone's features ``[batch, D]``."""
        return self.backbone(x)

    def heads_from_features(self, features: Tensor, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """Run the heads of ``tasks`` (all by default) on the backbone's features."""
        return {name: self._head(name, features) for name in self.select_tasks(tasks)}

    def _task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]


def flat_size(input_shape: int | Sequence[int]) -> int:
    """Number of values in one sample of ``input_shape``."""
    return int(math.prod(_shape(input_shape)))

