"""The one error surface: each fault a user can cause is one line on stderr with the documented exit code,
no traceback (unless --debug); an unexpected error says so, with its own code."""

import errno
import os
import sys

import numpy as np
import pytest
import torch

from hydranet.cli import main
from hydranet.cli._codes import EXIT_FAILURE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, EXIT_USAGE
from hydranet.cli.errors import classify, one_line

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """
seed: 0
tasks:
  size: {kind: regression}
  kind: {kind: binary}
data:
  train: {source: npz, path: train.npz, inputs: x}
  val: {source: npz, path: val.npz, inputs: x}
sampler: {batch_size: 16}
model: {backbone: {name: mlp, hidden: [8]}}
trainer: {epochs: 1, lr: 0.01, progress: false}
"""


@pytest.fixture
def config(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 16)):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        np.savez(tmp_path / f"{split}.npz", x=x, size=x[:, 0].copy(), kind=(x[:, 1] > 0).astype(np.int64))
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def trained(config, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def run(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def one_error_line(err):
    # warnings (one line each, "hydranet: warning: ...") are not the error
    lines = [line for line in err.splitlines() if line.strip() and ": warning:" not in line]
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    return lines[0]


def test_truncated_checkpoint(config, trained, tmp_path, capsys):
    data = (trained / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])  # before: OSError [Errno 22] escaped
    code, err = run(capsys, "evaluate", config, tmp_path / "cut.pt", "--split", "val")
    line = one_error_line(err)
    assert code == EXIT_FAILURE and "cut.pt" in line


def test_a_yaml_file_as_checkpoint_and_as_resume(config, tmp_path, capsys):
    code, err = run(capsys, "evaluate", config, config, "--split", "val")  # before: IndexError escaped
    assert code == EXIT_FAILURE and "config.yaml" in one_error_line(err)
    code, err = run(capsys, "train", config, "--out", tmp_path / "r", "--resume", config, "--quiet")
    assert code == EXIT_FAILURE and "config.yaml" in one_error_line(err)


def test_resuming_with_another_optimizer_names_the_key(config, trained, capsys):
    # before: KeyError: 'momentum' escaped
    code, err = run(
        capsys, "train", config, "--out", trained, "--resume", "last", "--set", "trainer.optimizer=sgd", "--quiet"
    )
    line = one_error_line(err)
    assert code == EXIT_USAGE and "trainer.optimizer" in line and "adamw" in line.lower()


def test_corrupt_npz(config, tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + b"garbage" * 20)  # before: BadZipFile escaped
    code, err = run(capsys, "train", config, "--out", tmp_path / "r", "--set", "data.train.path=bad.npz", "--quiet")
    line = one_error_line(err)
    assert code == EXIT_FAILURE and "data.train.path" in line and "bad.npz" in line


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_manifest(tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "rows.csv"
    manifest.write_text("a,b,label\n1,2,x\n3,4,y\n")
    manifest.chmod(0)  # before: PermissionError escaped
    if os.geteuid() == 0:  # root reads any file: raise what the system raises for everyone else
        from hydranet.data import readers

        def refused(path, **options):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(readers, "read_manifest", refused)
    (tmp_path / "c.yaml").write_text(
        "data:\n  train: {source: csv, path: rows.csv, feature_columns: [a, b], tasks: {label: multiclass}}\n"
    )
    try:
        code, err = run(capsys, "inspect", tmp_path / "c.yaml")
    finally:
        manifest.chmod(0o600)
    line = one_error_line(err)
    assert code == EXIT_IO and "rows.csv" in line and "permission" in line.lower()


def test_a_non_finite_loss(config, tmp_path, capsys, monkeypatch):
    from hydranet.train import step

    def diverge(*args, **kwargs):
        raise step.NonFiniteLossError("The loss of task 'size' is nan: lower the learning rate (lr=0.01).")

    monkeypatch.setattr(step.Step, "__call__", diverge, raising=False)
    monkeypatch.setattr("hydranet.train.Trainer.fit", diverge)
    code, err = run(capsys, "train", config, "--out", tmp_path / "r", "--quiet")
    line = one_error_line(err)
    assert code == EXIT_FAILURE and "nan" in line and "trainer.lr: 0.01" in line  # the config key, not lr=


@pytest.mark.parametrize(
    "fault",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4544 vs 4432"),
    ],
    ids=["ENOSPC", "inline_container"],
)
def test_a_full_disk_while_saving(config, tmp_path, capsys, monkeypatch, fault):
    def full(*args, **kwargs):
        raise fault

    monkeypatch.setattr(torch, "save", full)
    code, err = run(capsys, "train", config, "--out", tmp_path / "r", "--quiet")
    line = one_error_line(err)
    assert code == EXIT_IO and ("disk" in line or "space" in line), line


def test_ctrl_c_says_how_to_continue(config, tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hydranet.train.Trainer.fit", interrupt)
    code, err = run(capsys, "train", config, "--out", tmp_path / "r", "--quiet")
    assert code == EXIT_INTERRUPTED
    assert one_error_line(err) == "hydranet train: interrupted; continue with `--resume last`"


def test_an_unexpected_error_is_not_hidden_and_debug_shows_the_traceback(config, tmp_path, capsys, monkeypatch):
    def bug(*args, **kwargs):
        return {}["missing"]

    monkeypatch.setattr("hydranet.train.Trainer.fit", bug)
    code, err = run(capsys, "train", config, "--out", tmp_path / "r", "--quiet")
    line = one_error_line(err)
    assert code == EXIT_INTERNAL and "KeyError" in line and "--debug" in line
    code, err = run(capsys, "--debug", "train", config, "--out", tmp_path / "r", "--quiet")
    assert code == EXIT_INTERNAL and "Traceback" in err and "KeyError" in err


def test_classification_of_base_classes():
    """A subclass of a mapped class is covered; library classes defined later are found by module."""
    from hydranet.cli.config import ConfigError
    from hydranet.train import errors

    class Later(errors.CheckpointError):  # a subclass nobody mapped by name
        pass

    Later.__module__ = "hydranet.train.future"
    assert classify(Later("x")).code == EXIT_FAILURE
    assert classify(errors.CheckpointWriteError("disk full")).code == EXIT_IO
    assert classify(ConfigError("k")).code == EXIT_USAGE
    assert classify(FileNotFoundError(errno.ENOENT, "No such file or directory", "x.yaml")).code == EXIT_USAGE
    assert classify(PermissionError(errno.EACCES, "Permission denied", "x.csv")).code == EXIT_IO
    assert classify(KeyboardInterrupt(), "evaluate") == (EXIT_INTERRUPTED, "interrupted")
    try:
        raise ValueError("batch_size=0 is too small")  # raised on purpose: a message for the user
    except ValueError as err:
        assert classify(err) == (EXIT_FAILURE, "error: sampler.batch_size: 0 is too small")
    try:
        int("x")  # a failing operation, not a raise: unexpected
    except ValueError as err:
        assert classify(err).code == EXIT_INTERNAL


def test_messages_are_one_line_and_phrased_for_the_config():
    text = "2 unreadable files\n  a.jpg\nFix or remove them, or pass on_error='skip' to leave them out."
    assert one_line(text) == (
        "2 unreadable files a.jpg Fix or remove them, or set `on_error: skip` in the data source to leave them out."
    )
    assert "`verify: true`" in one_line("run with verify=True to check all files up front")


@pytest.mark.parametrize("name", __import__("hydranet.train.errors", fromlist=["x"]).__all__)
def test_every_training_error_class_has_its_code(name):
    """Every class of hydranet.train.errors (and so any subclass added there): the library's message,
    exit 1, or 3 for those that are OSErrors (a checkpoint that could not be written)."""
    from hydranet.train import errors

    cls = getattr(errors, name)
    outcome = classify(cls("the message"))
    assert outcome.code == (EXIT_IO if issubclass(cls, OSError) else EXIT_FAILURE)
    assert outcome.message == "error: the message"
