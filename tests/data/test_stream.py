"""MultiTaskStream: mixing, quotas, stops, epoch counters, shuffle, balancing, shards, sharding, resume, memory."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hydranet.data import Batch, MultiTaskStream
from hydranet.data.stream import Fields, Shards, TarShards, read_tar

try:
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # the stream extra is not installed
    StatefulDataLoader = None


def items(task_offset: int, n: int, label=lambda i: i % 2) -> list:
    """``n`` samples whose input is a unique id (``task_offset + i``), so batches can be traced back."""
    return [(torch.tensor([float(task_offset + i)]), label(i)) for i in range(n)]


def ids(batch: Batch) -> list[int]:
    return batch.inputs.flatten().long().tolist()


def write_shards(folder: Path, prefix: str, n_shards: int, per_shard: int, start: int = 0) -> list[str]:
    """WebDataset-style shards: members ``<key>.input.npy`` and ``<key>.cls``; input = the sample's id."""
    paths = []
    sample = start
    for s in range(n_shards):
        path = folder / f"{prefix}-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for _ in range(per_shard):
                for ext, data in (("input.npy", _npy(np.array([sample], dtype=np.float32))), ("cls", b"%d" % (sample % 3))):
                    info = tarfile.TarInfo(f"{prefix}/{sample:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                sample += 1
        paths.append(str(path))
    return paths


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


# ---------------------------------------------------------------------- mixing


def test_weighted_mixing_matches_the_weights_within_binomial_bounds():
    n = 3000
    stream = MultiTaskStream({"a": items(0, 50), "b": items(1000, 50)}, batch_size=2, schedule={"a": 1, "b": 3},
                             stop=n, seed=3)
    tasks = [b.tasks[0] for b in stream]
    assert len(tasks) == n
    # Independent draws would put B ~ Binomial(n, 3/4) batches on b; the stratified order is tighter still.
    sd = math.sqrt(n * 0.75 * 0.25)
    assert abs(tasks.count("b") - 0.75 * n) <= 3 * sd
    # and every prefix too: within +-T of L p (see hydranet.data.schedule)
    prefix = np.cumsum(np.array(tasks) == "b")
    steps = np.arange(1, n + 1)
    assert np.abs(prefix - 0.75 * steps).max() <= 2


def test_round_robin_alternates_and_quotas_are_exact_in_every_batch():
    rr = MultiTaskStream({"a": items(0, 20), "b": items(100, 20), "c": items(200, 20)}, batch_size=4, stop=9)
    assert [b.tasks[0] for b in rr] == ["a", "b", "c"] * 3
    mixed = MultiTaskStream({"a": items(0, 20), "b": items(100, 50)}, batch_size=8, quotas={"a": 2, "b": 6},
                            stop=20, shuffle=16)
    for batch in mixed:
        assert batch.counts() == {"a": 2, "b": 6}
        x = ids(batch)
        assert all(i < 100 for i in x[:2]) and all(i >= 100 for i in x[2:])


def test_temperature_and_proportional_use_the_declared_sizes():
    sizes = {"a": 100, "b": 900}
    prop = MultiTaskStream({"a": items(0, 100), "b": items(1000, 900)}, batch_size=10, schedule="proportional",
                           sizes=sizes)
    assert prop.probabilities == pytest.approx({"a": 0.1, "b": 0.9})
    temp = MultiTaskStream({"a": items(0, 100), "b": items(1000, 900)}, batch_size=10, schedule="temperature",
                           temperature=2.0, sizes=sizes)
    assert temp.probabilities == pytest.approx({"a": 10 / 40, "b": 30 / 40})  # sqrt(100) : sqrt(900)
    with pytest.raises(ValueError, match="declare sizes"):
        MultiTaskStream({"a": items(0, 10)}, batch_size=2, schedule="proportional")


# ---------------------------------------------------------------------- stops and epoch counters


def test_stopping_strategies_give_the_hand_computed_counts():
    # a: 10 samples = 2 batches of 5, b: 30 = 6 batches; round robin a, b, a, b, ...
    sources = {"a": items(0, 10), "b": items(100, 30)}
    first = MultiTaskStream(sources, batch_size=5, stop="first_exhausted")
    # a's third batch (step 4) cannot be filled: steps 0..3
    assert len(list(first)) == 4
    every = MultiTaskStream(sources, batch_size=5, stop="all_exhausted")
    batches = list(every)
    # b's 6th batch is step 11: 12 steps, a went through 6 batches = 3 passes, b through 1
    assert len(batches) == 12
    assert every.source_epochs == {"a": 3, "b": 1}
    # each pass over a is every sample once
    a_ids = [i for b in batches if b.tasks == ["a"] for i in ids(b)]
    assert sorted(a_ids) == sorted(list(range(10)) * 3)
    fixed = MultiTaskStream(sources, batch_size=5, stop=7)
    assert len(list(fixed)) == 7 and fixed.source_epochs == {"a": 2, "b": 0}  # a: 4 batches, b: 3 of 6
    # declared sizes give the same counts as a length, before reading
    assert len(MultiTaskStream(sources, batch_size=5, stop="first_exhausted", sizes={"a": 10, "b": 30})) == 4
    assert len(MultiTaskStream(sources, batch_size=5, stop="all_exhausted", sizes={"a": 10, "b": 30})) == 12
    with pytest.raises(TypeError, match="length"):
        len(first)


def test_epochs_advance_and_differ():
    stream = MultiTaskStream({"a": items(0, 40)}, batch_size=4, stop="first_exhausted", shuffle=8)
    one = [ids(b) for b in stream]
    two = [ids(b) for b in stream]  # a second iter() is epoch 1
    assert stream.epoch == 1 and one != two
    assert sorted(sum(one, [])) == sorted(sum(two, [])) == list(range(40))
    stream.set_epoch(0)
    assert [ids(b) for b in stream] == one


# ---------------------------------------------------------------------- shuffle buffer


def test_shuffle_buffer_is_seeded_a_permutation_and_local():
    def run(seed):
        stream = MultiTaskStream({"a": items(0, 200)}, batch_size=10, stop="first_exhausted", shuffle=16, seed=seed)
        return sum((ids(b) for b in stream), [])

    first, again, other = run(0), run(0), run(1)
    assert first == again and first != other
    assert sorted(first) == list(range(200))  # every sample once per pass
    assert first != list(range(200))
    # a buffer of 16 cannot emit sample i before position i - 15 (it has not been read yet)
    assert all(i <= pos + 15 for pos, i in enumerate(first))


# ---------------------------------------------------------------------- class balancing


def test_rejection_balancing_brings_a_50_to_5_stream_to_about_1_to_1():
    labels = [1] * 50 + [0] * 5
    rng = np.random.default_rng(0)
    order = rng.permutation(55)
    source = [(torch.tensor([float(i)]), labels[i]) for i in order]
    stream = MultiTaskStream({"t": source}, batch_size=8, stop=300, balance="inverse", shuffle=4, seed=2)
    y = torch.cat([b.targets["t"] for b in stream])
    share = float((y == 1).float().mean())
    # Unbalanced: 50/55 = 0.91. Balanced: 1/2; binomial sd over 2400 draws is 0.01 (draws are not independent
    # across passes, hence the wider band).
    assert abs(share - 0.5) < 0.06


def test_balancing_reads_labels_from_a_field_without_the_target():
    source = [({"x": float(i), "y": int(i < 45)}) for i in range(50)]
    stream = MultiTaskStream({"t": source}, batch_size=5, stop=100, balance="inverse", labels="y",
                             transform=lambda s: (torch.tensor([s["x"]]), s["y"]))
    y = torch.cat([b.targets["t"] for b in stream])
    assert abs(float(y.float().mean()) - 0.5) < 0.08
    bad = MultiTaskStream({"t": [(torch.zeros(1), 0.5)] * 4}, batch_size=2, stop=1, balance="inverse")
    with pytest.raises(ValueError, match="integer class"):
        list(bad)


# ---------------------------------------------------------------------- sources


def test_tar_shards_are_read_grouped_by_key(tmp_path):
    paths = write_shards(tmp_path, "a", n_shards=3, per_shard=4)
    samples = list(read_tar(paths[1]))
    assert [s["__key__"] for s in samples] == [f"a/{i:06d}" for i in range(4, 8)]
    assert samples[0]["cls"] == 4 % 3 and samples[0]["input.npy"].tolist() == [4.0]
    assert set(samples[0]) == {"__key__", "input.npy", "cls"}
    stream = MultiTaskStream({"a": TarShards(paths)}, batch_size=4, stop="first_exhausted",
                             transform=Fields("input.npy", "cls"))
    batches = list(stream)
    assert sorted(sum((ids(b) for b in batches), [])) == list(range(12))
    assert batches[0].targets["a"].tolist() == [0, 1, 2, 0]
    # a plain list of .tar paths is a shard source too
    assert isinstance(MultiTaskStream({"a": paths}, batch_size=2)._sources[0], Shards)


def test_generator_functions_and_one_shot_iterators():
    def gen():
        for i in range(12):
            yield torch.tensor([float(i)]), 0

    assert len(list(MultiTaskStream({"a": gen}, batch_size=4, stop="first_exhausted"))) == 3
    with pytest.raises(TypeError, match="re-iterable"):
        MultiTaskStream({"a": gen()}, batch_size=4)
    with pytest.raises(TypeError, match="Fields"):
        list(MultiTaskStream({"a": [{"x": 1}] * 4}, batch_size=2, stop=1))


def test_hugging_face_iterable_dataset_source():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"x": [[float(i)] for i in range(20)], "y": [i % 2 for i in range(20)]})
    hf = ds.to_iterable_dataset(num_shards=4).with_format("torch")
    stream = MultiTaskStream({"a": hf}, batch_size=5, stop="first_exhausted", transform=Fields("x", "y"))
    batches = list(stream)
    assert len(batches) == 4 and sorted(sum((ids(b) for b in batches), [])) == list(range(20))


def test_validation_names_the_problem():
    with pytest.raises(ValueError, match="sum to 5"):
        MultiTaskStream({"a": [1], "b": [2]}, batch_size=6, quotas={"a": 2, "b": 3})
    with pytest.raises(ValueError, match="Did you mean 'all_exhausted'"):
        MultiTaskStream({"a": [1]}, batch_size=2, stop="all_exhaustd")
    with pytest.raises(ValueError, match="Declare sizes"):
        MultiTaskStream({"a": [1]}, batch_size=2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="exclusive"):
        MultiTaskStream({"a": [1]}, batch_size=2, quotas={"a": 2}, schedule="round_robin")
    with pytest.raises(ValueError, match="shuffle"):
        MultiTaskStream({"a": [1]}, batch_size=2, shuffle=-1)


# ---------------------------------------------------------------------- resume


def _stream(paths_a, paths_b, **kw):
    kw.setdefault("stop", 10)
    return MultiTaskStream({"a": TarShards(paths_a), "b": TarShards(paths_b)}, batch_size=3,
                           schedule={"a": 1, "b": 2}, shuffle=8, seed=5, transform=Fields("input.npy", "cls"), **kw)


@pytest.fixture
def shards(tmp_path):
    return write_shards(tmp_path, "a", 4, 6), write_shards(tmp_path, "b", 8, 5, start=1000)


@pytest.mark.skipif(StatefulDataLoader is None, reason="torchdata is not installed (extra 'stream')")
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_with_stateful_dataloader_gives_exactly_the_remaining_batches(shards, workers):
    full = [ids(b) for b in StatefulDataLoader(_stream(*shards), batch_size=None, num_workers=workers)]
    assert len(full) == 10
    loader = StatefulDataLoader(_stream(*shards), batch_size=None, num_workers=workers)
    it = iter(loader)
    head = [ids(next(it)) for _ in range(4)]
    state = loader.state_dict()
    del it, loader
    resumed = StatefulDataLoader(_stream(*shards), batch_size=None, num_workers=workers)
    resumed.load_state_dict(state)
    assert head + [ids(b) for b in resumed] == full


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_position_with_a_plain_dataloader(shards, workers):
    full = [ids(b) for b in DataLoader(_stream(*shards), batch_size=None, num_workers=workers)]
    stream = _stream(*shards)
    stream.load_state_dict(_stream(*shards).state_dict(position=7))
    assert [ids(b) for b in DataLoader(stream, batch_size=None, num_workers=workers)] == full[7:]


def test_consumer_state_resumes_in_process(shards):
    stream = _stream(*shards)
    it = iter(stream)
    head = [ids(next(it)) for _ in range(6)]
    state = stream.state_dict()
    rest = [ids(b) for b in it]
    again = _stream(*shards)
    again.load_state_dict(state)
    assert [ids(b) for b in again] == rest and len(head + rest) == 10


# ---------------------------------------------------------------------- ranks x workers


def _rank_stream(shards, rank, **kw):
    # first_exhausted over declared sizes with quotas: every worker needs exactly its share, so no consumer
    # restarts a source and every sample appears once at most
    return MultiTaskStream({"a": TarShards(shards[0]), "b": TarShards(shards[1])}, batch_size=3,
                           quotas={"a": 1, "b": 2}, shuffle=8, seed=5, transform=Fields("input.npy", "cls"),
                           stop="first_exhausted", sizes={"a": 24, "b": 40}, rank=rank, world_size=2, **kw)


def test_two_ranks_two_workers_disjoint_equal_steps_and_exact_resume(shards):
    loader_cls = StatefulDataLoader or DataLoader
    per_rank = []
    for rank in (0, 1):
        stream = _rank_stream(shards, rank)
        # a: 24 / (2 ranks * 1 a per batch) = 12 steps, b: 40 / (2 * 2) = 10 steps -> N = min = 10
        assert len(stream) == 10
        per_rank.append([ids(b) for b in loader_cls(stream, batch_size=None, num_workers=2)])
    assert [len(r) for r in per_rank] == [10, 10]
    seen = [i for r in per_rank for b in r for i in b]
    assert len(seen) == len(set(seen)), "a sample was read by two consumers"
    assert all(b[0] < 1000 and min(b[1:]) >= 1000 for r in per_rank for b in r)  # the quotas
    for rank in (0, 1):
        if StatefulDataLoader is not None:
            loader = StatefulDataLoader(_rank_stream(shards, rank), batch_size=None, num_workers=2)
            it = iter(loader)
            head = [ids(next(it)) for _ in range(5)]
            state = loader.state_dict()
            del it
            loader = StatefulDataLoader(_rank_stream(shards, rank), batch_size=None, num_workers=2)
            loader.load_state_dict(state)
            assert head + [ids(b) for b in loader] == per_rank[rank]
        stream = _rank_stream(shards, rank)
        stream.load_state_dict({"version": 1, "seed": 5, "epoch": 0, "position": 3})
        assert [ids(b) for b in DataLoader(stream, batch_size=None, num_workers=2)] == per_rank[rank][3:]


def test_every_rank_trains_the_same_task_at_the_same_step(shards):
    tasks = []
    for rank in (0, 1):
        stream = _stream(*shards, stop=12, rank=rank, world_size=2)
        tasks.append([b.tasks for b in DataLoader(stream, batch_size=None, num_workers=2)])
    assert tasks[0] == tasks[1] and len(tasks[0]) == 12
    # round robin with as many workers as tasks: every worker still reads both tasks
    rr = MultiTaskStream({"a": items(0, 40), "b": items(100, 40)}, batch_size=2, stop=8)
    per_worker = [[b.tasks[0] for b in DataLoader(rr, batch_size=None, num_workers=2)][w::2] for w in (0, 1)]
    assert all(set(w) == {"a", "b"} for w in per_worker)


def test_too_few_shards_for_the_consumers_is_an_error(tmp_path):
    paths = write_shards(tmp_path, "a", 1, 4)
    stream = MultiTaskStream({"a": TarShards(paths)}, batch_size=2, stop=2, rank=1, world_size=2)
    with pytest.raises(ValueError, match="1 shard"):
        list(stream)


_GLOO_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from torch.utils.data import DataLoader
from hydranet import runtime
from hydranet.data import MultiTaskStream
from hydranet.data.stream import Fields, TarShards

runtime.start("gloo")
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
stream = MultiTaskStream({"a": TarShards(a), "b": TarShards(b)}, batch_size=3, quotas={"a": 1, "b": 2}, shuffle=8,
                         seed=5, stop="first_exhausted", sizes={"a": 24, "b": 40}, transform=Fields("input.npy", "cls"))
batches = [b.inputs.flatten().long().tolist() for b in DataLoader(stream, batch_size=None, num_workers=2)]
stream.load_state_dict(stream.state_dict(position=4))
rest = [b.inputs.flatten().long().tolist() for b in DataLoader(stream, batch_size=None, num_workers=2)]
everything = [None, None]
dist.all_gather_object(everything, {"batches": batches, "rest": rest, "rank": runtime.rank()})
if runtime.rank() == 0:
    print("RESULT" + json.dumps(everything))
runtime.shutdown()
"""


@pytest.mark.slow
def test_two_real_gloo_processes_with_two_workers_each(shards, tmp_path):
    import json

    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_GLOO_SCRIPT))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         json.dumps(shards[0]), json.dumps(shards[1])],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT", 1)[1].splitlines()[0])
    assert [r["rank"] for r in result] == [0, 1]
    assert [len(r["batches"]) for r in result] == [10, 10]
    seen = [i for r in result for b in r["batches"] for i in b]
    assert len(seen) == len(set(seen))
    for r in result:
        assert r["rest"] == r["batches"][4:]
    # the same as the simulated ranks
    for rank in (0, 1):
        assert result[rank]["batches"] == [ids(b) for b in DataLoader(_rank_stream(shards, rank), batch_size=None,
                                                                          num_workers=2)]


# ---------------------------------------------------------------------- memory


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the RSS from /proc")
def test_memory_stays_flat_over_a_long_generator_stream():
    def virtual():  # 10^8 samples that exist only as they are generated
        x = torch.zeros(4)
        for i in range(10**8):
            yield x, i & 1

    stream = MultiTaskStream({"a": virtual, "b": virtual}, batch_size=64, stop=3000, shuffle=256)
    it = iter(stream)
    for _ in range(300):
        next(it)
    early = _rss_mib()
    for _ in it:
        pass
    # 192,000 samples read; a buffer of 256 small samples per source is well under a MiB
    assert _rss_mib() - early < 16


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_matches_tarfile_on_every_header_format(tmp_path, fmt):
    arrays = [np.arange(6.0).reshape(2, 3), np.asfortranarray(np.arange(6).reshape(2, 3)), np.array(3, dtype=np.int8)]
    names = ["short/000", "x" * 60 + "/" + "y" * 70 + "/001", "z/002"] if fmt != tarfile.USTAR_FORMAT else [
        "short/000", "p/001", "z/002"]
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, array in zip(names, arrays):
            for ext, data in (("npy", _npy(array)), ("cls", b"7")):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    samples = list(read_tar(path))
    assert [s["__key__"] for s in samples] == names
    for s, array in zip(samples, arrays):  # expected: the arrays written, as np.load reads them back
        assert s["npy"].dtype == array.dtype and s["npy"].shape == array.shape and (s["npy"] == array).all()
        assert s["npy"].flags.writeable and s["cls"] == 7


@pytest.mark.skipif(StatefulDataLoader is None, reason="the page's resume example uses torchdata (extra 'stream')")
def test_the_ecosystem_page_stream_section_runs_as_written():
    page = (Path(__file__).parents[2] / "docs" / "ecosystem.md").read_text()
    section = page.split("## Streams", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(chunk.split("```", 1)[0] for chunk in section.split("```python\n")[1:])
    assert "StatefulDataLoader" in code and "MultiTaskStream" in code
    exec(compile(code, "docs/ecosystem.md", "exec"), {})
