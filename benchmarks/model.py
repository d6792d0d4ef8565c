"""HydraNet (backbone once per batch) against the per-head-backbone pattern tutorials copy.

Same ConvNet backbone on 64×64 images, batch 64, three heads (regression, binary, 5 classes). The
baseline calls the backbone once per head, as in the tutorial HydraNet that runs it three times.
Prints forward+backward time per step for both and the ratio.

Run: ``python benchmarks/model.py``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import hydranet as hn
from hydranet.models import ConvNet, HydraNet

TASKS = [hn.Task("age", "regression"), hn.Task("gender", "binary"), hn.Task("race", "multiclass", num_classes=5)]


class BackbonePerHead(nn.Module):
    """The copied pattern: each head calls the shared backbone on the input again."""

    def __init__(self, model: HydraNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t: self.model.heads[t](self.model.backbone(x)) for t in self.model.tasks}


def step_time(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sum(out.float().mean() for out in model(x).values()).backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    torch.manual_seed(0)
    model = HydraNet(ConvNet(3, widths=(32, 64, 128)), TASKS)
    x = torch.randn(64, 3, 64, 64)
    ours = step_time(model, x)
    theirs = step_time(BackbonePerHead(model), x)
    print(f"HydraNet, backbone once:     {1000 * ours:7.1f} ms per forward+backward")
    print(f"backbone once per head (x3): {1000 * theirs:7.1f} ms per forward+backward")
    print(f"ratio: {theirs / ours:.2f}x faster")


if __name__ == "__main__":
    main()
