"""The CAGrad / Nash-MTL toy reproduction (benchmarks/toy.py): the functions, the docs table, one short run."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load_toy():
    spec = importlib.util.spec_from_file_location("toy_benchmark", ROOT / "benchmarks" / "toy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toy = _load_toy()


def _by_hand(x1: float, x2: float, scale: float = 1.0) -> tuple[float, float]:
    """The authors' formulas written out with the math module, term by term."""
    a = max(math.tanh(x2 / 2), 0.0)
    b = max(math.tanh(-x2 / 2), 0.0)
    u1 = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), 5e-6)) + 6
    u2 = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), 5e-6)) + 6
    q1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    q2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return scale * (a * u1 + b * q1), a * u2 + b * q2


def test_losses_match_hand_computed_values():
    # (1, -2): only the quadratics act. b = tanh(1) = 0.7615941559557649,
    # q1 = (36 + 3.6)/10 - 20 = -16.04, q2 = (64 + 3.6)/10 - 20 = -13.24.
    b = math.tanh(1.0)
    got = toy.toy_losses(torch.tensor([1.0, -2.0], dtype=torch.float64)).tolist()
    assert got == pytest.approx([-16.04 * b, -13.24 * b], rel=1e-12)
    # (0, 2): only the logs act. a = tanh(1); |-3.5 + tanh(2)| and |1.5 - tanh(2) + 2|.
    got = toy.toy_losses(torch.tensor([0.0, 2.0], dtype=torch.float64)).tolist()
    t2 = math.tanh(2.0)
    assert got == pytest.approx([b * (math.log(3.5 - t2) + 6), b * (math.log(3.5 - t2) + 6)], rel=1e-12)
    # The start (0, 0) has both losses 0 (both weights vanish); the scale multiplies L1 only.
    assert toy.toy_losses(torch.zeros(2, dtype=torch.float64)).tolist() == [0.0, 0.0]
    points = [(-8.5, 7.5), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0), (3.0, 0.4)]
    got = toy.toy_losses(torch.tensor(points, dtype=torch.float64), scale=0.1).numpy()
    assert got == pytest.approx(np.array([_by_hand(*p, scale=0.1) for p in points]), rel=1e-12)


def test_jacobian_rows_are_the_loss_gradients():
    x = torch.tensor([[1.0, -2.0], [-3.0, 1.5]], dtype=torch.float64)
    _, jac = toy.jacobians(x, scale=0.1)
    eps = 1e-6
    for r in range(2):
        for j in range(2):
            step = torch.zeros(2, dtype=torch.float64)
            step[j] = eps
            fd = (toy.toy_losses(x[r] + step, 0.1) - toy.toy_losses(x[r] - step, 0.1)) / (2 * eps)
            assert jac[r, :, j].tolist() == pytest.approx(fd.tolist(), rel=1e-6, abs=1e-8)


def test_pareto_set_is_where_the_gradients_are_opposite():
    front = toy.pareto_set(41)
    # The middle point is the authors' average-loss optimum (0, -8.3552); the ends are at x1 = -7, 7.
    assert front[20] == pytest.approx([0.0, -8.3552], abs=1e-4)
    assert front[[0, -1], 0].tolist() == [-7.0, 7.0]
    _, jac = toy.jacobians(torch.from_numpy(front[1:-1]))
    cosine = torch.nn.functional.cosine_similarity(jac[:, 0], jac[:, 1], dim=1)
    assert cosine.numpy() == pytest.approx(-1.0, abs=1e-9)
    assert toy.distance_to_pareto(np.array([[0.0, -8.3552], [0.0, -5.3552]])) == pytest.approx([0.0, 3.0], abs=1e-3)


RESULTS = ROOT / "benchmarks" / "results" / "toy.json"
needs_results = pytest.mark.skipif(not RESULTS.exists(), reason="run python benchmarks/toy.py first")


@needs_results
def test_docs_table_is_the_one_generated_from_the_json():
    results = json.loads(RESULTS.read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    match = re.search(re.escape(toy.BEGIN) + r"\n(.*?)" + re.escape(toy.END), text, re.S)
    assert match, "docs/results.md lost its toy-table markers"
    assert match.group(1) == toy.render_tables(results), "run: python benchmarks/toy.py --write-docs"


@needs_results
def test_json_supports_the_docs_claim_that_cagrad_reaches_the_front_from_every_start():
    # The CAGrad paper's Fig. 1 (and its row of the docs table): CAGrad reaches the front from every
    # start of the CAGrad setup, at the average-loss optimum.
    results = json.loads(RESULTS.read_text())
    runs = [r for r in results["setups"]["cagrad"]["runs"] if r["method"] == "cagrad"]
    assert len(runs) == 3
    assert all(r["reached"] and r["to_optimum"] < toy.TOL for r in runs)


def test_short_cagrad_run_heads_for_the_front_without_raising_a_loss():
    # From (-8.5, -5) in the CAGrad setup the paper's CAGrad run goes straight down to the front.
    # 1,500 Adam steps of lr 1e-3 move at most about 1.5 * sqrt(2): the distance to the front must
    # shrink by a good share of that, and both losses must fall (the update conflicts with neither).
    setup = dict(toy.SETUPS["cagrad"], starts=[(-8.5, -5.0)])
    toy.SETUPS["short"] = setup
    try:
        out = toy.run_setup("short", methods=["cagrad"], steps=1500, early_stop=False)
    finally:
        del toy.SETUPS["short"]
    (run,) = out["runs"]
    start = toy.distance_to_pareto(np.array([[-8.5, -5.0]]))[0]
    assert start - run["distance"] > 0.5
    before = toy.toy_losses(torch.tensor([-8.5, -5.0], dtype=torch.float64)).tolist()
    assert run["losses"][0] < before[0] and run["losses"][1] < before[1]
