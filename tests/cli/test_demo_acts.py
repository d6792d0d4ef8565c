"""The demo's second act: scarce labels for ``right`` (masked, not removed), its one-sentence answers, and
the README table generated from benchmarks/results/demo_seeds.json."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hydranet.cli.demo import headline
from hydranet.data import builtin, collate
from hydranet.data.sampler import TaskBatchSampler
from hydranet.train.loaders import TaskView

ROOT = Path(__file__).resolve().parents[2]


def _demo_seeds():
    spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "benchmarks" / "demo_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mask_labels_keeps_the_share_and_the_values_and_leaves_other_tasks_whole():
    arrays = builtin.multi_mnist_arrays(1000, split="train", seed=3)
    masked = builtin.mask_labels(arrays, {"right": 0.02}, split="train", seed=3)
    kept = masked["right"] != -1
    assert kept.sum() == 20  # round(0.02 * 1000)
    assert np.array_equal(masked["right"][kept], arrays["right"][kept])
    assert np.array_equal(masked["left"], arrays["left"]) and np.array_equal(masked["left_is_zero"], arrays["left_is_zero"])
    assert not np.shares_memory(masked["right"], arrays["right"]) and (arrays["right"] != -1).all()
    again = builtin.mask_labels(arrays, {"right": 0.02}, split="train", seed=3)
    assert np.array_equal(again["right"], masked["right"])  # a function of (seed, split, task)
    other = builtin.mask_labels(arrays, {"right": 0.02}, split="train", seed=4)
    assert not np.array_equal(other["right"] != -1, kept)
    assert (builtin.mask_labels(arrays, {"right": 1e-9})["right"] != -1).sum() == 1  # at least one label


@pytest.mark.parametrize(
    ("shares", "match"),
    [({"rihgt": 0.1}, "unknown task 'rihgt'"), ({"right": 0.0}, r"in \(0, 1\]"), ({"right": 1.5}, r"in \(0, 1\]"), ({"right": True}, "share")],
)
def test_mask_labels_refuses_bad_shares(shares, match):
    arrays = builtin.multi_mnist_arrays(10)
    with pytest.raises(ValueError, match=match):
        builtin.mask_labels(arrays, shares)


def test_scarce_task_trains_only_on_its_labelled_pairs_in_the_mtl_and_the_baseline_loader():
    ds = builtin.load("multi_mnist", split="train", seed=0, n=500, labelled={"right": 0.04})
    labelled = set(ds.task_indices("right").tolist())
    assert len(ds) == 500 and len(labelled) == 20 and len(ds.task_indices("left")) == 500
    sampler = TaskBatchSampler(ds, batch_size=16, quotas={"left": 6, "right": 6, "left_is_zero": 4}, length=8, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    for batch in loader:
        # right's quota, plus the pairs drawn for the other tasks that happen to be labelled for right
        right_rows = batch.indices[batch.masks["right"]].numpy()
        assert len(right_rows) >= 6 and set(right_rows.tolist()) <= labelled
        assert int(batch.masks["left"].sum()) == 16  # every pair, labelled for right or not, trains left
    baseline = list(TaskView(loader, "right"))
    assert len(baseline) == 8 and all(set(b.targets) == {"right"} and len(b.targets["right"]) >= 6 for b in baseline)
    truth = torch.from_numpy(builtin.multi_mnist_arrays(500, split="train", seed=0)["right"])
    seen = torch.cat([b.targets["right"] for b in baseline])
    assert bool((seen >= 0).all()) and set(seen.tolist()) <= set(truth[sorted(labelled)].tolist())


def _metrics(mtl_right, single_right, dm):
    return {
        "main_metrics": {"left": {"name": "accuracy"}, "right": {"name": "accuracy"}, "left_is_zero": {"name": "f1"}},
        "tasks": {"left": {"accuracy": 0.95}, "right": {"accuracy": mtl_right}, "left_is_zero": {"f1": 0.97}},
        "baselines": {"left": {"accuracy": 0.96}, "right": {"accuracy": single_right}, "left_is_zero": {"f1": 0.96}},
        "relative_change": {
            "left": {"accuracy": 100 * (0.95 - 0.96) / 0.96},
            "right": {"accuracy": 100 * (mtl_right - single_right) / single_right},
            "left_is_zero": {"f1": 100 * (0.97 - 0.96) / 0.96},
        },
        "delta_m": dm,
    }


def test_headline_states_the_answer_from_the_numbers():
    scarce = headline(_metrics(0.81, 0.62, 10.1), 0.02, 400)
    # (0.81 - 0.62) / 0.62 = +30.6%
    assert scarce == "right, labelled on 2% of pairs, 400 pairs: MTL 0.810 vs single-task 0.620 accuracy (+30.6%); Δm over the three tasks +10.10%."
    full = headline(_metrics(0.94, 0.95, -0.46))
    assert full.startswith("Every label known: one shared backbone for three tasks matches three single-task models, Δm = -0.46%")
    assert "left -1.0%" in full and "right -1.1%" in full and "left_is_zero +1.0%" in full
    assert "trails" in headline(_metrics(0.80, 0.95, -5.0)) and "beats" in headline(_metrics(0.99, 0.95, 2.0))
    assert "no answer" in headline({"baselines": None})


def test_readme_table_is_generated_from_demo_seeds_json():
    module = _demo_seeds()
    if not module.RESULTS.is_file():
        pytest.skip("benchmarks/results/demo_seeds.json not written yet (python benchmarks/demo_seeds.py)")
    results = module.load_results()
    readme = (ROOT / "README.md").read_text()
    block = readme.split(module.BEGIN, 1)[1].split(module.END, 1)[0]
    assert block == "\n" + module.acts_table(results)
    for act in ("full", "scarce"):
        assert len(results["acts"][act]["runs"]) == 3  # three seeds per act
