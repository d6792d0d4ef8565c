r"""The weightings that read per-task gradients: GradNorm (gradient norms at the last shared layer) and
DB-MTL (rescaled per-task gradients, the Jacobian path)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hydranet.balancing.jacobian import TaskJacobian, global_task_means
from hydranet.balancing._weighting_base import (
    _CPU,
    LossWeighting,
    TaskList,
    _require_positive,
    Combined,
    GradientWeighting,
)

__all__ = ["DBMTL", "GradNorm", "last_layer"]


def last_layer(shared_params: Sequence[Tensor]) -> list[Tensor]:
    """The last shared layer: parameters from the end back to (and including) the last one with ``ndim >= 2``."""
    layer: list[Tensor] = []
    for param in reversed(list(shared_params)):
        layer.append(param)
        if param.dim() >= 2:
            break
    return layer[::-1]


class GradNorm(LossWeighting):
    r"""GradNorm (``gradnorm``; Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    The model minimises :math:`\sum_i w_i L_i`; the learnable weights :math:`w` (start 1; add
    ``parameters()`` to the optimizer) minimise

    .. math::  \sum_i \big| G_i - \bar G\, r_i^{\alpha} \big|,\quad
               G_i = w_i \lVert\nabla_W L_i\rVert,\quad
               r_i = \frac{\tilde L_i}{\operatorname{mean}_j \tilde L_j},\quad \tilde L_i = L_i / L_i(0)

    with :math:`W` the last shared layer (``layer=``, or the last shared parameters: see
    :func:`last_layer`), :math:`\bar G` the mean of :math:`G` and the target held constant. The weights
    are renormalised to sum to :math:`T` at the start of each step, i.e. right after the optimizer
    moved them. :math:`L_i(0)` is the first loss seen for task ``i``.
    """

    def __init__(self, tasks: TaskList, alpha: float = 1.5, layer: Iterable[Tensor] | None = None) -> None:
        super().__init__(tasks)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}.")
        self.alpha = float(alpha)
        self.layer = list(layer) if layer is not None else None
        if self.layer is not None and not self.layer:
            raise ValueError("layer= is empty: pass the parameters of the last shared layer, or leave it None.")
        self.loss_weights = nn.Parameter(torch.ones(self.n_tasks))
        self._initial = torch.full((self.n_tasks,), torch.nan, dtype=torch.float64)
        self._norms = torch.zeros(self.n_tasks, dtype=torch.float64)
        self._jacobian = TaskJacobian("auto")

    def parameters(self) -> list[nn.Parameter]:
        return [self.loss_weights]

    def combine(
        self, names: Sequence[str], losses: Tensor, values: Tensor, shared_params: Sequence[Tensor] = ()
    ) -> Combined:
        with torch.no_grad():
            self.loss_weights.clamp_(min=1e-6)
            self.loss_weights.mul_(self.n_tasks / self.loss_weights.sum())
        layer = self.layer if self.layer is not None else last_layer(shared_params)
        if not layer:
            raise ValueError(
                "gradnorm needs the last shared layer: pass shared_params (balancer.backward does) or "
                "make('gradnorm', tasks, layer=list(model.backbone[-1].parameters()))."
            )
        jac, reached = self._jacobian(losses, layer)
        if not any(reached):
            raise ValueError(
                "gradnorm: no task loss depends on the layer parameters; pass the last shared layer as layer=."
            )
        means, _ = global_task_means(jac, self.indices(names), self.n_tasks)
        self._norms = means.norm(dim=1).to(_CPU, torch.float64)
        return super().combine(names, losses, values, shared_params)

    def _observe(self, values: Tensor, present: Tensor) -> None:
        new = present[torch.isnan(self._initial[present])]
        self._initial[new] = values[new]

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        w = self.loss_weights[present].double()
        g = w * self._norms[present]
        ratio = v.detach() / self._initial[present]
        target = (g.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        return (w.detach() * v).sum() + (g - target).abs().sum()

    def _grad_norms(self, index: Tensor) -> Tensor:
        return self._norms[index]

    def state_dict(self) -> dict[str, Any]:
        return {"loss_weights": self.loss_weights.detach().clone(), "initial": self._initial.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.loss_weights.copy_(state["loss_weights"])
        self._initial = state["initial"].clone().double()


class DBMTL(GradientWeighting):
    r"""Dual-balancing multi-task learning (``db_mtl``; Lin, Ye, Xu, Shi & Zhang, arXiv 2308.12029, 2023).

    Loss scale: per-task gradients of :math:`\log(L_i + \epsilon)`. Gradient scale: an exponential
    moving average :math:`\hat g_i \leftarrow \beta_t \hat g_i + (1-\beta_t)\nabla \log L_i`,
    :math:`\beta_t = \beta / t^{\sigma}` (``beta``, ``beta_sigma``), then every task is brought to the
    largest norm:

    .. math::  d = \sum_i \alpha_i \hat g_i,\qquad \alpha_i = \frac{\max_j \lVert\hat g_j\rVert}{\lVert\hat g_i\rVert}

    Task-specific parameters receive :math:`\nabla \log L_i`. The averages are over the shared
    parameters (``[T, P]`` state), so the representation path is not available for this method.
    """

    def __init__(self, tasks: TaskList, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(tasks)
        if not 0 <= beta < 1 or beta_sigma < 0:
            raise ValueError(
                f"db_mtl needs 0 <= beta < 1 and beta_sigma >= 0, got beta={beta!r}, beta_sigma={beta_sigma!r}."
            )
        self.beta = float(beta)
        self.beta_sigma = float(beta_sigma)
        self.eps = float(eps)
        self.step = 0
        self.buffer: Tensor | None = None

    def transform(self, losses: Tensor, values: Tensor, names: Sequence[str]) -> Tensor:
        _require_positive("db_mtl", values + self.eps, list(names))
        return torch.log(losses + self.eps)

    def aggregate(self, jacobian: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        width = jacobian.shape[1]
        if self.buffer is None:
            self.buffer = jacobian.new_zeros(self.n_tasks, width)
        elif self.buffer.shape[1] != width:
            raise ValueError(
                f"db_mtl keeps an average of {self.buffer.shape[1]} gradient entries per task but got {width}: "
                "the shared parameters changed. Use one Balancer per model."
            )
        self.step += 1
        beta = self.beta / self.step**self.beta_sigma
        rows = present.to(jacobian.device)
        self.buffer[rows] = jacobian + beta * (self.buffer[rows] - jacobian)
        average = self.buffer[rows]
        norms = average.norm(dim=1)
        alpha = norms.max() / (norms + self.eps)
        return alpha @ average, alpha.to(_CPU, torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "buffer": None if self.buffer is None else self.buffer.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.step = int(state["step"])
        self.buffer = None if state["buffer"] is None else state["buffer"].clone()
