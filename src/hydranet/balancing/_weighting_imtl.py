r"""IMTL, the full method: IMTL-L's loss scaling with IMTL-G's gradient directions (:class:`IMTL`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hydranet.balancing.aggregators import IMTLG
from hydranet.balancing.jacobian import global_task_means
from hydranet.balancing._weighting_base import GradientWeighting, TaskList
from hydranet.runtime import world_size

__all__ = ["IMTL"]


class IMTL(GradientWeighting):
    r"""Impartial multi-task learning, hybrid (``imtl``; Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang,
    "Towards Impartial Multi-task Learning", ICLR 2021, algorithm 1; LibMTL's ``IMTL``).

    Loss part (IMTL-L): each present task's loss is scaled, :math:`\tilde L_i = e^{s_i}L_i - s_i`, with a
    learnable :math:`s` (start 0). Gradient part (IMTL-G): the rows of the Jacobian are the gradients
    :math:`\tilde g_i = e^{s_i}\nabla L_i` of the scaled losses with respect to the shared parameters, and
    the update is their IMTL-G combination

    .. math::  d = \sum_i \alpha_i\tilde g_i,\qquad \sum_i\alpha_i = 1,\quad d\cdot u_1 = \dots = d\cdot u_k

    (:class:`~hydranet.balancing.aggregators.IMTLG`: LibMTL's closed form on independent rows, the
    pseudo-inverse generalisation on dependent ones). Task-specific parameters receive
    :math:`\nabla\tilde L_i = e^{s_i}\nabla L_i`, and :math:`s` receives
    :math:`\partial\tilde L_i/\partial s_i = e^{s_i}L_i - 1` (as LibMTL, where every scaled loss is
    backpropagated): put ``parameters()`` in the optimizer. Under DDP the :math:`L_i` in that gradient is the
    mean over the ranks that have task :math:`i` (exact against one process on the concatenated batch);
    absent tasks' :math:`s_i` get no gradient. Scale: an **affine combination** of the scaled gradients.
    State: :math:`s`. Cost: the Jacobian path plus :math:`O(T^2P + T^3)`; the representation path does not
    apply (the balancer refuses it for gradient weightings).
    """

    def __init__(self, tasks: TaskList) -> None:
        super().__init__(tasks)
        self.log_scales = nn.Parameter(torch.zeros(self.n_tasks, dtype=torch.float64))
        self._directions = IMTLG()

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_scales]

    def transform(self, losses: Tensor, values: Tensor, names: Sequence[str]) -> Tensor:
        r"""The scaled losses :math:`e^{s_i}L_i` (the :math:`-s_i` does not change their gradients). Also adds
        :math:`e^{s_i}\bar L_i - 1` to ``log_scales.grad`` (the gradient of :math:`\sum_i\tilde L_i` in :math:`s`)."""
        index = self.indices(names)
        rows = losses.detach() if world_size() > 1 else values  # NCCL reduces on the losses' device
        means, counts = global_task_means(rows.to(torch.float64), index.to(rows.device), self.n_tasks)
        present = counts.cpu().nonzero().squeeze(1)
        s = self.log_scales.detach()
        grad = torch.zeros(self.n_tasks, dtype=torch.float64)
        grad[present] = torch.exp(s[present]) * means.cpu()[present] - 1.0
        if self.log_scales.grad is None:
            self.log_scales.grad = grad
        else:
            self.log_scales.grad += grad
        return torch.exp(s[index]).to(losses) * losses

    def aggregate(self, jacobian: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._directions.weights(jacobian)
        return weights @ jacobian, weights.detach().to("cpu", torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"log_scales": self.log_scales.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_scales.copy_(state["log_scales"])
