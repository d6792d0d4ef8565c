r"""Directions that treat the tasks equally in one geometric sense: IMTL-G (equal projections),
Aligned-MTL (equal singular values), ConFIG (equal cosines).

All three are weightings of the rows computed from the Gram matrix. Rows that are exactly zero carry
no direction; they get weight 0 and the equalisation runs over the other tasks.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator, precision


class IMTLG(WeightedAggregator):
    r"""Impartial multi-task learning, gradient part (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021).

    The update :math:`d = \sum_i \alpha_i g_i` with :math:`\sum_i\alpha_i = 1` whose projections on all unit
    task gradients :math:`u_i = g_i/\lVert g_i\rVert` are equal: :math:`d\cdot u_1 = \dots = d\cdot u_T`.
    Closed form from the paper, with :math:`D` and :math:`U` stacking the rows :math:`g_1 - g_i` and
    :math:`u_1 - u_i`, :math:`i = 2..T`:

    .. math::  \alpha_{2:T} = g_1 U^\top (D U^\top)^{-1},\qquad \alpha_1 = 1 - \sum_{i\ge 2}\alpha_i

    with every inner product read from the Gram matrix (a least-squares solve when :math:`DU^\top` is
    singular, e.g. for linearly dependent gradients). Scale: an **affine combination** (weights sum to 1;
    a weight can be negative), :math:`d(cG) = c\,d(G)`; identical gradients give that gradient. Stateless.
    Cost: :math:`O(T^2P + T^3)`.
    """

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        out = np.zeros(gramian.shape[0])
        live = np.flatnonzero(np.diag(gramian) > 0)
        if live.size == 0:
            return out
        sub = gramian[np.ix_(live, live)]
        along = sub / np.sqrt(np.diag(sub))[None, :]  # along[a, b] = g_a . u_b
        head = along[0, 0] - along[0, 1:]  # g_1 . (u_1 - u_r)
        system = along[0, 0] - along[0, 1:][None, :] - along[1:, 0][:, None] + along[1:, 1:]  # (g_1 - g_r).(u_1 - u_s)
        rest = np.linalg.lstsq(system.T, head, rcond=None)[0] if live.size > 1 else np.zeros(0)
        out[live] = np.concatenate([[1.0 - rest.sum()], rest])
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

    Args:
        scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    SCALE_MODES = ("min", "median", "rmse")

    def __init__(self, *, scale_mode: str = "min", normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if scale_mode not in self.SCALE_MODES:
            raise ValueError(f"AlignedMTL scale_mode must be one of {', '.join(self.SCALE_MODES)}, got {scale_mode!r}.")
        self.scale_mode = scale_mode

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        size = gramian.shape[0]
        values, vectors = np.linalg.eigh(gramian)
        largest = float(values.max())
        if largest <= 0.0:
            return np.zeros(size)
        keep = values > largest * size * precision(matrix.dtype)
        values, vectors = values[keep], vectors[:, keep]
        sigma = np.sqrt(values)
        target = {"min": sigma.min(), "median": np.median(sigma), "rmse": np.sqrt(values.mean())}[self.scale_mode]
        balance = target * (vectors / sigma[None, :]) @ vectors.T
        return balance.sum(axis=1)


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
    cut at :math:`T\varepsilon` relative). With linearly independent gradients :math:`\cos(d, g_i)` is the
    same for every task and positive, so :math:`Gd > 0`. Scale: the **sum of the projections** (for
    identical gradients :math:`g`, :math:`d = Tg`); :math:`d(cG) = c\,d(G)`. Stateless. Cost:
    :math:`O(T^2P + T^3)`.
    """

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        size = gramian.shape[0]
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        inverse = np.divide(1.0, norms, out=np.zeros(size), where=norms > 0)
        cosines = gramian * inverse[:, None] * inverse[None, :]
        solution = np.linalg.pinv(cosines, rcond=size * precision(matrix.dtype), hermitian=True) @ np.ones(size)
        coef = solution * inverse  # x = sum_i coef_i g_i
        squared = float(coef @ gramian @ coef)
        if squared <= 0.0:
            return np.zeros(size)
        return coef * float(np.ones(size) @ gramian @ coef) / squared
