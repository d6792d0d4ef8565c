"""Gradient aggregators: the registry, the shared interface, and properties every method must have.

The per-method numbers (checked against the papers' formulas) are in test_aggregators_<family>.py.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hydranet.balancing.aggregators import AGGREGATORS, Aggregator, WeightedAggregator, get_aggregator

NAMES = sorted(AGGREGATORS)
EXPECTED_NAMES = {
    "mean", "sum", "pcgrad", "gradvac", "graddrop", "mgda", "cagrad", "imtl_g", "nash_mtl",
    "aligned_mtl", "upgrad", "dualproj", "config", "fairgrad", "moco", "excess_mtl",
    "constant", "random", "krum", "trimmed_mean", "modo", "sdmgrad", "pcd", "cr_mogm",
}  # fmt: skip
# Methods whose update is the same whatever the order of the rows (the papers' definitions are symmetric).
PERMUTATION_INVARIANT = [
    "mean", "sum", "mgda", "upgrad", "dualproj", "imtl_g", "nash_mtl", "cagrad", "aligned_mtl", "config", "fairgrad",
]  # fmt: skip
# Methods that guarantee g_i . d >= 0 for every task (for linearly independent rows).
NON_CONFLICTING = ["upgrad", "mgda", "dualproj", "config"]
# d(cG) = c d(G); the randomised ones with the same seed.
HOMOGENEOUS = [
    "mean", "sum", "pcgrad", "gradvac", "graddrop", "mgda", "cagrad", "imtl_g", "aligned_mtl", "upgrad", "dualproj", "config",
]  # fmt: skip
STATEFUL = ["pcgrad", "gradvac", "graddrop", "nash_mtl", "moco", "excess_mtl", "random", "modo", "sdmgrad", "pcd", "cr_mogm"]
FAST = settings(deadline=None)  # examples: the hypothesis profile's (tests/conftest.py)
# CAGrad's simplex problem is solved by SLSQP, then polished by Newton's method on the KKT system of its face
# (pareto.py): d is exact to rounding, like the other methods; 1e-9 leaves room for the conditioning of K.
CAGRAD_RTOL = 1e-9


def random_jacobian(seed: int, tasks: int, params: int, spread: float = 0.0) -> torch.Tensor:
    """Gaussian rows with norms spread over ``10**±spread`` (generic: full row rank when tasks <= params)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(tasks, params)) * 10.0 ** rng.uniform(-spread, spread, size=(tasks, 1))
    return torch.tensor(rows, dtype=torch.float64)


def build(name: str, **settings):
    # Nash-MTL clips to norm 1 by default; the properties below are about the bargaining solution itself.
    if name == "nash_mtl":
        settings.setdefault("max_norm", None)
    return AGGREGATORS[name](**settings)


jacobians = st.builds(
    random_jacobian,
    seed=st.integers(0, 2**32 - 1),
    tasks=st.integers(1, 5),
    params=st.integers(5, 9),
    spread=st.sampled_from([0.0, 1.0, 2.0]),
)


# -- registry --------------------------------------------------------------------------------------


def test_registry_has_every_method_and_each_builds_from_defaults():
    assert set(AGGREGATORS) == EXPECTED_NAMES
    G = random_jacobian(0, 3, 6)
    for name in NAMES:
        agg = AGGREGATORS[name]()
        assert isinstance(agg, Aggregator)
        update = agg(G)
        assert update.shape == (6,) and update.dtype == G.dtype and torch.isfinite(update).all(), name


def test_get_aggregator_forgives_case_and_dashes_and_passes_settings():
    agg = get_aggregator(" CAGrad ", c=0.25)
    assert type(agg) is AGGREGATORS["cagrad"] and agg.c == 0.25
    assert type(get_aggregator("imtl-g")) is AGGREGATORS["imtl_g"]
    assert type(get_aggregator("Nash-MTL")) is AGGREGATORS["nash_mtl"]


def test_get_aggregator_names_the_valid_choices_and_the_closest_one():
    expected = r"Unknown aggregator 'upgard'\. Did you mean 'upgrad'\? Valid names: aligned_mtl, cagrad"
    with pytest.raises(ValueError, match=expected):
        get_aggregator("upgard")
    with pytest.raises(ValueError, match=r"no setting 'cc'\. Did you mean 'c'\? Its settings: c, rescale, normalize"):
        get_aggregator("cagrad", cc=0.4)


def test_repr_shows_the_settings():
    assert repr(get_aggregator("cagrad", c=0.4)) == "CAGrad(c=0.4, rescale=1, normalize=False)"
    assert repr(get_aggregator("mgda", normalize=True)) == "MGDA(normalize=True)"
    assert repr(get_aggregator("pcgrad", seed=3)) == "PCGrad(seed=3, generator=None, normalize=False)"
    assert "generator=<torch.Generator on cpu>" in repr(get_aggregator("graddrop", generator=torch.Generator()))


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("cagrad", {"c": -1.0}, "c >= 0"),
        ("cagrad", {"rescale": 3}, "rescale must be 0"),
        ("gradvac", {"beta": 0.0}, "0 < beta <= 1"),
        ("graddrop", {"leak": 1.5}, "0 <= leak <= 1"),
        ("nash_mtl", {"max_norm": 0.0}, "max_norm must be > 0"),
        ("nash_mtl", {"update_weights_every": 0}, "integer >= 1"),
        ("aligned_mtl", {"scale_mode": "max"}, "min, median, rmse"),
        ("fairgrad", {"alpha": 0.0}, "alpha > 0"),
        ("moco", {"beta": 2.0}, "0 < beta <= 1"),
        ("excess_mtl", {"step_size": -1.0}, "step_size > 0"),
    ],
)
def test_invalid_settings_are_rejected_at_construction(name, settings, message):
    with pytest.raises(ValueError, match=message):
        get_aggregator(name, **settings)


def test_wrong_types_of_settings_are_rejected():
    with pytest.raises(TypeError, match="normalize must be True or False"):
        get_aggregator("mean", normalize="yes")
    with pytest.raises(TypeError, match="seed must be an int"):
        get_aggregator("pcgrad", seed=1.5)
    with pytest.raises(TypeError, match="torch.Generator"):
        get_aggregator("pcgrad", generator=0)


# -- input validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bad_jacobians_get_errors_that_say_how_to_fix_them(name):
    agg = AGGREGATORS[name]()
    with pytest.raises(ValueError, match=r"2-D task Jacobian \[tasks, params\], got shape \[6\]"):
        agg(torch.ones(6))
    with pytest.raises(ValueError, match=r"empty task Jacobian of shape \[0, 4\]"):
        agg(torch.ones(0, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        agg(np.ones((2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        agg(torch.ones(2, 3, dtype=torch.int64))
    bad = torch.ones(4, 3)
    bad[1, 0] = float("nan")
    bad[3, 2] = float("inf")
    with pytest.raises(ValueError, match=r"task rows \[1, 3\] of 4\..*gradient clipping"):
        agg(bad)


# -- the shared interface --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in NAMES if issubclass(AGGREGATORS[n], WeightedAggregator)])
@pytest.mark.parametrize("normalize", [False, True])
def test_weights_reproduce_the_update(name, normalize):
    G = random_jacobian(1, 4, 7, spread=1.0)
    G[2] = 0.0  # a zero row must not break either path
    first, second = build(name, normalize=normalize), build(name, normalize=normalize)
    for step in range(2):  # stateful methods advance identically through either entry point
        H = G * (1.0 + step)
        weights = first.weights(H)
        assert weights.shape == (4,) and weights.dtype == H.dtype
        torch.testing.assert_close(weights @ H, second(H), rtol=1e-10, atol=1e-12)


def test_the_non_weighting_methods_have_no_weights():
    for name in ("graddrop", "moco"):
        assert not hasattr(AGGREGATORS[name](), "weights")


@pytest.mark.parametrize("name", NAMES)
def test_normalize_aggregates_the_unit_rows_and_keeps_zero_rows_zero(name):
    G = random_jacobian(2, 3, 5, spread=2.0)
    G[1] = 0.0
    unit = G / G.norm(dim=1, keepdim=True).clamp(min=1e-300)
    assert unit[1].abs().sum() == 0
    expected = build(name)(unit)
    torch.testing.assert_close(build(name, normalize=True)(G), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_update_keeps_the_dtype_and_is_close_to_float64(name, dtype):
    G = random_jacobian(3, 3, 8)
    update = build(name)(G.to(dtype))
    assert update.dtype == dtype and update.device == G.device
    reference = build(name)(G.to(dtype).double())
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(update.double(), reference, rtol=tolerance, atol=tolerance * reference.abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_the_input_is_not_modified_and_no_graph_is_built(name):
    G = random_jacobian(4, 3, 5).requires_grad_()
    before = G.detach().clone()
    update = AGGREGATORS[name]()(G)
    assert torch.equal(G.detach(), before) and not update.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_the_update_stays_on_the_gpu_and_matches_the_cpu(name):
    G = random_jacobian(5, 4, 1000).float()
    on_gpu = build(name)(G.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), build(name)(G), rtol=1e-4, atol=1e-5)


# -- special matrices ------------------------------------------------------------------------------

c = 0.5
CAGRAD_SCALE = (1 + c) / (1 + c**2)  # identical rows: g0 = g_w = g, d = (1 + c) g, divided by 1 + c^2


def test_krum_with_a_zero_row_selects_the_row_of_lowest_score():
    # T = 4, f = 0: each score sums the squared distances to the T - 2 = 2 nearest other rows (by hand).
    G = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    # squared distances: d01 = 1, d02 = 1, d03 = 4, d12 = 2, d13 = 1, d23 = 5
    # scores: s0 = 1 + 1 = 2, s1 = 1 + 1 = 2, s2 = 1 + 2 = 3, s3 = 1 + 4 = 5 -> rows 0 and 1 tie, row 0 first
    torch.testing.assert_close(build("krum")(G), G[0])
    torch.testing.assert_close(build("krum", n_selected=2)(G), (G[0] + G[1]) / 2)
    assert bool(torch.isfinite(build("krum")(random_jacobian(6, 3, 5) * torch.tensor([[0.0], [1.0], [1.0]]))).all())


@pytest.mark.parametrize(
    ("name", "factor"),
    [
        ("mean", 1.0), ("sum", 3.0), ("pcgrad", 3.0), ("gradvac", 3.0), ("graddrop", 3.0), ("mgda", 1.0),
        ("cagrad", CAGRAD_SCALE), ("imtl_g", 1.0), ("aligned_mtl", 3.0), ("upgrad", 1.0), ("dualproj", 1.0),
        ("config", 3.0), ("moco", 0.5), ("excess_mtl", 3.0),
        # alpha (K alpha) = 1 with K = |g|^2 11^T: alpha = 1 / (|g| sqrt 3), d = sqrt(3) g / |g|
        ("nash_mtl", math.sqrt(3) / 5.0), ("fairgrad", math.sqrt(3) / 5.0),
    ],
)  # fmt: skip
def test_identical_gradients(name, factor):
    g = torch.tensor([3.0, -4.0, 0.0], dtype=torch.float64)  # |g| = 5
    torch.testing.assert_close(build(name)(torch.stack([g, g, g])), factor * g, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mean", [0.5, 1.0]), ("sum", [1.0, 2.0]), ("pcgrad", [1.0, 2.0]), ("gradvac", [1.0, 2.0]),
        ("graddrop", [1.0, 2.0]), ("upgrad", [0.5, 1.0]), ("dualproj", [0.5, 1.0]),
        # MGDA: gamma = (g2 - g1).g2 / |g1 - g2|^2 = 4/5 on g1
        ("mgda", [0.8, 0.4]),
        # IMTL-G: a g1 + (1 - a) g2 with a = 2(1 - a)
        ("imtl_g", [2 / 3, 2 / 3]),
        # Nash: alpha_i^2 |g_i|^2 = 1
        ("nash_mtl", [1.0, 1.0]), ("fairgrad", [1.0, 1.0]),
        # Aligned-MTL: B = sigma_min diag(1, 1/2)
        ("aligned_mtl", [1.0, 1.0]),
        # ConFIG: direction (1, 1)/sqrt 2, length (1 + 2)/sqrt 2
        ("config", [1.5, 1.5]),
        ("excess_mtl", [1.0, 2.0]),
    ],
)  # fmt: skip
def test_orthogonal_gradients(name, expected):
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(build(name)(G), torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-9)


# Methods for which g and -g do not cancel, by their definitions: GradDrop keeps one sign at random; Random
# weights them by a random softmax, (w1 - w2) g; PCD keeps the norm of the primary gradient and must make
# progress tau |g|^2 on -g (below); Krum needs T >= f + 3 rows.
NOT_CANCELLING = {"graddrop", "random", "pcd", "krum"}


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_CANCELLING])
def test_opposite_gradients_cancel(name):
    g = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    update = build(name)(torch.stack([g, -g]))
    assert update.norm() < 1e-6, update


def test_the_methods_that_do_not_cancel_opposite_gradients_do_what_their_definition_says():
    g = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    G = torch.stack([g, -g])
    # PCD by hand: both rows have the same norm, so the same scale s; projecting s g onto {d: -s g . d >= tau s^2 |g|^2}
    # gives d~ = -tau s g (the constraint is active), rescaled to ||g_1||: d = -g.
    torch.testing.assert_close(build("pcd")(G), -g)
    w = build("random").weights(G)
    torch.testing.assert_close(build("random")(G), (w[0] - w[1]) * g)  # same seed, same draw
    with pytest.raises(ValueError, match="needs at least 3"):
        build("krum")(G)
    G3 = torch.stack([g, -g, g])  # two copies of g outvote -g: Krum selects g
    torch.testing.assert_close(build("krum")(G3), g)


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_gradients_give_a_zero_update(name):
    update = build(name)(torch.zeros(3, 4, dtype=torch.float64))
    assert torch.equal(update, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "krum"])
def test_a_zero_gradient_does_not_break_the_others(name):
    # PCD: a zero *primary* gradient gives d = 0 by definition (test_aggregators_peers.py), so here the zero
    # row is a secondary task's. Krum may select the zero row when it is the most central: below.
    G = random_jacobian(6, 3, 5)
    G[2 if name == "pcd" else 0] = 0.0
    update = build(name)(G)
    assert torch.isfinite(update).all()
    if name == "mgda":  # 0 is in the convex hull: the point is Pareto-stationary and MGDA stops
        assert torch.equal(update, torch.zeros(5, dtype=torch.float64))
    else:
        assert update.norm() > 0


@pytest.mark.parametrize(
    ("name", "factor"),
    [
        ("mean", 1.0), ("sum", 1.0), ("pcgrad", 1.0), ("gradvac", 1.0), ("graddrop", 1.0), ("mgda", 1.0),
        ("cagrad", CAGRAD_SCALE), ("imtl_g", 1.0), ("aligned_mtl", 1.0), ("upgrad", 1.0), ("dualproj", 1.0),
        ("config", 1.0), ("moco", 0.5), ("excess_mtl", 1.0), ("nash_mtl", 1 / 5.0), ("fairgrad", 1 / 5.0),
    ],
)  # fmt: skip
def test_one_task(name, factor):
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(build(name)(g), factor * g[0], rtol=1e-9, atol=1e-12)


# -- properties ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
@FAST
@given(G=jacobians, data=st.data())
def test_the_order_of_the_tasks_does_not_matter(name, G, data):
    order = data.draw(st.permutations(range(G.shape[0])))
    expected = build(name)(G)
    scale = max(expected.norm().item(), G.norm(dim=1).max().item())
    rtol = CAGRAD_RTOL if name == "cagrad" else 1e-6
    torch.testing.assert_close(build(name)(G[list(order)]), expected, rtol=rtol, atol=0.1 * rtol * scale)


@pytest.mark.parametrize("name", NON_CONFLICTING)
@FAST
@given(G=jacobians)
def test_the_update_conflicts_with_no_task(name, G):
    update = build(name)(G)
    products = G @ update
    assert (products >= -1e-9 * G.norm(dim=1) * max(update.norm(), 1e-300)).all(), products


@pytest.mark.parametrize("name", HOMOGENEOUS)
@FAST
@given(G=jacobians, scale=st.floats(1e-3, 1e3))
def test_scaling_the_gradients_scales_the_update(name, G, scale):
    expected = scale * build(name)(G)
    rtol = CAGRAD_RTOL if name == "cagrad" else 1e-6
    torch.testing.assert_close(build(name)(scale * G), expected, rtol=rtol, atol=rtol * 1e-3 * scale * G.abs().max().item())


@FAST
@given(G=jacobians, scale=st.floats(1e-3, 1e3), alpha=st.sampled_from([0.5, 1.0, 2.0]))
def test_bargaining_updates_scale_as_the_fairness_exponent_says(G, scale, alpha):
    # FairGrad: K w = w^(-1/alpha) gives d(cG) = c^((1 - alpha) / (1 + alpha)) d(G); Nash-MTL is alpha = 1.
    factor = scale ** ((1 - alpha) / (1 + alpha))
    fair = AGGREGATORS["fairgrad"](alpha=alpha)
    torch.testing.assert_close(fair(scale * G), factor * fair(G), rtol=1e-6, atol=1e-9)
    nash = build("nash_mtl")
    torch.testing.assert_close(nash(scale * G), nash(G), rtol=1e-6, atol=1e-9)


# -- randomness and state --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "graddrop"])
def test_randomised_methods_are_deterministic_given_the_seed(name):
    Gs = [random_jacobian(s, 5, 6) for s in range(4)]
    runs = [[AGGREGATORS[name](seed=seed)(G) for G in Gs] for seed in (7, 7)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    given = [AGGREGATORS[name](generator=torch.Generator().manual_seed(7))(G) for G in Gs]
    other_seeds = [[AGGREGATORS[name](seed=seed)(G) for G in Gs] for seed in range(8, 14)]
    assert any(not torch.equal(a, b) for run in other_seeds for a, b in zip(run, runs[0]))
    assert all(torch.isfinite(u).all() for u in given)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip_resumes_exactly(name):
    Gs = [random_jacobian(s, 4, 6) for s in range(5)]
    agg = build(name, update_weights_every=2) if name == "nash_mtl" else build(name)
    for G in Gs[:3]:
        agg(G)
    buffer = io.BytesIO()
    torch.save(agg.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # checkpoints hold tensors only
    expected = [agg(G) for G in Gs[3:]]
    resumed = build(name, update_weights_every=2) if name == "nash_mtl" else build(name)
    resumed.load_state_dict(copy.deepcopy(state))
    assert all(torch.equal(a, resumed(G)) for a, G in zip(expected, Gs[3:]))


@pytest.mark.parametrize("name", STATEFUL)
def test_reset_starts_over(name):
    Gs = [random_jacobian(s, 3, 6) for s in range(3)]
    agg = build(name)
    first = [agg(G) for G in Gs]
    agg.reset()
    assert all(torch.equal(a, agg(G)) for a, G in zip(first, Gs))


@pytest.mark.parametrize("name", ["gradvac", "nash_mtl", "moco", "excess_mtl"])
def test_per_task_state_refuses_other_rows_without_a_mask(name):
    agg = build(name)
    agg(random_jacobian(0, 3, 6))
    with pytest.raises(ValueError, match="state for 3 tasks but got a Jacobian with 2 rows and no present=.*reset"):
        agg(random_jacobian(1, 2, 6))
    agg.reset()
    assert agg(random_jacobian(1, 2, 6)).shape == (6,)


@pytest.mark.parametrize("name", ["moco", "excess_mtl"])
def test_per_parameter_state_refuses_other_parameters(name):
    agg = build(name)
    agg(random_jacobian(0, 3, 6))
    with pytest.raises(ValueError, match="6 gradient entries but got 5: the shared parameters changed"):
        agg(random_jacobian(1, 3, 5))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in STATEFUL])
def test_stateless_methods_have_an_empty_state_and_are_pure(name):
    agg = AGGREGATORS[name]()
    assert agg.state_dict() == {}
    agg.load_state_dict({})
    with pytest.raises(ValueError, match="has no state"):
        agg.load_state_dict({"alpha": 1})
    G = random_jacobian(9, 3, 5)
    assert torch.equal(agg(G), agg(G))
