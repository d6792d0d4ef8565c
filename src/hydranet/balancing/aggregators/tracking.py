r"""Methods that learn across steps: MoCo (tracked gradients) and ExcessMTL (excess-risk weights).

Both keep ``[T, P]`` state on :math:`G`'s device for a fixed list of tasks and parameters: a batch
with only some of the tasks passes ``present=`` (their state alone moves), a change of the
parameters (columns) is an error; ``reset()`` starts over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import Aggregator, TaskRows, WeightedAggregator, _gram, _restored, _saved

__all__ = ["ExcessMTL", "MoCo", "project_simplex"]


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, Held et al. 1974).

    The projection commutes with adding a constant to every entry, so ``v`` is shifted to
    ``max(v) = 0`` first: the largest entry then always passes the threshold test (with entries of
    :math:`10^{20}` the unshifted cumulative sums absorb the 1 and no entry would pass).
    """
    ordered = np.sort(v)[::-1] - np.max(v)
    excess = np.cumsum(ordered) - 1.0
    ranks = np.arange(1, v.size + 1)
    last = np.flatnonzero(ordered - excess / ranks > 0)[-1]  # index 0 always passes: 0 + 1 > 0
    return np.maximum(v - np.max(v) - excess[last] / (last + 1), 0.0)


class _ColumnState:
    """Checks that ``[T, P]`` state still matches the Jacobian it is combined with."""

    def _check_columns(self, state: Tensor | None, matrix: Tensor) -> None:
        if state is not None and state.shape[1] != matrix.shape[1]:
            raise ValueError(
                f"{type(self).__name__} keeps per-parameter state for {state.shape[1]} gradient entries but got "
                f"{matrix.shape[1]}: the shared parameters changed. Use one aggregator per model, or call reset()."
            )


class MoCo(_ColumnState, Aggregator):
    r"""Multi-objective gradient correction (Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, ICLR 2023,
    "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach").

    Stochastic task gradients make MGDA-type weights biased; MoCo tracks the gradients and moves the
    weights by projected gradient steps. At step :math:`k = 1, 2, \dots`, with
    :math:`\beta_k = \beta/k^{\sigma_\beta}` and :math:`\gamma_k = \gamma/k^{\sigma_\gamma}`:

    .. math::  Y_k = Y_{k-1} - \beta_k (Y_{k-1} - G_k),\qquad
               \lambda_k = \Pi_\Delta\big(\lambda_{k-1} - \gamma_k (Y_kY_k^\top + \rho I)\lambda_{k-1}\big),\qquad
               d = Y_k^\top\lambda_k

    (:math:`\Pi_\Delta`: Euclidean projection onto the simplex, as in the paper; :math:`Y_0 = 0`,
    :math:`\lambda_0 = \mathbf 1/T` as in the authors' code). Defaults are LibMTL's (from the authors):
    :math:`\beta = 0.5, \sigma_\beta = 0.5, \gamma = 0.1, \sigma_\gamma = 0.5, \rho = 0`. The authors'
    experiments also rescale each task gradient to the task's loss value; the aggregator sees no losses
    (``normalize=True`` gives unit-norm rows).

    Scale: a **convex combination** of the tracked gradients (weights ``lambdas`` sum to 1). Not a weighting
    of the current :math:`G`'s rows (:math:`Y` mixes past Jacobians). State: :math:`Y` (``[T, P]``, on
    :math:`G`'s device), :math:`\lambda`, :math:`k` and the per-task counts :math:`n_i`. Cost:
    :math:`O(T^2P)` per step.

    Some tasks present (``present=``, the set :math:`S`): each task's tracker follows its own
    observations, and the weights take one step on the simplex :math:`\Delta_S` of the present tasks,
    from their previous weights renormalised by their mass :math:`m = \sum_{i\in S}\lambda_i`:

    .. math::  n_i \leftarrow n_i + 1,\quad Y_i \leftarrow Y_i - \frac{\beta}{n_i^{\sigma_\beta}}(Y_i - g_i)
               \quad(i \in S),\qquad
               \mu = \Pi_{\Delta_S}\big(\tilde\lambda - \gamma_k (Y_SY_S^\top + \rho I)\tilde\lambda\big),
               \quad \tilde\lambda = \lambda_S / m,\qquad d = Y_S^\top\mu,\qquad \lambda_S \leftarrow m\,\mu

    (:math:`k` counts every step; :math:`n_i = k` while every task is present, and :math:`m = 1`
    then, which gives the step above). The absent tasks' :math:`Y_i`, :math:`n_i`, :math:`\lambda_i`
    do not change, and :math:`\lambda` stays on :math:`\Delta_T`. A run in which some tasks are never
    present is the method on the other tasks (up to rounding). If the present tasks have no weight
    (:math:`m = 0`), :math:`\tilde\lambda` is uniform and :math:`\lambda` keeps its value.

    Args:
        beta, beta_sigma: tracking rate :math:`\beta \in (0, 1]` and its decay exponent (>= 0).
        gamma, gamma_sigma: step size of the weights (> 0) and its decay exponent (>= 0).
        rho: :math:`\ell_2` regularisation of the weights (>= 0).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    tracked: Tensor | None
    lambdas: np.ndarray | None
    task_steps: np.ndarray | None


    def __init__(
        self,
        *,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        normalize: bool = False,
    ) -> None:
        super().__init__(normalize=normalize)
        if not 0.0 < beta <= 1.0 or not gamma > 0.0 or not beta_sigma >= 0.0 or not gamma_sigma >= 0.0 or not rho >= 0.0:
            raise ValueError(
                "MoCo needs 0 < beta <= 1, gamma > 0 and beta_sigma, gamma_sigma, rho >= 0; got "
                f"beta={beta!r}, gamma={gamma!r}, beta_sigma={beta_sigma!r}, gamma_sigma={gamma_sigma!r}, rho={rho!r}."
            )
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.reset()

    def _aggregate(self, matrix: Tensor, tasks: TaskRows) -> Tensor:
        self._check_tasks(tasks, None if self.lambdas is None else self.lambdas.shape[0])
        self._check_columns(self.tracked, matrix)
        if self.tracked is None:
            self.tracked = matrix.new_zeros(tasks.total, matrix.shape[1])
            self.lambdas = np.full(tasks.total, 1.0 / tasks.total)
            self.task_steps = np.zeros(tasks.total, dtype=np.int64)
        assert self.lambdas is not None and self.task_steps is not None  # set with tracked
        self.step += 1
        self.task_steps[tasks.index] += 1
        rates = [self.beta / int(n) ** self.beta_sigma for n in self.task_steps[tasks.index]]
        gamma = self.gamma / self.step**self.gamma_sigma
        rows = torch.as_tensor(tasks.index, device=matrix.device)
        self.tracked = self.tracked.to(matrix.device, matrix.dtype)
        tracked = self.tracked[rows].lerp_(matrix, torch.tensor(rates, dtype=matrix.dtype, device=matrix.device)[:, None])
        self.tracked[rows] = tracked
        mass = 1.0 if tasks.complete else float(self.lambdas[tasks.index].sum())
        start = self.lambdas[tasks.index] / mass if mass > 0 else np.full(tasks.index.size, 1.0 / tasks.index.size)
        regularised = _gram(tracked) + self.rho * np.eye(tasks.index.size)
        weights = project_simplex(start - gamma * regularised @ start)
        self.lambdas[tasks.index] = mass * weights
        return torch.as_tensor(weights, dtype=matrix.dtype, device=matrix.device) @ tracked

    def reset(self) -> None:
        self.step = 0
        self.tracked = None
        self.lambdas = None
        self.task_steps = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "task_steps": None if self.task_steps is None else torch.tensor(self.task_steps),
            "tracked": None if self.tracked is None else self.tracked.clone(),
            "lambdas": _saved(self.lambdas),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.tracked = None if state["tracked"] is None else state["tracked"].clone()
        self.lambdas = _restored(state["lambdas"])
        if "task_steps" in state:
            steps = state["task_steps"]
            self.task_steps = None if steps is None else torch.as_tensor(steps, dtype=torch.int64).numpy().copy()
        else:  # a checkpoint from before per-task counts: every task was present at every step
            self.task_steps = None if self.lambdas is None else np.full(self.lambdas.shape[0], self.step, dtype=np.int64)


class ExcessMTL(_ColumnState, WeightedAggregator):
    r"""Robust multi-task learning with excess risks (He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, ICML 2024).

    Tasks far from their own optimum (large *excess risk*) get more weight, by exponentiated-gradient
    ascent on the weights. The excess risk of task :math:`i` is estimated from a second-order expansion,
    :math:`\tfrac12 g_i^\top H_i^{-1} g_i`, with the diagonal Hessian approximated AdaGrad-style by the
    root of the accumulated squared gradients (as in the authors' code):

    .. math::  S_i \leftarrow S_i + g_i^{\odot 2},\qquad
               e_i = \sum_p \frac{G_{ip}^2}{\sqrt{S_{ip} + \epsilon}},\qquad
               w \leftarrow T\,\frac{w \odot \exp(\eta\, e / e^{(0)})}{\mathbf 1^\top\big(w \odot \exp(\eta\, e / e^{(0)})\big)}

    (the factor :math:`\tfrac12` cancels in the ratio) where :math:`e^{(0)}_i` is task :math:`i`'s first
    positive estimate (the first step only records it and keeps :math:`w = \mathbf 1`), :math:`\eta` is
    ``step_size`` (the authors' default :math:`10^{-2}`) and :math:`\epsilon` is ``eps`` (:math:`10^{-7}`).
    The update is :math:`d = w^\top G`.
    The paper's excess risk subtracts the (unknown) optimal loss; with this gradient-based estimate no
    loss value is needed, which is what the authors' implementation computes.

    Scale: weights sum to :math:`T` (the **sum** of the gradients while the weights are equal).
    State: :math:`S` (``[T, P]`` on :math:`G`'s device), :math:`e^{(0)}`, :math:`w`. Cost: :math:`O(TP)` per step.

    Some tasks present (``present=``, the set :math:`\mathcal S`): :math:`S_i`, :math:`e_i` and
    :math:`e^{(0)}_i` are updated for :math:`i \in \mathcal S` only, and the exponentiated step moves the
    present tasks' share of the weights, keeping their mass :math:`m = \sum_{i\in\mathcal S} w_i`
    (:math:`= T` while every task is present, which gives the rule above):

    .. math::  w_{\mathcal S} \leftarrow m\,\frac{w_{\mathcal S} \odot \exp(\eta\, e_{\mathcal S} / e^{(0)}_{\mathcal S})}
               {\mathbf 1^\top\big(w_{\mathcal S} \odot \exp(\eta\, e_{\mathcal S} / e^{(0)}_{\mathcal S})\big)},
               \qquad d = \frac{|\mathcal S|}{m} \sum_{i\in\mathcal S} w_i\, g_i,

    so the applied weights sum to :math:`|\mathcal S|` (those of the sub-problem of the present
    tasks), the absent tasks' weights and estimates do not change, and :math:`\sum_i w_i` stays
    :math:`T`. A run in which some tasks are never present is the method on the other tasks (up to
    rounding).

    Args:
        step_size: :math:`\eta` (> 0).
        eps: :math:`\epsilon` inside the square root (>= 0).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    squares: Tensor | None
    task_weights: np.ndarray | None
    initial: np.ndarray | None


    uses_gram = False

    def __init__(self, *, step_size: float = 0.01, eps: float = 1e-7, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if not step_size > 0 or not eps >= 0:
            raise ValueError(f"ExcessMTL needs step_size > 0 and eps >= 0, got step_size={step_size!r}, eps={eps!r}.")
        self.step_size = float(step_size)
        self.eps = float(eps)
        self.reset()

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        size = matrix.shape[0]
        self._check_tasks(tasks, None if self.task_weights is None else self.task_weights.shape[0])
        self._check_columns(self.squares, matrix)
        if self.squares is None:
            self.squares = matrix.new_zeros(tasks.total, matrix.shape[1])
            self.task_weights = np.ones(tasks.total)
            self.initial = np.full(tasks.total, np.nan)
        assert self.task_weights is not None and self.initial is not None  # set with squares
        rows = torch.as_tensor(tasks.index, device=matrix.device)
        squared = matrix.square()
        self.squares = self.squares.to(matrix.device, matrix.dtype)
        squares = self.squares[rows].add_(squared)
        self.squares[rows] = squares
        excess = (squared / (squares + self.eps).sqrt()).sum(dim=1).to("cpu", torch.float64).numpy()
        initial = self.initial[tasks.index]
        known = ~np.isnan(initial)
        ratio = np.divide(excess, initial, out=np.zeros(size), where=known)
        fresh = ~known & (excess > 0)
        initial[fresh] = excess[fresh]
        self.initial[tasks.index] = initial
        previous = self.task_weights[tasks.index]
        mass = float(tasks.total) if tasks.complete else float(previous.sum())
        logits = np.log(previous) + self.step_size * ratio
        shares = np.exp(logits - logits.max())
        self.task_weights[tasks.index] = mass * shares / shares.sum()
        return size * shares / shares.sum()

    def reset(self) -> None:
        self.squares = None
        self.task_weights = None
        self.initial = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "squares": None if self.squares is None else self.squares.clone(),
            "task_weights": _saved(self.task_weights),
            "initial": _saved(self.initial),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.squares = None if state["squares"] is None else state["squares"].clone()
        self.task_weights = _restored(state["task_weights"])
        self.initial = _restored(state["initial"])
