import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.data.collate import collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler
from hydranet.models import MLP, HydraNet
from hydranet.train import Callback, Trainer

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]


def data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y_reg = x[:, :2].sum(1)
    y_cls = (x[:, 2] > 0).long() + (x[:, 3] > 0).long()
    return MultiTaskDataset.shared(TensorDataset(x, y_reg, y_cls), tasks=TASKS)


def model(tasks=TASKS):
    torch.manual_seed(0)
    return HydraNet(MLP(6, hidden=(32,), dropout=0.1), tasks)


def loaders(schedule="round_robin"):
    train, val = data(), data(96, seed=1)
    sampler = TaskBatchSampler(train, batch_size=16, schedule=schedule, seed=0)
    return (DataLoader(train, batch_sampler=sampler, collate_fn=collate),
            DataLoader(val, batch_sampler=TaskBatchSampler(val, 32, schedule="joint", length="all"), collate_fn=collate))


def test_training_lowers_the_loss_and_reports_metrics(tmp_path):
    train, val = loaders()
    trainer = Trainer(model(), balancer="uw", lr=1e-2, progress=False, out_dir=tmp_path)
    first = trainer._evaluate(val)[1]
    history = trainer.fit(train, val, epochs=6)
    last = history.at(5).losses["val"]
    assert last["reg"] < 0.5 * first["reg"] and last["cls"] < first["cls"]
    metrics = trainer.evaluate(val)
    assert metrics["cls"]["accuracy"] > 0.6 and "mae" in metrics["reg"]
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file() and (tmp_path / "metrics.csv").is_file()
    predictions = trainer.predict(val)
    assert predictions["cls"].shape == (96, 3) and torch.allclose(predictions["cls"].sum(1), torch.ones(96))


@pytest.mark.parametrize("balancer", ["ew", "pcgrad"])
def test_resume_mid_epoch_equals_the_uninterrupted_run(tmp_path, balancer):
    train, val = loaders()
    full = Trainer(model(), balancer=balancer, progress=False, seed=3)
    full.fit(train, val, epochs=2)

    class Crash(Callback):
        def on_batch_end(self, trainer, step, info):
            if trainer.epoch == 1 and trainer._position == 5:
                raise KeyboardInterrupt

    train, val = loaders()
    first = Trainer(model(), balancer=balancer, progress=False, seed=3, out_dir=tmp_path, checkpoint_every=5, callbacks=[Crash()])
    with pytest.raises(KeyboardInterrupt):
        first.fit(train, val, epochs=2)
    train, val = loaders()
    resumed = Trainer(model(), balancer=balancer, progress=False, seed=3, out_dir=tmp_path)
    resumed.fit(train, val, epochs=2, resume="last")
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert full.history.at(1).metrics == resumed.history.at(1).metrics


def test_early_stopping_counts_patience_exactly():
    train, val = loaders()
    seen = []

    class Script(Callback):
        def on_validation_end(self, trainer, metrics):
            seen.append(trainer.epoch)

    trainer = Trainer(model(), lr=0.0, progress=False, patience=2, monitor="val/cls/accuracy", callbacks=[Script()])
    trainer.fit(train, val, epochs=10)  # lr 0: never improves after the first epoch
    assert seen == [0, 1, 2] and trainer.should_stop and trainer.best_epoch == 0


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train, val = loaders()
    trainer = Trainer(model(), progress=False, out_dir=tmp_path)
    trainer.fit(train, val, epochs=1)
    before = torch.load(tmp_path / "last.pt", weights_only=False)["epoch"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(train, val, epochs=2)
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_nan_loss_names_the_task():
    train_ds = MultiTaskDataset.shared(TensorDataset(torch.full((8, 6), float("inf")), torch.zeros(8), torch.zeros(8, dtype=torch.long)), tasks=TASKS)
    loader = DataLoader(train_ds, batch_sampler=TaskBatchSampler(train_ds, 4, schedule="joint"), collate_fn=collate)
    with pytest.raises(FloatingPointError, match="task 'reg'.*grad_clip"):
        Trainer(model(), progress=False).fit(loader, epochs=1)


def test_accumulation_of_two_halves_equals_one_full_batch():
    x = torch.randn(8, 6)
    batch = collate([(x[i], {"reg": torch.tensor(float(i))}) for i in range(8)])
    halves = [collate([(x[i], {"reg": torch.tensor(float(i))}) for i in range(k, k + 4)]) for k in (0, 4)]
    tasks = TASKS[:1]
    one = Trainer(HydraNet(MLP(6, hidden=(8,)), tasks), optimizer="sgd", lr=0.1, progress=False)
    two = Trainer(HydraNet(MLP(6, hidden=(8,)), tasks), optimizer="sgd", lr=0.1, accumulate=2, progress=False)
    two.model.load_state_dict(one.model.state_dict())
    one._train_step(batch)
    for half in halves:
        two._train_step(half)
    for a, b in zip(one.model.parameters(), two.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_baselines_train_single_task_models_and_give_delta_m(tmp_path):
    train, val = loaders(schedule="joint")
    trainer = Trainer(model(), lr=1e-2, progress=False, baselines="train", model_factory=lambda tasks: model(tasks))
    trainer.fit(train, val, epochs=2)
    assert set(trainer.baselines) == {"reg", "cls"}
    assert "val_delta_m" in trainer.history.at(1).extra
    report = trainer.report(tmp_path / "report", test_loader=val)
    assert report.delta_m is not None and (tmp_path / "report" / "summary.md").is_file()


def test_bf16_autocast_runs_and_bad_settings_fail():
    train, val = loaders()
    Trainer(model(), amp="bf16", progress=False).fit(train, epochs=1)
    with pytest.raises(ValueError, match="fp16' needs a CUDA"):
        Trainer(model(), amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="model_factory"):
        Trainer(model(), baselines="train")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        Trainer(model(), optimizer="lbfgs")
