import gc
from datetime import timedelta
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn import metrics as skm

import hydranet as hn
from hydranet.data import Batch
from hydranet.metrics import (
    DEFAULT_METRICS,
    METRICS,
    MultiTaskMetrics,
    TaskMetrics,
    delta_m,
    higher_is_better,
    main_metric,
    metric_names,
    relative_change,
)

MC = hn.Task("digit", "multiclass", num_classes=4)
BIN = hn.Task("smile", "binary")
ML = hn.Task("attrs", "multilabel", num_classes=3)
REG = hn.Task("age", "regression")
REG2 = hn.Task("box", "regression", dim=2, metrics=["mae", "rmse", "mse", "r2"])
TASKS = [MC, BIN, ML, REG, REG2]


def make_data(n=240, seed=0):
    """Logits / values and targets for every task, plus random masks (about 70% labelled)."""
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "digit": torch.randn(n, 4, generator=g) * 2,
        "smile": torch.randn(n, 1, generator=g) * 2,
        "attrs": torch.randn(n, 3, generator=g) * 2,
        "age": torch.randn(n, 1, generator=g),
        "box": torch.randn(n, 2, generator=g),
    }
    targets = {
        "digit": torch.randint(0, 4, (n,), generator=g),
        "smile": torch.randint(0, 2, (n,), generator=g),
        "attrs": torch.randint(0, 2, (n, 3), generator=g).float(),
        "age": outputs["age"][:, 0] + 0.5 * torch.randn(n, generator=g),
        "box": outputs["box"] + torch.randn(n, 2, generator=g),
    }
    masks = {t: torch.rand(n, generator=g) < 0.7 for t in outputs}
    return outputs, targets, masks


def feed(metrics, outputs, targets, masks, batch=50):
    n = next(iter(outputs.values())).shape[0]
    for s in range(0, n, batch):
        cut = lambda d: {k: v[s : s + batch] for k, v in d.items()}  # noqa: E731
        metrics.update(cut(outputs), cut(targets), cut(masks))


def sklearn_reference(outputs, targets, masks):
    """The default metrics computed independently with scikit-learn on the labelled rows."""
    sel = lambda t: (outputs[t][masks[t]].numpy(), targets[t][masks[t]].numpy())  # noqa: E731
    ref = {}
    logits, y = sel("digit")
    pred = logits.argmax(1)
    ref["digit"] = {"accuracy": skm.accuracy_score(y, pred), "f1": skm.f1_score(y, pred, average="macro")}
    logits, y = sel("smile")
    prob = 1 / (1 + np.exp(-logits[:, 0]))
    ref["smile"] = {
        "f1": skm.f1_score(y, prob > 0.5),
        "accuracy": skm.accuracy_score(y, prob > 0.5),
        "auroc": skm.roc_auc_score(y, prob),
    }
    logits, y = sel("attrs")
    ref["attrs"] = {
        "f1": skm.f1_score(y, logits > 0, average="macro"),
        "accuracy": float(np.mean((logits > 0) == y)),
        "auroc": skm.roc_auc_score(y, logits, average="macro"),
    }
    out, y = sel("age")
    ref["age"] = {"mae": np.mean(np.abs(out[:, 0] - y)), "rmse": np.sqrt(np.mean((out[:, 0] - y) ** 2))}
    out, y = sel("box")
    mse = np.mean((out - y) ** 2)  # over all output values
    ref["box"] = {"mae": np.mean(np.abs(out - y)), "rmse": np.sqrt(mse), "mse": mse, "r2": skm.r2_score(y, out)}
    return ref


def assert_scores_close(got, expected, tol=1e-5):
    assert set(got) == set(expected)
    for task in expected:
        assert list(got[task]) == list(expected[task]), task  # names and order
        for name, value in expected[task].items():
            assert got[task][name] == pytest.approx(value, abs=tol), (task, name)


def test_default_metrics_match_sklearn_over_labelled_rows():
    outputs, targets, masks = make_data()
    metrics = MultiTaskMetrics(TASKS)
    feed(metrics, outputs, targets, masks)
    assert_scores_close(metrics.compute(), sklearn_reference(outputs, targets, masks))


def test_unlabelled_rows_are_never_read():
    outputs, targets, masks = make_data()
    a, b = MultiTaskMetrics(TASKS), MultiTaskMetrics(TASKS)
    feed(a, outputs, targets, masks)
    garbage = {t: v.clone() for t, v in targets.items()}
    for t, v in garbage.items():
        v[~masks[t]] = 7 if v.dtype == torch.long else float("nan")
    feed(b, outputs, garbage, masks)
    assert a.compute() == b.compute()


def test_logits_in_unit_interval_still_get_a_sigmoid():
    # torchmetrics would take values in [0, 1] for probabilities; ours are always logits.
    metrics = TaskMetrics(BIN, ["accuracy"])
    logits = torch.linspace(0.05, 0.95, 10)[:, None]  # sigmoid > 0.5: all predicted positive
    target = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    metrics.update(logits, target)
    assert metrics.compute() == {"accuracy": pytest.approx(0.3)}


def test_multiclass_accuracy_is_the_plain_fraction_correct():
    metrics = TaskMetrics(hn.Task("c", "multiclass", num_classes=3), ["accuracy", "recall"])
    logits = torch.eye(3)[torch.tensor([0, 0, 0, 0, 1, 2])] * 5  # predictions 0 0 0 0 1 2
    metrics.update(logits, torch.tensor([0, 0, 0, 0, 2, 1]))  # 4 of 6 correct
    scores = metrics.compute()
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["recall"] == pytest.approx((1 + 0 + 0) / 3)  # macro


def test_absent_and_unlabelled_tasks_are_skipped_and_left_out():
    metrics = MultiTaskMetrics([MC, BIN, REG])
    outputs, targets, _ = make_data(n=20)
    masks = {"digit": torch.ones(20, dtype=torch.bool), "smile": torch.zeros(20, dtype=torch.bool)}
    metrics.update({"digit": outputs["digit"], "smile": outputs["smile"], "other": torch.zeros(20, 2)},
                   {"digit": targets["digit"], "smile": targets["smile"]}, masks)
    assert set(metrics.compute()) == {"digit"}
    assert set(metrics.confusion_matrices()) == {"digit"}


def test_a_batch_can_be_passed_as_targets_and_reset_clears():
    outputs, targets, masks = make_data(n=60)
    metrics = MultiTaskMetrics([MC])
    metrics.update(outputs, Batch(torch.zeros(60, 1), targets, masks))
    reference = MultiTaskMetrics([MC])
    reference.update(outputs, targets, masks)
    assert metrics.compute() == reference.compute()
    metrics.reset()
    assert metrics.compute() == {}


def test_task_without_mask_counts_every_row():
    outputs, targets, _ = make_data(n=30)
    metrics = MultiTaskMetrics([REG])
    metrics.update(outputs, targets)
    assert metrics.compute()["age"]["mae"] == pytest.approx(float((outputs["age"][:, 0] - targets["age"]).abs().mean()))


def test_confusion_matrices_match_sklearn():
    outputs, targets, masks = make_data()
    metrics = MultiTaskMetrics(TASKS)
    feed(metrics, outputs, targets, masks)
    cms = metrics.confusion_matrices()
    assert set(cms) == {"digit", "smile", "attrs"}
    m = masks["digit"]
    np.testing.assert_array_equal(cms["digit"], skm.confusion_matrix(targets["digit"][m], outputs["digit"][m].argmax(1), labels=range(4)))
    m = masks["smile"]
    np.testing.assert_array_equal(cms["smile"], skm.confusion_matrix(targets["smile"][m], outputs["smile"][m, 0] > 0))
    m = masks["attrs"]
    np.testing.assert_array_equal(cms["attrs"], skm.multilabel_confusion_matrix(targets["attrs"][m], outputs["attrs"][m] > 0))
    assert all(cm.dtype == np.int64 for cm in cms.values())
    assert MultiTaskMetrics([MC], confusion=False).confusion_matrices() == {}


def test_names_come_from_task_then_mapping_and_are_validated():
    task = hn.Task("c", "multiclass", num_classes=3, metrics=["f1", "ap"])
    assert MultiTaskMetrics([task])["c"].names == ("f1", "ap")
    assert MultiTaskMetrics([task], metrics={"c": ["precision"]})["c"].names == ("precision",)
    assert metric_names(REG) == DEFAULT_METRICS["regression"] == ("mae", "rmse")
    with pytest.raises(ValueError, match="Unknown metric 'acc'.*accuracy"):
        TaskMetrics(MC, ["acc"])
    with pytest.raises(ValueError, match="does not apply to regression.*mae"):
        TaskMetrics(REG, ["auroc"])
    with pytest.raises(ValueError, match="unknown task"):
        MultiTaskMetrics([MC], metrics={"dgit": ["f1"]})
    with pytest.raises(ValueError, match="repeat"):
        TaskMetrics(MC, ["f1", "f1"])


def test_ragged_tasks_have_no_metrics_by_default():
    boxes = hn.Task("boxes", "regression", dim=4, ragged=True)
    metrics = MultiTaskMetrics([boxes, MC])
    metrics.update({"boxes": torch.zeros(2, 4)}, {"boxes": [torch.zeros(3, 4), None]}, {"boxes": torch.tensor([True, False])})
    assert metrics.compute() == {}
    assert metrics.main_metrics() == {"digit": ("accuracy", True)}
    with pytest.raises(ValueError, match="ragged"):
        TaskMetrics(boxes, ["mae"])


def test_wrong_output_shapes_are_explained():
    with pytest.raises(ValueError, match="expected 4 logit"):
        TaskMetrics(MC).update(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="dim="):
        TaskMetrics(REG).update(torch.zeros(5, 1), torch.zeros(5, 3))


def test_higher_is_better_comes_from_torchmetrics():
    assert {n: higher_is_better(n) for n in METRICS} == {
        "accuracy": True, "f1": True, "precision": True, "recall": True, "auroc": True, "ap": True,
        "mae": False, "mse": False, "rmse": False, "r2": True,
    }
    assert MultiTaskMetrics([REG2]).higher_is_better() == {"box": {"mae": False, "rmse": False, "mse": False, "r2": True}}


def test_main_metric_per_kind():
    assert main_metric(MC) == ("accuracy", True)
    assert main_metric(BIN) == ("f1", True)
    assert main_metric(ML) == ("f1", True)
    assert main_metric(REG) == ("mae", False)
    assert main_metric(REG2) == ("mae", False)
    assert main_metric(hn.Task("q", "regression", metrics=["r2", "mae"])) == ("r2", True)
    assert MultiTaskMetrics([MC], metrics={"digit": ["f1"]}).main_metrics() == {"digit": ("f1", True)}


# --------------------------------------------------------------------------------------------- Δm


def test_relative_change_signs_and_units():
    assert relative_change(0.9, 0.8, True) == pytest.approx(12.5)
    assert relative_change(0.9, 0.8, False) == pytest.approx(-12.5)
    assert relative_change(4.0, 5.0, False) == pytest.approx(20.0)
    assert relative_change(-0.1, -0.2, True) == pytest.approx(50.0)  # |B| keeps "better" positive


def test_delta_m_by_hand_with_task_keys():
    scores = {"left": 0.90, "right": 0.85, "age": 4.0}
    baselines = {"left": 0.80, "right": 0.85, "age": 5.0}
    hib = {"left": True, "right": True, "age": False}
    expected = (12.5 + 0.0 + 20.0) / 3
    assert delta_m(scores, baselines, hib) == pytest.approx(expected)
    assert delta_m(scores, baselines, hib, per="metric") == pytest.approx(expected)


def test_delta_m_per_task_and_per_metric_differ_as_documented():
    scores = {"a": {"acc": 1.06}, "b": {"m1": 0.98, "m2": 0.98, "m3": 0.98}}
    baselines = {"a": {"acc": 1.0}, "b": {"m1": 1.0, "m2": 1.0, "m3": 1.0}}
    assert delta_m(scores, baselines, True) == pytest.approx((6 + (-2)) / 2)
    assert delta_m(scores, baselines, True, per="metric") == pytest.approx((6 - 2 - 2 - 2) / 4)


def test_delta_m_key_styles_are_equivalent_and_registry_gives_directions():
    nested_s = {"left": {"accuracy": 0.9, "f1": 0.8}, "age": {"mae": 4.0}}
    nested_b = {"left": {"accuracy": 0.8, "f1": 0.8}, "age": {"mae": 5.0}}
    expected = ((12.5 + 0.0) / 2 + 20.0) / 2
    flat = lambda d, f: {f(t, m): v for t, ms in d.items() for m, v in ms.items()}  # noqa: E731
    pairs = lambda t, m: (t, m)  # noqa: E731
    slash = lambda t, m: f"{t}/{m}"  # noqa: E731
    for style in (pairs, slash):
        assert delta_m(flat(nested_s, style), flat(nested_b, style)) == pytest.approx(expected)
    assert delta_m(nested_s, nested_b) == pytest.approx(expected)  # directions from the registry
    hib = {"left": {"accuracy": True, "f1": True}, "age": {"mae": False}}
    assert delta_m(nested_s, flat(nested_b, slash), flat(hib, pairs)) == pytest.approx(expected)


def test_delta_m_covers_the_baselines_only():
    scores = {"left": {"accuracy": 0.9, "f1": 0.1}, "extra": {"accuracy": 0.1}}
    assert delta_m(scores, {"left/accuracy": 0.8}) == pytest.approx(12.5)


@pytest.mark.parametrize(
    ("scores", "baselines", "hib", "match"),
    [
        ({"a": 0.5}, {"a": 0.0}, True, "baseline of a is 0.*relative change is undefined.*metric"),
        ({"a": 0.5}, {"a": 0.5, "b": 0.2}, True, r"scores lack \['b'\]"),
        ({"a": float("nan")}, {"a": 0.5}, True, "score of a is nan"),
        ({"a": 0.5}, {"a": float("inf")}, True, "baseline of a is inf"),
        ({"a": 0.5}, {}, True, "empty"),
        ({"a": 0.5}, {"a": 0.4}, None, "higher_is_better"),
        ({"a/f1": 0.5}, {"a/f1": 0.4}, {"a/auroc": True}, "no entry for a/f1"),
        ({"a/foo": 0.5}, {"a/foo": 0.4}, None, "Unknown metric 'foo'"),
        ({"a": {"f1": 0.5}, "a/f1": 0.5}, {"a/f1": 0.4}, True, "given twice"),
    ],
)
def test_delta_m_errors_say_what_is_wrong(scores, baselines, hib, match):
    with pytest.raises(ValueError, match=match):
        delta_m(scores, baselines, hib)


def test_delta_m_rejects_unknown_averaging():
    with pytest.raises(ValueError, match="per must be"):
        delta_m({"a": 1.0}, {"a": 1.0}, True, per="tasks")


finite = st.floats(min_value=0.01, max_value=100, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdef"), st.tuples(finite, finite, st.booleans()), min_size=1))
def test_delta_m_properties(entries):
    scores = {t: s for t, (s, _, _) in entries.items()}
    baselines = {t: b for t, (_, b, _) in entries.items()}
    hib = {t: h for t, (_, _, h) in entries.items()}
    value = delta_m(scores, baselines, hib)
    # the formula, with one metric per task both averagings agree
    expected = 100 * np.mean([(s - b) / b * (1 if h else -1) for s, b, h in entries.values()])
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert delta_m(scores, baselines, hib, per="metric") == pytest.approx(value, rel=1e-9, abs=1e-9)
    # flipping every direction flips the sign; scores equal to baselines give 0
    assert delta_m(scores, baselines, {t: not h for t, h in hib.items()}) == pytest.approx(-value, rel=1e-9, abs=1e-9)
    assert delta_m(baselines, baselines, hib) == 0.0


# --------------------------------------------------------------------------------------- DDP (gloo)

WORLD = 2


def _ddp_worker(rank, init_file, out_file):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        outputs, targets, masks = make_data(n=240)
        # "rare" is labelled on rank 0's half only: rank 1 computes it without a sample.
        masks["rare"] = masks["smile"] & (torch.arange(240) < 120)
        outputs["rare"], targets["rare"] = outputs["smile"], targets["smile"]
        metrics = MultiTaskMetrics(TASKS + [hn.Task("rare", "binary", metrics=["auroc", "f1", "ap"])])
        half = slice(rank * 120, (rank + 1) * 120)  # each rank gets half of the data
        cut = lambda d: {k: v[half] for k, v in d.items()}  # noqa: E731
        feed(metrics, cut(outputs), cut(targets), cut(masks), batch=40)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "compute before update" warning on the empty rank
            result = {"scores": metrics.compute(), "cms": metrics.confusion_matrices(), "again": metrics.compute()}
        torch.save(result, f"{out_file}.{rank}")
        del metrics, outputs, targets, masks, result
    finally:
        gc.collect()
        torch.distributed.destroy_process_group()
        gc.collect()


@pytest.mark.slow
def test_compute_synchronises_across_two_gloo_ranks(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=WORLD)

    outputs, targets, masks = make_data(n=240)
    masks["rare"] = masks["smile"] & (torch.arange(240) < 120)
    outputs["rare"], targets["rare"] = outputs["smile"], targets["smile"]
    full = MultiTaskMetrics(TASKS + [hn.Task("rare", "binary", metrics=["auroc", "f1", "ap"])])
    feed(full, outputs, targets, masks)
    expected, expected_cms = full.compute(), full.confusion_matrices()
    assert set(expected) == {"digit", "smile", "attrs", "age", "box", "rare"}
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"out.{rank}", weights_only=False)
        assert_scores_close(result["scores"], expected, tol=1e-6)
        assert result["again"] == result["scores"]  # states were restored to local after the sync
        assert set(result["cms"]) == set(expected_cms)
        for task, cm in expected_cms.items():
            np.testing.assert_array_equal(result["cms"][task], cm)
    assert not math.isnan(expected["rare"]["auroc"])


def test_registry_directions_are_torchmetrics_own():
    """The registry states each metric's direction without importing torchmetrics; it must agree with the
    ``higher_is_better`` attribute of the torchmetrics class each kind builds."""
    from hydranet.metrics import METRICS

    tasks = {
        "binary": hn.Task("b", "binary"),
        "multiclass": hn.Task("m", "multiclass", num_classes=3),
        "multilabel": hn.Task("l", "multilabel", num_classes=3),
        "regression": hn.Task("r", "regression"),
    }
    for spec in METRICS.values():
        for kind, build in spec.build.items():
            assert bool(type(build(tasks[kind])).higher_is_better) is spec.higher_is_better, (spec.name, kind)
