"""Training reports: a history format, loggers, and a report folder of plots and tables.

**History.** A :class:`History` is a list of :class:`EpochLog`, one per epoch::

    EpochLog(
        epoch=3,
        losses={"train": {"left": 0.41, "right": 0.52}, "val": {"left": 0.45, "right": 0.57}},
        metrics={"val": {"left": {"accuracy": 0.88, "f1": 0.87}, "right": {...}}},
        weights={"left": 0.9, "right": 1.1},              # balancer loss weights, mean over the epoch
        grad_norms={"left": 2.1, "right": 1.7},           # per-task gradient norms, mean over the epoch
        cosines={"left": {"right": 0.12}},                # pairwise gradient cosines, mean over the epoch
        extra={"lr": 0.001, "seconds": 12.5},             # anything else, one number per name
    )

Every field but ``epoch`` may be empty. :class:`DiagnosticsMeter` averages a balancer's per-step
diagnostics into ``weights`` / ``grad_norms`` / ``cosines``. ``History.to_dict()`` / ``from_dict()``
(and ``save`` / ``load``, JSON) round-trip it.

**Rows.** An epoch flattens to ``(split, task, metric, value)`` rows, the unit of the loggers: losses
are ``(split, task, "loss")``, metrics ``(split, task, metric)``, balancer values
``("balancer", task, "weight" | "grad_norm")`` and ``("balancer", "a:b", "cosine")`` for a task pair,
extras ``("", "", name)``. :class:`CSVLogger` writes them in long format (``epoch,split,task,metric,value``,
one line per value), :class:`TensorBoardLogger` as scalars tagged ``split/task/metric``.

**Report.** :func:`write_report` writes into a folder: ``loss.png``, ``metrics.png``, ``weights.png``,
``grad_norms.png``, ``cosines.png`` (those with data), ``confusion_<task>.png``, ``summary.md`` (main
metric per task, its baseline, relative change and Δm), ``metrics.json`` and ``history.json``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hydranet.metrics import METRICS, delta_m, main_metric, relative_change
from hydranet.tasks import Task, as_task_dict

__all__ = [
    "EpochLog",
    "History",
    "DiagnosticsMeter",
    "CSVLogger",
    "TensorBoardLogger",
    "Report",
    "write_report",
]

Row = tuple[str, str, str, float]
PAIR_SEP = ":"


def _floats(mapping: Mapping[str, Any]) -> dict[str, float]:
    # JSON files store NaN as null (see _dumps): read it back as NaN.
    return {str(k): math.nan if v is None else float(v) for k, v in mapping.items()}


@dataclass
class EpochLog:
    """What happened in one epoch (see the module docstring for an example)."""

    epoch: int
    losses: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)
    cosines: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.epoch = int(self.epoch)
        self.losses = {s: _floats(v) for s, v in self.losses.items()}
        self.metrics = {s: {t: _floats(m) for t, m in v.items()} for s, v in self.metrics.items()}
        self.weights, self.grad_norms, self.extra = _floats(self.weights), _floats(self.grad_norms), _floats(self.extra)
        self.cosines = {a: _floats(v) for a, v in self.cosines.items()}

    def cosine_pairs(self) -> dict[tuple[str, str], float]:
        """``{(a, b): cosine}`` with ``a < b``, whichever direction ``cosines`` stores a pair in."""
        pairs: dict[tuple[str, str], float] = {}
        for a, row in self.cosines.items():
            for b, value in row.items():
                if a != b:
                    pairs.setdefault((min(a, b), max(a, b)), value)
        return pairs

    def rows(self) -> list[Row]:
        """``(split, task, metric, value)`` rows, sorted."""
        rows: list[Row] = []
        rows += [(s, t, "loss", v) for s, per_task in self.losses.items() for t, v in per_task.items()]
        rows += [(s, t, m, v) for s, per_task in self.metrics.items() for t, ms in per_task.items() for m, v in ms.items()]
        rows += [("balancer", t, "weight", v) for t, v in self.weights.items()]
        rows += [("balancer", t, "grad_norm", v) for t, v in self.grad_norms.items()]
        rows += [("balancer", f"{a}{PAIR_SEP}{b}", "cosine", v) for (a, b), v in self.cosine_pairs().items()]
        rows += [("", "", name, v) for name, v in self.extra.items()]
        return sorted(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "losses": self.losses,
            "metrics": self.metrics,
            "weights": self.weights,
            "grad_norms": self.grad_norms,
            "cosines": self.cosines,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochLog:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown epoch field(s) {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}.")
        if "epoch" not in data:
            raise ValueError("An epoch record needs its 'epoch' number.")
        return cls(**data)


@dataclass
class History:
    """The per-epoch record of a training run."""

    epochs: list[EpochLog] = field(default_factory=list)

    def append(self, log: EpochLog | Mapping[str, Any]) -> None:
        self.epochs.append(log if isinstance(log, EpochLog) else EpochLog.from_dict(log))

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self) -> Iterator[EpochLog]:
        return iter(self.epochs)

    @property
    def tasks(self) -> list[str]:
        """Tasks that appear in any loss, metric or weight, in order of first appearance."""
        seen: dict[str, None] = {}
        for log in self.epochs:
            for per_task in [*log.losses.values(), *log.metrics.values(), log.weights, log.grad_norms]:
                seen.update(dict.fromkeys(per_task))
        return list(seen)

    def at(self, epoch: int) -> EpochLog:
        """The record of epoch number ``epoch``."""
        for log in self.epochs:
            if log.epoch == epoch:
                return log
        raise ValueError(f"No epoch {epoch} in the history; it has {[log.epoch for log in self.epochs]}.")

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [log.to_dict() for log in self.epochs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> History:
        records = data["epochs"] if isinstance(data, Mapping) else data
        return cls([EpochLog.from_dict(r) for r in records])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(_dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _as_history(history: History | Mapping[str, Any] | Sequence[Any]) -> History:
    if isinstance(history, History):
        return history
    if isinstance(history, Mapping):
        return History.from_dict(history)
    return History([log if isinstance(log, EpochLog) else EpochLog.from_dict(log) for log in history])


class DiagnosticsMeter:
    """Averages a balancer's per-step diagnostics over an epoch.

    ``update(diagnostics, tasks)`` takes what ``Balancer.backward`` returns: ``{"weights": {task: w},
    "grad_norms": {task: n}, "cosines": [[...]] or None}``; ``tasks`` is the order of the cosine
    matrix's rows (default: the order of ``diagnostics["weights"]``). Each value is averaged over the
    steps where it was reported (a task absent from a batch does not count as 0). ``summary()`` returns
    ``{"weights", "grad_norms", "cosines"}`` in the :class:`EpochLog` format.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, dict[Any, float]] = {"weights": {}, "grad_norms": {}, "cosines": {}}
        self._counts: dict[str, dict[Any, int]] = {"weights": {}, "grad_norms": {}, "cosines": {}}

    def _add(self, kind: str, key: Any, value: float) -> None:
        if math.isfinite(value):
            self._sums[kind][key] = self._sums[kind].get(key, 0.0) + value
            self._counts[kind][key] = self._counts[kind].get(key, 0) + 1

    def update(self, diagnostics: Mapping[str, Any], tasks: Sequence[str] | None = None) -> None:
        for kind in ("weights", "grad_norms"):
            for task, value in (diagnostics.get(kind) or {}).items():
                self._add(kind, task, float(value))
        cosines = diagnostics.get("cosines")
        if cosines is None:
            return
        matrix = np.asarray(cosines.detach().cpu() if hasattr(cosines, "detach") else cosines, dtype=np.float64)
        order = list(tasks) if tasks is not None else list(diagnostics.get("weights") or {})
        if matrix.shape != (len(order), len(order)):
            raise ValueError(
                f"A cosine matrix of shape {matrix.shape} for tasks {order}: pass tasks= in the order of its rows."
            )
        for i, j in zip(*np.triu_indices(len(order), k=1)):
            a, b = order[i], order[j]
            self._add("cosines", (min(a, b), max(a, b)), float(matrix[i, j]))

    def summary(self) -> dict[str, Any]:
        mean = {kind: {k: self._sums[kind][k] / self._counts[kind][k] for k in self._sums[kind]} for kind in self._sums}
        cosines: dict[str, dict[str, float]] = {}
        for (a, b), value in mean["cosines"].items():
            cosines.setdefault(a, {})[b] = value
        return {"weights": mean["weights"], "grad_norms": mean["grad_norms"], "cosines": cosines}


# -------------------------------------------------------------------------------------------- loggers


def _rows_of(values: EpochLog | Mapping[str, Any]) -> list[Row]:
    if isinstance(values, EpochLog):
        return values.rows()
    rows: list[Row] = []
    for split, per_task in values.items():
        if not isinstance(per_task, Mapping) or not all(isinstance(v, Mapping) for v in per_task.values()):
            raise TypeError(
                "log() takes an EpochLog or a mapping {split: {task: {metric: value}}}; "
                f"the entry {split!r} is not a mapping of tasks to mappings."
            )
        rows += [(str(split), str(t), str(m), float(v)) for t, ms in per_task.items() for m, v in ms.items()]
    return sorted(rows)


class CSVLogger:
    """Appends one line per value to a CSV file with the columns ``epoch,split,task,metric,value``.

    Long format, so tasks and metrics may come and go between epochs; pivot it with pandas, e.g.
    ``df.pivot_table(index="epoch", columns=["split", "task", "metric"], values="value")``. Values are
    written with Python's shortest round-trip ``repr``; rows of an epoch are sorted.

    Args:
        path: the CSV file (its folder is created).
        append: continue an existing file (resumed training) instead of starting a new one.
    """

    COLUMNS = ("epoch", "split", "task", "metric", "value")

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (append and self.path.exists() and self.path.stat().st_size > 0)
        self._file = self.path.open("w" if fresh else "a", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._writer.writerow(self.COLUMNS)
            self._file.flush()

    def log(self, epoch: int, values: EpochLog | Mapping[str, Any]) -> None:
        """Write the rows of ``values`` (an :class:`EpochLog` or ``{split: {task: {metric: value}}}``)."""
        self._writer.writerows((int(epoch), s, t, m, repr(v)) for s, t, m, v in _rows_of(values))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CSVLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorBoardLogger:
    """Writes each value as a TensorBoard scalar tagged ``split/task/metric`` at step ``epoch``.

    View with ``tensorboard --logdir DIR``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, epoch: int, values: EpochLog | Mapping[str, Any]) -> None:
        for split, task, metric, value in _rows_of(values):
            tag = "/".join(part for part in (split, task, metric) if part)
            self._writer.add_scalar(tag, value, global_step=int(epoch))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- report


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


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _dumps(data: Any) -> str:
    # Strict JSON (NaN -> null), sorted keys: the same data always gives the same bytes.
    return json.dumps(_finite_or_none(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


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


def _direction(task: str, metric: str, overrides: Mapping[str, Mapping[str, bool]]) -> bool:
    if metric in overrides.get(task, {}):
        return bool(overrides[task][metric])
    if metric in METRICS:
        return METRICS[metric].higher_is_better
    raise ValueError(
        f"Cannot tell whether higher is better for {task}/{metric} (not a registry metric); "
        f"pass higher_is_better={{'{task}': {{'{metric}': True or False}}}}."
    )


def _main_names(
    scores: Mapping[str, Mapping[str, float]], tasks: Mapping[str, Task], chosen: Mapping[str, str]
) -> dict[str, str]:
    names: dict[str, str] = {}
    for task, values in scores.items():
        if task in chosen:
            name = chosen[task]
        elif task in tasks and (tasks[task].metrics is None or len(tasks[task].metrics) > 0):
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
    hist = _as_history(history)
    task_map = as_task_dict(tasks) if tasks is not None else {}
    overrides = {t: dict(v) for t, v in (higher_is_better or {}).items()}

    source_epoch: int | None = None
    if scores is None:
        candidates = [hist.at(best_epoch)] if best_epoch is not None else reversed(hist.epochs)
        record = next((log for log in candidates if log.metrics.get(split)), None)
        if record is None:
            raise ValueError(
                f"No scores: the history has no '{split}' metrics"
                + (f" at epoch {best_epoch}" if best_epoch is not None else "")
                + "; pass scores={task: {metric: value}} or the split that has them."
            )
        scores, source_epoch = record.metrics[split], record.epoch
    final = {t: _floats(v) for t, v in scores.items() if v}
    mains = _main_names(final, task_map, dict(main_metrics or {}))

    base: dict[str, dict[str, float]] | None = None
    changes: dict[str, dict[str, float]] = {}
    dm = dm_metric = None
    if baselines:
        base = {}
        for key, value in baselines.items():
            if isinstance(value, Mapping) or isinstance(key, tuple) or (isinstance(key, str) and "/" in key):
                for t, ms in _nested({key: value}, "baselines").items():
                    base.setdefault(t, {}).update(_floats(ms))
            elif key in mains:
                base.setdefault(str(key), {})[mains[key]] = float(value)
            else:
                raise ValueError(f"baselines name task {key!r}, which has no scores; scored tasks: {sorted(final)}.")
        hib = {t: {m: _direction(t, m, overrides) for m in ms} for t, ms in base.items()}
        dm = delta_m(final, base, hib)
        dm_metric = delta_m(final, base, hib, per="metric")
        changes = {t: {m: relative_change(final[t][m], b, hib[t][m]) for m, b in ms.items()} for t, ms in base.items()}

    figures = _plot_all(out, hist, best_epoch, confusion or {}, task_map, dict(baseline_histories or {}), mains) if plots else {}
    if plots and base:
        figures["comparison"] = _plot_comparison(out / "comparison.png", final, base, changes, overrides, dm)
    history_json = out / "history.json"
    hist.save(history_json)
    metrics_json = out / "metrics.json"
    metrics_json.write_text(
        _dumps(
            {
                "split": split if source_epoch is not None else scores_split,
                "epoch": source_epoch,
                "tasks": final,
                "main_metrics": {t: {"name": m, "higher_is_better": _direction(t, m, overrides)} for t, m in mains.items()},
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
    arrow = lambda t, m: "↑" if _direction(t, m, overrides) else "↓"  # noqa: E731
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


def _grid(n: int, width: float = 4.2, height: float = 3.0) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

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


def _plot_all(
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
            single, metric = baseline_histories.get(task), mains.get(task)
            if single is not None and metric is not None:
                x, y = _series(_as_history(single), lambda log: log.metrics.get("val", {}).get(task, {}).get(metric))
                if x:
                    ax.plot(x, y, linestyle="--", color="0.35", label=f"single-task val {metric}")
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


def _plot_comparison(
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
    ax.set_yticks(y, [f"{t} {m} {arrows[_direction(t, m, overrides)]}" for t, m in entries])
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
