"""hydranet.lightning: MultiTaskModule trains like hydranet.Trainer, alone and under Lightning's DDP.

Every comparison trains the same seeded model on the same batches twice, once with ``hn.Trainer`` and
once with ``lightning.Trainer``; the weights must agree to float tolerance. The two-process test runs
this file as a script (``python tests/test_lightning.py OUT``): Lightning's launcher starts the second
process itself, as it does for a user's ``python train.py``.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")

import hydranet as hn  # noqa: E402
from hydranet.data import MultiTaskDataset, MultiTaskStream, TaskBatchSampler, collate  # noqa: E402
from hydranet.lightning import MultiTaskModule, check_trainer  # noqa: E402
from hydranet.models import MLP, HydraNet  # noqa: E402
from hydranet.train import Step  # noqa: E402

TASKS = [hn.Task("a", "multiclass", num_classes=3), hn.Task("b", "regression")]
N_A, N_B = 24, 20  # with 8 samples a step: a in 3 full steps, b in 2 and a short one of 4
LAUNCH_TIMEOUT = 240  # seconds: a hang of the process group fails the test instead of stalling it


# ----------------------------------------------------------------------------------- builders


def dataset(seed: int = 0) -> MultiTaskDataset:
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(N_A, 5, generator=g), torch.randn(N_B, 5, generator=g)
    ya, yb = torch.randint(0, 3, (N_A,), generator=g), torch.randn(N_B, generator=g)
    return MultiTaskDataset({"a": TensorDataset(xa, ya), "b": TensorDataset(xb, yb)}, tasks=TASKS)


def model() -> HydraNet:
    torch.manual_seed(0)
    return HydraNet(MLP(5, hidden=(8,)), TASKS)


def loader(ds: MultiTaskDataset, batch_size: int, **options) -> DataLoader:
    return DataLoader(ds, batch_sampler=TaskBatchSampler(ds, batch_size=batch_size, seed=0, **options), collate_fn=collate)


def lightning_trainer(epochs: int, **options) -> pl.Trainer:
    settings = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    settings.update(options)
    return pl.Trainer(max_epochs=epochs, **settings)


def hn_trainer(net: HydraNet, method: str, **options) -> hn.Trainer:
    return hn.Trainer(net, balancer=method, optimizer="sgd", lr=0.05, progress=False, tensorboard=False, **options)


def state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(autouse=True)
def quiet_and_single_threaded():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        # Lightning's advice for small CPU runs (workers, logging intervals): not what is tested here
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------- the same training


# (method, sampler options, epochs): one task per batch and mixed batches; dwa needs 3 epochs to leave
# its equal weights, and upgrad mixed batches to aggregate two rows.
CASES = [
    ("ew", {}, 2),
    ("uw", {}, 2),
    ("dwa", {"quotas": {"a": 4, "b": 4}}, 3),
    ("upgrad", {"quotas": {"a": 4, "b": 4}}, 2),
    ("mgda", {"quotas": {"a": 4, "b": 4}}, 2),
]


@pytest.mark.parametrize(("method", "sampler", "epochs"), CASES)
def test_lightning_trains_the_same_weights_as_the_hydranet_trainer(method, sampler, epochs):
    expected_net = model()
    fitted = hn_trainer(expected_net, method)
    history = fitted.fit(loader(dataset(), 8, **sampler), loader(dataset(1), 8, length="all"), epochs=epochs)

    net = model()
    module = MultiTaskModule(net, balancer=method, optimizer="sgd", lr=0.05)
    trainer = lightning_trainer(epochs)
    trainer.fit(module, loader(dataset(), 8, **sampler), loader(dataset(1), 8, length="all"))

    assert module.automatic_optimization == (method in ("ew", "uw", "dwa"))  # gradient methods: manual
    assert trainer.global_step == fitted.global_step
    assert_same_weights(state(net), state(expected_net))
    if method == "uw":  # the balancer's own parameters are trained too
        torch.testing.assert_close(module.balancer.method.log_vars, fitted.balancer.method.log_vars)
    # the epoch means, validation losses and metrics logged are the trainer's history
    last = history.epochs[-1]
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for task, value in last.losses["train"].items():
        assert logged[f"train/{task}/loss"] == pytest.approx(value, rel=1e-5)
    for task, value in last.losses["val"].items():
        assert logged[f"val/{task}/loss"] == pytest.approx(value, rel=1e-5)
    for task, scores in last.metrics["val"].items():
        for metric, value in scores.items():
            assert logged[f"val/{task}/{metric}"] == pytest.approx(value, rel=1e-5)
    for task, value in last.weights.items():
        assert logged[f"train/{task}/weight"] == pytest.approx(value, rel=1e-5)


def test_a_stream_trains_the_same_under_both_trainers():
    def sources():
        g = torch.Generator().manual_seed(0)
        a = [(torch.randn(5, generator=g), int(torch.randint(0, 3, (), generator=g))) for _ in range(24)]
        b = [(torch.randn(5, generator=g), float(torch.randn((), generator=g))) for _ in range(16)]
        return {"a": a, "b": b}

    def stream():
        return DataLoader(MultiTaskStream(sources(), batch_size=4, stop=8, shuffle=8, seed=0), batch_size=None)

    expected = model()
    hn_trainer(expected, "upgrad").fit(stream(), epochs=2)
    net = model()
    trainer = lightning_trainer(2)
    trainer.fit(MultiTaskModule(net, balancer="upgrad", optimizer="sgd", lr=0.05), stream())
    assert trainer.global_step == 16
    assert_same_weights(state(net), state(expected))


def test_a_hugging_face_dataset_trains_the_same_under_both_trainers():
    datasets = pytest.importorskip("datasets", reason="the hf extra is not installed")
    from hydranet.data.readers import read_hf

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g)
    table = datasets.Dataset.from_dict(
        {
            **{f"f{i}": x[:, i].tolist() for i in range(5)},
            "a": torch.randint(0, 3, (20,), generator=g).tolist(),
            "b": [None if i % 4 == 0 else float(v) for i, v in enumerate(torch.randn(20, generator=g))],
        },
        features=datasets.Features({
            **{f"f{i}": datasets.Value("float32") for i in range(5)},
            "a": datasets.ClassLabel(names=["x", "y", "z"]),
            "b": datasets.Value("float32"),
        }),
    )
    ds = read_hf(table, input=[f"f{i}" for i in range(5)], tasks=["a", "b"])

    def run(fit):
        torch.manual_seed(0)
        net = HydraNet(MLP(5, hidden=(8,)), ds.tasks)
        fit(net, DataLoader(ds, batch_sampler=TaskBatchSampler(ds, batch_size=4, seed=0), collate_fn=collate))
        return state(net)

    expected = run(lambda net, data: hn_trainer(net, "upgrad").fit(data, epochs=2))
    actual = run(lambda net, data: lightning_trainer(2).fit(
        MultiTaskModule(net, balancer="upgrad", optimizer="sgd", lr=0.05), data
    ))
    assert_same_weights(actual, expected)


def test_gradient_accumulation_of_a_loss_weighting_is_that_of_the_hydranet_trainer():
    # 6 batches an epoch (3 of each task, round robin), 2 per optimizer step
    expected = model()
    hn_trainer(expected, "ew", accumulate=2).fit(loader(dataset(), 8), epochs=2)
    net = model()
    trainer = lightning_trainer(2, accumulate_grad_batches=2)
    trainer.fit(MultiTaskModule(net, balancer="ew", optimizer="sgd", lr=0.05), loader(dataset(), 8))
    assert trainer.global_step == 6
    assert_same_weights(state(net), state(expected))


@pytest.mark.parametrize("method", ["ew", "upgrad"])
def test_bf16_mixed_precision_trains_on_cpu(method):
    net = model()
    before = state(net)
    dtypes = set()
    net.backbone.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    trainer = lightning_trainer(1, precision="bf16-mixed")
    trainer.fit(MultiTaskModule(net, balancer=method, optimizer="sgd", lr=0.05), loader(dataset(), 8))
    after = state(net)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(after["backbone.1.0.weight"], before["backbone.1.0.weight"])
    assert math.isfinite(float(trainer.callback_metrics["train/a/loss"]))
    assert dtypes == {torch.bfloat16}  # the backbone ran under autocast


def test_loss_weightings_return_the_objective_and_gradient_methods_write_the_gradient():
    net = model()
    batch = next(iter(loader(dataset(), 8, quotas={"a": 4, "b": 4})))
    step = Step(net, net.tasks, hn.balancing.make("uw", TASKS))
    out = step(batch, backward=False)
    assert all(p.grad is None for p in net.parameters())  # no backward pass was run
    # uw for a classification and a regression task (Kendall et al.): sum_t a_t exp(-s_t) L_t + s_t / 2, s = 0
    assert float(out.objective.detach()) == pytest.approx(float(out.losses["a"] + 0.5 * out.losses["b"]), rel=1e-6)
    with pytest.raises(ValueError, match="gradient method"):
        Step(net, net.tasks, hn.balancing.make("upgrad", TASKS))(batch, backward=False)


# ------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("method", ["dwa", "uw"])
def test_a_checkpoint_restores_the_balancer_and_resuming_equals_the_uninterrupted_run(method, tmp_path):
    # dwa's weights at epoch 3 come from the loss history of epochs 1 and 2 (saved after epoch 1); uw's
    # log-variances are parameters of the balancer, not of the model
    straight = model()
    lightning_trainer(3).fit(MultiTaskModule(straight, balancer=method, optimizer="sgd", lr=0.05), loader(dataset(), 8))

    first = MultiTaskModule(model(), balancer=method, optimizer="sgd", lr=0.05)
    trainer = lightning_trainer(1)
    trainer.fit(first, loader(dataset(), 8))
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["hydranet"]
    assert saved["balancer"]["method"] == method and saved["tasks"] == ["a", "b"]

    loaded = MultiTaskModule.load_from_checkpoint(path, model=model(), balancer=method, optimizer="sgd", lr=0.05)
    for key, value in first.balancer.state_dict()["state"].items():
        torch.testing.assert_close(loaded.balancer.state_dict()["state"][key], value)

    resumed = model()
    lightning_trainer(3).fit(
        MultiTaskModule(resumed, balancer=method, optimizer="sgd", lr=0.05), loader(dataset(), 8), ckpt_path=path
    )
    assert_same_weights(state(resumed), state(straight))


def test_a_checkpoint_of_another_balancer_or_module_is_refused(tmp_path):
    trainer = lightning_trainer(1)
    trainer.fit(MultiTaskModule(model(), balancer="dwa", optimizer="sgd", lr=0.05), loader(dataset(), 8))
    path = tmp_path / "dwa.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match="'dwa'"):
        MultiTaskModule.load_from_checkpoint(path, model=model(), balancer="uw")
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["hydranet"]
    with pytest.raises(ValueError, match="not written by MultiTaskModule"):
        MultiTaskModule(model()).on_load_checkpoint(checkpoint)


# ------------------------------------------------------------------------------ settings


def test_settings_are_checked_at_construction():
    with pytest.raises(TypeError, match="HydraNet contract"):
        MultiTaskModule(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not one of the model's tasks"):
        MultiTaskModule(model(), tasks=["c"])
    with pytest.raises(ValueError, match="Unknown balancing method"):
        MultiTaskModule(model(), balancer="upgrade")
    with pytest.raises(ValueError, match="scheduler_interval"):
        MultiTaskModule(model(), scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1), scheduler_interval="batch")
    with pytest.raises(ValueError, match="grad_clip"):
        MultiTaskModule(model(), grad_clip=0)


def test_the_trainer_settings_that_would_be_wrong_are_refused():
    upgrad = hn.balancing.make("upgrad", TASKS)
    ddp = pl.strategies.DDPStrategy()

    def trainer(**fields):
        values = dict(world_size=2, strategy=ddp, precision="32-true",
                      _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))
        values.update(fields)
        return SimpleNamespace(**values)

    check_trainer(trainer(), upgrad)
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        check_trainer(trainer(_accelerator_connector=SimpleNamespace(use_distributed_sampler=True)), upgrad)
    with pytest.raises(ValueError, match="DDP strategy"):
        check_trainer(trainer(strategy=pl.strategies.SingleDeviceStrategy("cpu")), upgrad)
    with pytest.raises(ValueError, match="bf16-mixed"):
        check_trainer(trainer(world_size=1, precision="16-mixed"), upgrad)
    check_trainer(trainer(world_size=1, precision="16-mixed"), hn.balancing.make("ew", TASKS))


def test_a_scheduler_steps_per_epoch_under_both_optimizations():
    for method in ("ew", "upgrad"):
        module = MultiTaskModule(
            model(), balancer=method, optimizer="sgd", lr=0.1,
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5),
        )
        lightning_trainer(2).fit(module, loader(dataset(), 8))
        assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.025), method


def test_grad_clip_bounds_the_update_as_in_the_hydranet_trainer():
    expected = model()
    hn_trainer(expected, "upgrad", grad_clip=0.01).fit(loader(dataset(), 8, quotas={"a": 4, "b": 4}), epochs=1)
    net = model()
    trainer = lightning_trainer(1)
    trainer.fit(MultiTaskModule(net, balancer="upgrad", optimizer="sgd", lr=0.05, grad_clip=0.01),
                loader(dataset(), 8, quotas={"a": 4, "b": 4}))
    assert_same_weights(state(net), state(expected))
    assert float(trainer.callback_metrics["train/grad_norm"]) > 0.01  # the norm before clipping


def test_predict_gives_probabilities_of_every_task():
    module = MultiTaskModule(model())
    x = torch.randn(6, 5)
    out = lightning_trainer(1).predict(module, DataLoader(TensorDataset(x), batch_size=3))
    probabilities = {t: torch.cat([o[t] for o in out]) for t in ("a", "b")}
    torch.testing.assert_close(probabilities["a"], torch.softmax(module.model(x)["a"], dim=-1))
    torch.testing.assert_close(probabilities["b"], module.model(x)["b"])


# --------------------------------------------------------------------------- the docs page


def test_the_ecosystem_page_lightning_section_runs_as_written(tmp_path, monkeypatch):
    page = (Path(__file__).parents[1] / "docs" / "ecosystem.md").read_text()
    section = page.split("## PyTorch Lightning", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(chunk.split("```", 1)[0] for chunk in section.split("```python\n")[1:])
    assert "MultiTaskModule" in code and "use_distributed_sampler=False" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/ecosystem.md", "exec"), {})


# ------------------------------------------------------------------- two processes (DDP)


class Data(pl.LightningDataModule):
    """Loaders built by Lightning when it asks for them: after the process group started, so that the
    samplers take the rank and world size from it."""

    def __init__(self, train, val=None) -> None:
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return self.train()

    def val_dataloader(self) -> DataLoader:
        return self.val() if self.val is not None else []


def ddp_fit(method: str, data: Data, epochs: int) -> tuple[dict, dict]:
    """One Lightning DDP fit (2 CPU processes, gloo); the weights and the logged values of this rank."""
    net = model()
    trainer = lightning_trainer(epochs, strategy="ddp", devices=2, use_distributed_sampler=False)
    trainer.fit(MultiTaskModule(net, balancer=method, optimizer="sgd", lr=0.05), datamodule=data)
    return state(net), {k: float(v) for k, v in trainer.callback_metrics.items()}


def rank_batches(ds: MultiTaskDataset, task: str) -> list[list[int]]:
    """Three batches of 4 samples of ``task`` (dataset indices)."""
    indices = ds.task_indices(task).tolist()
    return [indices[i : i + 4] for i in range(0, 12, 4)]


def worker(out: Path) -> None:
    """Both ranks: each scenario under strategy='ddp'; results to ``out/rank<r>.pt``."""
    torch.set_num_threads(1)
    results = {}
    # a gradient method on mixed batches (2 + 2 samples per rank), validated on sharded batches
    quotas = Data(lambda: loader(dataset(), 4, quotas={"a": 2, "b": 2}), lambda: loader(dataset(1), 4, length="all"))
    results["upgrad"] = ddp_fit("upgrad", quotas, 2)
    # a loss weighting, one task per batch: the heads of the other task get DDP's zero term
    results["uw"] = ddp_fit("uw", Data(lambda: loader(dataset(), 4)), 2)
    # rank 0 has only task a, rank 1 only task b: averaged like the concatenated batch
    rank = torch.distributed.get_rank()
    own = rank_batches(dataset(), "a" if rank == 0 else "b")
    for method in ("ew", "upgrad"):
        mix = Data(lambda: DataLoader(dataset(), batch_sampler=own, collate_fn=collate))
        results[f"mix {method}"] = ddp_fit(method, mix, 1)
    # a sampler built before the process group shards over one replica: every rank refuses it
    unsharded = loader(dataset(), 4, num_replicas=1, rank=0)
    try:
        ddp_fit("ew", Data(lambda: unsharded), 1)
        results["unsharded"] = "no error"
    except ValueError as error:
        results["unsharded"] = str(error)
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("lightning_ddp")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    command = [sys.executable, str(Path(__file__).resolve()), str(out)]
    with subprocess.Popen(
        command, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            _, err = process.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, err = process.communicate()
            pytest.fail(f"the two-process Lightning run did not finish in {LAUNCH_TIMEOUT} s (hung):\n{err[-4000:]}")
    assert process.returncode == 0, f"the two-process Lightning run exited with {process.returncode}:\n{err[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
@pytest.mark.xdist_group("lightning_ddp")
def test_two_processes_under_lightning_ddp_train_like_one_process_on_the_concatenated_batch(ranks):
    # one process, hn.Trainer, on the global batches: rank r holds the r-th slice of each
    expected = {}
    net = model()
    history = hn_trainer(net, "upgrad").fit(
        loader(dataset(), 8, quotas={"a": 4, "b": 4}), loader(dataset(1), 8, length="all"), epochs=2
    )
    expected["upgrad"] = state(net)
    net = model()
    hn_trainer(net, "uw").fit(loader(dataset(), 8), epochs=2)
    expected["uw"] = state(net)
    together = [a + b for a, b in zip(rank_batches(dataset(), "a"), rank_batches(dataset(), "b"))]
    for method in ("ew", "upgrad"):
        net = model()
        hn_trainer(net, method).fit(DataLoader(dataset(), batch_sampler=together, collate_fn=collate), epochs=1)
        expected[f"mix {method}"] = state(net)

    for name, weights in expected.items():
        assert_same_weights(ranks[0][name][0], ranks[1][name][0])  # the ranks stay identical
        assert_same_weights(ranks[0][name][0], weights)
    assert not torch.equal(expected["mix ew"]["heads.b.weight"], state(model())["heads.b.weight"])  # b trained

    # validation losses and metrics are synchronised: every rank logs what one process measures
    last = history.epochs[-1]
    for rank in ranks:
        logged = rank["upgrad"][1]
        for task, scores in last.metrics["val"].items():
            for metric, value in scores.items():
                assert logged[f"val/{task}/{metric}"] == pytest.approx(value, rel=1e-5)
        for task, value in last.losses["val"].items():
            assert logged[f"val/{task}/loss"] == pytest.approx(value, rel=1e-5)
        for task, value in last.losses["train"].items():
            assert logged[f"train/{task}/loss"] == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group("lightning_ddp")
def test_every_rank_refuses_a_sampler_built_before_the_process_group(ranks):
    for rank in ranks:
        assert "shards the data over [1] replica(s), but 2 processes train" in rank["unsharded"]


if __name__ == "__main__":  # one rank of the two-process run (Lightning starts the other)
    warnings.filterwarnings("ignore")
    worker(Path(sys.argv[1]))
