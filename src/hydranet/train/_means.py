"""Running means of an epoch (losses, balancer diagnostics, learning rate, gradient norm), reduced over
the ranks at its end, and the epoch's record built from them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hydranet import runtime
from hydranet.report.history import EpochLog

__all__ = ["Means"]


class Means:
    """Running means keyed by strings (``"loss/<task>"``, ``"weight/<task>"``, ``"cosine/<a>:<b>"``,
    ``"extra/<name>"``), with a plain-dict state for checkpoints. Non-finite values are left out."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: float) -> None:
        if math.isfinite(value):
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def add_diagnostics(self, info: Mapping[str, Any]) -> None:
        """The balancer's per-step ``weights``, ``grad_norms`` and (upper triangle of) ``cosines``."""
        for task, value in (info.get("weights") or {}).items():
            self.add(f"weight/{task}", float(value))
        for task, value in (info.get("grad_norms") or {}).items():
            self.add(f"grad_norm/{task}", float(value))
        cosines = info.get("cosines")
        if cosines is not None:
            rows = list(info.get("tasks") or [])
            matrix = np.asarray(cosines, dtype=np.float64)
            for i, j in zip(*np.triu_indices(len(rows), k=1)):
                a, b = sorted((rows[i], rows[j]))
                self.add(f"cosine/{a}:{b}", float(matrix[i, j]))

    def mean(self, prefix: str) -> dict[str, float]:
        """``{rest: mean}`` of the keys ``prefix/rest``."""
        start = len(prefix) + 1
        return {k[start:]: s / self.counts[k] for k, s in self.sums.items() if k.startswith(prefix + "/")}

    def across_ranks(self) -> Means:
        """The running means over the values of every rank (this object outside a process group): what
        one process training on the ranks' batches together would have averaged."""
        if not runtime.is_distributed():
            return self
        total = runtime.sum_by_key(
            {**{f"sum {k}": v for k, v in self.sums.items()}, **{f"count {k}": n for k, n in self.counts.items()}}
        )
        out = Means()
        for key, value in total.items():
            kind, name = key.split(" ", 1)
            if kind == "sum":
                out.sums[name] = value
            else:
                out.counts[name] = int(value)
        return out

    def record(
        self,
        epoch: int,
        losses: dict[str, dict[str, float]],
        metrics: dict[str, dict[str, dict[str, float]]],
        extra: dict[str, float],
    ) -> EpochLog:
        """The :class:`EpochLog` of ``epoch``: the given losses, metrics and extras, with the balancer's
        diagnostics and the per-step extras (``grad_norm``, ``lr``) averaged here."""
        cosines: dict[str, dict[str, float]] = {}
        for pair, value in self.mean("cosine").items():
            a, b = pair.split(":")
            cosines.setdefault(a, {})[b] = value
        return EpochLog(
            epoch=epoch,
            losses=losses,
            metrics=metrics,
            weights=self.mean("weight"),
            grad_norms=self.mean("grad_norm"),
            cosines=cosines,
            extra=extra,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
