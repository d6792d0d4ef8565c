r"""Directions that treat the tasks equally in one geometric sense: IMTL-G (equal projections),
Aligned-MTL (equal singular values), ConFIG (equal cosines).

All three are weightings of the rows computed from the Gram matrix. Rows that are exactly zero carry
no direction; they get weight 0 and the equalisation runs over the other tasks.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from hydranet.balancing.aggregators._preference import Preference, check_preference, preference_rows
from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator, _precision
from hydranet.balancing.aggregators.solvers import row_space

__all__ = ["IMTLG", "AlignedMTL", "ConFIG"]


class IMTLG(WeightedAggregator):
    r"""Impartial multi-task learning, gradient part (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021).

    The update :math:`d = \sum_i \alpha_i g_i` with :math:`\sum_i\alpha_i = 1` whose projections on all unit
    task gradients :math:`u_i = g_i/\lVert g_i\rVert` are equal: :math:`d\cdot u_1 = \dots = d\cdot u_T`.
    Closed form from the paper, with :math:`D` and :math:`U` stacking the rows :math:`g_1 - g_i` and
    :math:`u_1 - u_i`, :math:`i = 2..T`: :math:`\alpha_{2:T} = g_1 U^\top (D U^\top)^{-1}`,
    :math:`\alpha_1 = 1 - \sum_{i\ge 2}\alpha_i`. With linearly independent gradients this is

    .. math::  \alpha = \frac{D^{-1} C^{-1}\mathbf 1}{\mathbf 1^\top D^{-1} C^{-1}\mathbf 1},\qquad
               D = \mathrm{diag}(\lVert g_i\rVert),\quad C = D^{-1} K D^{-1} \text{ (the cosines)}

    (:math:`d = G^\top D^{-1}C^{-1}\mathbf 1 = U^\top C^{-1}\mathbf 1` has :math:`u_i\cdot d = 1` for all :math:`i`,
    and the division makes the weights sum to 1), which is how it is computed: the cosine matrix is
    far better conditioned than :math:`K` when the gradients' norms differ.

    Linearly dependent gradients (:math:`K` singular): the paper's system is then singular. When a
    null vector :math:`v` of :math:`G^\top` has :math:`\mathbf 1^\top v \ne 0`, :math:`\alpha = v / \mathbf 1^\top v`
    satisfies every equation with :math:`d = 0`, and a least-squares solve of the paper's system
    returns such a near-zero, row-order-dependent answer. The generalisation used here replaces
    :math:`C^{-1}` by the pseudo-inverse :math:`C^{+}` (eigenvalues below :math:`T\varepsilon\lambda_{\max}`
    dropped, :math:`\varepsilon` the precision of :math:`G`'s dtype): the direction :math:`U^\top C^{+}\mathbf 1`
    is the minimum-norm least-squares solution of :math:`u_i\cdot d = 1` (exactly equal projections
    whenever they are attainable, e.g. duplicated gradients; ConFIG's direction), :math:`\alpha` its
    weights :math:`D^{-1}C^{+}\mathbf 1` normalised to sum 1. It is permutation-equivariant and equals the
    paper's on independent rows. If :math:`\mathbf 1^\top D^{-1}C^{+}\mathbf 1` vanishes (e.g. two opposite
    gradients, where :math:`\mathbf 1` is a null vector of :math:`C`), no such affine combination exists
    and :math:`d = 0`. Zero rows get weight 0. Scale: an **affine combination** (weights sum to 1; a
    weight can be negative), :math:`d(cG) = c\,d(G)`; identical gradients give that gradient.
    Stateless. Cost: :math:`O(T^2P + T^3)`.
    """

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        out = np.zeros(gramian.shape[0])
        live = np.flatnonzero(np.diag(gramian) > 0)
        if live.size == 0:
            return out
        sub = gramian[np.ix_(live, live)]
        norms = np.sqrt(np.diag(sub))
        cosines = sub / norms[:, None] / norms[None, :]
        vectors, roots = row_space(cosines, _precision(matrix.dtype))
        along = vectors.sum(axis=0)  # V^T 1: 1 orthogonal to the kept eigenvectors means C^+ 1 = 0
        if float(np.linalg.norm(along)) <= np.sqrt(live.size) * max(live.size, 16) * _precision(matrix.dtype):
            return out
        direction = (vectors @ (along / roots**2)) / (norms / norms.max())  # D^{-1} C^+ 1, up to a factor
        total = float(direction.sum())
        if abs(total) <= 1e-9 * float(np.abs(direction).sum()):
            return out
        out[live] = direction / total
        return out


class AlignedMTL(WeightedAggregator):
    r"""Aligned-MTL: independent component alignment (Senushkin, Patakin, Kuznetsov & Konushin, CVPR 2023).

    With the eigendecomposition :math:`K = GG^\top = V\Lambda V^\top` (eigenvalues below
    :math:`\lambda_{\max}\, T\,\varepsilon` dropped, :math:`\varepsilon` the precision of :math:`G`'s dtype, as
    in the authors' code) and :math:`\sigma = \sqrt\lambda`, the aligned Jacobian

    .. math::  \hat G = B G,\qquad B = \sigma_\star\, V \Sigma^{-1} V^\top

    has all its singular values equal to :math:`\sigma_\star` (condition number 1: the principal components
    are aligned, Procrustes solution :math:`\hat G = \sigma_\star U W^\top` of :math:`G = U\Sigma W^\top`).
    :math:`\sigma_\star` is the smallest retained singular value (``scale_mode="min"``, the paper), their
    median (``"median"``) or :math:`\sqrt{\mathrm{mean}\,\lambda}` (``"rmse"``). The update uses equal task
    weights 1:

    .. math::  d = \mathbf 1^\top \hat G = (B\mathbf 1)^\top G.

    Scale: the **sum** of the aligned rows (the authors' code; TorchJD's ``AlignedMTL`` takes the mean,
    :math:`1/T` of this); :math:`d(cG) = c\,d(G)`; identical gradients :math:`g` give :math:`Tg`. Stateless.
    Cost: :math:`O(T^2P + T^3)`.

    With a preference vector :math:`p` (TorchJD's ``pref_vector``) the aligned rows are combined with
    :math:`p` instead of :math:`\mathbf 1`: :math:`d = p^\top\hat G = (Bp)^\top G`, TorchJD's update for the
    same :math:`p` (its default :math:`p = \mathbf 1/T` is the mean).

    Args:
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
        pref_vector: one finite weight per task of the task list, or ``None`` (1 each).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    SCALE_MODES = ("min", "median", "rmse")

    def __init__(self, *, scale_mode: str = "min", pref_vector: Preference = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if scale_mode not in self.SCALE_MODES:
            raise ValueError(f"AlignedMTL scale_mode must be one of {', '.join(self.SCALE_MODES)}, got {scale_mode!r}.")
        self.scale_mode = scale_mode
        self.pref_vector = check_preference(pref_vector, "AlignedMTL")

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        values, vectors = np.linalg.eigh(gramian)
        largest = float(values.max())
        if largest <= 0.0:
            return np.zeros(size)
        keep = values > largest * size * _precision(matrix.dtype)
        values, vectors = values[keep], vectors[:, keep]
        sigma = np.sqrt(values)
        target = {"min": sigma.min(), "median": np.median(sigma), "rmse": np.sqrt(values.mean())}[self.scale_mode]
        balance = target * (vectors / sigma[None, :]) @ vectors.T
        return balance @ preference_rows(self.pref_vector, tasks, 1.0, "AlignedMTL")


class ConFIG(WeightedAggregator):
    r"""Conflict-free inverse gradients (Liu, Chu, Thuerey, ICLR 2025, "ConFIG: Towards Conflict-free
    Training of Physics Informed Neural Networks").

    With the unit gradients :math:`u_i = g_i/\lVert g_i\rVert` stacked in :math:`\hat G`, the direction
    with equal cosine to every task is the minimum-norm solution of :math:`\hat G x = \mathbf 1`,
    :math:`x = \hat G^{+}\mathbf 1`; the update keeps its direction and takes as length the sum of the
    projections of the task gradients on it:

    .. math::  \hat x = \frac{\hat G^{+}\mathbf 1}{\lVert \hat G^{+}\mathbf 1\rVert},\qquad
               d = \Big(\sum_i g_i\cdot\hat x\Big)\,\hat x.

    Computed from the Gram matrix as :math:`x = \hat G^\top (\hat G\hat G^\top)^{+}\mathbf 1` (pseudo-inverse
    cut at :math:`\max(T, 16)\,\varepsilon` relative). With linearly independent gradients :math:`\cos(d, g_i)` is the
    same for every task and positive, so :math:`Gd > 0`. Scale: the **sum of the projections** (for
    identical gradients :math:`g`, :math:`d = Tg`); :math:`d(cG) = c\,d(G)`. Stateless. Cost:
    :math:`O(T^2P + T^3)`.

    With a preference vector :math:`p` (TorchJD's ``pref_vector``) the direction solves
    :math:`\hat G x = p` (cosines proportional to :math:`p`), :math:`x = \hat G^{+}p`; the length is still
    :math:`\sum_i g_i\cdot\hat x` (as TorchJD). The default is :math:`p = \mathbf 1`.

    Args:
        pref_vector: one finite weight per task of the task list, or ``None`` (1 each).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    gramian_only = True  # the weights read G only through K = G G^T

    def __init__(self, *, pref_vector: Preference = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self.pref_vector = check_preference(pref_vector, "ConFIG")

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        pref = preference_rows(self.pref_vector, tasks, 1.0, "ConFIG")
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        inverse = np.divide(1.0, norms, out=np.zeros(size), where=norms > 0)
        cosines = gramian * inverse[:, None] * inverse[None, :]
        vectors, roots = row_space(cosines, _precision(matrix.dtype))
        along = vectors.T @ pref  # V^T p: p orthogonal to the row space (e.g. opposite gradients, p = 1) means x = 0
        if float(np.linalg.norm(along)) <= float(np.linalg.norm(pref)) * max(size, 16) * _precision(matrix.dtype):
            return np.zeros(size)
        solution = vectors @ (along / roots**2)  # (G^ G^^T)^+ p
        coef = solution * inverse  # x = sum_i coef_i g_i
        squared = float(coef @ gramian @ coef)
        if squared <= 0.0:
            return np.zeros(size)
        return coef * float(np.ones(size) @ gramian @ coef) / squared
