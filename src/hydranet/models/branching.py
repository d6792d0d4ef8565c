r"""Learning to Branch (Guo, Lee and Ulbricht, ICML 2020): a learned tree of branch blocks.

A column network of :math:`L` stages (an ``nn.Sequential``: the built-in backbones are) gives the blocks.
Layer :math:`l` holds :math:`K_l` copies of stage :math:`l` (``branches``; :math:`K_L = T`, one leaf
per task). Each node :math:`i` of layer :math:`l \ge 2` chooses its parent among the :math:`K_{l-1}`
nodes below by a Gumbel-softmax over its own logits :math:`\theta_i`:

.. math::

    d_i = \mathrm{onehot}\Big(\arg\max_j\; (\theta_{ij} + g_j)/\tau\Big) \text{ forward},\quad
    \mathrm{softmax}\big((\theta_i + g)/\tau\big) \text{ backward (straight-through)}, \qquad
    x^l_i = f^l_i\Big(\sum_j d_{ij}\, x^{l-1}_j\Big)

with :math:`g_j` i.i.d. Gumbel(0, 1) noise and :math:`x^1_i = f^1_i(u)` (:math:`u` the input, or the
output of a shared ``bottom``). Head :math:`t` reads leaf :math:`t`. The temperature :math:`\tau` is
annealed (:meth:`LTB.anneal`: :math:`\tau_e = \max(\tau_{min}, \tau_0 \cdot \rho^e)` at epoch :math:`e`);
``hard=False`` uses the soft sample forward too. In eval mode the choice is the argmax of
:math:`\theta_i`, without noise. After the search, :meth:`LTB.finalize` fixes the argmax tree: every
node keeps its one parent, nodes no leaf descends from are removed; the shared nodes run once per
batch (as a backbone does) and the task-specific ones only for the requested tasks.

**What is shared.** During the search every node below the leaves reaches every task (the soft
gradients connect them), so ``task_parameters(t)`` are leaf :math:`t`, its choice logits and head
:math:`t`; ``features`` are the outputs of layer :math:`L-1`, the leaves' candidate parents. After
:meth:`LTB.finalize`, a node belongs to task :math:`t` when leaf :math:`t` is its only descendant leaf;
``features`` are then the outputs of the nodes where the task-specific branches start (one per branch
point, in the order of the tasks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydranet.models.experts import CrossStitch
from hydranet.models.hydra import (
    DropoutArg,
    Features,
    HeadArg,
    HeadOptions,
    HiddenArg,
    MultiTaskModel,
    TaskSelection,
    find_feature_dim,
)
from hydranet.tasks import Task

__all__ = ["LTB", "Choice"]


class Choice(nn.Module):
    r"""One node's parent choice: logits :math:`\theta_i` over the candidate parents (zeros: uniform)."""

    def __init__(self, candidates: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(candidates))

    def sample(self, tau: float, hard: bool, training: bool) -> Tensor:
        """A Gumbel-softmax sample (training), or the one-hot argmax (eval)."""
        if not training:
            return F.one_hot(self.logits.argmax(), self.logits.numel()).to(self.logits.dtype)
        return F.gumbel_softmax(self.logits, tau=tau, hard=hard)


def _count(value: Any, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"LTB: {what} must be a positive integer, got {value!r}.")
    return value


class LTB(MultiTaskModel):
    r"""Learning to Branch (Guo et al., ICML 2020): a tree of branch blocks searched by Gumbel-softmax.

    Args:
        column: an ``nn.Sequential`` of stages (copied for every node, so all start from the same,
            possibly pretrained, weights) or a factory ``column() -> nn.Sequential`` (fresh weights per
            node). Stages are split as for :class:`~hydranet.models.CrossStitch`: parameter-free stages
            join the stage before them; the last stage must return vectors ``[B, D]``.
        tasks: the tasks.
        bottom: optional shared module run once before the tree.
        branches: nodes per layer :math:`K_1, \dots, K_L`, the last equal to the number of tasks
            (default: :math:`T` nodes in every layer, as in LibMTL); an int sets every layer but the last.
        tau, tau_decay, tau_min: the temperature schedule :math:`\max(\tau_{min}, \tau\rho^e)`;
            :meth:`anneal` applies it (call it at the start of each epoch).
        hard: straight-through one-hot samples (``True``, the paper) or soft samples forward.
        heads, head, hidden, dropout, feature_dim, input_shape: as for :class:`~hydranet.models.HydraNet`;
            head :math:`t` reads leaf :math:`t`.
    """

    choices: nn.ModuleList | None  # the parent choices; None once finalize() has fixed the tree

    def __init__(
        self,
        column: nn.Module | Callable[[], nn.Module],
        tasks: Iterable[Task] | Mapping[str, Task],
        bottom: nn.Module | None = None,
        *,
        branches: int | Sequence[int] | None = None,
        tau: float = 5.0,
        tau_decay: float = 0.97,
        tau_min: float = 0.1,
        hard: bool = True,
        heads: Mapping[str, nn.Module] | None = None,
        head: HeadArg = "linear",
        hidden: HiddenArg = None,
        dropout: DropoutArg = 0.0,
        feature_dim: int | None = None,
        input_shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(tasks)
        n_tasks = len(self.tasks)
        for value, what in ((tau, "tau"), (tau_min, "tau_min")):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"LTB: {what} must be a positive number, got {value!r}.")
        if not (isinstance(tau_decay, (int, float)) and 0 < tau_decay <= 1):
            raise ValueError(f"LTB: tau_decay must be in (0, 1], got {tau_decay!r}.")
        if tau_min > tau:
            raise ValueError(f"LTB: tau_min={tau_min} is above the initial tau={tau}.")
        if isinstance(column, nn.Module):
            make = lambda: copy.deepcopy(column)  # noqa: E731
            prototype = column
        elif callable(column):
            make, prototype = column, None
        else:
            raise TypeError("LTB: column must be an nn.Sequential or a factory returning one.")
        first = make()
        if not isinstance(first, nn.Sequential):
            raise TypeError(
                f"LTB needs the column as an nn.Sequential of stages to branch between, got {type(first).__name__}: "
                "wrap its layers, e.g. nn.Sequential(stage1, stage2, pool)."
            )
        prototype = prototype if prototype is not None else first
        n_layers = len(CrossStitch._segments(first))
        if n_layers < 2 and bottom is None:
            raise ValueError(
                "LTB: a one-stage column without a bottom leaves nothing to share or branch; give the column at "
                "least two stages (e.g. MLP(hidden=(64, 64))) or pass a shared bottom."
            )
        self.branches = self._branches(branches, n_layers, n_tasks)
        columns = [CrossStitch._segments(first)] + [CrossStitch._segments(make()) for _ in range(max(self.branches) - 1)]
        self.bottom = bottom
        self.blocks = nn.ModuleList(
            [nn.ModuleList([columns[i][l] for i in range(k)]) for l, k in enumerate(self.branches)]
        )
        self.choices = nn.ModuleList(
            [nn.ModuleList([Choice(self.branches[l - 1]) for _ in range(k)]) for l, k in enumerate(self.branches) if l]
        )
        self.tau0, self.tau_decay, self.tau_min = float(tau), float(tau_decay), float(tau_min)
        self.tau, self.hard = float(tau), bool(hard)
        self.tree: list[list[int]] | None = None  # parents after finalize()

        measure = nn.Sequential(bottom, prototype) if bottom is not None and input_shape is not None else prototype
        self.feature_dim, probe = find_feature_dim(measure, feature_dim, input_shape)
        self._attach_heads(self.feature_dim, HeadOptions(heads, head, hidden, dropout), probe)

    @staticmethod
    def _branches(branches: int | Sequence[int] | None, n_layers: int, n_tasks: int) -> list[int]:
        if branches is None:
            return [n_tasks] * n_layers
        if isinstance(branches, int):
            return [_count(branches, "branches")] * (n_layers - 1) + [n_tasks]
        sizes = [_count(b, "every entry of branches") for b in branches]
        if len(sizes) != n_layers or sizes[-1] != n_tasks:
            raise ValueError(
                f"LTB: branches must give the nodes of each of the column's {n_layers} layers, the last one the "
                f"number of tasks ({n_tasks}, one leaf per task); got {list(branches)}."
            )
        return sizes

    # -- temperature ---------------------------------------------------------------------------------------
    def temperature(self, epoch: int) -> float:
        r""":math:`\max(\tau_{min}, \tau_0 \rho^{e})` at epoch :math:`e` (counted from 0)."""
        return max(self.tau_min, self.tau0 * self.tau_decay ** int(epoch))

    def anneal(self, epoch: int) -> float:
        """Set ``self.tau`` for ``epoch`` and return it."""
        self.tau = self.temperature(epoch)
        return self.tau

    # -- the search ------------------------------------------------------------------------------------------
    def decisions(self, layer: int) -> Tensor:
        r"""``[K_l, K_{l-1}]``: the parent choices :math:`d_i` of layer ``layer`` (1-based; layers >= 2)."""
        return torch.stack([c.sample(self.tau, self.hard, self.training) for c in self._choices(layer - 2)])

    def parents(self) -> list[list[int]]:
        """The argmax parent of every node of layers 2..L (the tree :meth:`finalize` would fix)."""
        if self.tree is not None:
            return [list(p) for p in self.tree]
        return [[int(c.logits.argmax()) for c in self._choices(l)] for l in range(len(self.branches) - 1)]

    def _layer(self, l: int) -> nn.ModuleList:
        """The nodes of layer ``l`` (0-based; ``-1``: the leaves)."""
        return cast(nn.ModuleList, self.blocks[l])

    def _choices(self, l: int) -> list[Choice]:
        """The parent choices of the nodes of layer ``l + 1`` (0-based), before :meth:`finalize`."""
        if self.choices is None:
            raise RuntimeError("LTB.finalize() has fixed the tree: there are no parent choices left.")
        return [cast(Choice, c) for c in cast(nn.ModuleList, self.choices[l])]

    def _input(self, x: Any) -> Tensor:
        return self.bottom(x) if self.bottom is not None else x

    def features(self, x: Any) -> Features:
        """The outputs of the nodes the task-specific branches read (see the module docstring)."""
        u = self._input(x)
        if self.tree is not None:
            return self._finalized_features(u)
        if len(self.branches) == 1:
            return (u,)
        h = [block(u) for block in self._layer(0)]
        for l in range(2, len(self.branches)):
            mixed = torch.einsum("ij,j...->i...", self.decisions(l).to(h[0].dtype), torch.stack(h))
            h = [block(m) for block, m in zip(self._layer(l - 1), mixed.unbind(0))]
        return tuple(h)

    def heads_from_features(self, features: Features, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """Each requested task's leaf (and, once finalized, its own branch), then its head."""
        names = self.select_tasks(tasks)
        feats = (features,) if isinstance(features, Tensor) else tuple(features)
        if self.tree is not None:
            return self._finalized_heads(feats, names)
        expected = self.branches[-2] if len(self.branches) > 1 else 1
        if len(feats) != expected:
            raise ValueError(f"LTB expects {expected} node output(s) from model.features(x), got {len(feats)}.")
        index = {t: i for i, t in enumerate(self.tasks)}
        leaves = self._layer(-1)
        if len(self.branches) == 1:
            return {t: self._head(t, leaves[index[t]](feats[0])) for t in names}
        stacked = torch.stack(feats)
        out = {}
        for t in names:
            d = self._choices(-1)[index[t]].sample(self.tau, self.hard, self.training).to(stacked.dtype)
            out[t] = self._head(t, leaves[index[t]](torch.einsum("j,j...->...", d, stacked)))
        return out

    def _task_modules(self, task: str) -> list[nn.Module]:
        i = self.task_names.index(task)
        modules: list[nn.Module] = [self.heads[task], self._layer(-1)[i]]
        if self.tree is None:
            if len(self.branches) > 1:
                modules.append(self._choices(-1)[i])
            return modules
        return modules + [self._layer(l)[n] for l, n in self._own[task]]

    # -- the derived tree ------------------------------------------------------------------------------------
    def finalize(self, tree: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
        """Fix the tree (the argmax parents, or ``tree`` from :meth:`parents` of another model) and prune it.

        Nodes no leaf descends from are replaced by ``nn.Identity`` and the choice logits are dropped; the
        partition and ``features`` follow the tree (see the module docstring). Returns the tree. To reload
        a finalized model, build the same LTB, call ``finalize(saved_tree)``, then ``load_state_dict``.
        """
        if self.tree is not None:
            raise ValueError("LTB.finalize() was already called; the tree is fixed.")
        chosen = [list(map(int, p)) for p in (tree if tree is not None else self.parents())]
        if [len(p) for p in chosen] != self.branches[1:] or any(
            not 0 <= j < self.branches[l] for l, p in enumerate(chosen) for j in p
        ):
            raise ValueError(
                f"LTB.finalize: tree must give one parent index per node of layers 2..L (sizes {self.branches[1:]}), "
                f"each below the size of the layer under it; got {chosen}."
            )
        depth = len(self.branches)
        below: list[list[set[str]]] = [[set() for _ in range(k)] for k in self.branches]
        for i, t in enumerate(self.tasks):
            below[-1][i].add(t)
        for l in range(depth - 1, 0, -1):
            for i, parent in enumerate(chosen[l - 1]):
                below[l - 1][parent] |= below[l][i]
        self.tree = chosen
        self.choices = None
        for l, layer in enumerate(below):
            for i, leaves in enumerate(layer):
                if not leaves:
                    self._layer(l)[i] = nn.Identity()
        self._below = below
        # for each task, its own nodes below the leaf and the (layer, node) its branch starts from (-1: the input)
        self._own: dict[str, list[tuple[int, int]]] = {}
        self._start: dict[str, tuple[int, int]] = {}
        for i, t in enumerate(self.tasks):
            path = [i]
            for l in range(depth - 1, 0, -1):
                path.insert(0, chosen[l - 1][path[0]])
            split = next(l for l in range(depth) if below[l][path[l]] == {t})
            self._own[t] = [(l, path[l]) for l in range(split, depth - 1)]
            self._start[t] = (split - 1, path[split - 1]) if split else (-1, 0)
        self._starts = list(dict.fromkeys(self._start.values()))
        self._check_partition()
        return [list(p) for p in chosen]

    def _finalized_features(self, u: Tensor) -> tuple[Tensor, ...]:
        tree = self.tree
        assert tree is not None  # called once finalize() has set it
        outputs: dict[tuple[int, int], Tensor] = {(-1, 0): u}
        for l, layer in enumerate(self._below):
            for i, leaves in enumerate(layer):
                if len(leaves) >= 2:  # shared nodes only; a shared node's parent is shared too
                    parent = (-1, 0) if l == 0 else (l - 1, tree[l - 1][i])
                    outputs[(l, i)] = self._layer(l)[i](outputs[parent])
        # a branch point may lie below another: alias them, so that the gradient with respect to each is the
        # partial one (through the branches that start there) and the chain rule counts each path once
        return tuple(outputs[s].view_as(outputs[s]) for s in self._starts)

    def _finalized_heads(self, feats: tuple[Tensor, ...], names: list[str]) -> dict[str, Tensor]:
        if len(feats) != len(self._starts):
            raise ValueError(f"LTB expects {len(self._starts)} branch-point outputs from model.features(x), got {len(feats)}.")
        start = dict(zip(self._starts, feats))
        out = {}
        for t in names:
            h = start[self._start[t]]
            for l, n in self._own[t]:
                h = self._layer(l)[n](h)
            out[t] = self._head(t, self._layer(-1)[self.task_names.index(t)](h))
        return out

    def forward(
        self, x: Any, tasks: TaskSelection = None, return_features: bool = False
    ) -> dict[str, Tensor] | tuple[dict[str, Tensor], Features]:
        names = self.select_tasks(tasks)
        features = self.features(x)
        outputs = self.heads_from_features(features, names)
        if not return_features:
            return outputs
        constant = [t for t in names if not self._starts_from_shared(t, features)]
        if constant:
            raise ValueError(
                f"LTB: the branch of task(s) {constant} starts at the raw input, so it shares no representation "
                "with the other tasks: pass a bottom= module, or use the 'loop' / 'vmap' Jacobian."
            )
        return outputs, features

    def _starts_from_shared(self, task: str, features: Features) -> bool:
        if self.tree is None:
            return len(self.branches) > 1 or self.bottom is not None
        return self._start[task] != (-1, 0) or self.bottom is not None
