r"""User preferences over the tasks for the aggregators that take ``pref_vector`` (TorchJD's convention).

A preference vector :math:`p` has one finite entry per task of the full task list. It replaces the
uniform weights a method starts from: UPGrad projects each :math:`p_i g_i` and sums, DualProj projects
:math:`\sum_i p_i g_i`, Aligned-MTL combines the aligned rows with :math:`p`, ConFIG asks for cosines
proportional to :math:`p`. With ``present=`` the rows take the entries of their tasks (absent tasks drop
theirs; nothing is renormalised, as :class:`~hydranet.balancing.aggregators.Constant`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from hydranet.balancing.aggregators.base import TaskRows

__all__ = ["Preference", "check_preference", "preference_rows"]

#: What ``pref_vector=`` accepts.
Preference = Sequence[float] | Tensor | np.ndarray | None


def check_preference(value: Preference, name: str) -> np.ndarray | None:
    """The preference as a float64 array, or ``None``; an error naming the problem otherwise."""
    if value is None:
        return None
    array = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    if array.ndim != 1 or array.size == 0 or not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} pref_vector must be a non-empty 1-D sequence of finite numbers (one per task, in the order of "
            f"the task list), got {value!r}."
        )
    return array


def preference_rows(pref: np.ndarray | None, tasks: TaskRows, default: float, name: str) -> np.ndarray:
    """The preference entries of the rows ``tasks`` (``default`` for every row when ``pref`` is ``None``)."""
    if pref is None:
        return np.full(tasks.index.size, default)
    if pref.size != tasks.total:
        raise ValueError(
            f"{name} has a pref_vector of {pref.size} entries but the Jacobian describes {tasks.total} tasks: give "
            "one entry per task, or pass present= when the rows are some of them."
        )
    return pref[tasks.index].copy()
