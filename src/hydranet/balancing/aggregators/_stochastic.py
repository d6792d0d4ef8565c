r"""Stochastic multi-objective gradient methods with a weight update on the simplex: :class:`MoDo`, :class:`SDMGrad`.

Both keep task weights :math:`\lambda \in \Delta` between calls and move them with a (projected) gradient
step on :math:`\tfrac12\lambda^\top A\lambda`, where :math:`A = G_\xi G_{\xi'}^\top` is built from *two
independent* mini-batches (double sampling, so that :math:`\mathbb E[A] = \bar G\bar G^\top` is unbiased);
the update then weights the rows of a third Jacobian :math:`G_\zeta`. ``agg(G)`` uses one Jacobian for
all three (:math:`A = K = GG^\top`): the deterministic method, biased as a stochastic estimate;
``agg.sampled(G_xi, G_xi2, G_zeta)`` takes three independent ones (LibMTL samples three batches per
step). The Balancer computes one Jacobian per batch and so uses ``agg(G)``.

With ``present=`` (some tasks in the batch) the step runs on the face of the simplex that keeps the
absent tasks' weights: the present weights :math:`\lambda_S` (mass :math:`s = \mathbf 1^\top\lambda_S`) are
read as :math:`\lambda_S / s \in \Delta_k`, take one step there, and are stored back times :math:`s`; the
update uses the stepped :math:`\lambda_S / s` (weights sum to 1). With every task present this is the
plain step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import (
    TaskRows,
    WeightedAggregator,
    _restored,
    _saved,
    _task_rows,
    check_matrix,
)
from hydranet.balancing.aggregators.tracking import project_simplex  # re-exported: one implementation

__all__ = ["MoDo", "SDMGrad", "project_simplex"]


class _SimplexWeights(WeightedAggregator):
    """Shared state handling: weights on the simplex over the task list, stepped on the present face."""

    state: np.ndarray | None


    gramian_only = True  # agg(G) reads G only through K = G G^T

    def __init__(self, *, normalize: bool) -> None:
        super().__init__(normalize=normalize)
        self.reset()

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        return self._advance(gramian, tasks)

    def _advance(self, cross: np.ndarray, tasks: TaskRows) -> np.ndarray:
        """One step of the weights of the tasks ``tasks`` with the cross matrix ``cross [k, k]``; returns
        the weights (summing to 1) that the update gives the rows."""
        self._check_tasks(tasks, None if self.state is None else self.state.size)
        if self.state is None:
            self.state = np.full(tasks.total, 1.0 / tasks.total)
        size = tasks.index.size
        current = self.state[tasks.index]
        mass = 1.0 if tasks.complete else float(current.sum())
        start = current / mass if mass > 0 else np.full(size, 1.0 / size)
        stepped, weights = self._step(cross, start)
        self.state[tasks.index] = stepped * mass if not tasks.complete else stepped
        return weights

    def _step(self, cross: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(new simplex weights, weights of the rows in the update)``."""
        raise NotImplementedError

    def sampled(self, first: Tensor, second: Tensor, update: Tensor | None = None, *, present: Any = None) -> Tensor:
        r"""One step with independent mini-batches: the weights move with :math:`A = G_1 G_2^\top`
        (``first``, ``second``, both ``[k, P]``) and the update weights the rows of ``update`` (default:
        ``second``). Returns the update ``[P]`` in ``update``'s dtype."""
        update = second if update is None else update
        name = type(self).__name__
        for value in (first, second, update):
            check_matrix(value, name)
        if not (first.shape == second.shape == update.shape):
            raise ValueError(
                f"{name}.sampled needs three Jacobians of one shape [tasks, params], got {list(first.shape)}, "
                f"{list(second.shape)} and {list(update.shape)}."
            )
        with torch.no_grad():
            rows, scale = self._prepare(update)
            a = self._prepare(first)[0].to(torch.float64)
            b = self._prepare(second)[0].to(torch.float64)
            cross = (a @ b.T).cpu().numpy()
            tasks = _task_rows(present, rows.shape[0], name)
            w = torch.as_tensor(self._advance(cross, tasks), dtype=rows.dtype, device=rows.device)
            return (w @ rows).to(update.dtype)

    def reset(self) -> None:
        self.state = None

    def state_dict(self) -> dict[str, Any]:
        return {"weights": _saved(self.state)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = _restored(state["weights"])


def _positive(value: float, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if zero else value > 0):
        raise ValueError(f"{name} must be a number {'>=' if zero else '>'} 0, got {value!r}.")
    return float(value)


class MoDo(_SimplexWeights):
    r"""Multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, "Three-Way Trade-Off
    in Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023 /
    JMLR 2024; the update rule and defaults of LibMTL's ``MoDo``, from the authors' code).

    .. math::  \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma\,(G_\xi G_{\xi'}^\top\lambda + \rho\lambda)\big),
               \qquad d = G_\zeta^\top \lambda

    (:math:`\Pi_\Delta` the Euclidean projection onto the simplex; :math:`\lambda_0 = \mathbf 1/T`). See the
    module docstring for the samples and ``present=``. Scale: a **convex combination** of the rows.
    The weight step is not scale-free (it reads :math:`A` itself, as in the paper), so
    :math:`d(cG) \ne c\,d(G)` in general. TorchJD's ``MoDoWeighting`` replaces :math:`\Pi_\Delta(\cdot)` by a
    softmax of :math:`\lambda - \gamma(\dots)` and defaults to :math:`\gamma = 0.1, \rho = 0`: a different
    rule; this one is the paper's and LibMTL's. State: :math:`\lambda` (:math:`T` numbers). Cost:
    :math:`O(T^2P + T\log T)`.

    Args:
        gamma: step size :math:`\gamma > 0` of the weights (LibMTL's ``MoDo_gamma``, default 0.001).
        rho: :math:`\ell_2` regularisation :math:`\rho \ge 0` of the weights (``MoDo_rho``, default 0.1).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    def __init__(self, *, gamma: float = 0.001, rho: float = 0.1, normalize: bool = False) -> None:
        self.gamma = _positive(gamma, "MoDo gamma")
        self.rho = _positive(rho, "MoDo rho", zero=True)
        super().__init__(normalize=normalize)

    def _step(self, cross: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = project_simplex(weights - self.gamma * (cross @ weights + self.rho * weights))
        return new, new


class SDMGrad(_SimplexWeights):
    r"""Stochastic direction-oriented multi-objective gradient (Xiao, Ban & Ji, "Direction-oriented
    Multi-objective Learning: Simple and Provable Stochastic Algorithms", NeurIPS 2023; the update rule
    and defaults of LibMTL's ``SDMGrad``, from the authors' code).

    With :math:`A = G_\xi G_{\xi'}^\top` scaled to :math:`\hat A = A / (\bar s^2 + \epsilon)`,
    :math:`\bar s = \frac1T\sum_i \sqrt{\max(A_{ii}, 0)}`, the weights take ``n_iter`` steps of projected
    heavy-ball descent on :math:`\tfrac12 w^\top\hat A w + \lambda\, w^\top\hat A\tilde w`
    (:math:`\tilde w = \mathbf 1/T`, the mean direction the update is pulled to):

    .. math::  v \leftarrow \mu v + \hat A(w + \lambda\tilde w),\quad w \leftarrow \Pi_\Delta(w - \eta v),
               \qquad d = \frac{G_\zeta^\top w + \lambda\, \bar g_\zeta}{1 + \lambda}

    (:math:`v` starts at 0 every call, :math:`w` persists from call to call, :math:`\bar g` the mean row).
    LibMTL divides by :math:`\bar s^2 + 10^{-8}`; the default ``eps = 0`` divides by :math:`\bar s^2` alone
    (``eps=1e-8`` reproduces it), which makes the weights scale-free: with :math:`10^{-8}` the method
    changes for gradient norms below about :math:`10^{-3}`. Scale: a **convex combination** (weights
    :math:`(w + \lambda/T)/(1+\lambda)` sum to 1); with ``eps = 0``, :math:`d(cG) = c\,d(G)` for
    :math:`c > 0` from the same state. State: :math:`w` (:math:`T` numbers). Cost:
    :math:`O(T^2P + n_{iter}T^2)`.

    Args:
        lamda: :math:`\lambda \ge 0` (LibMTL's ``SDMGrad_lamda``, default 0.3).
        n_iter: inner steps (``SDMGrad_niter``, default 20).
        lr: :math:`\eta > 0` (LibMTL: 5; TorchJD's ``SDMGradWeighting``: 10).
        momentum: :math:`\mu \in [0, 1)` (0.5).
        eps: added to :math:`\bar s^2` (>= 0).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    def __init__(
        self,
        *,
        lamda: float = 0.3,
        n_iter: int = 20,
        lr: float = 5.0,
        momentum: float = 0.5,
        eps: float = 0.0,
        normalize: bool = False,
    ) -> None:
        self.lamda = _positive(lamda, "SDMGrad lamda", zero=True)
        if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
            raise ValueError(f"SDMGrad n_iter must be an integer >= 1, got {n_iter!r}.")
        self.n_iter = int(n_iter)
        self.lr = _positive(lr, "SDMGrad lr")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"SDMGrad momentum must be in [0, 1), got {momentum!r}.")
        self.momentum = float(momentum)
        self.eps = _positive(eps, "SDMGrad eps", zero=True)
        super().__init__(normalize=normalize)

    def _step(self, cross: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = weights.size
        scale = float(np.sqrt(np.clip(np.diag(cross), 0.0, None)).mean()) ** 2 + self.eps
        a = cross / scale if scale > 0 else np.zeros_like(cross)
        pull = self.lamda * (a @ np.full(size, 1.0 / size))
        velocity = np.zeros(size)
        w = weights
        for _ in range(self.n_iter):
            velocity = self.momentum * velocity + a @ w + pull
            w = project_simplex(w - self.lr * velocity)
        return w, (w + self.lamda / size) / (1.0 + self.lamda)
