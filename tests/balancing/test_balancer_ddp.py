"""Under DDP (two gloo processes on CPU) a balanced step equals the single-process step on the whole batch."""

from __future__ import annotations

import datetime
import gc

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hydranet.balancing import AGGREGATORS, make

TASKS = ["a", "b", "c"]
GRADIENT_METHOD = "upgrad" if "upgrad" in AGGREGATORS else "mgda"
# (method, jacobian path); the loss weightings run with DDP's own all-reduce. The methods with per-task
# state are told the tasks present on any rank: rank 1 lacks task c, yet its matrix has c's row.
CASES = [
    (GRADIENT_METHOD, "vmap"),
    (GRADIENT_METHOD, "features"),  # features-first parameter Jacobian, all-reduced
    (GRADIENT_METHOD, "gramian"),  # K from the all-reduced blocks, then one weighted backward
    (GRADIENT_METHOD, "auto"),
    ("mgda", "gramian"),
    ("pcgrad", "features"),
    (GRADIENT_METHOD, "representation"),
    ("moco", "vmap"),
    ("nash_mtl", "representation"),
    ("gls", None),
    ("uw", None),
    ("imtl", "vmap"),  # IMTL-L's scale gradient from the rank-averaged losses
    ("cosmos", None),
    ("pbi", None),
]


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(4, 1) for t in TASKS})
        self.double()

    def forward(self, x, tasks):
        h = self.backbone(x)
        return h, {t: self.heads[t](h).squeeze(1) for t in tasks}


def batch(rows: slice):
    """Eight samples; task c is labelled on the first four only (rank 1 never sees it)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    y = {t: torch.randn(8, generator=generator, dtype=torch.float64) * (i + 1) for i, t in enumerate(TASKS)}
    labelled = {"a": torch.ones(8, dtype=torch.bool), "b": torch.ones(8, dtype=torch.bool), "c": torch.arange(8) < 4}
    return x[rows], {t: v[rows] for t, v in y.items()}, {t: m[rows] for t, m in labelled.items()}


def step(net, module, method, jacobian, rows):
    """One balanced backward on ``rows``; returns every gradient, including the balancer's parameters."""
    x, y, labelled = batch(rows)
    balancer = make(method, TASKS, **({"jacobian": jacobian} if jacobian else {}))
    present = [t for t in TASKS if labelled[t].any()]
    h, outputs = module(x, present)
    losses = {t: ((outputs[t] - y[t])[labelled[t]] ** 2).mean() for t in present}
    heads = {t: list(net.heads[t].parameters()) for t in TASKS}
    balancer.backward(losses, list(net.backbone.parameters()), heads, features=h)
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    grads.update({f"balancer.{i}": p.grad.clone() for i, p in enumerate(balancer.parameters())})
    return grads


def _worker(rank: int, store: str, results: str) -> None:
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timeout)
    out = {}
    for method, jacobian in CASES:
        net = Net()
        rows = slice(4 * rank, 4 * rank + 4)
        if jacobian is None:  # loss weighting: DDP all-reduces as usual
            ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
            out[method] = step(net, ddp, method, jacobian, rows)
        else:  # gradient method: the balancer synchronises; DDP must not
            ddp = torch.nn.parallel.DistributedDataParallel(net)
            with ddp.no_sync():
                out[f"{method}-{jacobian}"] = step(net, ddp, method, jacobian, rows)
        del ddp, net
    torch.save(out, f"{results}{rank}.pt")
    del out
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


@pytest.mark.slow
def test_ddp_step_equals_the_single_process_step_on_the_concatenated_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for method, jacobian in CASES:
        key = f"{method}-{jacobian}" if jacobian else method
        net = Net()
        expected = step(net, net, method, jacobian, slice(0, 8))
        for rank in ranks:
            assert set(rank[key]) == set(expected), key
            for name, grad in expected.items():
                torch.testing.assert_close(rank[key][name], grad, rtol=1e-7, atol=1e-10, msg=f"{key}: {name}")
