r"""Loss weighting: combine the task losses into the objective that one backward pass differentiates.

Every loss weighting here is a scalar function :math:`f(L_1, \dots, L_k)` of the losses of the tasks
present in the batch (and of its own state or learnable parameters). Calling one returns that objective::

    weighting = WEIGHTINGS["uw"](tasks)
    weighting(losses).backward()          # losses: {task: scalar tensor}

The objective is built as :math:`\sum_i w_i L_i + \big(f(\bar L) - \sum_i w_i \bar L_i\big)` with
:math:`w = \nabla f(\bar L)` evaluated at the detached loss values :math:`\bar L`; it has the value
:math:`f(\bar L)` and, for the model, the gradient of :math:`f` (chain rule), while the bracket carries
the gradient of the method's own parameters (UW, IMTL-L, GradNorm). Under ``torch.distributed``
:math:`\bar L` are the loss values averaged over ranks, so every rank uses the same weights and DDP's
gradient average equals the gradient of :math:`f` on the concatenated batch.

Methods (tasks present :math:`i = 1..k`, all tasks :math:`T`; state in brackets):

* ``ew``: :math:`\sum_i L_i`;
* ``static``: :math:`\sum_i c_i L_i`, :math:`c_i` from ``Task.weight`` or ``weights=``;
* ``uw``: :math:`\sum_i a_i e^{-s_i} L_i + s_i/2`, :math:`s_i = \log\sigma_i^2` [learnable :math:`s`];
* ``dwa``: :math:`\sum_i w_i L_i`, :math:`w = T\,\mathrm{softmax}(r/\tau)` [last two epoch averages];
* ``rlw``: :math:`\sum_i w_i L_i`, :math:`w = \mathrm{softmax}(z)`, :math:`z \sim N(0, I)` [generator];
* ``gls``: :math:`(\prod_i L_i)^{1/k}`;
* ``imtl_l``: :math:`\sum_i e^{s_i} L_i - s_i` [learnable :math:`s`];
* ``famo``: :math:`\sum_i z_i \log(L_i - b_i) / c`, :math:`z = \mathrm{softmax}(\xi)` [logits, Adam];
* ``gradnorm``: :math:`\sum_i w_i L_i` plus the GradNorm loss on :math:`w` [learnable :math:`w`, initial losses];
* ``stch``: :math:`T\mu \log\sum_i \exp(\log(L_i/n_i)/\mu)` after a warm-up [epoch, nadir point];
* ``db_mtl``: EMA of :math:`\nabla \log L_i`, each rescaled to the largest norm [EMA of the Jacobian].

``db_mtl`` rescales per-task *gradients*; it is a :class:`GradientWeighting` and runs through the Jacobian
path of :class:`~hydranet.balancing.Balancer`. The learnable state of ``uw``, ``imtl_l`` and ``gradnorm``
is returned by ``parameters()`` for the optimizer; it lives on the CPU (a handful of numbers).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hydranet.balancing.jacobian import TaskJacobian, global_task_means
from hydranet.runtime import world_size
from hydranet.tasks import Task

TaskList = Sequence["str | Task"] | Mapping[str, Task]

_CPU = torch.device("cpu")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def task_dict(tasks: TaskList) -> dict[str, Task | None]:
    """``{name: Task or None}`` from task names, Task objects, or a ``{name: Task}`` mapping."""
    if isinstance(tasks, Mapping):
        items = list(tasks.values())
    else:
        items = [tasks] if isinstance(tasks, (str, Task)) else list(tasks)
    if not items:
        raise ValueError("No tasks given: pass the task names or hydranet.Task objects, e.g. ['age', 'gender'].")
    out: dict[str, Task | None] = {}
    for item in items:
        if isinstance(item, Task):
            name, task = item.name, item
        elif isinstance(item, str) and item:
            name, task = item, None
        else:
            raise TypeError(f"Expected task names or hydranet.Task objects, got {type(item).__name__}: {item!r}.")
        if name in out:
            raise ValueError(f"Duplicate task name {name!r}: task names must be unique.")
        out[name] = task
    return out


def check_losses(losses: Mapping[str, Tensor], task_names: Sequence[str]) -> tuple[list[str], Tensor, Tensor]:
    """Validate ``{task: scalar loss}``.

    Returns:
        ``(names, L, values)``: the tasks present, in ``task_names`` order; their losses stacked ``[k]``
        (with the graph); the loss values as a CPU float64 tensor ``[k]``.

    Raises:
        ValueError: unknown task, non-scalar loss, loss without graph, NaN or infinite loss.
    """
    if not isinstance(losses, Mapping):
        raise TypeError(f"losses must be a dict {{task: scalar loss tensor}}, got {type(losses).__name__}.")
    if not losses:
        raise ValueError("No task loss given: pass {task: loss} for the tasks present in the batch.")
    known = set(task_names)
    for name in losses:
        if name not in known:
            raise ValueError(
                f"Loss for unknown task {name!r}.{did_you_mean(name, task_names)} "
                f"This balancer was built for tasks {list(task_names)}."
            )
    names = [n for n in task_names if n in losses]
    for name in names:
        loss = losses[name]
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"The loss of task {name!r} is a {type(loss).__name__}; pass the loss tensor with its graph."
            )
        if loss.numel() != 1:
            raise ValueError(
                f"The loss of task {name!r} has shape {list(loss.shape)}; it must be a scalar: "
                "reduce it over the batch first, e.g. loss.mean()."
            )
        if not loss.is_floating_point():
            raise TypeError(f"The loss of task {name!r} has dtype {loss.dtype}; losses must be floating point.")
        if not loss.requires_grad:
            raise ValueError(
                f"The loss of task {name!r} does not require grad: it was computed under torch.no_grad() or "
                "from detached outputs. Compute it from the model's outputs with autograd enabled."
            )
    dtype = losses[names[0]].dtype
    for name in names[1:]:
        dtype = torch.promote_types(dtype, losses[name].dtype)
    stacked = torch.stack([losses[n].reshape(()).to(dtype) for n in names])
    values = stacked.detach().to(_CPU, torch.float64)
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        name = names[int(bad[0])]
        raise ValueError(
            f"The loss of task {name!r} is {values[int(bad[0])].item()} (not finite). Lower the learning rate, "
            f"clip gradients (torch.nn.utils.clip_grad_norm_), or check the targets of {name!r} for NaN, "
            "infinite or out-of-range values."
        )
    return names, stacked, values


def fast_stack(losses: Mapping[str, Tensor], task_names: Sequence[str]) -> tuple[list[str] | None, Tensor | None]:
    """``(names, L)`` as :func:`check_losses` returns them, after only the checks a valid step needs
    (no host copy of the values); ``(None, None)`` when a check fails: :func:`check_losses` then says why."""
    if not isinstance(losses, Mapping) or not losses:
        return None, None
    names = [n for n in task_names if n in losses]
    if len(names) != len(losses):
        return None, None
    items = [losses[n] for n in names]
    dtype = items[0].dtype if isinstance(items[0], Tensor) else None
    for loss in items:
        if (
            not isinstance(loss, Tensor)
            or loss.dim() != 0
            or loss.dtype != dtype
            or not loss.requires_grad
            or not loss.is_floating_point()
        ):
            return None, None
    stacked = torch.stack(items)
    if not bool(torch.isfinite(stacked.detach()).all()):
        return None, None
    return names, stacked


def _require_positive(method: str, values: Tensor, names: Sequence[str], what: str = "loss") -> None:
    low = (values <= 0).nonzero()
    if len(low):
        task = names[int(low[0])]
        raise ValueError(
            f"{method} takes the logarithm of the losses, but the {what} of task {task!r} is "
            f"{values[int(low[0])].item():.6g}. Use it with positive losses (cross-entropy, MSE, L1), "
            "or choose 'ew' or 'uw'."
        )


class Combined(NamedTuple):
    """What a loss weighting hands to the balancer for one batch."""

    total: Tensor  #: the scalar objective to differentiate
    value: float  #: the objective's value at the (rank-averaged) loss values
    weights: Tensor  #: CPU float64 ``[k]``: d objective / d loss of each present task
    grad_norms: Tensor | None  #: CPU float64 ``[k]`` per-task gradient norms, if the method computed them


class Weighting:
    """Common base: the tasks, and the state/parameter protocol used for checkpoints and optimizers."""

    #: ``True`` for methods that rescale per-task gradients (run through the Jacobian path).
    requires_jacobian: bool = False

    def __init__(self, tasks: TaskList) -> None:
        self.tasks = task_dict(tasks)
        self.task_names = list(self.tasks)
        self.n_tasks = len(self.task_names)
        self._index = {n: i for i, n in enumerate(self.task_names)}

    def indices(self, names: Sequence[str]) -> Tensor:
        return torch.tensor([self._index[n] for n in names], dtype=torch.long)

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters the optimizer must update (``[]`` when the method has none)."""
        return []

    def on_epoch_end(self) -> None:
        """Close an epoch (methods using per-epoch statistics); a no-op otherwise."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - set(self.state_dict())
        if extra:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected keys {sorted(extra)}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tasks={self.task_names})"


class LossWeighting(Weighting):
    """A scalar function of the task losses (see the module docstring for the construction)."""

    def __call__(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor] = ()) -> Tensor:
        """The combined objective of ``{task: loss}`` (tasks absent from the batch are left out)."""
        names, stacked, values = check_losses(losses, self.task_names)
        return self.combine(names, stacked, values, shared_params).total

    def combine(
        self, names: Sequence[str], losses: Tensor, values: Tensor, shared_params: Sequence[Tensor] = ()
    ) -> Combined:
        """Objective and weights for the present tasks ``names``: stacked ``losses [k]`` and their CPU
        ``values`` (as returned by :func:`check_losses`)."""
        index = self.indices(names)
        # Under DDP the values are averaged on the losses' device (NCCL needs it); alone, on the CPU.
        rows = losses.detach() if world_size() > 1 else values
        means, counts = global_task_means(rows, index, self.n_tasks)
        values = means.to(_CPU, torch.float64)
        counts = counts.to(_CPU)
        present = counts.nonzero().squeeze(1)
        self._observe(values, present)
        v = values[present].clone().requires_grad_()
        f = self._scalarize(v, present)
        (w_all,) = torch.autograd.grad(f, v, retain_graph=True)
        position = {int(t): j for j, t in enumerate(present)}
        local = torch.tensor([position[int(t)] for t in index], dtype=torch.long)
        weights = w_all[local]
        # Each rank's loss enters DDP's average over all ranks; the concatenated batch averages a task
        # over the ranks that have it: rescale by world / count (1 without DDP).
        scale = world_size() / counts[index].to(torch.float64)
        w_model = (weights * scale).to(device=losses.device, dtype=losses.dtype)
        rest = (f - (w_all * v.detach()).sum()).to(device=losses.device, dtype=losses.dtype)
        total = (w_model * losses).sum() + rest
        return Combined(total, float(f.detach()), weights.detach(), self._grad_norms(index))

    def direct(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Any] | None:
        """``(objective, weights)`` written directly in the losses ``[k]`` of the tasks at positions
        ``index``, for one process and methods linear in the losses: the same value and gradients as
        :meth:`combine` without its detour through the detached values. ``weights()`` gives the CPU
        float64 weights when read. ``None``: the method has no direct form (use :meth:`combine`)."""
        return None

    def _observe(self, values: Tensor, present: Tensor) -> None:
        """Update statistics with the (rank-averaged) loss values ``values[present]``; default: none."""

    def _scalarize(self, v: Tensor, present: Tensor) -> Tensor:
        """``f`` of the loss values ``v`` of the tasks at positions ``present`` (differentiable in ``v``)."""
        raise NotImplementedError

    def _grad_norms(self, index: Tensor) -> Tensor | None:
        return None


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


class GradientWeighting(Weighting):
    """A weighting that rescales per-task gradients of transformed losses (the Jacobian path)."""

    requires_jacobian = True

    def transform(self, losses: Tensor, values: Tensor, names: Sequence[str]) -> Tensor:
        """The per-task objectives whose gradients form the Jacobian (``values``: CPU loss values)."""
        raise NotImplementedError

    def aggregate(self, jacobian: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """``(update [P], weights [k])`` from the Jacobian rows of the tasks at positions ``present``."""
        raise NotImplementedError


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


#: Loss weighting methods by name; ``WEIGHTINGS[name](tasks, **settings)``.
WEIGHTINGS: dict[str, type[Weighting]] = {
    "ew": EqualWeighting,
    "static": StaticWeighting,
    "uw": UncertaintyWeighting,
    "dwa": DWA,
    "rlw": RLW,
    "gls": GLS,
    "imtl_l": IMTLL,
    "db_mtl": DBMTL,
    "famo": FAMO,
    "gradnorm": GradNorm,
    "stch": STCH,
}
