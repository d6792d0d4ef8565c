"""Distributed training throughput: the Trainer under torchrun with 1 and 2 processes on this machine.

Workload: an MLP backbone (64 -> 512 -> 512, ReLU, 0.3M shared parameters) with two linear heads, two
datasets of 8,192 samples (a 10-class and a regression task), round-robin batches of 64 samples *per
process* (so 2 processes train twice the samples per step), Adam. Every process runs one thread
(torchrun's default; on a machine shared with other work more threads per process only contend), so
a second process adds one core's worth of compute and the cost of synchronising. Measured:

* samples per second of ``Trainer.fit`` (loader, forward, balancer, DDP, optimizer step) for ``ew``
  (a loss weighting: DDP's own gradient all-reduce) and ``upgrad`` (a gradient method: the balancer
  all-reduces the task Jacobian itself), from the fastest of the timed steps (load from other work
  only ever adds time, so the fastest step is the steadiest estimate of the intrinsic cost), and the
  scaling ratio 2 processes / 1 process;
* the all-reduce of the task Jacobian ``[tasks, shared parameters]`` that a gradient method adds to
  each step, against one plain DDP step (``ew``, 2 processes): ``time(all-reduce) / time(step)``,
  fastest of each.

Run: ``python benchmarks/distributed.py`` (about a minute on 2 cores). Each configuration is a
``torchrun --standalone`` launch of this file with ``--worker``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.train import Callback
from hydranet.data import collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler
from hydranet.models import MLP, HydraNet

from _results import write_results  # benchmarks/_results.py (scripts run from benchmarks/)

INPUTS, WIDTH, SAMPLES, BATCH = 64, 512, 8192, 64
WARMUP, STEPS = 10, 60  # optimizer steps: not timed, timed
METHODS = ("ew", "upgrad")
TASKS = [hn.Task("digit", "multiclass", num_classes=10), hn.Task("size", "regression")]


class StepClock(Callback):
    """Wall-clock time of every optimizer step's end."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_batch_end(self, trainer, step, info):
        if info["stepped"]:
            self.times.append(time.perf_counter())


def workload() -> tuple[HydraNet, DataLoader]:
    g = torch.Generator().manual_seed(0)
    parts = {
        "digit": TensorDataset(torch.randn(SAMPLES, INPUTS, generator=g), torch.randint(0, 10, (SAMPLES,), generator=g)),
        "size": TensorDataset(torch.randn(SAMPLES, INPUTS, generator=g), torch.randn(SAMPLES, generator=g)),
    }
    ds = MultiTaskDataset(parts, tasks=TASKS)
    sampler = TaskBatchSampler(ds, batch_size=BATCH, length=WARMUP + STEPS, seed=0)
    torch.manual_seed(0)
    return HydraNet(MLP(INPUTS, hidden=(WIDTH, WIDTH)), TASKS), DataLoader(ds, batch_sampler=sampler, collate_fn=collate)


def throughput(method: str) -> tuple[float, float]:
    """(samples per second over all processes, seconds per step), from the fastest timed step."""
    model, loader = workload()
    clock = StepClock()
    hn.Trainer(model, balancer=method, optimizer="adam", progress=False, tensorboard=False, callbacks=[clock]).fit(
        loader, epochs=1
    )
    fastest = float(torch.tensor(clock.times[WARMUP - 1 :], dtype=torch.float64).diff().min())
    return BATCH * hn.distributed.world_size() / fastest, fastest


def jacobian_all_reduce_seconds(model: HydraNet) -> float:
    """Fastest time of the all-reduce a gradient method runs on its ``[tasks, P]`` Jacobian."""
    shared = sum(p.numel() for p in model.shared_parameters())
    jacobian = torch.randn(len(TASKS), shared)
    times = []
    for _ in range(30):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(jacobian)
        times.append(time.perf_counter() - t0)
    return min(times[5:])


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    result: dict[str, float] = {}
    for method in METHODS:
        result[f"{method}/samples_per_second"], result[f"{method}/step"] = throughput(method)
    if hn.distributed.is_distributed():
        model = workload()[0]
        result["jacobian_all_reduce"] = jacobian_all_reduce_seconds(model)
        result["shared_parameters"] = sum(p.numel() for p in model.shared_parameters())
    if hn.distributed.is_main_process():
        out.write_text(json.dumps(result))


def launch(processes: int, out: Path) -> dict[str, float]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        __file__, "--worker", str(out),
    ]
    run = subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        raise SystemExit(f"torchrun with {processes} process(es) failed ({run.returncode}):\n{run.stderr[-4000:]}")
    return json.loads(out.read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        runs = {n: launch(n, Path(folder) / f"{n}.json") for n in (1, 2)}
    print(f"Trainer.fit, MLP {INPUTS}-{WIDTH}-{WIDTH}, 2 tasks one per batch, {BATCH} samples per process and step, "
          f"{os.cpu_count()} CPU cores, 1 thread per process, gloo; fastest of {STEPS} steps after {WARMUP}.")
    print()
    print("| processes | " + " | ".join(f"{m} samples/s" for m in METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for n, run in runs.items():
        cells = " | ".join(f"{run[f'{m}/samples_per_second']:,.0f}" for m in METHODS)
        print(f"| {n} | {cells} |")
    print()
    ratios = ", ".join(
        f"{m} {runs[2][f'{m}/samples_per_second'] / runs[1][f'{m}/samples_per_second']:.2f}x" for m in METHODS
    )
    print(f"scaling, 2 processes / 1 process: {ratios}")
    two = runs[2]
    reduce_ms, step_ms = two["jacobian_all_reduce"] * 1e3, two["ew/step"] * 1e3
    print(
        f"Jacobian all-reduce ([{len(TASKS)}, {int(two['shared_parameters']):,}] float32): {reduce_ms:.2f} ms "
        f"= {reduce_ms / step_ms:.2f}x the plain DDP step ({step_ms:.2f} ms, ew); "
        f"a whole upgrad step is {two['upgrad/step'] / two['ew/step']:.2f}x the ew step"
    )
    write_results("distributed", {
        "methods": list(METHODS), "batch_per_process": BATCH, "steps": STEPS, "runs": {str(n): r for n, r in runs.items()},
        "scaling": {m: runs[2][f"{m}/samples_per_second"] / runs[1][f"{m}/samples_per_second"] for m in METHODS},
        "jacobian_all_reduce_ms": reduce_ms, "ew_step_ms": step_ms, "all_reduce_over_step": reduce_ms / step_ms,
        "upgrad_over_ew_step": two["upgrad/step"] / two["ew/step"],
    })  # fmt: skip


if __name__ == "__main__":
    if "--worker" in sys.argv:
        with hn.distributed.process_group():
            worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
    else:
        main()
