"""Cost of one training step with every balancing method, against a plain summed-loss backward.

Workload: an MLP backbone (32 -> 256 -> 256, ReLU, 74k shared parameters), one linear head per task,
batch 64, regression targets, for 2, 10 and 40 tasks. A step is the forward pass plus the backward
pass that leaves the gradients in ``.grad``. The baseline, measured in the same run, is
``sum(losses).backward()``; every entry is ``method / baseline`` for

* time: fastest wall-clock time of a step (after a warm-up step), interleaved with the baseline;
* memory: peak bytes of the tensors allocated during the step (activations, gradients, Jacobian),
  tracked by a dispatch mode in a separate, untimed step (parameters are not counted).

Loss weightings run one backward pass (column ``backward``); gradient methods run for each Jacobian
path: ``loop`` (one backward per task), ``vmap`` (one batched backward), ``representation``
(per-task gradients of the 64 x 256 features, then one backward through the backbone).

Run: ``python benchmarks/balancing.py`` (about three minutes on 2 cores; ``--quick`` for 2 and 10 tasks).
"""

from __future__ import annotations

import sys
import time
import warnings
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from hydranet.balancing import AGGREGATORS, WEIGHTINGS, make

BATCH, INPUTS, WIDTH = 64, 32, 256
TASK_COUNTS = (2, 10, 40)
PATHS = ("loop", "vmap", "representation")
TIME_BUDGET = 0.4  # seconds of timed steps per configuration (at least 3 of each kind)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages created while active (freed storages are subtracted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


class Problem:
    def __init__(self, n_tasks: int) -> None:
        torch.manual_seed(0)
        self.tasks = [f"t{i}" for i in range(n_tasks)]
        self.backbone = torch.nn.Sequential(
            torch.nn.Linear(INPUTS, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()
        )
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(WIDTH, 1) for t in self.tasks})
        self.x = torch.randn(BATCH, INPUTS)
        self.y = torch.randn(BATCH, n_tasks)
        self.shared = list(self.backbone.parameters())
        self.task_params = {t: list(self.heads[t].parameters()) for t in self.tasks}

    def losses(self):
        h = self.backbone(self.x)
        return h, {t: ((self.heads[t](h).squeeze(1) - self.y[:, i]) ** 2).mean() for i, t in enumerate(self.tasks)}

    def zero_grad(self) -> None:
        for p in list(self.backbone.parameters()) + list(self.heads.parameters()):
            p.grad = None


def peak_memory(problem: Problem, run_step) -> int:
    tracker = PeakMemory()
    with tracker:
        run_step()
    problem.zero_grad()
    return tracker.peak


def time_ratio(problem: Problem, run_step, baseline) -> float:
    """Fastest step time over the fastest baseline time, the two interleaved: load from other processes
    only ever adds time, so the minima are the steadiest estimate of the intrinsic cost."""
    run_step()  # warm-up
    problem.zero_grad()
    ours, base = [], []
    while len(ours) < 3 or sum(ours) + sum(base) < TIME_BUDGET:
        for step, times in ((baseline, base), (run_step, ours)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            problem.zero_grad()
    return min(ours) / min(base)


def timeit(problem: Problem, run_step) -> float:
    t0 = time.perf_counter()
    run_step()
    problem.zero_grad()
    return time.perf_counter() - t0


def plain_step(problem: Problem):
    def run():
        _, losses = problem.losses()
        sum(losses.values()).backward()

    return run


def balanced_step(problem: Problem, name: str, path: str | None):
    balancer = make(name, problem.tasks, **({"jacobian": path} if path else {}))

    def run():
        h, losses = problem.losses()
        balancer.backward(losses, problem.shared, problem.task_params, features=h)

    return run


def configurations():
    for name in sorted(WEIGHTINGS):
        if WEIGHTINGS[name].requires_jacobian:
            yield name, ("loop", "vmap")
        else:
            yield name, (None,)
    for name in sorted(AGGREGATORS):
        yield name, PATHS


def main() -> None:
    task_counts = TASK_COUNTS[:2] if "--quick" in sys.argv else TASK_COUNTS
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # solver convergence notes of some aggregators
    print(f"MLP {INPUTS}-{WIDTH}-{WIDTH}, batch {BATCH}, one linear head per task; cells: step time / peak tensor")
    print("memory of the method divided by those of sum(losses).backward() (time: fastest of interleaved runs).")
    print()
    for n_tasks in task_counts:
        problem = Problem(n_tasks)
        baseline = plain_step(problem)
        base_memory = peak_memory(problem, baseline)
        base_time = min(timeit(problem, baseline) for _ in range(10))
        base = f"{base_time * 1e3:.2f} ms, {base_memory / 2**20:.2f} MiB"
        print(f"## {n_tasks} tasks (baseline sum(losses).backward(): {base})")
        print()
        header = ["method", "backward", *PATHS]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for name, paths in configurations():
            cells = {}
            for path in paths:
                try:
                    step = balanced_step(problem, name, path)
                    ratio = time_ratio(problem, step, baseline)
                    cells[path or "backward"] = f"{ratio:.1f}x / {peak_memory(problem, step) / base_memory:.1f}x"
                except Exception as error:  # report and go on: one method must not hide the others
                    cells[path or "backward"] = f"error: {type(error).__name__}"
            print("| " + " | ".join([name] + [cells.get(column, "") for column in header[1:]]) + " |", flush=True)
        print()


if __name__ == "__main__":
    main()
