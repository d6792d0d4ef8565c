"""Labels of a Hugging Face dataset: ``read_hf`` (Arrow columns) against iterating the rows.

A dataset of 10^6 rows (``--rows``) with an ``Image`` column (8 x 8 PNGs), a 10-class ``ClassLabel``
column (about 1 in 11 missing, ``-1``) and a float column (10% ``None``), built in memory with pyarrow.
Timed in the same run:

* ``read_hf``: the whole reader, labels of both tasks, their index pools and the shared
  ``MultiTaskDataset`` (no image is decoded), on the dataset and on a shuffled view of it
  (``dataset.shuffle``, which reads through a row mapping);
* rows with images: ``for row in dataset`` collecting the labels, which formats every row and decodes
  every image (what reading labels through ``dataset[i]`` costs). Slow, so timed over the first
  ``--image-rows`` rows and scaled linearly to all rows (stated in the output);
* label rows only: ``for row in dataset.select_columns([...])``, the best a row loop can do (no image),
  over all rows.

Prints the times and the ratios; writes ``benchmarks/results/hf_labels.json``.
Run: ``python benchmarks/hf_labels.py`` (about two minutes on 2 cores; needs ``hydranet[hf]``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(rows: int, seed: int = 0):
    import datasets as hf
    import pyarrow as pa
    from datasets.table import InMemoryTable
    from PIL import Image

    rng = np.random.default_rng(seed)
    pngs = []
    for _ in range(16):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    which = pa.array(rng.integers(0, len(pngs), rows))
    images = pa.StructArray.from_arrays(
        [pa.array(pngs, pa.binary()).take(which), pa.nulls(rows, pa.string())], names=["bytes", "path"]
    )
    label = pa.array(rng.integers(-1, 10, rows), pa.int64())  # -1: no label (Hugging Face's convention)
    age = pa.array(rng.uniform(0, 90, rows), mask=rng.random(rows) < 0.1)
    features = hf.Features(
        {"image": hf.Image(), "label": hf.ClassLabel(names=[f"c{k}" for k in range(10)]), "age": hf.Value("float64")}
    )
    table = pa.table({"image": images, "label": label, "age": age})
    return hf.Dataset(InMemoryTable(table), info=hf.DatasetInfo(features=features))


def best_of(repeats: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def iterate(dataset, limit: int | None = None) -> tuple[list, list]:
    labels, ages = [], []
    for k, row in enumerate(dataset):
        if limit is not None and k == limit:
            break
        labels.append(row["label"])
        ages.append(row["age"])
    return labels, ages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--image-rows", type=int, default=20_000, help="rows timed for the loop that decodes images")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import datasets as hf

    from hydranet.data.readers import read_hf

    hf.disable_progress_bars()
    t0 = time.perf_counter()
    dataset = build(args.rows)
    print(f"{args.rows:,} rows built in {time.perf_counter() - t0:.1f} s")
    tasks = ["label", "age"]

    ours, ds = best_of(args.repeats, lambda: read_hf(dataset, tasks=tasks, image_size=8))
    shuffled = dataset.shuffle(seed=0)
    ours_shuffled, ds_shuffled = best_of(args.repeats, lambda: read_hf(shuffled, tasks=tasks, image_size=8))

    m = min(args.image_rows, args.rows)
    t0 = time.perf_counter()
    iterate(dataset, m)
    with_images = (time.perf_counter() - t0) * args.rows / m

    t0 = time.perf_counter()
    labels, ages = iterate(dataset.select_columns(tasks))
    label_rows = time.perf_counter() - t0

    # What read_hf found is what the rows hold: -1 / None are missing, everything else in order.
    expected = np.array([-1 if v is None else v for v in labels])
    assert np.array_equal(ds.task_indices("label"), np.flatnonzero(expected != -1))
    assert np.array_equal(ds.labels("label"), expected[expected != -1]), "read_hf labels differ from the rows"
    present = np.array([a is not None for a in ages])
    assert np.array_equal(ds.task_indices("age"), np.flatnonzero(present))
    np.testing.assert_allclose(ds.labels("age"), np.array([a for a in ages if a is not None]), rtol=1e-6)

    result = {
        "rows": args.rows,
        "read_hf_s": ours,
        "read_hf_shuffled_s": ours_shuffled,
        "rows_with_images_s": with_images,
        "rows_with_images_measured_rows": m,
        "rows_with_images_scaled": m != args.rows,
        "label_rows_s": label_rows,
        "ratio_vs_rows_with_images": with_images / ours,
        "ratio_vs_label_rows": label_rows / ours,
        "ratio_shuffled_vs_label_rows": label_rows / ours_shuffled,
        "labelled": {t: int(ds.task_indices(t).size) for t in tasks},
        "shuffled_labelled_equal": all(ds_shuffled.task_indices(t).size == ds.task_indices(t).size for t in tasks),
        "datasets": hf.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    scaled = f" (timed on {m:,} rows, scaled)" if m != args.rows else ""
    print(f"read_hf (labels of {len(tasks)} tasks, no image decoded): {ours * 1e3:8.1f} ms")
    print(f"read_hf on a shuffled view (row mapping):        {ours_shuffled * 1e3:8.1f} ms")
    print(f"iterating rows, images decoded{scaled}: {with_images:8.1f} s   ratio {result['ratio_vs_rows_with_images']:,.0f}x")
    print(f"iterating rows of the label columns only:        {label_rows:8.1f} s   ratio {result['ratio_vs_label_rows']:,.0f}x")
    out = ROOT / "benchmarks" / "results" / "hf_labels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
