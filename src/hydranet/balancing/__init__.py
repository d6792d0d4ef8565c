"""Balancing several task losses into one update of the shared parameters.

Two families, one namespace:

* **loss weightings** (:data:`WEIGHTINGS`): combine the task losses into ``sum_i w_i L_i`` (or another
  scalar) and run one ordinary backward — equal, static, uncertainty, DWA, RLW, GLS, IMTL-L, FAMO,
  GradNorm, STCH; DB-MTL rescales per-task gradients and therefore uses the Jacobian path;
* **gradient aggregators** (:data:`AGGREGATORS`): compute the per-task gradients ``G [T, P]`` of the
  shared parameters (:mod:`hydranet.balancing.jacobian`) and map them to one update direction.

:func:`make` builds a :class:`Balancer` for either; ``balancer.backward(losses, shared_params,
task_params)`` sets ``.grad`` like ``loss.backward()`` would.
"""

from hydranet.balancing.aggregators import AGGREGATORS
from hydranet.balancing.balancer import Balancer, make
from hydranet.balancing.weighting import WEIGHTINGS, MetaContext

__all__ = ["AGGREGATORS", "WEIGHTINGS", "Balancer", "MetaContext", "make"]
