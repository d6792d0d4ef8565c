"""Distributed training: two CPU processes (gloo) under the real ``torchrun``, against one process.

Each two-process run is compared, number by number, with one process trained on the same global
batches (two ranks of ``b`` samples against one process of ``2b``; the sampler gives rank ``r`` the
``r``-th slice of the single-process batch). Every launch has a timeout, so a hang fails instead of
stalling the suite, and every launch must exit with 0: a process that trains correctly and then aborts
while shutting down fails here.

The Python-API scenarios run in one launch whose worker is this file itself
(``torchrun tests/test_distributed.py OUT``, see :func:`worker`); the references are computed in the
test process with the same builders. The CLI scenarios launch ``hydranet train``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.train import Callback
from hydranet.cli import main as cli_main
from hydranet.data import collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler
from hydranet.models import MLP, HydraNet

# One xdist worker runs the whole module, so its module-scoped torchrun launches happen once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("torchrun")]

TASKS = [hn.Task("a", "multiclass", num_classes=3), hn.Task("b", "regression")]
N_A, N_B = 24, 20  # per epoch with 8 samples a step: a in 3 full steps, b in 2 and a short one of 4
LAUNCH_TIMEOUT = 150  # seconds; a hang of the process group fails the test instead of stalling it


# ----------------------------------------------------------------------------- launching torchrun


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` with a timeout (the whole process group is
    killed on expiry)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            out, err = process.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"torchrun {' '.join(args)} did not finish in {LAUNCH_TIMEOUT} s (hung):\n{err[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def assert_clean_exit(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"torchrun exited with {result.returncode}:\n{result.stderr[-4000:]}"


def hydranet_command() -> list[str]:
    """The ``hydranet`` console script of this environment (what ``torchrun --no-python`` runs)."""
    script = Path(sys.executable).with_name("hydranet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hydranet.cli"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, exact: bool) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if exact:
            assert torch.equal(actual[name], value), name
        else:
            torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- Python-API scenarios


class Recorder(MLP):
    """An MLP backbone that records the sample ids (first input column x 100) of every training batch."""

    def __init__(self) -> None:
        super().__init__(5, hidden=(8,))
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(torch.round(x[:, 0] * 100).long().tolist())
        return super().forward(x)


def dataset() -> MultiTaskDataset:
    """Task a (3 classes) on samples 0..23, task b (regression) on samples 100..119; the first input
    column is the id / 100."""
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(N_A, 5, generator=g), torch.randn(N_B, 5, generator=g)
    xa[:, 0] = torch.arange(N_A) / 100
    xb[:, 0] = (100 + torch.arange(N_B)) / 100
    ya, yb = torch.randint(0, 3, (N_A,), generator=g), torch.randn(N_B, generator=g)
    return MultiTaskDataset({"a": TensorDataset(xa, ya), "b": TensorDataset(xb, yb)}, tasks=TASKS)


def model() -> HydraNet:
    torch.manual_seed(0)
    return HydraNet(Recorder(), TASKS)


def trainer(net: HydraNet, balancer: str, **options) -> hn.Trainer:
    return hn.Trainer(net, balancer=balancer, lr=0.01, progress=False, tensorboard=False, seed=0, **options)


def loader(ds: MultiTaskDataset, batch_size: int, **sampler_options) -> DataLoader:
    sampler = TaskBatchSampler(ds, batch_size=batch_size, seed=0, **sampler_options)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)


def state(net: HydraNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def train_all_once(batch_size: int) -> list[list[int]]:
    """Two epochs of length 'all' (each sample once per epoch); the ids of every batch trained on."""
    ds, net = dataset(), model()
    trainer(net, "ew").fit(loader(ds, batch_size, length="all"), epochs=2)
    return net.backbone.seen


def task_batches(ds: MultiTaskDataset, task: str) -> list[list[int]]:
    indices = ds.task_indices(task).tolist()
    return [indices[i : i + 4] for i in range(0, 12, 4)]


def train_mix(method: str, batches: list[list[int]]) -> dict[str, torch.Tensor]:
    """Three steps on the given batches (dataset indices), one epoch."""
    ds, net = dataset(), model()
    trainer(net, method).fit(DataLoader(ds, batch_sampler=batches, collate_fn=collate), epochs=1)
    return state(net)


def train_quotas(method: str, batch_size: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Two epochs of mixed batches (half of each task), validated every epoch."""
    ds, val, net = dataset(), dataset(), model()
    half = batch_size // 2
    fitted = trainer(net, method)
    history = fitted.fit(loader(ds, batch_size, quotas={"a": half, "b": half}), loader(val, batch_size, length="all"), epochs=2)
    return state(net), history.to_dict()


class Interrupt(Exception):
    """Raised by :class:`StopAt` to kill a run after a mid-epoch checkpoint."""


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer, step, info):
        if step == self.step and info["stepped"]:
            raise Interrupt


def train_resumable(out: Path, *, stop_at: int | None) -> dict[str, torch.Tensor]:
    """Round robin with uw for two epochs, a checkpoint every 2 steps; with ``stop_at``, killed after that
    step and resumed from the last checkpoint by fresh objects."""
    ds, net = dataset(), model()
    callbacks = [StopAt(stop_at)] if stop_at is not None else []
    run = trainer(net, "uw", out_dir=out, checkpoint_every=2, callbacks=callbacks)
    try:
        run.fit(loader(ds, 4), epochs=2)
    except Interrupt:
        ds, net = dataset(), model()
        trainer(net, "uw", out_dir=out, checkpoint_every=2).fit(loader(ds, 4), epochs=2, resume="last")
    return state(net)


def refusal(loader: DataLoader, tasks: list[str]) -> str:
    """The error of fitting on ``loader`` (every rank must raise it, none may hang)."""
    try:
        hn.Trainer(model(), tasks=tasks, progress=False, tensorboard=False).fit(loader, epochs=1)
    except ValueError as error:
        return str(error)
    return "no error"


def worker(out: Path) -> None:
    """One rank of the two-process run: every scenario, results to ``out/rank<r>.pt``."""
    rank = hn.distributed.rank()
    ds = dataset()
    own = task_batches(ds, "a" if rank == 0 else "b")  # rank 0 has only task a, rank 1 only task b
    results = {
        "seen": train_all_once(4),
        "mix": {method: train_mix(method, own) for method in ("ew", "pcgrad")},
        "quotas": train_quotas("pcgrad", 4),
        "uninterrupted": train_resumable(out / "straight", stop_at=None),
        "resumed": train_resumable(out / "killed", stop_at=3),
        # Training only task b: rank 1 has it, rank 0 has nothing to train on.
        "empty rank": refusal(DataLoader(ds, batch_sampler=own, collate_fn=collate), ["b"]),
        "unsharded": refusal(loader(ds, 4, num_replicas=1, rank=0), ["a", "b"]),
    }
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, one_thread_module) -> list[dict]:
    out = tmp_path_factory.mktemp("api")
    result = torchrun(__file__, str(out), cwd=out)
    assert_clean_exit(result)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_thread_module():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_ranks_see_one_process_epoch_between_them(ranks):
    single = train_all_once(8)
    per_epoch = len(single) // 2
    assert len(single) == 2 * per_epoch == 12 and all(len(r["seen"]) == len(single) for r in ranks)
    for step, batch in enumerate(single):
        first, second = ranks[0]["seen"][step], ranks[1]["seen"][step]
        assert first + second == batch  # rank r holds the r-th slice of the global batch
        assert len(first) == len(second)  # the short last batch of b is split evenly: 2 and 2
    for epoch in range(2):
        seen = [i for r in ranks for batch in r["seen"][epoch * per_epoch : (epoch + 1) * per_epoch] for i in batch]
        assert sorted(seen) == list(range(N_A)) + list(range(100, 100 + N_B))  # every sample once, none twice
    assert single[:per_epoch] != single[per_epoch:]  # set_epoch: a new order every epoch


@pytest.mark.parametrize("method", ["ew", "pcgrad"])
def test_rank_dependent_task_mix_trains_like_the_concatenated_batch(ranks, method):
    ds = dataset()
    together = [a + b for a, b in zip(task_batches(ds, "a"), task_batches(ds, "b"))]
    expected = train_mix(method, together)
    assert_same_weights(ranks[0]["mix"][method], ranks[1]["mix"][method], exact=True)
    assert_same_weights(ranks[0]["mix"][method], expected, exact=False)
    assert not torch.equal(expected["heads.b.weight"], model().state_dict()["heads.b.weight"])  # b trained


def test_gradient_method_on_mixed_batches_matches_one_process(ranks):
    expected, history = train_quotas("pcgrad", 8)
    for rank in ranks:
        assert_same_weights(rank["quotas"][0], expected, exact=False)
    # Synchronised metrics and losses: the ranks log what one process logs.
    for got, want in zip(ranks[0]["quotas"][1]["epochs"], history["epochs"]):
        for split in ("train", "val"):
            for task, value in want["losses"][split].items():
                assert got["losses"][split][task] == pytest.approx(value, rel=1e-5)
        for task, scores in want["metrics"]["val"].items():
            assert got["metrics"]["val"][task] == pytest.approx(scores, rel=1e-5)


def test_every_rank_refuses_what_would_hang(ranks):
    for rank in ranks:
        assert "1 of 2 ranks have no labelled sample of a trained task (b)" in rank["empty rank"]
        assert "shards the data over [1] replica(s), but 2 processes train" in rank["unsharded"]


def test_a_killed_two_process_run_resumes_exactly(ranks):
    for rank in ranks:
        assert_same_weights(rank["resumed"], rank["uninterrupted"], exact=True)
    assert_same_weights(ranks[0]["resumed"], ranks[1]["resumed"], exact=True)


# ----------------------------------------------------------------------------- the CLI under torchrun


def write_config(folder: Path) -> Path:
    """A small two-dataset config: npz features, round robin, uncertainty weighting, Adam, 2 epochs."""
    rng = np.random.default_rng(0)
    for name, n in (("a", 32), ("b", 32), ("val_a", 16), ("val_b", 16)):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        y = rng.integers(0, 3, n) if name.endswith("a") else rng.normal(size=n).astype(np.float32)
        np.savez(folder / f"{name}.npz", x=x, y=y)
    def source(name: str) -> dict[str, str]:
        return {"source": "npz", "path": f"{name}.npz", "inputs": "x", "labels": "y"}

    config = {
        "seed": 0,
        "tasks": {"a": {"kind": "multiclass", "num_classes": 3}, "b": {"kind": "regression"}},
        "data": {"train": {"a": source("a"), "b": source("b")}, "val": {"a": source("val_a"), "b": source("val_b")}},
        "sampler": {"batch_size": 8, "schedule": "round_robin"},
        "model": {"backbone": {"name": "mlp", "hidden": [16]}},
        "balancer": {"name": "uw"},
        "trainer": {"epochs": 2, "lr": 0.01, "progress": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_cli(config: Path, out: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``torchrun ... --no-python hydranet train CONFIG`` on 2 processes of half the batch each."""
    return torchrun(
        "--no-python", *hydranet_command(), "train", str(config), "--out", out, "--quiet",
        "--set", "sampler.batch_size=4", *options, cwd=config.parent,
    )


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """The config's folder, with ``one/`` (one process) and ``two_0/`` (two processes) trained."""
    folder = tmp_path_factory.mktemp("cli")
    config = write_config(folder)
    assert cli_main(["train", str(config), "--out", str(folder / "one"), "--quiet"]) == 0
    result = train_cli(config, "two_0")
    assert_clean_exit(result)
    assert result.stdout.count("# hydranet report") == 1  # the summary, printed by rank 0 only
    return folder


def test_hydranet_train_under_torchrun_matches_one_process(cli_run):
    expected = weights(cli_run / "one" / "last.pt")
    assert_same_weights(weights(cli_run / "two_0" / "last.pt"), expected, exact=False)
    rows = (cli_run / "two_0" / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows)) == len((cli_run / "one" / "metrics.csv").read_text().splitlines())  # one writer
    assert (cli_run / "two_0" / "summary.md").is_file()


def test_hydranet_train_resumes_a_two_process_run_and_every_run_exits_cleanly(cli_run):
    """Two more launches (three with the fixture's), each of which must exit with 0: one epoch, then a
    resume to the second, which must end exactly where the uninterrupted run did."""
    config = cli_run / "config.yaml"
    assert_clean_exit(train_cli(config, "resumed", "--set", "trainer.epochs=1"))
    assert torch.load(cli_run / "resumed" / "last.pt", weights_only=True)["progress"]["epoch"] == 1
    assert_clean_exit(train_cli(config, "resumed", "--resume", "last"))
    assert_same_weights(weights(cli_run / "resumed" / "last.pt"), weights(cli_run / "two_0" / "last.pt"), exact=True)


def test_other_commands_refuse_torchrun(cli_run, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli_main(["inspect", str(cli_run / "config.yaml")]) == 2
    assert "without torchrun" in capsys.readouterr().err


def test_outside_torchrun_the_process_group_is_a_no_op():
    with hn.distributed.process_group() as process:
        assert (process.rank, process.world_size, process.backend) == (0, 1, None)
        assert process.is_main and not hn.distributed.is_distributed()
        assert hn.distributed.on_main(lambda: 7) == 7
        assert hn.distributed.sum_by_key({"x": 1.5}) == {"x": 1.5}


if __name__ == "__main__":
    with hn.distributed.process_group():
        worker(Path(sys.argv[1]))
