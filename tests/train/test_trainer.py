import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.train import Callback
from hydranet.data import Batch, collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler
from hydranet.losses import MultiTaskLoss
from hydranet.metrics import delta_m
from hydranet.train.loaders import TaskView
from hydranet.models import MLP, HydraNet
from hydranet.train import (
    EarlyStopping,
    NonFiniteLossError,
    Trainer,
    is_main_process,
    load_checkpoint,
    save_checkpoint,
)

TASKS = [
    hn.Task("reg", "regression"),
    hn.Task("cls", "multiclass", num_classes=3),
    hn.Task("bin", "binary"),
]


def features(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, x[:, :2].sum(1), (x[:, 2] > 0).long() + (x[:, 3] > 0).long(), (x[:, 4] > 0).long()


def shared_data(n=96, seed=0):
    """One dataset, three label columns."""
    x, reg, cls, binary = features(n, seed)
    return MultiTaskDataset.shared(TensorDataset(x, reg, cls, binary), tasks=TASKS)


def split_data(n=64, seed=0):
    """One dataset per task (one task per batch)."""
    x, reg, cls, binary = features(3 * n, seed)
    parts = {"reg": (x[:n], reg[:n]), "cls": (x[n : 2 * n], cls[n : 2 * n]), "bin": (x[2 * n :], binary[2 * n :])}
    return MultiTaskDataset({t: TensorDataset(*v) for t, v in parts.items()}, tasks=TASKS)


def model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return HydraNet(MLP(6, hidden=(16,), dropout=dropout), TASKS)


def loader(ds, batch_size=16, workers=0, **sampler_options):
    sampler = TaskBatchSampler(ds, batch_size=batch_size, seed=0, **sampler_options)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)


def val_loader(ds, batch_size=32):
    return loader(ds, batch_size, schedule="joint" if ds.is_shared else "round_robin", length="all")


def trainer(net=None, **options):
    options.setdefault("progress", False)
    options.setdefault("tensorboard", False)
    return Trainer(net if net is not None else model(), **options)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
def test_training_lowers_both_task_losses():
    train, val = loader(shared_data(192)), val_loader(shared_data(96, seed=1))
    t = trainer(lr=1e-2)
    before = t.evaluate(val)
    history = t.fit(train, val, epochs=6)
    after = t.evaluate(val)
    assert after["reg"]["loss"] < 0.5 * before["reg"]["loss"]
    assert after["cls"]["loss"] < 0.8 * before["cls"]["loss"]
    assert len(history) == 6 and history.at(5).losses["val"]["reg"] == pytest.approx(after["reg"]["loss"])
    assert set(history.at(0).losses["train"]) == {"reg", "cls", "bin"}
    assert history.at(0).weights == {"reg": 1.0, "cls": 1.0, "bin": 1.0}  # ew


def test_evaluate_gives_metrics_and_the_loss_over_all_labelled_samples():
    ds = shared_data(80, seed=2)
    t = trainer()
    result = t.evaluate(val_loader(ds, batch_size=32))  # batches of 32, 32 and 16: a weighted mean
    assert set(result) == {"reg", "cls", "bin"}
    assert set(result["cls"]) == {"accuracy", "f1", "loss"} and set(result["reg"]) == {"mae", "rmse", "loss"}
    x, reg, cls, binary = features(80, 2)
    t.model.eval()
    with torch.no_grad():
        out = t.model(x)
    expected = MultiTaskLoss(TASKS)(out, {"reg": reg, "cls": cls, "bin": binary}, {k: torch.ones(80, dtype=torch.bool) for k in ("reg", "cls", "bin")})
    for task in expected:
        assert result[task]["loss"] == pytest.approx(float(expected[task]), rel=1e-5)
    assert result["cls"]["accuracy"] == pytest.approx(float((out["cls"].argmax(1) == cls).float().mean()))
    assert result["reg"]["mae"] == pytest.approx(float((out["reg"][:, 0] - reg).abs().mean()), rel=1e-5)


def test_predict_shapes_probabilities_logits_and_indices():
    ds = shared_data(40, seed=3)
    t = trainer()
    probs, index = t.predict(val_loader(ds, batch_size=16), return_indices=True)
    logits = t.predict(val_loader(ds, batch_size=16), return_logits=True)
    assert probs["cls"].shape == (40, 3) and probs["bin"].shape == (40, 1) and probs["reg"].shape == (40, 1)
    assert torch.allclose(probs["cls"].sum(1), torch.ones(40))
    assert torch.allclose(probs["cls"], logits["cls"].softmax(1)) and torch.allclose(probs["bin"], logits["bin"].sigmoid())
    assert torch.equal(probs["reg"], logits["reg"])
    assert sorted(index.tolist()) == list(range(40))  # the joint sampler shuffles: indices say which row is which
    x = features(40, 3)[0]
    with torch.no_grad():
        direct = t.model(x[index])
    assert torch.allclose(direct["cls"].softmax(1), probs["cls"], atol=1e-6)
    bare = t.predict([x[:7], x[7:]])  # plain input tensors work too
    assert bare["cls"].shape == (40, 3)


# ---------------------------------------------------------------------------------- early stopping


def test_early_stopping_counts_patience_exactly():
    stop = EarlyStopping("max", patience=2, min_delta=0.05)
    sequence = [0.50, 0.60, 0.64, 0.70, 0.72, 0.74]  # +0.04 and +0.02 / +0.04 do not beat min_delta
    improved = [stop.update(v, e) for e, v in enumerate(sequence[:3])]
    assert improved == [True, True, False] and stop.wait == 1 and not stop.stopped
    assert stop.update(0.70, 3) and stop.best == 0.70 and stop.wait == 0  # 0.70 > 0.60 + 0.05
    assert not stop.update(0.72, 4) and not stop.stopped
    assert not stop.update(0.74, 5) and stop.stopped and stop.best_epoch == 3
    low = EarlyStopping("min", patience=1)
    assert low.update(1.0, 0) and not low.update(float("nan"), 1) and low.stopped


class Scripted(Callback):
    """Replaces the validation accuracy of task cls by a scripted sequence."""

    def __init__(self, values):
        self.values = values

    def on_validation_end(self, trainer, metrics):
        metrics["cls"]["accuracy"] = self.values[trainer.epoch]


def test_fit_stops_after_patience_epochs_without_improvement(tmp_path):
    values = [0.5, 0.6, 0.6, 0.59, 0.9, 0.9]
    t = trainer(monitor="val/cls/accuracy", patience=2, out_dir=tmp_path, callbacks=[Scripted(values)])
    history = t.fit(loader(shared_data(32)), val_loader(shared_data(32, 1)), epochs=6)
    assert [log.epoch for log in history] == [0, 1, 2, 3]  # epochs 2 and 3 do not improve: stop
    assert t.best_epoch == 1 and t.best_score == 0.6 and t.early_stopping.mode == "max"
    assert [log.metrics["val"]["cls"]["accuracy"] for log in history] == values[:4]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["progress"]["epoch"] == 2 and best["early_stopping"]["best_epoch"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["epoch"] == 4


def test_mode_auto_follows_the_metric_direction():
    assert trainer(monitor="val/reg/mae").early_stopping.mode == "min"
    assert trainer(monitor="val/cls/f1").early_stopping.mode == "max"
    assert trainer(monitor="val/cls/loss").early_stopping.mode == "min"
    assert trainer(baselines={"cls": 0.5}).early_stopping.mode == "max"  # Δm
    assert trainer(monitor="val/reg/mae", mode="max").early_stopping.mode == "max"


# ------------------------------------------------------------------------------------------ resume


class Interrupt(Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_batch_end(self, trainer, step, info):
        if step == self.at_step:
            raise KeyboardInterrupt


def run(out_dir, *, workers=0, interrupt=None, resume=None, balancer="uw"):
    """Two epochs of 6 steps (12 batches of 8, accumulate=2), with dropout, DWA-free UW, cosine lr."""
    t = trainer(
        model(dropout=0.2),
        balancer=balancer,
        scheduler="cosine",
        accumulate=2,
        grad_clip=5.0,
        out_dir=out_dir,
        checkpoint_every=2,
        callbacks=[Interrupt(interrupt)] if interrupt else [],
        seed=7,
    )
    train = loader(shared_data(96), batch_size=8, workers=workers)
    val = val_loader(shared_data(32, 1))
    if interrupt:
        with pytest.raises(KeyboardInterrupt):
            t.fit(train, val, epochs=2)
        return t
    t.fit(train, val, epochs=2, resume=resume)
    return t, t.evaluate(val)


def assert_resume_matches(tmp_path, workers):
    full, full_scores = run(tmp_path / "full", workers=workers)
    run(tmp_path / "cut", workers=workers, interrupt=9)  # checkpoints at steps 2, 4, 6 (epoch end), 8
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["global_step"] == 8 and saved["progress"]["epoch"] == 1 and saved["progress"]["position"] == 4
    assert saved["progress"]["sampler"] == {"seed": 0, "epoch": 1, "position": 4}
    resumed, resumed_scores = run(tmp_path / "cut", workers=workers, resume="last")
    assert_same_weights(full.model, resumed.model)
    assert torch.equal(full.balancer.method.log_vars, resumed.balancer.method.log_vars)
    strip = lambda h: [{**e.to_dict(), "extra": {k: v for k, v in e.extra.items() if k != "seconds"}} for e in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    assert full_scores == resumed_scores
    assert full.global_step == resumed.global_step == 12
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_equals_the_uninterrupted_run(tmp_path):
    assert_resume_matches(tmp_path, workers=0)


@pytest.mark.slow
def test_resume_with_loader_workers_equals_the_uninterrupted_run(tmp_path):
    assert_resume_matches(tmp_path, workers=2)


@pytest.mark.slow
def test_resume_with_a_shuffling_loader_without_sampler_state(tmp_path):
    """DataLoader(shuffle=True): the permutation comes from the global generator when the loader starts;
    the trainer replays that start and skips the consumed batches."""

    full = trainer(model(dropout=0.2), out_dir=tmp_path / "full", checkpoint_every=3, seed=11)
    full.fit(DataLoader(shared_data(64), batch_size=8, shuffle=True, collate_fn=collate), epochs=2)
    cut = trainer(model(dropout=0.2), out_dir=tmp_path / "cut", checkpoint_every=3, seed=11, callbacks=[Interrupt(13)])
    with pytest.raises(KeyboardInterrupt):
        cut.fit(DataLoader(shared_data(64), batch_size=8, shuffle=True, collate_fn=collate), epochs=2)
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["progress"]["position"] == 4 and saved["progress"]["sampler"] is None  # step 12 = epoch 1, batch 4
    resumed = trainer(model(dropout=0.2, seed=3), out_dir=tmp_path / "cut", checkpoint_every=3, seed=11)
    resumed.fit(DataLoader(shared_data(64), batch_size=8, shuffle=True, collate_fn=collate), epochs=2, resume="last")
    assert_same_weights(full.model, resumed.model)


@pytest.mark.slow
def test_resume_from_an_epoch_end_and_the_csv_has_no_duplicates(tmp_path):
    class StopAtSecondEpoch(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 1:
                raise KeyboardInterrupt

    full, _ = run(tmp_path / "full", balancer="ew")
    t = trainer(model(dropout=0.2), scheduler="cosine", accumulate=2, grad_clip=5.0, out_dir=tmp_path / "cut", seed=7,
                callbacks=[StopAtSecondEpoch()])
    train, val = loader(shared_data(96), batch_size=8), val_loader(shared_data(32, 1))
    with pytest.raises(KeyboardInterrupt):
        t.fit(train, val, epochs=2)
    again = trainer(model(dropout=0.2, seed=1), scheduler="cosine", accumulate=2, grad_clip=5.0, out_dir=tmp_path / "cut", seed=7)
    again.fit(train, val, epochs=2, resume=tmp_path / "cut" / "last.pt")
    assert_same_weights(full.model, again.model)
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    epochs = [r.split(",")[0] for r in rows[1:]]
    assert epochs.count("0") == epochs.count("1") > 0  # epoch 0 written once, not again on resume


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "hydranet.checkpoint/1", "value": torch.arange(3)}, path)
    real_save = torch.save

    def dying_save(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "hydranet.checkpoint/1", "value": torch.arange(5)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_a_save_killed_during_training_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    t = trainer(out_dir=tmp_path)
    train, val = loader(shared_data(32)), val_loader(shared_data(32, 1))
    t.fit(train, val, epochs=1)
    before = (tmp_path / "last.pt").read_bytes()

    def dying_save(obj, handle, *args, **kwargs):
        handle.write(b"\0" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        t.fit(train, val, epochs=2, resume="last")
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["epoch"] == 1


def test_checkpoint_contents_and_task_mismatch(tmp_path):
    t = trainer(out_dir=tmp_path, balancer="uw", scheduler="step")
    t.fit(loader(shared_data(32)), val_loader(shared_data(32, 1)), epochs=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # plain tensors and containers only
    for key in ("model", "optimizer", "scheduler", "balancer", "history", "early_stopping", "tasks", "config", "progress"):
        assert key in state
    assert state["hydranet_version"] == hn.__version__ and state["tasks"]["cls"]["num_classes"] == 3
    assert set(state["progress"]["rng"]) == {"python", "numpy", "torch", "cuda"}
    other = HydraNet(MLP(6, hidden=(16,)), [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=4)])
    with pytest.raises(ValueError, match=r"trained for tasks \[reg \(regression\), cls \(multiclass\), bin"):
        Trainer(other, progress=False).load_checkpoint(tmp_path / "last.pt")
    fresh = trainer(model(seed=5))
    fresh.load_checkpoint(tmp_path / "best.pt")
    assert_same_weights(fresh.model, t.model)
    assert len(fresh.history) == 0
    full = trainer(model(seed=5), balancer="uw")
    full.load_checkpoint(tmp_path / "last.pt", weights_only=False)  # also history, balancer, best epoch
    assert full.history.to_dict() == t.history.to_dict() and full.best_epoch == 0
    assert torch.equal(full.balancer.method.log_vars, t.balancer.method.log_vars)
    with pytest.raises(ValueError, match="not a hydranet checkpoint"):
        torch.save(t.model.state_dict(), tmp_path / "weights.pt")
        load_checkpoint(tmp_path / "weights.pt")


# ----------------------------------------------------------------------------- the optimizer step


def fixed_batches(n, size, seed=0):
    """Batches holding every task on every row (equal labelled counts in every batch)."""
    x, reg, cls, binary = features(n, seed)
    ones = torch.ones(size, dtype=torch.bool)
    return [
        Batch(x[i : i + size], {"reg": reg[i : i + size], "cls": cls[i : i + size], "bin": binary[i : i + size]},
              {"reg": ones, "cls": ones, "bin": ones})
        for i in range(0, n, size)
    ]


def test_accumulating_two_batches_of_4_equals_one_batch_of_8():
    small, big = trainer(optimizer={"name": "sgd", "momentum": 0.0}, lr=0.1, accumulate=2), trainer(
        optimizer={"name": "sgd", "momentum": 0.0}, lr=0.1
    )
    small.fit(fixed_batches(16, 4), epochs=1)  # 4 micro-batches, 2 steps
    big.fit(fixed_batches(16, 8), epochs=1)  # 2 batches, 2 steps
    assert small.global_step == big.global_step == 2
    for a, b in zip(small.model.parameters(), big.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    unequal = trainer(optimizer={"name": "sgd", "momentum": 0.0}, lr=0.1, accumulate=1)
    unequal.fit(fixed_batches(16, 4), epochs=1)  # 4 steps: a different trajectory
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(unequal.model.parameters(), big.model.parameters()))


class Record(Callback):
    def __init__(self):
        self.events, self.infos = [], []

    def on_fit_start(self, trainer):
        self.events.append("fit_start")

    def on_epoch_start(self, trainer, epoch):
        self.events.append(f"epoch_start {epoch}")

    def on_batch_end(self, trainer, step, info):
        self.events.append(f"batch {info['batch']} step {step}")
        self.infos.append(info)

    def on_validation_end(self, trainer, metrics):
        self.events.append("validation")

    def on_epoch_end(self, trainer, epoch, log):
        self.events.append(f"epoch_end {epoch}")
        assert trainer.history.epochs[-1] is log

    def on_fit_end(self, trainer):
        self.events.append("fit_end")


def test_gradient_clipping_bounds_the_update():
    record = Record()
    t = trainer(optimizer={"name": "sgd", "momentum": 0.0}, lr=1.0, grad_clip=0.01, callbacks=[record])
    before = [p.detach().clone() for p in t.model.parameters()]
    t.fit(fixed_batches(8, 8), epochs=1)
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(t.model.parameters(), before)])
    assert record.infos[0]["grad_norm"] > 0.01  # the raw norm, before clipping
    assert float(change.norm()) == pytest.approx(0.01, rel=1e-4)  # lr * clipped norm
    assert t.history.at(0).extra["grad_norm"] == pytest.approx(record.infos[0]["grad_norm"])


@pytest.mark.parametrize(
    ("balancer", "options"), [("pcgrad", {}), ("upgrad", {"jacobian": "representation"}), ("dwa", {})]
)
def test_balancers_plug_in_and_their_diagnostics_are_recorded(balancer, options):
    t = trainer(balancer=balancer, balancer_options=options)
    history = t.fit(loader(shared_data(48)), val_loader(shared_data(16, 1)), epochs=2)
    log = history.at(1)
    assert set(log.losses["train"]) == {"reg", "cls", "bin"}
    if balancer == "dwa":
        assert log.cosines == {} and set(log.weights) == {"reg", "cls", "bin"}
    else:  # gradient methods: per-task gradient norms and pairwise cosines, averaged over the epoch
        assert set(log.grad_norms) == {"reg", "cls", "bin"} and log.cosines["bin"].keys() == {"cls", "reg"}
        assert all(-1 <= v <= 1 for row in log.cosines.values() for v in row.values())


def test_uncertainty_weights_are_their_own_parameter_group_without_weight_decay():
    t = trainer(balancer="uw", weight_decay=0.1)
    groups = t.optimizer.param_groups
    assert len(groups) == 2 and groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["params"][0] is t.balancer.method.log_vars
    t.fit(loader(shared_data(32)), epochs=1)
    assert not torch.equal(t.balancer.method.log_vars, torch.zeros(3))  # it learns


class EpochLoader:
    """Two fixed batches per epoch, with a sampler-like set_epoch."""

    def __init__(self):
        self.epochs = []
        self.batch_sampler = self

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return 2

    def __iter__(self):
        return iter(fixed_batches(8, 4))


class DivergeAtSecondEpoch(Callback):
    def on_epoch_start(self, trainer, epoch):
        if epoch == 1:
            with torch.no_grad():
                trainer.model.heads["bin"].weight.fill_(math.nan)


def test_a_non_finite_loss_stops_with_the_task_and_step_and_keeps_the_best_checkpoint(tmp_path):
    data = EpochLoader()
    t = trainer(out_dir=tmp_path, monitor="train/loss", callbacks=[DivergeAtSecondEpoch()])
    # the weights of 'bin' are NaN: the guard names the outputs (inputs and targets are finite) and the file
    # that holds the last good state
    with pytest.raises(
        NonFiniteLossError,
        match=r"task 'bin' is nan at epoch 1, batch 1 .*outputs for 'bin' are non-finite.*learning rate.*grad_clip"
        r".*last good state is in .*last.pt \(after epoch 0, optimizer step 2\)",
    ):
        t.fit(data, epochs=3)
    assert data.epochs == [0, 1]  # set_epoch reached the loader's sampler every epoch
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["progress"]["epoch"] == 1 and torch.isfinite(best["model"]["heads.bin.weight"]).all()
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["epoch"] == 1


def test_bf16_autocast_runs_on_cpu():
    seen = []
    t = trainer(amp="bf16")
    first_linear = next(m for m in t.model.backbone.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    history = t.fit(loader(shared_data(32)), val_loader(shared_data(32, 1)), epochs=1)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(math.isfinite(v) for v in history.at(0).losses["train"].values())


def test_fp16_on_cpu_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="amp='fp16' needs a CUDA device.*amp='bf16'"):
        trainer(amp="fp16", device="cpu")


def test_fp16_loss_scaling_leaves_the_balancer_and_the_update_unscaled():
    """The fp16 path, run on the CPU with a CPU GradScaler (the trainer itself allows fp16 on CUDA only):
    the scale enters at the model outputs and is removed before the step, also for UW's own weights."""
    sgd = {"name": "sgd", "momentum": 0.0}
    reference = trainer(balancer="uw", optimizer=sgd, lr=0.05)
    reference.fit(loader(shared_data(64)), epochs=2)
    scaled = trainer(balancer="uw", optimizer=sgd, lr=0.05)
    scaled.amp, scaled.scaler = "fp16", torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled.fit(loader(shared_data(64)), epochs=2)
    assert scaled.scaler.get_scale() == 2.0**10  # no overflow, no skipped step
    assert torch.allclose(scaled.balancer.method.log_vars, reference.balancer.method.log_vars, atol=1e-3)
    for a, b in zip(scaled.model.parameters(), reference.model.parameters()):
        assert torch.allclose(a, b, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_with_grad_scaler_on_cuda():
    t = trainer(amp="fp16", balancer="uw", device="cuda")
    history = t.fit(loader(shared_data(64)), val_loader(shared_data(32, 1)), epochs=2)
    assert history.at(1).losses["val"]["reg"] < history.at(0).losses["train"]["reg"] * 2
    assert t.scaler is not None and t.scaler.get_scale() > 0


# ------------------------------------------------------------------------------- callbacks, logs


def test_callbacks_are_called_in_order_and_can_stop_training():
    record = Record()

    class StopAfterFirst(Callback):
        def on_epoch_end(self, trainer, epoch, log):
            trainer.should_stop = True

    t = trainer(accumulate=2, callbacks=[record, StopAfterFirst()])
    t.fit(fixed_batches(12, 4), fixed_batches(8, 8), epochs=3)
    assert record.events == [
        "fit_start",
        "epoch_start 0",
        "batch 1 step 0",
        "batch 2 step 1",
        "batch 3 step 2",  # the last batch ends a short accumulation group
        "validation",
        "epoch_end 0",
        "fit_end",
    ]
    assert [i["stepped"] for i in record.infos] == [False, True, True]
    assert set(record.infos[0]["losses"]) == {"reg", "cls", "bin"}


def test_logs_and_report(tmp_path):
    t = trainer(out_dir=tmp_path, baselines={"reg": 2.0, "cls": 0.4, "bin": {"accuracy": 0.5}}, tensorboard=True)
    t.fit(loader(shared_data(48)), val_loader(shared_data(32, 1)), epochs=2)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,split,task,metric,value" and any(",val,cls,accuracy," in r for r in rows)
    assert any(p.name.startswith("events") for p in (tmp_path / "tensorboard").iterdir())
    log = t.history.at(1)
    expected = delta_m(log.metrics["val"], {"reg": {"mae": 2.0}, "cls": {"accuracy": 0.4}, "bin": {"accuracy": 0.5}})
    assert log.extra["val/delta_m"] == pytest.approx(expected) and t.monitor == "val/delta_m"
    report = t.report(tmp_path / "report", plots=False)
    assert report.delta_m == pytest.approx(t.history.at(t.best_epoch).extra["val/delta_m"])
    assert "Δm" in report.summary.read_text()


# ---------------------------------------------------------------------------------------- baselines


@pytest.mark.slow
def test_trained_baselines_give_per_task_scores_and_delta_m(tmp_path):
    ds, val = split_data(48), split_data(24, seed=1)
    train_loader, validation = loader(ds, batch_size=8), val_loader(val, batch_size=8)
    t = trainer(baselines="train", lr=1e-2, out_dir=tmp_path)
    t.fit(train_loader, validation, epochs=2)
    assert set(t.baselines) == {"reg", "cls", "bin"}
    assert t.baselines["reg"].keys() == {"mae"} and t.baselines["cls"].keys() == {"accuracy"} and t.baselines["bin"].keys() == {"f1"}
    for task, metric in (("reg", "mae"), ("cls", "accuracy"), ("bin", "f1")):
        history = t.baseline_histories[task]
        scores = [log.metrics["val"][task][metric] for log in history]
        best = min(scores) if metric == "mae" else max(scores)
        assert t.baselines[task][metric] == best and len(history) == 2
        assert set(history.at(0).losses["train"]) == {task}  # only its own task
    # one task per batch: a baseline trains on its task's batches only (6 of the 18 per epoch)
    assert len(train_loader) == 18 and len(TaskView(train_loader, "cls")) == 6
    for log in t.history:
        assert log.extra["val/delta_m"] == pytest.approx(delta_m(log.metrics["val"], t.baselines))
    assert load_checkpoint(tmp_path / "last.pt")["baselines"] == t.baselines
    report = t.report(tmp_path, test_loader=validation, plots=False)
    assert report.delta_m is not None


def test_a_baseline_sees_only_its_task():
    one_per_batch = loader(split_data(32), batch_size=8)  # 4 batches per task and epoch
    view = TaskView(one_per_batch, "cls")
    batches = list(view)
    assert len(view) == len(batches) == 4 and all(list(b.masks) == ["cls"] for b in batches)
    mixed = loader(split_data(32), batch_size=8, quotas={"reg": 2, "cls": 4, "bin": 2})
    rows = [b for b in TaskView(mixed, "cls")]
    assert len(rows) == len(mixed) and all(len(b) == 4 and b.inputs.shape == (4, 6) for b in rows)
    assert view.batch_sampler is one_per_batch.batch_sampler  # set_epoch reaches the real sampler


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"accumulate": 0}, "accumulate must be an integer >= 1"),
        ({"grad_clip": -1.0}, "grad_clip must be a finite number > 0"),
        ({"monitor": "val/cls/mae"}, "task 'cls' has no val metric 'mae'"),
        ({"monitor": "loss"}, "monitor='loss' is not valid"),
        ({"optimizer": "adamw2"}, "Did you mean 'adamw'"),
        ({"scheduler": "cosin"}, "Did you mean 'cosine'"),
        ({"checkpoint": "all"}, "checkpoint='all' is not valid"),
        ({"checkpoint_every": 10}, "set out_dir="),
        ({"baselines": {"age": 1.0}}, "baselines name task 'age'"),
        ({"baselines": {"cls": 0.0}}, "finite, non-zero"),
        ({"tasks": ["cls", "age"]}, "Task 'age' is not one of the model's tasks"),
        ({"balancer": "pcgrd"}, "Did you mean 'pcgrad'"),
        ({"amp": "fp8"}, "amp='fp8' is not valid"),
        ({"callbacks": [object()]}, "subclass Callback"),
    ],
)
def test_construction_errors_say_what_to_do(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        trainer(**options)


def test_fit_without_validation_monitors_the_training_loss_and_refuses_val_monitors():
    t = trainer()
    t.fit(loader(shared_data(32)), epochs=1)
    assert t.monitor == "train/loss" and t.best_epoch == 0
    with pytest.raises(ValueError, match="needs validation scores"):
        trainer(monitor="val/loss").fit(loader(shared_data(32)), epochs=1)


@pytest.mark.parametrize(
    ("scheduler", "check"),
    [
        ("cosine", lambda lr: lr == pytest.approx(0.0, abs=1e-12)),  # annealed to 0 over all steps
        ({"name": "step", "step_size": 1, "gamma": 0.5}, lambda lr: lr == pytest.approx(1e-3 / 4)),
        ("exponential", lambda lr: lr == pytest.approx(1e-3 * 0.81)),
        ({"name": "plateau", "patience": 0, "factor": 0.5}, lambda lr: lr <= 1e-3),
    ],
)
def test_named_schedulers(scheduler, check):
    t = trainer(scheduler=scheduler)
    t.fit(loader(shared_data(32)), val_loader(shared_data(16, 1)), epochs=2)
    assert check(t.optimizer.param_groups[0]["lr"])


def test_scheduler_intervals():
    assert trainer(scheduler={"name": "cosine", "interval": "epoch"}).scheduler_interval == "epoch"
    assert trainer(scheduler="cosine").scheduler_interval == "step"
    with pytest.raises(ValueError, match="'plateau' every epoch"):
        trainer(scheduler={"name": "plateau", "interval": "step"})
    t = trainer(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e))  # a factory: per epoch
    t.fit(fixed_batches(16, 4), epochs=3)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 8)
    assert [log.extra["lr"] for log in t.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_onecycle_steps_once_per_optimizer_step():
    t = trainer(scheduler="onecycle", accumulate=2)
    t.fit(fixed_batches(32, 4), epochs=2)  # 8 batches, 4 steps per epoch
    assert isinstance(t.scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert t.scheduler.total_steps == 8 and t.scheduler.last_epoch == 8 and t.global_step == 8


def test_helpers():
    assert is_main_process()
    state = trainer().state_dict()
    assert state["format"] == "hydranet.checkpoint/1" and state["config"]["balancer"] == "ew"
