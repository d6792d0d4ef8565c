r"""DSelect-k (Hazimeh et al., NeurIPS 2021): mixtures of experts with differentiable top-k selection.

**Smooth-step.** For :math:`\gamma > 0`,

.. math::

    S(t) = \begin{cases} 0 & t \le -\gamma/2 \\
    -\frac{2}{\gamma^3} t^3 + \frac{3}{2\gamma} t + \frac12 & -\gamma/2 < t < \gamma/2 \\
    1 & t \ge \gamma/2 \end{cases}

a cubic that joins 0 and 1 with zero slope at both ends: continuously differentiable, and exactly 0 or
1 outside :math:`[-\gamma/2, \gamma/2]`, where its gradient vanishes too.

**Single-expert selector.** With :math:`n` experts and :math:`m = \lceil \log_2 n \rceil` binary
variables :math:`z \in \mathbb{R}^m`, expert :math:`i` (binary code :math:`b_i`, most significant bit
first) gets

.. math:: r_i(z) = \prod_{l=1}^{m} S(z_l)^{b_{il}}\, \big(1 - S(z_l)\big)^{1 - b_{il}}

so :math:`r(z)` lies on the simplex over the :math:`2^m` codes, and is one-hot once every :math:`S(z_l)`
is 0 or 1.

**Gate.** :math:`k` selectors :math:`z^{(1)}, \dots, z^{(k)}` and selector weights
:math:`\alpha \in \mathbb{R}^k`:

.. math:: q = \sum_{j=1}^{k} \mathrm{softmax}(\alpha)_j\, r(z^{(j)}), \qquad y = \sum_{i=1}^{n} q_i E_i(u)

When every selector is binary, :math:`q` has at most :math:`k` non-zeros: training drives the gate to a
k-sparse mixture. Per-example gates (``per_example=True``, the paper's example-conditioned routing)
compute :math:`z = Z u + c` and :math:`\alpha = A u + a` from the gate input :math:`u`; static gates
learn :math:`z` and :math:`\alpha` directly (task-only routing).

**Regularisation** (:meth:`DSelectK.regularization`, as in the authors' implementation): an entropy
term :math:`\lambda \cdot \big(-\sum r \log(r + 10^{-6})\big)` over every selector (and every example,
summed) speeds up the convergence to binary selectors; when :math:`n` is not a power of two, the term
:math:`\sum 1 / \sum_{i \le n} r_i` keeps the selectors off the :math:`2^m - n` codes that name no
expert. :class:`hydranet.train.Step` adds it to the training objective (outside the task balancing:
it is not a task); in a loop of your own, add it to the losses: without it and with :math:`n \ne 2^m`,
a selector may settle on a code with no expert and the mixture weights then sum to less than one.

Defaults follow the reference implementation (google-research ``dselect_k_moe``): :math:`\gamma = 1`,
:math:`z` initialised :math:`U(-\gamma/100, \gamma/100)` (weights and biases of per-example gates),
:math:`\alpha` :math:`U(-0.05, 0.05)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from hydranet.models.experts import MMoE
from hydranet.models.hydra import TaskSelection
from hydranet.tasks import Task, TaskDict

__all__ = ["smooth_step", "binary_codes", "DSelectGate", "DSelectK"]

_EPSILON = 1e-6  # inside the entropy's logarithm, as in the reference implementation


def smooth_step(t: Tensor, gamma: float = 1.0) -> Tensor:
    r"""The smooth-step function :math:`S_\gamma(t)` of DSelect-k (see the module docstring)."""
    cubic = (-2.0 / gamma**3) * t**3 + (3.0 / (2.0 * gamma)) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def binary_codes(num_experts: int) -> Tensor:
    """``[num_experts, ceil(log2 num_experts)]`` booleans: row ``i`` is ``i`` in binary, most significant bit first."""
    bits = max(1, math.ceil(math.log2(num_experts)))
    shifts = torch.arange(bits - 1, -1, -1)
    return (torch.arange(num_experts).unsqueeze(1) >> shifts) & 1 == 1


class DSelectGate(nn.Module):
    r"""A DSelect-k gate over ``num_experts`` experts with ``k`` single-expert selectors.

    Args:
        num_experts: :math:`n \ge 2`.
        k: number of selectors (at most :math:`k` experts remain selected).
        gamma: width of the smooth-step's cubic part.
        in_features: size of the gate input :math:`u` for a per-example gate; ``None`` for a static gate.

    ``selectors(u)`` is :math:`r(z^{(j)})` for every selector (``[B, k, n]``, or ``[k, n]`` static);
    ``forward(u)`` the expert weights :math:`q` (``[B, n]``, or ``[n]`` static).
    """

    codes: Tensor  # [n, m] bool buffer: the binary code of each expert

    def __init__(self, num_experts: int, k: int, gamma: float = 1.0, in_features: int | None = None) -> None:
        super().__init__()
        if not (isinstance(num_experts, int) and not isinstance(num_experts, bool) and num_experts >= 2):
            raise ValueError(f"DSelect-k needs num_experts >= 2 to select from, got {num_experts!r}.")
        if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= num_experts):
            raise ValueError(f"DSelect-k: k must be an integer in [1, num_experts={num_experts}], got {k!r}.")
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma > 0):
            raise ValueError(f"DSelect-k: gamma must be a positive number, got {gamma!r}.")
        self.num_experts, self.k, self.gamma = num_experts, k, float(gamma)
        self.register_buffer("codes", binary_codes(num_experts), persistent=False)
        self.bits = int(self.codes.shape[1])
        self.power_of_two = num_experts == 2**self.bits
        self.per_example = in_features is not None
        bound = self.gamma / 100
        if in_features is None:
            self.z = nn.Parameter(torch.empty(k, self.bits).uniform_(-bound, bound))
            self.alpha = nn.Parameter(torch.empty(k).uniform_(-0.05, 0.05))
        else:
            self.z_layer = nn.Linear(in_features, k * self.bits)
            self.alpha_layer = nn.Linear(in_features, k)
            for p in self.z_layer.parameters():
                nn.init.uniform_(p, -bound, bound)
            for p in self.alpha_layer.parameters():
                nn.init.uniform_(p, -0.05, 0.05)

    def logits(self, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(z [.., k, m], alpha [.., k])``: the selectors' binary logits and the selector-weight logits."""
        if not self.per_example:
            return self.z, self.alpha
        if u is None:
            raise ValueError("A per-example DSelect-k gate needs its input u.")
        flat = u.flatten(1)
        return self.z_layer(flat).view(-1, self.k, self.bits), self.alpha_layer(flat)

    def selectors(self, u: Tensor | None = None) -> Tensor:
        r""":math:`r(z^{(j)})` for each selector ``j``: ``[B, k, n]`` (per-example) or ``[k, n]`` (static)."""
        z, _ = self.logits(u)
        s = smooth_step(z, self.gamma).unsqueeze(-2)  # [.., k, 1, m] against codes [n, m]
        return torch.where(self.codes, s, 1 - s).prod(-1)

    def forward(self, u: Tensor | None = None) -> Tensor:
        r"""The expert weights :math:`q = \sum_j \mathrm{softmax}(\alpha)_j r(z^{(j)})`: ``[B, n]`` or ``[n]``."""
        z, alpha = self.logits(u)
        s = smooth_step(z, self.gamma).unsqueeze(-2)
        r = torch.where(self.codes, s, 1 - s).prod(-1)
        return (torch.softmax(alpha, dim=-1).unsqueeze(-1) * r).sum(-2)

    def regularization(self, u: Tensor | None = None, entropy_reg: float = 0.0) -> Tensor:
        r"""``entropy_reg`` times the selectors' entropy, plus :math:`\sum 1/\sum_i r_i` when :math:`n \ne 2^m`."""
        if not entropy_reg and self.power_of_two:  # nothing to add: skip the selectors
            return self.z.new_zeros(()) if not self.per_example else self.z_layer.weight.new_zeros(())
        r = self.selectors(u)
        loss = r.new_zeros(())
        if entropy_reg:
            loss = loss + entropy_reg * -(r * torch.log(r + _EPSILON)).sum()
        if not self.power_of_two:
            loss = loss + (1.0 / r.sum(-1)).sum()
        return loss

    def extra_repr(self) -> str:
        kind = "per_example" if self.per_example else "static"
        return f"num_experts={self.num_experts}, k={self.k}, gamma={self.gamma}, {kind}"


class DSelectK(MMoE):
    r"""MMoE with DSelect-k gates (Hazimeh et al., NeurIPS 2021): each task mixes at most ``k`` shared experts.

    .. math:: \hat y_t = h_t\Big(\sum_{i=1}^{n} q^{t}_i(u)\, E_i(u)\Big)

    with :math:`q^t` the task's DSelect-k gate (see the module docstring). Shared: the bottom and the
    experts; task-specific: the task's gate and head. ``features`` are those of :class:`MMoE` (the
    expert outputs, then the gate input :math:`u`), so representation-level balancing applies as for
    MMoE.

    Args:
        tasks, bottom: as for :class:`~hydranet.models.MMoE`.
        num_experts: :math:`n \ge 2` shared experts.
        k: experts each task keeps (``1 <= k <= num_experts``).
        gamma: smooth-step width (1.0 in the paper's code).
        entropy_reg: :math:`\lambda` of the entropy term of :meth:`regularization` (0: off).
        per_example: example-conditioned gates (``True``) or one static selection per task (``False``).
        **kwargs: the other arguments of :class:`~hydranet.models.PLE` (experts, heads, sizes).

    Training: :class:`hydranet.train.Step` (the Trainer, the Lightning module) adds
    :meth:`regularization` to the objective itself and reports it as ``regularization``. In a loop of
    your own, add ``model.regularization(features)`` to the task losses (the entropy term, and the
    reachability term that is required when ``num_experts`` is not a power of two)::

        outputs, features = model(x, return_features=True)
        losses = {t: losses[t] + r for t, r in model.regularization(features, list(losses)).items()}
    """

    def __init__(
        self,
        tasks: Iterable[Task] | Mapping[str, Task],
        bottom: nn.Module | None = None,
        *,
        num_experts: int = 4,
        k: int = 2,
        gamma: float = 1.0,
        entropy_reg: float = 0.0,
        per_example: bool = True,
        **kwargs: Any,
    ) -> None:
        if not (isinstance(entropy_reg, (int, float)) and not isinstance(entropy_reg, bool) and entropy_reg >= 0):
            raise ValueError(f"DSelectK: entropy_reg must be a number >= 0, got {entropy_reg!r}.")
        if not isinstance(per_example, bool):
            raise TypeError(f"DSelectK: per_example must be True or False, got {per_example!r}.")
        DSelectGate(num_experts, k, gamma)  # validates before the experts are built
        super().__init__(tasks, bottom, num_experts=num_experts, **kwargs)
        self.k, self.gamma, self.entropy_reg = k, float(gamma), float(entropy_reg)
        width = self.input_size if per_example else None
        self._levels()[0].gates = TaskDict({t: DSelectGate(num_experts, k, gamma, width) for t in self.task_names})
        self._check_partition()

    @property
    def gates(self) -> TaskDict:
        """The DSelect-k gate of each task."""
        return self._levels()[0].gates

    def expert_weights(self, features: Tensor, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """``{task: q [batch, n]}``, the mixture weights each task's gate gives the experts."""
        names = self.select_tasks(tasks)
        _, inputs = self._top_inputs(features, names)
        out = {}
        for t in names:
            q = self.gates[t](inputs[t].flatten(1))
            out[t] = q.expand(inputs[t].shape[0], -1) if q.ndim == 1 else q
        return out

    def heads_from_features(self, features: Tensor, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """Each task's head on its DSelect-k mixture of the experts, from :meth:`features`' output."""
        names = self.select_tasks(tasks)
        experts, _ = self._top_inputs(features, names)
        weights = self.expert_weights(features, names)
        return {t: self._head(t, torch.einsum("bn,bnh->bh", weights[t].to(experts.dtype), experts)) for t in names}

    def regularization(self, features: Tensor, tasks: TaskSelection = None) -> dict[str, Tensor]:
        """``{task: scalar}``: each task's gate regulariser (see the module docstring), to add to its loss."""
        names = self.select_tasks(tasks)
        _, inputs = self._top_inputs(features, names)
        gates = {t: cast(DSelectGate, self.gates[t]) for t in names}
        return {t: gates[t].regularization(inputs[t].flatten(1), self.entropy_reg) for t in names}
