"""HydraNet (the backbone once per batch) against the pattern tutorials copy: the backbone once per head.

Workload: the ConvNet backbone (3 stages, widths 32-64-128) on 64×64 RGB images, batch 64, three heads
as in the UTKFace tutorial (age regression, gender binary, ethnicity with 5 classes; each head
``Linear(128, 128) -> ReLU -> Linear``). A step is forward + losses + backward.

* ``hydranet``: ``HydraNet(backbone, tasks)``; the backbone runs once, its features feed the three heads.
* ``per-head``: the same backbone and heads, called as in the tutorial's ``forward``:
  ``age = fc1(net(x)); gender = fc2(net(x)); ethnicity = fc3(net(x))``. It also updates the BatchNorm
  statistics three times per step.

Both run in the same process, interleaved step by step; the table shows the median step time of each and
the ratio. Run: ``python benchmarks/model.py`` (``--steps N``, ``--device cuda``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import hydranet as hn
from hydranet.losses import MultiTaskLoss
from hydranet.models import ConvNet, HydraNet

from _results import write_results  # benchmarks/_results.py (scripts run from benchmarks/)

TASKS = [hn.Task("age", "regression"), hn.Task("gender", "binary"), hn.Task("ethnicity", "multiclass", num_classes=5)]
BATCH, SIZE = 64, 64


class BackbonePerHead(nn.Module):
    """The tutorial's forward: every head calls the backbone on the input again."""

    def __init__(self, model: HydraNet) -> None:
        super().__init__()
        self.backbone, self.heads = model.backbone, model.heads

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t.name: self.heads[t.name](self.backbone(x)) for t in TASKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each model")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = HydraNet(ConvNet(3, widths=(32, 64, 128)), TASKS, head="mlp").to(device)
    per_head = BackbonePerHead(model)
    loss_fn = MultiTaskLoss(TASKS).to(device)
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    targets = {
        "age": torch.rand(BATCH, device=device) * 80,
        "gender": torch.randint(0, 2, (BATCH,), device=device),
        "ethnicity": torch.randint(0, 5, (BATCH,), device=device),
    }

    def step(net: nn.Module) -> float:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sum(loss_fn(net(x), targets).values()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"hydranet": [], "per-head": []}
    for i in range(args.steps + 2):  # two warm-up rounds
        for name, net in (("hydranet", model), ("per-head", per_head)):
            elapsed = step(net)
            if i >= 2:
                times[name].append(elapsed)
    ours, theirs = (statistics.median(times[k]) for k in ("hydranet", "per-head"))
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device.type}" + (f", {threads} threads" if threads else f" ({torch.cuda.get_device_name(device)})")
    print(f"forward + losses + backward, ConvNet 32-64-128, batch {BATCH}, {SIZE}x{SIZE} RGB, 3 heads [{where}]")
    print(f"  HydraNet (backbone once):      {1000 * ours:8.1f} ms/step  (median of {args.steps})")
    print(f"  backbone once per head (x3):   {1000 * theirs:8.1f} ms/step")
    print(f"  ratio per-head / HydraNet:     {theirs / ours:8.2f}x")
    write_results("model", {"device": where, "batch": BATCH, "size": SIZE, "heads": len(TASKS), "steps": args.steps,
                            "hydranet_ms": 1000 * ours, "per_head_ms": 1000 * theirs, "ratio": theirs / ours})


if __name__ == "__main__":
    main()
