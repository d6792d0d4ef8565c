"""The report folder of a run: :func:`write_report` writes ``summary.md`` (main metric per task, its
baseline, relative change and Δm), ``metrics.json``, ``history.json`` and, with the ``report`` extra
(matplotlib), the figures of :mod:`hydranet.report.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hydranet.metrics import delta_m, main_metric, relative_change
from hydranet.report.history import History, as_history, dumps, floats
from hydranet.report.plots import direction, plot_all, plot_comparison
from hydranet.tasks import Task, as_task_dict

__all__ = ["Report", "write_report"]


@dataclass
class Report:
    """Paths of a written report, and its Δm (``None`` without baselines)."""

    out_dir: Path
    summary: Path
    metrics_json: Path
    history_json: Path
    figures: dict[str, Path]
    delta_m: float | None
    delta_m_per_metric: float | None

    def console_text(self) -> str:
        """``summary.md`` for a terminal: the tables, then the figure files by name instead of image links."""
        text = self.summary.read_text()
        tables = text.split("\n## Figures", 1)[0].rstrip()
        if self.figures:
            tables += "\n\nfigures: " + ", ".join(path.name for path in self.figures.values())
        return tables + "\n"


def _nested(values: Mapping[Any, Any], what: str) -> dict[str, dict[str, float]]:
    """``{task: {metric: v}}`` from that form, ``{(task, metric): v}`` or ``{"task/metric": v}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.setdefault(str(key), {}).update({str(m): v for m, v in value.items()})
            continue
        if isinstance(key, tuple) and len(key) == 2:
            task, metric = key
        elif isinstance(key, str) and "/" in key:
            task, _, metric = key.partition("/")
        else:
            raise ValueError(f"{what}: {key!r} names no metric; use {{task: {{metric: value}}}} or 'task/metric' keys.")
        out.setdefault(str(task), {})[str(metric)] = value
    return out


def _main_names(
    scores: Mapping[str, Mapping[str, float]], tasks: Mapping[str, Task], chosen: Mapping[str, str]
) -> dict[str, str]:
    names: dict[str, str] = {}
    for task, values in scores.items():
        if task in chosen:
            name = chosen[task]
        elif task in tasks and (tasks[task].metrics is None or len(tasks[task].metrics or ()) > 0):
            name = main_metric(tasks[task])[0]
        else:
            name = next(iter(values))  # MultiTaskMetrics lists the main metric first
        if name not in values:
            raise ValueError(
                f"Main metric {name!r} of task {task!r} is not among its scores {sorted(values)}; "
                f"pass main_metrics={{'{task}': NAME}}."
            )
        names[task] = name
    return names


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _scores_of(
    hist: History, scores: Mapping[str, Mapping[str, float]] | None, best_epoch: int | None, split: str
) -> tuple[Mapping[str, Mapping[str, float]], int | None]:
    """The scores given, or the ``split`` metrics of ``best_epoch`` (else of the last epoch that has
    them), with the epoch they come from (None for given scores)."""
    if scores is not None:
        return scores, None
    candidates = [hist.at(best_epoch)] if best_epoch is not None else reversed(hist.epochs)
    record = next((log for log in candidates if log.metrics.get(split)), None)
    if record is None:
        raise ValueError(
            f"No scores: the history has no '{split}' metrics"
            + (f" at epoch {best_epoch}" if best_epoch is not None else "")
            + "; pass scores={task: {metric: value}} or the split that has them."
        )
    return record.metrics[split], record.epoch


def _baselines_of(
    baselines: Mapping[Any, Any], mains: Mapping[str, str], final: Mapping[str, Any]
) -> dict[str, dict[str, float]]:
    """``{task: {metric: score}}`` of the baselines (a bare number is the task's main metric)."""
    base: dict[str, dict[str, float]] = {}
    for key, value in baselines.items():
        if isinstance(value, Mapping) or isinstance(key, tuple) or (isinstance(key, str) and "/" in key):
            for t, ms in _nested({key: value}, "baselines").items():
                base.setdefault(t, {}).update(floats(ms))
        elif key in mains:
            base.setdefault(str(key), {})[mains[key]] = float(value)
        else:
            raise ValueError(f"baselines name task {key!r}, which has no scores; scored tasks: {sorted(final)}.")
    return base


def write_report(
    out_dir: str | Path,
    history: History | Mapping[str, Any] | Sequence[Any],
    *,
    tasks: Iterable[Task] | Mapping[str, Task] | None = None,
    scores: Mapping[str, Mapping[str, float]] | None = None,
    split: str = "val",
    best_epoch: int | None = None,
    baselines: Mapping[Any, Any] | None = None,
    higher_is_better: Mapping[str, Mapping[str, bool]] | None = None,
    main_metrics: Mapping[str, str] | None = None,
    confusion: Mapping[str, np.ndarray] | None = None,
    title: str = "hydranet report",
    plots: bool = True,
    baseline_histories: Mapping[str, History] | None = None,
    scores_split: str | None = None,
) -> Report:
    """Write plots, ``summary.md``, ``metrics.json`` and ``history.json`` into ``out_dir``.

    Args:
        out_dir: the report folder (created).
        history: a :class:`History` (or its ``to_dict()`` form, or a list of epoch records).
        tasks: the tasks, for their main metrics and class names.
        scores: final ``{task: {metric: value}}`` (e.g. test scores); default: the ``split`` metrics of
            ``best_epoch``, or of the last epoch that has them.
        split: the history split the default scores come from.
        scores_split: the name of the data that explicit ``scores`` come from (e.g. ``"test"``), recorded
            in ``metrics.json`` and the summary.
        best_epoch: the epoch kept by early stopping, marked on the curves.
        baselines: single-task scores: ``{task: value}`` of each task's main metric, or
            ``{task: {metric: value}}`` (also ``"task/metric"`` keys) for several metrics. Without
            baselines the report has no relative change and no Δm.
        higher_is_better: ``{task: {metric: bool}}`` for metrics outside the registry.
        main_metrics: ``{task: metric}`` overriding the main metric (default: from ``tasks``, else
            the first metric of each task's scores).
        confusion: ``{task: counts}`` from :meth:`MultiTaskMetrics.confusion_matrices`.
        title: the heading of ``summary.md``.
        plots: draw the PNG figures (about a quarter of a second each); ``False`` writes the tables only.
        baseline_histories: ``{task: History}`` of trained single-task baselines; their validation
            curves of the task's main metric are drawn dashed beside the multi-task ones.

    With baselines, ``comparison.png`` shows the relative change of every baselined metric (one bar
    each, labelled with the multi-task and single-task scores) and Δm.

    Δm (see :func:`hydranet.metrics.delta_m`) is over the entries of ``baselines``: per task first,
    then over tasks (``delta_m``); the per-metric average is reported too (``delta_m_per_metric``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hist = as_history(history)
    task_map = as_task_dict(tasks) if tasks is not None else {}
    overrides = {t: dict(v) for t, v in (higher_is_better or {}).items()}

    scores, source_epoch = _scores_of(hist, scores, best_epoch, split)
    final = {t: floats(v) for t, v in scores.items() if v}
    mains = _main_names(final, task_map, dict(main_metrics or {}))

    base: dict[str, dict[str, float]] | None = None
    changes: dict[str, dict[str, float]] = {}
    dm = dm_metric = None
    if baselines:
        base = _baselines_of(baselines, mains, final)
        hib = {t: {m: direction(t, m, overrides) for m in ms} for t, ms in base.items()}
        dm = delta_m(final, base, hib)
        dm_metric = delta_m(final, base, hib, per="metric")
        changes = {t: {m: relative_change(final[t][m], b, hib[t][m]) for m, b in ms.items()} for t, ms in base.items()}

    figures = plot_all(out, hist, best_epoch, confusion or {}, task_map, dict(baseline_histories or {}), mains) if plots else {}
    if plots and base:
        figures["comparison"] = plot_comparison(out / "comparison.png", final, base, changes, overrides, dm)
    history_json = out / "history.json"
    hist.save(history_json)
    metrics_json = out / "metrics.json"
    metrics_json.write_text(
        dumps(
            {
                "split": split if source_epoch is not None else scores_split,
                "epoch": source_epoch,
                "tasks": final,
                "main_metrics": {t: {"name": m, "higher_is_better": direction(t, m, overrides)} for t, m in mains.items()},
                "baselines": base,
                "relative_change": changes or None,
                "delta_m": dm,
                "delta_m_per_metric": dm_metric,
            }
        )
    )
    summary = out / "summary.md"
    summary.write_text(
        _summary_md(
            title, final, mains, base, changes, dm, dm_metric, split if source_epoch is not None else scores_split,
            source_epoch, figures, overrides,
        )
    )
    return Report(out, summary, metrics_json, history_json, figures, dm, dm_metric)


def _summary_md(
    title: str,
    final: Mapping[str, Mapping[str, float]],
    mains: Mapping[str, str],
    base: Mapping[str, Mapping[str, float]] | None,
    changes: Mapping[str, Mapping[str, float]],
    dm: float | None,
    dm_metric: float | None,
    split: str | None,
    epoch: int | None,
    figures: Mapping[str, Path],
    overrides: Mapping[str, Mapping[str, bool]],
) -> str:
    arrow = lambda t, m: "↑" if direction(t, m, overrides) else "↓"  # noqa: E731
    lines = [f"# {title}", ""]
    if not final:
        lines.append(
            "No scores: training had no validation or test data. Give the run a validation loader "
            "(`data.val` in a config) or a test loader to score it; the curves below are the training losses."
        )
    elif epoch is not None:
        lines.append(f"Scores on `{split}` at epoch {epoch}.")
    else:
        lines.append(f"Scores on `{split}`." if split else "Final scores.")
    if dm is not None and dm_metric is not None:
        how = "relative change averaged per task, then over tasks"
        if not math.isclose(dm, dm_metric, rel_tol=1e-12, abs_tol=1e-12):
            how += f"; averaged over all metrics instead: {dm_metric:+.2f}%"
        lines += ["", f"**Δm = {dm:+.2f}%** against the single-task baselines ({how}). Positive is better."]

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        aligns = ["---" if i < 2 else "---:" for i in range(len(header))]
        return ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]

    def row(t: str, m: str) -> list[str]:
        cells = [t, f"{m} {arrow(t, m)}", _fmt(final[t][m])]
        if base is not None:
            b = base.get(t, {}).get(m)
            c = changes.get(t, {}).get(m)
            cells += [_fmt(b), "—" if c is None else f"{c:+.2f}%"]
        return cells

    header = ["task", "metric", "MTL"] + (["baseline", "relative change"] if base is not None else [])
    if final:
        lines += ["", "## Main metric per task", ""]
        lines += table(header, [row(t, mains[t]) for t in sorted(final)])
        lines += ["", "## All metrics", ""]
        lines += table(header, [row(t, m) for t in sorted(final) for m in sorted(final[t])])
    if figures:
        lines += ["", "## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({path.name})", ""]
        lines.pop()
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- plots
