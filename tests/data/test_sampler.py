import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from hydranet.data.balance import ClassBalance
from hydranet.data._collate import collate
from hydranet.data.sampler import TaskBatchSampler
from hydranet.data.schedule import apportion
from hydranet.tasks import Task


class Toy:
    """Stand-in with MultiTaskDataset's duck-typed interface: ``pools[task]`` are global indices."""

    def __init__(self, pools, n=None, *, shared=False, labels=None, tasks=None):
        self.pools = {t: np.asarray(p, dtype=np.int64) for t, p in pools.items()}
        self.n = n if n is not None else int(max(p.max() for p in self.pools.values())) + 1
        self.is_shared = shared
        self._labels = labels or {}
        self.tasks = tasks

    @classmethod
    def separate(cls, sizes, **kwargs):
        """One dataset per task, concatenated: task t owns a contiguous block of indices."""
        starts = np.cumsum([0, *sizes.values()])
        pools = {t: np.arange(starts[k], starts[k + 1]) for k, t in enumerate(sizes)}
        return cls(pools, int(starts[-1]), **kwargs)

    @property
    def task_names(self):
        return list(self.pools)

    def task_indices(self, task):
        return self.pools[task]

    def labels(self, task):
        return self._labels[task]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), {t: 0 for t, p in self.pools.items() if i in set(p.tolist())}

    def owner(self, i):
        return [t for t, p in self.pools.items() if i in p]


AB = Toy.separate({"a": 10, "b": 25})


def batches(sampler):
    return [list(b) for b in sampler]


def task_of(ds, batch):
    return {t for i in batch for t in ds.owner(i)}


# ---------------------------------------------------------------- lengths, by hand


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # k = ceil(10/4), ceil(25/4) = 3, 7; floor: 2, 6
        ({}, 14),  # round robin, max_size_cycle: 2 * max k
        ({"drop_last": True}, 12),
        ({"length": "min_size"}, 6),  # 2 * min k
        ({"length": "min_size", "drop_last": True}, 4),
        ({"length": "all"}, 10),  # 3 + 7
        ({"length": "all", "drop_last": True}, 8),
        ({"length": 9}, 9),
        ({"quotas": {"a": 2, "b": 2}}, 13),  # ceil(25/2)
        ({"quotas": {"a": 2, "b": 2}, "length": "min_size"}, 5),
        ({"schedule": "joint"}, 9),  # ceil(35/4)
        ({"schedule": "joint", "drop_last": True}, 8),
        ({"schedule": "joint", "length": 20}, 20),
        ({"schedule": "proportional"}, 11),  # k/p = 3 * 3.5 = 10.5, 7 * 1.4 = 9.8 -> ceil 11
        ({"num_replicas": 2, "rank": 1}, 8),  # B = 8: k = 2, 4
        ({"num_replicas": 2, "rank": 0, "length": "all"}, 6),
        ({"replacement": True, "drop_last": True}, 14),  # draws are never short: k stays ceil
    ],
)
def test_len_by_hand_and_equal_to_the_batches_yielded(kwargs, expected):
    s = TaskBatchSampler(AB, 4, **kwargs)
    assert len(s) == expected
    assert len(batches(s)) == expected


def test_round_robin_alternates_with_full_batches():
    out = batches(TaskBatchSampler(AB, 4))
    assert [task_of(AB, b) for b in out] == [{"a"}, {"b"}] * 7
    assert all(len(b) == 4 for b in out)
    assert TaskBatchSampler(AB, 4).batches_per_task == {"a": 7, "b": 7}


def test_all_visits_every_sample_once_with_short_last_batches():
    out = batches(TaskBatchSampler(AB, 4, length="all"))
    flat = [i for b in out for i in b]
    assert sorted(flat) == list(range(35))
    assert [task_of(AB, b) for b in out] == [{"a"}, {"b"}] * 3 + [{"b"}] * 4  # skips a when exhausted
    assert sorted(len(b) for b in out) == [1, 2] + [4] * 8  # 10 = 4+4+2, 25 = 6*4+1
    dropped = [i for b in batches(TaskBatchSampler(AB, 4, length="all", drop_last=True)) for i in b]
    assert len(dropped) == len(set(dropped)) == 8 + 24


def test_max_size_cycle_restarts_small_tasks_with_a_fresh_shuffle():
    out = batches(TaskBatchSampler(AB, 4))
    # a: 10 samples, a pass is 3 steps of 4: a shuffle, padded with its own first 2 samples
    a_stream = [i for b in out if task_of(AB, b) == {"a"} for i in b]  # 7 steps = 2 passes + 1 step
    first, second = a_stream[:12], a_stream[12:24]
    assert sorted(first[:10]) == list(range(10)) and first[10:] == first[:2]
    assert sorted(second[:10]) == list(range(10)) and second[10:] == second[:2]
    assert first != second and len(set(a_stream[24:])) == 4
    b_stream = [i for b in out if task_of(AB, b) == {"b"} for i in b]
    assert sorted(b_stream[:25]) == list(range(10, 35)) and b_stream[25:] == b_stream[:3]  # largest: one pass
    # drop_last: a pass is 2 full steps, 8 of the 10 samples, a different 8 each time
    out = batches(TaskBatchSampler(AB, 4, drop_last=True))
    a_stream = [i for b in out if task_of(AB, b) == {"a"} for i in b]
    assert len(a_stream) == 6 * 4 and all(len(set(a_stream[k : k + 8])) == 8 for k in range(0, 24, 8))


def test_large_pools_follow_the_same_pass_rules():
    ds = Toy.separate({"big": 5000, "small": 30})  # big enough for the one-shuffle-per-pass path
    out = batches(TaskBatchSampler(ds, 512, length=24))  # 12 steps of big: a pass of 10 + 2
    big = [i for b in out if b[0] < 5000 for i in b]
    first, second = big[:5120], big[5120:]
    assert sorted(first[:5000]) == list(range(5000)) and first[5000:] == first[:120]
    assert len(second) == 1024 and len(set(second)) == 1024
    big = [i for b in TaskBatchSampler(Toy.separate({"big": 5000}), 512, length=10, drop_last=True) for i in b]
    assert len(big) == 10 * 512 and len(set(big[:4608])) == 4608  # a pass is 9 steps of distinct samples


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.integers(1, 5), st.integers(1, 3),
       st.booleans(), st.sampled_from(["max_size_cycle", "min_size", 13]))
def test_a_step_never_repeats_a_sample_when_tasks_are_at_least_a_step_long(sizes, bs, replicas, quotas, length):
    ds = Toy.separate({f"t{k}": n for k, n in enumerate(sizes)})
    if quotas:
        kwargs = {"quotas": {t: k + 1 for k, t in enumerate(ds.task_names)}}
        bs = sum(kwargs["quotas"].values())
        unit = replicas * len(sizes)
    else:
        kwargs, unit = {}, replicas * bs
    ranks = [batches(TaskBatchSampler(ds, bs, length=length, num_replicas=replicas, rank=r, **kwargs))
             for r in range(replicas)]
    for step in zip(*ranks):
        flat = [i for b in step for i in b]
        if min(sizes) >= unit:
            assert len(set(flat)) == len(flat)


# ---------------------------------------------------------------- properties over many settings

SETTINGS = dict(max_examples=40, deadline=None)
sizes_st = st.lists(st.integers(1, 40), min_size=1, max_size=4)
length_st = st.one_of(st.sampled_from(["max_size_cycle", "min_size", "all"]), st.integers(1, 30))
schedule_st = st.sampled_from(["round_robin", "proportional", "temperature", "weights"])


def _setup(sizes, batch_size, schedule, length, drop_last, replicas):
    """A dataset with one task per size, and the sampler settings every rank shares."""
    ds = Toy.separate({f"t{k}": n for k, n in enumerate(sizes)})
    if schedule == "weights":
        schedule = {t: k + 1 for k, t in enumerate(ds.task_names)}
    # drop_last with a task smaller than a step is rejected at construction (tested below)
    drop_last = drop_last and min(sizes) >= batch_size * replicas
    return ds, dict(schedule=schedule, length=length, drop_last=drop_last, num_replicas=replicas)


@settings(**SETTINGS)
@given(sizes_st, st.integers(1, 9), schedule_st, length_st, st.booleans(), st.integers(1, 3))
def test_homogeneous_batches_are_valid_single_task_and_len_is_exact(sizes, bs, schedule, length, drop_last, replicas):
    ds, kw = _setup(sizes, bs, schedule, length, drop_last, replicas)
    samplers = [TaskBatchSampler(ds, bs, rank=r, **kw) for r in range(replicas)]
    per_rank = [batches(s) for s in samplers]
    for s, out in zip(samplers, per_rank):
        assert len(out) == len(s) == len(samplers[0])
        for b in out:
            assert all(isinstance(i, int) and 0 <= i < len(ds) for i in b)
            assert len(task_of(ds, b)) == 1
            assert 1 <= len(b) <= bs
    # same task and same batch size at the same step on every rank
    for rows in zip(*per_rank):
        assert len({frozenset(task_of(ds, b)) for b in rows}) == 1
        assert len({len(b) for b in rows}) == 1
    if length == "all" and not kw["drop_last"]:
        seen = [i for out in per_rank for b in out for i in b]
        assert set(seen) == set(range(len(ds)))  # every sample, at most R - 1 repeats per task as padding
        assert len(seen) - len(ds) <= (replicas - 1) * len(sizes)


@settings(**SETTINGS)
@given(sizes_st, st.integers(1, 6), schedule_st, st.sampled_from(["max_size_cycle", "min_size", 7]),
       st.booleans(), st.integers(2, 3))
def test_ranks_are_slices_of_one_global_batch(sizes, bs, schedule, length, drop_last, replicas):
    ds, kw = _setup(sizes, bs, schedule, length, drop_last, replicas)
    single = batches(TaskBatchSampler(ds, bs * replicas, **{**kw, "num_replicas": 1}))
    ranks = [batches(TaskBatchSampler(ds, bs, rank=r, **kw)) for r in range(replicas)]
    assert [sum(step, []) for step in zip(*ranks)] == single


@settings(**SETTINGS)
@given(sizes_st, st.integers(1, 8), schedule_st, length_st, st.booleans(), st.integers(1, 2), st.data())
def test_resume_mid_epoch_gives_the_remaining_batches(sizes, bs, schedule, length, drop_last, replicas, data):
    ds, kw = _setup(sizes, bs, schedule, length, drop_last, replicas)
    s = TaskBatchSampler(ds, bs, rank=replicas - 1, seed=7, **kw)
    s.set_epoch(3)
    full = batches(s)
    stop = data.draw(st.integers(0, len(full)))
    s.set_epoch(3)
    it = iter(s)
    head = [next(it) for _ in range(stop)]
    state = s.state_dict()
    assert state == {"seed": 7, "epoch": 3, "position": stop}
    fresh = TaskBatchSampler(ds, bs, rank=replicas - 1, seed=0, **kw)
    fresh.load_state_dict(state)
    if stop < len(full):
        assert head + batches(fresh) == full
    else:  # saved after the last batch: resuming starts the next epoch
        s.set_epoch(4)
        assert batches(fresh) == batches(s)


def test_state_dict_position_override_for_prefetching_loaders():
    s = TaskBatchSampler(AB, 4, schedule="proportional", seed=3)
    full = batches(s)
    s.set_epoch(0)
    it = iter(s)
    for _ in range(6):  # a loader prefetched 6 batches, the trainer consumed 4
        next(it)
    state = s.state_dict(position=4)
    other = TaskBatchSampler(AB, 4, schedule="proportional")
    other.load_state_dict(state)
    assert batches(other) == full[4:]
    with pytest.raises(ValueError, match="position must be"):
        s.state_dict(position=len(s) + 1)
    with pytest.raises(ValueError, match="another epoch length"):
        TaskBatchSampler(AB, 8).load_state_dict({"seed": 0, "epoch": 0, "position": 100})
    with pytest.raises(ValueError, match="lacks"):
        s.load_state_dict({"epoch": 1})


def test_a_finished_epoch_moves_on_to_the_next():
    s = TaskBatchSampler(AB, 4, schedule="temperature", seed=1)
    e0 = batches(s)
    assert s.state_dict() == {"seed": 1, "epoch": 0, "position": len(s)}
    e1 = batches(s)
    assert s.epoch == 1 and e0 != e1
    s.set_epoch(1)
    assert batches(s) == e1
    s.load_state_dict({"seed": 1, "epoch": 0, "position": len(s)})  # saved right after epoch 0
    assert batches(s) == e1


def test_seed_and_epoch_fix_the_batches():
    a = TaskBatchSampler(AB, 4, schedule="proportional", seed=5)
    b = TaskBatchSampler(AB, 4, schedule="proportional", seed=5)
    c = TaskBatchSampler(AB, 4, schedule="proportional", seed=6)
    assert batches(a) == batches(b)
    a.set_epoch(0)
    assert batches(a) != batches(c)
    a.set_epoch(1)
    b.set_epoch(1)
    assert batches(a) == batches(b)
    b.set_epoch(0)
    assert batches(a) != batches(b)


# ---------------------------------------------------------------- schedules through the sampler

THREE = Toy.separate({"a": 100, "b": 400, "c": 1600})


@pytest.mark.parametrize(
    "kwargs, counts",
    [
        # batch 4: k = 25, 100, 400
        ({"schedule": "round_robin"}, [400, 400, 400]),
        ({"schedule": "proportional"}, [25, 100, 400]),  # p = 1/21, 4/21, 16/21: N = 525
        ({"schedule": "temperature"}, [100, 200, 400]),  # p = 1/7, 2/7, 4/7: N = 700
        ({"schedule": "temperature", "size_cap": 400}, [200, 400, 400]),  # p = .2, .4, .4: N = 1000
        ({"schedule": "temperature", "temperature": 1.0}, [25, 100, 400]),
        ({"schedule": {"a": 1, "b": 1, "c": 2}}, [200, 200, 400]),  # N = 800
        ({"schedule": {"a": 1, "b": 1, "c": 2}, "length": "min_size"}, [25, 25, 50]),  # N = 100
        ({"schedule": "temperature", "length": 50}, apportion(50, [1 / 7, 2 / 7, 4 / 7]).tolist()),
    ],
)
def test_task_counts_follow_the_schedule_formula(kwargs, counts):
    s = TaskBatchSampler(THREE, 4, **kwargs)
    seen = [next(iter(task_of(THREE, b))) for b in s]
    assert [seen.count(t) for t in "abc"] == counts
    assert s.batches_per_task == dict(zip("abc", counts))
    # and within binomial bounds of N p_t over any window of 100 steps (the order is stratified)
    p = np.array([s.probabilities[t] for t in "abc"])
    window = min(100, len(seen))
    got = np.array([seen[:window].count(t) for t in "abc"])
    assert np.all(np.abs(got - window * p) <= 3 * np.sqrt(window * p * (1 - p)) + 1)


# ---------------------------------------------------------------- quotas and joint


def test_quotas_are_exact_in_every_batch():
    s = TaskBatchSampler(AB, 8, quotas={"a": 2, "b": 6})
    out = batches(s)
    assert len(out) == 5  # ceil(10/2), ceil(25/6) = 5, 5
    for b in out:
        owners = [AB.owner(i)[0] for i in b]
        assert owners.count("a") == 2 and owners.count("b") == 6
    a_stream = [i for b in out for i in b if i < 10]
    assert sorted(a_stream) == list(range(10))  # one pass of a's 10 samples


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_quotas_under_replicas_are_disjoint_within_a_step(replicas):
    ranks = [batches(TaskBatchSampler(THREE, 6, quotas={"a": 1, "b": 2, "c": 3}, num_replicas=replicas,
                                      rank=r, length="min_size")) for r in range(replicas)]
    assert len({len(out) for out in ranks}) == 1
    assert len(ranks[0]) == math.ceil(100 / replicas)  # k_a = ceil(100 / (1 * R)) is the smallest
    for step in range(len(ranks[0])):
        rows = [out[step] for out in ranks]
        flat = sum(rows, [])
        assert len(set(flat)) == len(flat)
        for b in rows:
            owners = [THREE.owner(i)[0] for i in b]
            assert [owners.count(t) for t in "abc"] == [1, 2, 3]


def _shared():
    # one dataset of 30 samples; a labelled on 0..19, b on 10..29, c on 5..9: union = 0..29
    pools = {"a": np.arange(20), "b": np.arange(10, 30), "c": np.arange(5, 10)}
    return Toy(pools, 30, shared=True)


def test_shared_datasets_default_to_one_joint_pool():
    ds = _shared()
    s = TaskBatchSampler(ds, 8)
    assert s.mode == "joint" and len(s) == 4  # ceil(30/8)
    out = batches(s)
    assert sorted(i for b in out for i in b) == list(range(30))  # each sample once per epoch
    assert [len(b) for b in out] == [8, 8, 8, 6]
    assert TaskBatchSampler(ds, 8, drop_last=True).__len__() == 3
    assert TaskBatchSampler(ds, 8, schedule="round_robin").mode == "tasks"
    assert TaskBatchSampler(ds, 8, quotas={"a": 4, "b": 2, "c": 2}).mode == "quotas"


def test_joint_pool_under_replicas_pads_the_short_batch():
    ds = _shared()
    ranks = [batches(TaskBatchSampler(ds, 4, num_replicas=4, rank=r)) for r in range(4)]
    # B = 16: one full step, then 14 samples padded to 16 -> 4 per rank
    assert [[len(b) for b in out] for out in ranks] == [[4, 4]] * 4
    flat = [i for out in ranks for b in out for i in b]
    assert set(flat) == set(range(30)) and len(flat) == 32


# ---------------------------------------------------------------- class balancing

FIFTY_FIVE = Toy.separate(
    {"pos_neg": 55, "other": 20},
    labels={"pos_neg": np.array([1] * 50 + [0] * 5), "other": np.arange(20) % 2},
)


def _class_share(ds, task, out, cls):
    pool = ds.task_indices(task)
    labels = ds.labels(task)
    picked = np.array([i for b in out for i in b if i in set(pool.tolist())])
    return float(np.mean(labels[np.searchsorted(pool, picked)] == cls)), len(picked)


@pytest.mark.parametrize(
    "method, p_minority",
    [
        ("inverse", 0.5),
        ("sqrt", math.sqrt(5) / (math.sqrt(5) + math.sqrt(50))),
        (ClassBalance("effective", beta=0.9), 5 / (1 - 0.9**5) / (5 / (1 - 0.9**5) + 50 / (1 - 0.9**50))),
    ],
)
def test_balanced_class_frequencies_match_the_target(method, p_minority):
    s = TaskBatchSampler(FIFTY_FIVE, 8, balance={"pos_neg": method}, length=1000)
    out = batches(s)
    share, n = _class_share(FIFTY_FIVE, "pos_neg", out, 0)
    assert n == 500 * 8
    assert abs(share - p_minority) <= 4 * math.sqrt(p_minority * (1 - p_minority) / n)


def test_inverse_balancing_gives_about_one_to_one_in_each_batch():
    s = TaskBatchSampler(FIFTY_FIVE, 8, balance="inverse", length=400)
    minority = [sum(FIFTY_FIVE.labels("pos_neg")[i] == 0 for i in b) for b in s if b[0] < 55]
    assert len(minority) == 200
    assert abs(np.mean(minority) - 4) <= 4 * math.sqrt(8 * 0.25 / 200)


def test_repeat_factor_on_multilabel_follows_lvis():
    n = 1000
    labels = np.zeros((n, 3), dtype=np.int64)
    labels[:, 0] = 1  # f = 1
    labels[:100, 1] = 1  # f = 0.1
    labels[:10, 2] = 1  # f = 0.01
    ds = Toy.separate({"tags": n}, labels={"tags": labels},
                      tasks={"tags": Task("tags", "multilabel", num_classes=3)})
    s = TaskBatchSampler(ds, 10, balance=ClassBalance("repeat_factor", threshold=0.1), length=2000)
    picked = np.array([i for b in s for i in b])
    # r = [1, 1, sqrt(10)]: the 10 images with class 2 repeat sqrt(10) times
    p_rare = 10 * math.sqrt(10) / (990 + 10 * math.sqrt(10))
    share = np.mean(picked < 10)
    assert abs(share - p_rare) <= 4 * math.sqrt(p_rare * (1 - p_rare) / len(picked))


def test_balance_with_per_sample_weights_and_quotas():
    w = np.ones(55)
    w[50:] = 10.0  # minority 5 * 10 = 50 vs 50: 1:1
    s = TaskBatchSampler(FIFTY_FIVE, 4, quotas={"pos_neg": 2, "other": 2}, balance={"pos_neg": w}, length=2000)
    out = batches(s)
    share, n = _class_share(FIFTY_FIVE, "pos_neg", out, 0)
    assert n == 4000 and abs(share - 0.5) <= 4 * math.sqrt(0.25 / n)


def test_balanced_draws_stay_in_the_task_and_are_seeded():
    a = batches(TaskBatchSampler(FIFTY_FIVE, 8, balance="inverse", seed=2))
    b = batches(TaskBatchSampler(FIFTY_FIVE, 8, balance="inverse", seed=2))
    assert a == b
    for batch in a:
        assert len(task_of(FIFTY_FIVE, batch)) == 1


# ---------------------------------------------------------------- DataLoader, workers, distributed


def test_dataloader_with_persistent_workers_over_two_epochs():
    s = TaskBatchSampler(AB, 4, schedule="proportional", seed=4)
    expected = [batches(s), batches(s)]  # epochs 0 and 1
    s.set_epoch(0)
    loader = DataLoader(AB, batch_sampler=s, num_workers=2, persistent_workers=True, collate_fn=collate)
    assert len(loader) == len(s)
    got, tasks = [], set()
    for epoch in range(2):
        s.set_epoch(epoch)
        epoch_batches = []
        for batch in loader:
            epoch_batches.append(batch.inputs[:, 0].long().tolist())  # Toy's input is its index
            tasks.add(tuple(batch.tasks))
        got.append(epoch_batches)
    assert got == expected and expected[0] != expected[1]
    assert tasks == {("a",), ("b",)}


def test_replicas_default_to_torch_distributed(monkeypatch):
    import hydranet.data.sampler as mod

    monkeypatch.setattr(mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(mod.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(mod.dist, "get_rank", lambda: 2)
    s = TaskBatchSampler(THREE, 4)
    assert (s.num_replicas, s.rank) == (4, 2)
    assert (TaskBatchSampler(THREE, 4, num_replicas=1, rank=0).num_replicas) == 1


# ---------------------------------------------------------------- errors


REGRESSION = Toy.separate(
    {"age": 10, "kind": 10},
    labels={"age": np.linspace(0, 1, 10), "kind": np.arange(10) % 3},
    tasks={"age": Task("age", "regression"), "kind": Task("kind", "multiclass", num_classes=3)},
)


@pytest.mark.parametrize(
    "ds, kwargs, match",
    [
        (AB, {"batch_size": 8, "quotas": {"a": 2, "b": 5}}, "sum to 7 but batch_size is 8"),
        (AB, {"batch_size": 8, "quotas": {"a": 2, "c": 6}}, r"unknown task\(s\) \['c'\]"),
        (AB, {"batch_size": 8, "quotas": {"a": 8}}, r"missing \['b'\]"),
        (AB, {"batch_size": 8, "quotas": {"a": 0, "b": 8}}, "positive integers"),
        (AB, {"batch_size": 8, "quotas": {"a": 2, "b": 6}, "schedule": "round_robin"}, "exclusive"),
        (AB, {"batch_size": 4, "schedule": {"a": 1, "c": 2}}, r"unknown: \['c'\]"),
        (AB, {"batch_size": 4, "schedule": {"a": 1, "b": 0}}, "positive numbers"),
        (AB, {"batch_size": 4, "schedule": {"a": -1, "b": 1}}, "positive numbers"),
        (AB, {"batch_size": 4, "schedule": "random"}, "Unknown schedule 'random'"),
        (AB, {"batch_size": 4, "length": "longest"}, "Unknown length 'longest'"),
        (AB, {"batch_size": 4, "length": 0}, "length must be an integer >= 1"),
        (AB, {"batch_size": 0}, "batch_size must be an integer >= 1"),
        (AB, {"batch_size": 4, "seed": -1}, "seed"),
        (AB, {"batch_size": 4, "num_replicas": 2, "rank": 2}, r"rank must be an integer in \[0, 2\)"),
        (AB, {"batch_size": 16, "drop_last": True}, "'a' has 10 samples, fewer than a batch"),
        (AB, {"batch_size": 8, "num_replicas": 2, "rank": 0, "drop_last": True}, "fewer than a batch over 2"),
        (AB, {"batch_size": 12, "quotas": {"a": 11, "b": 1}, "drop_last": True}, "its quota of 11"),
        (AB, {"batch_size": 4, "balance": "median"}, "Unknown class-balance method 'median'"),
        (AB, {"batch_size": 4, "balance": {"c": "inverse"}}, r"unknown task\(s\) \['c'\]"),
        (AB, {"batch_size": 4, "length": "all", "replacement": True}, "length='all' visits every sample"),
        (AB, {"batch_size": 4, "length": "all", "quotas": {"a": 2, "b": 2}}, "tasks run out at different"),
        (AB, {"batch_size": 4, "schedule": "temperature", "temperature": 0}, "temperature"),
        (_shared(), {"batch_size": 4, "balance": "inverse"}, "joint schedule has a single pool"),
        (Toy({"a": np.arange(5), "e": np.array([], dtype=np.int64)}, 5), {"batch_size": 2}, "'e' has no labelled"),
        (Toy({"a": np.array([0, 9])}, 5), {"batch_size": 2}, r"outside \[0, 5\)"),
        (REGRESSION, {"batch_size": 2, "balance": {"age": "inverse"}}, "regression task"),
        (REGRESSION, {"batch_size": 2, "balance": "sqrt"}, "Balance classification tasks only"),
        (Toy.separate({"k": 4}, labels={"k": np.array([0, 1, 5, 1])},
                      tasks={"k": Task("k", "multiclass", num_classes=3)}),
         {"batch_size": 2, "balance": "inverse"}, r"label 5 is outside \[0, 3\)"),
        (Toy.separate({"k": 4}, labels={"k": np.array([0, 1, 1])}), {"batch_size": 2, "balance": "inverse"},
         "3 rows but task_indices"),
        (Toy.separate({"k": 4}), {"batch_size": 2, "balance": {"k": np.ones(3)}}, r"shape \(4,\)"),
    ],
)
def test_invalid_settings_fail_at_construction_with_a_fix(ds, kwargs, match):
    kwargs = dict(kwargs)
    batch_size = kwargs.pop("batch_size")
    with pytest.raises(ValueError, match=match):
        TaskBatchSampler(ds, batch_size, **kwargs)


def test_balancing_only_the_classification_task_works():
    s = TaskBatchSampler(REGRESSION, 2, balance={"kind": "inverse"}, length=10)
    assert len(batches(s)) == 10


# ---------------------------------------------------------------- with the real MultiTaskDataset


def _multitask():
    from hydranet.data.dataset import MultiTaskDataset

    return MultiTaskDataset


def test_real_dataset_one_task_per_batch_through_a_dataloader():
    MultiTaskDataset = _multitask()
    digits = TensorDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10) % 3)
    fashion = TensorDataset(torch.arange(100.0, 125.0).unsqueeze(1), torch.arange(25) % 2)
    ds = MultiTaskDataset({"digits": digits, "fashion": fashion})
    s = TaskBatchSampler(ds, 4, length="all", seed=3)
    assert len(s) == 3 + 7
    seen, tasks = [], []
    for batch in DataLoader(ds, batch_sampler=s, collate_fn=collate):
        tasks.append(batch.tasks)
        seen += batch.inputs[:, 0].long().tolist()
    assert tasks == [["digits"], ["fashion"]] * 3 + [["fashion"]] * 4
    assert sorted(seen) == list(range(10)) + list(range(100, 125))


def test_real_dataset_labels_drive_class_balancing():
    MultiTaskDataset = _multitask()
    pos_neg = TensorDataset(torch.zeros(55, 1), torch.tensor([1] * 50 + [0] * 5))
    other = TensorDataset(torch.ones(20, 1), torch.arange(20) % 4)
    ds = MultiTaskDataset({"pos_neg": pos_neg, "other": other},
                          tasks=[Task("pos_neg", "binary"), Task("other", "multiclass", num_classes=4)])
    s = TaskBatchSampler(ds, 8, balance={"pos_neg": "inverse"}, length=600)
    pool, labels = ds.task_indices("pos_neg"), ds.labels("pos_neg")
    drawn = np.array([i for b in s for i in b if np.isin(b, pool).all()])
    share = np.mean(labels[np.searchsorted(pool, drawn)] == 0)
    assert len(drawn) == 300 * 8 and abs(share - 0.5) <= 4 * math.sqrt(0.25 / len(drawn))


def test_real_shared_dataset_defaults_to_the_joint_pool():
    MultiTaskDataset = _multitask()
    n = 30
    age = torch.linspace(20, 60, n)
    age[::5] = float("nan")  # missing ages
    gender = torch.arange(n) % 2
    gender[1::3] = -1  # missing genders
    ds = MultiTaskDataset.shared(TensorDataset(torch.arange(float(n)).unsqueeze(1), age, gender),
                                 tasks=[Task("age", "regression"), Task("gender", "binary")])
    labelled = sorted(set(ds.task_indices("age").tolist()) | set(ds.task_indices("gender").tolist()))
    assert len(labelled) == 28  # samples 10 and 25 have neither label
    s = TaskBatchSampler(ds, 8)
    assert s.mode == "joint" and len(s) == math.ceil(len(labelled) / 8)
    assert sorted(i for b in s for i in b) == labelled
    per_task = TaskBatchSampler(ds, 4, schedule="round_robin", balance={"gender": "inverse"}, length=10)
    for batch in DataLoader(ds, batch_sampler=per_task, collate_fn=collate):
        assert len(batch.tasks) >= 1
    with pytest.raises(ValueError, match="regression task"):
        TaskBatchSampler(ds, 4, schedule="round_robin", balance="inverse")


# ---------------------------------------------------------------- strict bools, batches larger than a task


@pytest.mark.parametrize("name", ["drop_last", "replacement"])
@pytest.mark.parametrize("value", ["false", "False", 0, 1, None])
def test_bool_parameters_are_strict(name, value):
    # "false" is a non-empty string: bool("false") is True, which would silently drop the last batch.
    with pytest.raises(TypeError, match=rf"{name} must be True or False, got {value!r}"):
        TaskBatchSampler(AB, 4, **{name: value})


def test_a_task_smaller_than_a_batch_is_named_in_a_warning():
    from hydranet.data.sampler import SmallTaskWarning

    ds = Toy.separate({"ones": 10, "b": 55})
    with pytest.warns(SmallTaskWarning) as record:
        sampler = TaskBatchSampler(ds, 500)
    assert len(record) == 1  # one warning naming every small task
    text = str(record[0].message)
    assert "task 'ones' has 10 samples for a batch of 500" in text and "about 50 times" in text
    assert "task 'b' has 55 samples" in text and "replacement=True" in text
    # What the warning describes: sample 0 of 'ones' fills 50 places of the first batch of 'ones'.
    first = next(b for b in sampler if b[0] < 10)
    assert len(first) == 500 and first.count(first[0]) == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {"replacement": True},  # repeats asked for
        {"length": "all"},  # one pass: a short batch, no repeat
        {"balance": "inverse"},  # drawn with replacement
    ],
)
def test_no_small_task_warning_where_repeats_are_meant_or_impossible(kwargs):
    import warnings

    from hydranet.data.sampler import SmallTaskWarning

    ds = Toy.separate({"ones": 10, "b": 55}, labels={"ones": np.arange(10) % 2, "b": np.arange(55) % 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallTaskWarning)
        TaskBatchSampler(ds, 500, **kwargs)


def test_the_joint_pool_smaller_than_a_batch_warns_only_when_cycled():
    from hydranet.data.sampler import SmallTaskWarning

    ds = Toy({"a": np.arange(6), "b": np.arange(3, 9)}, shared=True)
    with pytest.warns(SmallTaskWarning, match="the joint pool has 9 samples for a batch of 16"):
        TaskBatchSampler(ds, 16, length=3)
    assert [len(b) for b in TaskBatchSampler(ds, 16)] == [9]  # one pass: one short batch, nothing repeated
