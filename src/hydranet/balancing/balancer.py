r"""The one interface the trainer calls: ``balancer.backward(losses, shared_params, task_params)``.

``backward`` sets (accumulates into, like ``loss.backward()``) the ``.grad`` of the shared and the
task-specific parameters and returns diagnostics. Two routes, chosen by the method:

**Loss weighting** (``ew``, ``uw``, ``dwa``, ... see :mod:`~hydranet.balancing.weighting`): one ordinary
backward pass of the combined objective. It works with any model and with DDP's own gradient
all-reduce (the statistics the weights depend on are averaged over ranks first).

**Gradient methods** (the aggregators of :mod:`~hydranet.balancing.aggregators`, and ``db_mtl``):

1. the task Jacobian :math:`G \in \mathbb{R}^{k\times P}` of the shared parameters: features-first
   (``jacobian="features"``, the default when ``features=`` is given: :math:`J_f` through the heads,
   then one batched backward through the trunk), from the losses (``"loop"`` or ``"vmap"``), or only
   its Gramian :math:`K = GG^\top` (``"gramian"``, for methods whose weights read :math:`G` only
   through :math:`K`; the update is then one backward of :math:`\sum_t w_t L_t` through the trunk); or
   the Jacobian of the shared features (``"representation"``, MGDA-UB style: :math:`P = B \cdot D`);
2. optional row normalisation :math:`G_i / \lVert G_i\rVert` (``normalize=True``);
3. under DDP, the average of :math:`G` over ranks (see below);
4. the aggregator maps :math:`G` to one direction :math:`d`, told which of the balancer's tasks the
   rows are (``present=``, so that per-task state follows the tasks); with one task in the batch,
   :math:`d = G_1` and the aggregator is not called;
5. :math:`d` is added to the shared parameters' ``.grad`` (representation path: one backward pass
   through the backbone with :math:`d` as the features' gradient);
6. the task-specific parameters receive the gradient of :math:`\sum_i L_i` (of the transformed losses
   for ``db_mtl``): each head gets the unweighted gradient of its own loss, as in MGDA-UB and Jacobian
   descent; the balancing acts on what the tasks share. This is one restricted autograd call.

**DDP.** When ``torch.distributed`` is initialised with more than one process, gradient methods
synchronise the gradients themselves: :math:`G` is all-reduced (every rank aggregates the same matrix
and gets the same direction), and the task-specific gradients are all-reduced too. DDP must *not*
all-reduce again: run ``backward`` inside ``model.no_sync()`` (or on the unwrapped module) whenever
``balancer.handles_ddp_sync`` is true. A task present on only some ranks is averaged over the ranks
that have it (zero rows elsewhere), matching the loss of the concatenated batch when ranks hold equal
numbers of labelled samples. Every rank must pass ``task_params`` for all tasks and at least one loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hydranet.balancing.aggregators import AGGREGATORS, Aggregator
from hydranet.balancing._jacobian_features import gram_accumulate
from hydranet.balancing.jacobian import (
    FeatureJacobian,
    TaskJacobian,
    features_cover,
    gather_task_columns,
    global_task_means,
)
from hydranet.runtime import world_size
from hydranet.balancing.weighting import (
    WEIGHTINGS,
    GradientWeighting,
    LossWeighting,
    TaskList,
    Weighting,
    check_losses,
    did_you_mean,
    fast_stack,
    task_dict,
)

__all__ = ["PATHS", "Balancer", "StepInfo", "make"]

PATHS: tuple[str, ...] = ("auto", "loop", "vmap", "features", "gramian", "representation")
_TINY = 1e-12
#: ``jacobian="auto"`` takes the Gramian path when ``G`` would hold more bytes than this (Gramian-only methods).
GRAMIAN_ABOVE = 1 << 30
#: Jacobian entries the Gramian path holds at a time (one parameter group x all tasks): 4M (16 MiB in float32).
GRAMIAN_BLOCK = 1 << 22
_KEYS = ("tasks", "losses", "total", "weights", "grad_norms", "cosines", "jacobian")


class StepInfo(MutableMapping):
    """The diagnostics of one step: a dict whose entries are computed when first read.

    Building the per-task dicts and lists (and, for gradient methods, the cosine matrix) costs more than
    a small model's backward pass; a training loop that logs every hundredth step should not pay for
    them at every step. Reading an entry (or ``dict(info)``) computes it once.
    """

    __slots__ = ("_values", "_lazy")

    def __init__(self, values: dict[str, Any], **lazy: Callable[[], Any]) -> None:
        self._values = values
        self._lazy = lazy

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._lazy.pop(key)()
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._lazy.pop(key, None)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        if self._lazy.pop(key, None) is None:
            del self._values[key]
        else:
            self._values.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        known = [k for k in _KEYS if k in self._values or k in self._lazy]
        return iter(known + [k for k in list(self._values) + list(self._lazy) if k not in _KEYS])

    def __len__(self) -> int:
        return len(set(self._values) | set(self._lazy))

    def __repr__(self) -> str:
        return repr(dict(self))


def _norms(gramian: Tensor | None, matrix: Tensor | None) -> Tensor:
    if gramian is not None:
        return gramian.diagonal().clamp(min=0).sqrt().cpu()
    return matrix.norm(dim=1).to("cpu", torch.float64)


def _cosines(gramian: Tensor | None, matrix: Tensor | None) -> Tensor:
    if gramian is None:
        gramian = matrix.new_zeros(matrix.shape[0], matrix.shape[0], dtype=torch.float64)
        gram_accumulate(gramian, matrix)
    safe = gramian.diagonal().clamp(min=0).sqrt().clamp(min=_TINY)
    return (gramian / (safe.unsqueeze(1) * safe.unsqueeze(0))).cpu()


def _unreached(what: str) -> ValueError:
    return ValueError(
        f"No task loss reaches the {what}: the backbone would get no gradient. Pass the parameters the "
        "losses were computed with (model.shared_parameters()), compute the losses from this forward pass "
        "(not under torch.no_grad(), not from detached features), and keep requires_grad=True on them."
    )


def _accumulate(params: Sequence[Tensor], flat: Tensor, mask: Sequence[bool]) -> None:
    """Add the slices of ``flat`` to ``.grad`` of the parameters whose ``mask`` is true."""
    start = 0
    for param, keep in zip(params, mask):
        stop = start + param.numel()
        if keep:
            grad = flat[start:stop].view_as(param).to(param.dtype)
            if param.grad is None:
                param.grad = grad.clone()
            else:
                param.grad.add_(grad)
        start = stop


def _flatten(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat([(g if g is not None else p.new_zeros(p.shape)).reshape(-1) for g, p in zip(grads, params)])


def _any_reached(reached: Sequence[bool], device: torch.device) -> list[bool]:
    """Per-input reachability OR-ed over ranks (every rank takes the same decisions)."""
    if world_size() == 1:
        return list(reached)
    mask = torch.tensor(reached, dtype=torch.float64, device=device)
    dist.all_reduce(mask)
    return (mask > 0).tolist()


class Balancer:
    """Turns the task losses of a batch into gradients: a loss weighting or a gradient aggregator.

    Build one with :func:`make`. Args:
        method: a :class:`~hydranet.balancing.weighting.Weighting` instance, or an aggregator (a callable
            ``G [k, P] -> [P]``, optionally with ``weights(G) -> [k]``). An
            :class:`~hydranet.balancing.aggregators.Aggregator` is also passed ``present=``, the mask of
            the balancer's tasks that the rows are.
        tasks: task names or :class:`~hydranet.Task` objects, in a fixed order.
        jacobian: ``"auto"`` (``"features"`` when ``features=`` is given and is the losses' only route to
            the shared parameters, ``"gramian"`` instead for Gramian-only methods when :math:`G` would
            exceed ``gramian_above`` bytes; otherwise ``"vmap"`` with a fallback to ``"loop"``),
            ``"features"``, ``"gramian"``, ``"loop"``, ``"vmap"`` or ``"representation"`` (gradient
            methods only). ``info["jacobian"]`` reports the path of each step.
        normalize: divide each task's gradient by its norm before aggregating (gradient methods only).
        name: the method's name, for messages and checkpoints.
        chunk_size: rows of the feature Jacobian per batched backward through the trunk, like TorchJD's
            ``parallel_chunk_size`` (``None``: all rows below 16 tasks, a quarter of them from 16 on; an
            eighth on the Gramian path).
        gramian_above: bytes of :math:`G` above which ``"auto"`` takes the Gramian path.
        gramian_block: Jacobian entries (tasks x parameters) the Gramian path holds at a time.
    """

    def __init__(
        self,
        method: Weighting | Callable[[Tensor], Tensor],
        tasks: TaskList,
        *,
        jacobian: str = "auto",
        normalize: bool = False,
        name: str | None = None,
        chunk_size: int | None = None,
        gramian_above: int = GRAMIAN_ABOVE,
        gramian_block: int = GRAMIAN_BLOCK,
    ) -> None:
        names = list(task_dict(tasks))
        if isinstance(method, Weighting):
            if set(method.task_names) != set(names):
                raise ValueError(
                    f"The weighting was built for tasks {method.task_names}, the balancer for {names}: "
                    "build both from the same task list."
                )
            names = method.task_names
        elif not callable(method):
            raise TypeError(f"Expected a weighting or an aggregator (callable G -> g), got {type(method).__name__}.")
        if jacobian not in PATHS:
            raise ValueError(
                f"jacobian={jacobian!r} is not valid; choose one of {', '.join(PATHS)}.{did_you_mean(jacobian, PATHS)}"
            )
        self.method = method
        self.task_names = names
        self.name = name or type(method).__name__
        self.uses_jacobian = not isinstance(method, LossWeighting)
        if not self.uses_jacobian and (jacobian != "auto" or normalize or chunk_size is not None):
            raise ValueError(
                f"{self.name!r} is a loss weighting: it runs one ordinary backward pass, so jacobian= and "
                "normalize= do not apply. Leave them at their defaults, or pick a gradient method (e.g. 'upgrad')."
            )
        if jacobian == "representation" and isinstance(method, GradientWeighting):
            raise ValueError(
                f"{self.name!r} keeps per-parameter gradient statistics; the representation path changes "
                "shape with the batch. Use jacobian='loop' or 'vmap'."
            )
        self._gramian_ok = bool(getattr(method, "gramian_only", False)) and callable(
            getattr(method, "weights_from_gramian", None)
        )
        if jacobian == "gramian" and not self._gramian_ok:
            raise ValueError(
                f"{self.name!r} needs more of the task Jacobian than its Gramian K = G G^T, so jacobian='gramian' "
                "does not apply. Use jacobian='features' (or 'auto'), or a Gramian-only method such as 'upgrad', "
                "'mgda', 'dualproj', 'cagrad', 'imtl_g', 'aligned_mtl', 'nash_mtl' or 'fairgrad'."
            )
        for label, value in (("gramian_above", gramian_above), ("gramian_block", gramian_block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive number of bytes / entries, got {value!r}.")
        self.jacobian = jacobian
        self.normalize = bool(normalize)
        self.chunk_size = chunk_size
        self.gramian_above = gramian_above
        self.gramian_block = gramian_block
        self._engine = TaskJacobian("vmap" if jacobian in ("auto", "representation", "features", "gramian") else jacobian)
        if jacobian == "auto":
            self._engine.method = "auto"
        self._feature_engine = FeatureJacobian(chunk_size, batched=jacobian != "loop")
        self._cover: dict[int, bool] = {}
        self._dtype = torch.float32
        self._lw_index: dict[tuple[str, ...], Tensor] = {}

    @property
    def requires_features(self) -> bool:
        """True when ``backward`` needs or uses the model's shared features (``features=``): the
        ``representation``, ``features`` and ``gramian`` paths need them, ``auto`` uses them for the
        features-first Jacobian (and works without them)."""
        return self.uses_jacobian and self.jacobian in ("auto", "representation", "features", "gramian")

    @property
    def handles_ddp_sync(self) -> bool:
        """True when ``backward`` all-reduces the gradients itself: run it inside ``model.no_sync()``."""
        return self.uses_jacobian

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the method (UW, IMTL-L, GradNorm) to add to the optimizer."""
        params = getattr(self.method, "parameters", None)
        return list(params()) if callable(params) else []

    def on_epoch_end(self) -> None:
        """Close an epoch (DWA and STCH use per-epoch statistics)."""
        hook = getattr(self.method, "on_epoch_end", None)
        if callable(hook):
            hook()

    def state_dict(self) -> dict[str, Any]:
        save = getattr(self.method, "state_dict", None)
        return {"method": self.name, "tasks": list(self.task_names), "state": save() if callable(save) else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("method") != self.name or list(state.get("tasks", [])) != self.task_names:
            raise ValueError(
                f"This checkpoint holds the state of {state.get('method')!r} for tasks {state.get('tasks')}; "
                f"this balancer is {self.name!r} for tasks {self.task_names}."
            )
        load = getattr(self.method, "load_state_dict", None)
        if callable(load):
            load(state["state"])
        elif state["state"]:
            raise ValueError(f"{self.name!r} has no state to load.")

    def __repr__(self) -> str:
        path = f", jacobian={self.jacobian!r}, normalize={self.normalize}" if self.uses_jacobian else ""
        return f"Balancer({self.name!r}, tasks={self.task_names}{path})"

    def backward(
        self,
        losses: Mapping[str, Tensor],
        shared_params: Sequence[Tensor],
        task_params: Mapping[str, Sequence[Tensor]],
        features: Tensor | Sequence[Tensor] | None = None,
    ) -> StepInfo:
        """Accumulate the balanced gradients of ``losses`` into ``.grad``.

        Args:
            losses: ``{task: scalar loss}`` for the tasks present in the batch; absent tasks are skipped.
            shared_params: the backbone parameters (``model.shared_parameters()``).
            task_params: ``{task: head parameters}`` (``model.task_parameters(task)``); under DDP for
                every task, otherwise at least for the tasks in ``losses``.
            features: the shared features the heads read (``model(x, return_features=True)``); required
                by ``jacobian="representation"``, ignored otherwise.

        Returns:
            ``{"tasks", "losses", "total", "weights", "grad_norms", "cosines", "jacobian"}``: the tasks
            the method balanced; ``{task: loss value}``; the objective's value (sum of the losses for
            gradient methods); ``{task: weight}`` (``{}`` for aggregators that are not row weightings);
            ``{task: gradient norm}`` (``{}`` when no per-task gradient was computed); the cosine matrix
            of the task gradients (``None`` without a Jacobian); the Jacobian path used.
        """
        if not self.uses_jacobian:
            return self._weighting_backward(losses, shared_params)
        names, stacked, values = check_losses(losses, self.task_names)
        shared = [p for p in shared_params if p.requires_grad]
        if not shared:
            raise ValueError(
                "shared_params is empty or frozen: pass model.shared_parameters() (with requires_grad=True)."
            )
        return self._jacobian_backward(names, stacked, values, shared, task_params, features, losses)

    def _weighting_backward(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor]) -> StepInfo:
        """One backward of the weighting's objective (:meth:`objective`)."""
        total, info = self.objective(losses, shared_params)
        total.backward()
        shared = [p for p in shared_params if p.requires_grad]
        if shared[-1].grad is None and all(p.grad is None for p in shared):
            raise _unreached("shared parameters")
        return info

    def objective(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor]) -> tuple[Tensor, StepInfo]:
        """Loss weightings: the scalar objective whose gradient :meth:`backward` writes, and the step's
        diagnostics, without the backward pass, for a loop that runs it itself (Lightning's automatic
        optimization). Under DDP the objective is built for DDP's gradient average over the ranks (see
        :meth:`~hydranet.balancing.weighting.LossWeighting.combine`). The direct objective when the method
        has one."""
        if self.uses_jacobian:
            raise ValueError(
                f"{self.name!r} is a gradient method: it computes the task Jacobian and writes the gradients "
                "itself, so it has no objective to differentiate. Call balancer.backward(...) instead."
            )
        method = self.method
        names, stacked = fast_stack(losses, self.task_names) if world_size() == 1 else (None, None)
        direct = None
        if names is not None:
            key = tuple(names)
            index = self._lw_index.get(key)
            if index is None:
                index = self._lw_index[key] = method.indices(names)
            direct = method.direct(stacked, index)
        if direct is None:
            names, stacked, values = check_losses(losses, self.task_names)
            shared = [p for p in shared_params if p.requires_grad]
            combined = method.combine(names, stacked, values, shared)
            total, value, weights, norms = combined.total, combined.value, combined.weights, combined.grad_norms
        else:
            total, weights_of = direct
            shared = [p for p in shared_params if p.requires_grad]
            value = None
        if not shared:
            raise ValueError(
                "shared_params is empty or frozen: pass model.shared_parameters() (with requires_grad=True)."
            )
        if direct is not None:
            detached = stacked.detach()
            return total, StepInfo(
                {"tasks": names, "cosines": None, "jacobian": None, "grad_norms": {}},
                losses=lambda: dict(zip(names, detached.tolist())),
                total=lambda: float(total.detach()),
                weights=lambda: dict(zip(names, weights_of().tolist())),
            )
        return total, StepInfo(
            {
                "tasks": names,
                "total": value,
                "cosines": None,
                "jacobian": None,
            },
            losses=lambda: dict(zip(names, values.tolist())),
            weights=lambda: dict(zip(names, weights.tolist())),
            grad_norms=lambda: dict(zip(names, norms.tolist())) if norms is not None else {},
        )

    def _resolve(self, objective: Tensor, feats: list[Tensor] | None, shared: list[Tensor]) -> str:
        """The path of this step: the configured one, or for ``"auto"`` the fastest exact one."""
        if self.jacobian != "auto":
            return self.jacobian
        if feats is None:
            return "losses"
        key = objective.shape[0]
        cover = self._cover.get(key)
        if cover is None:  # checked once per number of tasks: the graph's structure does not change per step
            cover = self._cover[key] = features_cover(objective, feats, shared)
        if not cover:
            return "losses"
        if self._gramian_ok and key * sum(p.numel() for p in shared) * shared[0].element_size() > self.gramian_above:
            return "gramian"
        return "features"

    def _jacobian_backward(
        self,
        names: list[str],
        stacked: Tensor,
        values: Tensor,
        shared: list[Tensor],
        task_params: Mapping[str, Sequence[Tensor]],
        features: Tensor | Sequence[Tensor] | None,
        losses: Mapping[str, Tensor],
    ) -> StepInfo:
        n_tasks, world = len(self.task_names), world_size()
        index = torch.tensor([self.task_names.index(n) for n in names], dtype=torch.long)
        method = self.method
        self._dtype = shared[0].dtype
        objective = method.transform(stacked, values, names) if isinstance(method, GradientWeighting) else stacked
        heads = self._head_groups(names, task_params, shared, world)
        needs_features = self.jacobian in ("representation", "features", "gramian")
        feats = self._features(features) if needs_features or (self.jacobian == "auto" and features is not None) else None
        path = self._resolve(objective, feats, shared)
        representation = path == "representation"
        first = path in ("features", "gramian", "representation")

        local = set(index.tolist())
        head_params = [p for i, params in heads if i in local for p in params]
        gramian = None
        jf: list[Tensor] = []
        if first:
            assert feats is not None
            # each task's own loss as the root: its backward runs through its head only, and gives the
            # head's gradient in the same pass
            roots = list(objective.unbind()) if isinstance(method, GradientWeighting) else [losses[n] for n in names]
            by_task = dict(heads)
            own = [by_task[int(i)] for i in index]
            jf, touched, head_grads = self._feature_engine.features(roots, feats, own)
            head_params = [p for group in own for p in group]
            if not any(_any_reached([touched], objective.device)):
                raise ValueError(
                    "No task loss depends on the features passed: pass the tensor the heads read, from this "
                    "forward pass (model(x, return_features=True))."
                )
        else:
            head_grads = (
                torch.autograd.grad(objective.sum(), head_params, retain_graph=True, allow_unused=True)
                if head_params
                else ()
            )
        if representation:
            jac = torch.cat([j.reshape(j.shape[0], -1) for j in jf], dim=1)
        elif path == "features":
            # Gramian-only methods alone: keep G as per-parameter blocks (no concatenated copy), K from them
            as_blocks = self._gramian_ok and world == 1
            jac, reached = self._feature_engine.jacobian(feats, jf, shared, as_blocks=as_blocks)
            if as_blocks:
                blocks, jac = jac, None
                gramian = blocks[0].new_zeros(len(roots), len(roots), dtype=torch.float64)
                for block in blocks:
                    gram_accumulate(gramian, block)
        elif path == "gramian":
            reduce = (lambda block: global_task_means(block, index, n_tasks)[0]) if world > 1 else None
            gramian, reached = self._feature_engine.gramian(feats, jf, shared, self.gramian_block, reduce)
            jac = None
        else:
            jac, reached = self._engine(objective, shared)
        if not representation:
            reached = _any_reached(reached, objective.device)
            if not any(reached):
                raise _unreached("shared parameters")

        own = None
        if representation and world > 1:
            matrix, counts, own = gather_task_columns(jac, index, n_tasks)
        elif world > 1 and jac is not None:
            matrix, counts = global_task_means(jac, index, n_tasks)
        else:
            matrix = jac
            counts = torch.zeros(n_tasks, dtype=torch.float64)
            counts[index] = 1.0
            if world > 1:  # gramian: the presence of every task on any rank
                counts = counts.to(objective.device)
                dist.all_reduce(counts)
        counts = counts.cpu()
        present = counts.nonzero().squeeze(1)
        if world > 1 and matrix is not None:
            matrix = matrix[present.to(matrix.device)]
        elif world > 1 and gramian is not None:
            keep = present.to(gramian.device)
            gramian = gramian[keep][:, keep]
        rows = [self.task_names[int(t)] for t in present]

        if gramian is None and self._gramian_ok and matrix.shape[0] > 1:
            gramian = matrix.new_zeros(matrix.shape[0], matrix.shape[0], dtype=torch.float64)
            gram_accumulate(gramian, matrix)  # small float64 blocks: no float64 copy of G
        if gramian is not None:
            update, weights = self._aggregate_gramian(gramian, matrix, present)
            if update is None and path == "features":
                w = weights.to(blocks[0].device, blocks[0].dtype)
                update = torch.cat([w @ block for block in blocks])
                del blocks
        else:
            rows_to_aggregate = matrix
            if self.normalize:
                rows_to_aggregate = matrix / matrix.norm(dim=1).clamp(min=_TINY).unsqueeze(1)
            update, weights = self._aggregate(rows_to_aggregate, present)
            del rows_to_aggregate

        if path == "gramian":
            # one backward of sum_t w_t L_t through the trunk: the features' gradient is sum_t w_t J_f[t]
            # (under DDP each task's row is the mean over the c_t ranks that have it: w_t / c_t here)
            scale = weights.to(torch.float64) / counts[present].clamp(min=1.0) if world > 1 else weights
            local_w = self._local_weights(scale, present, index)
            outputs = [torch.tensordot(local_w.to(j.device, j.dtype), j, dims=1) for j in jf]
            grads = torch.autograd.grad(feats, shared, grad_outputs=outputs, allow_unused=True)
            flat = _flatten(grads, shared)
            if world > 1:
                dist.all_reduce(flat)
            _accumulate(shared, flat, reached)
        elif representation:
            piece = update[own] if own is not None else update
            grad_outputs, start = [], 0
            for feat in feats:
                grad_outputs.append(piece[start : start + feat.numel()].view_as(feat).to(feat.dtype))
                start += feat.numel()
            grads = torch.autograd.grad(feats, shared, grad_outputs=grad_outputs, allow_unused=True)
            reached = _any_reached([g is not None for g in grads], piece.device)
            if not any(reached):
                raise _unreached("shared parameters through the features")
            flat = _flatten(grads, shared)
            if world > 1:
                dist.all_reduce(flat)  # each rank holds the part of the gradient from its own samples
            _accumulate(shared, flat, reached)
        else:
            _accumulate(shared, update, reached)
        self._accumulate_heads(heads, dict(zip(map(id, head_params), head_grads)), index, counts, world)

        label = path if path in ("features", "gramian", "representation") else self._engine.last_method
        if path in ("features", "gramian") and self._feature_engine.last_method == "loop":
            label = f"{path}-loop"
        return StepInfo(
            {"tasks": rows, "jacobian": label},
            losses=lambda: dict(zip(names, values.tolist())),
            total=lambda: float(values.sum()),
            weights=lambda: dict(zip(rows, weights.tolist())) if weights is not None else {},
            grad_norms=lambda: dict(zip(rows, _norms(gramian, matrix).tolist())),
            cosines=lambda: _cosines(gramian, matrix).tolist(),
        )

    @staticmethod
    def _local_weights(weights: Tensor, present: Tensor, index: Tensor) -> Tensor:
        """The weights of this rank's tasks (positions ``index`` among all tasks) from those of ``present``."""
        full = torch.zeros(int(max(present.max(), index.max())) + 1, dtype=torch.float64)
        full[present] = weights.to(torch.float64).cpu()
        return full[index]

    def _aggregate_gramian(self, gramian: Tensor, matrix: Tensor | None, present: Tensor) -> tuple[Tensor, Tensor]:
        """``(update or None, weights)`` of a Gramian-only weighting from :math:`K` (float64)."""
        k = gramian.shape[0]
        if k == 1:
            weights = torch.ones(1, dtype=torch.float64)
        else:
            K = gramian
            scale = None
            if self.normalize:
                norms = gramian.diagonal().clamp(min=0).sqrt()
                scale = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
                K = gramian * scale.unsqueeze(1) * scale.unsqueeze(0)
            mask = torch.zeros(len(self.task_names), dtype=torch.bool)
            mask[present] = True
            dtype = matrix.dtype if matrix is not None else self._dtype
            weights = torch.as_tensor(self.method.weights_from_gramian(K.cpu(), present=mask, dtype=dtype))
            weights = weights.to(torch.float64).cpu()
            if scale is not None:
                weights = weights * scale.cpu()
        update = weights.to(matrix.device, matrix.dtype) @ matrix if matrix is not None else None
        return update, weights

    def _aggregate(self, matrix: Tensor, present: Tensor) -> tuple[Tensor, Tensor | None]:
        method = self.method
        if isinstance(method, GradientWeighting):
            return method.aggregate(matrix, present)
        if matrix.shape[0] == 1:
            return matrix[0], torch.ones(1, dtype=torch.float64)
        tasks: dict[str, Tensor] = {}
        if isinstance(method, Aggregator):  # per-task state follows the tasks, not the row positions
            tasks["present"] = torch.zeros(len(self.task_names), dtype=torch.bool)
            tasks["present"][present] = True
        weigh = getattr(method, "weights", None)
        if callable(weigh):
            weights = torch.as_tensor(weigh(matrix, **tasks))
            if weights.shape != (matrix.shape[0],):
                raise ValueError(
                    f"{self.name}.weights(G) returned shape {list(weights.shape)} for {matrix.shape[0]} tasks."
                )
            weights = weights.to(device=matrix.device, dtype=matrix.dtype)
            return weights @ matrix, weights.detach().to("cpu", torch.float64)
        update = method(matrix, **tasks)
        if not isinstance(update, Tensor) or update.shape != (matrix.shape[1],):
            shape = list(update.shape) if isinstance(update, Tensor) else type(update).__name__
            raise ValueError(
                f"Aggregator {self.name!r} returned {shape}; expected a vector of {matrix.shape[1]} entries."
            )
        return update, None

    def _features(self, features: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
        if features is None:
            raise ValueError(
                "jacobian='representation' needs the shared features: call model(x, return_features=True) "
                "and pass balancer.backward(..., features=features)."
            )
        feats = [features] if isinstance(features, Tensor) else list(features)
        if not feats or not all(isinstance(f, Tensor) and f.requires_grad for f in feats):
            raise ValueError(
                "features must be a tensor (or tensors) from this forward pass with requires_grad=True; "
                "they were detached or computed under torch.no_grad()."
            )
        return feats

    def _head_groups(
        self, names: list[str], task_params: Mapping[str, Sequence[Tensor]], shared: list[Tensor], world: int
    ) -> list[tuple[int, list[Tensor]]]:
        """``[(task index, its trainable head parameters)]``, each parameter listed once."""
        if not isinstance(task_params, Mapping):
            raise TypeError(f"task_params must be a dict {{task: parameters}}, got {type(task_params).__name__}.")
        needed = self.task_names if world > 1 else names
        missing = [n for n in needed if n not in task_params]
        if missing:
            where = "every task under DDP (all ranks exchange them)" if world > 1 else "each task in losses"
            raise ValueError(
                f"task_params has no entry for task {missing[0]!r}: pass {{task: model.task_parameters(task)}} "
                f"for {where}."
            )
        shared_ids = {id(p) for p in shared}
        seen: set[int] = set()
        groups = []
        for i, name in enumerate(self.task_names):
            params = []
            for param in task_params.get(name, ()):
                if id(param) in shared_ids:
                    raise ValueError(
                        f"A parameter of task {name!r} is also in shared_params: list it in one place only."
                    )
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
            groups.append((i, params))
        return groups

    def _accumulate_heads(
        self,
        heads: list[tuple[int, list[Tensor]]],
        grads: Mapping[int, Tensor | None],
        index: Tensor,
        counts: Tensor,
        world: int,
    ) -> None:
        local = set(index.tolist())
        if world == 1:
            for i, params in heads:
                if i in local:
                    for param in params:
                        grad = grads[id(param)]
                        if grad is not None:
                            param.grad = grad if param.grad is None else param.grad.add_(grad)
            return
        params = [p for _, group in heads for p in group]
        if not params:
            return
        flat = _flatten([grads.get(id(p)) for p in params], params)
        dist.all_reduce(flat)
        start = 0
        for i, group in heads:
            size = sum(p.numel() for p in group)
            if counts[i] > 0:
                flat[start : start + size] /= float(counts[i])
                _accumulate(group, flat[start : start + size], [True] * len(group))
            start += size


def _construct(cls: type, args: tuple, settings: dict[str, Any], name: str) -> Any:
    """``cls(*args, **settings)``, naming the accepted settings when one is unknown."""
    signature = inspect.signature(cls)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    allowed = [
        p.name
        for p in list(signature.parameters.values())[len(args) :]
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in settings:
        if not accepts_any and key not in allowed:
            raise ValueError(
                f"{name!r} has no setting {key!r}.{did_you_mean(key, allowed)} Its settings: "
                f"{', '.join(allowed) or 'none'}; balancer settings: jacobian, normalize, chunk_size."
            )
    return cls(*args, **settings)


def make(
    name: str | Weighting | Callable[[Tensor], Tensor],
    tasks: TaskList,
    *,
    jacobian: str = "auto",
    normalize: bool = False,
    chunk_size: int | None = None,
    **settings: Any,
) -> Balancer:
    """Build a :class:`Balancer`.

    Args:
        name: a weighting name (:data:`~hydranet.balancing.WEIGHTINGS`: ``ew``, ``uw``, ``dwa``, ...), an
            aggregator name (:data:`~hydranet.balancing.AGGREGATORS`: ``upgrad``, ``pcgrad``, ``mgda``, ...),
            or an instance of either.
        tasks: task names or :class:`~hydranet.Task` objects (``uw`` reads the kinds, ``static`` the weights).
        jacobian, normalize, chunk_size: see :class:`Balancer` (gradient methods only).
        **settings: passed to the method's constructor (e.g. ``temperature=2.0`` for ``dwa``).

    Example::

        balancer = hn.balancing.make("upgrad", tasks)
        info = balancer.backward(losses, model.shared_parameters(),
                                 {t: model.task_parameters(t) for t in losses})
    """
    if not isinstance(name, str):
        if settings:
            raise ValueError(f"Settings {sorted(settings)} apply when the method is given by name, not as an instance.")
        registry = {**WEIGHTINGS, **AGGREGATORS}
        label = next((key for key, cls in registry.items() if type(name) is cls), type(name).__name__)
        return Balancer(name, tasks, jacobian=jacobian, normalize=normalize, name=label, chunk_size=chunk_size)
    key = name.strip().lower().replace("-", "_")
    overlap = set(WEIGHTINGS) & set(AGGREGATORS)
    if overlap:
        raise RuntimeError(f"Method names {sorted(overlap)} are both a weighting and an aggregator.")
    if key in WEIGHTINGS:
        method: Any = _construct(WEIGHTINGS[key], (tasks,), settings, key)
    elif key in AGGREGATORS:
        method = _construct(AGGREGATORS[key], (), settings, key)
    else:
        valid = sorted(WEIGHTINGS) + sorted(AGGREGATORS)
        raise ValueError(
            f"Unknown balancing method {name!r}.{did_you_mean(key, valid)} Loss weightings: "
            f"{', '.join(sorted(WEIGHTINGS))}; gradient aggregators: {', '.join(sorted(AGGREGATORS))}."
        )
    return Balancer(method, tasks, jacobian=jacobian, normalize=normalize, name=key, chunk_size=chunk_size)
