"""Class-balance weights, and drawing samples in proportion to them.

A task whose classes are imbalanced (50 positives, 5 negatives) can be sampled so that rare classes
show up more often. Each class :math:`c` with :math:`n_c` samples gets a per-sample weight
:math:`w_c`; a sample is drawn with probability proportional to its weight, so class :math:`c` is
drawn with probability :math:`P(c) \\propto n_c w_c`.

=================  ==========================================  =========================================
method             per-sample weight of class :math:`c`        class frequency :math:`P(c) \\propto`
=================  ==========================================  =========================================
``inverse``        :math:`1 / n_c`                             :math:`1` (every class equally often)
``sqrt``           :math:`1 / \\sqrt{n_c}`                      :math:`\\sqrt{n_c}`
``effective``      :math:`(1 - \\beta) / (1 - \\beta^{n_c})`      :math:`n_c (1 - \\beta) / (1 - \\beta^{n_c})`
``repeat_factor``  :math:`r_c = \\max(1, \\sqrt{t / f_c})`       :math:`n_c r_c`
=================  ==========================================  =========================================

``effective`` is the effective number of samples of Cui et al. (CVPR 2019): :math:`\\beta = 0`
is no re-weighting, :math:`\\beta \\to 1` tends to ``inverse``. ``repeat_factor`` is the repeat
factor sampling of LVIS (Gupta et al., 2019): :math:`f_c = n_c / N` is the fraction of the
:math:`N` samples that carry class :math:`c`, and classes rarer than the threshold :math:`t` are
repeated :math:`\\sqrt{t / f_c}` times.

Multilabel samples carry several classes: a sample's weight is the largest weight among its
classes (for ``repeat_factor`` this is exactly the LVIS image repeat factor). Samples without any
positive label form a group of their own for ``inverse``, ``sqrt`` and ``effective``, and have
repeat factor 1. Classes without samples get weight 0 (they are never drawn).

Drawing (:class:`WeightedDraw`) groups samples of equal weight into strata, draws a stratum by its
total weight, then a uniformly random sample inside it: two vectorised uniform draws per sample, any
number of samples and classes (no 2^24 limit as with ``torch.multinomial``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BALANCE_METHODS",
    "ClassBalance",
    "WeightedDraw",
    "class_counts",
    "class_labels",
    "class_strata",
    "class_weights",
    "sample_weights",
]

#: Names accepted by :class:`ClassBalance` (and by ``TaskBatchSampler(balance=...)``).
BALANCE_METHODS: tuple[str, ...] = ("inverse", "sqrt", "effective", "repeat_factor")

_ONLY_CLASSES = "Balance classification tasks only: name them in a mapping, e.g. balance={'label': 'inverse'}."

# Draws are made in chunks of this many samples, so temporaries stay a few MiB at any epoch size.
_CHUNK = 1 << 18
# Up to this many strata a stratum is found by comparisons (one pass each), beyond by binary search.
_LINEAR_STRATA = 16


@dataclass(frozen=True)
class ClassBalance:
    """A class-balancing method and its settings.

    Args:
        method: one of :data:`BALANCE_METHODS`.
        beta: :math:`\\beta \\in [0, 1)` of ``effective`` (0.999 as in Cui et al.).
        threshold: :math:`t > 0` of ``repeat_factor`` (0.001 as in LVIS).
    """

    method: str = "inverse"
    beta: float = 0.999
    threshold: float = 0.001

    def __post_init__(self) -> None:
        if self.method not in BALANCE_METHODS:
            raise ValueError(
                f"Unknown class-balance method {self.method!r}; choose one of {', '.join(BALANCE_METHODS)}."
            )
        if not 0.0 <= float(self.beta) < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta!r}; 0.999 is the usual choice.")
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {self.threshold!r}; LVIS uses 0.001.")

    @classmethod
    def parse(cls, spec: Any) -> ClassBalance:
        """Accept a method name or a :class:`ClassBalance`."""
        if isinstance(spec, ClassBalance):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        raise TypeError(
            f"A class-balance setting must be a method name ({', '.join(BALANCE_METHODS)}) or a "
            f"ClassBalance(...), got {type(spec).__name__}: {spec!r}."
        )


def class_labels(
    labels: Any, *, task: str = "task", kind: str | None = None, num_classes: int | None = None
) -> tuple[np.ndarray, int]:
    """Check that ``labels`` are class labels and return ``(labels, num_classes)``.

    Single-label classes come back as an integer array ``[n]``, multilabel targets as a bool array
    ``[n, C]``. ``kind`` (a :class:`~hydranet.Task` kind) is inferred when ``None``: integer-valued
    ``[n]`` is single-label, 0/1 ``[n, C]`` is multilabel, anything else is taken as regression.

    Raises:
        ValueError: for regression targets, or labels outside ``[0, num_classes)``.
    """
    arr = np.asarray(labels)
    if kind == "regression":
        raise ValueError(
            f"Task {task!r} is a regression task: its targets have no classes to balance. {_ONLY_CLASSES}"
        )
    if arr.ndim == 2 and kind in (None, "multilabel"):
        if arr.size and not np.isin(arr, (0, 1)).all():
            if kind == "multilabel":
                raise ValueError(
                    f"Task {task!r}: multilabel targets must be 0/1, found values outside {{0, 1}} "
                    f"(e.g. {arr[~np.isin(arr, (0, 1))][0]!r}). Fix the labels or mark missing ones in the dataset."
                )
            raise ValueError(
                f"Task {task!r}: targets of shape {arr.shape} are not 0/1 multilabel vectors, so they look like "
                f"regression targets, which cannot be class-balanced. {_ONLY_CLASSES}"
            )
        c = arr.shape[1] if num_classes is None else int(num_classes)
        if arr.shape[1] != c:
            raise ValueError(f"Task {task!r}: multilabel targets have {arr.shape[1]} columns for {c} classes.")
        return arr.astype(bool, copy=False), c
    if arr.ndim != 1:
        raise ValueError(
            f"Task {task!r}: class labels must be one integer per sample (shape [n]) or 0/1 vectors "
            f"(shape [n, C]); got shape {arr.shape}."
        )
    if arr.dtype.kind == "f":
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(
                f"Task {task!r}: its targets are not integer class labels (e.g. {arr[arr != np.round(arr)][:1]}), "
                f"so they look like regression targets, which cannot be class-balanced. {_ONLY_CLASSES}"
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"Task {task!r}: class labels must be integers, got dtype {arr.dtype}.")
    low = int(arr.min()) if arr.size else 0
    high = int(arr.max()) if arr.size else -1
    c = high + 1 if num_classes is None else int(num_classes)
    if low < 0 or high >= c:
        bad = low if low < 0 else high
        raise ValueError(
            f"Task {task!r}: label {bad} is outside [0, {c}) and cannot be class-balanced. Labels must be "
            f"0 .. {c - 1}; a missing label (-1) must not be listed in the task's indices, and num_classes "
            "must cover every label."
        )
    return arr, max(c, 1)


def class_counts(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Samples per class: ``bincount`` of ``[n]`` labels, or the column sums of ``[n, C]`` 0/1 targets."""
    arr, c = class_labels(labels, num_classes=num_classes)
    if arr.ndim == 2:
        return arr.sum(axis=0, dtype=np.int64)
    return np.bincount(arr, minlength=c).astype(np.int64)


def class_weights(
    counts: Any,
    method: str = "inverse",
    *,
    beta: float = 0.999,
    threshold: float = 0.001,
    n_samples: int | None = None,
) -> np.ndarray:
    """Per-sample weight of each class, from the class counts (formulas in the module docstring).

    Args:
        counts: samples per class, ``[C]`` non-negative integers.
        method: one of :data:`BALANCE_METHODS`.
        beta: of ``effective``.
        threshold: of ``repeat_factor``.
        n_samples: number of samples :math:`N` in :math:`f_c = n_c / N` (``repeat_factor``); defaults
            to ``counts.sum()``, right for single-label tasks. Multilabel tasks pass the number of samples.

    Returns:
        ``[C]`` float64 weights, 0 for classes without samples.
    """
    spec = ClassBalance(method, beta=beta, threshold=threshold)
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError(f"counts must be a 1-d array of non-negative class counts, got {counts!r}.")
    present = n > 0
    safe = np.where(present, n, 1.0)
    if spec.method == "inverse":
        w = 1.0 / safe
    elif spec.method == "sqrt":
        w = 1.0 / np.sqrt(safe)
    elif spec.method == "effective":
        # 1 - beta^n computed as -expm1(n log beta): accurate when beta is close to 1.
        with np.errstate(divide="ignore"):
            log_beta = np.log(spec.beta)
        w = (1.0 - spec.beta) / -np.expm1(safe * log_beta)
    else:
        total = float(n.sum() if n_samples is None else n_samples)
        if total <= 0:
            raise ValueError("repeat_factor needs at least one sample.")
        w = np.maximum(1.0, np.sqrt(spec.threshold / (safe / total)))
    return np.where(present, w, 0.0)


def class_strata(
    labels: Any,
    balance: str | ClassBalance = "inverse",
    *,
    num_classes: int | None = None,
    kind: str | None = None,
    task: str = "task",
) -> tuple[np.ndarray, np.ndarray]:
    """``(stratum of each sample [n], per-sample weight of each stratum [S])``: the input of :class:`WeightedDraw`.

    Single-label: stratum = class (:math:`S = C`). Multilabel: stratum = the sample's highest-weight
    class, or :math:`C` for samples without a positive label (:math:`S = C + 1`).
    """
    spec = ClassBalance.parse(balance)
    arr, c = class_labels(labels, task=task, kind=kind, num_classes=num_classes)
    if arr.ndim == 1:
        counts = np.bincount(arr, minlength=c)
        return arr, class_weights(counts, spec.method, beta=spec.beta, threshold=spec.threshold)
    n = arr.shape[0]
    counts = arr.sum(axis=0, dtype=np.int64)
    w = class_weights(counts, spec.method, beta=spec.beta, threshold=spec.threshold, n_samples=n)
    by_weight = np.argsort(-w, kind="stable")  # classes from the highest weight down
    strata = np.empty(n, dtype=np.int64)
    for lo in range(0, n, 1 << 16):  # chunks bound the [rows, C] temporary
        block = arr[lo : lo + (1 << 16)][:, by_weight]
        first = block.argmax(axis=1)
        strata[lo : lo + len(block)] = np.where(block.any(axis=1), by_weight[first], c)
    none = int((strata == c).sum())
    if spec.method == "repeat_factor":
        w_none = 1.0
    else:
        w_none = float(class_weights([none], spec.method, beta=spec.beta, threshold=spec.threshold)[0])
    return strata, np.append(w, w_none)


def sample_weights(
    labels: Any,
    method: str | ClassBalance = "inverse",
    *,
    num_classes: int | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """Per-sample weights ``[n]`` (float64) of class labels ``[n]`` or multilabel targets ``[n, C]``."""
    strata, w = class_strata(labels, method, num_classes=num_classes, kind=kind)
    return w[strata]


class WeightedDraw:
    """Draw samples with probability proportional to their weight, vectorised.

    Samples are grouped into strata of equal weight; a draw picks stratum :math:`s` with probability
    :math:`n_s w_s / \\sum_k n_k w_k`, then one of its :math:`n_s` samples uniformly.

    Args:
        strata: ``[n]`` non-negative integer stratum of each sample.
        weights: ``[S]`` per-sample weight of each stratum (``>= 0``, at least one stratum with mass).
        values: ``[n]`` what a draw returns for each sample (e.g. global dataset indices); default the
            sample positions ``0 .. n-1``.
    """

    def __init__(self, strata: Any, weights: Any, values: np.ndarray | None = None) -> None:
        strata = np.asarray(strata)
        weights = np.asarray(weights, dtype=np.float64)
        if strata.ndim != 1 or strata.size == 0:
            raise ValueError("WeightedDraw needs a non-empty 1-d array of strata.")
        if not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("Sample weights must be finite and >= 0.")
        n_strata = weights.size
        if strata.dtype.kind not in "iu" or int(strata.min()) < 0 or int(strata.max()) >= n_strata:
            raise ValueError(f"strata must be integers in [0, {n_strata}): one weight per stratum.")
        counts = np.bincount(strata, minlength=n_strata)
        mass = counts * weights
        if mass.sum() <= 0:
            raise ValueError("All sample weights are 0: at least one sample needs a positive weight.")
        # A stable sort of small integer keys is a radix sort: O(n) even for tens of millions.
        key_dtype = np.uint8 if n_strata <= 1 << 8 else np.uint16 if n_strata <= 1 << 16 else np.int64
        order = np.argsort(strata.astype(key_dtype, copy=False), kind="stable")
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        keep = mass > 0
        self.values = order if values is None else np.asarray(values)[order]
        self.starts = starts[keep].astype(np.int64)
        self.sizes = counts[keep].astype(np.int64)
        self.probabilities = mass[keep] / mass[keep].sum()
        self._edges = np.cumsum(self.probabilities)[:-1]

    @classmethod
    def from_weights(cls, weights: Any, values: np.ndarray | None = None) -> WeightedDraw:
        """From arbitrary per-sample weights ``[n]`` (strata = distinct weight values)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1:
            raise ValueError(f"Per-sample weights must be 1-d, got shape {w.shape}.")
        distinct, strata = np.unique(w, return_inverse=True)
        return cls(strata, distinct, values)

    @classmethod
    def uniform(cls, values: np.ndarray) -> WeightedDraw:
        """Uniform draws with replacement from ``values``."""
        return cls(np.zeros(len(values), dtype=np.uint8), [1.0], values)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` independent draws: the values of the drawn samples."""
        out = np.empty(size, dtype=self.values.dtype)
        for lo in range(0, size, _CHUNK):
            m = min(_CHUNK, size - lo)
            if len(self.sizes) == 1:
                start, count = self.starts[0], self.sizes[0]
            else:
                u = rng.random(m)
                if len(self._edges) < _LINEAR_STRATA:
                    s = np.zeros(m, dtype=np.intp)
                    for edge in self._edges:
                        s += u >= edge
                else:
                    s = np.searchsorted(self._edges, u, side="right")
                start, count = self.starts[s], self.sizes[s]
            pos = (rng.random(m) * count).astype(np.int64)
            np.minimum(pos, count - 1, out=pos)  # u * count may round up to count when u is close to 1
            pos += start
            np.take(self.values, pos, out=out[lo : lo + m])
        return out
