"""``hydranet train``, ``evaluate`` and ``predict`` end to end, on a config over NumPy files."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from hydranet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
seed: 0
tasks:
  size: {kind: regression}
  kind: {kind: multiclass, num_classes: 3, class_names: [low, mid, high]}
data:
  train: {source: npz, path: train.npz, inputs: x}
  val: {source: npz, path: val.npz, inputs: x}
  test: {source: npz, path: test.npz, inputs: x}
sampler: {batch_size: 32}
model:
  backbone: {name: mlp, hidden: [32]}
trainer:
  epochs: 3
  lr: 0.01
  progress: false
"""


@pytest.fixture
def config(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("val", 64), ("test", 80)):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        kind = (x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 0)
        np.savez(tmp_path / f"{split}.npz", x=x, size=(x[:, 0] + x[:, 1]).astype(np.float32), kind=kind)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def run(*args):
    return main([str(a) for a in args])


def test_train_reports_the_best_checkpoint_on_test_then_evaluate_and_predict_agree(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", config, "--out", out, "--quiet", "--set", "trainer.baselines=train") == 0
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["tasks"]) == {"size", "kind"} and report["split"] == "test"
    # Δm by its definition from the report's own scores and baselines (mae: lower is better)
    change_kind = 100 * (report["tasks"]["kind"]["accuracy"] / report["baselines"]["kind"]["accuracy"] - 1)
    change_size = -100 * (report["tasks"]["size"]["mae"] / report["baselines"]["size"]["mae"] - 1)
    assert report["delta_m"] == pytest.approx((change_kind + change_size) / 2)
    assert report["tasks"]["kind"]["accuracy"] > 0.6  # chance is about 0.375 (the majority class)
    assert "Scores on `test`." in capsys.readouterr().out
    assert (out / "comparison.png").is_file()

    # best.pt evaluated on test gives the report's scores (the report scored the model validation chose)
    assert run("evaluate", config, out / "best.pt", "--json") == 0
    test_scores = json.loads(capsys.readouterr().out)
    assert test_scores["kind"]["accuracy"] == pytest.approx(report["tasks"]["kind"]["accuracy"])
    assert test_scores["size"]["mae"] == pytest.approx(report["tasks"]["size"]["mae"], rel=1e-5)

    # predictions on test: one row per dataset index, in order; they reproduce evaluate's scores
    predictions = tmp_path / "predictions.csv"
    assert run("predict", config, out / "best.pt", "--output", predictions) == 0
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    test = np.load(tmp_path / "test.npz")
    assert [int(r["index"]) for r in rows] == list(range(80))
    names = ["low", "mid", "high"]
    predicted = np.array([names.index(r["kind"]) for r in rows])
    assert np.mean(predicted == test["kind"]) == pytest.approx(test_scores["kind"]["accuracy"])
    errors = np.abs(np.array([float(r["size"]) for r in rows]) - test["size"])
    assert errors.mean() == pytest.approx(test_scores["size"]["mae"], rel=1e-4)


COLOURS = {"black": (20, 20, 20), "red": (220, 30, 30), "white": (235, 235, 235)}


def write_clothes(root, folders, n, rng):
    """``root/<color>_<item>/k.png``: jeans a tall block, shirts a wide one, in the folder's colour."""
    for folder in folders:
        colour, item = folder.split("_")
        (root / folder).mkdir(parents=True)
        for k in range(n):
            pixels = np.full((16, 16, 3), 100.0)
            if item == "jeans":
                pixels[4:16, 5:11] = COLOURS[colour]
            else:
                pixels[2:10, 2:14] = COLOURS[colour]
            pixels += rng.normal(0, 8, pixels.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / folder / f"{k}.png")


def test_splits_lacking_classes_keep_the_training_vocabulary(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_clothes(tmp_path / "train", ["black_jeans", "red_jeans", "white_shirt", "red_shirt", "black_shirt", "white_jeans"], 12, rng)
    write_clothes(tmp_path / "val", ["red_jeans", "white_shirt"], 6, rng)  # no black: alone it would read 2 colours
    write_clothes(tmp_path / "test", ["white_jeans", "red_shirt"], 6, rng)
    source = "{source: folder, path: %s, separator: _, tasks: [color, item], image_size: [16, 16]}"
    (tmp_path / "clothes.yaml").write_text(
        "seed: 0\ndata:\n"
        + "".join(f"  {split}: {source % split}\n" for split in ("train", "val", "test"))
        + "sampler: {batch_size: 16}\nmodel:\n  backbone: {name: convnet, in_channels: 3, widths: [8, 16]}\n"
        + "trainer: {epochs: 6, lr: 0.01, progress: false}\n"
    )
    out = tmp_path / "run"
    assert run("train", tmp_path / "clothes.yaml", "--out", out, "--quiet") == 0
    assert json.loads((out / "metrics.json").read_text())["tasks"]["color"]["accuracy"] == 1.0
    predictions = tmp_path / "predictions.csv"
    assert run("predict", tmp_path / "clothes.yaml", out / "best.pt", "--output", predictions) == 0
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    for row in rows:  # colours decoded with the training vocabulary, matching the file's folder
        assert row["color"] == row["path"].replace("\\", "/").split("/")[-2].split("_")[0]


def test_resume_from_last_continues_to_the_uninterrupted_result(config, tmp_path, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    assert run("train", config, "--out", full, "--quiet") == 0
    assert run("train", config, "--out", split, "--quiet", "--set", "trainer.epochs=2") == 0
    assert run("train", config, "--out", split, "--quiet", "--resume", "last") == 0
    expected = json.loads((full / "metrics.json").read_text())["tasks"]
    assert json.loads((split / "metrics.json").read_text())["tasks"] == expected
    history = json.loads((split / "history.json").read_text())
    assert [entry["epoch"] for entry in history["epochs"]] == [0, 1, 2]


def test_exit_codes_scripts_can_rely_on(config, tmp_path, capsys):
    assert run("evaluate", config, tmp_path / "missing.pt") == 2
    assert "No checkpoint" in capsys.readouterr().err
    assert run("train", config, "--set", "trainer.epoch=3") == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert run("predict", config, config) == 1  # a YAML file is not a checkpoint
    err = capsys.readouterr().err
    assert "config.yaml" in err and "checkpoint" in err and len(err.strip().splitlines()) == 1


def test_predict_writes_into_the_run_folder_and_says_where(config, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run("train", config, "--out", out, "--quiet", "--set", "trainer.epochs=1") == 0
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # before: predictions.csv landed in the current folder
    capsys.readouterr()
    assert run("predict", config, out / "best.pt") == 0
    assert (out / "predictions.csv").is_file() and not (elsewhere / "predictions.csv").exists()
    assert str(out / "predictions.csv") in capsys.readouterr().out
    assert run("predict", config, out / "best.pt", "--out", tmp_path / "other") == 0
    assert (tmp_path / "other" / "predictions.csv").is_file()


def test_a_checkpoint_of_another_run_says_the_tasks_differ(config, tmp_path, capsys):
    """An image-folder config with a checkpoint trained on other tasks: before, "No tasks declared"."""
    out = tmp_path / "run"
    assert run("train", config, "--out", out, "--quiet", "--set", "trainer.epochs=1") == 0
    write_clothes(tmp_path / "clothes", ["black_jeans", "red_shirt"], 2, np.random.default_rng(0))
    (tmp_path / "clothes.yaml").write_text(
        "data:\n  train: {source: folder, path: clothes, separator: _, tasks: [color, item], image_size: 16}\n"
        "  test: {source: folder, path: clothes, separator: _, tasks: [color, item], image_size: 16}\n"
    )
    capsys.readouterr()
    assert run("evaluate", tmp_path / "clothes.yaml", out / "best.pt") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tasks differ" in err
    assert "size (regression), kind (multiclass)" in err and "[color, item]" in err
