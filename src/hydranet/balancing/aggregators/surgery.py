r"""Gradient surgery: edit each task gradient against the others, then sum (PCGrad, GradVac, GradDrop).

PCGrad and GradVac only ever add multiples of the original rows to a row, so the edited gradients
:math:`g_i' = \sum_j C_{ij} g_j` are tracked by their coefficients :math:`C` (:math:`T\times T`) and every
inner product comes from the Gram matrix: the work is :math:`O(T^2P)` for :math:`K` plus
:math:`O(T^3)`, with no per-pair pass over the parameters. GradDrop acts coordinate by coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import Aggregator, Randomized, TaskRows, WeightedAggregator, _restored, _saved

__all__ = ["GradDrop", "GradVac", "PCGrad"]


def _other_tasks_in_random_order(method: Randomized, size: int) -> np.ndarray:
    """``[T, T-1]``: row ``i`` is a uniformly random order of the tasks other than ``i``."""
    draws = method._random((size, size), torch.device("cpu"))
    order = torch.argsort(draws, dim=1)
    return order[order != torch.arange(size).unsqueeze(1)].view(size, size - 1).numpy()


class PCGrad(Randomized, WeightedAggregator):
    r"""Projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020).

    For every task :math:`i`, starting from :math:`g_i' = g_i`, visit the other tasks :math:`j` in a
    random order and, when :math:`g_i' \cdot g_j < 0`, project onto the normal plane of the original
    :math:`g_j`:

    .. math::  g_i' \leftarrow g_i' - \frac{g_i' \cdot g_j}{\lVert g_j\rVert^2}\, g_j,
               \qquad d = \sum_i g_i'.

    Scale: the **sum** of the projected gradients (as in the paper); without conflicts :math:`d = \sum_i g_i`.
    Randomness: the visiting orders, drawn from a generator seeded by ``seed`` (or ``generator``).
    Invariant to a positive rescaling of :math:`G` (:math:`d(cG) = c\,d(G)`); with two tasks the order
    does not matter. Cost: :math:`O(T^2P + T^3)`.

    Args:
        seed: seed of the generator of the visiting orders (``None``: from the operating system).
        generator: a ``torch.Generator`` to draw from instead (``seed`` is then ignored; ``reset()``
            rewinds it to its state at construction).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    def __init__(self, *, seed: int | None = 0, generator: torch.Generator | None = None, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        self._init_random(seed, generator)

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        coef = np.eye(size)
        if size == 1:
            return coef.sum(axis=0)
        order = _other_tasks_in_random_order(self, size)
        rows = np.arange(size)
        squared = np.diag(gramian)
        for step in range(size - 1):  # every task edits its own copy against its step-th partner at once
            other = order[:, step]
            dots = np.einsum("ik,ki->i", coef, gramian[:, other])
            hit = dots < 0  # implies |g_j| > 0
            coef[rows[hit], other[hit]] -= dots[hit] / squared[other[hit]]
        return coef.sum(axis=0)

    def reset(self) -> None:
        self._reset_random()

    def state_dict(self) -> dict[str, Any]:
        return self._random_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_random_state(state)


class GradVac(Randomized, WeightedAggregator):
    r"""Gradient vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

    Like PCGrad, but every pair :math:`(i, j)` has a target cosine :math:`\hat\phi_{ij}`, an exponential
    moving average of the observed cosines. For every task :math:`i` and the other tasks :math:`j` in a
    random order, with :math:`\phi_{ij} = \cos(g_i', g_j)` (:math:`g_i'` as edited so far):

    .. math::  \text{if } \phi_{ij} < \hat\phi_{ij}:\quad
               g_i' \leftarrow g_i' + \frac{\lVert g_i'\rVert\,\big(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2}
               - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2}\big)}{\lVert g_j\rVert\sqrt{1-\hat\phi_{ij}^2}}\, g_j
               \qquad\text{(then } \cos(g_i', g_j) = \hat\phi_{ij}\text{)}

    and then :math:`\hat\phi_{ij} \leftarrow (1-\beta)\hat\phi_{ij} + \beta\phi_{ij}` (every visited pair,
    with the cosine observed before the edit; pairs involving a zero gradient are skipped). The update is
    :math:`d = \sum_i g_i'`.

    Scale: the **sum** of the edited gradients. State: the :math:`T\times T` targets, starting at 0 (so the
    first step is PCGrad), plus the generator of the visiting orders. ``beta`` defaults to the paper's
    :math:`10^{-2}`. The paper also applies the rule per layer or per parameter block; here it acts on
    whole Jacobian rows (the whole-model variant). Cost: :math:`O(T^2P + T^3)`.

    Some tasks present (``present=``, the set :math:`S` of :math:`k \ge 2` tasks): the step above on the
    :math:`k` rows, with the :math:`k\times k` targets :math:`(\hat\phi_{ij})_{i,j\in S}` and one draw of
    :math:`k` visiting orders, i.e. the method on the sub-problem of the present tasks. Only the targets
    of pairs of present tasks move; a pair with an absent task keeps its target. With one task,
    :math:`d = g` and nothing changes (no draw either).

    Args:
        beta: EMA rate of the target cosines, in (0, 1].
        seed, generator, normalize: as for :class:`PCGrad`.
    """

    def __init__(
        self,
        *,
        beta: float = 0.01,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__(normalize=normalize)
        if not 0.0 < beta <= 1.0:
            raise ValueError(
                f"GradVac needs 0 < beta <= 1 (the EMA rate of the target cosines), got beta={beta!r}; "
                "the paper uses 0.01."
            )
        self.beta = float(beta)
        self._init_random(seed, generator)
        self.targets: np.ndarray | None = None

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        size = gramian.shape[0]
        self._check_tasks(tasks, None if self.targets is None else self.targets.shape[0])
        if self.targets is None:
            self.targets = np.zeros((tasks.total, tasks.total))
        coef = np.eye(size)
        if size == 1:
            return coef.sum(axis=0)
        pairs = np.ix_(tasks.index, tasks.index)
        targets = self.targets[pairs]
        order = _other_tasks_in_random_order(self, size)
        rows = np.arange(size)
        norms = np.sqrt(np.clip(np.diag(gramian), 0.0, None))
        for step in range(size - 1):
            other = order[:, step]
            dots = np.einsum("ik,ki->i", coef, gramian[:, other])
            own = np.sqrt(np.clip(np.einsum("ik,kl,il->i", coef, gramian, coef), 0.0, None))
            seen = (own > 0) & (norms[other] > 0)
            cosine = np.zeros(size)
            cosine[seen] = np.clip(dots[seen] / (own[seen] * norms[other][seen]), -1.0, 1.0)
            target = targets[rows, other]
            hit = seen & (cosine < target)
            room = np.sqrt(np.clip(1.0 - target**2, 1e-12, None))
            factor = own * (target * np.sqrt(1.0 - cosine**2) - cosine * room) / (np.where(hit, norms[other], 1.0) * room)
            coef[rows[hit], other[hit]] += factor[hit]
            targets[rows[seen], other[seen]] = (1.0 - self.beta) * target[seen] + self.beta * cosine[seen]
        self.targets[pairs] = targets
        return coef.sum(axis=0)

    def reset(self) -> None:
        self.targets = None
        self._reset_random()

    def state_dict(self) -> dict[str, Any]:
        return {"targets": _saved(self.targets), **self._random_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.targets = _restored(state["targets"])
        self._load_random_state(state)


class GradDrop(Randomized, Aggregator):
    r"""Gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, NeurIPS 2020).

    Per coordinate :math:`p`, the sign purity :math:`\mathcal P_p = \tfrac12\big(1 + \sum_i G_{ip} /
    \sum_i |G_{ip}|\big)` and one uniform draw :math:`U_p \sim \mathcal U[0, 1)` (shared by the tasks)
    decide which sign survives:

    .. math::  M_{ip} = \mathbb 1[\mathcal P_p > U_p]\,\mathbb 1[G_{ip} > 0]
                       + \mathbb 1[\mathcal P_p < U_p]\,\mathbb 1[G_{ip} < 0],\qquad
               d_p = \sum_i \big(\ell + (1-\ell) M_{ip}\big) G_{ip}

    with leak :math:`\ell` (``leak=0``: the plain method). Coordinates where every task's gradient is 0
    stay 0. Scale: the **sum** of the kept gradient entries (with no sign conflict in a coordinate it is
    the sum of the gradients there). Not a weighting of the rows (the mask is per coordinate).
    Randomness: one uniform number per coordinate per call, from a generator on :math:`G`'s device.
    The paper applies it to the gradients at a layer's activations; here it acts on whatever Jacobian it
    receives (the shared parameters, or the features with the representation path). Cost: :math:`O(TP)`.

    Args:
        leak: fraction of every gradient kept regardless of its sign, in [0, 1].
        seed, generator, normalize: as for :class:`PCGrad`.
    """

    def __init__(
        self,
        *,
        leak: float = 0.0,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__(normalize=normalize)
        if not 0.0 <= leak <= 1.0:
            raise ValueError(f"GradDrop needs 0 <= leak <= 1 (the share of each gradient always kept), got leak={leak!r}.")
        self.leak = float(leak)
        self._init_random(seed, generator)

    def _aggregate(self, matrix: Tensor, tasks: TaskRows) -> Tensor:
        ones = matrix.new_ones(matrix.shape[0])
        total, magnitude = ones @ matrix, ones @ matrix.abs()  # column sums as products: contiguous reads
        purity = 0.5 * (1.0 + total / torch.where(magnitude > 0, magnitude, 1.0))
        # float32 draws whatever G's dtype: the same seed gives the same masks in every precision
        draw = self._random((matrix.shape[1],), matrix.device, torch.float32)
        keep = ((purity > draw) & (matrix > 0)) | ((purity < draw) & (matrix < 0))  # purity is promoted, not draw
        mask = self.leak + (1.0 - self.leak) * keep.to(matrix.dtype)
        return ones @ (mask * matrix)

    def reset(self) -> None:
        self._reset_random()

    def state_dict(self) -> dict[str, Any]:
        return self._random_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._load_random_state(state)
