"""Boxes plus a class per image: ragged targets, collated as lists, with a set-loss head (article 003).

Article 003's project reads detection annotations, where every image has its own number of boxes,
and needs a ``collate_fn`` that keeps them as a list instead of stacking. Here
:func:`hydranet.data.readers.read_detection` reads a JSON manifest (``{"path", "boxes", "label"}`` per
image), normalises the boxes by each image's size, and ``dataset.collate_fn`` keeps them ragged.

The boxes head is not a detector: it predicts a fixed number of box *slots*, each an objectness logit
and four coordinates, and :class:`SlotSetLoss` matches slots to the true boxes (Hungarian matching on
the L1 distance, as DETR does with its queries): matched slots learn their box and objectness 1, the
others objectness 0. It is the ``loss`` callable of a ragged task, which receives the list of the
labelled images' boxes. The image-level class (the colour of the shapes) is an ordinary head.

The images are drawn on the fly so the script runs offline: 0 to 3 rectangles or ellipses in one
colour on a noisy background; one image has no box.

Run: ``python examples/05_boxes.py``
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.utils.data import DataLoader

import hydranet as hn
from hydranet.data import readers
from hydranet.models import HydraNet

SLOTS = 3
COLORS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200)}


class SlotSetLoss:
    """Loss of ``slots`` predicted boxes against a set of true boxes: Hungarian matching, L1 + objectness.

    The head's output per image is ``[slots * 5]``: for each slot an objectness logit, then
    ``x1, y1, x2, y2`` (normalised, through a sigmoid). Per image, the slots are matched one-to-one
    to the true boxes minimising the L1 distance; the loss is the mean L1 of the matched pairs plus
    the binary cross-entropy of every slot's objectness (1 where matched, 0 elsewhere). An image
    with more boxes than slots is cut to its first ``slots`` boxes.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def split(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """``(objectness logits [n, slots], boxes [n, slots, 4] in [0, 1])`` of a head output ``[n, slots * 5]``."""
        per_slot = output.view(-1, self.slots, 5)
        return per_slot[..., 0], torch.sigmoid(per_slot[..., 1:])

    def __call__(self, output: Tensor, targets: Sequence[Tensor]) -> Tensor:
        logits, boxes = self.split(output)
        objectness = torch.zeros_like(logits)
        l1 = []
        for k, target in enumerate(targets):
            target = target.to(boxes)[: self.slots]
            if len(target):
                cost = torch.cdist(boxes[k].detach(), target, p=1).cpu().numpy()
                slot, box = linear_sum_assignment(cost)
                l1.append((boxes[k, slot] - target[box]).abs().sum(1))
                objectness[k, slot] = 1.0
        matched = torch.cat(l1).mean() if l1 else boxes.sum() * 0.0
        return matched + F.binary_cross_entropy_with_logits(logits, objectness)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a [n, 4]`` with every box of ``b [m, 4]``."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def spatial_backbone() -> nn.Sequential:
    """Three conv stages, flattened rather than pooled: where a shape is matters for its box."""
    stages: list[nn.Module] = []
    for c_in, c_out in ((3, 16), (16, 32), (32, 32)):
        stages += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*stages, nn.Flatten())


def draw_scene(n_boxes: int, color: str, rng: np.random.Generator, size: int = 48) -> tuple[Image.Image, list]:
    """An image with ``n_boxes`` shapes in one colour, each in its own third of the width, and their boxes."""
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 230, 3)))
    draw = ImageDraw.Draw(image)
    boxes = []
    for third in sorted(rng.choice(3, n_boxes, replace=False)):
        w, h = rng.integers(6, 15), rng.integers(8, 30)
        x1 = third * size // 3 + rng.integers(0, size // 3 - w + 1)
        y1 = rng.integers(0, size - h + 1)
        box = [int(x1), int(y1), int(x1 + w), int(y1 + h)]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=COLORS[color])
        boxes.append(box)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), boxes


def write_scenes(root: Path, n: int, seed: int) -> Path:
    """``root/images/<k>.png`` and ``root/annotations.json`` (pixel boxes ``x1, y1, x2, y2``, a label)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    records = []
    for k in range(n):
        color = str(rng.choice(list(COLORS)))
        image, boxes = draw_scene(0 if k == 0 else int(rng.integers(1, SLOTS + 1)), color, rng)
        image.save(root / "images" / f"{k:04d}.png")
        records.append({"path": f"images/{k:04d}.png", "boxes": boxes, "label": color})
    (root / "annotations.json").write_text(json.dumps(records))
    return root / "annotations.json"


def box_scores(loss: SlotSetLoss, outputs: Tensor, targets: Sequence[np.ndarray]) -> tuple[float, float]:
    """``(share of images with the right number of boxes, mean IoU of each true box with its match)``."""
    logits, boxes = loss.split(outputs)
    right, overlaps = [], []
    for k, target in enumerate(targets):
        found = boxes[k][logits[k] > 0].numpy()
        right.append(len(found) == len(target))
        if len(target):
            matched = np.zeros(len(target))
            if len(found):
                pairs = iou(found, target)
                rows, cols = linear_sum_assignment(-pairs)
                matched[cols] = pairs[rows, cols]
            overlaps.extend(matched)
    return float(np.mean(right)), float(np.mean(overlaps))


def main(n: int = 600, epochs: int = 15, seed: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_scenes(Path(tmp), n, seed)
        scenes = readers.read_detection(manifest, image_size=48)
        train, test = scenes.split([0.8, 0.2], seed=seed)
        batch = next(iter(DataLoader(train, batch_size=6, collate_fn=train.collate_fn)))
        print(f"{len(scenes)} images; a batch of 6 has boxes "
              + str([tuple(b.shape) for b in batch.targets["boxes"]]) + f", labels {batch.targets['label'].tolist()}\n")

        loss = SlotSetLoss(SLOTS)
        tasks = [scenes.tasks["label"], hn.Task("boxes", "regression", dim=5 * SLOTS, ragged=True, loss=loss)]
        torch.manual_seed(seed)
        model = HydraNet(spatial_backbone(), tasks, head={"label": "linear", "boxes": "mlp"}, input_shape=(3, 48, 48))
        sampler = hn.data.TaskBatchSampler(train, batch_size=32, seed=seed)
        trainer = hn.Trainer(model, lr=3e-3, progress=False, seed=seed)
        trainer.fit(DataLoader(train, batch_sampler=sampler, collate_fn=train.collate_fn), epochs=epochs)

        test_loader = DataLoader(test, batch_size=128, collate_fn=test.collate_fn)
        outputs = trainer.predict(test_loader)
        label_accuracy = trainer.evaluate(test_loader)["label"]["accuracy"]
    counted, mean_iou = box_scores(loss, outputs["boxes"], list(test.labels("boxes")))
    print(f"{'test (' + str(len(test)) + ' images)':<20} {'value':>6}")
    print(f"{'label accuracy':<20} {label_accuracy:>6.3f}")
    print(f"{'right box count':<20} {counted:>6.3f}")
    print(f"{'mean IoU of boxes':<20} {mean_iou:>6.3f}")
    return {"batch_boxes": [tuple(b.shape) for b in batch.targets["boxes"]], "label_accuracy": label_accuracy,
            "count_accuracy": counted, "mean_iou": mean_iou}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="number of images to draw")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(n=args.n, epochs=args.epochs, seed=args.seed)
