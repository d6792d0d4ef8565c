r"""Gradient aggregators: map the task Jacobian :math:`G \in \mathbb{R}^{T\times P}` to one update :math:`d \in \mathbb{R}^P`.

Row :math:`i` of :math:`G` is task :math:`i`'s gradient with respect to the shared parameters (or the
shared features). ``AGGREGATORS[name](**settings)`` builds one; ``agg(G)`` returns the update in
:math:`G`'s dtype and on its device; weightings of the rows also give ``agg.weights(G)`` with
``agg.weights(G) @ G == agg(G)``.

===============  ======================================  =================================================
name             class                                    scale of the update
===============  ======================================  =================================================
``mean``         :class:`Mean`                            mean of the gradients
``sum``          :class:`Sum`                             sum of the gradients
``pcgrad``       :class:`PCGrad`                          sum of the projected gradients
``gradvac``      :class:`GradVac`                         sum of the edited gradients
``graddrop``     :class:`GradDrop`                        sum of the kept gradient entries
``mgda``         :class:`MGDA`                            convex combination (min-norm point of the hull)
``cagrad``       :class:`CAGrad`                          mean-gradient scale, / (1 + c^2) by default
``imtl_g``       :class:`IMTLG`                           affine combination (weights sum to 1)
``nash_mtl``     :class:`NashMTL`                         norm sqrt(T), clipped to ``max_norm`` = 1
``aligned_mtl``  :class:`AlignedMTL`                      sum of the aligned gradients
``upgrad``       :class:`UPGrad`                          mean of the projections onto the dual cone
``dualproj``     :class:`DualProj`                        projection of the mean onto the dual cone
``config``       :class:`ConFIG`                          sum of the projections on the common direction
``fairgrad``     :class:`FairGrad`                        unnormalised (g_i . d = w_i^(-1/alpha))
``moco``         :class:`MoCo`                            convex combination of tracked gradients
``excess_mtl``   :class:`ExcessMTL`                       weights sum to T
``constant``     :class:`Constant`                        the given weights (default 1/T)
``random``       :class:`Random`                          convex combination (random softmax weights)
``krum``         :class:`Krum`                            mean of the selected rows
``trimmed_mean`` :class:`TrimmedMean`                     coordinate-wise trimmed mean
``modo``         :class:`MoDo`                            convex combination (tracked weights)
``sdmgrad``      :class:`SDMGrad`                         convex combination (tracked weights)
``pcd``          :class:`PCD`                             norm of the primary task's gradient
``cr_mogm``      :class:`CRMOGM`                          the wrapped method's (smoothed weights)
===============  ======================================  =================================================

Every constructor works without arguments and takes ``normalize=False`` (unit-norm rows first).
When the rows are only some of the tasks, ``agg(G, present=mask)`` says which (the methods with
per-task state, GradVac, Nash-MTL, MoCo and ExcessMTL, then update the present tasks' state only). Each
class's docstring gives the formula, the guarantee, the state and the cost; ``docs/aggregators.md``
compares them.
"""

from __future__ import annotations

from hydranet.balancing.aggregators._constant import Constant, Random
from hydranet.balancing.aggregators._priority import PCD
from hydranet.balancing.aggregators._registry import AGGREGATORS, get_aggregator
from hydranet.balancing.aggregators._robust import Krum, TrimmedMean
from hydranet.balancing.aggregators._smoothing import CRMOGM
from hydranet.balancing.aggregators._stochastic import MoDo, SDMGrad
from hydranet.balancing.aggregators.bargaining import FairGrad, NashMTL
from hydranet.balancing.aggregators.base import (
    Aggregator,
    NonFiniteJacobianError,
    Present,
    Randomized,
    TaskRows,
    WeightedAggregator,
    check_matrix,
)
from hydranet.balancing.aggregators.basic import Mean, Sum
from hydranet.balancing.aggregators.equalizing import IMTLG, AlignedMTL, ConFIG
from hydranet.balancing.aggregators.pareto import MGDA, CAGrad, DualProj, UPGrad
from hydranet.balancing.aggregators.surgery import GradDrop, GradVac, PCGrad
from hydranet.balancing.aggregators.tracking import ExcessMTL, MoCo

# The registry lives in _registry (a wrapper such as CRMOGM builds its wrapped method from it); filled here,
# once every family module has loaded.
AGGREGATORS.update({
    "mean": Mean,
    "sum": Sum,
    "pcgrad": PCGrad,
    "gradvac": GradVac,
    "graddrop": GradDrop,
    "mgda": MGDA,
    "cagrad": CAGrad,
    "imtl_g": IMTLG,
    "nash_mtl": NashMTL,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "config": ConFIG,
    "fairgrad": FairGrad,
    "moco": MoCo,
    "excess_mtl": ExcessMTL,
    "constant": Constant,
    "random": Random,
    "krum": Krum,
    "trimmed_mean": TrimmedMean,
    "modo": MoDo,
    "sdmgrad": SDMGrad,
    "pcd": PCD,
    "cr_mogm": CRMOGM,
})


__all__ = [
    "AGGREGATORS",
    "CRMOGM",
    "PCD",
    "SDMGrad",
    "Constant",
    "Krum",
    "MoDo",
    "Random",
    "TrimmedMean",
    "IMTLG",
    "MGDA",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "Mean",
    "MoCo",
    "NashMTL",
    "PCGrad",
    "Present",
    "Randomized",
    "Sum",
    "TaskRows",
    "UPGrad",
    "WeightedAggregator",
    "NonFiniteJacobianError",
    "check_matrix",
    "get_aggregator",
]
