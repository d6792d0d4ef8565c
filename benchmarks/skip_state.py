"""What saving the balancer's state before every optimizer step costs (the restore on a skipped step).

``Step`` keeps ``balancer.state_dict()`` (copies) from before the first micro-batch of each optimizer
step, to load it back when the step is skipped. This times full steps (forward, losses, balancer,
optimizer) with the save, against the same steps where ``state_dict`` returns a constant (no copy),
for a stateless method (upgrad), an O(T) state (gradvac, dwa) and the largest, MoCo's [T, P] tracked
gradients. Prints the ratio (with / without) per method; writes ``results/skip_state.json``.

    python benchmarks/skip_state.py [--width 1024] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402

import hydranet as hn  # noqa: E402
from hydranet.data import Batch  # noqa: E402
from hydranet.models import MLP, HydraNet  # noqa: E402
from hydranet.train import Step  # noqa: E402

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3), hn.Task("bin", "binary")]


def _batch(seed: int, n: int = 64, dim: int = 64) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    targets = {
        "reg": torch.randn(n, 1, generator=g),
        "cls": torch.randint(0, 3, (n,), generator=g),
        "bin": torch.randint(0, 2, (n, 1), generator=g).float(),
    }
    return Batch(x, targets, {t: torch.ones(n, dtype=torch.bool) for t in targets})


def _seconds(name: str, width: int, steps: int, save: bool) -> tuple[float, int]:
    torch.manual_seed(0)
    model = HydraNet(MLP(64, hidden=(width, width)), TASKS)
    balancer = hn.balancing.make(name, TASKS)
    step = Step(model, model.tasks, balancer, optimizer=torch.optim.SGD(model.parameters(), lr=1e-3))
    batches = [_batch(i) for i in range(steps + 3)]
    for b in batches[:3]:  # warm-up: the state exists from here on
        step(b)
        step.optimizer_step()
    if not save:
        constant = balancer.state_dict()
        balancer.state_dict = lambda: constant  # type: ignore[method-assign]
    started = time.perf_counter()
    for b in batches[3:]:
        step(b)
        step.optimizer_step()
    shared = sum(p.numel() for p in model.shared_parameters())
    return (time.perf_counter() - started) / steps, shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="hidden width of the trunk (P grows as width^2)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for name in ("upgrad", "dwa", "gradvac", "moco"):
        with_save = min(_seconds(name, args.width, args.steps, True)[0] for _ in range(args.repeats))
        without, shared = min(
            (_seconds(name, args.width, args.steps, False) for _ in range(args.repeats)), key=lambda r: r[0]
        )
        rows[name] = {"ms_with_save": 1e3 * with_save, "ms_without": 1e3 * without, "ratio": with_save / without}
        print(f"{name:8s} P={shared:,}  {1e3 * with_save:7.2f} ms/step with the save, {1e3 * without:7.2f} without: "
              f"ratio {with_save / without:.3f}")
    write_results("skip_state", {"width": args.width, "steps": args.steps, "shared_params": shared, "methods": rows})


if __name__ == "__main__":
    main()
