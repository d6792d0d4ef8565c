"""``data.split`` (one source cut into train / val / test), ``model.init_output_bias`` and the UTKFace
config end to end."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hydranet.cli import main
from hydranet.cli.commands import _init_output_bias, build_model
from hydranet.cli.config import load_config
from hydranet.cli.sources import build_split, build_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def npz_config(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=(n, 4)).astype(np.float32)
    kind = np.where(np.arange(n) < 40, 1, 0)  # 20 % positives: a stratified split keeps the share
    np.savez(tmp_path / "all.npz", x=x, age=(40 + 10 * x[:, 0]).astype(np.float32), kind=kind, row=np.arange(n))
    path = tmp_path / "c.yaml"
    path.write_text(
        "tasks: {age: {kind: regression}, kind: {kind: binary}}\n"
        "data:\n  train: {source: npz, path: all.npz, inputs: x, labels: [age, kind]}\n"
        "  split: {val: 0.1, test: 0.2, seed: 0}\n"
        "model: {backbone: {name: mlp, hidden: [8]}, init_output_bias: true}\n"
        "trainer: {epochs: 1, progress: false}\n"
    )
    return path


def _rows(dataset):
    return {tuple(np.round(dataset[i][0].numpy(), 6)) for i in range(len(dataset))}


def test_split_of_arrays_is_disjoint_sized_and_stratified(npz_config):
    cfg = load_config(npz_config)
    train = build_split(cfg, "train")
    tasks = build_tasks(cfg, train.tasks)
    val, test = build_split(cfg, "val", tasks), build_split(cfg, "test", tasks)
    assert (len(train), len(val), len(test)) == (140, 20, 40)  # rint(200 * F_p) differences
    parts = [_rows(d) for d in (train, val, test)]
    assert len(parts[0] | parts[1] | parts[2]) == 200 and not (parts[0] & parts[1] or parts[0] & parts[2])
    for part, size in ((train, 140), (val, 20), (test, 40)):  # 20 % positives in every part (stratified)
        assert int(part.labels("kind").sum()) == size // 5
    again = load_config(npz_config)  # the same seed gives the same parts (evaluate reads them again)
    assert _rows(build_split(again, "test", tasks)) == parts[2]


def test_split_of_one_dataset_per_task(tmp_path):
    config = (ROOT / "examples" / "configs" / "article000.yaml").read_text()
    config = config[: config.index("  val:")] + config[config.index("sampler:") :]  # its own val section out
    (tmp_path / "a.yaml").write_text(config.replace("sampler:", "  split: {val: 0.2}\nsampler:", 1))
    cfg = load_config(tmp_path / "a.yaml")
    train, val = build_split(cfg, "train"), build_split(cfg, "val")
    assert {t: len(train.task_indices(t)) for t in ("ones", "fives")} == {"ones": 8, "fives": 44}
    assert {t: len(val.task_indices(t)) for t in ("ones", "fives")} == {"ones": 2, "fives": 11}
    assert build_split(cfg, "test") is None


def test_init_output_bias_starts_from_the_training_labels(npz_config):
    cfg = load_config(npz_config)
    train = build_split(cfg, "train")
    tasks = build_tasks(cfg, train.tasks)
    model = build_model(cfg, tasks, train[0][0].unsqueeze(0))
    _init_output_bias(cfg, model, train, tasks)
    from hydranet.models.init import _MEDIAN_LOSSES

    ages = train.labels("age").astype(np.float64)
    centre = np.median if tasks["age"].loss in _MEDIAN_LOSSES else np.mean  # the loss's best constant
    positives = train.labels("kind").sum()
    rate = (positives + 1) / (len(train) + 2)  # the smoothed prior of hydranet.models.init (Laplace)
    assert model.heads["age"].bias.item() == pytest.approx(centre(ages), rel=1e-5)
    assert model.heads["kind"].bias.item() == pytest.approx(np.log(rate / (1 - rate)), rel=1e-5)


def test_train_with_a_split_scores_the_test_part(npz_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(npz_config), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and set(report["tasks"]) == {"age", "kind"}
    # the age head starts at the mean age: after one epoch its error is far below the 40 years of a zero start
    assert report["tasks"]["age"]["mae"] < 15


def write_faces(folder: Path, n: int, rng: np.random.Generator) -> None:
    """UTKFace-style names ``age_gender_race_date.jpg`` in part1/ and part2/: brightness follows age,
    a block's side the gender, the colour the race."""
    colours = np.array([[230, 200, 180], [90, 60, 40], [220, 190, 120], [150, 100, 70], [120, 160, 200]])
    for k in range(n):
        age, gender, race = int(rng.integers(1, 90)), k % 2, k % 5
        pixels = np.full((16, 16, 3), 40 + 2.0 * age)
        pixels[4:12, (0 if gender else 8) : (8 if gender else 16)] = colours[race]
        pixels += rng.normal(0, 4, pixels.shape)
        part = folder / f"part{1 + k % 2}"
        part.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(part / f"{age}_{gender}_{race}_2017011{k:04d}.jpg", quality=95)
    (folder / "part1" / "broken_name.jpg").write_bytes(b"not an image")  # left out (no match), reported


@pytest.mark.slow
def test_utkface_config_end_to_end(tmp_path, capsys):
    """examples/configs/utkface.yaml on a generated folder: split, validation, report with scores and plots."""
    write_faces(tmp_path / "faces", 120, np.random.default_rng(0))
    config = tmp_path / "utkface.yaml"
    shutil.copy(ROOT / "examples" / "configs" / "utkface.yaml", config)
    out = tmp_path / "run"
    overrides = [
        "data.train.path=faces",
        "data.train.image_size=[16, 16]",
        "model.backbone.widths=[8, 16]",
        "sampler.batch_size=16",
        "trainer.epochs=3",
        "trainer.lr=1e-2",
    ]
    args = ["train", str(config), "--out", str(out), "--quiet"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and set(report["tasks"]) == {"age", "gender", "race"}
    assert 0 <= report["tasks"]["race"]["accuracy"] <= 1 and report["tasks"]["age"]["mae"] < 45
    for name in ("summary.md", "loss.png", "metrics.png", "confusion_race.png", "best.pt"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert all("val" in str(entry) for entry in history["epochs"])  # validated every epoch (the val part)
    capsys.readouterr()
    predict = ["predict", str(config), str(out / "best.pt")] + [a for o in overrides for a in ("--set", o)]
    assert main(predict) == 0
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 12  # the test part: 10 % of 120 images
    assert torch.load(out / "best.pt", weights_only=True)["tasks"]["race"]["class_names"][0] == "white"


def test_hf_source_with_a_split(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=60), rng.normal(size=60)
    datasets.Dataset.from_dict({"a": a, "b": b, "label": np.where(a > 0, "up", "down").tolist()}).save_to_disk(
        str(tmp_path / "table")
    )
    (tmp_path / "hf.yaml").write_text(
        "data:\n  train: {source: hf, path: table, input: [a, b], tasks: {label: multiclass}}\n"
        "  split: {val: 0.25}\nsampler: {batch_size: 8}\ntrainer: {epochs: 1, progress: false}\n"
    )
    cfg = load_config(tmp_path / "hf.yaml", overrides={"output": str(tmp_path / "run")})
    train = build_split(cfg, "train")
    val = build_split(cfg, "val", build_tasks(cfg, train.tasks))
    assert (len(train), len(val)) == (45, 15) and train.vocabularies == val.vocabularies == {"label": ["down", "up"]}
