import json
import re
from pathlib import Path

import pytest

from hydranet.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARTICLE = str(ROOT / "examples" / "configs" / "article000.yaml")


def test_inspect_alternates_tasks_and_balances_the_rare_class(capsys):
    assert main(["inspect", ARTICLE, "--batches", "6"]) == 0
    out = capsys.readouterr().out
    assert "65 samples, 2 task(s)" in out
    batch_lines = [line for line in out.splitlines() if re.match(r"\s+\d+: \[", line)]
    assert len(batch_lines) == 6
    tasks = [re.search(r"\[8 (\w+)\]", line).group(1) for line in batch_lines]
    assert tasks == ["ones", "fives"] * 3
    sampled = re.search(r"fives \[binary\].*?sampled: minus_five: (\d+) .*?five: (\d+)", out, re.S)
    rare, common = map(int, sampled.groups())
    assert 0.6 < rare / common < 1.6  # close to 1:1 instead of 1:10


def test_inspect_without_balancing_keeps_the_imbalance(capsys):
    assert main(["inspect", ARTICLE, "--set", "sampler.balance=null"]) == 0
    out = capsys.readouterr().out
    rare, common = map(int, re.search(r"fives \[binary\].*?sampled: minus_five: (\d+) .*?five: (\d+)", out, re.S).groups())
    assert rare / common < 0.2


def test_config_errors_exit_with_2_and_name_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(ARTICLE).read_text().replace("schedule: round_robin", "shedule: round_robin"))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sampler.shedule" in err and "schedule" in err


def test_missing_file_and_no_command(capsys):
    assert main(["inspect", "does-not-exist.yaml"]) == 2
    assert main([]) == 2


def test_help_everywhere(capsys):
    for command in ([], ["demo"], ["train"], ["inspect"], ["evaluate"], ["predict"], ["bench"]):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--help"])
        assert stop.value.code == 0
    assert "usage: hydranet" in capsys.readouterr().out


def test_bench_quick_prints_ratios(capsys):
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"sampler: .* -> [\d.]+x faster", out)
    assert re.search(r"loader: .* -> [\d.]+x", out)
    assert out.count("the plain summed-loss backward") == 6


@pytest.mark.slow
def test_demo_end_to_end_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "1", "--train-size", "3000", "--batches", "100", "--quiet"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["left"]["accuracy"] > 0.3 and metrics["tasks"]["right"]["accuracy"] > 0.25  # chance: 0.1
    assert metrics["delta_m"] is not None
    for name in ("summary.md", "loss.png", "metrics.png", "confusion_left.png"):
        assert (out / name).is_file()
    assert "Δm" in capsys.readouterr().out


def test_parsing_imports_neither_torch_nor_the_library():
    """``--help``, ``--version`` and argument errors answer before torch is imported (checked in a fresh
    interpreter: this one has torch loaded already)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hydranet.cli.main import main\n"
        "for argv in (['--help'], ['--version'], ['train'], ['demo', '--epochs', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code in (0, 2), (argv, stop.code)\n"
        "heavy = [m for m in ('torch', 'numpy', 'hydranet.train', 'hydranet.data') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_version_is_the_package_version(capsys):
    import hydranet

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == hydranet.__version__


def test_version_is_argparse_version_action():
    import argparse

    from hydranet.cli.main import build_parser

    (action,) = [a for a in build_parser()._actions if "--version" in a.option_strings]
    assert isinstance(action, argparse._VersionAction)
