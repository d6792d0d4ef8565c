r"""Per-task gradients: the task Jacobian, computed fast, and its synchronisation under DDP.

For task losses :math:`L_1..L_k` and inputs :math:`\theta` (the shared parameters, or the shared features
for the representation path), the task Jacobian is

.. math::  G = \begin{bmatrix} \nabla_\theta L_1 & \cdots & \nabla_\theta L_k \end{bmatrix}^\top
           \in \mathbb{R}^{k \times P},

one row per task, the inputs flattened and concatenated in order. Two ways to compute it:

* ``"loop"``: one ``torch.autograd.grad(L_i, inputs, retain_graph=True)`` per task, written into a
  pre-allocated ``[k, P]`` matrix: ``k`` backward passes, the activation gradients of one pass at a time;
* ``"vmap"``: one ``torch.autograd.grad(L, inputs, grad_outputs=I_k, is_grads_batched=True)``: a single
  backward pass vectorised over the ``k`` one-hot output gradients, faster when the backward is many
  small kernels, but it holds ``k`` copies of every activation gradient at once, and some operators have
  no batching rule (compiled graphs, some fused norm kernels, custom autograd functions). When it
  fails, :class:`TaskJacobian` falls back to the loop with one warning and keeps using the loop.

Memory is the ``k x P`` result plus one backward pass (loop) or ``k`` batched ones (vmap).

When the shared *features* ``f`` the heads read are known, :class:`FeatureJacobian` computes the same
:math:`G` features-first (:mod:`hydranet.balancing._jacobian_features`): the ``[k, B, D]`` feature
Jacobian by one backward per task through its head only, then one batched backward through the trunk
(chunked by ``chunk_size``), or the Gramian :math:`K = GG^\top` alone, one parameter group at a time.

Under ``torch.distributed`` with a world size above one, :func:`global_task_means` averages per-task
rows over the ranks that have the task, so every rank holds the same matrix; :func:`gather_task_columns`
concatenates per-sample columns (feature gradients) across ranks for the representation path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from hydranet.balancing._jacobian_features import feature_jacobian, features_cover, trunk_gramian, trunk_jacobian
from hydranet.runtime import world_size

__all__ = [
    "JACOBIAN_METHODS",
    "FeatureJacobian",
    "TaskJacobian",
    "features_cover",
    "flat_numel",
    "gather_task_columns",
    "global_task_means",
    "jacobian_loop",
    "jacobian_vmap",
]

JacobianMethod = Literal["loop", "vmap"]
JACOBIAN_METHODS: tuple[str, ...] = ("auto", "loop", "vmap")


def flat_numel(inputs: Sequence[Tensor]) -> int:
    return sum(t.numel() for t in inputs)


def jacobian_loop(losses: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, list[bool]]:
    """Task Jacobian ``[k, P]`` by one backward pass per loss; ``reached[j]``: some loss depends on input j.

    The graph is retained: the caller runs more backward passes on it.
    """
    k = losses.shape[0]
    ref = inputs[0]
    jac = torch.zeros(k, flat_numel(inputs), dtype=ref.dtype, device=ref.device)
    reached = [False] * len(inputs)
    for i in range(k):
        grads = torch.autograd.grad(losses[i], inputs, retain_graph=True, allow_unused=True)
        start = 0
        for j, (t, g) in enumerate(zip(inputs, grads)):
            if g is not None:
                jac[i, start : start + t.numel()] = g.reshape(-1)
                reached[j] = True
            start += t.numel()
    return jac, reached


def jacobian_vmap(losses: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, list[bool]]:
    """Task Jacobian ``[k, P]`` by one backward pass batched over one-hot output gradients."""
    k = losses.shape[0]
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
    grads = torch.autograd.grad(
        losses, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
    )
    reached = [g is not None for g in grads]
    ref = inputs[0]
    blocks = [
        g.reshape(k, -1).to(ref.dtype) if g is not None else ref.new_zeros(k, t.numel())
        for t, g in zip(inputs, grads)
    ]
    return torch.cat(blocks, dim=1), reached


class TaskJacobian:
    """Computes task Jacobians with a fixed or automatic method, remembering a failed ``vmap``.

    Args:
        method: ``"loop"``, ``"vmap"``, or ``"auto"`` (``vmap`` for two tasks or more, ``loop`` for
            one). A ``vmap`` failure (``RuntimeError`` / ``NotImplementedError`` from autograd) warns
            once and switches this instance to the loop for good.
    """

    def __init__(self, method: str = "auto") -> None:
        if method not in JACOBIAN_METHODS:
            raise ValueError(f"Unknown Jacobian method {method!r}; choose one of {', '.join(JACOBIAN_METHODS)}.")
        self.method = method
        self._vmap_failed = False
        #: the method the last call used (``"loop"`` or ``"vmap"``), ``None`` before the first call.
        self.last_method: JacobianMethod | None = None

    def __call__(self, losses: Tensor, inputs: Sequence[Tensor]) -> tuple[Tensor, list[bool]]:
        if losses.dim() != 1 or losses.shape[0] == 0:
            raise ValueError(f"Expected a 1-D tensor of k >= 1 losses, got shape {list(losses.shape)}.")
        if not inputs:
            raise ValueError("No inputs to differentiate with respect to: pass at least one parameter or tensor.")
        use_vmap = not self._vmap_failed and (
            self.method == "vmap" or (self.method == "auto" and losses.shape[0] > 1)
        )
        if use_vmap:
            try:
                result = jacobian_vmap(losses, inputs)
                self.last_method = "vmap"
                return result
            except (RuntimeError, NotImplementedError) as error:
                self._vmap_failed = True
                warnings.warn(
                    "The batched ('vmap') per-task gradient is not supported by this model "
                    f"({str(error).splitlines()[0][:200]}); falling back to one backward pass per task "
                    "('loop') from now on. Pass jacobian='loop' to choose it explicitly and silence this warning.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.last_method = "loop"
        return jacobian_loop(losses, inputs)


def _warn_fallback(error: BaseException) -> None:
    warnings.warn(
        "The batched ('vmap') per-task gradient is not supported by this model "
        f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__}); falling back to one "
        "backward pass per task ('loop') from now on. Pass jacobian='loop' to choose it explicitly and silence "
        "this warning.",
        RuntimeWarning,
        stacklevel=4,
    )


class FeatureJacobian:
    """Features-first task Jacobian or Gramian of the shared parameters, remembering a failed ``vmap``.

    Args:
        chunk_size: rows of the feature Jacobian pushed through the trunk per batched backward
            (``None``: all at once; smaller holds fewer batched activation gradients at a time).
        batched: start with the batched backward; a failure (``RuntimeError`` / ``NotImplementedError``
            from autograd, e.g. an operator without a batching rule) warns once and switches this
            instance to one backward per task for good.
    """

    def __init__(self, chunk_size: int | None = None, batched: bool = True) -> None:
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.batched = batched
        #: ``"vmap"`` or ``"loop"``: how the last call ran, ``None`` before the first call.
        self.last_method: JacobianMethod | None = None

    def _run(self, compute):
        if self.batched:
            try:
                result = compute(True)
                self.last_method = "vmap"
                return result
            except (RuntimeError, NotImplementedError) as error:
                self.batched = False
                _warn_fallback(error)
        self.last_method = "loop"
        return compute(False)

    @staticmethod
    def features(roots: Sequence[Tensor], feats: Sequence[Tensor], own=None):
        """The feature Jacobian ``[k, *f.shape]`` per feature tensor from the per-task losses ``roots``,
        whether any loss reaches the features, and the head gradients (see :func:`feature_jacobian`)."""
        return feature_jacobian(roots, feats, own)

    def jacobian(self, feats: Sequence[Tensor], jf: Sequence[Tensor], shared: Sequence[Tensor], as_blocks: bool = False):
        """The parameter Jacobian ``[k, P]`` (or its per-parameter blocks) from the feature Jacobian ``jf``."""
        return self._run(lambda batched: trunk_jacobian(feats, jf, shared, self.chunk_size, batched, as_blocks))

    def gramian(self, feats, jf, shared, block: int, reduce=None) -> tuple[Tensor, list[bool]]:
        """:math:`GG^\\top` (float64) without holding :math:`G`; see :func:`trunk_gramian`."""
        return self._run(lambda batched: trunk_gramian(feats, jf, shared, block, self.chunk_size, batched, reduce))


def _scatter_rows(rows: Tensor, index: Tensor, n_tasks: int) -> tuple[Tensor, Tensor]:
    full = rows.new_zeros((n_tasks, *rows.shape[1:]))
    full[index] = rows
    counts = torch.zeros(n_tasks, dtype=torch.float64, device=rows.device)
    counts[index] = 1.0
    return full, counts


def global_task_means(rows: Tensor, index: Tensor, n_tasks: int) -> tuple[Tensor, Tensor]:
    r"""Average per-task rows over the ranks that have each task.

    Args:
        rows: ``[k, ...]`` one row per task present on this rank.
        index: ``[k]`` positions of those tasks among all ``n_tasks``.

    Returns:
        ``(means [n_tasks, ...], counts [n_tasks])``: ``means[t] = (1/c_t) sum_r rows_r[t]`` over the
        :math:`c_t` ranks where task ``t`` is present (zero rows where no rank has it), identical on every
        rank. Without ``torch.distributed`` the rows are only scattered and ``counts`` is the 0/1
        presence mask.
    """
    full, counts = _scatter_rows(rows, index.to(rows.device), n_tasks)
    if world_size() > 1:
        dist.all_reduce(full)
        dist.all_reduce(counts)
        shape = (n_tasks,) + (1,) * (full.dim() - 1)
        full /= counts.clamp(min=1.0).to(full.dtype).reshape(shape)
    return full, counts


def gather_task_columns(rows: Tensor, index: Tensor, n_tasks: int) -> tuple[Tensor, Tensor, slice]:
    r"""Concatenate per-sample columns of per-task rows across ranks (representation path under DDP).

    Each rank holds ``rows [k, N_r]``: the gradients of its mean task losses with respect to its own
    features. The loss of task ``t`` on the concatenated batch is the mean of the per-rank means over
    the :math:`c_t` ranks that have the task, so its gradient with respect to rank ``r``'s features is
    ``rows_r[t] / c_t``: the global matrix is ``[rows_0 | rows_1 | ...] / c`` (zeros where a rank lacks
    a task).

    Returns:
        ``(G [n_tasks, sum_r N_r], counts [n_tasks], own)`` where ``own`` is this rank's column slice.
    """
    full, counts = _scatter_rows(rows, index.to(rows.device), n_tasks)
    world = world_size()
    if world == 1:
        return full, counts, slice(0, full.shape[1])
    dist.all_reduce(counts)
    sizes = torch.zeros(world, dtype=torch.int64, device=rows.device)
    sizes[dist.get_rank()] = full.shape[1]
    dist.all_reduce(sizes)
    sizes_list = sizes.tolist()
    width = max(sizes_list)
    padded = torch.nn.functional.pad(full, (0, width - full.shape[1]))
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    matrix = torch.cat([part[:, :n] for part, n in zip(parts, sizes_list)], dim=1)
    matrix /= counts.clamp(min=1.0).to(matrix.dtype).unsqueeze(1)
    start = sum(sizes_list[: dist.get_rank()])
    return matrix, counts, slice(start, start + full.shape[1])
