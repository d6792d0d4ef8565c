"""MultiTaskStream throughput against HF ``interleave_datasets`` and torchdata's ``MultiNodeWeightedSampler``,
and its memory over a stream of 10^8 virtual samples.

Throughput: two tasks, each a set of WebDataset-style tar shards on local disk (``<key>.input.npy`` float32
features and ``<key>.cls`` labels), mixed with weights 1 : 3, cut into batches of 64 and collated into a
:class:`hydranet.data.Batch` by every pipeline (the same ``hn.data.collate``), one process, no workers:

* ``MultiTaskStream``: ``TarShards`` + ``Fields``, ``schedule={"a": 1, "b": 3}``, a shuffle buffer of 1000;
* HF: ``load_dataset("webdataset", streaming=True)`` per task, ``interleave_datasets(probabilities=[.25, .75])``,
  ``.shuffle(buffer_size=1000)`` per task, batches of 64 samples;
* torchdata: ``IterableWrapper`` over a per-task reader, ``MultiNodeWeightedSampler`` with the same weights,
  ``Batcher(64)``, then the collate; the reader is the usual ``tarfile`` + ``extractfile`` + ``np.load`` loop
  (what a user writes without webdataset), and, to isolate the mixing, again with hydranet's ``read_tar``.

Memory: a generator of 10^8 samples per task (nothing stored), shuffle buffer 1000, the RSS after 10^5 samples
and after the whole run (``--memory-samples``).

Usage: ``python benchmarks/stream.py [--samples 60000] [--memory-samples 3000000]``; writes
``benchmarks/results/stream.json``. A baseline whose library is missing is skipped with a message.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hydranet.data import MultiTaskStream, collate
from hydranet.data.stream import Fields, TarShards, read_tar

WEIGHTS = {"a": 1.0, "b": 3.0}
BATCH = 64
FEATURES = 16


def write_shards(folder: Path, task: str, n_shards: int, per_shard: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for s in range(n_shards):
        path = folder / f"{task}-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                np.save(buf, rng.standard_normal(FEATURES).astype(np.float32))
                for ext, data in (("input.npy", buf.getvalue()), ("cls", b"%d" % (i % 5))):
                    info = tarfile.TarInfo(f"{task}/{s:04d}{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def timed(batches, n_batches: int) -> float:
    """Samples per second to draw ``n_batches`` batches (after one warm-up batch)."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * BATCH / (time.perf_counter() - start)


def ours(shards: dict[str, list[str]], n_batches: int) -> float:
    stream = MultiTaskStream({t: TarShards(p) for t, p in shards.items()}, batch_size=BATCH, schedule=WEIGHTS,
                             stop="all_exhausted", shuffle=1000, transform=Fields("input.npy", "cls"))
    return timed(itertools.cycle(stream), n_batches)  # a new epoch if the shards run out


def hf(shards: dict[str, list[str]], n_batches: int) -> float | str:
    try:
        import datasets
    except ImportError:
        return "skipped: datasets is not installed (pip install datasets)"
    datasets.disable_progress_bars()
    parts = [
        datasets.load_dataset("webdataset", data_files={"train": p}, split="train", streaming=True).shuffle(
            seed=0, buffer_size=1000)
        for p in shards.values()
    ]
    total = sum(WEIGHTS.values())
    mixed = datasets.interleave_datasets(parts, probabilities=[w / total for w in WEIGHTS.values()], seed=0,
                                         stopping_strategy="all_exhausted")
    names = list(shards)

    def batches():
        while True:
            rows = []
            for row in mixed:
                task = names[0] if row["__url__"] in shards[names[0]] else names[1]
                rows.append((np.asarray(row["input.npy"], dtype=np.float32), {task: row["cls"]}))
                if len(rows) == BATCH:
                    yield collate(rows)
                    rows = []

    return timed(batches(), n_batches)


def naive_tar(path: str):
    """The tarfile loop a user writes: extractfile per member, np.load, group by key."""
    with tarfile.open(path) as tar:
        sample, key = {}, None
        for m in tar:
            stem, ext = m.name.split(".", 1)
            if stem != key and sample:
                yield sample
                sample = {}
            key = stem
            data = tar.extractfile(m).read()
            sample[ext] = np.load(io.BytesIO(data)) if ext.endswith("npy") else int(data)
        if sample:
            yield sample


def torchdata_sampler(shards: dict[str, list[str]], n_batches: int, reader) -> float | str:
    try:
        from torchdata.nodes import Batcher, IterableWrapper, Loader, Mapper, MultiNodeWeightedSampler
    except ImportError:
        return "skipped: torchdata is not installed (pip install torchdata)"

    def task_samples(task: str):
        while True:  # restart when exhausted, as the other pipelines do
            for path in shards[task]:
                for s in reader(path):
                    yield s["input.npy"], {task: s["cls"]}

    nodes = {t: IterableWrapper(task_samples(t)) for t in shards}
    mixed = MultiNodeWeightedSampler(nodes, WEIGHTS, stop_criteria="CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED", seed=0)
    loader = Loader(Mapper(Batcher(mixed, batch_size=BATCH), collate))
    return timed(loader, n_batches)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def virtual():
    """10^8 samples generated one at a time."""
    x = np.zeros(FEATURES, dtype=np.float32)
    for i in range(10**8):
        yield x, i % 5


def memory(total: int) -> dict[str, float]:
    stream = MultiTaskStream({"a": virtual, "b": virtual}, batch_size=BATCH, schedule=WEIGHTS, stop=total // BATCH,
                             shuffle=1000, sizes={"a": 10**8, "b": 10**8})
    it = iter(stream)
    for _ in range(10**5 // BATCH):
        next(it)
    at_1e5 = rss_mib()
    start = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
    seconds = time.perf_counter() - start
    return {"virtual_samples_per_task": 10**8, "samples_read": total, "rss_mib_at_1e5": round(at_1e5, 1),
            "rss_mib_at_end": round(rss_mib(), 1), "samples_per_s": round(n * BATCH / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="samples timed per pipeline")
    parser.add_argument("--memory-samples", type=int, default=3_000_000, help="samples of the memory run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "stream.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_batches = args.samples // BATCH
    with tempfile.TemporaryDirectory() as tmp:
        shards = {t: write_shards(Path(tmp), t, 8, 2500) for t in WEIGHTS}
        rates: dict[str, float | str] = {
            "MultiTaskStream": ours(shards, n_batches),
            "hf_interleave_datasets": hf(shards, n_batches),
            "torchdata_weighted_sampler": torchdata_sampler(shards, n_batches, naive_tar),
            "torchdata_weighted_sampler_same_reader": torchdata_sampler(shards, n_batches, read_tar),
        }
    base = rates["MultiTaskStream"]
    print(f"{'pipeline':42s} {'samples/s':>10s} {'MultiTaskStream is':>20s}")
    ratios = {}
    for name, rate in rates.items():
        if isinstance(rate, str):
            print(f"{name:42s} {rate}")
            continue
        ratio = base / rate
        ratios[name] = round(ratio, 2)
        print(f"{name:42s} {rate:10.0f} {ratio:19.2f}x")
    mem = memory(args.memory_samples)
    print(f"memory over 2 x 10^8 virtual samples: RSS {mem['rss_mib_at_1e5']} MiB after 10^5 samples, "
          f"{mem['rss_mib_at_end']} MiB after {mem['samples_read']:,} ({mem['samples_per_s']:,} samples/s)")
    result = {
        "benchmark": "stream",
        "setup": {"tasks": 2, "weights": WEIGHTS, "batch_size": BATCH, "shards_per_task": 8, "samples_per_shard": 2500,
                  "features": FEATURES, "shuffle_buffer": 1000, "timed_samples": n_batches * BATCH, "workers": 0},
        "samples_per_s": {k: (round(v) if not isinstance(v, str) else v) for k, v in rates.items()},
        "ratio_multitaskstream_over": ratios,
        "memory": mem,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
