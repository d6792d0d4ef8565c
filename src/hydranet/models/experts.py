r"""Soft parameter sharing: mixtures of experts (MMoE, CGC, PLE) and cross-stitch networks.

All follow the :class:`~hydranet.models.hydra.MultiTaskModel` contract of :class:`HydraNet`
(``forward(x, tasks=None, return_features=False)``, ``shared_parameters()``,
``task_parameters(task)``, ``heads_from_features(features, tasks)``). Their input is either the raw
batch or, with ``bottom=``, the features of a shared bottom backbone (the simplest and usually the most
useful set-up: a ConvNet bottom, small MLP experts on its features).

**Experts and gates (PLE).** A level :math:`j` holds :math:`m_s` shared experts :math:`E^{s}_{j,i}`,
:math:`m_t` experts :math:`E^{k}_{j,i}` per task :math:`k`, one softmax gate per task and, below the top
level, one shared gate. With :math:`g^{k}_{0} = g^{s}_{0} = u` (the bottom's features, or the input):

.. math::

    S^{k}_j = [E^{k}_{j,1}(g^{k}_{j-1}), \dots, E^{k}_{j,m_t}(g^{k}_{j-1}),
               E^{s}_{j,1}(g^{s}_{j-1}), \dots, E^{s}_{j,m_s}(g^{s}_{j-1})]

    g^{k}_j = \mathrm{softmax}(W^{k}_j\, g^{k}_{j-1})^\top S^{k}_j, \qquad
    g^{s}_j = \mathrm{softmax}(W^{s}_j\, g^{s}_{j-1})^\top [S^{1}_j \setminus E^s, \dots, S^{T}_j \setminus E^s, E^s_j]

    \hat y_k = t_k(g^{k}_N)

where :math:`t_k` is task :math:`k`'s tower (its head) and :math:`N` the number of levels (Tang et al.,
RecSys 2020). One level is CGC; one level without task experts is MMoE (Ma et al., KDD 2018):
:math:`\hat y_k = t_k\big(\sum_i \mathrm{softmax}(W_k u)_i\, E_i(u)\big)`.

**What is shared.** A parameter is task-specific when it only reaches its task's loss: the tower, the
top-level gate and task experts, and (for :math:`N \ge 2`) the task's gate of level :math:`N-1`. Everything
else reaches every task (through the shared gates) and is shared: the bottom, all shared experts, the
task experts and gates below the top, the shared gates. ``features`` is what crosses that cut, flattened
into ``[batch, F]``: the top level's shared-expert outputs :math:`E^s_N` (:math:`m_s \cdot H` values), then
the top level's inputs :math:`g^k_{N-1}` for every task (:math:`T \cdot H` values; for :math:`N = 1`, the
input :math:`u` once). :meth:`PLE.split_features` undoes the flattening. Without a bottom the input
:math:`u` depends on no parameter, so it is a constant to representation-level balancing.

**Cross-stitch** (Misra et al., CVPR 2016): one column network per task, run in lockstep, with a learnable
:math:`T \times T` matrix :math:`A` mixing the columns after every stage:
:math:`\tilde h_k = \sum_j A_{kj}\, h_j`, :math:`A` initialised to :math:`\alpha_{same}` on the diagonal and
:math:`(1-\alpha_{same})/(T-1)` elsewhere. Through the stitches every column parameter reaches every task,
so all parameters except the final heads are shared; ``features`` are the stitched column outputs
``[batch, T, D]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydranet.models.heads import activation
from hydranet.models.hydra import (
    DropoutArg,
    HeadArg,
    HeadOptions,
    HiddenArg,
    MultiTaskModel,
    TaskSelection,
    dry_run,
    find_feature_dim,
    flat_size,
)
from hydranet.tasks import Task, TaskDict

__all__ = ["MLPExperts", "ModuleExperts", "PLE", "CGC", "MMoE", "CrossStitch"]


class MLPExperts(nn.Module):
    """``num`` independent MLP experts evaluated together: one batched matmul per layer, not one call each.

    ``forward(x [batch, in_features]) -> [batch, num, hidden[-1]]``; each layer is
    ``activation(h_e W_e + b_e)`` for every expert ``e``, with dropout after the activation.
    """

    def __init__(
        self, num: int, in_features: int, hidden: Sequence[int], activation_name: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(num, a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.empty(num, b)) for b in sizes[1:]])
        self.act = activation(activation_name)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.num, self.in_features, self.out_features = num, in_features, sizes[-1]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
        for w, b in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        # [n, B, width] inside: broadcast batched matmuls, whose weight gradients keep the parameters' strides
        h = x.flatten(1).unsqueeze(0)
        for w, b in zip(self.weights, self.biases):
            h = self.dropout(self.act(torch.matmul(h, w) + b.unsqueeze(1)))
        return h.transpose(0, 1)

    def extra_repr(self) -> str:
        widths = [self.in_features, *(w.shape[2] for w in self.weights)]
        return f"num={self.num}, widths={widths}"


class ModuleExperts(nn.Module):
    """Experts given as modules (e.g. small ConvNets on raw images): ``[batch, num, H]``, one call each."""

    def __init__(self, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.num = len(self.experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)


def _mix(logits: Tensor, experts: Tensor) -> Tensor:
    """Gate mixture: ``softmax(logits) [B, n]`` weights the experts ``[B, n, H]`` -> ``[B, H]``."""
    weights = F.softmax(logits, dim=-1)
    return torch.bmm(weights.unsqueeze(1).to(experts.dtype), experts).squeeze(1)


class _Level(nn.Module):
    """One extraction level: shared experts, per-task experts and gates, and (below the top) a shared gate."""

    shared: nn.Module
    task_experts: TaskDict
    gates: TaskDict
    shared_gate: nn.Linear | None

    def __init__(
        self,
        tasks: Sequence[str],
        shared: nn.Module,
        task_experts: TaskDict,
        gate_in: int,
        n_shared: int,
        n_task: int,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.shared = shared
        self.task_experts = task_experts
        self.gates = TaskDict({t: nn.Linear(gate_in, n_task + n_shared) for t in tasks})
        self.shared_gate = nn.Linear(gate_in, len(tasks) * n_task + n_shared) if shared_gate else None
        self.n_task = n_task

    def task_mixture(self, task: str, task_in: Tensor, shared_out: Tensor, own: Tensor | None = None) -> Tensor:
        """:math:`g^k_j`: the task's gate over its own experts (``own``, computed if not given) and the shared ones."""
        if self.n_task:
            own = self.task_experts[task](task_in) if own is None else own
            pool = torch.cat([own, shared_out], dim=1)
        else:
            pool = shared_out
        return _mix(self.gates[task](task_in.flatten(1)), pool)


def _first_level_input(
    name: str,
    bottom: nn.Module | None,
    expert: Callable[[], nn.Module] | None,
    feature_dim: int | None,
    input_shape: int | Sequence[int] | None,
) -> tuple[int, tuple[int, ...] | None]:
    """``(u_size, u_shape)`` of what the first level reads: the flattened size the gates read, and the
    per-sample shape (the bottom's features, or the raw input; ``None`` when only ``feature_dim`` is known)."""
    if bottom is not None:
        u_size, _ = find_feature_dim(bottom, feature_dim, input_shape)
        if u_size is None:
            raise ValueError(
                f"{name}: cannot tell the bottom's feature size: pass feature_dim=D or input_shape=(...) (one "
                "sample's shape, without the batch dimension) for a dry run."
            )
        return u_size, (u_size,)
    if input_shape is None and feature_dim is None:
        raise ValueError(
            f"{name} without a bottom reads the input directly: pass input_shape=(...) (one sample's shape) "
            "or feature_dim= (the number of input values per sample)."
        )
    if expert is not None and input_shape is None:
        raise ValueError(
            f"{name}: experts from expert= read the raw input; pass input_shape=(...) (one sample's shape, "
            "without the batch dimension)."
        )
    if input_shape is None:
        assert feature_dim is not None  # one of the two is given: checked above
        return int(feature_dim), None
    u_shape = (input_shape,) if isinstance(input_shape, int) else (tuple(input_shape) or None)
    u_size = flat_size(input_shape)
    if feature_dim is not None and feature_dim != u_size:
        raise ValueError(f"{name}: feature_dim={feature_dim} but input_shape={input_shape} has {u_size} values.")
    return u_size, u_shape


class PLE(MultiTaskModel):
    r"""Progressive Layered Extraction (Tang et al., RecSys 2020): stacked CGC levels; see the module docstring.

    Args:
        tasks: the tasks.
        bottom: optional shared bottom backbone; the experts and gates of the first level read its
            features ``[batch, D]``. Without it they read the input (flattened for gates and MLP experts).
        levels: number of extraction levels :math:`N` (1 is CGC).
        shared_experts: shared experts per level :math:`m_s`.
        task_experts: experts per task and level :math:`m_t`.
        expert_hidden: layer sizes of the MLP experts; their output size :math:`H` is the last one.
        expert: optional factory ``expert() -> nn.Module`` for the first level's experts (e.g.
            ``lambda: ConvNet(3, (16, 32))`` on raw images); each returns ``[batch, H]``. Higher levels use
            MLP experts reading :math:`H`-vectors.
        activation, expert_dropout: of the MLP experts.
        heads, head, hidden, dropout: the towers (:class:`~hydranet.models.hydra.HeadOptions`), as for
            :class:`~hydranet.models.HydraNet`; they read
            the task's mixture :math:`g^k_N`, a vector of size :math:`H`.
        feature_dim: size of the first level's input vectors (the bottom's feature size, or the flattened
            input size), when the bottom does not announce it.
        input_shape: one sample's shape without the batch dimension: measures sizes with a dry run.
    """

    def __init__(
        self,
        tasks: Iterable[Task] | Mapping[str, Task],
        bottom: nn.Module | None = None,
        *,
        levels: int = 2,
        shared_experts: int = 2,
        task_experts: int = 1,
        expert_hidden: int | Sequence[int] = (64,),
        expert: Callable[[], nn.Module] | None = None,
        activation: str = "relu",
        expert_dropout: float = 0.0,
        heads: Mapping[str, nn.Module] | None = None,
        head: HeadArg = "linear",
        hidden: HiddenArg = None,
        dropout: DropoutArg = 0.0,
        feature_dim: int | None = None,
        input_shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks)
        name = type(self).__name__
        counts = ((levels, "levels", 1), (shared_experts, "shared_experts", 0), (task_experts, "task_experts", 0))
        for value, what, low in counts:
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
                raise ValueError(f"{name}: {what} must be an integer >= {low}, got {value!r}.")
        if shared_experts == 0 and (levels > 1 or task_experts == 0):
            raise ValueError(
                f"{name}: shared_experts=0 leaves nothing shared between the tasks (no shared path between levels); "
                "use shared_experts >= 1."
            )
        widths = (expert_hidden,) if isinstance(expert_hidden, int) else tuple(expert_hidden)
        if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
            raise ValueError(f"{name}: expert_hidden must be positive layer sizes, e.g. (64,); got {expert_hidden!r}.")
        if bottom is not None and not isinstance(bottom, nn.Module):
            raise TypeError(f"{name}: bottom must be an nn.Module or None, got {type(bottom).__name__}.")
        names = self.task_names
        self.bottom = bottom
        self.n_levels, self.n_shared, self.n_task = levels, shared_experts, task_experts

        u_size, u_shape = _first_level_input(name, bottom, expert, feature_dim, input_shape)
        self.input_size = u_size
        self._u_shape = u_shape
        # experts built by `expert` on the raw input read it unflattened; features() stores it flattened
        self._raw_experts = expert is not None and bottom is None

        def first_level_experts(num: int) -> nn.Module:
            if expert is None:
                return MLPExperts(num, u_size, widths, activation, expert_dropout)
            modules = [expert() for _ in range(num)]
            for m in modules:
                if not isinstance(m, nn.Module):
                    raise TypeError(f"{name}: expert() must return an nn.Module, got {type(m).__name__}.")
            return ModuleExperts(modules)

        def upper_experts(num: int) -> nn.Module:
            return MLPExperts(num, self.expert_dim, widths, activation, expert_dropout)

        self.expert_dim = widths[-1] if expert is None else self._factory_width(expert, u_shape, name)
        levels_list = []
        for j in range(levels):
            make = first_level_experts if j == 0 else upper_experts
            task_banks = TaskDict({t: make(task_experts) for t in names}) if task_experts else TaskDict()
            levels_list.append(
                _Level(
                    names,
                    make(shared_experts) if shared_experts else nn.Identity(),
                    task_banks,
                    u_size if j == 0 else self.expert_dim,
                    shared_experts,
                    task_experts,
                    shared_gate=j < levels - 1,
                )
            )
        self.levels = nn.ModuleList(levels_list)
        self._attach_heads(self.expert_dim, HeadOptions(heads, head, hidden, dropout))

    def _factory_width(self, expert: Callable[[], nn.Module], u_shape: tuple[int, ...] | None, name: str) -> int:
        probe = expert()
        width = getattr(probe, "out_features", None)
        if isinstance(width, int) and width > 0:
            return width
        if u_shape is None:
            raise ValueError(
                f"{name}: cannot tell the experts' output size: give the expert modules an out_features attribute or "
                "pass input_shape=(...) for a dry run."
            )
        out = dry_run(probe, u_shape)
        if out.ndim != 2:
            raise ValueError(f"{name}: an expert must return vectors [batch, H], got shape {list(out.shape)}.")
        return int(out.shape[1])

    def _inputs(self, x: Any) -> Tensor:
        return self.bottom(x) if self.bottom is not None else x

    def features(self, x: Any) -> Tensor:
        """The shared representation ``[batch, F]``: top-level shared-expert outputs, then the top level's inputs."""
        u = self._inputs(x)
        names = self.task_names
        shared_in, task_in = u, dict.fromkeys(names, u)
        for level in self._levels()[:-1]:
            shared_out = level.shared(shared_in)
            task_out = {t: level.task_experts[t](task_in[t]) for t in names} if self.n_task else {}
            pool = torch.cat([*task_out.values(), shared_out], dim=1)
            assert level.shared_gate is not None  # every level below the top has one
            shared_in = _mix(level.shared_gate(shared_in.flatten(1)), pool)
            task_in = {t: level.task_mixture(t, task_in[t], shared_out, task_out.get(t)) for t in names}
        top = self._levels()[-1]
        parts = [top.shared(shared_in).flatten(1)] if self.n_shared else []
        if self.n_levels == 1:
            parts.append(u.flatten(1))
        else:
            parts += [task_in[t] for t in names]
        return torch.cat(parts, dim=1)

    def split_features(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(shared expert outputs [B, m_s, H], top-level inputs [B, T, H] or, with one level, [B, 1, D])``."""
        b, h = features.shape[0], self.expert_dim
        cut = self.n_shared * h
        rest = features[:, cut:]
        slots = 1 if self.n_levels == 1 else len(self.tasks)
        return features[:, :cut].reshape(b, self.n_shared, h), rest.reshape(b, slots, -1)

    def heads_from_features(self, features: Tensor, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """The towers of ``tasks`` on their top-level mixtures, from :meth:`features`' output."""
        names = self.select_tasks(tasks)
        shared_out, inputs = self._top_inputs(features, names)
        top = self._levels()[-1]
        return {t: self._head(t, top.task_mixture(t, inputs[t], shared_out)) for t in names}

    def _top_inputs(self, features: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """From :meth:`features`' output: the top level's shared-expert outputs and each task's top-level input."""
        expected = self.n_shared * self.expert_dim + (
            self.input_size if self.n_levels == 1 else len(self.tasks) * self.expert_dim
        )
        if features.ndim != 2 or features.shape[1] != expected:
            raise ValueError(
                f"{type(self).__name__} expects features [batch, {expected}] (from model.features(x)), got "
                f"{list(features.shape)}."
            )
        shared_out, top_in = self.split_features(features)
        if self.n_levels == 1:
            u = top_in[:, 0]
            if self.bottom is None:
                u = u.detach()  # the raw input: a constant, kept out of representation-level gradients
            if self._raw_experts and self.n_task:
                assert self._u_shape is not None  # raw experts need input_shape, checked at construction
                u = u.reshape(-1, *self._u_shape)
            inputs = dict.fromkeys(names, u)
        else:
            index = {t: i for i, t in enumerate(self.tasks)}
            inputs = {t: top_in[:, index[t]] for t in names}
        return shared_out, inputs

    def _levels(self) -> list[_Level]:
        """The extraction levels, bottom to top."""
        return [cast(_Level, level) for level in self.levels]

    def _task_modules(self, task: str) -> list[nn.Module]:
        top = self._levels()[-1]
        modules: list[nn.Module] = [self.heads[task], top.gates[task]]
        if self.n_task:
            modules.append(top.task_experts[task])
        if self.n_levels >= 2:  # its output only feeds this task's top-level experts and gate
            modules.append(self._levels()[-2].gates[task])
        return modules


class CGC(PLE):
    """Customized Gate Control (Tang et al., RecSys 2020): one PLE level, shared and task-specific experts.

    Arguments as :class:`PLE`, without ``levels``.
    """

    def __init__(
        self,
        tasks: Iterable[Task] | Mapping[str, Task],
        bottom: nn.Module | None = None,
        *,
        shared_experts: int = 2,
        task_experts: int = 1,
        **kwargs: Any,
    ) -> None:
        if "levels" in kwargs:
            raise ValueError("CGC has one level; use PLE(levels=...) for more.")
        super().__init__(tasks, bottom, levels=1, shared_experts=shared_experts, task_experts=task_experts, **kwargs)


class MMoE(PLE):
    r"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

    .. math:: \hat y_k = t_k\Big(\sum_{i=1}^{n} \mathrm{softmax}(W_k u)_i\, E_i(u)\Big)

    ``num_experts`` experts shared by all tasks, one softmax gate and one tower per task. Shared: the
    bottom and the experts; task-specific: the gate and the tower. ``features`` are the expert outputs
    (``split_features(f)[0]`` is ``[batch, num_experts, H]``) followed by the gates' input :math:`u`.
    Other arguments as :class:`PLE`.
    """

    def __init__(
        self,
        tasks: Iterable[Task] | Mapping[str, Task],
        bottom: nn.Module | None = None,
        *,
        num_experts: int = 4,
        **kwargs: Any,
    ) -> None:
        bad = {"levels", "shared_experts", "task_experts"} & set(kwargs)
        if bad:
            raise ValueError(f"MMoE sets {sorted(bad)} itself; use num_experts=, or PLE/CGC for task experts.")
        if not (isinstance(num_experts, int) and num_experts >= 1):
            raise ValueError(f"MMoE: num_experts must be an integer >= 1, got {num_experts!r}.")
        super().__init__(tasks, bottom, levels=1, shared_experts=num_experts, task_experts=0, **kwargs)


class CrossStitch(MultiTaskModel):
    r"""Cross-stitch networks (Misra et al., CVPR 2016): one column per task, stitched after every stage.

    Args:
        column: an ``nn.Sequential`` of stages (copied once per task, so every column starts from the
            same, possibly pretrained, weights) or a factory ``column() -> nn.Sequential`` (one fresh network
            per task). A stitch follows every stage that has parameters; stages without parameters
            (pooling, flattening) join the stage before them. The built-in backbones are such sequences.
        tasks: the tasks.
        bottom: optional shared bottom run once before the columns.
        alpha_same: initial weight of a column on itself (0.9 in the paper); the rest is spread evenly.
        heads, head, hidden, dropout, feature_dim, input_shape: as for :class:`~hydranet.models.HydraNet`;
            the head of task :math:`k` reads column :math:`k`'s stitched output.

    ``shared_parameters()`` are the bottom, all columns and the stitch matrices (``model.stitches``);
    ``task_parameters(k)`` is head :math:`k` only. The paper trains the stitches with a larger learning
    rate: put ``model.stitches.parameters()`` in their own optimizer group. Every column runs for every
    batch (the stitches couple them); only the requested heads run.
    """

    def __init__(
        self,
        column: nn.Module | Callable[[], nn.Module],
        tasks: Iterable[Task] | Mapping[str, Task],
        bottom: nn.Module | None = None,
        *,
        alpha_same: float = 0.9,
        heads: Mapping[str, nn.Module] | None = None,
        head: HeadArg = "linear",
        hidden: HiddenArg = None,
        dropout: DropoutArg = 0.0,
        feature_dim: int | None = None,
        input_shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks)
        n = len(self.tasks)
        if not 0.0 < float(alpha_same) <= 1.0:
            raise ValueError(f"CrossStitch: alpha_same must be in (0, 1], got {alpha_same!r}.")
        if isinstance(column, nn.Module):
            prototype = column
            copies = [copy.deepcopy(column) for _ in range(n)]
        elif callable(column):
            copies = [column() for _ in range(n)]
            prototype = copies[0]
        else:
            raise TypeError("CrossStitch: column must be an nn.Sequential or a factory returning one.")
        for c in copies:
            if not isinstance(c, nn.Sequential):
                raise TypeError(
                    f"CrossStitch needs each column as an nn.Sequential of stages to stitch between, got "
                    f"{type(c).__name__}: wrap its layers, e.g. nn.Sequential(stage1, stage2, pool)."
                )
        self.bottom = bottom
        segments = [self._segments(c) for c in copies]
        self.columns = nn.ModuleList([nn.ModuleList(s) for s in segments])
        off = (1.0 - float(alpha_same)) / (n - 1) if n > 1 else 0.0
        init = torch.full((n, n), off) + (float(alpha_same) - off) * torch.eye(n)
        if n == 1:
            init = torch.ones(1, 1)
        self.stitches = nn.ParameterList([nn.Parameter(init.clone()) for _ in segments[0]])

        # the size a column returns: announced by the column, or measured on bottom + column
        measure = nn.Sequential(bottom, prototype) if bottom is not None and input_shape is not None else prototype
        self.feature_dim, probe = find_feature_dim(measure, feature_dim, input_shape)
        self._attach_heads(self.feature_dim, HeadOptions(heads, head, hidden, dropout), probe)

    @staticmethod
    def _segments(column: nn.Module) -> list[nn.Sequential]:
        """Split a column after each stage with parameters; trailing parameter-free stages join the last."""
        if not isinstance(column, nn.Sequential):  # a factory's later call, say: the callers check the first
            raise TypeError(
                f"A column must be an nn.Sequential of stages, got {type(column).__name__}: wrap its layers, e.g. "
                "nn.Sequential(stage1, stage2, pool)."
            )
        segments: list[list[nn.Module]] = [[]]
        for stage in column:
            segments[-1].append(stage)
            if any(True for _ in stage.parameters()):
                segments.append([])
        if not segments[-1]:
            segments.pop()
        elif len(segments) > 1:
            tail = segments.pop()
            segments[-1] += tail
        if not any(any(True for _ in m.parameters()) for seg in segments for m in seg):
            raise ValueError("CrossStitch: the column has no parameters; there is nothing to stitch.")
        return [nn.Sequential(*seg) for seg in segments]

    def features(self, x: Any) -> Tensor:
        """The stitched outputs of the columns, ``[batch, T, D]`` (column ``k`` feeds head ``k``)."""
        z = self.bottom(x) if self.bottom is not None else x
        hidden: list[Tensor] = [z] * len(self.tasks)
        mixed = z
        for s, stitch in enumerate(self.stitches):
            stages = [cast(nn.ModuleList, col)[s] for col in self.columns]
            stacked = torch.stack([stage(h) for stage, h in zip(stages, hidden)])  # [T, B, ...]
            mixed = torch.einsum("ij,j...->i...", stitch.to(stacked.dtype), stacked)
            hidden = list(mixed.unbind(0))
        return mixed.movedim(0, 1)

    def heads_from_features(self, features: Tensor, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """Head ``k`` on column ``k``'s stitched output ``features[:, k]``."""
        names = self.select_tasks(tasks)
        if features.ndim < 2 or features.shape[1] != len(self.tasks):
            raise ValueError(
                f"CrossStitch expects features [batch, {len(self.tasks)}, ...] (one slice per column), got "
                f"{list(features.shape)}."
            )
        index = {t: i for i, t in enumerate(self.tasks)}
        return {t: self._head(t, features[:, index[t]]) for t in names}

    def _task_modules(self, task: str) -> list[nn.Module]:
        return [self.heads[task]]
