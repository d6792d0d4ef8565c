"""What a person sees while a model trains: kept epoch lines, bars in a terminal, plain lines elsewhere."""

import io
import re

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import hydranet as hn
from hydranet.data import collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler
from hydranet.models import MLP, HydraNet
from hydranet.report.history import EpochLog
from hydranet.report.loggers import describe_outputs, format_epoch
from hydranet.train import Progress, Trainer

TASKS = [hn.Task("reg", "regression"), hn.Task("cls", "multiclass", num_classes=3)]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return MultiTaskDataset.shared(TensorDataset(x, x[:, 0] + x[:, 1], (x[:, 2] > 0).long() + (x[:, 3] > 0).long()), tasks=TASKS)


def loaders():
    train, val = data(64, 0), data(32, 1)
    train_loader = DataLoader(train, batch_sampler=TaskBatchSampler(train, batch_size=8, schedule="joint", seed=0), collate_fn=collate)
    val_loader = DataLoader(val, batch_sampler=TaskBatchSampler(val, batch_size=16, schedule="joint", length="all"), collate_fn=collate)
    return train_loader, val_loader


def fit(epochs=3, **options):
    torch.manual_seed(0)
    options.setdefault("tensorboard", False)
    trainer = Trainer(HydraNet(MLP(4, hidden=(8,)), TASKS), lr=0.05, **options)
    trainer.fit(*loaders(), epochs=epochs)
    return trainer


def epoch_lines(text):
    return [line for line in text.splitlines() if re.match(r"epoch \d+/\d+  [\d.]+ s  train loss", line)]


@pytest.mark.usefixtures("one_thread")
def test_plain_lines_when_the_stream_is_not_a_terminal():
    stream = io.StringIO()
    trainer = fit(callbacks=[Progress(stream=stream, every=3)])
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no bar drawing
    lines = epoch_lines(text)
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    # The best-so-far mark follows the monitored value (val/loss, lower is better) of the history.
    val_losses = [sum(log.losses["val"].values()) for log in trainer.history]
    best = [v == min(val_losses[: i + 1]) for i, v in enumerate(val_losses)]
    assert [line.endswith(" *") for line in lines] == best
    for line, log in zip(lines, trainer.history):
        assert f"train loss reg {log.losses['train']['reg']:.4g}  cls {log.losses['train']['cls']:.4g}" in line
        assert f"val reg mae {log.metrics['val']['reg']['mae']:.4g}  cls accuracy" in line
    # 8 batches per epoch, a line every 3 batches (3 and 6; the 8th is the epoch's own line).
    progress = [line for line in text.splitlines() if "batches/s" in line]
    assert [re.search(r"batch (\d+)/8", line).group(1) for line in progress] == ["3", "6"] * 3


@pytest.mark.usefixtures("one_thread")
def test_bars_in_a_terminal_leave_the_epoch_lines():
    stream = Terminal()
    fit(epochs=2, callbacks=[Progress(stream=stream)])
    text = stream.getvalue()
    assert "\r" in text and "batch" in text  # tqdm drew its bars on the stream
    kept = [part.strip() for part in re.split(r"[\r\n]", text)]
    assert len(epoch_lines("\n".join(kept))) == 2
    assert "batches/s" not in text  # the plain lines are for non-terminals only


@pytest.mark.usefixtures("one_thread")
def test_verbose_adds_the_balancer_diagnostics_and_every_metric():
    stream = io.StringIO()
    fit(epochs=1, balancer="uw", callbacks=[Progress(stream=stream, verbose=True)])
    text = stream.getvalue()
    assert re.search(r"cls accuracy [\d.]+ f1 [\d.]+ loss [\d.]+", text)
    assert re.search(r"    balancer: weights reg [\d.]+  cls [\d.]+", text)


@pytest.mark.usefixtures("one_thread")
def test_progress_false_prints_nothing(capsys):
    fit(epochs=1, progress=False)
    assert capsys.readouterr().out == ""


@pytest.mark.usefixtures("one_thread")
def test_default_progress_prints_to_stdout_and_the_outputs_are_listed(capsys, tmp_path):
    fit(epochs=2, out_dir=tmp_path)
    assert len(epoch_lines(capsys.readouterr().out)) == 2
    described = describe_outputs(tmp_path)
    assert str(tmp_path.resolve()) in described
    assert re.search(r"checkpoints: +best\.pt, last\.pt", described)
    assert re.search(r"logs: +metrics\.csv", described)


def test_format_epoch_by_hand():
    log = EpochLog(
        epoch=1,
        losses={"train": {"a": 0.5, "b": 1.25}, "val": {"a": 0.4, "b": 1.0}},
        metrics={"val": {"a": {"accuracy": 0.9, "f1": 0.8}, "b": {"mae": 2.5}}},
        weights={"a": 1.5, "b": 0.5},
        extra={"seconds": 3.25, "val/delta_m": -0.5},
    )
    assert format_epoch(log, epochs=4, monitor="val/delta_m", best=-0.5, best_epoch=1) == [
        "epoch 2/4  3.2 s  train loss a 0.5  b 1.25 | val a accuracy 0.9  b mae 2.5 | Δm -0.50% | best val/delta_m -0.50% *"
    ]
    lines = format_epoch(log, epochs=4, monitor="val/loss", best=1.2, best_epoch=0, verbose=True, label="baseline a: ")
    assert lines == [
        "baseline a: epoch 2/4  3.2 s  train loss a 0.5  b 1.25 | val a accuracy 0.9 f1 0.8 loss 0.4  b mae 2.5 loss 1 "
        "| Δm -0.50% | best val/loss 1.2 (epoch 1)",
        "    balancer: weights a 1.5  b 0.5",
    ]


def test_progress_checks_its_settings():
    with pytest.raises(ValueError, match="interval"):
        Progress(interval=-1)
    with pytest.raises(ValueError, match="every"):
        Progress(every=0)
