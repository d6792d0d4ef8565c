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
    "JacobianBlocks",
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
    out = [f.new_empty((k, *f.shape)) for f in feats]  # every row written below: no zero fill
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
            else:
                block[i].zero_()
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


class JacobianBlocks:
    """The parameter Jacobian ``G`` as row chunks x parameter blocks, never concatenated.

    ``rows[c][j]`` is the ``[len(chunks[c]), P_j]`` block of parameter ``j`` for the rows of chunk ``c``,
    exactly as the batched backward returned it (a view, no copy). :meth:`gramian` and :meth:`combine`
    give :math:`K = GG^\top` and :math:`w^\top G` from the blocks, so ``G`` is never assembled: that
    assembly (a zero-filled ``[k, P]`` buffer and a copy of every chunk into it) cost about as much as
    the Gramian itself at 40 tasks.
    """

    def __init__(self, chunks: list[slice], rows: list[list[Tensor]]) -> None:
        self.chunks, self.rows = chunks, rows

    def gramian(self) -> Tensor:
        """``K = G G^T`` (float64 ``[k, k]``): per parameter, the block ``K[a, b] = G_a G_b^T`` of each
        pair of row chunks ``a <= b`` (mirrored), a column block at a time in the blocks' dtype and summed
        in float64 as :func:`gram_accumulate`. Pairs instead of concatenated chunks: no copy of ``G``,
        and the half of ``K`` below the diagonal is not computed."""
        first = self.rows[0][0]
        k = self.chunks[-1].stop
        out = torch.zeros(k, k, dtype=torch.float64, device=first.device)
        if len(self.chunks) == 1:
            for block in self.rows[0]:
                gram_accumulate(out, block)
            return out
        for a, (rows_a, chunk_a) in enumerate(zip(self.rows, self.chunks)):
            step = max(1, _GRAM_BLOCK // (chunk_a.stop - chunk_a.start))
            for rows_b, chunk_b in zip(self.rows[a:], self.chunks[a:]):
                target = out[chunk_a, chunk_b]
                for block_a, block_b in zip(rows_a, rows_b):
                    for start in range(0, block_a.shape[1], step):
                        piece_a, piece_b = block_a[:, start : start + step], block_b[:, start : start + step]
                        target.add_((piece_a @ piece_b.T).to(out.dtype))
                if chunk_b != chunk_a:
                    out[chunk_b, chunk_a] = target.T
        return out

    def combine(self, weights: Tensor) -> Tensor:
        """``w^T G`` (``[P]``) for ``weights [k]``."""
        w = weights.to(self.rows[0][0].device, self.rows[0][0].dtype)
        parts = []
        for j in range(len(self.rows[0])):
            total = w[self.chunks[0]] @ self.rows[0][j]
            for rows, chunk in zip(self.rows[1:], self.chunks[1:]):
                total.add_(w[chunk] @ rows[j])
            parts.append(total)
        return torch.cat(parts)


def trunk_jacobian(
    feats: Sequence[Tensor],
    jf: Sequence[Tensor],
    shared: Sequence[Tensor],
    chunk_size: int | None = None,
    batched: bool = True,
    as_blocks: bool = False,
) -> tuple[Tensor | JacobianBlocks, list[bool]]:
    """The parameter Jacobian ``[k, P]`` from the feature Jacobian ``jf``; ``reached[j]``: parameter j
    gets a gradient. One batched backward per chunk of ``chunk_size`` rows (all rows when ``None``).
    ``as_blocks``: a :class:`JacobianBlocks` of the chunks' per-parameter blocks instead of the
    concatenated matrix (no copy)."""
    k = jf[0].shape[0]
    ref = shared[0]
    # Default from 16 rows on: quarters, so that the batched activation gradients stay a fraction of
    # G (measured: -25% peak memory at 40 tasks).
    chunks = _chunks(k, chunk_size or (-(-k // 4) if k >= 16 else None))
    grads = [_trunk_rows(feats, jf, shared, rows, batched) for rows in chunks]
    reached = [any(g[j] is not None for g in grads) for j in range(len(shared))]
    rows = [
        [g.reshape(g.shape[0], -1) if g is not None else ref.new_zeros(c.stop - c.start, p.numel()) for p, g in zip(shared, chunk)]
        for c, chunk in zip(chunks, grads)
    ]
    if as_blocks:
        return JacobianBlocks(chunks, rows), reached
    if len(chunks) == 1:
        return torch.cat(rows[0], dim=1), reached
    jac = ref.new_empty(k, sum(p.numel() for p in shared))
    for c, chunk in zip(chunks, rows):
        torch.cat(chunk, dim=1, out=jac[c])  # a row slice of jac: contiguous, written in place
    return jac, reached


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
