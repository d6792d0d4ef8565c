r"""The baselines: the mean and the sum of the task gradients."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from hydranet.balancing.aggregators.base import TaskRows, WeightedAggregator

__all__ = ["Mean", "Sum"]


class Mean(WeightedAggregator):
    r"""The average gradient, :math:`d = \frac1T \sum_i g_i` (weights :math:`1/T`).

    Scale: the gradient of the *mean* loss. Stateless, deterministic, cost :math:`O(TP)`.
    """

    uses_gram = False

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        return np.full(matrix.shape[0], 1.0 / matrix.shape[0])


class Sum(WeightedAggregator):
    r"""The summed gradient, :math:`d = \sum_i g_i` (weights 1): plain gradient descent on :math:`\sum_i L_i`.

    Scale: the gradient of the *summed* loss. Stateless, deterministic, cost :math:`O(TP)`.
    """

    uses_gram = False

    gramian_only = True  # the weights read G only through K = G G^T

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        return np.ones(matrix.shape[0])
