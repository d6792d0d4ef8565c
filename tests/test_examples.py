"""Each script of examples/ end to end, with smaller settings than its defaults."""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested():
    scripts = sorted(p.stem for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    assert len(scripts) == 7 and all(f"test_{stem}" in globals() for stem in scripts)


def test_01_two_datasets(one_thread, capsys):
    out = load("01_two_datasets").main(epochs=10)
    alternating = [next(iter(c)) for c in out["alternating"]]
    assert all(len(c) == 1 and sum(c.values()) == 8 for c in out["alternating"][:-1])  # one task per batch
    assert alternating[:6] == ["ones", "fives"] * 3
    assert all(c == {"ones": 2, "fives": 6} for c in out["mixed"])
    for accuracy in out["accuracy"].values():
        assert accuracy == {"ones": 1.0, "fives": 1.0}
    assert "2 ones + 6 fives" in capsys.readouterr().out


def test_01_runs_as_a_script():
    done = subprocess.run([sys.executable, str(EXAMPLES / "01_two_datasets.py"), "--epochs", "2"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert "mixed batches, quotas ones:fives = 2:6" in done.stdout and "alternating" in done.stdout


def test_02_imbalanced(one_thread):
    out = load("02_imbalanced").main(epochs=25)
    random, balanced = out["random"], out["balanced"]
    assert random["negative_share"].mean() == pytest.approx(5 / 55, abs=0.03)
    assert 0.4 < balanced["negative_share"].mean() < 0.6 and np.all(balanced["negative_share"] > 0)
    assert balanced["recall"][0] > random["recall"][0] + 0.1  # the minority class is found more often
    assert balanced["recall"][1] > 0.5


def test_03_faces(one_thread):
    faces = load("03_faces")
    out = faces.main(n=600, epochs=10, seeds=(0,))
    assert sorted(out["skipped"]) == sorted(faces.MALFORMED)
    assert list(out["runs"]) == list(faces.METHODS)
    base = out["baseline"]
    assert 19 < base["age"] < 25  # ages uniform in 1-90: the median is about 22 years off
    for method, (run,) in out["runs"].items():
        assert run.scores["age"] < 0.75 * base["age"], method
        assert run.scores["gender"] > base["gender"] + 0.3, method
        assert run.scores["race"] > base["race"] + 0.25, method
    assert out["runs"]["uw"][0].weights["age"] < 0.5  # UW weighs the loss in years down
    assert out["conclusion"].startswith("one seed only")
    again = faces.main(n=600, epochs=10, seeds=(0,), methods=("uw",))
    assert again["runs"]["uw"] == out["runs"]["uw"]  # same data, same seed: the same scores and weights


def test_03_faces_conclusion_names_only_differences_beyond_the_seed_spread():
    faces = load("03_faces")

    def runs(*rows):
        return [faces.Run(dict(zip(("age", "gender", "race"), row)), {}) for row in rows]

    text = faces.conclusion({"ew": runs((5.0, 0.90, 0.90), (5.2, 0.92, 0.92)),
                             "uw": runs((5.1, 0.91, 0.98), (5.3, 0.93, 0.99)),
                             "db_mtl": runs((8.0, 0.91, 0.91), (8.2, 0.93, 0.92))})
    assert "uw: race better (0.91 -> 0.985)" in text and "db_mtl: age worse (5.1 -> 8.1)" in text
    assert "age" not in text.split("uw:")[1].split(";")[0]  # 0.1 years apart, within the spread
    assert faces.conclusion({"ew": runs((5.0, 0.9, 0.9))}) == "one method only: nothing to compare"


def test_04_clothes(one_thread):
    out = load("04_clothes").main(per_folder=40, epochs=10)
    assert out["vocabularies"] == {"color": ["black", "blue", "red"], "item": ["dress", "jeans", "shirt", "shoes"]}
    assert out["test_tasks"] == out["train_tasks"]  # the test folder lacks blue_shirt, yet has the same indices
    assert out["accuracy"]["color"] > 0.9 and out["accuracy"]["item"] > 0.8
    assert set(out["predicted"]["item"]) <= {"dress", "jeans", "shirt", "shoes"}
    assert out["both"] == pytest.approx(np.mean([
        (pc, pi) == (tc, ti)
        for pc, pi, tc, ti in zip(out["predicted"]["color"], out["predicted"]["item"], out["truth"]["color"],
                                  out["truth"]["item"])
    ]))


def test_05_boxes(one_thread):
    out = load("05_boxes").main(n=300, epochs=8)
    assert out["batch_boxes"][0] == (0, 4) and all(shape[1] == 4 for shape in out["batch_boxes"])
    assert out["label_accuracy"] > 0.8
    assert out["count_accuracy"] > 0.5 and out["mean_iou"] > 0.2


def test_05_slot_loss_matches_the_right_slots():
    import torch

    loss = load("05_boxes").SlotSetLoss(2)
    target = torch.tensor([[0.1, 0.1, 0.3, 0.4]])
    logit = 20.0
    inside = torch.logit(target[0])
    good = torch.cat([torch.tensor([-logit, 0, 0, 0, 0]), torch.cat([torch.tensor([logit]), inside])])
    swapped = torch.cat([torch.cat([torch.tensor([logit]), inside]), torch.tensor([-logit, 0, 0, 0, 0])])
    assert float(loss(good[None], [target])) < 1e-6 and float(loss(swapped[None], [target])) < 1e-6
    assert float(loss(torch.zeros(1, 10), [target])) > 0.5
    assert float(loss(torch.full((1, 10), -logit), [torch.zeros(0, 4)])) < 1e-6  # no box, no slot claims one


def test_06_digits_fashion(one_thread):
    out = load("06_digits_fashion").main(n_digits=600, per_item=60, epochs=3)
    assert out["batches_per_task"]["digit"] == out["batches_per_task"]["fashion"]  # round robin
    assert out["accuracy"]["digit"] > 0.5 and out["accuracy"]["fashion"] > 0.6


def test_07_diamonds(one_thread):
    out = load("07_diamonds").main(epochs=10, rows=8000)
    assert out["rows"] == 8000
    baseline = out["baseline"]
    for name, result in out["results"].items():
        assert result["price_mae"] < baseline["price_mae"] / 2, name
        assert result["cut"] > baseline["cut"] + 0.15, name
