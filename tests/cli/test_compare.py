"""hydranet compare: the table's numbers from the run results, the paired test, resume, --jobs."""

import json
import math
from pathlib import Path

import pytest

from hydranet.cli import compare, main
from hydranet.cli.compare import _paired_p, _Run, markdown_table, summarize

ROOT = Path(__file__).resolve().parents[2]

TINY = """\
seed: 0
tasks:
  ones: {kind: binary}
  fives: {kind: binary}
data:
  train:
    ones:  {source: inline, samples: [{input: 1.0, label: 1, count: 14}, {input: 1.0, label: 0, count: 6}, {input: -1.0, label: 0, count: 20}]}
    fives: {source: inline, samples: [{input: 5.0, label: 1, count: 20}, {input: -5.0, label: 0, count: 12}, {input: -5.0, label: 1, count: 8}]}
  val:
    ones:  {source: inline, samples: [{input: 1.0, label: 1, count: 4}, {input: -1.0, label: 0, count: 3}, {input: -1.0, label: 1, count: 1}]}
    fives: {source: inline, samples: [{input: 5.0, label: 1, count: 4}, {input: -5.0, label: 0, count: 3}, {input: 5.0, label: 0, count: 1}]}
sampler: {batch_size: 8, schedule: round_robin}
model: {backbone: {name: mlp, hidden: [8]}}
balancer: uw
trainer: {epochs: 2, lr: 0.05, progress: false}
"""


def test_paired_p_matches_the_t_distribution_with_two_degrees_of_freedom():
    # d = a - b = [1, 2, 3]: mean 2, sd 1, t = 2 / (1 / sqrt 3); with 2 degrees of freedom the t CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p is 1 - t / sqrt(2 + t^2).
    t = 2 * math.sqrt(3)
    assert _paired_p([11.0, 12.0, 13.0], [10.0, 10.0, 10.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert _paired_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # no difference at all
    assert _paired_p([2.0, 3.0, 4.0], [1.0, 2.0, 3.0]) == 0.0  # the same difference on every seed
    assert _paired_p([1.0], [0.0]) is None  # one seed: no test


def _fake_results():
    """Two tasks (accuracy, higher better; mae, lower better), 3 seeds, balancers a and b."""
    done = {}
    base = {0: (0.80, 2.0), 1: (0.70, 4.0), 2: (0.90, 1.0)}
    for s, (acc, mae) in base.items():
        done[_Run("baseline", s, "x")] = {"test": {"accuracy": acc}, "metric": "accuracy", "higher_is_better": True, "seconds": 1.0, "split": "test"}
        done[_Run("baseline", s, "y")] = {"test": {"mae": mae}, "metric": "mae", "higher_is_better": False, "seconds": 3.0, "split": "test"}
    # a: +10% on x and 0% on y every seed (Δm = +5); b: x as the baseline, y worse by 10%, 20%, 30%.
    for s, (acc, mae) in base.items():
        done[_Run("mtl", s, "a")] = {"test": {"x": {"accuracy": acc * 1.1}, "y": {"mae": mae}}, "seconds": 2.0}
        done[_Run("mtl", s, "b")] = {"test": {"x": {"accuracy": acc}, "y": {"mae": mae * (1.1 + 0.1 * s)}}, "seconds": 4.0}
    return done


def test_summarize_ranks_by_delta_m_computed_by_hand_and_marks_by_the_paired_test():
    result = summarize(_fake_results(), ["b", "a"], [0, 1, 2], ["x", "y"])
    rows = {r["balancer"]: r for r in result["table"]}
    assert [r["balancer"] for r in result["table"]] == ["a", "b"]
    # Δm by hand: a = (10 + 0) / 2 = +5 on every seed; b = (0 - 10k) / 2 for k = 1, 2, 3.
    assert rows["a"]["delta_m"]["values"] == pytest.approx([5.0, 5.0, 5.0])
    assert rows["b"]["delta_m"]["values"] == pytest.approx([-5.0, -10.0, -15.0])
    assert rows["b"]["delta_m"]["mean"] == pytest.approx(-10.0)
    assert rows["b"]["delta_m"]["std"] == pytest.approx(5.0)
    # b - a = [-10, -15, -20]: mean -15, sd 5, t = -15 / (5 / sqrt 3); p from the closed form above.
    t = 3 * math.sqrt(3)
    assert rows["b"]["delta_m"]["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert rows["b"]["delta_m"]["marked"] is (rows["b"]["delta_m"]["p"] < 0.05)
    assert rows["a"]["delta_m"]["best"] and rows["a"]["delta_m"]["p"] is None
    # Task x: a is 10% above b on every seed, a constant relative gap but not a constant difference.
    assert rows["a"]["scores"]["x"]["mean"] == pytest.approx(1.1 * 0.8)
    assert result["single_task"]["scores"]["y"]["values"] == [2.0, 4.0, 1.0]
    assert result["single_task"]["seconds"] == pytest.approx(2.0)
    text = markdown_table(result)
    assert "| 1 | `a` |" in text and "| 2 | `b` |" in text
    assert "-10.00 ± 5.00" in text and "paired t-test" in text


def test_unknown_balancer_is_refused_before_anything_runs(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    with pytest.raises(ValueError, match="unknown balancer 'pcgard'.*pcgrad"):
        compare.run_compare(config, ["ew", "pcgard"], seeds=1, out=tmp_path / "out", plot=False)
    assert not (tmp_path / "out").exists()


def _run_files(out):
    return sorted(p.relative_to(out) for p in (out / "runs").rglob("*.json"))


@pytest.mark.slow
def test_compare_end_to_end_resume_and_a_changed_config(tmp_path, one_thread, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    # A compare killed after its third run: the three finished runs keep their files.
    real, calls = compare._execute, []

    def dies_on_the_fourth(run, *args):
        calls.append(run)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(run, *args)

    monkeypatch.setattr(compare, "_execute", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        compare.run_compare(config, ["ew", "pcgrad"], seeds=2, out=out, plot=False, log=lambda _: None)
    assert len(_run_files(out)) == 3
    monkeypatch.setattr(compare, "_execute", real)

    lines = []
    result = compare.run_compare(config, ["ew", "pcgrad"], seeds=2, out=out, plot=True, log=lines.append)
    assert "8 runs, 3 done already" in lines[0]
    assert sum("done in" in line for line in lines) == 5
    assert len(_run_files(out)) == 8 and (out / "compare.png").is_file()
    stored = json.loads((out / "compare.json").read_text())
    assert stored["table"] == json.loads(json.dumps(result["table"]))
    assert (out / "compare.md").read_text() == markdown_table(stored)
    # Δm of every run from its stored scores and its seed's stored baselines, by the formula.
    for b in ("ew", "pcgrad"):
        for s in ("0", "1"):
            run, base = stored["runs"][b][s], stored["baselines"][s]
            changes = [100 * (run["test"][t]["f1"] - base[t]["test"]["f1"]) / abs(base[t]["test"]["f1"]) for t in ("ones", "fives")]
            assert run["delta_m"] == pytest.approx(sum(changes) / 2)
    # Removing one result file reruns that run only, and gives the same numbers (deterministic on the CPU).
    (out / "runs" / "seed1" / "pcgrad.json").unlink()
    lines.clear()
    again = compare.run_compare(config, ["ew", "pcgrad"], seeds=2, out=out, plot=False, log=lines.append)
    assert "7 done already" in lines[0] and sum("done in" in line for line in lines) == 1
    for task in ("ones", "fives"):
        assert again["runs"]["pcgrad"]["1"]["test"][task] == pytest.approx(result["runs"]["pcgrad"]["1"]["test"][task])
    # Other overrides in the same folder: an error, not a mix of two configs.
    with pytest.raises(ValueError, match="another config or other --set"):
        compare.run_compare(config, ["ew"], seeds=1, out=out, overrides=["trainer.lr=0.01"], plot=False, log=lambda _: None)


@pytest.mark.slow
def test_compare_command_with_two_jobs_matches_one_job(tmp_path, one_thread, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    args = ["compare", str(config), "--balancers", "ew", "pcgrad", "--seeds", "2", "--no-plot"]
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    assert "| rank | balancer | ones f1 | fives f1 | Δm (%) |" in out
    two = json.loads((tmp_path / "two" / "compare.json").read_text())
    one = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert two["jobs"] == 2 and len(_run_files(tmp_path / "two")) == 8
    for b in ("ew", "pcgrad"):
        for s in ("0", "1"):
            assert two["runs"][b][s]["delta_m"] == pytest.approx(one["runs"][b][s]["delta_m"], abs=1e-6)


def _benchmark(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text, begin, end):
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_docs_tables_are_generated_from_the_committed_compare_json():
    bench = _benchmark("multimnist_table")
    docs = (ROOT / "docs" / "results.md").read_text()
    if not bench.COMPARE_JSON.is_file():
        pytest.skip("benchmarks/results/compare_multi_mnist.json not written yet (python benchmarks/multimnist_table.py)")
    stored = json.loads(bench.COMPARE_JSON.read_text())
    assert _block(docs, bench.BEGIN["compare"], bench.END["compare"]) == "\n" + markdown_table(stored)
    assert stored["balancers"] == list(bench.CLI_BALANCERS) and len(stored["seeds"]) == 3
    if bench.TABLE_JSON.is_file():
        table = json.loads(bench.TABLE_JSON.read_text())
        assert _block(docs, bench.BEGIN["table"], bench.END["table"]) == "\n" + bench.multimnist_table(table)
        assert sorted(table["balancers"]) == sorted(bench.METHODS) and len(table["seeds"]) == 3
