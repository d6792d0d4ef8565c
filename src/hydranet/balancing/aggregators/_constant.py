r"""Aggregator forms of fixed and random task weights: :class:`Constant` and :class:`Random`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import Randomized, TaskRows, WeightedAggregator

__all__ = ["Constant", "Random"]


class Constant(WeightedAggregator):
    r"""Fixed, user-given task weights: :math:`d = \sum_i c_i g_i` (TorchJD's ``Constant``).

    ``weights`` has one entry per task of the full task list (:math:`T`); ``None`` gives
    :math:`c_i = 1/T` (the mean). With ``present=``, the rows are weighted by the entries of their tasks
    (absent tasks drop their share; nothing is renormalised, so a task's step does not depend on
    which other tasks are in the batch). Scale: whatever the weights say (:math:`d(cG) = c\,d(G)`).
    Stateless. Cost: :math:`O(TP)`.

    Args:
        weights: finite task weights (a sequence or 1-D tensor), or ``None``; kept as ``task_weights``
            (``weights(G)`` is the method of every weighting).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    uses_gram = False
    gramian_only = True  # the weights do not read G at all

    def __init__(self, *, weights: Sequence[float] | Tensor | None = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if weights is not None:
            values = np.asarray(weights.detach().cpu() if isinstance(weights, Tensor) else weights, dtype=np.float64)
            if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
                raise ValueError(
                    f"Constant needs weights as a non-empty 1-D sequence of finite numbers (one per task), got {weights!r}."
                )
        # Not ``self.weights``: that name is the method ``weights(G)`` of every weighting.
        self.task_weights: np.ndarray | None = None if weights is None else values

    def __repr__(self) -> str:
        shown = None if self.task_weights is None else self.task_weights.tolist()
        return f"Constant(weights={shown!r}, normalize={self.normalize!r})"

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        if self.task_weights is None:
            return np.full(matrix.shape[0], 1.0 / tasks.total)
        if self.task_weights.size != tasks.total:
            raise ValueError(
                f"Constant has {self.task_weights.size} weights but the Jacobian describes {tasks.total} tasks: give one "
                "weight per task (in the order of the task list), or pass present= when the rows are some of them."
            )
        return self.task_weights[tasks.index].copy()


class Random(Randomized, WeightedAggregator):
    r"""Random weighting of the gradients (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022, algorithm 2; TorchJD's ``Random``).

    .. math::  d = \sum_i w_i g_i,\qquad w = \mathrm{softmax}(z),\quad z \sim \mathcal N(0, I_k)

    drawn afresh at every call for the :math:`k` rows (the tasks present). The normal draws come from
    the method's generator (Box-Muller on its uniform draws), so a seeded run is reproducible, resumable
    and identical on every DDP rank. Scale: a **convex combination** (weights sum to 1),
    :math:`d(cG) = c\,d(G)` for the same draw. State: the generator. Cost: :math:`O(TP)`.

    Args:
        seed: seed of the generator (``None``: from the operating system).
        generator: a ``torch.Generator`` to draw from instead.
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    uses_gram = False
    gramian_only = True  # the weights do not read G at all

    def __init__(self, *, seed: int | None = 0, generator: torch.Generator | None = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self._init_random(seed, generator)

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        size = matrix.shape[0]
        u = self._random((2, size), torch.device("cpu")).numpy()
        z = np.sqrt(-2.0 * np.log1p(-u[0])) * np.cos(2.0 * math.pi * u[1])  # 1 - u in (0, 1]: log is finite
        shares = np.exp(z - z.max())
        return shares / shares.sum()

    def reset(self) -> None:
        self._reset_random()

    def state_dict(self) -> dict[str, Any]:
        return self._random_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_random_state(state)
