import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hydranet.data.balance import (
    ClassBalance,
    WeightedDraw,
    class_counts,
    class_labels,
    class_strata,
    class_weights,
    sample_weights,
)


def test_class_weights_match_the_formulas_by_hand():
    counts = [50, 5]
    np.testing.assert_allclose(class_weights(counts, "inverse"), [1 / 50, 1 / 5])
    np.testing.assert_allclose(class_weights(counts, "sqrt"), [1 / math.sqrt(50), 1 / math.sqrt(5)])
    np.testing.assert_allclose(
        class_weights(counts, "effective", beta=0.9), [0.1 / (1 - 0.9**50), 0.1 / (1 - 0.9**5)]
    )
    # f = [50/55, 5/55]; t = 0.5: r = max(1, sqrt(0.5 * 55 / 50)) = 1 and sqrt(0.5 * 55 / 5) = sqrt(5.5)
    np.testing.assert_allclose(class_weights(counts, "repeat_factor", threshold=0.5), [1.0, math.sqrt(5.5)])


def test_empty_classes_get_zero_weight():
    for method in ("inverse", "sqrt", "effective", "repeat_factor"):
        w = class_weights([3, 0, 1], method)
        assert w[1] == 0 and w[0] > 0 and w[2] > 0


def test_effective_number_interpolates_between_none_and_inverse():
    counts = np.array([1000, 100, 10])
    np.testing.assert_allclose(class_weights(counts, "effective", beta=0.0), [1, 1, 1])
    w = class_weights(counts, "effective", beta=1 - 1e-9)
    np.testing.assert_allclose(w / w[0], (1 / counts) / (1 / counts[0]), rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=8), st.sampled_from(["inverse", "sqrt", "effective"]))
def test_rarer_classes_never_weigh_less(counts, method):
    w = class_weights(counts, method)
    order = np.argsort(counts)
    assert np.all(np.diff(w[order]) <= 1e-12)


def test_repeat_factor_uses_the_number_of_samples_for_multilabel():
    # 10 images, class 0 on all of them, class 1 on one: f = [1, 0.1]; t = 0.4 -> r = [1, 2]
    np.testing.assert_allclose(class_weights([10, 1], "repeat_factor", threshold=0.4, n_samples=10), [1, 2])


def test_sample_weights_single_label():
    labels = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(sample_weights(labels, "inverse"), [1 / 3] * 3 + [1] + [1 / 2] * 2)


def test_multilabel_sample_weight_is_the_max_over_its_labels():
    labels = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0]])
    # counts [4, 1, 1], n = 5; t = 0.8: f = [0.8, 0.2, 0.2], r = [1, 2, 2]; no label -> 1
    np.testing.assert_allclose(
        sample_weights(labels, ClassBalance("repeat_factor", threshold=0.8)), [1, 2, 2, 1, 1]
    )
    # inverse: class weights [1/4, 1, 1]; the sample without labels is a group of 1 -> weight 1
    np.testing.assert_allclose(sample_weights(labels, "inverse"), [0.25, 1, 1, 1, 0.25])
    strata, w = class_strata(labels, "inverse")
    assert strata.tolist() == [0, 1, 2, 3, 0] and len(w) == 4


def test_class_counts():
    assert class_counts(np.array([2, 0, 2, 2]), num_classes=4).tolist() == [1, 0, 3, 0]
    assert class_counts(np.array([[1, 0], [1, 1], [0, 0]])).tolist() == [2, 1]


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (np.array([0.5, 1.2]), {}, "regression"),
        (np.array([1.0, 2.0]), {"kind": "regression"}, "regression task"),
        (np.array([[0.2, 3.0]]), {}, "regression"),
        (np.array([0, 1, 3]), {"num_classes": 3}, "label 3 is outside"),
        (np.array([0, -1, 1]), {}, "label -1 is outside"),
        (np.array([[0, 2]]), {"kind": "multilabel"}, "0/1"),
        (np.zeros((2, 2, 2)), {}, "shape"),
    ],
)
def test_invalid_labels_are_rejected_with_a_fix(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_labels(labels, task="t", **kwargs)


def test_integer_valued_floats_are_class_labels():
    arr, c = class_labels(np.array([0.0, 2.0, 1.0]))
    assert arr.dtype.kind == "i" and c == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "median"}, "Unknown class-balance"), ({"beta": 1.0}, "beta"), ({"threshold": 0}, "threshold")],
)
def test_class_balance_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassBalance(**kwargs)


def _frequencies_within(observed_counts, probabilities, sds=5.0):
    total = observed_counts.sum()
    p = np.asarray(probabilities)
    sd = np.sqrt(total * p * (1 - p))
    assert np.all(np.abs(observed_counts - total * p) <= sds * sd + 1), (observed_counts, total * p)


@pytest.mark.parametrize("n_strata", [2, 5, 40])  # few strata: comparisons; many: binary search
def test_weighted_draw_frequencies_follow_the_weights(n_strata):
    rng = np.random.default_rng(1)
    strata = rng.integers(0, n_strata, 3000)
    weights = rng.random(n_strata) + 0.1
    draw = WeightedDraw(strata, weights)
    pos = draw.draw(np.random.default_rng(2), 200_000)
    mass = np.bincount(strata, minlength=n_strata) * weights
    _frequencies_within(np.bincount(strata[pos], minlength=n_strata), mass / mass.sum())
    # uniform inside a stratum: every member of stratum 0 is drawn about equally often
    members = np.flatnonzero(strata == 0)
    hits = np.bincount(pos, minlength=len(strata))[members]
    p0 = mass[0] / mass.sum() / len(members)
    expected = np.append(np.full(len(members), p0), 1 - p0 * len(members))
    _frequencies_within(np.append(hits, len(pos) - hits.sum()), expected)


def test_weighted_draw_returns_values_and_skips_zero_weights():
    values = np.array([100, 200, 300, 400], dtype=np.int32)
    draw = WeightedDraw(np.array([0, 1, 1, 2]), [0.0, 1.0, 3.0], values)
    out = draw.draw(np.random.default_rng(0), 10_000)
    assert out.dtype == np.int32 and set(out.tolist()) <= {200, 300, 400}
    # strata masses: 2 * 1 = 2 and 1 * 3 = 3 -> P(400) = 3/5, P(200) = P(300) = 1/5
    _frequencies_within(np.array([(out == v).sum() for v in (200, 300, 400)]), [0.2, 0.2, 0.6])


def test_weighted_draw_from_arbitrary_weights_and_uniform():
    w = np.array([1.0, 2.0, 1.0, 4.0])
    out = WeightedDraw.from_weights(w).draw(np.random.default_rng(0), 40_000)
    _frequencies_within(np.bincount(out, minlength=4), w / w.sum())
    out = WeightedDraw.uniform(np.arange(7)).draw(np.random.default_rng(0), 7_000)
    _frequencies_within(np.bincount(out, minlength=7), np.full(7, 1 / 7))


def test_weighted_draw_is_deterministic():
    draw = WeightedDraw(np.array([0, 1, 1]), [1.0, 1.0])
    a = draw.draw(np.random.default_rng(5), 1000)
    b = draw.draw(np.random.default_rng(5), 1000)
    assert np.array_equal(a, b)


def test_weighted_draw_rejects_bad_input():
    with pytest.raises(ValueError, match="positive weight"):
        WeightedDraw(np.array([0, 0]), [0.0])
    with pytest.raises(ValueError, match="finite"):
        WeightedDraw(np.array([0, 1]), [1.0, -1.0])
    with pytest.raises(ValueError, match="one weight per stratum"):
        WeightedDraw(np.array([0, 2]), [1.0, 1.0])
