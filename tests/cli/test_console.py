"""The command line's console: thread choice from the load, one-line warnings, rank 0 only."""

import argparse
import subprocess
import sys
import warnings

import pytest

from hydranet.cli import _console, _threads
from hydranet.cli.main import build_parser


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("cpus", "load", "expected"),
    [(2, 0.2, 2), (2, 0.6, 1), (2, 1.4, 1), (2, 5.0, 1), (16, 3.4, 13), (4, 0.0, 4)],
)
def test_threads_are_the_cpus_the_load_leaves_free(cpus, load, expected):
    # threads = max(1, cpus - round(load)), by hand for each row.
    choice = _threads.choose(cpus=cpus, load=load)
    assert choice.threads == expected
    assert f"load {load:.1f}" in choice.describe() and f"of {cpus} CPUs" in choice.describe()


@pytest.mark.usefixtures("clean_env")
def test_threads_are_shared_by_the_processes_of_a_node(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    choice = _threads.choose(cpus=8, load=2.0)
    assert choice.threads == 3  # (8 - 2) // 2
    assert "per process (2 processes)" in choice.describe()


@pytest.mark.usefixtures("clean_env")
def test_an_explicit_count_wins(monkeypatch):
    assert _threads.choose(3, cpus=2, load=9.0).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert _threads.choose(cpus=2, load=9.0).threads == 5
    assert _threads.choose(2, cpus=2, load=9.0).reason == "--threads"
    with pytest.raises(ValueError, match="--threads"):
        _threads.choose(0)


def test_threads_flag_is_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["demo", "--threads", "0"])
    assert stop.value.code == 2
    assert "positive number of threads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "x.yaml", "--quiet", "--verbose"])  # one or the other


def _warn_after_setup(rank: str) -> str:
    code = (
        "import argparse, warnings\n"
        "from hydranet.cli import _console\n"
        "_console.setup(argparse.Namespace(threads=1))\n"
        "warnings.warn('the batch is larger than the dataset')\n"
    )
    env = {"RANK": rank, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    return done.stderr


def test_warnings_are_one_line_and_only_on_rank_0():
    assert _warn_after_setup("0") == "hydranet: warning: the batch is larger than the dataset\n"
    assert _warn_after_setup("1") == ""


@pytest.mark.usefixtures("clean_env")
def test_setup_prints_the_choice_for_commands_that_train(capsys, monkeypatch):
    monkeypatch.setattr(_threads, "apply", lambda choice: None)  # keep this process's threads
    saved = warnings.showwarning
    try:
        _console.setup(argparse.Namespace(threads=1, quiet=False))
        assert capsys.readouterr().out == "threads: 1 of %d CPUs (--threads; --threads N to choose)\n" % _threads._cpus()
        _console.setup(argparse.Namespace(threads=1, quiet=True))
        _console.setup(argparse.Namespace(threads=1))  # inspect, evaluate, ...: no line
        assert capsys.readouterr().out == ""
    finally:
        warnings.showwarning = saved
