"""Two datasets, one task each: alternating one-task batches, then 2:6 mixed batches (article 000).

The article's data: task ``ones`` has 10 samples of -1 and +1 (5 each), task ``fives`` has 55
samples, 50 of +5 and 5 of -5; each task asks for the sign. Concatenating the two datasets and
shuffling mixes them at random; the article then writes a batch sampler for one task per batch,
alternating, and a variant with 2 samples of one task and 6 of the other in every batch. Here both
are a :class:`hydranet.data.TaskBatchSampler` setting, and the loader feeds ``hn.Trainer``, which runs
the backbone once per batch and only the heads of the tasks the batch holds.

Run: ``python examples/01_two_datasets.py``
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.models import MLP, HydraNet

TASKS = [
    hn.Task("ones", "binary", class_names=["minus_one", "one"]),
    hn.Task("fives", "binary", class_names=["minus_five", "five"]),
]


def article_datasets() -> hn.data.MultiTaskDataset:
    """The article's two datasets, inputs ``[n, 1]`` and sign labels, one task each."""
    ones = torch.tensor([1.0, -1.0] * 5).unsqueeze(1)
    fives = torch.tensor([5.0] * 50 + [-5.0] * 5).unsqueeze(1)
    parts = {name: TensorDataset(x, (x[:, 0] > 0).long()) for name, x in (("ones", ones), ("fives", fives))}
    return hn.data.MultiTaskDataset(parts, tasks=TASKS)


def describe(loader: DataLoader, shown: int) -> list[dict[str, int]]:
    """Samples per task in every batch of one epoch; prints the first ``shown`` batches."""
    counts = []
    for k, batch in enumerate(loader):
        per_task = batch.counts()
        counts.append(per_task)
        if k < shown:
            values = ", ".join(f"{v:+.0f}" for v in batch.inputs[:, 0].tolist())
            print(f"  {k:>2}  {' + '.join(f'{n} {t}' for t, n in per_task.items()):<16}  [{values}]")
    return counts


def train(ds: hn.data.MultiTaskDataset, sampler: hn.data.TaskBatchSampler, epochs: int, seed: int) -> dict[str, float]:
    """Accuracy of each task after training a HydraNet with ``sampler``'s batches."""
    torch.manual_seed(seed)
    model = HydraNet(MLP(1, hidden=(16,)), TASKS)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=hn.data.collate)
    trainer = hn.Trainer(model, lr=0.05, progress=False, seed=seed)
    trainer.fit(loader, epochs=epochs)
    everything = hn.data.TaskBatchSampler(ds, batch_size=64, length="all")
    scores = trainer.evaluate(DataLoader(ds, batch_sampler=everything, collate_fn=hn.data.collate))
    return {task: task_scores["accuracy"] for task, task_scores in scores.items()}


def main(epochs: int = 20, seed: int = 0) -> dict[str, Any]:
    ds = article_datasets()
    print(f"{len(ds)} samples: {', '.join(f'{t}: {len(r)}' for t, r in ds.part_ranges.items())}\n")

    alternating = hn.data.TaskBatchSampler(ds, batch_size=8, schedule="round_robin", seed=seed)
    print("one task per batch, round robin (batch, samples per task, inputs):")
    alternating_counts = describe(DataLoader(ds, batch_sampler=alternating, collate_fn=hn.data.collate), shown=6)

    mixed = hn.data.TaskBatchSampler(ds, batch_size=8, quotas={"ones": 2, "fives": 6}, seed=seed)
    print("\nmixed batches, quotas ones:fives = 2:6:")
    mixed_counts = describe(DataLoader(ds, batch_sampler=mixed, collate_fn=hn.data.collate), shown=4)

    accuracy = {"alternating": train(ds, alternating, epochs, seed), "mixed 2:6": train(ds, mixed, epochs, seed)}
    print(f"\n{'batches':<12} {'batches/epoch':>13} {'acc ones':>9} {'acc fives':>10}")
    for (name, acc), counts in zip(accuracy.items(), (alternating_counts, mixed_counts)):
        print(f"{name:<12} {len(counts):>13} {acc['ones']:>9.3f} {acc['fives']:>10.3f}")
    return {"alternating": alternating_counts, "mixed": mixed_counts, "accuracy": accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(epochs=args.epochs, seed=args.seed)
