"""Relative change and the multi-task performance Δm against single-task baselines (in percent)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from hydranet.metrics._specs import higher_is_better

__all__ = ["relative_change", "delta_m"]


# ----------------------------------------------------------------------------------------------- Δm

Key = tuple[str, "str | None"]


def _check_value(value: Any, what: str, key: Key) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} of {_show(key)} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} of {_show(key)} is {number}; Δm needs finite scores and baselines.")
    return number


def _show(key: Key) -> str:
    return key[0] if key[1] is None else f"{key[0]}/{key[1]}"


def _flatten(values: Mapping[Any, Any], what: str) -> dict[Key, Any]:
    """``{task: v}``, ``{(task, metric): v}``, ``{"task/metric": v}`` or ``{task: {metric: v}}`` ->
    ``{(task, metric or None): v}``."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a mapping, got {type(values).__name__}.")
    flat: dict[Key, Any] = {}
    for key, value in values.items():
        items: list[tuple[Key, Any]]
        if isinstance(value, Mapping):
            if not isinstance(key, str):
                raise TypeError(f"{what}: nested mappings must be keyed by task name, got {key!r}.")
            items = [((key, str(metric)), v) for metric, v in value.items()]
        elif isinstance(key, tuple) and len(key) == 2:
            items = [((str(key[0]), str(key[1])), value)]
        elif isinstance(key, str):
            task, sep, metric = key.partition("/")
            items = [((task, metric if sep else None), value)]
        else:
            raise TypeError(f"{what}: keys must be task names, 'task/metric' strings or (task, metric) pairs; got {key!r}.")
        for flat_key, v in items:
            if flat_key in flat:
                raise ValueError(f"{what}: {_show(flat_key)} is given twice.")
            flat[flat_key] = v
    return flat


def _direction(hib: Mapping[Key, Any] | bool | None, key: Key) -> bool:
    if isinstance(hib, bool):
        return hib
    if hib is None:
        if key[1] is None:
            raise ValueError(
                f"Cannot tell whether higher is better for task {key[0]!r} (no metric name): pass "
                "higher_is_better={task: bool} or key the scores by 'task/metric'."
            )
        return higher_is_better(key[1])
    if key not in hib:
        raise ValueError(f"higher_is_better has no entry for {_show(key)}.")
    value = hib[key]
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"higher_is_better of {_show(key)} must be a bool, got {value!r}.")
    return bool(value)


def relative_change(score: float, baseline: float, higher_is_better: bool) -> float:
    r"""Signed relative improvement over a baseline, in percent:
    :math:`100 \cdot (-1)^{s} (M - B) / |B|`, with :math:`s = 1` when lower is better.

    Positive means better than the baseline. Raises if the baseline is 0 (undefined) or a value is
    not finite.
    """
    key: Key = ("score", None)
    score, baseline = _check_value(score, "score", key), _check_value(baseline, "baseline", key)
    return _relative(score, baseline, bool(higher_is_better), key)


def _relative(score: float, baseline: float, hib: bool, key: Key) -> float:
    if baseline == 0:
        raise ValueError(
            f"The baseline of {_show(key)} is 0, so its relative change is undefined. Use a metric whose "
            "baseline is not 0 for Δm (e.g. accuracy or AUROC instead of an F1 of 0, RMSE instead of an "
            "error of exactly 0), or leave this entry out of the baselines."
        )
    change = (score - baseline) / abs(baseline) * 100.0
    return change if hib else -change


def delta_m(
    scores: Mapping[Any, Any],
    baselines: Mapping[Any, Any],
    higher_is_better: Mapping[Any, Any] | bool | None = None,
    *,
    per: Literal["task", "metric"] = "task",
) -> float:
    r"""The multi-task score :math:`\Delta_m`, in percent (positive: better than the baselines).

    .. math:: \Delta_m = \frac{100}{K} \sum_{k=1}^{K} (-1)^{s_k} \frac{M_k - B_k}{|B_k|}

    with :math:`s_k = 1` if lower is better for entry :math:`k`, else 0 (:math:`|B_k| = B_k` for the
    usual positive scores; the absolute value keeps "better" positive for a negative R² baseline).

    Args:
        scores: multi-task scores :math:`M`. Keys are task names (one number per task, e.g. its main
            metric), or ``(task, metric)`` pairs, or ``"task/metric"`` strings; ``{task: {metric: v}}``
            (what :meth:`MultiTaskMetrics.compute` returns) is read as ``(task, metric)`` pairs.
        baselines: single-task scores :math:`B`, keyed the same way. Δm is over the entries of
            ``baselines``; each must be in ``scores`` (extra scores are ignored).
        higher_is_better: one bool for all entries, or a mapping keyed like ``baselines``; ``None``
            reads it from the metric registry by metric name (needs metric-keyed entries).
        per: how entries are averaged when a task has several metrics.

            * ``"task"`` (hydranet's default): average each task's relative changes first, then average
              over tasks, so every task counts the same however many metrics it reports.
            * ``"metric"``: one plain average over all (task, metric) entries, the per-metric average
              of Maninis et al. (2019) and Liu et al. (2021), where a task with more metrics weighs more.

            With one metric per task both are equal. Example: task ``a`` with one metric at +6% and
            task ``b`` with three metrics at -2% each: ``per="task"`` gives (6 + (-2)) / 2 = +2%,
            ``per="metric"`` gives (6 - 2 - 2 - 2) / 4 = 0%.

    Raises:
        ValueError: a baseline is 0 (relative change undefined), a baseline entry is missing from
            ``scores`` or from ``higher_is_better``, a value is NaN or infinite, or there are no baselines.
    """
    if per not in ("task", "metric"):
        raise ValueError(f"per must be 'task' or 'metric', got {per!r}.")
    flat_baselines = _flatten(baselines, "baselines")
    if not flat_baselines:
        raise ValueError("baselines is empty: give at least one task's single-task score.")
    flat_scores = _flatten(scores, "scores")
    missing = [_show(k) for k in flat_baselines if k not in flat_scores]
    if missing:
        have = ", ".join(sorted(_show(k) for k in flat_scores))
        raise ValueError(f"scores lack {missing}, which baselines give; scores have: {have}.")
    hib = higher_is_better if isinstance(higher_is_better, bool) or higher_is_better is None else _flatten(
        higher_is_better, "higher_is_better"
    )

    changes: dict[Key, float] = {}
    for key, baseline in flat_baselines.items():
        b = _check_value(baseline, "the baseline", key)
        m = _check_value(flat_scores[key], "the score", key)
        changes[key] = _relative(m, b, _direction(hib, key), key)
    if per == "metric":
        return float(np.mean(list(changes.values())))
    by_task: dict[str, list[float]] = {}
    for (task, _), change in changes.items():
        by_task.setdefault(task, []).append(change)
    return float(np.mean([np.mean(values) for values in by_task.values()]))
