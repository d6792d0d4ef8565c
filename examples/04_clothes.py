"""Clothes in folders named ``color_item``: two heads, predictions mapped back to class names (article 004).

The article's data set has 7 folders (``black_jeans``, ``black_shoes``, ``blue_dress``,
``blue_jeans``, ``blue_shirt``, ``red_dress``, ``red_shirt``) and splits each path by hand with
``img_path.split("\\\\")[-2].split("_")``, which only works on Windows. Here
:func:`hydranet.data.readers.read_folders` reads ``train/`` and builds the class vocabularies; the
trained model's checkpoint holds them (each task's ``class_names``), and the test folder, which lacks
a combination, is read with the checkpoint's tasks so that its class indices are the training ones.
The predictions are then decoded back to names.

The images are drawn on the fly so the script runs offline: an item's silhouette (jeans, shoes,
dress, shirt) in its colour, with jitter in size, position and shade, and noise.

Run: ``python examples/04_clothes.py``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

import hydranet as hn
from hydranet.data import readers
from hydranet.models import ConvNet, HydraNet

FOLDERS = ["black_jeans", "black_shoes", "blue_dress", "blue_jeans", "blue_shirt", "red_dress", "red_shirt"]
COLORS = {"black": (25, 25, 30), "blue": (40, 70, 190), "red": (190, 35, 40)}
SHAPES = {  # polygons in a unit square, (x, y) with y down
    "jeans": [(0.3, 0.1), (0.7, 0.1), (0.75, 0.9), (0.55, 0.9), (0.5, 0.4), (0.45, 0.9), (0.25, 0.9)],
    "shoes": [(0.15, 0.55), (0.45, 0.55), (0.5, 0.7), (0.85, 0.75), (0.85, 0.85), (0.15, 0.85)],
    "dress": [(0.42, 0.1), (0.58, 0.1), (0.6, 0.35), (0.8, 0.9), (0.2, 0.9), (0.4, 0.35)],
    "shirt": [(0.35, 0.15), (0.65, 0.15), (0.9, 0.35), (0.8, 0.45), (0.7, 0.4), (0.7, 0.85), (0.3, 0.85),
              (0.3, 0.4), (0.2, 0.45), (0.1, 0.35)],
}


def draw_item(color: str, item: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """The item's silhouette in its colour (shade jittered) on a light background, with noise."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 250, 3)))
    scale, dx, dy = size * rng.uniform(0.8, 1.0), rng.uniform(0, 0.15) * size, rng.uniform(0, 0.15) * size
    fill = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLORS[color])
    ImageDraw.Draw(image).polygon([(dx + x * scale, dy + y * scale) for x, y in SHAPES[item]], fill=fill)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_clothes(root: Path, folders: list[str], per_folder: int, seed: int) -> Path:
    """``root/<color_item>/<k>.jpg``: the article's layout."""
    rng = np.random.default_rng(seed)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        color, item = folder.split("_")
        for k in range(per_folder):
            draw_item(color, item, rng).save(root / folder / f"{k:04d}.jpg", quality=95)
    return root


def main(per_folder: int = 60, epochs: int = 6, seed: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "clothes", Path(tmp) / "run"
        write_clothes(data / "train", FOLDERS, per_folder, seed)
        write_clothes(data / "test", [f for f in FOLDERS if f != "blue_shirt"], per_folder // 3, seed + 1)

        train = readers.read_folders(data / "train", separator="_", tasks=["color", "item"], image_size=32)
        print(f"train: {len(train)} images; vocabularies: {train.vocabularies}")

        torch.manual_seed(seed)
        model = HydraNet(ConvNet(3, widths=(16, 32, 64)), train.tasks)
        sampler = hn.data.TaskBatchSampler(train, batch_size=32, seed=seed)
        trainer = hn.Trainer(model, lr=3e-3, progress=False, seed=seed, out_dir=run, checkpoint="last",
                             tensorboard=False)
        trainer.fit(DataLoader(train, batch_sampler=sampler, collate_fn=hn.data.collate), epochs=epochs)

        # The checkpoint carries the tasks with their class names: the test split's indices follow them.
        saved = hn.train.load_checkpoint(run / "last.pt")["tasks"]
        tasks = {name: hn.Task.from_dict(spec) for name, spec in saved.items()}
        test = readers.read_folders(data / "test", separator="_", tasks=tasks, image_size=32)
        loader = DataLoader(test, batch_size=128, collate_fn=hn.data.collate)
        scores = trainer.evaluate(loader)
        probabilities = trainer.predict(loader)

    predicted = {t: [tasks[t].class_names[k] for k in p.argmax(1).tolist()] for t, p in probabilities.items()}
    truth = {t: [tasks[t].class_names[k] for k in test.labels(t)] for t in tasks}
    both = float(np.mean([pc == tc and pi == ti for pc, pi, tc, ti in
                          zip(predicted["color"], predicted["item"], truth["color"], truth["item"])]))
    print(f"test: {len(test)} images (no blue_shirt folder), same indices: {test.tasks == train.tasks}\n")
    print(f"{'image':<22} {'predicted':<12} {'true':<12}")
    for k in np.linspace(0, len(test) - 1, 6).astype(int):
        name = "/".join(Path(test.paths[k]).parts[-2:])
        print(f"{name:<22} {predicted['color'][k] + ' ' + predicted['item'][k]:<12} "
              f"{truth['color'][k] + ' ' + truth['item'][k]:<12}")
    print(f"\n{'task':<8} {'test accuracy':>13}")
    for task in tasks:
        print(f"{task:<8} {scores[task]['accuracy']:>13.3f}")
    print(f"{'both':<8} {both:>13.3f}")
    return {"vocabularies": train.vocabularies, "test_tasks": test.tasks, "train_tasks": train.tasks,
            "accuracy": {t: scores[t]["accuracy"] for t in tasks}, "both": both, "predicted": predicted,
            "truth": truth}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-folder", type=int, default=60, help="training images per folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(per_folder=args.per_folder, epochs=args.epochs, seed=args.seed)
