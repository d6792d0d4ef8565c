"""Task schedules: which task the next batch comes from.

A schedule gives each task :math:`t` (with :math:`n_t` samples) a share :math:`p_t` of the batches:

=================  ===================================================================
``round_robin``    :math:`p_t = 1 / T`, in the fixed order a, b, c, a, b, c, ...
``proportional``   :math:`p_t = n_t / \\sum_k n_k`
``temperature``    :math:`p_t \\propto \\min(n_t, \\text{cap})^{1/\\tau}` (:math:`\\tau = 1`: proportional,
                   :math:`\\tau \\to \\infty`: uniform; the cap is optional)
``{"a": 1, ...}``  :math:`p_t = w_t / \\sum_k w_k`
=================  ===================================================================

An epoch of :math:`N` batches gives task :math:`t` exactly :math:`c_t` batches, :math:`N p_t` rounded by
largest remainders (:func:`apportion`), so the epoch's task frequencies are the formula's, not a random
draw around it. The order is *stratified* (:func:`interleave`): task :math:`t`'s :math:`j`-th batch is
placed at time :math:`(j + u_{tj}) / p_t`, :math:`u_{tj} \\sim U(0, 1)`, and batches run in time order.
So the first :math:`L` steps of an epoch hold :math:`L p_t` batches of task :math:`t` up to less than
:math:`1 + T p_t` (:math:`T` tasks), where independent draws would wander by
:math:`\\sqrt{L p_t (1 - p_t)}`. Round robin is the same construction with :math:`u = 1/2` for every task,
ties going to the task listed first.

When the counts are fixed by the data instead (``length="all"``: every sample once), the same times
make a task drop out when it has no batch left and the others go on in their proportions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SCHEDULES",
    "FixedWeights",
    "Proportional",
    "RoundRobin",
    "Schedule",
    "Temperature",
    "apportion",
    "epoch_batches",
    "interleave",
    "make_schedule",
]

#: Schedule names accepted by :func:`make_schedule` (a mapping ``{task: weight}`` is accepted too).
SCHEDULES: tuple[str, ...] = ("round_robin", "proportional", "temperature")

# Slack for float rounding in k / p (e.g. 3 / (1/3) computing to 9.000000000000002).
_EPS = 1e-9


class Schedule(ABC):
    """A rule giving each task a share of the batches, and an order for them."""

    name = "schedule"
    #: ``False`` for schedules whose order does not depend on the random generator.
    random = True

    @abstractmethod
    def probabilities(self, sizes: Mapping[str, int]) -> np.ndarray:
        """Share :math:`p_t` of each task, in the order of ``sizes`` (task name -> number of samples)."""

    def sequence(
        self, counts: Sequence[int] | np.ndarray, probabilities: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(task, occurrence)`` of each step: see :func:`interleave`."""
        return interleave(counts, probabilities, rng if self.random else None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RoundRobin(Schedule):
    """a, b, c, a, b, c, ...: equal shares, deterministic; a task with no batch left is skipped."""

    name = "round_robin"
    random = False

    def probabilities(self, sizes: Mapping[str, int]) -> np.ndarray:
        return np.full(len(sizes), 1.0 / len(sizes))


class Proportional(Schedule):
    """:math:`p_t \\propto n_t`: every sample is as likely to come next, whatever its task."""

    name = "proportional"

    def probabilities(self, sizes: Mapping[str, int]) -> np.ndarray:
        n = np.array([sizes[t] for t in sizes], dtype=np.float64)
        return n / n.sum()


class Temperature(Schedule):
    """:math:`p_t \\propto \\min(n_t, \\text{cap})^{1/\\tau}`: flattens the size imbalance between tasks.

    Args:
        temperature: :math:`\\tau > 0`; 1 is proportional, larger is flatter (2 is common).
        size_cap: optional cap on the sizes before the power (tasks above it count as the cap).
    """

    name = "temperature"

    def __init__(self, temperature: float = 2.0, size_cap: int | None = None) -> None:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}; 2.0 is common.")
        if size_cap is not None and not (isinstance(size_cap, (int, np.integer)) and size_cap >= 1):
            raise ValueError(f"size_cap must be a positive integer or None, got {size_cap!r}.")
        self.temperature = float(temperature)
        self.size_cap = None if size_cap is None else int(size_cap)

    def probabilities(self, sizes: Mapping[str, int]) -> np.ndarray:
        n = np.array([sizes[t] for t in sizes], dtype=np.float64)
        if self.size_cap is not None:
            n = np.minimum(n, self.size_cap)
        w = n ** (1.0 / self.temperature)
        return w / w.sum()

    def __repr__(self) -> str:
        return f"Temperature(temperature={self.temperature}, size_cap={self.size_cap})"


class FixedWeights(Schedule):
    """:math:`p_t \\propto w_t` for given positive weights, one per task."""

    name = "weights"

    def __init__(self, weights: Mapping[str, float]) -> None:
        bad = {t: w for t, w in weights.items() if not (_is_number(w) and math.isfinite(w) and w > 0)}
        if bad:
            raise ValueError(
                f"Schedule weights must be positive numbers; got {bad}. Give every task a weight > 0 "
                "(remove a task from the dataset to leave it out)."
            )
        self.weights = {t: float(w) for t, w in weights.items()}

    def probabilities(self, sizes: Mapping[str, int]) -> np.ndarray:
        unknown = sorted(set(self.weights) - set(sizes))
        missing = [t for t in sizes if t not in self.weights]
        if unknown or missing:
            raise ValueError(
                f"Schedule weights must name exactly the dataset's tasks {list(sizes)}; "
                + (f"unknown: {unknown}. " if unknown else "")
                + (f"missing: {missing}." if missing else "")
            )
        w = np.array([self.weights[t] for t in sizes], dtype=np.float64)
        return w / w.sum()

    def __repr__(self) -> str:
        return f"FixedWeights({self.weights})"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def make_schedule(spec: Any, *, temperature: float = 2.0, size_cap: int | None = None) -> Schedule:
    """A :class:`Schedule` from a name in :data:`SCHEDULES`, a mapping ``{task: weight}``, or a Schedule."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, Mapping):
        return FixedWeights(spec)
    if spec == "round_robin":
        return RoundRobin()
    if spec == "proportional":
        return Proportional()
    if spec == "temperature":
        return Temperature(temperature, size_cap)
    raise ValueError(
        f"Unknown schedule {spec!r}; choose one of {', '.join(SCHEDULES)}, 'joint' (shared datasets), "
        "or give task weights such as {'a': 1, 'b': 3}."
    )


def apportion(total: int, probabilities: Any) -> np.ndarray:
    """Split ``total`` into integer counts :math:`c_t` proportional to :math:`p_t` (largest remainders).

    Each :math:`c_t` is :math:`\\lfloor N p_t \\rfloor` or one more, and :math:`\\sum_t c_t = N`; equal
    remainders favour the task listed first.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    quota = total * p / p.sum()
    counts = np.floor(quota + _EPS).astype(np.int64)
    short = int(total - counts.sum())
    if short > 0:
        # Stable sort of the negated remainders: largest first, ties in task order.
        order = np.argsort(-(quota - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def epoch_batches(length: str | int, probabilities: Any, passes: Any) -> int:
    """Number of batches :math:`N` in an epoch, from the batches in one pass over each task :math:`k_t`.

    Task :math:`t` needs :math:`k_t / p_t` steps to get through its samples once, so

    * ``"max_size_cycle"``: :math:`N = \\max_t \\lceil k_t / p_t \\rceil` (every task gets at least one
      full pass; with round robin, :math:`T \\max_t k_t`),
    * ``"min_size"``: :math:`N = \\min_t \\lfloor k_t / p_t \\rfloor` (no task gets more than one pass;
      with round robin, :math:`T \\min_t k_t`),
    * an int: that many batches.
    """
    if not isinstance(length, str):
        return int(length)
    steps = np.asarray(passes, dtype=np.float64) / np.asarray(probabilities, dtype=np.float64)
    if length == "max_size_cycle":
        return int(np.ceil(steps - _EPS).max())
    if length == "min_size":
        return max(1, int(np.floor(steps + _EPS).min()))
    raise ValueError(f"epoch_batches handles 'max_size_cycle', 'min_size' or an int, got {length!r}.")


def interleave(
    counts: Sequence[int] | np.ndarray, probabilities: Any, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Order ``counts[t]`` batches of each task :math:`t` by the times :math:`(j + u_{tj}) / p_t`.

    Args:
        counts: batches of each task in the epoch.
        probabilities: the schedule's shares :math:`p_t`.
        rng: draws :math:`u_{tj} \\sim U(0, 1)`; ``None`` uses :math:`u = 1/2` (deterministic, ties to
            the lower task index: round robin when the shares are equal).

    Returns:
        ``(task, occurrence)``: int32 arrays over the steps; step :math:`s` is batch number
        ``occurrence[s]`` of task ``task[s]``.
    """
    n = np.asarray(counts, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    total = int(n.sum())
    task = np.repeat(np.arange(len(n), dtype=np.int32), n)
    firsts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    occurrence = (np.arange(total, dtype=np.int64) - np.repeat(firsts, counts)).astype(np.int32)
    jitter = 0.5 if rng is None else rng.random(total)
    time = (occurrence + jitter) / p[task]
    order = np.argsort(time, kind="stable")
    return task[order], occurrence[order]
