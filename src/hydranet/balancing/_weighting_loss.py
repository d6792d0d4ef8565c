r"""The loss weightings that scale or transform the losses alone: equal, static, uncertainty, DWA, RLW, GLS,
IMTL-L, FAMO and STCH (formulas in :mod:`hydranet.balancing.weighting`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hydranet._checks import did_you_mean
from hydranet.balancing.jacobian import global_task_means
from hydranet.balancing._weighting_base import (
    _CPU,
    LossWeighting,
    TaskList,
    _require_positive,
)

__all__ = ["DWA", "FAMO", "GLS", "IMTLL", "RLW", "STCH", "EqualWeighting", "StaticWeighting", "UncertaintyWeighting"]


class EqualWeighting(LossWeighting):
    r"""Equal weighting (``ew``): :math:`\sum_i L_i`, the plain sum of the task losses."""

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        return v.sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        return losses.sum(), lambda: torch.ones(losses.shape[0], dtype=torch.float64)


class StaticWeighting(LossWeighting):
    r"""Fixed weights (``static``): :math:`\sum_i c_i L_i`.

    Args:
        weights: ``{task: weight}``; tasks not listed take ``Task.weight`` (1.0 for task names).
    """

    def __init__(self, tasks: TaskList, weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        for name in weights:
            if name not in self._index:
                raise ValueError(f"weights: unknown task {name!r}.{did_you_mean(name, self.task_names)}")
        coefficients = []
        for name, task in self.tasks.items():
            value = float(weights.get(name, task.weight if task is not None else 1.0))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"weights: the weight of task {name!r} must be a finite number >= 0, got {value!r}.")
            coefficients.append(value)
        self.weights = torch.tensor(coefficients, dtype=torch.float64)

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        return (self.weights[present] * v).sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        weights = self.weights[index]
        return (weights.to(losses) * losses).sum(), lambda: weights


class UncertaintyWeighting(LossWeighting):
    r"""Homoscedastic uncertainty weighting (``uw``; Kendall, Gal & Cipolla, CVPR 2018).

    .. math::  f = \sum_i a_i e^{-s_i} L_i + \tfrac12 s_i,\qquad s_i = \log\sigma_i^2

    i.e. :math:`\frac{1}{2\sigma^2}L + \log\sigma` for regression (:math:`a = 1/2`) and
    :math:`\frac{1}{\sigma^2}L + \log\sigma` for classification (:math:`a = 1`), chosen per task from
    ``Task.kind``; task names without a kind use the regression form. :math:`s` starts at 0 and is
    learned: add ``parameters()`` to the optimizer.
    """

    def __init__(self, tasks: TaskList) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(self.n_tasks))
        self.scales = torch.tensor(
            [1.0 if task is not None and task.is_classification else 0.5 for task in self.tasks.values()],
            dtype=torch.float64,
        )

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        s = self.log_vars[present].double()
        return (self.scales[present] * torch.exp(-s) * v + 0.5 * s).sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        full = index.shape[0] == self.n_tasks  # index is increasing: all tasks means arange(T)
        s = self.log_vars if full else self.log_vars[index]
        scales = self.scales if full else self.scales[index]
        coef = scales * torch.exp(-s.double())  # float64, as combine(): the same weights to the last bit
        total = (coef.to(losses) * losses).sum() + (0.5 * s.double().sum()).to(losses)
        return total, lambda: coef.detach().double()

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])


class DWA(LossWeighting):
    r"""Dynamic Weight Average (``dwa``; Liu, Johns & Davison, CVPR 2019).

    .. math::  w_i = T\,\frac{\exp(r_i/\tau)}{\sum_j \exp(r_j/\tau)},\qquad
               r_i = \frac{\bar L_i(e-1)}{\bar L_i(e-2)}

    with :math:`\bar L_i(e)` the average loss of task ``i`` over epoch ``e`` (the steps where it was
    present) and :math:`\tau` = ``temperature``. Weights are 1 during the first two epochs; a task
    without an average in one of the last two epochs gets :math:`r_i = 1`. Call ``on_epoch_end()``
    after every epoch (the trainer does).
    """

    def __init__(self, tasks: TaskList, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.temperature = float(temperature)
        self._sums = torch.zeros(self.n_tasks, dtype=torch.float64)
        self._counts = torch.zeros(self.n_tasks, dtype=torch.float64)
        self._history: list[Tensor] = []

    def current_weights(self) -> Tensor:
        """Weights of all tasks for the current epoch (float64 ``[T]``)."""
        if len(self._history) < 2:
            return torch.ones(self.n_tasks, dtype=torch.float64)
        ratio = self._history[-1] / self._history[-2]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        return self.n_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def _observe(self, values: Tensor, present: Tensor) -> None:
        self._sums[present] += values[present]
        self._counts[present] += 1

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        return (self.current_weights()[present] * v).sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        self._sums[index] += losses.detach().to(_CPU, torch.float64)
        self._counts[index] += 1
        weights = self.current_weights()[index]
        return (weights.to(losses) * losses).sum(), lambda: weights

    def on_epoch_end(self) -> None:
        average = torch.where(self._counts > 0, self._sums / self._counts.clamp(min=1), torch.nan)
        self._history = (self._history + [average])[-2:]
        self._sums.zero_()
        self._counts.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self._sums.clone(),
            "counts": self._counts.clone(),
            "history": [h.clone() for h in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._sums = state["sums"].clone().double()
        self._counts = state["counts"].clone().double()
        self._history = [h.clone().double() for h in state["history"]]


class RLW(LossWeighting):
    r"""Random loss weighting (``rlw``; Lin et al., TMLR 2022, arXiv 2111.10603).

    .. math::  w = \mathrm{softmax}(z),\qquad z \sim \mathcal N(0, I_T)

    drawn afresh at every step from a generator seeded with ``seed`` (the same stream on every rank);
    the weights sum to 1 over all tasks, tasks absent from the batch drop their share.
    """

    def __init__(self, tasks: TaskList, seed: int = 0) -> None:
        super().__init__(tasks)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        z = torch.randn(self.n_tasks, generator=self.generator, dtype=torch.float64)
        return (torch.softmax(z, dim=0)[present] * v).sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        z = torch.randn(self.n_tasks, generator=self.generator, dtype=torch.float64)
        weights = torch.softmax(z, dim=0)[index]
        return (weights.to(losses) * losses).sum(), lambda: weights

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


class GLS(LossWeighting):
    r"""Geometric loss strategy (``gls``; Chennupati et al., CVPR-W 2019): :math:`(\prod_i L_i)^{1/k}`.

    Scale-invariant: the gradient is :math:`\sum_i \frac{f}{k L_i} \nabla L_i`. Needs positive losses.
    """

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        _require_positive("gls", v.detach(), [self.task_names[int(t)] for t in present])
        return torch.exp(torch.log(v).mean())


class IMTLL(LossWeighting):
    r"""IMTL-L, the loss-balance half of IMTL (``imtl_l``; Liu et al., ICLR 2021).

    .. math::  f = \sum_i e^{s_i} L_i - s_i

    with learnable :math:`s` (start 0; add ``parameters()`` to the optimizer): at the optimum in
    :math:`s`, every scaled loss :math:`e^{s_i} L_i` equals 1.
    """

    def __init__(self, tasks: TaskList) -> None:
        super().__init__(tasks)
        self.log_scales = nn.Parameter(torch.zeros(self.n_tasks))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_scales]

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        s = self.log_scales[present].double()
        return (torch.exp(s) * v - s).sum()

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any]:
        s = self.log_scales if index.shape[0] == self.n_tasks else self.log_scales[index]
        coef = torch.exp(s.double())
        return (coef.to(losses) * losses).sum() - s.double().sum().to(losses), lambda: coef.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"log_scales": self.log_scales.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_scales.copy_(state["log_scales"])


class FAMO(LossWeighting):
    r"""Fast Adaptive Multitask Optimization (``famo``; Liu, Liang, Yu, Stone & Liu, NeurIPS 2023).

    With logits :math:`\xi` (start 0), :math:`z = \mathrm{softmax}(\xi)` and
    :math:`D_i = L_i - b_i + \epsilon` (:math:`b` = ``min_losses``, default 0):

    .. math::  f = \frac{1}{c}\sum_i z_i \log D_i,\qquad c = \sum_i z_i / D_i \ \text{(constant)}

    so the update is :math:`\sum_i \frac{z_i}{c D_i}\nabla L_i`. After the step the logits move by one
    Adam step (``lr``, weight decay ``gamma``) on the gradient
    :math:`J_{\mathrm{softmax}}(\xi)^\top \delta`, :math:`\delta_i = \log D_i(\text{before}) - \log D_i(\text{after})`.

    The paper evaluates "after" on the same batch with the updated model: call ``update(new_losses)``
    after ``optimizer.step()`` for that. When ``update`` was not called, the next batch's losses serve
    as "after" (the default of :class:`~hydranet.balancing.Balancer`: no extra forward pass, at the
    price of mixing batch-to-batch noise into :math:`\delta`). Tasks missing at either end get
    :math:`\delta_i = 0`. The logits have their own optimizer; ``parameters()`` is empty.
    """

    def __init__(
        self,
        tasks: TaskList,
        lr: float = 0.025,
        gamma: float = 0.01,
        min_losses: Mapping[str, float] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(tasks)
        if not lr > 0 or not gamma >= 0:
            raise ValueError(f"famo needs lr > 0 and gamma >= 0, got lr={lr!r}, gamma={gamma!r}.")
        for name in min_losses or {}:
            if name not in self._index:
                raise ValueError(f"min_losses: unknown task {name!r}.{did_you_mean(name, self.task_names)}")
        self.min_losses = torch.tensor(
            [float((min_losses or {}).get(n, 0.0)) for n in self.task_names], dtype=torch.float64
        )
        self.eps = float(eps)
        self.logits = torch.zeros(self.n_tasks, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=lr, weight_decay=gamma)
        self._before: Tensor | None = None

    def update(self, new_losses: Mapping[str, Tensor | float]) -> None:
        """Move the logits using the losses of the *last* batch evaluated after ``optimizer.step()``."""
        unknown = [n for n in new_losses if n not in self._index]
        if unknown:
            raise ValueError(f"update: unknown task {unknown[0]!r}.{did_you_mean(unknown[0], self.task_names)}")
        names = [n for n in self.task_names if n in new_losses]
        if not names:
            raise ValueError("update: no task loss given.")
        device = next((x.device for x in new_losses.values() if isinstance(x, Tensor)), _CPU)
        rows = torch.tensor([float(new_losses[n]) for n in names], dtype=torch.float64, device=device)
        means, counts = global_task_means(rows, self.indices(names), self.n_tasks)
        self._step_logits(torch.where(counts > 0, means, torch.nan).to(_CPU))

    def _step_logits(self, after: Tensor) -> None:
        if self._before is None:
            return
        before, self._before = self._before, None
        known = torch.isfinite(before) & torch.isfinite(after)
        delta = torch.where(
            known,
            torch.log((before - self.min_losses).clamp(min=0) + self.eps)
            - torch.log((after - self.min_losses).clamp(min=0) + self.eps),
            0.0,
        )
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(torch.softmax(self.logits, dim=0), self.logits, grad_outputs=delta)
        self.optimizer.zero_grad()
        self.logits.grad = grad
        self.optimizer.step()

    def _observe(self, values: Tensor, present: Tensor) -> None:
        current = torch.full((self.n_tasks,), torch.nan, dtype=torch.float64)
        current[present] = values[present]
        self._step_logits(current)
        self._before = current

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        offset = self.min_losses[present]
        names = [self.task_names[int(t)] for t in present]
        _require_positive("famo", v.detach() - offset + self.eps, names, what="loss minus min_loss")
        z = torch.softmax(self.logits.detach(), dim=0)[present]
        d = v - offset + self.eps
        c = (z / d).sum().detach()
        return (z * torch.log(d)).sum() / c

    def state_dict(self) -> dict[str, Any]:
        return {
            "logits": self.logits.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "before": None if self._before is None else self._before.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._before = None if state["before"] is None else state["before"].clone().double()


class STCH(LossWeighting):
    r"""Smooth Tchebycheff scalarisation (``stch``; Lin, Zhang, Zhang, Liu & Zhang, ICML 2024).

    .. math::  f = T\mu \log \sum_i \exp\big(\log(L_i / n_i) / \mu\big)

    a smooth maximum of the losses normalised by the nadir point :math:`n` (ideal point 0, in log
    space as in the authors' multi-task code). Warm-up: for epochs ``< warmup_epochs`` and epoch
    ``warmup_epochs`` the objective is :math:`\sum_i \log L_i`; during epoch ``warmup_epochs`` the
    losses are averaged into :math:`n`, used from the next epoch on (a task unseen then takes its first
    later loss). ``warmup_epochs=0`` measures :math:`n` during the first epoch. Call
    ``on_epoch_end()`` after every epoch (the trainer does). Smaller ``mu`` approaches the hard max.
    """

    def __init__(self, tasks: TaskList, mu: float = 1.0, warmup_epochs: int = 4, eps: float = 1e-20) -> None:
        super().__init__(tasks)
        if not mu > 0 or int(warmup_epochs) < 0:
            raise ValueError(
                f"stch needs mu > 0 and warmup_epochs >= 0, got mu={mu!r}, warmup_epochs={warmup_epochs!r}."
            )
        self.mu = float(mu)
        self.warmup_epochs = int(warmup_epochs)
        self.eps = float(eps)
        self.epoch = 0
        self._sums = torch.zeros(self.n_tasks, dtype=torch.float64)
        self._counts = torch.zeros(self.n_tasks, dtype=torch.float64)
        self.nadir = torch.full((self.n_tasks,), torch.nan, dtype=torch.float64)

    def _observe(self, values: Tensor, present: Tensor) -> None:
        if self.epoch == self.warmup_epochs:
            self._sums[present] += values[present]
            self._counts[present] += 1
        elif self.epoch > self.warmup_epochs:
            unset = present[torch.isnan(self.nadir[present])]
            self.nadir[unset] = values[unset]

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        _require_positive("stch", v.detach(), [self.task_names[int(t)] for t in present])
        if self.epoch <= self.warmup_epochs:
            return torch.log(v + self.eps).sum()
        scaled = torch.log(v / self.nadir[present] + self.eps)
        return self.n_tasks * self.mu * torch.logsumexp(scaled / self.mu, dim=0)

    def on_epoch_end(self) -> None:
        if self.epoch == self.warmup_epochs:
            self.nadir = torch.where(self._counts > 0, self._sums / self._counts.clamp(min=1), torch.nan)
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "sums": self._sums.clone(),
            "counts": self._counts.clone(),
            "nadir": self.nadir.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self._sums = state["sums"].clone().double()
        self._counts = state["counts"].clone().double()
        self.nadir = state["nadir"].clone().double()
