r"""The one interface the trainer calls: ``balancer.backward(losses, shared_params, task_params)``.

``backward`` sets (accumulates into, like ``loss.backward()``) the ``.grad`` of the shared and the
task-specific parameters and returns diagnostics. Two routes, chosen by the method:

**Loss weighting** (``ew``, ``uw``, ``dwa``, ... see :mod:`~hydranet.balancing.weighting`): one ordinary
backward pass of the combined objective. It works with any model and with DDP's own gradient
all-reduce (the statistics the weights depend on are averaged over ranks first).

**Gradient methods** (the aggregators of :mod:`~hydranet.balancing.aggregators`, and ``db_mtl``):

1. the task Jacobian :math:`G \in \mathbb{R}^{k\times P}` of the shared parameters
   (``jacobian="loop"`` or ``"vmap"``), or of the shared features (``"representation"``, MGDA-UB
   style: :math:`P = B \cdot D`, far smaller than the backbone);
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hydranet.balancing.aggregators import AGGREGATORS, Aggregator
from hydranet.balancing.jacobian import TaskJacobian, gather_task_columns, global_task_means
from hydranet.runtime import world_size
from hydranet.balancing.weighting import (
    WEIGHTINGS,
    GradientWeighting,
    LossWeighting,
    TaskList,
    Weighting,
    check_losses,
    did_you_mean,
    task_dict,
)

PATHS: tuple[str, ...] = ("auto", "loop", "vmap", "representation")
_TINY = 1e-12


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
        jacobian: ``"auto"`` (``"vmap"`` with a fallback to ``"loop"``), ``"loop"``, ``"vmap"`` or
            ``"representation"`` (gradient methods only).
        normalize: divide each task's gradient by its norm before aggregating (gradient methods only).
        name: the method's name, for messages and checkpoints.
    """

    def __init__(
        self,
        method: Weighting | Callable[[Tensor], Tensor],
        tasks: TaskList,
        *,
        jacobian: str = "auto",
        normalize: bool = False,
        name: str | None = None,
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
        if not self.uses_jacobian and (jacobian != "auto" or normalize):
            raise ValueError(
                f"{self.name!r} is a loss weighting: it runs one ordinary backward pass, so jacobian= and "
                "normalize= do not apply. Leave them at their defaults, or pick a gradient method (e.g. 'upgrad')."
            )
        if jacobian == "representation" and isinstance(method, GradientWeighting):
            raise ValueError(
                f"{self.name!r} keeps per-parameter gradient statistics; the representation path changes "
                "shape with the batch. Use jacobian='loop' or 'vmap'."
            )
        self.jacobian = jacobian
        self.normalize = bool(normalize)
        self._engine = TaskJacobian("auto" if jacobian == "representation" else jacobian)

    @property
    def requires_features(self) -> bool:
        """True when ``backward`` needs the model's shared features (``features=``)."""
        return self.jacobian == "representation"

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
    ) -> dict[str, Any]:
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
        names, stacked, values = check_losses(losses, self.task_names)
        shared = [p for p in shared_params if p.requires_grad]
        if not shared:
            raise ValueError(
                "shared_params is empty or frozen: pass model.shared_parameters() (with requires_grad=True)."
            )
        if not self.uses_jacobian:
            combined = self.method.combine(names, stacked, values, shared)
            combined.total.backward()
            if all(p.grad is None for p in shared):
                raise _unreached("shared parameters")
            norms = combined.grad_norms
            return {
                "tasks": names,
                "losses": dict(zip(names, values.tolist())),
                "total": combined.value,
                "weights": dict(zip(names, combined.weights.tolist())),
                "grad_norms": dict(zip(names, norms.tolist())) if norms is not None else {},
                "cosines": None,
                "jacobian": None,
            }
        return self._jacobian_backward(names, stacked, values, shared, task_params, features)

    def _jacobian_backward(
        self,
        names: list[str],
        stacked: Tensor,
        values: Tensor,
        shared: list[Tensor],
        task_params: Mapping[str, Sequence[Tensor]],
        features: Tensor | Sequence[Tensor] | None,
    ) -> dict[str, Any]:
        n_tasks, world = len(self.task_names), world_size()
        index = torch.tensor([self.task_names.index(n) for n in names], dtype=torch.long)
        method = self.method
        objective = method.transform(stacked, values, names) if isinstance(method, GradientWeighting) else stacked
        heads = self._head_groups(names, task_params, shared, world)
        representation = self.jacobian == "representation"

        if representation:
            feats = self._features(features)
            jac, reached = self._engine(objective, feats)
            if not any(_any_reached(reached, jac.device)):
                raise ValueError(
                    "No task loss depends on the features passed: pass the tensor the heads read, from this "
                    "forward pass (model(x, return_features=True))."
                )
        else:
            jac, reached = self._engine(objective, shared)
            reached = _any_reached(reached, jac.device)
            if not any(reached):
                raise _unreached("shared parameters")
        local = set(index.tolist())
        head_params = [p for i, params in heads if i in local for p in params]
        head_grads = (
            torch.autograd.grad(objective.sum(), head_params, retain_graph=representation, allow_unused=True)
            if head_params
            else ()
        )

        own = slice(0, jac.shape[1])
        if representation and world > 1:
            matrix, counts, own = gather_task_columns(jac, index, n_tasks)
        elif world > 1:
            matrix, counts = global_task_means(jac, index, n_tasks)
        else:
            matrix = jac
            counts = torch.zeros(n_tasks, dtype=torch.float64)
            counts[index] = 1.0
        counts = counts.cpu()
        present = counts.nonzero().squeeze(1)
        if world > 1:
            matrix = matrix[present.to(matrix.device)]
        rows = [self.task_names[int(t)] for t in present]

        norms = matrix.norm(dim=1)
        safe = norms.clamp(min=_TINY)
        cosines = (matrix @ matrix.T) / (safe.unsqueeze(1) * safe.unsqueeze(0))
        if self.normalize:
            matrix = matrix / safe.unsqueeze(1)
        update, weights = self._aggregate(matrix, present)

        if representation:
            piece = update[own]
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

        return {
            "tasks": rows,
            "losses": dict(zip(names, values.tolist())),
            "total": float(values.sum()),
            "weights": dict(zip(rows, weights.tolist())) if weights is not None else {},
            "grad_norms": dict(zip(rows, norms.tolist())),
            "cosines": cosines.tolist(),
            "jacobian": "representation" if representation else self._engine.last_method,
        }

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
                f"{', '.join(allowed) or 'none'}; balancer settings: jacobian, normalize."
            )
    return cls(*args, **settings)


def make(
    name: str | Weighting | Callable[[Tensor], Tensor],
    tasks: TaskList,
    *,
    jacobian: str = "auto",
    normalize: bool = False,
    **settings: Any,
) -> Balancer:
    """Build a :class:`Balancer`.

    Args:
        name: a weighting name (:data:`~hydranet.balancing.WEIGHTINGS`: ``ew``, ``uw``, ``dwa``, ...), an
            aggregator name (:data:`~hydranet.balancing.AGGREGATORS`: ``upgrad``, ``pcgrad``, ``mgda``, ...),
            or an instance of either.
        tasks: task names or :class:`~hydranet.Task` objects (``uw`` reads the kinds, ``static`` the weights).
        jacobian, normalize: see :class:`Balancer` (gradient methods only).
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
        return Balancer(name, tasks, jacobian=jacobian, normalize=normalize, name=label)
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
    return Balancer(method, tasks, jacobian=jacobian, normalize=normalize, name=key)
