"""Faces with labels in their file names: age, gender and race heads under several loss balancers (article 002).

UTKFace names each image ``age_gender_race_date.jpg.chip.jpg``. The article parses them with
``path[8:].split("_")``, which depends on the folder name's length and silently drops or mislabels
the few malformed names the real data set has. Here :func:`hydranet.data.readers.read_filenames`
matches a pattern, and every file that does not fit is reported in a warning and in
``dataset.skipped``.

The three losses live on different scales: the age loss is an L1 error in years (about 22 for a
model that predicts the median age, a few years once trained) while the two cross-entropies start
below 2 and fall towards 0. Summed (equal weighting, the article's ``L = L1 + L2 + L3``), the age
term dominates the gradient of the shared backbone and race, the hardest class task, lags behind. The script trains the same HydraNet with equal weighting (``ew``),
uncertainty weighting (``uw``, Kendall et al. 2018: one learned weight per task), IMTL-L (learned
weights that bring every scaled loss to 1) and DB-MTL (each task's gradient of ``log L``, rescaled to
a common norm), over several seeds, and prints each task's validation score as mean ± std, the task
weights each method ended with (for DB-MTL: its gradient rescaling factors) and a conclusion drawn
from those numbers: a difference counts only when it exceeds twice the spread over seeds.

The training setup is chosen so that the seeds agree and the comparison means something:

* every head's bias starts at its best constant prediction (``hn.models.init_output_bias``: the
  age head at the median training age, the class heads at the log class frequencies). Adam moves a parameter by about ``lr`` per
  step, so a head starting at 0 spends most of a short budget climbing towards ages near 45, and how
  far it gets depends on the seed; starting at the median keeps the loss in years (the scale problem
  the balancers are meant to handle) and removes that source of noise;
* ``lr=1e-2`` with a cosine schedule: a large step early for the short budget, small steps at the
  end so that the last epoch does not land on a random point of a noisy trajectory.

Methods that weight a task by the inverse of its loss with no gradient normalisation (``gls``,
``famo``) are left out: once gender is solved its loss is near 0 and, by their definition, it takes
almost all the weight (``--methods gls famo``: gender weight ~1000 resp. a 0.99 share, age ~0), so
age is starved and its MAE stays near the median baseline.

The images are drawn on the fly so the script runs offline: a face whose size grows with age, whose
colour is the race, with long or short hair for the gender, plus noise and jitter.

Run: ``python examples/03_faces.py`` (about a minute on one CPU thread)
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

import hydranet as hn
from hydranet.data import readers
from hydranet.models import ConvNet, HydraNet, init_output_bias

SKIN = [(235, 205, 180), (120, 75, 50), (215, 175, 120), (165, 110, 75), (200, 150, 150)]  # race 0-4
#: Names that the real UTKFace holds in this form: no race field, and a race outside 0-4.
MALFORMED = ["39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109150557335.jpg.chip.jpg",
             "50_0_7_20170109142408075.jpg.chip.jpg"]
METHODS = ("ew", "uw", "imtl_l", "db_mtl")
SEEDS = (0, 1, 2)
#: The score reported per task and whether a higher value is better.
SCORES = {"age": ("mae", False), "gender": ("accuracy", True), "race": ("accuracy", True)}
IMAGE_SIZE = 24  # the reader resizes the 32-pixel files: about half the compute per step


class Run(NamedTuple):
    """One training run: ``{task: score}`` on the validation set and the task weights of the last epoch."""

    scores: dict[str, float]
    weights: dict[str, float]


def draw_face(age: int, gender: int, race: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A face of radius 5 (age 1) to 13 (age 90) pixels, skin colour by race, long hair for gender 1."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(40, 90, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    r = 5 + 8 * (age - 1) / 89
    if gender == 1:
        draw.rectangle([cx - r - 2, cy - r, cx + r + 2, cy + r + 3], fill=(30, 20, 10))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=SKIN[race])
    draw.chord([cx - r, cy - r - 1, cx + r, cy + r], 180, 360, fill=(30, 20, 10))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_faces(root: Path, n: int, seed: int) -> Path:
    """``n`` faces named ``age_gender_race_date.jpg.chip.jpg`` in ``root``, plus the malformed names."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        age, gender, race = int(rng.integers(1, 91)), int(rng.integers(0, 2)), int(rng.integers(0, 5))
        date = 20170101000000000 + k
        draw_face(age, gender, race, rng).save(root / f"{age}_{gender}_{race}_{date}.jpg.chip.jpg", quality=95)
    for name in MALFORMED:
        draw_face(30, 0, 0, rng).save(root / name)
    return root


def build_model(train: readers.ReaderDataset) -> HydraNet:
    """A small ConvNet with one linear head per task, each starting at its best constant prediction
    (the age head at the median training age; see :func:`hydranet.models.init_output_bias`)."""
    model = HydraNet(ConvNet(3, widths=(16, 32)), train.tasks)
    init_output_bias(model, train)
    return model


def fit(train: readers.ReaderDataset, decoded: Sequence[Any], val: readers.ReaderDataset, balancer: str,
        epochs: int, seed: int) -> Run:
    """Train a fresh model with ``balancer`` (the seed fixes the initial weights and the batch order).

    ``decoded`` holds the items of ``train`` read once: decoding the JPEG files every epoch would take
    longer than the training steps of this small model. The sampler reads the labels from ``train``.
    """
    torch.manual_seed(seed)
    model = build_model(train)
    loader = DataLoader(decoded, batch_sampler=hn.data.TaskBatchSampler(train, batch_size=32, seed=seed),
                        collate_fn=hn.data.collate)
    trainer = hn.Trainer(model, balancer=balancer, lr=1e-2, scheduler="cosine", progress=False, seed=seed)
    history = trainer.fit(loader, epochs=epochs)
    scores = trainer.evaluate(DataLoader(val, batch_size=256, collate_fn=hn.data.collate))
    return Run({task: float(scores[task][metric]) for task, (metric, _) in SCORES.items()}, history.epochs[-1].weights)


def baseline(train: readers.ReaderDataset, val: readers.ReaderDataset) -> dict[str, float]:
    """What a model without the images scores: the median training age, the majority class."""
    def majority(task: str) -> float:
        return float(np.mean(val.labels(task) == np.bincount(train.labels(task)).argmax()))

    age = float(np.abs(val.labels("age") - np.median(train.labels("age"))).mean())
    return {"age": age, "gender": majority("gender"), "race": majority("race")}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``: a few seeds underestimate the spread otherwise)."""
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)


def conclusion(runs: dict[str, list[Run]]) -> str:
    """The other methods against the first one, naming only the differences larger than twice the seed
    spread (the larger of the two sample standard deviations)."""
    reference, *others = runs
    if not others:
        return "one method only: nothing to compare"
    if min(len(results) for results in runs.values()) < 2:
        return "one seed only: no spread to judge the differences by (use two seeds or more)"

    def stats(method: str, task: str) -> tuple[float, float]:
        return mean_std([run.scores[task] for run in runs[method]])

    parts = []
    for method in others:
        changes = []
        for task, (_, higher) in SCORES.items():
            (mean, std), (ref_mean, ref_std) = stats(method, task), stats(reference, task)
            delta = mean - ref_mean
            if abs(delta) > 2 * max(std, ref_std):
                better = (delta > 0) == higher
                changes.append(f"{task} {'better' if better else 'worse'} ({ref_mean:.3g} -> {mean:.3g})")
        parts.append(f"{method}: " + (", ".join(changes) if changes else "no clear difference"))
    return f"against {reference}, beyond twice the seed spread: " + "; ".join(parts)


def main(n: int = 1000, epochs: int = 12, seeds: Sequence[int] = SEEDS, methods: Sequence[str] = METHODS,
         data_seed: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_faces(Path(tmp) / "UTKFace", n, data_seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", readers.ReaderWarning)
            faces = readers.read_filenames(root, readers.UTKFACE_PATTERN, tasks=readers.UTKFACE_TASKS,
                                           image_size=IMAGE_SIZE)
        print(str(caught[0].message) if caught else "no file skipped")
        train, val = faces.split([0.8, 0.2], seed=data_seed)
        print(f"\n{len(faces)} faces read: {len(train)} train, {len(val)} validation; tasks: "
              + ", ".join(f"{t.name} ({t.kind})" for t in faces.tasks.values())
              + f"\n{epochs} epochs per run, mean ± std over seeds {', '.join(map(str, seeds))}\n")
        decoded = [train[i] for i in range(len(train))]
        runs = {method: [fit(train, decoded, val, method, epochs, seed) for seed in seeds] for method in methods}
    base = baseline(train, val)
    print(f"{'balancer':<10} {'age MAE':>13} {'gender acc':>15} {'race acc':>15}   final task weights (mean)")
    for method, results in runs.items():
        cells = []
        for task in SCORES:
            mean, std = mean_std([run.scores[task] for run in results])
            digits = 2 if task == "age" else 3
            cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        weights = {t: np.mean([run.weights[t] for run in results]) for t in SCORES}
        fixed = all(run.weights[t] == 1.0 for run in results for t in SCORES)
        shown = "1 (fixed)" if fixed else "  ".join(f"{t}={w:.2f}" for t, w in weights.items())
        print(f"{method:<10} {cells[0]:>13} {cells[1]:>15} {cells[2]:>15}   {shown}")
    print(f"{'no image':<10} {base['age']:>13.2f} {base['gender']:>15.3f} {base['race']:>15.3f}   "
          "median age, majority class")
    summary = conclusion(runs)
    print(f"\n{summary}")
    return {"skipped": [Path(s.path).name for s in faces.skipped], "runs": runs, "baseline": base,
            "conclusion": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of faces to draw")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="balancer names (hydranet.balancing)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(n=args.n, epochs=args.epochs, seeds=args.seeds, methods=args.methods)
