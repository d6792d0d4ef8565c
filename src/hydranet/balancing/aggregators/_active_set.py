r"""Many small non-negative least-squares problems on one shared factor, solved together (numpy).

:func:`batched_nnls` solves, for every row :math:`c_k` of ``starts``,

.. math::  s_k = \arg\min_{s \ge 0} \lVert A s + c_k\rVert^2

through its linear complementarity conditions on the normal equations (:math:`K = A^\top A`,
:math:`q_k = A^\top c_k`): :math:`s \ge 0`, :math:`\lambda = K s + q \ge 0`, :math:`s_j\lambda_j = 0`.
The method is the primal-dual active-set method of Hintermüller, Ito & Kunisch ("The primal-dual
active set strategy as a semismooth Newton method", SIAM J. Optim. 13, 2002): guess the free set
:math:`F = \{j : s_j > 0\}`, solve :math:`K_{FF} s_F = -q_F` with :math:`s_I = 0`, and move every
index that violates its sign condition (:math:`s_j < 0` on :math:`F`, :math:`\lambda_j < 0` off it) to the
other set, until no index moves. Each iteration is one Newton step of the semismooth system
:math:`\min(s, \lambda) = 0`; on the Gram matrices of task gradients it ends in two to four
iterations, all problems at once (one batched LAPACK call per iteration, on the free sets packed to
the largest of them). The point it ends on is the exact solution of its final linear system.

The method carries no global convergence guarantee for a general positive semi-definite :math:`K`
(it can cycle): problems whose sets still move after ``max_iter`` iterations are reported as not
converged, and the caller decides (the dual-cone solver checks the KKT conditions of every answer and
solves the failures by bounded-variable least squares).
"""

from __future__ import annotations

import numpy as np

__all__ = ["batched_nnls"]


def batched_nnls(factor: np.ndarray, starts: np.ndarray, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    r"""``(s [m, n], converged [m])``: :math:`\arg\min_{s\ge 0}\lVert As + c_k\rVert^2` for each row
    :math:`c_k` of ``starts`` ``[m, r]``, with ``factor`` :math:`A` ``[r, n]``.

    The sign tests are exact (:math:`s_j < 0` on :math:`F`, :math:`\lambda_j < 0` off it): the answer is the
    solution of the problem as given, down to constraints that conflict by one part in :math:`10^{16}`.
    Block principal pivoting's backup rule (Júdice & Pires 1994; Kim & Park, SIAM J. Sci. Comput. 33,
    2011) keeps it finite on positive definite :math:`K`: when the number of violated conditions has not
    fallen for three iterations, only the violated index of largest number moves (Murty's rule) until it
    falls. Returned entries are clipped at 0. Where :math:`K_{FF}` is singular (dependent columns of
    :math:`A`), the free part is the minimum-norm least-squares solution of :math:`A_F s_F \approx -c_k`.
    """
    gram = factor.T @ factor
    q = starts @ factor  # A^T c_k, one row per problem
    rows, size = q.shape
    free = q < 0.0  # from s = 0: the violated constraints
    s = np.zeros_like(q)
    converged = np.zeros(rows, dtype=bool)
    best = np.full(rows, size + 1)  # the fewest violations seen, and the full-block steps left before Murty's rule
    chances = np.full(rows, 3)
    todo = np.arange(rows)
    for _ in range(max_iter):
        part = free[todo]
        values = _solve_free(factor, gram, starts[todo], q[todo], part)
        multipliers = values @ gram + q[todo]
        moved = np.where(part, values < 0.0, multipliers < 0.0)
        s[todo] = values
        count = moved.sum(axis=1)
        settled = count == 0
        converged[todo[settled]] = True
        better = count < best[todo]
        best[todo] = np.where(better, count, best[todo])
        chances[todo] = np.where(better, 3, chances[todo] - 1)
        single = ~better & (chances[todo] < 0)
        if single.any():  # Murty's rule: the violated index of largest number alone
            last = size - 1 - np.argmax(moved[single, ::-1], axis=1)
            moved[single] = np.arange(size) == last[:, None]
        free[todo] = part ^ moved
        todo = todo[~settled]
        if todo.size == 0:
            break
    return np.clip(s, 0.0, None), converged


def _solve_free(factor: np.ndarray, gram: np.ndarray, starts: np.ndarray, q: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Solutions ``[m, n]`` of :math:`K_{FF}s_F = -q_F`, :math:`s_I = 0` for each row's free set ``free``.

    The free indices are packed to the front (a stable sort) and the systems padded with identity rows
    to the largest free set, so that one batched solve serves all rows and costs :math:`|F|^3`, not :math:`n^3`.
    """
    counts = free.sum(axis=1)
    width = int(counts.max(initial=0))
    out = np.zeros(free.shape)
    if width == 0:
        return out
    order = np.argsort(~free, axis=1, kind="stable")[:, :width]  # free indices first, ascending
    valid = np.arange(width) < counts[:, None]
    both = valid[:, :, None] & valid[:, None, :]
    systems = np.where(both, gram[order[:, :, None], order[:, None, :]], np.eye(width))
    rhs = np.where(valid, -np.take_along_axis(q, order, axis=1), 0.0)
    try:
        packed = np.linalg.solve(systems, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # an exactly singular K_FF: dependent columns, least squares on A itself
        packed = np.zeros(rhs.shape)
        for k in range(free.shape[0]):
            columns = order[k, : counts[k]]
            packed[k, : counts[k]] = np.linalg.lstsq(factor[:, columns], -starts[k], rcond=None)[0]
    np.put_along_axis(out, order, np.where(valid, packed, 0.0), axis=1)
    return out
