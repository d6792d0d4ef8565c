r"""Byzantine-robust aggregators: rows that look like outliers are left out. :class:`Krum`, :class:`TrimmedMean`.

They come from distributed learning with adversarial workers (TorchJD carries them for the same
reason): read a row as one worker's (or one task's) gradient, at most ``f`` of which may be arbitrary.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import Aggregator, TaskRows, WeightedAggregator

__all__ = ["Krum", "TrimmedMean"]


def _whole(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


class Krum(WeightedAggregator):
    r"""(Multi-)Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017).

    With :math:`f` = ``n_byzantine`` and :math:`T` rows, the score of row :math:`i` is the sum of its
    distances to its :math:`T - f - 2` nearest other rows,

    .. math::  s(i) = \sum_{j \in N_i} \lVert g_i - g_j\rVert^2,\qquad
               \lVert g_i - g_j\rVert^2 = K_{ii} + K_{jj} - 2K_{ij},

    and the update is the mean of the ``n_selected`` = :math:`m` rows of lowest score
    (:math:`m = 1`: Krum, the paper's rule; :math:`m > 1`: Multi-Krum). The paper scores with *squared*
    distances (``squared=True``, the default); TorchJD 0.18 sums plain distances (``squared=False``
    reproduces it). Equal scores are broken by row order (lowest first). Needs :math:`T \ge f + 3`
    (and :math:`T \ge m`): with fewer rows no row has a neighbour set that outvotes :math:`f` outliers,
    and the call raises. Scale: the **mean** of the selected rows, :math:`d(cG) = c\,d(G)`. Stateless
    (``present=`` is not needed). Cost: :math:`O(T^2P + T^2\log T)`.

    Args:
        n_byzantine: :math:`f \ge 0`, the number of rows that may be arbitrary.
        n_selected: :math:`m \ge 1`, how many rows to average.
        squared: score with squared distances (the paper) or distances (TorchJD).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    gramian_only = True  # distances come from K

    def __init__(self, *, n_byzantine: int = 0, n_selected: int = 1, squared: bool = True, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self.n_byzantine = _whole(n_byzantine, "Krum n_byzantine", 0)
        self.n_selected = _whole(n_selected, "Krum n_selected", 1)
        if not isinstance(squared, bool):
            raise TypeError(f"Krum squared must be True or False, got {squared!r}.")
        self.squared = squared

    @property
    def min_rows(self) -> int:
        r"""The fewest gradients a call accepts: :math:`\max(f + 3, m)`."""
        return max(self.n_byzantine + 3, self.n_selected)

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        if size < self.min_rows:
            raise ValueError(
                f"Krum(n_byzantine={self.n_byzantine}, n_selected={self.n_selected}) needs at least "
                f"{self.min_rows} gradients but got {size}: each score sums the distances "
                "to T - f - 2 >= 1 neighbours. Lower n_byzantine / n_selected, or use 'trimmed_mean' or 'mean' "
                "for so few tasks."
            )
        diag = np.diag(gramian)
        distances = np.clip(diag[:, None] + diag[None, :] - 2.0 * gramian, 0.0, None)
        if not self.squared:
            distances = np.sqrt(distances)
        np.fill_diagonal(distances, np.inf)  # a row is not its own neighbour
        nearest = np.sort(distances, axis=1)[:, : size - self.n_byzantine - 2]
        scores = nearest.sum(axis=1)
        chosen = np.argsort(scores, kind="stable")[: self.n_selected]
        weights = np.zeros(size)
        weights[chosen] = 1.0 / self.n_selected
        return weights


class TrimmedMean(Aggregator):
    r"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018).

    For every coordinate :math:`p`, the :math:`t` = ``trim`` largest and :math:`t` smallest of
    :math:`G_{1p},\dots,G_{Tp}` are dropped and the other :math:`T - 2t` averaged:

    .. math::  d_p = \frac{1}{T - 2t}\sum_{r = t+1}^{T-t} G_{(r)p}\qquad (G_{(r)p}\ \text{the sorted column}).

    Not a weighting of the rows (each coordinate keeps other rows), so there is no ``weights()`` and no
    Gramian-only path. ``trim = 0`` is the mean. Needs :math:`T \ge 2t + 1` rows, else it raises.
    Scale: a **mean** per coordinate, :math:`d(cG) = c\,d(G)` for :math:`c > 0`; invariant to the row
    order. Stateless. Cost: :math:`O(TP\log T)` (a sort of every column).

    Args:
        trim: :math:`t \ge 0`, values dropped at each end of every column.
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    def __init__(self, *, trim: int = 0, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self.trim = _whole(trim, "TrimmedMean trim", 0)

    @property
    def min_rows(self) -> int:
        """The fewest gradients a call accepts: :math:`2t + 1`."""
        return 2 * self.trim + 1

    def _aggregate(self, matrix: Tensor, tasks: TaskRows) -> Tensor:
        size = matrix.shape[0]
        if size < self.min_rows:
            raise ValueError(
                f"TrimmedMean(trim={self.trim}) drops {2 * self.trim} values per coordinate and needs at least "
                f"{2 * self.trim + 1} gradients, got {size}. Lower trim, or use 'mean' for so few tasks."
            )
        ordered = torch.sort(matrix, dim=0).values
        return ordered[self.trim : size - self.trim].mean(dim=0)
