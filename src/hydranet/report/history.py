"""The record of a run: a :class:`History` of :class:`EpochLog` (one per epoch), and
:class:`DiagnosticsMeter`, which averages a balancer's per-step diagnostics over an epoch.

An epoch holds::

    EpochLog(
        epoch=3,
        losses={"train": {"left": 0.41, "right": 0.52}, "val": {"left": 0.45, "right": 0.57}},
        metrics={"val": {"left": {"accuracy": 0.88, "f1": 0.87}, "right": {...}}},
        weights={"left": 0.9, "right": 1.1},              # balancer loss weights, mean over the epoch
        grad_norms={"left": 2.1, "right": 1.7},           # per-task gradient norms, mean over the epoch
        cosines={"left": {"right": 0.12}},                # pairwise gradient cosines, mean over the epoch
        extra={"lr": 0.001, "seconds": 12.5},             # anything else, one number per name
    )

Every field but ``epoch`` may be empty. ``History.to_dict()`` / ``from_dict()`` (and ``save`` /
``load``, JSON) round-trip it. An epoch flattens to ``(split, task, metric, value)`` rows
(:meth:`EpochLog.rows`), the unit of the loggers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PAIR_SEP", "DiagnosticsMeter", "EpochLog", "History", "Row", "as_history", "dumps", "floats"]

Row = tuple[str, str, str, float]
PAIR_SEP = ":"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def dumps(data: Any) -> str:
    # Strict JSON (NaN -> null), sorted keys: the same data always gives the same bytes.
    return json.dumps(_finite_or_none(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def floats(mapping: Mapping[str, Any]) -> dict[str, float]:
    # JSON files store NaN as null (see dumps): read it back as NaN.
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
        self.losses = {s: floats(v) for s, v in self.losses.items()}
        self.metrics = {s: {t: floats(m) for t, m in v.items()} for s, v in self.metrics.items()}
        self.weights, self.grad_norms, self.extra = floats(self.weights), floats(self.grad_norms), floats(self.extra)
        self.cosines = {a: floats(v) for a, v in self.cosines.items()}

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
            parts: list[Mapping[str, Any]] = [*log.losses.values(), *log.metrics.values(), log.weights, log.grad_norms]
            for per_task in parts:
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
        Path(path).write_text(dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))


def as_history(history: History | Mapping[str, Any] | Sequence[Any]) -> History:
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
