"""Per-task state with some tasks absent: ``agg(G, present=mask)`` for GradVac, Nash-MTL, MoCo, ExcessMTL."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydranet.balancing import make
from hydranet.balancing.aggregators import AGGREGATORS, Mean, UPGrad

PER_TASK = ["gradvac", "nash_mtl", "moco", "excess_mtl"]
T, P = 4, 9
#: Outputs recorded before ``present=`` existed, for the inputs of :func:`reference_inputs`.
REFERENCE = Path(__file__).parent / "data" / "stateful_reference.npz"
CASES = {
    "gradvac": ("gradvac", {}),
    "gradvac_fast": ("gradvac", {"beta": 0.5, "normalize": True}),
    "nash_mtl": ("nash_mtl", {}),
    "nash_mtl_every2": ("nash_mtl", {"update_weights_every": 2, "max_norm": None}),
    "moco": ("moco", {}),
    "moco_rho": ("moco", {"rho": 0.3, "beta": 0.9, "gamma": 0.5, "normalize": True}),
    "excess_mtl": ("excess_mtl", {}),
    "excess_mtl_fast": ("excess_mtl", {"step_size": 0.5}),
}
# Settings with fast-moving state, so that a wrong row mapping shows.
FAST = {"gradvac": {"beta": 0.5}, "nash_mtl": {"update_weights_every": 2}, "moco": {"beta_sigma": 0.0}, "excess_mtl": {"step_size": 0.5}}


def reference_inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    scales = torch.tensor([[1.0], [4.0], [0.25], [2.0]], dtype=torch.float64)
    return [(torch.randn(T, P, generator=g, dtype=torch.float64) * scales + 0.3).to(dtype) for _ in range(8)]


def jacobian(seed: int, rows: int = T) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, P, generator=g, dtype=torch.float64) * torch.logspace(-0.5, 0.5, rows, dtype=torch.float64)[:, None] + 0.2


def per_task_state(agg, name: str) -> list[np.ndarray]:
    """The state entries of each task, as ``T`` arrays (GradVac: row and column of the targets)."""
    if name == "gradvac":
        return [np.concatenate([agg.targets[i], agg.targets[:, i]]) for i in range(T)]
    if name == "nash_mtl":
        return [agg.alpha[i : i + 1] for i in range(T)]
    if name == "moco":
        return [np.concatenate([agg.tracked[i].numpy(), agg.lambdas[i : i + 1], agg.task_steps[i : i + 1]]) for i in range(T)]
    return [np.concatenate([agg.squares[i].numpy(), agg.task_weights[i : i + 1], agg.initial[i : i + 1]]) for i in range(T)]


def mask(tasks) -> torch.Tensor:
    out = torch.zeros(T, dtype=torch.bool)
    out[list(tasks)] = True
    return out


# MoCo is not a weighting of the rows: it has no weights to compare.
RECORDED = [(case, kind) for case in sorted(CASES) for kind in ("update", "weights") if (CASES[case][0], kind) != ("moco", "weights")]


def recorded_steps(case: str, kind: str, dtype: torch.dtype, present) -> np.ndarray:
    """The 8 outputs of a fresh aggregator of ``case`` on :func:`reference_inputs`, stacked."""
    name, options = CASES[case]
    agg = AGGREGATORS[name](**options)
    step = agg if kind == "update" else agg.weights
    return np.stack([step(G, present=present).numpy() for G in reference_inputs(dtype)])


@pytest.mark.parametrize(("case", "kind"), RECORDED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_mask_of_all_tasks_is_bit_identical_to_no_mask(case, kind, dtype):
    # Both sides run here, in this process, on this CPU: the all-present step must be the very same arithmetic.
    np.testing.assert_array_equal(recorded_steps(case, kind, dtype, [True] * T), recorded_steps(case, kind, dtype, None))


# Tolerances for outputs recorded on another machine: the last bits of a float depend on the CPU's SIMD
# path (the order of the additions in a dot product), not on the code. float64: every method here is
# closed-form arithmetic over 8 steps except Nash-MTL, whose Newton solve stops at a relative residual of
# 1e-12 (weights accurate to 1e-12 times the conditioning of the 4 x 4 Gram matrix, < 1e3 here): 1e-9.
# float32: the updates and the tracked state are float32 (6e-8 per rounding, amplified by the same
# conditioning and the 8 steps of state): 1e-4. atol: the same fraction of the largest recorded entry.
RECORDED_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@pytest.mark.parametrize(("case", "kind"), RECORDED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_all_tasks_present_matches_the_recorded_outputs_to_the_solvers_accuracy(case, kind, dtype):
    expected = np.load(REFERENCE)[f"{case}/{dtype}/{kind}"]
    got = recorded_steps(case, kind, dtype, [True] * T)
    tol = RECORDED_RTOL[dtype]
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())


subsets = st.lists(st.sets(st.integers(0, T - 1), min_size=1), min_size=1, max_size=8)


@pytest.mark.parametrize("name", PER_TASK)
@settings(max_examples=25, deadline=None)
@given(steps=subsets)
def test_random_subsets_are_finite_and_leave_absent_tasks_alone(name, steps):
    agg = AGGREGATORS[name](**FAST[name])
    agg(jacobian(100))  # all tasks once, so that every task has state
    for seed, tasks in enumerate(steps):
        before = per_task_state(agg, name)
        rows = sorted(tasks)
        update = agg(jacobian(seed, len(rows)), present=mask(rows))
        assert update.shape == (P,) and bool(torch.isfinite(update).all())
        after = per_task_state(agg, name)
        for i in set(range(T)) - tasks:
            np.testing.assert_array_equal(after[i], before[i])
        if name == "moco":
            np.testing.assert_allclose(agg.lambdas.sum(), 1.0, rtol=1e-12)
        if name == "excess_mtl":
            np.testing.assert_allclose(agg.task_weights.sum(), T, rtol=1e-12)


def sub_state(agg, name: str, rows: list[int]) -> list[np.ndarray]:
    """The state of the tasks ``rows`` (all of them for the sub-problem's aggregator: ``rows = range(k)``)."""
    if name == "gradvac":
        return [agg.targets[np.ix_(rows, rows)]]
    if name == "nash_mtl":
        return [agg.alpha[rows]]
    if name == "moco":
        return [agg.tracked[rows].numpy(), agg.lambdas[rows] / agg.lambdas[rows].sum(), agg.task_steps[rows]]
    return [agg.squares[rows].numpy(), agg.task_weights[rows], agg.initial[rows]]


@pytest.mark.parametrize("name", PER_TASK)
@settings(max_examples=20, deadline=None)
@given(kept=st.sets(st.integers(0, T - 1), min_size=2, max_size=T - 1), length=st.integers(1, 6))
def test_tasks_never_present_leave_the_method_on_the_other_tasks(name, kept, length):
    rows = sorted(kept)
    full, sub = AGGREGATORS[name](**FAST[name]), AGGREGATORS[name](**FAST[name])
    for seed in range(length):
        G = jacobian(seed, len(rows))
        torch.testing.assert_close(full(G, present=mask(rows)), sub(G), rtol=1e-10, atol=1e-12)
    for a, b in zip(sub_state(full, name, rows), sub_state(sub, name, list(range(len(rows))))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", PER_TASK)
def test_an_absent_task_resumes_from_its_own_state(name):
    """Steps without task 3 in between change nothing for it; the others follow their sub-problem."""
    agg = AGGREGATORS[name](**FAST[name])
    agg(jacobian(0))
    kept = per_task_state(agg, name)[3]
    for seed in range(1, 4):
        agg(jacobian(seed, 3), present=mask([0, 1, 2]))
    np.testing.assert_array_equal(per_task_state(agg, name)[3], kept)
    assert torch.isfinite(agg(jacobian(9))).all()


@pytest.mark.parametrize("name", PER_TASK)
def test_the_first_call_may_hold_a_subset(name):
    agg = AGGREGATORS[name]()
    agg(jacobian(0, 2), present=mask([1, 3]))
    assert agg(jacobian(1)).shape == (P,)  # state for all T tasks was created at once


def test_moco_tracks_each_task_with_its_own_count():
    agg = AGGREGATORS["moco"](beta=0.5, beta_sigma=1.0)
    g = [jacobian(s, 1)[0] for s in range(3)]
    agg(torch.stack([g[0], g[0]]), present=mask([0, 1]))
    agg(torch.stack([g[1], g[1]]), present=mask([0, 2]))
    agg(torch.stack([g[2], g[2]]), present=mask([0, 2]))
    torch.testing.assert_close(agg.tracked[1], 0.5 * g[0])  # one step at rate 1/2
    torch.testing.assert_close(agg.tracked[2], 0.5 * g[1] + 0.25 * (g[2] - 0.5 * g[1]))  # rates 1/2, 1/4
    assert agg.task_steps.tolist() == [3, 1, 2, 0] and agg.step == 3
    torch.testing.assert_close(agg.tracked[3], torch.zeros(P, dtype=torch.float64))


def test_excess_mtl_applies_the_renormalised_weights_of_the_present_tasks():
    agg = AGGREGATORS["excess_mtl"](step_size=0.5)
    for seed in range(3):
        agg(jacobian(seed))
    stored = agg.task_weights.copy()
    w = agg.weights(jacobian(5, 2), present=mask([0, 2]))
    assert float(w.sum()) == pytest.approx(2.0)
    assert agg.task_weights[[0, 2]].sum() == pytest.approx(stored[[0, 2]].sum())


@pytest.mark.parametrize("name", PER_TASK)
def test_a_checkpoint_taken_between_subsets_resumes_exactly(name):
    steps = [[0, 1], [1, 2, 3], [0, 3], [0, 1, 2, 3], [2, 3]]
    agg = AGGREGATORS[name](**FAST[name])
    for seed, rows in enumerate(steps[:2]):
        agg(jacobian(seed, len(rows)), present=mask(rows))
    resumed = AGGREGATORS[name](**FAST[name])
    resumed.load_state_dict(copy.deepcopy(agg.state_dict()))
    for seed, rows in enumerate(steps[2:], start=2):
        G = jacobian(seed, len(rows))
        assert torch.equal(agg(G, present=mask(rows)), resumed(G, present=mask(rows)))


@pytest.mark.parametrize(("name", "added"), [("moco", "task_steps"), ("nash_mtl", "solved")])
def test_a_checkpoint_without_the_per_task_entries_resumes_exactly(name, added):
    """State written before ``present=`` existed lacks an entry; every task was present then."""
    agg = AGGREGATORS[name](**FAST[name])
    for seed in range(3):
        agg(jacobian(seed))
    state = copy.deepcopy(agg.state_dict())
    del state[added]
    resumed = AGGREGATORS[name](**FAST[name])
    resumed.load_state_dict(state)
    for seed in range(3, 6):
        assert torch.equal(agg(jacobian(seed)), resumed(jacobian(seed)))


def test_masks_that_do_not_fit_are_refused():
    agg = AGGREGATORS["moco"]()
    agg(jacobian(0))
    with pytest.raises(ValueError, match="present= marking 2 of 4 tasks but a Jacobian with 3 rows"):
        agg(jacobian(1, 3), present=mask([0, 1]))
    with pytest.raises(TypeError, match="boolean mask.*dtype int64"):
        agg(jacobian(1, 2), present=np.array([0, 1]))
    with pytest.raises(ValueError, match="per-task state for 4 tasks but got a present= mask of 5 tasks.*reset"):
        agg(jacobian(1, 2), present=[True, True, False, False, False])
    with pytest.raises(ValueError, match="4 tasks but got a Jacobian with 3 rows and no present= mask"):
        agg(jacobian(1, 3))
    with pytest.raises(ValueError, match="9 gradient entries but got 5: the shared parameters changed"):
        agg(jacobian(1, 2)[:, :5], present=mask([0, 1]))


@pytest.mark.parametrize("agg", [Mean(), UPGrad()])
def test_methods_without_per_task_state_ignore_the_mask(agg):
    G = jacobian(3, 2)
    assert torch.equal(agg(G, present=mask([0, 3])), agg(G))


@pytest.mark.parametrize("name", PER_TASK)
def test_a_shared_dataset_with_missing_labels_trains(name):
    """Three tasks on one dataset; batches label {a, b}, {b, c} or all three."""
    torch.manual_seed(0)
    x = torch.randn(48, 4)
    targets = {"a": x @ torch.tensor([1.0, -1.0, 0.5, 0.0]), "b": x[:, 0] * x[:, 1], "c": x[:, 2:].sum(1)}
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh())
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(16, 1) for t in targets})
    balancer = make(name, list(targets))
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(heads.parameters()), lr=0.05)
    task_params = {t: list(heads[t].parameters()) for t in heads}
    labelled = [("a", "b"), ("b", "c"), ("a", "b", "c")]

    def losses(tasks, rows=slice(None)):
        h = backbone(x[rows])
        return {t: torch.nn.functional.mse_loss(heads[t](h).squeeze(1), targets[t][rows]) for t in tasks}

    with torch.no_grad():
        start = {t: v.item() for t, v in losses(targets).items()}
    for step in range(60):
        tasks = labelled[step % 3]
        rows = slice(16 * (step % 3), 16 * (step % 3 + 1))
        optimizer.zero_grad()
        info = balancer.backward(losses(tasks, rows), list(backbone.parameters()), task_params)
        assert info["tasks"] == list(tasks)
        optimizer.step()
    with torch.no_grad():
        end = {t: v.item() for t, v in losses(targets).items()}
    assert all(end[t] < start[t] for t in targets), (start, end)
    assert sum(end.values()) < 0.8 * sum(start.values()), (start, end)
