"""Figures of a report: losses, metrics, balancer weights, gradient norms and cosines per epoch, the
comparison with single-task baselines and confusion matrices. matplotlib (the ``report`` extra) is
imported when a figure is drawn."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hydranet.metrics import METRICS
from hydranet.report.history import History, as_history
from hydranet.tasks import Task

__all__ = ["direction", "plot_all", "plot_comparison"]


def direction(task: str, metric: str, overrides: Mapping[str, Mapping[str, bool]]) -> bool:
    if metric in overrides.get(task, {}):
        return bool(overrides[task][metric])
    if metric in METRICS:
        return METRICS[metric].higher_is_better
    raise ValueError(
        f"Cannot tell whether higher is better for {task}/{metric} (not a registry metric); "
        f"pass higher_is_better={{'{task}': {{'{metric}': True or False}}}}."
    )


def _grid(n: int, width: float = 4.2, height: float = 3.0) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "The report's figures need matplotlib: pip install 'hydranet[report]', or write the report "
            "with plots=False."
        ) from error

    cols = min(3, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _series(hist: History, get: Any) -> tuple[list[int], list[float]]:
    points = [(log.epoch, get(log)) for log in hist.epochs]
    points = [(e, v) for e, v in points if v is not None]
    return [e for e, _ in points], [v for _, v in points]


def _finish(ax: Any, title: str, ylabel: str, best_epoch: int | None) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best_epoch is not None:
        ax.axvline(best_epoch, color="0.6", linestyle="--", linewidth=1, label="best epoch")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, metadata={"Software": None})
    return path


def plot_all(
    out: Path,
    hist: History,
    best: int | None,
    confusion: Mapping[str, np.ndarray],
    tasks: Mapping[str, Task],
    baseline_histories: Mapping[str, History],
    mains: Mapping[str, str],
) -> dict[str, Path]:
    figures: dict[str, Path] = {}
    names = hist.tasks
    splits = sorted({s for log in hist.epochs for s in log.losses})
    loss_tasks = [t for t in names if any(t in log.losses.get(s, {}) for log in hist.epochs for s in splits)]
    if loss_tasks:
        fig, axes = _grid(len(loss_tasks))
        for ax, task in zip(axes, loss_tasks):
            for split in splits:
                x, y = _series(hist, lambda log: log.losses.get(split, {}).get(task))
                if x:
                    ax.plot(x, y, marker="o", markersize=3, label=split)
            _finish(ax, task, "loss", best)
        figures["loss"] = _save(fig, out / "loss.png")

    metric_splits = sorted({s for log in hist.epochs for s in log.metrics})
    metric_tasks = [t for t in names if any(t in log.metrics.get(s, {}) for log in hist.epochs for s in metric_splits)]
    if metric_tasks:
        fig, axes = _grid(len(metric_tasks))
        for ax, task in zip(axes, metric_tasks):
            for split in metric_splits:
                metrics = sorted({m for log in hist.epochs for m in log.metrics.get(split, {}).get(task, {})})
                for metric in metrics:
                    x, y = _series(hist, lambda log: log.metrics.get(split, {}).get(task, {}).get(metric))
                    arrow = {True: " ↑", False: " ↓"}.get(METRICS[metric].higher_is_better, "") if metric in METRICS else ""
                    ax.plot(x, y, marker="o", markersize=3, label=f"{split} {metric}{arrow}")
            single, main = baseline_histories.get(task), mains.get(task)
            if single is not None and main is not None:
                x, y = _series(as_history(single), lambda log: log.metrics.get("val", {}).get(task, {}).get(main))
                if x:
                    ax.plot(x, y, linestyle="--", color="0.35", label=f"single-task val {main}")
            _finish(ax, task, "metric", best)
        figures["metrics"] = _save(fig, out / "metrics.png")

    for key, ylabel in (("weights", "loss weight"), ("grad_norms", "gradient norm")):
        keyed = [t for t in names if any(t in getattr(log, key) for log in hist.epochs)]
        if keyed:
            fig, (ax,) = _grid(1, width=6.0, height=3.6)
            for task in keyed:
                x, y = _series(hist, lambda log: getattr(log, key).get(task))
                ax.plot(x, y, marker="o", markersize=3, label=task)
            _finish(ax, f"task {ylabel}s", ylabel, best)
            figures[key] = _save(fig, out / f"{key}.png")

    pairs = sorted({p for log in hist.epochs for p in log.cosine_pairs()})
    if pairs:
        fig, (ax,) = _grid(1, width=6.0, height=3.6)
        for pair in pairs:
            x, y = _series(hist, lambda log: log.cosine_pairs().get(pair))
            ax.plot(x, y, marker="o", markersize=3, label=" vs ".join(pair))
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylim(-1.05, 1.05)
        _finish(ax, "gradient cosine between tasks", "cosine", best)
        figures["cosines"] = _save(fig, out / "cosines.png")

    for task in sorted(confusion):
        figures[f"confusion_{task}"] = _plot_confusion(out / f"confusion_{task}.png", task, confusion[task], tasks.get(task))
    return figures


def plot_comparison(
    path: Path,
    final: Mapping[str, Mapping[str, float]],
    base: Mapping[str, Mapping[str, float]],
    changes: Mapping[str, Mapping[str, float]],
    overrides: Mapping[str, Mapping[str, bool]],
    dm: float | None,
) -> Path:
    """Relative change against the single-task baseline, one bar per (task, metric) baseline.

    Relative changes share one scale (percent, positive = better) whatever the metrics' own scales
    (an MAE of 5 years beside an accuracy of 0.9); each bar is labelled with both raw scores."""
    entries = [(t, m) for t in sorted(base) for m in sorted(base[t])]
    fig, (ax,) = _grid(1, width=6.4, height=max(2.4, 0.62 * len(entries) + 1.2))
    y = np.arange(len(entries))[::-1]
    values = [changes[t][m] for t, m in entries]
    ax.barh(y, values, color=["tab:green" if v >= 0 else "tab:red" for v in values], height=0.6)
    ax.axvline(0.0, color="black", linewidth=0.8)
    arrows = {True: "↑", False: "↓"}
    ax.set_yticks(y, [f"{t} {m} {arrows[direction(t, m, overrides)]}" for t, m in entries])
    for k, (t, m) in enumerate(entries):
        ax.annotate(
            f" {final[t][m]:.4g} vs {base[t][m]:.4g} ",
            (values[k], y[k]),
            va="center",
            ha="left" if values[k] >= 0 else "right",
            fontsize="small",
        )
    ax.margins(x=0.45)
    ax.set_xlabel("relative change against single-task, % (positive = better)")
    ax.set_title("multi-task vs single-task" + (f": Δm = {dm:+.2f}%" if dm is not None else ""))
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def _plot_confusion(path: Path, task: str, counts: np.ndarray, spec: Task | None) -> Path:
    counts = np.asarray(counts)
    if counts.ndim == 3:  # multilabel: one 2x2 matrix per label -> a row of TN, FP, FN, TP per label
        matrix = counts.reshape(counts.shape[0], 4)
        rows = list(spec.class_names) if spec is not None and spec.class_names else [str(i) for i in range(len(matrix))]
        cols, xlabel, ylabel = ["TN", "FP", "FN", "TP"], "outcome", "label"
    elif counts.ndim == 2 and counts.shape[0] == counts.shape[1]:
        matrix = counts
        names = list(spec.class_names) if spec is not None and spec.class_names else None
        rows = cols = names or [str(i) for i in range(len(matrix))]
        xlabel, ylabel = "predicted", "true"
    else:
        raise ValueError(f"Confusion matrix of task {task!r} has shape {counts.shape}; expected [C, C] or [C, 2, 2].")
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    side = max(3.5, 0.45 * max(matrix.shape) + 2.0)
    fig, (ax,) = _grid(1, width=side + 1.0, height=side)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the row")
    ax.set_xticks(range(len(cols)), cols, rotation=45 if max(map(len, cols)) > 3 else 0)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{task}: confusion matrix (counts)")
    if matrix.size <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    return _save(fig, path)
