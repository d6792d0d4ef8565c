"""A manifest: one row per sample, a path column (images) or feature columns (tabular), a column per task.

``.csv`` / ``.tsv`` files are read with the standard library; ``.json`` holds a list of objects
(``[{"path": "a.jpg", "age": 30}, ...]``); ``.parquet`` needs pandas (``pip install
'hydranet[tabular]'``) and a Parquet engine (pyarrow). An empty cell is a missing label: that sample
is not in the task's pool, and the task is masked in its batches.

Image paths: Windows separators (``images\\a\\b.jpg``) are normalised, absolute paths are kept, and
relative ones are relative to ``root`` (default: the manifest's folder). A path that leads outside
``root`` (``../../etc/passwd``, an absolute path elsewhere) is an error naming its rows unless
``allow_outside_root=True``. A file listed twice with the same labels is an error naming the rows
(``duplicates="drop"`` keeps the first row and reports the others, ``"keep"`` keeps them all, e.g. to
oversample on purpose); listed twice with different labels it is always an error naming the file and both
labels. Tabular manifests give ``feature_columns`` instead: the inputs are then a float32 tensor of those
columns and no file is opened at all (rows are samples there, and equal rows are not checked).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from hydranet._checks import check_bool, check_choice
from hydranet.data._none import none_mask
from hydranet.data.readers.base import (
    OnError,
    ReaderDataset,
    Verify,
    _assemble,
    _check_policies,
    _drop_problems,
    _image_dataset,
    _resolve_transform,
    _screen_images,
)
from hydranet.data.readers.columns import Skipped, TasksArg, as_vocabularies, declare_tasks, encode_column, _listing
from hydranet.data.readers.tables import Table, confine_paths, load_table, number_cells, resolve_paths

__all__ = ["DUPLICATES", "read_manifest"]

#: What ``read_manifest(duplicates=...)`` does with a file listed twice with the same labels.
DUPLICATES: tuple[str, ...] = ("error", "drop", "keep")


def _manifest_root(manifest: Path, root: str | os.PathLike[str] | None) -> Path:
    return (Path(root).expanduser() if root is not None else manifest.parent).resolve()


def read_manifest(
    path: str | os.PathLike[str],
    *,
    tasks: TasksArg = None,
    path_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    converters: Mapping[str, Callable[[str], Any]] | None = None,
    transform: Callable[[Any], Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    vocabularies: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None = None,
    unknown: str = "error",
    verify: Verify = False,
    on_error: OnError = "error",
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    duplicates: str = "error",
    allow_outside_root: bool = False,
) -> ReaderDataset:
    """Samples listed in a CSV, JSON or Parquet manifest (see the module docstring).

    Longer than 80 lines because of its 16 parameters: the signature and their documentation take
    43 of its 105 lines; the reading itself is delegated to helpers.

    Args:
        path: the manifest file.
        tasks: ``{column: kind or Task fields or Task}``, or column names whose kinds are inferred
            (text: multiclass; numbers with fractions: regression; integers: declare the kind).
            Default: every column other than the path and feature columns.
        path_column: the column of image paths (default ``"path"``), for image manifests.
        feature_columns: numeric input columns, for tabular manifests (then no path column).
        root: folder that relative paths are relative to (default: the manifest's folder).
        converters: ``{task: function(text) -> value}``, as in :func:`read_filenames`.
        transform, image_size, vocabularies, unknown, verify, on_error: as in :func:`read_folders`.
        delimiter: CSV delimiter (default ``","``, tab for ``.tsv``).
        encoding: text encoding of a CSV or JSON manifest (``"latin-1"``, ``"cp1252"``, ...); a file
            that is not in it is an error naming the line and byte.
        duplicates: a file listed in several rows with the same labels: ``"error"`` (naming the rows),
            ``"drop"`` (keep the first row, report the others in ``skipped`` and a warning) or
            ``"keep"`` (every row is a sample). Different labels for one file are always an error.
        allow_outside_root: read paths that lead outside ``root`` (by default an error naming the rows).

    Rows with an unusable value (an empty path, a class index out of range, a feature that is not a
    number) are left out and reported.
    """
    _check_policies(verify, on_error, unknown)
    check_choice("duplicates", duplicates, DUPLICATES)
    check_bool("allow_outside_root", allow_outside_root)
    table = load_table(path, delimiter=delimiter, encoding=encoding)
    tabular = feature_columns is not None
    if tabular and path_column is not None:
        raise ValueError("Give path_column= (images) or feature_columns= (tabular data), not both.")
    if tabular and (transform is not None or image_size is not None):
        raise ValueError("transform= and image_size= apply to images; a tabular manifest has feature_columns=.")
    inputs = list(feature_columns) if feature_columns is not None else [path_column or "path"]
    if tabular and not inputs:
        raise ValueError("feature_columns= is empty: list the numeric columns that form the inputs.")
    for name in inputs:
        table.column(name, "feature column" if tabular else "path column")
    if tasks is None:
        tasks = [c for c in table.columns if c not in inputs]
    declared = declare_tasks(tasks)
    clash = [d.name for d in declared if d.name in inputs]
    if clash:
        raise ValueError(f"Column(s) {clash} are both inputs and tasks.")
    converters = dict(converters or {})
    stray = sorted(set(converters) - {d.name for d in declared})
    if stray:
        raise ValueError(f"converters= names unknown task(s) {stray}.")
    vocab = as_vocabularies(vocabularies, declared)
    source = f" (column of {table.source.name})"
    columns = [
        encode_column(
            d,
            table.column(d.name),
            vocabulary=vocab.get(d.name),
            converter=converters.get(d.name),
            unknown=unknown,
            source=source,
        )
        for d in declared
    ]
    if tabular:
        return _tabular(table, inputs, columns)
    transform = _resolve_transform(transform, image_size)
    base = _manifest_root(table.source, root)
    paths, empty = resolve_paths(table.column(inputs[0]), base)
    confine_paths(paths, empty, base, rows=table.rows, source=table.source, allow=allow_outside_root)
    repeated = _repeated_rows(table, paths, empty, [d.name for d in declared], duplicates)
    names = np.where(empty, np.array(table.rows, dtype=object), paths)
    keep, skipped = _drop_problems(names, columns)
    skipped = [Skipped(table.rows[k], f"empty {inputs[0]!r}") for k in np.flatnonzero(empty)] + skipped
    skipped += [Skipped(table.rows[k], f"repeats {table.rows[first]} ({paths[k]})") for k, first in repeated]
    keep &= ~empty
    keep[[k for k, _ in repeated]] = False
    paths, columns = paths[keep], [c.take(keep) for c in columns]
    ok, _, bad_files = _screen_images(paths, verify, on_error)
    return _image_dataset(
        "read_manifest",
        paths[ok],
        [c.take(ok) for c in columns],
        transform=transform,
        skipped=skipped + bad_files,
        total=len(table),
    )


def _repeated_rows(
    table: Table, paths: np.ndarray, empty: np.ndarray, tasks: list[str], duplicates: str
) -> list[tuple[int, int]]:
    """``[(row, first row of the same file)]`` of the rows that repeat a file, to drop (``"drop"``).

    Files are compared by normalised path (``a.jpg`` and ``./a.jpg`` are one file). Rows of one file
    whose task cells differ are an error naming the file and both labels; identical repeats are an error
    naming the rows unless ``duplicates`` is ``"drop"`` or ``"keep"``.
    """
    rows = np.flatnonzero(~empty)
    if len(rows) < 2:
        return []
    keys = np.array([os.path.normpath(p) for p in paths[rows]], dtype=str)
    _, first_of, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    if (counts == 1).all():
        return []
    first = rows[first_of[inverse]]  # for each row, the first row naming the same file
    again = np.flatnonzero(first != rows)  # positions (in rows) of the repeats
    conflicts = []
    for name in tasks:
        cells = table.column(name)
        differ = again[np.not_equal(cells[rows[again]], cells[first[again]]).astype(bool)]
        conflicts += [
            f"{paths[rows[j]]}: {table.rows[first[j]]} has {name}={_cell(cells[first[j]])}, "
            f"{table.rows[rows[j]]} has {name}={_cell(cells[rows[j]])}"
            for j in differ
        ]
    if conflicts:
        raise ValueError(
            f"Manifest {table.source.name}: {len(conflicts)} conflicting label(s) for the same file:\n"
            + _listing(conflicts)
            + "\nA file has one label per task: fix or remove the wrong rows."
        )
    repeats = [(int(rows[j]), int(first[j])) for j in again]
    if duplicates == "error":
        raise ValueError(
            f"Manifest {table.source.name}: {len(repeats)} row(s) list a file again with the same labels:\n"
            + _listing([f"{table.rows[k]} repeats {table.rows[f]} ({paths[k]})" for k, f in repeats])
            + "\nRemove them, or pass duplicates='drop' to keep the first row of each file (the others are "
            "reported), or duplicates='keep' to keep every row (to oversample on purpose)."
        )
    return repeats if duplicates == "drop" else []


def _cell(value: Any) -> str:
    return "(empty)" if value is None else repr(value)


def _tabular(table: Table, features: list[str], columns: list[Any]) -> ReaderDataset:
    values = np.empty((len(table), len(features)), dtype=np.float64)
    problems = np.full(len(table), None, dtype=object)
    for j, name in enumerate(features):
        values[:, j], bad = number_cells(table.column(name))
        missing = ~np.isfinite(values[:, j]) & ~bad
        for rows, what in ((bad, "is not a number"), (missing, "is empty or not finite")):
            fill = rows & none_mask(problems)
            problems[fill] = f"feature {name!r} {what}"
    keep, skipped = _drop_problems(table.rows, columns)
    unusable = ~none_mask(problems) & keep
    skipped += [Skipped(table.rows[k], problems[k]) for k in np.flatnonzero(unusable)]
    keep &= ~unusable
    columns = [c.take(keep) for c in columns]
    labels = {c.task.name: c.values for c in columns}
    tensors = [torch.from_numpy(values[keep].astype(np.float32))]
    tensors += [torch.from_numpy(column) for column in labels.values()]
    return _assemble(
        "read_manifest",
        TensorDataset(*tensors),
        [c.task for c in columns],
        labels,
        vocabularies={c.task.name: c.vocabulary for c in columns if c.vocabulary is not None},
        skipped=skipped,
        total=len(table),
    )
