"""Nothing lost, nothing silent: non-finite updates, damaged checkpoints, full disks, resume mismatches,
the blame of a non-finite loss, divergence warnings and one error base (issue 12)."""

import errno
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

import hydranet as hn
from hydranet.data import Batch
from hydranet.losses import MultiTaskLoss
from hydranet.models import MLP, HydraNet
from hydranet.train import Callback, Step, Trainer, load_checkpoint, save_checkpoint
from hydranet.train.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriteError,
    NonFiniteGradientError,
    NonFiniteLossError,
    NonFiniteStateError,
    TrainingError,
)

TASKS = [hn.Task("reg", "regression"), hn.Task("bin", "binary")]


def batches(n_batches=4, size=4, seed=0, nan_input=None):
    """Fixed batches, every task labelled on every row; ``nan_input=(batch, row)`` puts a NaN in an input."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        x = torch.randn(size, 4, generator=g)
        targets = {"reg": x[:, :2].sum(1), "bin": (x[:, 2] > 0).long()}
        if nan_input is not None and nan_input[0] == b:
            x[nan_input[1], 1] = math.nan
        ones = torch.ones(size, dtype=torch.bool)
        out.append(Batch(x, targets, {"reg": ones, "bin": ones}, indices=torch.arange(b * size, (b + 1) * size)))
    return out


def model(seed=0):
    torch.manual_seed(seed)
    return HydraNet(MLP(4, hidden=(8,)), TASKS)


def trainer(net=None, **options):
    options.setdefault("progress", False)
    options.setdefault("tensorboard", False)
    return Trainer(net if net is not None else model(), **options)


class NaNGradientLoss:
    """The masked losses plus ``sqrt(|0 * output|)``: the value stays finite (the term is 0) but its
    gradient is ``0 * inf = NaN``, as a loss with a singular point gives. Bad on the calls in ``bad``."""

    def __init__(self, bad):
        self.inner, self.bad, self.calls = MultiTaskLoss(TASKS), set(bad), 0

    def __call__(self, outputs, targets, masks):
        losses = dict(self.inner(outputs, targets, masks))
        self.calls += 1
        if self.calls in self.bad:
            losses["reg"] = losses["reg"] + (outputs["reg"] * 0.0).abs().sum().sqrt()
        return losses


def finite(state):
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())


class Snapshots(Callback):
    """The weights and the step info after every batch."""

    def __init__(self):
        self.weights, self.infos = [], []

    def on_batch_end(self, trainer, step, info):
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        self.infos.append(dict(info))


# ------------------------------------------------------------------- 1. never non-finite weights


def test_a_nan_gradient_of_a_finite_loss_is_skipped_counted_and_never_saved(tmp_path):
    snaps = Snapshots()
    t = trainer(loss=NaNGradientLoss(bad={6}), out_dir=tmp_path, checkpoint_every=1, callbacks=[snaps])
    assert t.step.on_nonfinite == "skip"  # the default
    with pytest.warns(RuntimeWarning, match=r"Skipped optimizer step 6 \(epoch 1, batch 2\): the gradient holds NaN.*every task loss is finite"):
        history = t.fit(batches(), epochs=2)
    assert len(history) == 2  # training went on
    # the skipped step left the weights as they were; the others moved them
    for key in snaps.weights[4]:
        assert torch.equal(snaps.weights[5][key], snaps.weights[4][key]), key
    assert not torch.equal(snaps.weights[6]["heads.reg.weight"], snaps.weights[5]["heads.reg.weight"])
    assert [i["skipped"] for i in snaps.infos] == [False] * 5 + [True, False, False]
    assert history.at(1).extra["skipped_steps"] == 1 and "skipped_steps" not in history.at(0).extra
    assert finite(t.model.state_dict())
    assert finite(load_checkpoint(tmp_path / "last.pt")["model"])


def test_the_stop_policy_raises_before_the_update_and_names_the_last_good_checkpoint(tmp_path):
    snaps = Snapshots()
    t = trainer(loss=NaNGradientLoss(bad={7}), out_dir=tmp_path, on_nonfinite="stop", callbacks=[snaps])
    with pytest.raises(NonFiniteGradientError) as info:
        t.fit(batches(), epochs=3)
    message = str(info.value)
    assert "gradient" in message and "optimizer step 7" in message and "epoch 1" in message
    assert f"{tmp_path / 'last.pt'} (after epoch 0, optimizer step 4)" in message
    assert "grad_clip" in message and "learning rate" in message
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["progress"]["epoch"] == 1 and saved["global_step"] == 4 and finite(saved["model"])
    for key, value in t.model.state_dict().items():  # not updated by the bad gradient
        assert torch.equal(value, snaps.weights[-1][key]), key


def test_skips_in_a_row_stop_after_max_skips():
    t = trainer(loss=NaNGradientLoss(bad=range(3, 100)), max_skips=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteGradientError, match=r"3 optimizer steps in a row.*No checkpoint"):
            t.fit(batches(), epochs=3)
    assert t.global_step == 2 + 2 and t.step.skipped_steps == 3  # the third skip raised before counting
    assert finite(t.model.state_dict())


def test_a_skip_between_good_steps_resets_the_count():
    t = trainer(loss=NaNGradientLoss(bad={2, 4, 6}), max_skips=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t.fit(batches(), epochs=2)
    assert t.step.skipped_steps == 3


@pytest.mark.parametrize("grad_clip", [None, 1.0])
@pytest.mark.parametrize("balancer", ["ew", "uw"])
def test_a_skipped_step_leaves_weights_and_optimizer_state_as_they_were(grad_clip, balancer):
    """Step alone: Adam's moments, its step count and the balancer's own parameters (uw) stay too."""
    net = model()
    method = hn.balancing.make(balancer, TASKS)
    optimizer = torch.optim.Adam([*net.parameters(), *method.parameters()], lr=0.01)
    step = Step(net, net.tasks, method, NaNGradientLoss(bad={2}), optimizer=optimizer, grad_clip=grad_clip)
    good, bad = batches(2)
    step(good)
    step.optimizer_step()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    own = [p.detach().clone() for p in method.parameters()]
    moments = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    step(bad)  # finite losses, NaN gradient
    with pytest.warns(RuntimeWarning, match="Skipped optimizer step 1"):
        step.optimizer_step()
    assert step.last_skipped and step.skipped_steps == step.skips_in_a_row == 1
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for p, q in zip(method.parameters(), own):
        assert torch.equal(p.detach(), q)
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, moments[key]), key
    assert all(p.grad is None for p in net.parameters())  # the bad gradient is gone
    step(good)
    step.optimizer_step()
    assert not step.last_skipped and step.skips_in_a_row == 0 and step.skipped_steps == 1


@pytest.mark.parametrize(("options", "match"), [({"on_nonfinite": "skp"}, "on_nonfinite must be one of 'skip', 'stop', got 'skp'. Did you mean 'skip'"),
                                                ({"max_skips": 0}, "max_skips")])
def test_nonfinite_settings_are_checked(options, match):
    with pytest.raises(ValueError, match=match):
        trainer(**options)


class SpoilWeightsAtEpochEnd(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, log):  # runs before the checkpoints are written
        if epoch == self.epoch:
            with torch.no_grad():
                trainer.model.heads["bin"].bias.fill_(math.inf)


def test_a_save_of_non_finite_weights_is_refused_and_the_previous_file_kept(tmp_path):
    t = trainer(out_dir=tmp_path, monitor="train/loss", callbacks=[SpoilWeightsAtEpochEnd(1)])
    with pytest.raises(NonFiniteStateError) as info:
        t.fit(batches(), epochs=3)
    message = str(info.value)
    assert "heads.bin.bias" in message and "not written" in message
    assert f"{tmp_path / 'last.pt'} (after epoch 0, optimizer step 4)" in message
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["progress"]["epoch"] == 1 and finite(saved["model"])
    assert finite(load_checkpoint(tmp_path / "best.pt")["model"])


class NaNValidation:
    """Validation batches whose inputs hold a NaN from the second pass on."""

    def __init__(self):
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(batches(2, seed=3, nan_input=(0, 1) if self.passes > 1 else None))


def test_a_save_after_a_non_finite_validation_loss_is_refused(tmp_path):
    t = trainer(out_dir=tmp_path)
    with pytest.raises(NonFiniteStateError, match=r"validation loss of task 'reg' is nan.*validation data"):
        t.fit(batches(), NaNValidation(), epochs=3)
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["epoch"] == 1


# --------------------------------------------------------------------- 2. verified checkpoints


@pytest.fixture
def run_folder(tmp_path):
    t = trainer(out_dir=tmp_path)
    t.fit(batches(2), epochs=1)
    return tmp_path


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "cut footer":
        path.write_bytes(bytes(data[:-10]))
    elif how == "flipped":
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        path.write_bytes(bytes(data))
    elif how == "yaml":
        path.write_text("model:\n  backbone: mlp\ntrain:\n  epochs: 3\n")
    elif how == "random":
        path.write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes())
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other program":
        torch.save({"epoch": 3, "net": {"w": torch.zeros(2)}}, path)


@pytest.mark.parametrize("how", ["truncated", "cut footer", "flipped", "yaml", "random", "empty", "other program"])
def test_a_damaged_or_foreign_checkpoint_is_one_clear_error(run_folder, how):
    path = run_folder / "last.pt"
    damage(path, how)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and str(run_folder / "best.pt") in message  # the file and what to use
    if how == "flipped":
        assert "content hash" in message
    with pytest.raises(CheckpointError, match="best.pt"):  # resuming too
        trainer(out_dir=run_folder).fit(batches(2), epochs=2, resume="last")


def test_resuming_from_best_after_last_is_damaged(run_folder):
    damage(run_folder / "last.pt", "flipped")
    t = trainer(out_dir=run_folder)
    t.fit(batches(2), epochs=2, resume=run_folder / "best.pt")
    assert len(t.history) == 2


def test_a_checkpoint_still_loads_with_torch_load_and_older_files_without_hash_with_a_warning(run_folder):
    state = torch.load(run_folder / "last.pt", weights_only=True)
    assert state["format"] == "hydranet.checkpoint/1"
    torch.save(state, run_folder / "old.pt")  # as hydranet wrote checkpoints before the hash
    with pytest.warns(UserWarning, match="no content hash.*cannot be verified"):
        old = load_checkpoint(run_folder / "old.pt")
    assert old["global_step"] == state["global_step"]


@pytest.mark.skipif(os.name != "posix", reason="tells live writers by POSIX signals and /proc")
def test_stale_temporary_files_of_killed_saves_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)
        stale = tmp_path / f".last.pt.{dead.pid}.tmp"
        reused = tmp_path / f".best.pt.{os.getpid()}.tmp"  # this pid, but the file is older than this process
        writing = tmp_path / f".last.pt.{live.pid}.tmp"  # a live process writing now
        other = tmp_path / ".notes.txt.1.tmp"  # not a checkpoint's
        for path in (stale, reused, writing, other):
            path.write_bytes(b"\0" * 100)
        os.utime(reused, (0, 0))
        trainer(out_dir=tmp_path).fit(batches(2), epochs=1)
        names = {p.name for p in tmp_path.iterdir()}
        assert stale.name not in names and reused.name not in names
        assert writing.name in names and other.name in names
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------------- 3. full disk


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(run_folder, monkeypatch):
    before = (run_folder / "last.pt").read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # where delayed allocation reports it

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointWriteError, match=rf"disk is full \(.* free in {run_folder}\).*previous last.pt is untouched"):
        trainer(out_dir=run_folder).fit(batches(2), epochs=2, resume="last")
    monkeypatch.undo()
    assert (run_folder / "last.pt").read_bytes() == before
    assert sorted(p.name for p in run_folder.iterdir() if p.name.endswith(".tmp")) == []


def test_a_write_that_fails_inside_torch_save_names_the_limit_not_inline_container(tmp_path):
    """A real failing write: a file-size limit (EFBIG), which torch's zip writer reports as
    ``inline_container.cc ... unexpected pos``."""
    resource = pytest.importorskip("resource")
    if not hasattr(signal, "SIGXFSZ"):
        pytest.skip("no file-size limit signal on this platform")
    path = tmp_path / "last.pt"
    save_checkpoint({"format": "hydranet.checkpoint/1", "value": torch.arange(3)}, path)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old_limit[1]))
    try:
        with pytest.raises(CheckpointWriteError, match="file-size limit") as info:
            save_checkpoint({"format": "hydranet.checkpoint/1", "value": torch.zeros(10_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "inline_container" not in str(info.value) and isinstance(info.value, OSError)
    assert torch.equal(load_checkpoint(path)["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# ------------------------------------------------------------------------------------ 4. resume


def test_resuming_with_another_optimizer_names_both(run_folder):
    t = trainer(out_dir=run_folder, optimizer="sgd")
    with pytest.raises(CheckpointMismatchError, match=r"optimizer AdamW.*configured one is SGD"):
        t.fit(batches(2), epochs=2, resume="last")


def test_resuming_with_another_balancer_is_the_same_error_class(run_folder):
    with pytest.raises(CheckpointMismatchError, match=r"last.pt: .*state of 'ew'.*this balancer is 'dwa'.*Resume with"):
        trainer(out_dir=run_folder, balancer="dwa").fit(batches(2), epochs=2, resume="last")


def test_resuming_keeps_the_checkpoints_learning_rate_and_says_so(run_folder):
    t = trainer(out_dir=run_folder, lr=0.05)
    with pytest.warns(UserWarning, match=r"learning rate of the checkpoint \(lr=0.001.*lr=0.05 is not used"):
        t.fit(batches(2), epochs=2, resume="last")
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same lr: no notice
        trainer(out_dir=run_folder).fit(batches(2), epochs=3, resume="last")


# ------------------------------------------------------------------------ 5. the blame of a NaN


def step_on(b, net=None, loss=None):
    net = net if net is not None else model()
    return Step(net, net.tasks, hn.balancing.make("ew", TASKS), loss, lr=1e-3)(b, epoch=0, position=3)


def test_nan_inputs_are_named_as_inputs_with_the_sample():
    b = batches(1, nan_input=(0, 2))[0]
    with pytest.raises(NonFiniteLossError) as info:
        step_on(b)
    message = str(info.value)
    assert "the inputs hold non-finite values" in message and "sample 2 of the batch (dataset index 2)" in message
    assert "targets" not in message.split("Check")[0]  # not blamed on the targets


def test_nan_targets_are_named_as_the_targets_of_the_task():
    """The built-in losses refuse NaN targets themselves (ValueError naming the row); a loss without
    those checks reaches the guard, which names the targets."""
    b = batches(1)[0]
    b.targets["reg"][3] = math.inf
    with pytest.raises(NonFiniteLossError, match=r"task 'reg' is inf .*the targets of 'reg' hold non-finite values \(sample 3"):
        step_on(b, loss=MultiTaskLoss(TASKS, validate=False))


def test_non_finite_outputs_of_finite_inputs_are_named_as_the_model():
    net = model()
    with torch.no_grad():
        net.heads["bin"].weight.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match=r"task 'bin' is nan .*the model's outputs for 'bin' are non-finite.*inputs and targets are finite"):
        step_on(batches(1)[0], net)


# ----------------------------------------------------------------------------------- 6. divergence


class ExplodingLoss:
    """The losses times ``10 ** (4 * epoch)`` for task 'reg' (a run that diverges, loss 1 -> 1e8)."""

    def __init__(self):
        self.inner, self.epoch = MultiTaskLoss(TASKS), 0

    def __call__(self, outputs, targets, masks):
        losses = dict(self.inner(outputs, targets, masks))
        losses["reg"] = losses["reg"] * 10.0 ** (4 * self.epoch)
        return losses


class SetEpoch(Callback):
    def __init__(self, loss):
        self.loss = loss

    def on_epoch_start(self, trainer, epoch):
        self.loss.epoch = epoch


def test_a_diverging_run_is_warned_once_with_the_task_values_and_fixes():
    loss = ExplodingLoss()
    t = trainer(loss=loss, callbacks=[SetEpoch(loss)], optimizer={"name": "sgd", "momentum": 0.0}, lr=1e-9)
    with pytest.warns(RuntimeWarning) as caught:
        t.fit(batches(), epochs=3)
    diverging = [w for w in caught if "diverging" in str(w.message)]
    assert len(diverging) == 1  # once, although epoch 2 grows further
    message = str(diverging[0].message)
    assert "'reg'" in message and "'bin'" not in message
    assert "lr=1e-09" in message and "grad_clip" in message and "balancer='uw'" in message
    best = t.history.at(0).losses["train"]["reg"]
    assert f"{best:.3g}" in message


def test_a_converging_run_gives_no_divergence_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer().fit(batches(), epochs=3)


# -------------------------------------------------------------------------------- 7. error classes


def test_every_training_error_shares_one_base_and_keeps_its_builtin_base():
    assert issubclass(NonFiniteLossError, FloatingPointError) and issubclass(NonFiniteLossError, TrainingError)
    assert issubclass(NonFiniteGradientError, NonFiniteLossError) and issubclass(NonFiniteStateError, NonFiniteLossError)
    assert issubclass(CheckpointError, ValueError) and issubclass(CheckpointMismatchError, CheckpointError)
    assert issubclass(CheckpointWriteError, OSError) and issubclass(CheckpointWriteError, TrainingError)
    assert hn.train.TrainingError is TrainingError and hn.train.NonFiniteLossError is NonFiniteLossError
    assert str(CheckpointWriteError("disk full")) == "disk full"  # one line, no errno prefix
