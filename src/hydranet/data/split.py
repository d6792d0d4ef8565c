r"""Disjoint random parts of one dataset (train / validation / test), stratified by a class task.

:func:`split_indices` cuts ``n`` samples into parts of sizes :math:`m_p = \mathrm{rint}(n F_p) -
\mathrm{rint}(n F_{p-1})` (:math:`F_p` the cumulative fractions, the last part takes the rest), exactly
as an unstratified split does. Stratified, each class :math:`c` of :math:`s_c` samples gives part
:math:`p` :math:`s_c m_p / n` of them up to rounding (at most one or two off), with the part sizes still
exact: the samples are ordered class by class (shuffled within each class), and the part labels are laid
over that order *interleaved* (part :math:`p`'s :math:`r`-th label at position key :math:`(r + 1/2) /
m_p`, all keys merged), so every run of consecutive samples, and so every class, is shared in the
parts' proportions (systematic sampling, Cochran, *Sampling Techniques*, 1977, ch. 8). Unlabelled
samples of the stratifying task form one more stratum. Everything random comes from ``seed``.

:func:`strata` picks the stratifying labels of a dataset: a named class task, or by default
(``"auto"``) its first binary or multiclass task; regression tasks are never stratified on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hydranet._checks import check_int, unknown_name

__all__ = ["STRATIFY_KINDS", "check_fractions", "split_indices", "strata"]

#: Kinds a split can be stratified by (one class index per sample).
STRATIFY_KINDS: tuple[str, ...] = ("binary", "multiclass")


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """``fractions`` as float64 shares, each positive, summing to 1 (else a ValueError with an example)."""
    try:
        shares = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        shares = np.empty(0)
    if shares.ndim != 1 or shares.size < 1 or not np.all(shares > 0) or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"fractions must be positive shares summing to 1, e.g. [0.8, 0.2]; got {fractions!r}.")
    return shares


def split_indices(
    n: int, fractions: Sequence[float], *, seed: int = 0, strata: np.ndarray | None = None
) -> list[np.ndarray]:
    """Disjoint sorted index arrays covering ``range(n)``, one per fraction (see the module docstring).

    Args:
        n: number of samples.
        fractions: the share of each part, positive, summing to 1.
        seed: fixes every random choice.
        strata: ``[n]`` integer stratum of each sample (a class index, ``-1`` where unlabelled), or
            ``None`` for a plain random split.
    """
    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0, hint="any integer >= 0")
    shares = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    bounds = np.rint(np.cumsum(shares)[:-1] * n).astype(np.int64)
    if strata is None:
        order = rng.permutation(n)
        return [np.sort(part) for part in np.split(order, bounds)]
    strata = np.asarray(strata)
    if strata.shape != (n,) or strata.dtype.kind not in "iu":
        raise ValueError(f"strata must be {n} integer stratum labels, got {strata.dtype} of shape {strata.shape}.")
    sizes = np.diff(np.concatenate([[0], bounds, [n]]))
    # Class by class, shuffled inside each class: sort by (stratum, random key).
    order = np.lexsort((rng.random(n), strata))
    # The part labels, interleaved: part p's r-th label sits at key (r + 1/2) / m_p. Ties keep part order.
    part_of = np.repeat(np.arange(len(sizes)), sizes)
    rank = np.arange(n) - np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    keys = (rank + 0.5) / np.repeat(np.maximum(sizes, 1), sizes)
    labels = part_of[np.argsort(keys, kind="stable")]
    return [np.sort(order[labels == p]) for p in range(len(sizes))]


def strata(dataset: Any, stratify: str | None) -> tuple[str | None, np.ndarray | None]:
    """``(task, [n] class index per sample, -1 where unlabelled)`` to stratify ``dataset`` by.

    Args:
        dataset: a :class:`~hydranet.data.MultiTaskDataset` (``tasks``, ``task_indices``, ``labels``).
        stratify: a binary or multiclass task name; ``"auto"``: the first such task (none: no
            stratification); ``None``: no stratification.
    """
    if stratify is None:
        return None, None
    tasks = dataset.tasks or {}
    classes = [name for name, task in tasks.items() if task.kind in STRATIFY_KINDS]
    if stratify == "auto":
        if not classes:
            return None, None
        stratify = classes[0]
    elif not isinstance(stratify, str):
        raise TypeError(f"stratify must be a task name, 'auto' or None, got {stratify!r}.")
    elif stratify not in tasks:
        raise unknown_name("stratify task", stratify, list(tasks))
    elif stratify not in classes:
        raise ValueError(
            f"stratify={stratify!r} is a {tasks[stratify].kind} task; a split is stratified by one class index per "
            f"sample: use a binary or multiclass task ({', '.join(classes) or 'there is none'}), or stratify=None."
        )
    out = np.full(len(dataset), -1, dtype=np.int64)
    out[dataset.task_indices(stratify)] = dataset.labels(stratify)
    return stratify, out
