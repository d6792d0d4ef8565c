"""Degenerate task Jacobians, after TorchJD's test matrices (Quinton & Rey 2024, ``tests/unit/aggregation``).

Every family returns a float64 ``[T, P]`` tensor built from a seed; callers scale it and cast it.

* ``normal``: Gaussian rows (full row rank when ``T <= P``; ``T > P`` rows are linearly dependent);
* ``strong_stationary``: ``u^T G = 0`` for some ``u > 0``: 0 lies in the relative interior of the hull
  of the rows (a Pareto-stationary point), rank ``T - 1``;
* ``strictly_weak``: ``u^T G = 0`` for some ``u >= 0`` with zeros: 0 lies on the boundary of the hull
  of the rows, rank ``T - 1`` (TorchJD's rank-19-of-20 matrices for ``T = 20``);
* ``non_weak``: rank ``k < T`` but a direction ``e`` with ``G e > 0``: 0 is not in the hull;
* ``zero_rows``: Gaussian rows of which some are exactly zero (a task whose masked loss is an exact 0);
* ``duplicates``: Gaussian rows of which some repeat another row exactly.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FAMILIES", "SCALES", "family"]

#: Magnitudes of the gradient entries the suite runs at.
SCALES = (1e-10, 1e-5, 1.0, 1e5, 1e10, 1e15)


def _normal(rng: np.random.Generator, tasks: int, params: int) -> np.ndarray:
    return rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-1, 1, size=(tasks, 1))


def _annihilated(rng: np.random.Generator, tasks: int, params: int, u: np.ndarray) -> np.ndarray:
    """Gaussian rows projected so that ``u^T G = 0`` (exactly up to rounding), rank ``T - 1``."""
    rows = _normal(rng, tasks, params)
    return rows - np.outer(u, u @ rows) / (u @ u)


def _strong_stationary(rng: np.random.Generator, tasks: int, params: int) -> np.ndarray:
    return _annihilated(rng, tasks, params, rng.uniform(0.2, 1.0, size=tasks))


def _strictly_weak(rng: np.random.Generator, tasks: int, params: int) -> np.ndarray:
    u = rng.uniform(0.2, 1.0, size=tasks)
    u[rng.permutation(tasks)[: max(1, tasks // 3)]] = 0.0  # 0 on a face of the hull, not inside it
    return _annihilated(rng, tasks, params, u)


def _non_weak(rng: np.random.Generator, tasks: int, params: int) -> np.ndarray:
    rank = max(1, min(tasks - 1, params - 1))
    basis = np.linalg.qr(rng.normal(size=(params, rank)))[0].T  # orthonormal rows, the first is e
    coef = rng.normal(size=(tasks, rank))
    coef[:, 0] = rng.uniform(0.5, 2.0, size=tasks)  # g_i . e > 0 for every row
    return coef @ basis


def _zero_rows(rng: np.random.Generator, tasks: int, params: int) -> np.ndarray:
    rows = _normal(rng, tasks, params)
    rows[rng.permutation(tasks)[: max(1, tasks // 5)]] = 0.0
    return rows


def _duplicates(rng: np.random.Generator, tasks: int, params: int) -> np.ndarray:
    rows = _normal(rng, tasks, params)
    copies = rng.permutation(tasks)[: max(1, tasks // 4)]
    rows[copies] = rows[rng.integers(0, tasks, size=copies.size)]
    return rows


FAMILIES = {
    "normal": _normal,
    "strong_stationary": _strong_stationary,
    "strictly_weak": _strictly_weak,
    "non_weak": _non_weak,
    "zero_rows": _zero_rows,
    "duplicates": _duplicates,
}


def family(name: str, seed: int, tasks: int, params: int) -> torch.Tensor:
    """The ``seed``-th ``[tasks, params]`` float64 matrix of family ``name``."""
    rng = np.random.default_rng([seed, tasks, params, list(FAMILIES).index(name)])
    return torch.tensor(FAMILIES[name](rng, tasks, params), dtype=torch.float64)
