r"""The gradient-method path of :class:`~hydranet.balancing.Balancer`: task Jacobian (or Gramian), DDP
reduction, aggregation, and the ``.grad`` it writes (the steps 1-6 of :mod:`hydranet.balancing.balancer`).

:func:`jacobian_backward` runs one step as five stages over a :class:`_Pass` that carries what they
share: the heads' first pass (:func:`_head_pass`), the task matrix of the chosen path
(:func:`_task_matrix`), the reduction over ranks (:func:`_reduce`), the direction (:func:`_direction`)
and the shared parameters' gradient (:func:`_write_shared`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from hydranet.balancing._jacobian_features import JacobianBlocks, gram_accumulate
from hydranet.balancing._step_info import StepInfo
from hydranet.balancing._weighting_base import GradientWeighting
from hydranet.balancing.aggregators import Aggregator
from hydranet.balancing.jacobian import gather_task_columns, global_task_means
from hydranet.runtime import world_size

if TYPE_CHECKING:
    from hydranet.balancing.balancer import Balancer

__all__ = ["accumulate", "any_reached", "jacobian_backward", "unreached"]

_TINY = 1e-12


def _norms(gramian: Tensor | None, matrix: Tensor | None) -> Tensor:
    if gramian is not None:
        return gramian.diagonal().clamp(min=0).sqrt().cpu()
    assert matrix is not None  # one of the two is always computed
    return matrix.norm(dim=1).to("cpu", torch.float64)


def _cosines(gramian: Tensor | None, matrix: Tensor | None) -> Tensor:
    if gramian is None:
        assert matrix is not None  # one of the two is always computed
        gramian = matrix.new_zeros(matrix.shape[0], matrix.shape[0], dtype=torch.float64)
        gram_accumulate(gramian, matrix)
    safe = gramian.diagonal().clamp(min=0).sqrt().clamp(min=_TINY)
    return (gramian / (safe.unsqueeze(1) * safe.unsqueeze(0))).cpu()


def unreached(what: str) -> ValueError:
    """The error for losses that do not reach ``what`` (the shared parameters or features)."""
    return ValueError(
        f"No task loss reaches the {what}: the backbone would get no gradient. Pass the parameters the "
        "losses were computed with (model.shared_parameters()), compute the losses from this forward pass "
        "(not under torch.no_grad(), not from detached features), and keep requires_grad=True on them."
    )


def accumulate(params: Sequence[Tensor], flat: Tensor, mask: Sequence[bool]) -> None:
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


def any_reached(reached: Sequence[bool], device: torch.device) -> list[bool]:
    """Per-input reachability OR-ed over ranks (every rank takes the same decisions)."""
    if world_size() == 1:
        return list(reached)
    mask = torch.tensor(reached, dtype=torch.float64, device=device)
    dist.all_reduce(mask)
    return [bool(v) for v in (mask > 0).tolist()]


@dataclass
class _Pass:
    """What the stages of one gradient-method step share."""

    names: list[str]
    index: Tensor  # positions of this rank's tasks among the balancer's
    n_tasks: int
    world: int
    objective: Tensor  # [k] per-task objectives (the losses, or DB-MTL's transformed ones)
    heads: list[tuple[int, list[Tensor]]]
    feats: list[Tensor] | None
    path: str
    shared: list[Tensor]
    jf: list[Tensor] = field(default_factory=list)
    head_params: list[Tensor] = field(default_factory=list)
    head_grads: Sequence[Tensor | None] = ()
    jac: Tensor | None = None
    blocks: JacobianBlocks | None = None
    gramian: Tensor | None = None
    reached: list[bool] = field(default_factory=list)
    matrix: Tensor | None = None
    counts: Tensor = field(default_factory=lambda: torch.zeros(0))
    present: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    own: slice | None = None  # representation under DDP: this rank's columns of the update

    @property
    def first(self) -> bool:
        """Paths that start from the features (one backward per task through its head)."""
        return self.path in ("features", "gramian", "representation")


def jacobian_backward(
    balancer: Balancer,
    names: list[str],
    stacked: Tensor,
    values: Tensor,
    shared: list[Tensor],
    task_params: Mapping[str, Sequence[Tensor]],
    features: Tensor | Sequence[Tensor] | None,
    losses: Mapping[str, Tensor],
) -> StepInfo:
    """One step of a gradient method: accumulate the balanced gradients into ``.grad``; the diagnostics."""
    n_tasks, world = len(balancer.task_names), world_size()
    method = balancer.method
    balancer._dtype = shared[0].dtype
    objective = method.transform(stacked, values, names) if isinstance(method, GradientWeighting) else stacked
    heads = head_groups(balancer, names, task_params, shared, world)
    needs_features = balancer.jacobian in ("representation", "features", "gramian")
    use_features = needs_features or (balancer.jacobian == "auto" and features is not None)
    feats = check_features(features) if use_features else None
    step = _Pass(
        names=names,
        index=torch.tensor([balancer.task_names.index(n) for n in names], dtype=torch.long),
        n_tasks=n_tasks,
        world=world,
        objective=objective,
        heads=heads,
        feats=feats,
        path=balancer._resolve(objective, feats, shared),
        shared=shared,
    )
    _head_pass(balancer, step, losses)
    _task_matrix(balancer, step)
    _reduce(step)
    update, weights = _direction(balancer, step)
    _write_shared(step, update, weights)
    accumulate_heads(step.heads, dict(zip(map(id, step.head_params), step.head_grads)), step.index, step.counts, world)

    path = step.path
    label = path if path in ("features", "gramian", "representation") else balancer._engine.last_method
    if path in ("features", "gramian") and balancer._feature_engine.last_method == "loop":
        label = f"{path}-loop"
    rows = [balancer.task_names[int(t)] for t in step.present]
    gramian, matrix = step.gramian, step.matrix
    return StepInfo(
        {"tasks": rows, "jacobian": label},
        losses=lambda: dict(zip(names, values.tolist())),
        total=lambda: float(values.sum()),
        weights=lambda: dict(zip(rows, weights.tolist())) if weights is not None else {},
        grad_norms=lambda: dict(zip(rows, _norms(gramian, matrix).tolist())),
        cosines=lambda: _cosines(gramian, matrix).tolist(),
    )


def _head_pass(balancer: Balancer, step: _Pass, losses: Mapping[str, Tensor]) -> None:
    """The heads' gradients; on the feature paths also the feature Jacobian ``J_f`` (the same pass)."""
    local = set(step.index.tolist())
    step.head_params = [p for i, params in step.heads if i in local for p in params]
    if not step.first:
        step.head_grads = (
            torch.autograd.grad(step.objective.sum(), step.head_params, retain_graph=True, allow_unused=True)
            if step.head_params
            else ()
        )
        return
    assert step.feats is not None  # the feature paths checked them
    # each task's own loss as the root: its backward runs through its head only, and gives the head's
    # gradient in the same pass
    method = balancer.method
    objective = step.objective
    roots = list(objective.unbind()) if isinstance(method, GradientWeighting) else [losses[n] for n in step.names]
    by_task = dict(step.heads)
    own = [by_task[int(i)] for i in step.index]
    step.jf, touched, step.head_grads = balancer._feature_engine.features(roots, step.feats, own)
    step.head_params = [p for group in own for p in group]
    if not any(any_reached([touched], objective.device)):
        raise ValueError(
            "No task loss depends on the features passed: pass the tensor the heads read, from this "
            "forward pass (model(x, return_features=True))."
        )


def _task_matrix(balancer: Balancer, step: _Pass) -> None:
    """``G`` (``step.jac``), its per-parameter blocks or only ``K`` (``step.gramian``), and what they reach."""
    path, feats, jf, shared = step.path, step.feats, step.jf, step.shared
    if path == "representation":
        step.jac = torch.cat([j.reshape(j.shape[0], -1) for j in jf], dim=1)
        return
    if path == "features":
        assert feats is not None
        # Gramian-only methods alone: keep G as per-parameter blocks (no concatenated copy), K from them
        as_blocks = balancer._gramian_ok and step.world == 1
        jac, step.reached = balancer._feature_engine.jacobian(feats, jf, shared, as_blocks=as_blocks)
        if isinstance(jac, JacobianBlocks):
            step.blocks = jac
            step.gramian = jac.gramian()
        else:
            assert isinstance(jac, Tensor)
            step.jac = jac
    elif path == "gramian":
        assert feats is not None
        index, n_tasks = step.index, step.n_tasks

        def reduce(block: Tensor) -> Tensor:
            return global_task_means(block, index, n_tasks)[0]

        engine = balancer._feature_engine
        step.gramian, step.reached = engine.gramian(
            feats, jf, shared, balancer.gramian_block, reduce if step.world > 1 else None
        )
    else:
        step.jac, step.reached = balancer._engine(step.objective, shared)
    step.reached = any_reached(step.reached, step.objective.device)
    if not any(step.reached):
        raise unreached("shared parameters")


def _reduce(step: _Pass) -> None:
    """Under DDP, the task rows averaged over the ranks that have each task; ``counts`` (ranks per task)
    and ``present`` (the tasks of some rank); the rows kept are those of the present tasks."""
    world, index, n_tasks, jac = step.world, step.index, step.n_tasks, step.jac
    matrix: Tensor | None
    if step.path == "representation" and world > 1:
        assert jac is not None
        matrix, counts, step.own = gather_task_columns(jac, index, n_tasks)
    elif world > 1 and jac is not None:
        matrix, counts = global_task_means(jac, index, n_tasks)
    else:
        matrix = jac
        counts = torch.zeros(n_tasks, dtype=torch.float64)
        counts[index] = 1.0
        if world > 1:  # gramian: the presence of every task on any rank
            counts = counts.to(step.objective.device)
            dist.all_reduce(counts)
    step.counts = counts.cpu()
    step.present = step.counts.nonzero().squeeze(1)
    if world > 1 and matrix is not None:
        matrix = matrix[step.present.to(matrix.device)]
    elif world > 1 and step.gramian is not None:
        keep = step.present.to(step.gramian.device)
        step.gramian = step.gramian[keep][:, keep]
    step.matrix = matrix


def _direction(balancer: Balancer, step: _Pass) -> tuple[Tensor | None, Tensor | None]:
    """``(update d or None on the Gramian path, weights or None)`` of the present rows."""
    matrix = step.matrix
    if step.gramian is None and balancer._gramian_ok and matrix is not None and matrix.shape[0] > 1:
        step.gramian = matrix.new_zeros(matrix.shape[0], matrix.shape[0], dtype=torch.float64)
        gram_accumulate(step.gramian, matrix)  # small float64 blocks: no float64 copy of G
    if step.gramian is not None:
        update, weights = aggregate_gramian(balancer, step.gramian, matrix, step.present)
        if update is None and step.blocks is not None:
            update = step.blocks.combine(weights)
            step.blocks = None
        return update, weights
    assert matrix is not None
    rows = matrix / matrix.norm(dim=1).clamp(min=_TINY).unsqueeze(1) if balancer.normalize else matrix
    return aggregate(balancer, rows, step.present)


def _write_shared(step: _Pass, update: Tensor | None, weights: Tensor | None) -> None:
    """Add the direction to the shared parameters' ``.grad`` (through the trunk on the Gramian and
    representation paths, all-reduced there under DDP)."""
    shared, world = step.shared, step.world
    if step.path == "gramian":
        assert weights is not None and step.feats is not None
        # one backward of sum_t w_t L_t through the trunk: the features' gradient is sum_t w_t J_f[t]
        # (under DDP each task's row is the mean over the c_t ranks that have it: w_t / c_t here)
        scale = weights.to(torch.float64) / step.counts[step.present].clamp(min=1.0) if world > 1 else weights
        local_w = local_weights(scale, step.present, step.index)
        outputs = [torch.tensordot(local_w.to(j.device, j.dtype), j, dims=1) for j in step.jf]
        grads = torch.autograd.grad(step.feats, shared, grad_outputs=outputs, allow_unused=True)
        flat = _flatten(grads, shared)
        if world > 1:
            dist.all_reduce(flat)
        accumulate(shared, flat, step.reached)
        return
    assert update is not None
    if step.path != "representation":
        accumulate(shared, update, step.reached)
        return
    assert step.feats is not None
    piece = update[step.own] if step.own is not None else update
    grad_outputs, start = [], 0
    for feat in step.feats:
        grad_outputs.append(piece[start : start + feat.numel()].view_as(feat).to(feat.dtype))
        start += feat.numel()
    grads = torch.autograd.grad(step.feats, shared, grad_outputs=grad_outputs, allow_unused=True)
    reached = any_reached([g is not None for g in grads], piece.device)
    if not any(reached):
        raise unreached("shared parameters through the features")
    flat = _flatten(grads, shared)
    if world > 1:
        dist.all_reduce(flat)  # each rank holds the part of the gradient from its own samples
    accumulate(shared, flat, reached)


def local_weights(weights: Tensor, present: Tensor, index: Tensor) -> Tensor:
    """The weights of this rank's tasks (positions ``index`` among all tasks) from those of ``present``."""
    full = torch.zeros(int(max(present.max(), index.max())) + 1, dtype=torch.float64)
    full[present] = weights.to(torch.float64).cpu()
    return full[index]


def aggregate_gramian(
    balancer: Balancer, gramian: Tensor, matrix: Tensor | None, present: Tensor
) -> tuple[Tensor | None, Tensor]:
    """``(update or None, weights)`` of a Gramian-only weighting from :math:`K` (float64)."""
    k = gramian.shape[0]
    if k == 1:
        weights = torch.ones(1, dtype=torch.float64)
    else:
        K = gramian
        scale = None
        if balancer.normalize:
            norms = gramian.diagonal().clamp(min=0).sqrt()
            scale = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
            K = gramian * scale.unsqueeze(1) * scale.unsqueeze(0)
        mask = torch.zeros(len(balancer.task_names), dtype=torch.bool)
        mask[present] = True
        dtype = matrix.dtype if matrix is not None else balancer._dtype
        from_gramian: Any = getattr(balancer.method, "weights_from_gramian")  # checked at construction
        weights = torch.as_tensor(from_gramian(K.cpu(), present=mask, dtype=dtype))
        weights = weights.to(torch.float64).cpu()
        if scale is not None:
            weights = weights * scale.cpu()
    update = weights.to(matrix.device, matrix.dtype) @ matrix if matrix is not None else None
    return update, weights


def aggregate(balancer: Balancer, matrix: Tensor, present: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(update, weights or None)`` of the rows ``matrix`` (the tasks at positions ``present``)."""
    method = balancer.method
    if isinstance(method, GradientWeighting):
        return method.aggregate(matrix, present)
    if matrix.shape[0] == 1:
        return matrix[0], torch.ones(1, dtype=torch.float64)
    tasks: dict[str, Tensor] = {}
    if isinstance(method, Aggregator):  # per-task state follows the tasks, not the row positions
        tasks["present"] = torch.zeros(len(balancer.task_names), dtype=torch.bool)
        tasks["present"][present] = True
    weigh = getattr(method, "weights", None)
    if callable(weigh):
        weights = torch.as_tensor(weigh(matrix, **tasks))
        if weights.shape != (matrix.shape[0],):
            raise ValueError(
                f"{balancer.name}.weights(G) returned shape {list(weights.shape)} for {matrix.shape[0]} tasks."
            )
        weights = weights.to(device=matrix.device, dtype=matrix.dtype)
        return weights @ matrix, weights.detach().to("cpu", torch.float64)
    assert callable(method)  # the Balancer checked it
    update = method(matrix, **tasks)
    if not isinstance(update, Tensor) or update.shape != (matrix.shape[1],):
        shape = list(update.shape) if isinstance(update, Tensor) else type(update).__name__
        raise ValueError(
            f"Aggregator {balancer.name!r} returned {shape}; expected a vector of {matrix.shape[1]} entries."
        )
    return update, None


def check_features(features: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    """``features`` as a list of tensors of this forward pass, or an error saying how to pass them."""
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


def head_groups(
    balancer: Balancer, names: list[str], task_params: Mapping[str, Sequence[Tensor]], shared: list[Tensor], world: int
) -> list[tuple[int, list[Tensor]]]:
    """``[(task index, its trainable head parameters)]``, each parameter listed once."""
    if not isinstance(task_params, Mapping):
        raise TypeError(f"task_params must be a dict {{task: parameters}}, got {type(task_params).__name__}.")
    needed = balancer.task_names if world > 1 else names
    missing = [n for n in needed if n not in task_params]
    if missing:
        where = "every task under DDP (all ranks exchange them)" if world > 1 else "each task in losses"
        raise ValueError(
            f"task_params has no entry for task {missing[0]!r}: pass {{task: model.task_parameters(task)}} "
            f"for {where}."
        )
    shared_ids = {id(p) for p in shared}
    seen: set[int] = set()
    groups: list[tuple[int, list[Tensor]]] = []
    for i, name in enumerate(balancer.task_names):
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

def accumulate_heads(
    heads: list[tuple[int, list[Tensor]]],
    grads: Mapping[int, Tensor | None],
    index: Tensor,
    counts: Tensor,
    world: int,
) -> None:
    """Add each head's gradient to its ``.grad``; under DDP all-reduced and divided by the ranks that have the task."""
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
            accumulate(group, flat[start : start + size], [True] * len(group))
        start += size
