r"""Per-task metrics (on torchmetrics) and the multi-task score :math:`\Delta_m`.

**Metrics.** :class:`MultiTaskMetrics` keeps one :class:`TaskMetrics` per task. ``update(outputs,
targets, masks)`` takes the model's raw outputs (logits: :func:`hydranet.tasks.probabilities` maps them) and a
collated batch's targets and masks, and accumulates over the labelled samples only; ``compute()``
returns ``{task: {metric: float}}``. Metric names come from one registry, :data:`METRICS`, with the same
meaning for every task kind:

==========  ===================================================  =============================
name        binary / multiclass / multilabel                     regression
==========  ===================================================  =============================
accuracy    fraction correct (micro) / per-label mean (macro)    -
f1          F1 of class 1 / macro over classes / macro           -
precision   like f1                                              -
recall      like f1                                              -
auroc       ROC AUC / macro one-vs-rest / macro over labels      -
ap          average precision, averaged like auroc               -
mae         -                                                    mean absolute error
mse         -                                                    mean squared error
rmse        -                                                    root mean squared error
r2          -                                                    R², averaged over outputs
==========  ===================================================  =============================

(binary and multilabel predictions are thresholded at probability 0.5.) ``auroc`` and ``ap`` are exact:
they keep every prediction of the epoch.

**Distributed.** Every state is a torchmetrics state, so ``compute()`` all-gathers and reduces each
state when ``torch.distributed`` is initialised (sums for counts, concatenation for the kept
predictions): ``compute()`` and ``confusion_matrices()`` are collective calls, every rank calls them.
A rank that saw no labelled sample of a task still takes part: its states are given their shape with
an empty batch first, because torchmetrics would otherwise gather mismatched shapes.

**Δm.** For tasks (or metrics) :math:`k = 1..K` with multi-task score :math:`M_k`, single-task baseline
:math:`B_k` and :math:`s_k = 1` if lower is better (else 0),

.. math:: \Delta_m = \frac{100}{K} \sum_{k=1}^{K} (-1)^{s_k} \frac{M_k - B_k}{|B_k|}  \quad [\%]

(Maninis et al., 2019; Liu et al., 2021). Positive means the multi-task model is better on average.
See :func:`delta_m` for how several metrics per task are averaged.
"""


from __future__ import annotations

from hydranet.metrics._delta import delta_m, relative_change
from hydranet.metrics._specs import DEFAULT_METRICS, METRICS, MetricSpec, higher_is_better, main_metric, metric_names
from hydranet.metrics._task import MultiTaskMetrics, TaskMetrics

__all__ = [
    "METRICS",
    "DEFAULT_METRICS",
    "MetricSpec",
    "higher_is_better",
    "metric_names",
    "main_metric",
    "TaskMetrics",
    "MultiTaskMetrics",
    "relative_change",
    "delta_m",
]
