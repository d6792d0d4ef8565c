"""Manifest files as columns of cells: CSV (stdlib ``csv``), JSON records, Parquet (pandas, optional).

A *cell* is a stripped string, or ``None`` for an empty cell (a missing value). Paths in a manifest
are normalised here: Windows separators (``images\\a\\b.jpg``) become ``/``, absolute paths are kept,
relative ones are joined to the manifest's root folder, and :func:`confine_paths` refuses the ones that
lead outside the root (``../../etc/passwd``) unless allowed. A file that is not in the given text
encoding is an error naming the file, the line and the byte, and the ``encoding=`` fix.
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hydranet._checks import did_you_mean
from hydranet.data._none import none_mask
from hydranet.data.readers.columns import text_cells

__all__ = ["Table", "confine_paths", "load_table", "number_cells", "object_cells", "resolve_paths", "rows_listing"]

_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class Table:
    """Columns of cells read from a manifest, plus where each row came from (for messages)."""

    def __init__(
        self, source: Path, columns: dict[str, np.ndarray], rows: list[str], records: list[Any] | None = None
    ) -> None:
        self.source = source
        self.columns = columns
        self.rows = rows  # e.g. "row 12"
        self.records = records  # the raw JSON objects, for fields that are lists (boxes)

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str, what: str = "column") -> np.ndarray:
        lists = self.records is not None and any(isinstance(r.get(name), list) for r in self.records)
        if name not in self.columns and lists:
            raise ValueError(f"{self.source.name}: field {name!r} holds lists; a label is one number or string.")
        if name not in self.columns:
            raise ValueError(
                f"{self.source.name} has no {what} {name!r}.{did_you_mean(name, self.columns)} It has: {', '.join(map(repr, self.columns))}."
            )
        return self.columns[name]


def load_table(path: str | os.PathLike[str], *, delimiter: str | None = None, encoding: str = "utf-8-sig") -> Table:
    """Read a ``.csv`` / ``.tsv`` / ``.txt``, ``.json`` (a list of objects) or ``.parquet`` manifest."""
    source = Path(path)
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"encoding={encoding!r} is not a text encoding Python knows; e.g. 'utf-8' or 'latin-1'.") from None
    if not source.is_file():
        raise FileNotFoundError(f"Manifest {source} does not exist.")
    suffix = source.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return _load_csv(source, delimiter or ("\t" if suffix == ".tsv" else ","), encoding)
    if suffix == ".json":
        return _load_json(source, encoding)
    if suffix in _PARQUET_SUFFIXES:
        return _load_parquet(source)
    raise ValueError(
        f"Cannot tell the format of manifest {source.name}: use a {', '.join(_CSV_SUFFIXES)} (CSV), .json or "
        f"{', '.join(_PARQUET_SUFFIXES)} file."
    )


def _decode_error(source: Path, encoding: str, err: UnicodeDecodeError) -> ValueError:
    """The error for a manifest that is not in ``encoding``: where (line, byte) and the fix."""
    data = source.read_bytes()
    try:
        data.decode(encoding)
        offset, bad = err.start, err.object[err.start : err.end]
    except UnicodeDecodeError as whole:  # positions in the whole file, not in the chunk that failed
        offset, bad = whole.start, data[whole.start : whole.end]
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return ValueError(
        f"Manifest {source} is not valid {encoding} text: byte {bytes(bad)!r} at offset {offset} (line {line}, "
        f"column {column}). Pass the file's encoding, e.g. encoding='latin-1' (or 'cp1252' for a file saved by "
        "Excel on Windows), or save the manifest as UTF-8."
    )


def _load_csv(source: Path, delimiter: str, encoding: str) -> Table:
    # utf-8-sig drops the byte-order mark that spreadsheet programs put before the first header.
    try:
        with source.open(newline="", encoding=encoding) as f:
            rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    except UnicodeDecodeError as err:
        raise _decode_error(source, encoding, err) from None
    if not rows:
        raise ValueError(f"Manifest {source} is empty: it needs a header row and one row per sample.")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise ValueError(f"Manifest {source.name}: the header names a column twice: {header}.")
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(lengths != len(header))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"Manifest {source.name}: row {k + 1} has {lengths[k]} cells for {len(header)} columns ({header}). "
            f"Check the delimiter (delimiter={delimiter!r}) and quote cells that contain it."
        )
    body = rows[1:]
    columns = {name: text_cells([r[j] for r in body]) for j, name in enumerate(header)}
    return Table(source, columns, [f"row {k + 2}" for k in range(len(body))])


def object_cells(values: Sequence[Any], what: str) -> np.ndarray:
    """Cells of JSON or Parquet values: numbers and strings as text; None, NaN and "" as missing."""
    out = np.full(len(values), None, dtype=object)
    for k, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, (bool, np.bool_)):
            value = int(value)
        if isinstance(value, (list, tuple, dict, np.ndarray)):
            raise ValueError(f"{what}: value {k} is {value!r}; expected a number or a string.")
        text = str(value).strip()
        out[k] = text or None
    return out


def _load_json(source: Path, encoding: str) -> Table:
    try:
        records = json.loads(source.read_text(encoding=encoding))
    except UnicodeDecodeError as err:
        raise _decode_error(source, encoding, err) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"Manifest {source} is not valid JSON: {err}.") from err
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(
            f"Manifest {source.name} must hold a JSON list of objects, one per sample: "
            '[{"path": "a.jpg", "label": "cat"}, ...].'
        )
    keys = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for key in keys:
        values = [r.get(key) for r in records]
        if any(isinstance(v, list) for v in values):
            continue  # list-valued fields (boxes) are read from the records by whoever needs them
        columns[key] = object_cells(values, f"Manifest {source.name}, field {key!r}")
    return Table(source, columns, [f"entry {k}" for k in range(len(records))], records)


def _load_parquet(source: Path) -> Table:
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            f"Reading the Parquet manifest {source.name} needs pandas and pyarrow: pip install 'hydranet[tabular]' "
            "pyarrow (or save the manifest as CSV, which needs nothing)."
        ) from err
    try:
        frame = pd.read_parquet(source)
    except ImportError as err:
        raise ImportError(f"pandas cannot read Parquet without an engine: pip install pyarrow ({err}).") from err
    columns = {}
    for name in frame.columns:
        series = frame[name]
        missing = series.isna().to_numpy()
        if series.dtype == bool:
            series = series.astype(np.int64)
        cells = text_cells(series.astype(str).to_numpy())
        cells[missing] = None
        columns[str(name)] = cells
    return Table(source, columns, [f"row {k}" for k in range(len(frame))])


def number_cells(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values float64, bad)``: cells as numbers (NaN where missing); ``bad`` where not a number."""
    present = ~none_mask(cells)
    values = np.full(cells.shape, np.nan)
    bad = np.zeros(cells.shape, dtype=bool)
    texts = cells[present].astype(str)
    try:
        values[present] = texts.astype(np.float64)
    except ValueError:
        # Some cells are not numbers: parse the distinct texts one by one to find them.
        unique, inverse = np.unique(texts, return_inverse=True)
        parsed = np.full(len(unique), np.nan)
        ok = np.zeros(len(unique), dtype=bool)
        for k, text in enumerate(unique):
            try:
                parsed[k], ok[k] = float(text), True
            except ValueError:
                pass
        values[present] = parsed[inverse]
        bad[present] = ~ok[inverse]
    return values, bad


def resolve_paths(cells: np.ndarray, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(paths, empty)``: manifest path cells as usable paths; ``empty`` where a cell has no path."""
    empty = none_mask(cells)
    text = np.where(empty, "", cells).astype(str)
    text = np.char.replace(text, "\\", "/")  # Windows separators (images\a\b.jpg)
    absolute = np.char.startswith(text, "/") | (np.char.find(text, ":/") == 1)  # /x, //server/x, C:/x
    prefix = str(root).rstrip("/\\") + "/"
    paths = np.where(absolute, text, np.char.add(prefix, text))
    return paths.astype(object), empty


def rows_listing(rows: Sequence[str], texts: Sequence[str]) -> str:
    """``"  row 3: text"`` lines, the first few and a count of the rest."""
    from hydranet.data.readers.columns import _listing

    return _listing([f"{r}: {t}" for r, t in zip(rows, texts)])


def confine_paths(
    paths: np.ndarray, empty: np.ndarray, root: Path, *, rows: Sequence[str], source: Path, allow: bool
) -> None:
    """Refuse manifest paths that lead outside ``root`` (``../../etc/passwd``, an absolute path elsewhere).

    A manifest is data, often from elsewhere: reading whatever file it names is what a data loader should
    not do by default. Paths are compared lexically (``os.path.normpath``; no file is opened); ``root``
    counts both as given and with its symbolic links resolved. ``allow`` (``allow_outside_root=True``)
    turns the check off.
    """
    if allow or not len(paths):
        return
    text = np.where(empty, "", paths).astype(str)
    prefix = str(root).rstrip("/\\") + "/"
    # Relative cells were joined to root, so they start with it: only a ".." can lead them out. Only
    # the suspects (outside the prefix, or with "..") are normalised, one by one.
    suspect = ~empty & (~np.char.startswith(text, prefix) | (np.char.find(text, "..") >= 0))
    if not suspect.any():
        return
    roots = {os.path.normpath(str(root)), os.path.normpath(os.path.realpath(root))}
    outside = [
        k for k in np.flatnonzero(suspect).tolist()
        if not any(_under(os.path.normpath(text[k]), r) for r in roots)
    ]
    if not outside:
        return
    raise ValueError(
        f"Manifest {source.name}: {len(outside)} path(s) lead outside the root folder {root}:\n"
        + rows_listing([rows[k] for k in outside], [_shown(text[k]) for k in outside])
        + "\nA manifest may only name files under its root (so that a manifest from elsewhere cannot read other "
        "files). Fix the paths, pass root= the folder that holds the images, or allow_outside_root=True to "
        "read them anyway."
    )


def _shown(path: str) -> str:
    normal = os.path.normpath(path)
    return path if normal == path else f"{path} (that is {normal})"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
