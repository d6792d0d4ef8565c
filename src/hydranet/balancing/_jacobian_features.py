r"""Features-first task Jacobian and Gramian: the heads once, then one batched backward through the trunk.

With shared features :math:`f = \phi(\theta)` (the trunk's output, ``[B, D]``) read by the heads, the
task Jacobian of the shared parameters factors by the chain rule:

.. math::  G = J_f\,\frac{\partial f}{\partial\theta},\qquad
           J_f = \begin{bmatrix}\nabla_f L_1 & \cdots & \nabla_f L_k\end{bmatrix}^\top \in \mathbb{R}^{k\times B D}.

:func:`feature_jacobian` computes :math:`J_f` by one backward per task from its own loss, which runs
through that task's head only (every head once); :func:`trunk_jacobian` pushes it through the trunk in one backward
pass batched over its ``k`` rows (``torch.autograd.grad(f, theta, grad_outputs=J_f,
is_grads_batched=True)``), in chunks of ``chunk_size`` rows when memory asks. Compared with batching
from the losses, the ``k`` batched passes no longer run through every head.

:func:`trunk_gramian` computes :math:`K = GG^\top` without holding :math:`G`: the shared parameters are
split into groups of at most ``block`` entries (last layers first), and for each group :math:`g` the
batched backward gives :math:`G_g` (``k x P_g``), folded into :math:`K \mathrel{+}= G_g G_g^\top` (in
float64, column block by column block) and freed. Memory is ``k x P_g`` instead of ``k x P``; the
price is that a group far from the features is reached by a longer backward (autograd runs only the
part of the graph between the features and the requested group).

Both are exact when the shared parameters influence the losses only through ``f``;
:func:`features_cover` checks that on the autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "feature_jacobian",
    "features_cover",
    "gram_accumulate",
    "parameter_groups",
    "trunk_gramian",
    "trunk_jacobian",
]

# Column block of the float64 Gram accumulation: 2**18 entries (2 MiB) across all rows at a time.
_GRAM_BLOCK = 1 << 18


def features_cover(losses: Tensor, feats: Sequence[Tensor], shared: Sequence[Tensor]) -> bool:
    """True when every path of the autograd graph from ``losses`` to a ``shared`` parameter passes
    through one of ``feats`` (then the features-first Jacobian is the parameter Jacobian)."""
    stops = {id(f.grad_fn) for f in feats if f.grad_fn is not None}
    leaves = {id(f) for f in feats if f.grad_fn is None}
    targets = {id(p) for p in shared}
    seen: set[int] = set()
    stack = [losses.grad_fn] if losses.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if id(node) in stops:
            continue
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
        if variable is not None:
            if id(variable) in targets and id(variable) not in leaves:
                return False
            continue
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return True


def feature_jacobian(
    roots: Sequence[Tensor], feats: Sequence[Tensor], own: Sequence[Sequence[Tensor]] | None = None
) -> tuple[list[Tensor], bool, list[Tensor | None]]:
    """``[k, *f.shape]`` per feature tensor (zeros where no loss reaches it), whether any loss reaches
    the features, and the gradients of ``own[t]`` (task ``t``'s head parameters) from the same passes.

    One ``autograd.grad(L_t, feats + own[t])`` per task, from each task's own loss tensor: autograd runs
    only the nodes between ``L_t`` and its inputs, i.e. head ``t`` alone, so every head's backward runs
    once. (Batching from the stacked losses would run each of the ``k`` batched passes through every head.)
    """
    k = len(roots)
    out = [f.new_zeros((k, *f.shape)) for f in feats]
    heads: list[Tensor | None] = []
    reached = False
    n = len(feats)
    for i, root in enumerate(roots):
        params = list(own[i]) if own is not None else []
        grads = torch.autograd.grad(root, [*feats, *params], retain_graph=True, allow_unused=True)
        for block, g in zip(out, grads[:n]):
            if g is not None:
                block[i] = g
                reached = True
        heads.extend(grads[n:])
    return out, reached, heads


def _trunk_rows(
    feats: Sequence[Tensor], jf: Sequence[Tensor], params: Sequence[Tensor], rows: slice, batched: bool
) -> list[Tensor | None]:
    """Gradients of ``params`` for the rows ``rows`` of the feature Jacobian: ``[c, *p.shape]`` or None."""
    if batched:
        return list(
            torch.autograd.grad(
                feats, params, grad_outputs=[j[rows] for j in jf], retain_graph=True, allow_unused=True,
                is_grads_batched=True,
            )
        )
    stacked: list[list[Tensor | None]] = []
    for i in range(rows.start, rows.stop):
        stacked.append(
            list(torch.autograd.grad(feats, params, grad_outputs=[j[i] for j in jf], retain_graph=True, allow_unused=True))
        )
    return [None if col[0] is None else torch.stack(col) for col in zip(*stacked)]


def _chunks(k: int, chunk_size: int | None) -> list[slice]:
    step = k if not chunk_size else max(1, int(chunk_size))
    return [slice(s, min(k, s + step)) for s in range(0, k, step)]


def trunk_jacobian(
    feats: Sequence[Tensor],
    jf: Sequence[Tensor],
    shared: Sequence[Tensor],
    chunk_size: int | None = None,
    batched: bool = True,
    as_blocks: bool = False,
) -> tuple[Tensor | list[Tensor], list[bool]]:
    """The parameter Jacobian ``[k, P]`` from the feature Jacobian ``jf``; ``reached[j]``: parameter j
    gets a gradient. One batched backward per chunk of ``chunk_size`` rows (all rows when ``None``).
    ``as_blocks``: the ``[k, P_j]`` blocks of the parameters instead of their concatenation (no copy)."""
    k = jf[0].shape[0]
    ref = shared[0]
    # Default from 16 rows on: quarters, so that the batched activation gradients stay a fraction of
    # G (measured: -25% peak memory at 40 tasks for a few % of time).
    chunks = _chunks(k, chunk_size or (-(-k // 4) if k >= 16 else None))
    reached = [False] * len(shared)
    if len(chunks) == 1:
        grads = _trunk_rows(feats, jf, shared, chunks[0], batched)
        reached = [g is not None for g in grads]
        blocks = [g.reshape(k, -1) if g is not None else ref.new_zeros(k, p.numel()) for p, g in zip(shared, grads)]
        if as_blocks:
            return blocks, reached
        return torch.cat(blocks, dim=1), reached
    jac = ref.new_zeros(k, sum(p.numel() for p in shared))
    for rows in chunks:
        start = 0
        for j, (p, g) in enumerate(zip(shared, _trunk_rows(feats, jf, shared, rows, batched))):
            if g is not None:
                jac[rows, start : start + p.numel()] = g.reshape(g.shape[0], -1)
                reached[j] = True
            start += p.numel()
    return (list(jac.split([p.numel() for p in shared], dim=1)) if as_blocks else jac), reached


def parameter_groups(shared: Sequence[Tensor], rows: int, block: int) -> list[list[int]]:
    """Indices of ``shared`` in groups of at most ``block // rows`` entries (a larger parameter alone),
    last parameters first: those closest to the features need the shortest backward."""
    limit = max(1, block // max(1, rows))
    groups: list[list[int]] = []
    size = 0
    for j in reversed(range(len(shared))):
        n = shared[j].numel()
        if groups and size + n <= limit:
            groups[-1].append(j)
            size += n
        else:
            groups.append([j])
            size = n
    return groups


def gram_accumulate(out: Tensor, block: Tensor) -> None:
    """``out += block @ block.T``, a column block of ``block [k, n]`` at a time: each block's product in
    ``block``'s dtype (one GEMM, no float64 copy of the Jacobian), the sum of the blocks in ``out``'s
    (float64), so the rounding error is that of a block, not of the whole row length."""
    step = max(1, _GRAM_BLOCK // max(1, block.shape[0]))
    block = block.reshape(block.shape[0], -1)
    for start in range(0, block.shape[1], step):
        piece = block[:, start : start + step]
        out.add_((piece @ piece.T).to(out.dtype))


def trunk_gramian(
    feats: Sequence[Tensor],
    jf: Sequence[Tensor],
    shared: Sequence[Tensor],
    block: int,
    chunk_size: int | None = None,
    batched: bool = True,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, list[bool]]:
    r""":math:`K = GG^\top` (float64 ``[k', k']``) of the parameter Jacobian, never holding all of it.

    Args:
        block: the most Jacobian entries (rows x columns) held at a time, per parameter group.
        reduce: maps each group's ``[k, P_g]`` block to the rows to fold into :math:`K` (under DDP:
            the all-reduced rows of every task, :func:`~hydranet.balancing.jacobian.global_task_means`);
            ``None``: the block itself.
    """
    k = jf[0].shape[0]
    # Default: eighths of the rows, so that the batched activation gradients stay a fraction of J_f.
    chunks = _chunks(k, chunk_size or max(1, -(-k // 8)))
    reached = [False] * len(shared)
    gramian: Tensor | None = None
    for group in parameter_groups(shared, k, block):
        params = [shared[j] for j in group]
        width = sum(p.numel() for p in params)
        rows_block = params[0].new_zeros(k, width)
        for rows in chunks:
            start = 0
            for j, p, g in zip(group, params, _trunk_rows(feats, jf, params, rows, batched)):
                if g is not None:
                    rows_block[rows, start : start + p.numel()] = g.reshape(g.shape[0], -1)
                    reached[j] = True
                start += p.numel()
        folded = reduce(rows_block) if reduce is not None else rows_block
        if gramian is None:
            gramian = torch.zeros(folded.shape[0], folded.shape[0], dtype=torch.float64, device=folded.device)
        gram_accumulate(gramian, folded)
        del rows_block, folded
    assert gramian is not None
    return gramian, reached
