"""Tabular multi-task learning on real data: the diamonds table, HydraNet vs MMoE vs PLE.

The 53,940 diamonds that ``plotnine`` ships (``plotnine/data/diamonds.csv``, the ggplot2 data set):
from the physical measurements (carat, depth, table, x, y, z) predict four things at once, the price
(regression, on its logarithm) and the cut, colour and clarity grades (classification). The CSV is
read from the installed package with :func:`hydranet.data.readers.read_manifest`
(``feature_columns=``: the inputs are one float tensor and batches are cut by indexing), split 80/10/10,
and three architectures get the same budget: a shared-bottom HydraNet, MMoE (experts mixed by a
gate per task) and PLE (shared and task-specific experts over two levels). The price error is in
dollars, of the predicted log price limited to the range of the training prices (see ``main``).

Run: ``python examples/07_diamonds.py`` (needs ``pip install 'hydranet[examples]'``)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import hydranet as hn
from hydranet.data import readers
from hydranet.models import MLP, PLE, HydraNet, MMoE

FEATURES = ["carat", "depth", "table", "x", "y", "z"]
TASKS = {"price": "regression", "cut": "multiclass", "color": "multiclass", "clarity": "multiclass"}


def diamonds_csv() -> Path:
    """The diamonds table inside the installed ``plotnine`` package (no import of plotnine, no network)."""
    try:
        files = importlib.metadata.files("plotnine") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise SystemExit("This example reads plotnine's diamonds table: pip install 'hydranet[examples]'.") from err
    found = [Path(str(f.locate())) for f in files if f.name == "diamonds.csv" and f.parent.name == "data"]
    if not found:
        raise SystemExit(f"plotnine {importlib.metadata.version('plotnine')} has no data/diamonds.csv; "
                         "pip install 'plotnine>=0.13'.")
    return found[0]


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with the statistics of the training rows (stored with the model)."""

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0).clamp(min=1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def models(tasks: list[hn.Task], x: Tensor) -> dict[str, nn.Module]:
    """The three architectures, each standardising its inputs first, of comparable size."""
    d = len(FEATURES)
    return {
        "HydraNet": HydraNet(nn.Sequential(Standardize(x), MLP(d, hidden=(128, 64))), tasks, feature_dim=64),
        "MMoE": MMoE(tasks, Standardize(x), num_experts=4, expert_hidden=(64, 32), feature_dim=d),
        "PLE": PLE(tasks, Standardize(x), levels=2, shared_experts=2, task_experts=1, expert_hidden=(48, 32),
                   feature_dim=d),
    }


def main(epochs: int = 8, rows: int | None = None, seed: int = 0) -> dict[str, Any]:
    table = readers.read_manifest(diamonds_csv(), feature_columns=FEATURES, tasks=TASKS,
                                  converters={"price": lambda text: math.log(float(text))})
    if rows is not None:  # a random sample of the table, for a quicker run
        table = table.split([rows / len(table), 1 - rows / len(table)], seed=seed)[0]
    train, val, test = table.split([0.8, 0.1, 0.1], seed=seed)
    print(f"diamonds: {len(table)} rows ({len(train)} train, {len(val)} val, {len(test)} test); features "
          f"{FEATURES}; classes: " + ", ".join(f"{t} {len(v)}" for t, v in table.vocabularies.items()) + "\n")
    tasks = list(table.tasks.values())
    train_loader = DataLoader(train, batch_sampler=hn.data.TaskBatchSampler(train, batch_size=512, seed=seed),
                              collate_fn=hn.data.collate)
    val_loader, test_loader = (DataLoader(ds, batch_size=4096, collate_fn=hn.data.collate) for ds in (val, test))
    x_train = train.samples.tensors[0]
    price_range = (float(min(train.labels("price"))), float(max(train.labels("price"))))
    results = {}
    print(f"{'model':<9} {'params':>7} {'price MAE $':>11} {'cut acc':>8} {'color acc':>9} {'clarity acc':>11} "
          f"{'seconds':>7}")
    torch.manual_seed(seed)  # the initial weights
    for name, model in models(tasks, x_train).items():
        started = time.perf_counter()
        trainer = hn.Trainer(model, lr=3e-3, progress=False, seed=seed)
        trainer.fit(train_loader, val_loader, epochs=epochs)
        scores = trainer.evaluate(test_loader)
        # A few rows of the table are entry errors far outside the others (depth 43 or 78 %, y = 58.9 mm:
        # 6 to 45 standard deviations away); the network extrapolates the log price there, to 12 or 49, and
        # exp() makes that $10^5 to $10^21, one row then deciding the mean. Predictions are kept to the range
        # of log prices seen in training.
        predicted = trainer.predict(test_loader)["price"][:, 0].clamp(*price_range)
        price_mae = float((predicted.exp() - torch.tensor(test.labels("price")).exp()).abs().mean())
        seconds = time.perf_counter() - started
        results[name] = {"price_mae": price_mae, **{t: scores[t]["accuracy"] for t in ("cut", "color", "clarity")}}
        params = sum(p.numel() for p in model.parameters())
        r = results[name]
        print(f"{name:<9} {params:>7} {price_mae:>11.0f} {r['cut']:>8.3f} {r['color']:>9.3f} {r['clarity']:>11.3f} "
              f"{seconds:>7.1f}")
    majority = {t: float(table.class_counts(t).max() / len(table)) for t in ("cut", "color", "clarity")}
    median = torch.tensor(train.labels("price")).median().exp()
    baseline = float((median - torch.tensor(test.labels("price")).exp()).abs().mean())
    print(f"{'baseline':<9} {'':>7} {baseline:>11.0f} {majority['cut']:>8.3f} {majority['color']:>9.3f} "
          f"{majority['clarity']:>11.3f}   (median price, majority class)")
    return {"rows": len(table), "results": results, "baseline": {"price_mae": baseline, **majority}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rows", type=int, default=None, help="use a random sample of this many rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # models this small gain nothing from threads, which contend on a busy machine
    main(epochs=args.epochs, rows=args.rows, seed=args.seed)
