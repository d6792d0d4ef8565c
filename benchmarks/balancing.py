"""Step time and memory of the balancing paths against a plain summed-loss backward (and TorchJD).

Workload (issue 15): an MLP trunk 64 -> 256 -> 256 -> 256 (ReLU), one ``Linear(256, 1)`` head per
task, batch 256, MSE, ``torch.set_num_threads(1)``, T = 2, 10 and 40 tasks. A step is the forward pass
plus the backward that leaves the gradients in ``.grad``.

* **time**: in each round the method's steps are interleaved with ``sum(losses).backward()`` steps on
  the same model; the round's ratio is median step / median plain step. The table gives the median
  ratio over the rounds and its spread (min-max).
* **memory**: the peak resident set size of one step above the resident size before it (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs``), in a fresh subprocess per configuration, with
  glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the resident set at once (torch
  has no CPU allocator statistics). Ratio to the plain step's peak measured the same way.

Configurations: hydranet's ``upgrad`` on each path (``features``: the parameter Jacobian features-first;
``gramian``: K = G G^T one parameter group at a time, then one weighted backward; ``vmap``: the Jacobian
batched from the losses; ``auto``), the loss weightings ``ew``, ``uw`` and ``dwa``, and, when installed
(``pip install hydranet[bench]``), TorchJD's ``autojac.mtl_backward`` + ``jac_to_grad(UPGrad())`` and
its ``autogram.Engine`` + ``UPGradWeighting``.

Run: ``python benchmarks/balancing.py [--rounds 3] [--quick]``; writes ``benchmarks/results/balancing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

INPUTS, WIDTH, DEPTH, BATCH = 64, 256, 3, 256
TASK_COUNTS = (2, 10, 40)
CONFIGS = (
    "hydranet upgrad features",
    "hydranet upgrad gramian",
    "hydranet upgrad vmap",
    "hydranet upgrad auto",
    "torchjd mtl_backward+upgrad",
    "torchjd autogram+upgrad",
    "hydranet ew",
    "hydranet uw",
    "hydranet dwa",
)
RESULTS = Path(__file__).parent / "results" / "balancing.json"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_kib(step, zero) -> int:
    """Peak resident KiB of one ``step`` above the resident size before it."""
    import gc

    zero()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current resident size
    before = _rss_kib("VmRSS")
    step()
    peak = _rss_kib("VmHWM") - before
    zero()
    return peak


def worker(config: str, n_tasks: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = INPUTS
    for _ in range(DEPTH):
        layers += [torch.nn.Linear(width, WIDTH), torch.nn.ReLU()]
        width = WIDTH
    trunk = torch.nn.Sequential(*layers)
    tasks = [f"t{i}" for i in range(n_tasks)]
    heads = torch.nn.ModuleList([torch.nn.Linear(WIDTH, 1) for _ in tasks])
    x, y = torch.randn(BATCH, INPUTS), torch.randn(BATCH, n_tasks)
    shared = list(trunk.parameters())
    task_params = {t: list(h.parameters()) for t, h in zip(tasks, heads)}

    def forward():
        h = trunk(x)
        return h, [torch.nn.functional.mse_loss(head(h).squeeze(1), y[:, i]) for i, head in enumerate(heads)]

    def zero():
        for p in list(trunk.parameters()) + list(heads.parameters()):
            p.grad = None
            if hasattr(p, "jac"):
                del p.jac

    linears = [m for m in trunk if isinstance(m, torch.nn.Linear)]

    def plain():  # the same model, called functionally: module hooks (TorchJD's autogram) stay out of it
        h = x
        for layer in linears:
            h = torch.relu(torch.nn.functional.linear(h, layer.weight, layer.bias))
        losses = [torch.nn.functional.mse_loss(head(h).squeeze(1), y[:, i]) for i, head in enumerate(heads)]
        sum(losses).backward()

    kind, *rest = config.split(" ")
    if kind == "hydranet":
        from hydranet.balancing import make

        name = rest[0]
        balancer = make(name, tasks, **({"jacobian": rest[1]} if len(rest) > 1 else {}))
        extra = balancer.parameters()

        def step():
            h, losses = forward()
            balancer.backward(dict(zip(tasks, losses)), shared, task_params, features=h)
            for p in extra:
                p.grad = None

        if name == "dwa":  # past the two epochs of equal weights
            for _ in range(2):
                step()
                balancer.on_epoch_end()
    elif rest[0] == "mtl_backward+upgrad":
        from torchjd.aggregation import UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = UPGrad()

        def step():
            h, losses = forward()
            mtl_backward(losses, features=h, tasks_params=[list(hd.parameters()) for hd in heads], shared_params=shared)
            jac_to_grad(shared, aggregator)
    else:
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine

        engine = Engine(trunk, batch_dim=None)
        weighting = UPGradWeighting()

        def step():
            _, losses = forward()
            stacked = torch.stack(losses)
            stacked.backward(weighting(engine.compute_gramian(stacked)))

    for _ in range(2):  # warm-up
        step()
        zero()
        plain()
        zero()
    ours, base = [], []
    for _ in range(steps):
        for run, times in ((plain, base), (step, ours)):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
            zero()
    out = {"step_ms": statistics.median(ours) * 1e3, "plain_ms": statistics.median(base) * 1e3}
    out["memory_kib"] = min(_peak_kib(step, zero) for _ in range(2))
    out["plain_memory_kib"] = min(_peak_kib(plain, zero) for _ in range(2))
    if kind == "hydranet" and balancer.uses_jacobian:
        h, losses = forward()
        out["path"] = balancer.backward(dict(zip(tasks, losses)), shared, task_params, features=h)["jacobian"]
        zero()
    return out


def _available(config: str) -> bool:
    if not config.startswith("torchjd"):
        return True
    try:
        import torchjd  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="T = 2 and 10, one round")
    parser.add_argument("--docs", action="store_true", help="only rewrite the table in docs/balancing.md from the JSON")
    parser.add_argument("--worker", nargs=3, metavar=("CONFIG", "TASKS", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))))
        return
    if args.docs:
        write_docs(json.loads(RESULTS.read_text()))
        return
    counts = TASK_COUNTS[:2] if args.quick else TASK_COUNTS
    rounds = 1 if args.quick else args.rounds
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    configs = [c for c in CONFIGS if _available(c)]
    runs: dict[str, dict[int, list[dict]]] = {c: {t: [] for t in counts} for c in configs}
    for _ in range(rounds):  # rounds outermost: load on the machine spreads over all configurations
        for n_tasks in counts:
            for config in configs:
                steps = 30 if n_tasks < 40 else 15
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", config, str(n_tasks), str(steps)],
                    capture_output=True, text=True, env=env, check=False,
                )
                if done.returncode:
                    print(f"{config} T={n_tasks}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                runs[config][n_tasks].append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = {}
    for config in configs:
        table[config] = {}
        for n_tasks in counts:
            got = runs[config][n_tasks]
            if not got:
                continue
            ratios = [r["step_ms"] / r["plain_ms"] for r in got]
            memory = [r["memory_kib"] / max(1, r["plain_memory_kib"]) for r in got]
            table[config][str(n_tasks)] = {
                "time_ratio": statistics.median(ratios),
                "time_ratio_min": min(ratios),
                "time_ratio_max": max(ratios),
                "step_ms": statistics.median(r["step_ms"] for r in got),
                "plain_ms": statistics.median(r["plain_ms"] for r in got),
                "memory_ratio": statistics.median(memory),
                "memory_mib": statistics.median(r["memory_kib"] for r in got) / 1024,
                "plain_memory_mib": statistics.median(r["plain_memory_kib"] for r in got) / 1024,
                "path": got[0].get("path"),
                "rounds": len(got),
            }
    import torch

    report = {
        "workload": f"MLP {INPUTS}-{'-'.join([str(WIDTH)] * DEPTH)}, Linear({WIDTH}, 1) per task, batch {BATCH}, MSE",
        "threads": 1,
        "torch": torch.__version__,
        "device": "cpu",
        "memory": "peak RSS (VmHWM reset by /proc/self/clear_refs) above RSS before the step, subprocess per "
        "configuration, MALLOC_MMAP_THRESHOLD_=65536",
        "rounds": rounds,
        "results": table,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    if not args.quick:
        write_docs(report)


DOCS = Path(__file__).parent.parent / "docs" / "balancing.md"
START, END = "<!-- table:balancing -->", "<!-- /table:balancing -->"  # benchmarks/_tables.py reads them too


def write_docs(report: dict) -> None:
    """Replace the table between the markers of docs/balancing.md with the one of ``report``."""
    text = DOCS.read_text()
    if START not in text or END not in text:
        return
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    DOCS.write_text(f"{head}{START}\n{markdown(report)}\n{END}{tail}")


def markdown(report: dict) -> str:
    """The docs table: time ratio (median, min-max over rounds) / memory ratio per configuration."""
    counts = sorted({int(t) for cells in report["results"].values() for t in cells})
    lines = [
        "| configuration | " + " | ".join(f"T={t}: time (spread) / memory" for t in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for config, cells in report["results"].items():
        row = []
        for t in counts:
            cell = cells.get(str(t))
            row.append(
                "–" if cell is None else f"{cell['time_ratio']:.2f}× ({cell['time_ratio_min']:.2f}–"
                f"{cell['time_ratio_max']:.2f}) / {cell['memory_ratio']:.1f}×"
            )
        lines.append(f"| {config} | " + " | ".join(row) + " |")
    plain = {t: report["results"][next(iter(report["results"]))].get(str(t), {}) for t in counts}
    lines.append("")
    lines.append(
        "Plain step: " + ", ".join(
            f"T={t} {c.get('plain_ms', float('nan')):.2f} ms, {c.get('plain_memory_mib', float('nan')):.1f} MiB"
            for t, c in plain.items()
        ) + "."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
