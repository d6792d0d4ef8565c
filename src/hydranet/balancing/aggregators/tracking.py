r"""Methods that learn across steps: MoCo (tracked gradients) and ExcessMTL (excess-risk weights).

Both keep ``[T, P]`` state on :math:`G`'s device, so they expect the same tasks (rows) and the same
parameters (columns) at every call; ``reset()`` starts over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hydranet.balancing.aggregators.base import Aggregator, WeightedAggregator, gram, restored, saved


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, Held et al. 1974)."""
    ordered = np.sort(v)[::-1]
    excess = np.cumsum(ordered) - 1.0
    ranks = np.arange(1, v.size + 1)
    last = np.flatnonzero(ordered - excess / ranks > 0)[-1]
    return np.maximum(v - excess[last] / (last + 1), 0.0)


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
    :math:`G`'s device), :math:`\lambda`, :math:`k`. Cost: :math:`O(T^2P)` per step.

    Args:
        beta, beta_sigma: tracking rate :math:`\beta \in (0, 1]` and its decay exponent (>= 0).
        gamma, gamma_sigma: step size of the weights (> 0) and its decay exponent (>= 0).
        rho: :math:`\ell_2` regularisation of the weights (>= 0).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

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

    def _aggregate(self, matrix: Tensor) -> Tensor:
        self._check_rows(matrix.shape[0], None if self.lambdas is None else self.lambdas.shape[0])
        self._check_columns(self.tracked, matrix)
        if self.tracked is None:
            self.tracked = torch.zeros_like(matrix)
            self.lambdas = np.full(matrix.shape[0], 1.0 / matrix.shape[0])
        self.step += 1
        beta = self.beta / self.step**self.beta_sigma
        gamma = self.gamma / self.step**self.gamma_sigma
        self.tracked = self.tracked.to(matrix.device, matrix.dtype)
        self.tracked.lerp_(matrix, beta)
        regularised = gram(self.tracked) + self.rho * np.eye(matrix.shape[0])
        self.lambdas = project_simplex(self.lambdas - gamma * regularised @ self.lambdas)
        return torch.as_tensor(self.lambdas, dtype=matrix.dtype, device=matrix.device) @ self.tracked

    def reset(self) -> None:
        self.step = 0
        self.tracked: Tensor | None = None
        self.lambdas: np.ndarray | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tracked": None if self.tracked is None else self.tracked.clone(),
            "lambdas": saved(self.lambdas),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.tracked = None if state["tracked"] is None else state["tracked"].clone()
        self.lambdas = restored(state["lambdas"])


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

    Args:
        step_size: :math:`\eta` (> 0).
        eps: :math:`\epsilon` inside the square root (>= 0).
        normalize: see :class:`~hydranet.balancing.aggregators.Aggregator`.
    """

    uses_gram = False

    def __init__(self, *, step_size: float = 0.01, eps: float = 1e-7, normalize: bool = False) -> None:
        super().__init__(normalize=normalize)
        if not step_size > 0 or not eps >= 0:
            raise ValueError(f"ExcessMTL needs step_size > 0 and eps >= 0, got step_size={step_size!r}, eps={eps!r}.")
        self.step_size = float(step_size)
        self.eps = float(eps)
        self.reset()

    def _weights(self, matrix: Tensor, gramian: np.ndarray | None) -> np.ndarray:
        size = matrix.shape[0]
        self._check_rows(size, None if self.task_weights is None else self.task_weights.shape[0])
        self._check_columns(self.squares, matrix)
        if self.squares is None:
            self.squares = torch.zeros_like(matrix)
            self.task_weights = np.ones(size)
            self.initial = np.full(size, np.nan)
        squared = matrix.square()
        self.squares = self.squares.to(matrix.device, matrix.dtype).add_(squared)
        excess = (squared / (self.squares + self.eps).sqrt()).sum(dim=1).to("cpu", torch.float64).numpy()
        known = ~np.isnan(self.initial)
        ratio = np.divide(excess, self.initial, out=np.zeros(size), where=known)
        fresh = ~known & (excess > 0)
        self.initial[fresh] = excess[fresh]
        logits = np.log(self.task_weights) + self.step_size * ratio
        self.task_weights = size * np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        return self.task_weights.copy()

    def reset(self) -> None:
        self.squares: Tensor | None = None
        self.task_weights: np.ndarray | None = None
        self.initial: np.ndarray | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "squares": None if self.squares is None else self.squares.clone(),
            "task_weights": saved(self.task_weights),
            "initial": saved(self.initial),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.squares = None if state["squares"] is None else state["squares"].clone()
        self.task_weights = restored(state["task_weights"])
        self.initial = restored(state["initial"])
