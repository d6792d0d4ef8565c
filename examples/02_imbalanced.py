"""A 50:5 imbalanced task, balanced inside every batch (articles 000 and 003).

Task ``fives`` has 50 positives and 5 negatives; drawn at random, a batch of 8 holds 0.7 negatives
on average and most batches hold none, so the model learns to answer "positive". Article 000 swaps
the task's random sampler for an imbalanced-dataset sampler; article 003 reaches for
``WeightedRandomSampler`` with weights computed by loading every sample. Here it is
``balance={"fives": "inverse"}`` of a :class:`hydranet.data.TaskBatchSampler`, which reads the labels
without loading any input and draws each class of the task equally often, batch by batch, while the
balanced task ``ones`` keeps plain shuffling.

The inputs are noisy 2-d points (the classes overlap), so the balancing changes what is learnt: the
table compares the recall of each class of ``fives`` on a balanced test set.

Run: ``python examples/02_imbalanced.py``
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.models import MLP, HydraNet

TASKS = [hn.Task("ones", "binary"), hn.Task("fives", "binary", class_names=["negative", "positive"])]


def points(positives: int, negatives: int, shift: float, generator: torch.Generator) -> TensorDataset:
    """2-d points around ``(+shift, +shift)`` (label 1) and ``(-shift, -shift)`` (label 0), unit noise."""
    labels = torch.tensor([1] * positives + [0] * negatives)
    centres = (2.0 * labels.float() - 1.0).unsqueeze(1) * shift
    return TensorDataset(centres + torch.randn(len(labels), 2, generator=generator), labels)


def datasets(seed: int) -> tuple[hn.data.MultiTaskDataset, TensorDataset]:
    """Training data (``ones``: 10 balanced samples, ``fives``: 50:5) and a balanced test set of ``fives``."""
    g = torch.Generator().manual_seed(seed)
    train = hn.data.MultiTaskDataset(
        {"ones": points(5, 5, 1.5, g), "fives": points(50, 5, 0.75, g)}, tasks=TASKS
    )
    return train, points(500, 500, 0.75, g)


def negatives_per_batch(ds: hn.data.MultiTaskDataset, sampler: hn.data.TaskBatchSampler, epochs: int) -> np.ndarray:
    """Share of negatives in each ``fives`` batch over ``epochs`` epochs (no input is loaded)."""
    is_negative = np.zeros(len(ds), dtype=bool)
    is_negative[ds.task_indices("fives")] = ds.labels("fives") == 0
    fives = set(ds.part_ranges["fives"])
    shares = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        shares += [is_negative[batch].mean() for batch in sampler if batch[0] in fives]
    return np.array(shares)


def recall(ds: hn.data.MultiTaskDataset, sampler: hn.data.TaskBatchSampler, test: TensorDataset, epochs: int,
           seed: int) -> tuple[float, float]:
    """Recall of the negatives and of the positives of ``fives`` on ``test`` after training."""
    torch.manual_seed(seed)
    model = HydraNet(MLP(2, hidden=(16,)), TASKS)
    trainer = hn.Trainer(model, lr=0.01, progress=False, seed=seed)
    trainer.fit(DataLoader(ds, batch_sampler=sampler, collate_fn=hn.data.collate), epochs=epochs)
    x, y = test.tensors
    predicted = (trainer.predict([x])["fives"][:, 0] > 0.5).long()
    negatives, positives = (float((predicted[y == c] == c).float().mean()) for c in (0, 1))
    return negatives, positives


def main(epochs: int = 40, seed: int = 0) -> dict[str, Any]:
    ds, test = datasets(seed)
    counts = {task: ds.class_counts(task).tolist() for task in ("fives", "ones")}
    print(f"fives: {counts['fives']} (negatives, positives); ones: {counts['ones']}\n")
    results = {}
    print(f"{'sampler':<16} {'neg. share/batch':>16} {'batches w/o neg.':>16} {'recall neg.':>11} {'recall pos.':>11}")
    for name, balance in (("random", None), ("balanced", {"fives": "inverse"})):
        sampler = hn.data.TaskBatchSampler(ds, batch_size=8, schedule="round_robin", balance=balance, seed=seed)
        shares = negatives_per_batch(ds, sampler, epochs=10)
        negatives, positives = recall(ds, sampler, test, epochs, seed)
        results[name] = {"negative_share": shares, "recall": (negatives, positives)}
        print(f"{name:<16} {shares.mean():>16.2f} {np.mean(shares == 0):>16.0%} {negatives:>11.3f} {positives:>11.3f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(epochs=args.epochs, seed=args.seed)
