import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydranet.data.schedule import (
    FixedWeights,
    Proportional,
    RoundRobin,
    Temperature,
    apportion,
    epoch_batches,
    interleave,
    make_schedule,
)

SIZES = {"a": 100, "b": 400, "c": 1600}


def test_probabilities_match_the_formulas():
    np.testing.assert_allclose(RoundRobin().probabilities(SIZES), [1 / 3] * 3)
    np.testing.assert_allclose(Proportional().probabilities(SIZES), [1 / 21, 4 / 21, 16 / 21])
    # n^(1/2) = 10, 20, 40
    np.testing.assert_allclose(Temperature(2.0).probabilities(SIZES), [1 / 7, 2 / 7, 4 / 7])
    # capped at 400 first: 10, 20, 20
    np.testing.assert_allclose(Temperature(2.0, size_cap=400).probabilities(SIZES), [0.2, 0.4, 0.4])
    np.testing.assert_allclose(Temperature(1.0).probabilities(SIZES), Proportional().probabilities(SIZES))
    np.testing.assert_allclose(Temperature(1e9).probabilities(SIZES), [1 / 3] * 3)
    np.testing.assert_allclose(FixedWeights({"c": 2, "a": 1, "b": 1}).probabilities(SIZES), [0.25, 0.25, 0.5])


def test_make_schedule():
    assert isinstance(make_schedule("round_robin"), RoundRobin)
    assert isinstance(make_schedule("proportional"), Proportional)
    t = make_schedule("temperature", temperature=3.0, size_cap=10)
    assert isinstance(t, Temperature) and t.temperature == 3.0 and t.size_cap == 10
    assert isinstance(make_schedule({"a": 1}), FixedWeights)
    with pytest.raises(ValueError, match="Unknown schedule 'roundrobin'"):
        make_schedule("roundrobin")


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FixedWeights({"a": 1, "b": 0}), "positive"),
        (lambda: FixedWeights({"a": -1}), "positive"),
        (lambda: Temperature(0), "temperature must be a positive"),
        (lambda: Temperature(2.0, size_cap=0), "size_cap"),
        (lambda: FixedWeights({"a": 1, "b": 1, "c": 1, "d": 1}).probabilities(SIZES), r"unknown: \['d'\]"),
        (lambda: FixedWeights({"a": 1, "b": 1}).probabilities(SIZES), r"missing: \['c'\]"),
    ],
)
def test_schedule_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_apportion_by_hand():
    assert apportion(10, [0.25, 0.25, 0.5]).tolist() == [3, 2, 5]  # tie on .5: first task
    assert apportion(7, [1 / 3] * 3).tolist() == [3, 2, 2]
    assert apportion(700, [1 / 7, 2 / 7, 4 / 7]).tolist() == [100, 200, 400]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.lists(st.floats(0.01, 100), min_size=1, max_size=6))
def test_apportion_is_within_one_of_the_quota(total, weights):
    p = np.array(weights) / sum(weights)
    counts = apportion(total, p)
    assert counts.sum() == total
    assert np.all(np.abs(counts - total * p) < 1 + 1e-9)


def test_epoch_batches_by_hand():
    rr = [0.5, 0.5]
    assert epoch_batches("max_size_cycle", rr, [3, 7]) == 14  # T * max k
    assert epoch_batches("min_size", rr, [3, 7]) == 6  # T * min k
    assert epoch_batches(9, rr, [3, 7]) == 9
    # temperature on SIZES with 4 per batch: k = 25, 100, 400; k / p = 175, 350, 700
    assert epoch_batches("max_size_cycle", [1 / 7, 2 / 7, 4 / 7], [25, 100, 400]) == 700
    assert epoch_batches("min_size", [1 / 7, 2 / 7, 4 / 7], [25, 100, 400]) == 175
    assert epoch_batches("max_size_cycle", [1 / 3] * 3, [1, 1, 1]) == 3  # 1 / (1/3) must not round to 4


def test_round_robin_alternates_and_skips_exhausted_tasks():
    task, occ = interleave([2, 4, 1], [1 / 3] * 3)
    assert task.tolist() == [0, 1, 2, 0, 1, 1, 1]
    assert occ.tolist() == [0, 0, 0, 1, 1, 2, 3]
    task, _ = RoundRobin().sequence([3, 3], np.array([0.5, 0.5]), np.random.default_rng(0))
    assert task.tolist() == [0, 1, 0, 1, 0, 1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.05, 1.0), min_size=1, max_size=5),
    st.integers(1, 3000),
    st.integers(0, 2**32 - 1),
)
def test_stratified_order_keeps_every_stretch_close_to_the_shares(weights, total, seed):
    p = np.array(weights) / sum(weights)
    counts = apportion(total, p)
    task, occ = interleave(counts, p, np.random.default_rng(seed))
    assert np.bincount(task, minlength=len(p)).tolist() == counts.tolist()
    for t in range(len(p)):
        assert occ[task == t].tolist() == list(range(counts[t]))  # each task's batches in order
    # every prefix of L steps holds L p_t batches of task t up to less than 1 + T p_t
    onehot = task[:, None] == np.arange(len(p))[None, :]
    prefix = np.cumsum(onehot, axis=0)
    steps = np.arange(1, total + 1)[:, None]
    assert np.all(np.abs(prefix - steps * p[None, :]) < 1 + len(p) * p[None, :] + 1e-9)


def test_stratified_frequencies_within_binomial_bounds_over_windows():
    p = np.array([1 / 7, 2 / 7, 4 / 7])
    counts = apportion(7000, p)
    task, _ = Temperature(2.0).sequence(counts, p, np.random.default_rng(3))
    window = 100
    for lo in range(0, 7000, window):
        got = np.bincount(task[lo : lo + window], minlength=3)
        sd = np.sqrt(window * p * (1 - p))
        assert np.all(np.abs(got - window * p) <= 3 * sd)


def test_stratified_order_is_random_but_seeded():
    p = np.array([0.25, 0.75])
    a, _ = Proportional().sequence([25, 75], p, np.random.default_rng(0))
    b, _ = Proportional().sequence([25, 75], p, np.random.default_rng(0))
    c, _ = Proportional().sequence([25, 75], p, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_fixed_counts_drop_out_when_exhausted():
    # weights 1:1 but task 0 has only 2 batches: after it runs out only task 1 remains
    task, _ = interleave([2, 10], [0.5, 0.5], np.random.default_rng(0))
    assert set(task[6:].tolist()) == {1}
