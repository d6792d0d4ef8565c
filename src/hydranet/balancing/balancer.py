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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hydranet._checks import did_you_mean
from hydranet.balancing._paths import jacobian_backward, unreached
from hydranet.balancing._step_info import StepInfo
from hydranet.balancing._weighting_base import (
    GradientWeighting,
    LossWeighting,
    TaskList,
    Weighting,
    check_losses,
    fast_stack,
    task_dict,
)
from hydranet.balancing.aggregators import AGGREGATORS
from hydranet.balancing.jacobian import FeatureJacobian, TaskJacobian, features_cover
from hydranet.balancing.weighting import WEIGHTINGS
from hydranet.runtime import world_size

__all__ = ["PATHS", "Balancer", "StepInfo", "make"]

PATHS: tuple[str, ...] = ("auto", "loop", "vmap", "features", "gramian", "representation")
#: ``jacobian="auto"`` takes the Gramian path when ``G`` would hold more bytes than this (Gramian-only methods).
GRAMIAN_ABOVE = 1 << 30
#: Jacobian entries the Gramian path holds at a time (one parameter group x all tasks): 4M (16 MiB in float32).
GRAMIAN_BLOCK = 1 << 22


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
        _check_shared(shared)
        return jacobian_backward(self, names, stacked, values, shared, task_params, features, losses)

    def _weighting_backward(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor]) -> StepInfo:
        """One backward of the weighting's objective (:meth:`objective`)."""
        total, info = self.objective(losses, shared_params)
        total.backward()
        shared = [p for p in shared_params if p.requires_grad]
        if shared[-1].grad is None and all(p.grad is None for p in shared):
            raise unreached("shared parameters")
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
        assert isinstance(method, LossWeighting)  # uses_jacobian is False exactly for loss weightings
        shared = [p for p in shared_params if p.requires_grad]
        fast_names, fast = fast_stack(losses, self.task_names) if world_size() == 1 else (None, None)
        if fast_names is not None and fast is not None:
            key = tuple(fast_names)
            index = self._lw_index.get(key)
            if index is None:
                index = self._lw_index[key] = method.indices(fast_names)
            direct = method.direct(fast, index)
            if direct is not None:
                _check_shared(shared)
                total, weights_of = direct
                detached = fast.detach()
                return total, StepInfo(
                    {"tasks": fast_names, "cosines": None, "jacobian": None, "grad_norms": {}},
                    losses=lambda: dict(zip(fast_names, detached.tolist())),
                    total=lambda: float(total.detach()),
                    weights=lambda: dict(zip(fast_names, weights_of().tolist())),
                )
        names, stacked, values = check_losses(losses, self.task_names)
        combined = method.combine(names, stacked, values, shared)
        _check_shared(shared)
        weights, norms = combined.weights, combined.grad_norms
        return combined.total, StepInfo(
            {"tasks": names, "total": combined.value, "cosines": None, "jacobian": None},
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

def _check_shared(shared: Sequence[Tensor]) -> None:
    if not shared:
        raise ValueError("shared_params is empty or frozen: pass model.shared_parameters() (with requires_grad=True).")


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
