import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

import hydranet as hn
from hydranet.report import CSVLogger, DiagnosticsMeter, EpochLog, History, TensorBoardLogger, write_report

TASKS = [
    hn.Task("left", "multiclass", num_classes=3, class_names=["a", "b", "c"]),
    hn.Task("zero", "binary"),
    hn.Task("age", "regression"),
]


def make_history(epochs=4):
    history = History()
    for e in range(1, epochs + 1):
        history.append(
            EpochLog(
                epoch=e,
                losses={
                    "train": {"left": 1.0 / e, "zero": 0.5 / e, "age": 10.0 / e},
                    "val": {"left": 1.2 / e, "zero": 0.6 / e, "age": 11.0 / e},
                },
                metrics={
                    "val": {
                        "left": {"accuracy": 0.5 + 0.1 * e, "f1": 0.4 + 0.1 * e},
                        "zero": {"f1": 0.3 + 0.1 * e, "accuracy": 0.8 + 0.02 * e, "auroc": 0.7 + 0.05 * e},
                        "age": {"mae": 8.0 - e, "rmse": 10.0 - e},
                    }
                },
                weights={"left": 1.0 + 0.1 * e, "zero": 1.0, "age": 1.0 - 0.1 * e},
                grad_norms={"left": 2.0, "zero": 1.0, "age": 5.0 / e},
                cosines={"left": {"zero": 0.1 * e, "age": -0.05 * e}, "zero": {"age": 0.2}},
                extra={"lr": 0.01 / e},
            )
        )
    return history


SCORES = {
    "left": {"accuracy": 0.93, "f1": 0.92},
    "zero": {"f1": 0.70, "accuracy": 0.95, "auroc": 0.97},
    "age": {"mae": 4.0, "rmse": 5.5},
}
BASELINES = {"left": 0.91, "zero": 0.80, "age": 5.0}  # main metrics: accuracy, f1, mae
CONFUSION = {"left": np.array([[50, 3, 2], [4, 40, 6], [1, 2, 60]]), "zero": np.array([[90, 2], [3, 5]])}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(
        out, make_history(), tasks=TASKS, scores=SCORES, baselines=BASELINES, confusion=CONFUSION, best_epoch=3
    )


def test_report_files_exist_and_pngs_are_valid_images(report):
    names = {p.name for p in report.out_dir.iterdir()}
    expected_pngs = {
        "loss.png", "metrics.png", "weights.png", "grad_norms.png", "cosines.png", "confusion_left.png",
        "confusion_zero.png", "comparison.png",
    }
    assert names == expected_pngs | {"summary.md", "metrics.json", "history.json"}
    assert {p.name for p in report.figures.values()} == expected_pngs
    for name in expected_pngs:
        with Image.open(report.out_dir / name) as image:
            image.verify()
        with Image.open(report.out_dir / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 250
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 5  # something was drawn


def test_delta_m_and_relative_changes_by_hand(report):
    changes = {"left": (0.93 - 0.91) / 0.91 * 100, "zero": (0.70 - 0.80) / 0.80 * 100, "age": -(4.0 - 5.0) / 5.0 * 100}
    expected = sum(changes.values()) / 3
    assert report.delta_m == pytest.approx(expected)
    assert report.delta_m_per_metric == pytest.approx(expected)  # one baseline metric per task
    data = json.loads(report.metrics_json.read_text())
    assert data["delta_m"] == pytest.approx(expected)
    assert data["relative_change"] == {
        "left": {"accuracy": pytest.approx(changes["left"])},
        "zero": {"f1": pytest.approx(changes["zero"])},
        "age": {"mae": pytest.approx(changes["age"])},
    }
    assert data["baselines"] == {"left": {"accuracy": 0.91}, "zero": {"f1": 0.80}, "age": {"mae": 5.0}}
    assert data["main_metrics"]["age"] == {"name": "mae", "higher_is_better": False}


def test_metrics_json_round_trips_with_sorted_keys(report):
    text = report.metrics_json.read_text()
    data = json.loads(text)
    assert data["tasks"] == SCORES
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert History.load(report.history_json) == make_history()


def test_summary_shows_the_numbers(report):
    text = report.summary.read_text()
    assert f"Δm = {report.delta_m:+.2f}%" in text
    assert "| left | accuracy ↑ | 0.9300 | 0.9100 | +2.20% |" in text
    assert "| age | mae ↓ | 4.0000 | 5.0000 | +20.00% |" in text
    assert "| zero | f1 ↑ | 0.7000 | 0.8000 | -12.50% |" in text
    assert "| age | rmse ↓ | 5.5000 | — | — |" in text  # all-metrics table, no baseline for rmse
    assert "![loss](loss.png)" in text


def test_baseline_curves_are_drawn_beside_the_multi_task_ones(tmp_path):
    single = History()
    for e in range(1, 5):
        single.append(EpochLog(epoch=e, metrics={"val": {"left": {"accuracy": 0.2 + 0.05 * e}}}))
    plain = write_report(tmp_path / "plain", make_history(), tasks=TASKS, scores=SCORES, baselines=BASELINES)
    both = write_report(
        tmp_path / "both", make_history(), tasks=TASKS, scores=SCORES, baselines=BASELINES, baseline_histories={"left": single}
    )
    with Image.open(plain.figures["metrics"]) as a, Image.open(both.figures["metrics"]) as b:
        difference = np.abs(np.asarray(a.convert("L"), dtype=int) - np.asarray(b.convert("L"), dtype=int))
    width = difference.shape[1]
    assert difference[:, : width // 3].sum() > 0  # the 'left' panel gained a curve
    assert difference[:, width // 3 :].sum() == 0  # the other panels are unchanged
    assert (plain.out_dir / "comparison.png").read_bytes() == (both.out_dir / "comparison.png").read_bytes()


def test_report_without_baselines_and_with_default_scores(tmp_path):
    history = make_history()
    report = write_report(tmp_path, history, best_epoch=2, plots=False)
    assert report.delta_m is None and report.delta_m_per_metric is None
    data = json.loads(report.metrics_json.read_text())
    assert data["delta_m"] is None and data["baselines"] is None and data["epoch"] == 2
    assert data["tasks"] == history.at(2).metrics["val"]
    text = report.summary.read_text()
    assert "Δm" not in text and "baseline" not in text
    assert "| left | accuracy ↑ | 0.7000 |" in text  # epoch 2: 0.5 + 0.2; main metric = first listed
    assert "Scores on `val` at epoch 2." in text


def test_report_files_are_deterministic(tmp_path):
    history = History([EpochLog(1, losses={"train": {"left": 0.5}}), EpochLog(2, losses={"train": {"left": 0.4}})])
    a = write_report(tmp_path / "a", history, scores=SCORES, baselines=BASELINES)
    b = write_report(tmp_path / "b", history, scores=SCORES, baselines=BASELINES)
    assert set(a.figures) == {"loss", "comparison"}
    for name in ("summary.md", "metrics.json", "history.json", "loss.png"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes(), name


def test_nested_baselines_average_per_task_then_per_metric(tmp_path):
    baselines = {"left": {"accuracy": 0.9, "f1": 0.8}, "age/mae": 5.0}
    report = write_report(tmp_path, make_history(1), scores=SCORES, baselines=baselines, plots=False)
    left = [(0.93 - 0.9) / 0.9 * 100, (0.92 - 0.8) / 0.8 * 100]
    age = 20.0
    assert report.delta_m == pytest.approx((np.mean(left) + age) / 2)
    assert report.delta_m_per_metric == pytest.approx((sum(left) + age) / 3)


def test_nan_scores_become_null_and_unknown_baselines_are_named(tmp_path):
    scores = {"left": {"accuracy": 0.9, "auroc": float("nan")}}
    report = write_report(tmp_path, make_history(1), scores=scores, plots=False)
    assert json.loads(report.metrics_json.read_text())["tasks"]["left"]["auroc"] is None
    assert "| left | auroc ↑ | — |" in report.summary.read_text()
    with pytest.raises(ValueError, match="baselines name task 'right'"):
        write_report(tmp_path, make_history(1), scores=scores, baselines={"right": 0.5}, plots=False)
    with pytest.raises(ValueError, match="higher_is_better"):
        write_report(tmp_path, make_history(1), scores={"x": {"iou": 0.5}}, baselines={"x": 0.4}, plots=False)
    with pytest.raises(ValueError, match="no 'test' metrics"):
        write_report(tmp_path, make_history(1), split="test", plots=False)
    assert not list(tmp_path.glob("*.png"))


def test_custom_metric_direction_and_multilabel_confusion(tmp_path):
    attrs = hn.Task("attrs", "multilabel", num_classes=2, class_names=["hat", "scarf"])
    counts = np.array([[[50, 5], [8, 37]], [[70, 1], [2, 27]]])
    report = write_report(
        tmp_path,
        History([EpochLog(1)]),  # no curves: only the confusion matrix is drawn
        tasks=[attrs],
        scores={"x": {"iou": 0.5}, "attrs": {"f1": 0.8}},
        baselines={"x": 0.4, "attrs": 0.8},
        higher_is_better={"x": {"iou": True}},
        confusion={"attrs": counts},
    )
    assert report.delta_m == pytest.approx((25.0 + 0.0) / 2)
    assert set(report.figures) == {"confusion_attrs", "comparison"}
    with Image.open(report.figures["confusion_attrs"]) as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError, match="expected \\[C, C\\]"):
        write_report(tmp_path, History([EpochLog(1)]), scores=SCORES, confusion={"left": np.zeros((2, 3))})


def test_epoch_rows_and_history_round_trip(tmp_path):
    log = make_history(1).epochs[0]
    rows = log.rows()
    assert rows == sorted(rows)
    assert ("val", "left", "accuracy", pytest.approx(0.6)) in rows
    assert ("train", "age", "loss", 10.0) in rows
    assert ("balancer", "left", "weight", pytest.approx(1.1)) in rows
    assert ("balancer", "age:left", "cosine", pytest.approx(-0.05)) in rows  # pairs are sorted by name
    assert ("", "", "lr", 0.01) in rows
    assert len(rows) == 6 + 7 + 3 + 3 + 3 + 1
    history = make_history(3)
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    assert history.tasks == ["left", "zero", "age"]
    with_nan = History([EpochLog(1, metrics={"val": {"zero": {"auroc": float("nan")}}})])
    with_nan.save(tmp_path / "h.json")
    assert '"auroc": null' in (tmp_path / "h.json").read_text()  # strict JSON
    assert math.isnan(History.load(tmp_path / "h.json").epochs[0].metrics["val"]["zero"]["auroc"])
    with pytest.raises(ValueError, match="Unknown epoch field"):
        EpochLog.from_dict({"epoch": 1, "loss": {}})
    with pytest.raises(ValueError, match="No epoch 9"):
        history.at(9)


def test_diagnostics_meter_averages_where_reported():
    meter = DiagnosticsMeter()
    meter.update({"weights": {"a": 1.0, "b": 3.0}, "grad_norms": {"a": 2.0}, "cosines": [[1, 0.5], [0.5, 1]]})
    meter.update({"weights": {"a": 2.0}, "cosines": None})  # b absent from this batch
    meter.update({"weights": {"b": 1.0, "a": 3.0}, "cosines": np.array([[1, -0.1], [-0.1, 1]])}, tasks=["b", "a"])
    summary = meter.summary()
    assert summary["weights"] == {"a": 2.0, "b": 2.0}
    assert summary["grad_norms"] == {"a": 2.0}
    assert summary["cosines"] == {"a": {"b": pytest.approx(0.2)}}
    with pytest.raises(ValueError, match="pass tasks="):
        meter.update({"weights": {"a": 1.0}, "cosines": [[1, 0], [0, 1]]})
    meter.reset()
    assert meter.summary() == {"weights": {}, "grad_norms": {}, "cosines": {}}


def test_csv_logger_writes_long_rows_and_appends(tmp_path):
    path = tmp_path / "logs" / "metrics.csv"
    history = make_history(2)
    with CSVLogger(path) as logger:
        logger.log(1, history.epochs[0])
        logger.log(2, {"val": {"left": {"accuracy": 0.1 + 0.2}}})
    with CSVLogger(path, append=True) as logger:
        logger.log(3, {"test": {"age": {"mae": 1.5}}})
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "split", "task", "metric", "value"]
    body = rows[1:]
    assert len(body) == len(history.epochs[0].rows()) + 2
    assert ["1", "val", "left", "f1", repr(0.4 + 0.1)] in body
    assert ["1", "balancer", "left:zero", "cosine", repr(0.1)] in body
    assert ["2", "val", "left", "accuracy", "0.30000000000000004"] in body  # exact round trip
    assert body[-1] == ["3", "test", "age", "mae", "1.5"]
    assert [r[0] for r in body] == sorted(r[0] for r in body)
    with CSVLogger(path) as logger:  # a new run starts a new file
        logger.log(1, {"val": {"a": {"f1": 1.0}}})
    assert path.read_text() == "epoch,split,task,metric,value\n1,val,a,f1,1.0\n"
    with pytest.raises(TypeError, match="EpochLog or a mapping"):
        CSVLogger(tmp_path / "x.csv").log(1, {"val": 0.5})


def test_tensorboard_logger_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    history = make_history(2)
    for log in history:
        logger.log(log.epoch, log)
    logger.close()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"val/left/accuracy", "train/age/loss", "balancer/left/weight", "balancer/left:zero/cosine", "lr"} <= set(tags)
    accuracy = events.Scalars("val/left/accuracy")
    assert [e.step for e in accuracy] == [1, 2]
    assert [e.value for e in accuracy] == pytest.approx([0.6, 0.7])
    assert math.isclose(events.Scalars("lr")[1].value, 0.005, rel_tol=1e-6)


def test_a_run_without_scores_says_so_instead_of_empty_tables(tmp_path):
    history = History([EpochLog(1, losses={"train": {"left": 0.5}})])
    text = write_report(tmp_path, history, scores={}, plots=False).summary.read_text()
    assert "No scores: training had no validation or test data" in text
    assert "## Main metric per task" not in text and "| task |" not in text


def test_console_text_lists_figures_by_name(report):
    text = report.console_text()
    assert "![" not in text and "## Main metric per task" in text and "Δm" in text
    assert text.rstrip().splitlines()[-1] == "figures: " + ", ".join(p.name for p in report.figures.values())
    assert text.split("\n\nfigures:")[0] == report.summary.read_text().split("\n## Figures")[0].rstrip()
