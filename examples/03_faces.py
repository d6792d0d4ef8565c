"""Faces with labels in their file names: age, gender and race heads, equal vs uncertainty weighting (article 002).

UTKFace names each image ``age_gender_race_date.jpg.chip.jpg``. The article parses them with
``path[8:].split("_")``, which depends on the folder name's length and silently drops or mislabels
the few malformed names the real data set has. Here :func:`hydranet.data.readers.read_filenames`
matches a pattern, and every file that does not fit is reported in a warning and in
``dataset.skipped``.

The three losses have different scales: the age loss (L1, in years) starts near 20 while the
cross-entropies start near 1, so summing them (equal weighting, the article's ``L = L1 + L2 + L3``)
lets age dominate the shared backbone. Uncertainty weighting (Kendall et al., CVPR 2018) learns one
weight per task. Both are trained with the same budget; the table shows each task's validation score
and the weights UW ended with. Which one wins depends on the data and the budget: UW weighs age down
as expected, but it also weighs up whichever task it finds easiest (gender here), which can starve
another one; the table is there to show it, not to crown a method.

The images are drawn on the fly so the script runs offline: a face whose size grows with age, whose
colour is the race, with long or short hair for the gender, plus noise and jitter.

Run: ``python examples/03_faces.py``
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

import hydranet as hn
from hydranet.data import readers
from hydranet.models import ConvNet, HydraNet

SKIN = [(235, 205, 180), (120, 75, 50), (215, 175, 120), (165, 110, 75), (200, 150, 150)]  # race 0-4
#: Names that the real UTKFace holds in this form: no race field, and a race outside 0-4.
MALFORMED = ["39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109150557335.jpg.chip.jpg",
             "50_0_7_20170109142408075.jpg.chip.jpg"]


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


def fit(train: readers.ReaderDataset, val: readers.ReaderDataset, balancer: str, epochs: int, seed: int
        ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Validation scores and the final task weights of a HydraNet trained with ``balancer``."""
    torch.manual_seed(seed)
    model = HydraNet(ConvNet(3, widths=(16, 32)), train.tasks)
    loader = DataLoader(train, batch_sampler=hn.data.TaskBatchSampler(train, batch_size=32, seed=seed),
                        collate_fn=hn.data.collate)
    val_loader = DataLoader(val, batch_size=128, collate_fn=hn.data.collate)
    trainer = hn.Trainer(model, balancer=balancer, lr=1e-2, progress=False, seed=seed)
    history = trainer.fit(loader, val_loader, epochs=epochs)
    return trainer.evaluate(val_loader), history.epochs[-1].weights


def main(n: int = 1000, epochs: int = 12, seed: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_faces(Path(tmp) / "UTKFace", n, seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", readers.ReaderWarning)
            faces = readers.read_filenames(root, readers.UTKFACE_PATTERN, tasks=readers.UTKFACE_TASKS, image_size=32)
        print(str(caught[0].message) if caught else "no file skipped")
        train, val = faces.split([0.8, 0.2], seed=seed)
        print(f"\n{len(faces)} faces read: {len(train)} train, {len(val)} validation; tasks: "
              + ", ".join(f"{t.name} ({t.kind})" for t in faces.tasks.values()) + "\n")
        results = {name: fit(train, val, name, epochs, seed) for name in ("ew", "uw")}
    chance = {"gender": float(np.bincount(val.labels("gender")).max() / len(val)),
              "race": float(np.bincount(val.labels("race")).max() / len(val))}
    print(f"{'balancer':<10} {'age MAE':>8} {'gender acc':>11} {'race acc':>9}   task weights at the end")
    for name, (scores, weights) in results.items():
        shown = "  ".join(f"{t}={w:.2f}" for t, w in weights.items())
        print(f"{name:<10} {scores['age']['mae']:>8.2f} {scores['gender']['accuracy']:>11.3f} "
              f"{scores['race']['accuracy']:>9.3f}   {shown}")
    print(f"{'majority':<10} {np.abs(val.labels('age') - np.median(train.labels('age'))).mean():>8.2f} "
          f"{chance['gender']:>11.3f} {chance['race']:>9.3f}")
    return {"skipped": [Path(s.path).name for s in faces.skipped], "scores": {k: v[0] for k, v in results.items()},
            "chance": chance}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of faces to draw")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(n=args.n, epochs=args.epochs, seed=args.seed)
