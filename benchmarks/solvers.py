"""Time per call of UPGrad's dual-cone solver: all T projections min_{v >= e_i} v^T K v of one Gram matrix.

Compared in the same run, on the same K (random Gaussian G of T rows and 1000 columns, K = G G^T,
T = 2, 10, 40, one thread):

* ``batched``: ``solvers.dual_cone_weights`` (all targets at once by the primal-dual active-set method,
  KKT-checked, BVLS for the rest);
* ``one_by_one``: the previous solver, one bounded-variable least-squares problem per target in the same
  row-space coordinates (``solvers._nnls``, KKT-checked, Lawson-Hanson retry);
* ``quadprog``: Goldfarb-Idnani's dual active-set method (the ``quadprog`` package), one QP per target,
  on K as TorchJD 0.18 prepares it (trace-normalised, 1e-4 added to the diagonal);
* ``torchjd``: TorchJD 0.18's ``QuadprogProjector`` itself (qpsolvers + quadprog, torch tensors in and out),
  when installed.

Each time is the median over rounds of the mean of a ~0.2 s burst. The JSON also holds the largest
difference of the batched directions from the one-by-one ones, relative to |G| (exactness check).

Run: ``python benchmarks/solvers.py [--rounds 5]``; writes ``benchmarks/results/solvers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hydranet.balancing.aggregators import solvers  # noqa: E402

TASK_COUNTS = (2, 10, 40)
PARAMS = 1000
RESULTS = Path(__file__).parent / "results" / "solvers.json"


def one_by_one(gramian: np.ndarray) -> np.ndarray:
    """The previous ``dual_cone_weights`` for the targets ``e_i``: one BVLS problem per row (all rows live)."""
    vectors, roots = solvers.row_space(gramian / float(np.max(np.diag(gramian))))
    coords = roots[:, None] * vectors.T
    out = np.zeros_like(gramian)
    for k, u in enumerate(np.eye(gramian.shape[0])):
        start = coords @ u
        z = start + coords @ solvers._nnls(coords, -start)
        if np.linalg.norm(z) > gramian.shape[0] * solvers.FLOAT64_EPS * max(float(np.linalg.norm(start)), 1.0):
            out[k] = vectors @ (z / roots)
    return out


def by_quadprog(gramian: np.ndarray) -> np.ndarray:
    import quadprog

    size = gramian.shape[0]
    matrix = gramian / (np.trace(gramian) / size) + 1e-4 * np.eye(size)  # TorchJD's normalize + regularize
    eye = np.eye(size)
    return np.stack([quadprog.solve_qp(matrix, np.zeros(size), eye, eye[i])[0] for i in range(size)])


def torchjd_projector():
    try:
        import torch
        from torchjd._linalg._dual_cone import QuadprogProjector
    except ImportError:
        return None
    torch.set_num_threads(1)
    projector = QuadprogProjector()
    return lambda gramian: projector(torch.eye(gramian.shape[0], dtype=torch.float64), torch.from_numpy(gramian)).numpy()


def burst(solve, gramian: np.ndarray, seconds: float = 0.2) -> float:
    solve(gramian)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 3:
        solve(gramian)
        calls += 1
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    methods = {"batched": lambda K: solvers.dual_cone_weights(K, np.eye(K.shape[0])), "one_by_one": one_by_one}
    try:
        import quadprog  # noqa: F401

        methods["quadprog"] = by_quadprog
    except ImportError:
        pass
    if (projector := torchjd_projector()) is not None:
        methods["torchjd"] = projector
    results = {}
    for tasks in TASK_COUNTS:
        rng = np.random.default_rng(tasks)
        G = rng.normal(size=(tasks, PARAMS))
        K = G @ G.T
        times = {name: [] for name in methods}
        for _ in range(args.rounds):  # rounds outermost: load on the machine spreads over the methods
            for name, solve in methods.items():
                times[name].append(burst(solve, K))
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        norm = float(np.linalg.norm(G, 2))
        error = float(np.abs(methods["batched"](K) @ G - one_by_one(K) @ G).max()) / norm
        entry = {"ms": ms, "batched_vs_one_by_one_error": error}
        entry["ratio"] = {f"batched/{name}": ms["batched"] / ms[name] for name in ms if name != "batched"}
        results[str(tasks)] = entry
        ratios = ", ".join(f"{k} {v:.3f}" for k, v in entry["ratio"].items())
        timings = ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
        print(f"T={tasks:>2}: {timings} | {ratios} | max direction difference {error:.1e} |G|")
    report = {
        "workload": f"K = G G^T, G Gaussian [T, {PARAMS}], targets e_1..e_T (UPGrad)",
        "threads": 1,
        "rounds": args.rounds,
        "numpy": np.__version__,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
