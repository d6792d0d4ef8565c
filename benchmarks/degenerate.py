"""The degenerate-matrix property suite at larger counts, for the aggregators now and at an older revision.

Families (``tests/balancing/properties/families.py``, after TorchJD's test matrices): normal, strongly
stationary, strictly weak, non-weak, zero rows, duplicated rows; shapes 2x5 to 20x30 (and 10x7: more tasks
than parameters); scales 1e-10 to 1e15; float32 and float64. Per method and property, the count of cases
tried and of violations:

* ``finite``: the update has no NaN/inf (and no exception is raised: an exception counts as a violation);
* ``permutation``: permuting the rows moves ``d`` by at most 1e-6 |G| (1e-8 for CAGrad, polished by Newton), for the
  methods whose definition is symmetric in the tasks;
* ``scaling``: ``d(cG) = c d(G)`` to the same tolerance, for the homogeneous methods;
* ``non_conflict``: ``G d >= -tol |G| max(|d|, tol |G|)``, ``tol = 10 sqrt(eps)``, for UPGrad, DualProj,
  MGDA and CAGrad with c = 1 and c = 2.

The baseline is the aggregators package at ``--before`` (default: the revision before the row-space
solvers), extracted with ``git show`` into a temporary package and measured in the same run.

Run: ``python benchmarks/degenerate.py [--seeds N] [--before REV]``; writes ``benchmarks/results/degenerate.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "balancing" / "properties"))
from families import FAMILIES, SCALES, family  # noqa: E402

import hydranet.balancing.aggregators as current  # noqa: E402

PACKAGE = "src/hydranet/balancing/aggregators"
SYMMETRIC = ["mean", "sum", "mgda", "upgrad", "dualproj", "imtl_g", "cagrad", "aligned_mtl", "config"]
HOMOGENEOUS = SYMMETRIC + ["pcgrad", "gradvac", "graddrop"]
NON_CONFLICTING = {"upgrad": ("upgrad", {}), "dualproj": ("dualproj", {}), "mgda": ("mgda", {}),
                   "cagrad_c1": ("cagrad", {"c": 1.0}), "cagrad_c2": ("cagrad", {"c": 2.0})}  # fmt: skip
SHAPES = [(2, 5), (5, 8), (10, 7), (20, 30)]


def load_revision(revision: str):
    """The aggregators package at ``revision`` as a fresh module ``_aggregators_<rev>``."""
    name = "_aggregators_" + "".join(ch for ch in revision if ch.isalnum())
    folder = Path(tempfile.mkdtemp()) / name
    folder.mkdir()
    listing = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:{PACKAGE}"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    for file in listing:
        text = subprocess.run(["git", "show", f"{revision}:{PACKAGE}/{file}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        (folder / file).write_text(text.replace("hydranet.balancing.aggregators", name))
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module(name)


def run(module, name: str, settings: dict, G: torch.Tensor) -> torch.Tensor | None:
    if name == "nash_mtl":
        settings = {"max_norm": None, **settings}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module.AGGREGATORS[name](**settings)(G)
    except Exception:  # noqa: BLE001 - a crash is a violation of finiteness
        return None


def tol(dtype: torch.dtype) -> float:
    return 10 * torch.finfo(dtype).eps ** 0.5


def measure(module, names: list[str], seeds: int) -> dict:
    rng = np.random.default_rng(0)
    counts: dict[str, dict[str, list[int]]] = {}

    def tally(method: str, prop: str, ok: bool) -> None:
        entry = counts.setdefault(method, {}).setdefault(prop, [0, 0])
        entry[0] += 1
        entry[1] += 0 if ok else 1

    for kind in FAMILIES:
        for tasks, params in SHAPES:
            for seed in range(seeds):
                base = family(kind, seed, tasks, params)
                norm = float(torch.linalg.matrix_norm(base, ord=2))
                for name in names:
                    rtol = 1e-8 if name == "cagrad" else 1e-6
                    reference = run(module, name, {}, base)
                    for scale in SCALES:
                        for dtype in (torch.float64, torch.float32):
                            d = run(module, name, {}, (base * scale).to(dtype))
                            tally(name, "finite", d is not None and bool(torch.isfinite(d).all()))
                    if reference is None:
                        continue
                    size = max(float(reference.norm()), norm)
                    if name in SYMMETRIC:
                        d = run(module, name, {}, base[rng.permutation(tasks)])
                        tally(name, "permutation", d is not None and float((d - reference).norm()) <= rtol * size)
                    if name in HOMOGENEOUS:
                        for scale in SCALES:
                            d = run(module, name, {}, base * scale)
                            tally(name, "scaling", d is not None and float((d / scale - reference).norm()) <= rtol * size)
                for label, (name, settings) in NON_CONFLICTING.items():
                    for scale in (1e-10, 1.0, 1e15):
                        for dtype in (torch.float64, torch.float32):
                            G = (base * scale).to(dtype)
                            d = run(module, name, settings, G)
                            if d is None:
                                tally(label, "non_conflict", False)
                                continue
                            Gd, dd = G.double(), d.double()
                            gnorm = float(torch.linalg.matrix_norm(Gd, ord=2))
                            bound = -tol(dtype) * gnorm * max(float(dd.norm()), tol(dtype) * gnorm)
                            tally(label, "non_conflict", float((Gd @ dd).min()) >= bound)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="matrices per family and shape")
    parser.add_argument("--before", default="09ead33^", help="git revision of the baseline aggregators")
    args = parser.parse_args()
    torch.set_num_threads(1)
    before_module = load_revision(args.before)
    names = sorted(set(before_module.AGGREGATORS) & set(current.AGGREGATORS))
    before, after = measure(before_module, names, args.seeds), measure(current, names, args.seeds)
    print(f"{'method':<14} {'property':<13} {'cases':>6} {'before':>7} {'after':>6}")
    for method in sorted(after):
        for prop in sorted(after[method]):
            tried, bad = after[method][prop]
            old = before.get(method, {}).get(prop, [tried, None])[1]
            if old or bad:
                print(f"{method:<14} {prop:<13} {tried:>6} {old:>7} {bad:>6}")
    total = {k: sum(v[1] for m in table.values() for v in m.values()) for k, table in (("before", before), ("after", after))}
    print(f"violations, all methods and properties: before {total['before']}, after {total['after']} "
          f"(rows with none before and after not shown)")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "degenerate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"seeds": args.seeds, "before_revision": args.before, "families": list(FAMILIES),
                               "shapes": SHAPES, "scales": SCALES, "before": before, "after": after,
                               "violations": total}, indent=1))  # fmt: skip
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
