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

The classes live in private modules by family (``_weighting_base``: the bases; ``_weighting_loss``: the
losses alone; ``_weighting_gradient``: GradNorm, DB-MTL; ``_weighting_preference``, ``_weighting_imtl``,
``_weighting_bilevel``) and are all importable from here.
"""
from __future__ import annotations

from hydranet.balancing._weighting_base import Combined, GradientWeighting, LossWeighting, TaskList, Weighting
from hydranet.balancing._weighting_bilevel import AutoLambda, MetaContext
from hydranet.balancing._weighting_gradient import DBMTL, GradNorm
from hydranet.balancing._weighting_imtl import IMTL
from hydranet.balancing._weighting_loss import (
    DWA,
    FAMO,
    GLS,
    IMTLL,
    RLW,
    STCH,
    EqualWeighting,
    StaticWeighting,
    UncertaintyWeighting,
)
from hydranet.balancing._weighting_preference import COSMOS, PBI

__all__ = [
    "COSMOS",
    "DBMTL",
    "DWA",
    "FAMO",
    "GLS",
    "IMTL",
    "IMTLL",
    "PBI",
    "RLW",
    "STCH",
    "WEIGHTINGS",
    "AutoLambda",
    "Combined",
    "EqualWeighting",
    "GradNorm",
    "GradientWeighting",
    "LossWeighting",
    "MetaContext",
    "StaticWeighting",
    "TaskList",
    "UncertaintyWeighting",
    "Weighting",
]


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
    "cosmos": COSMOS,
    "pbi": PBI,
    "imtl": IMTL,
    "auto_lambda": AutoLambda,
}
