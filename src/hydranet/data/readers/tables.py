"""Manifest files as columns of cells: CSV (stdlib ``csv``), JSON records, Parquet (pandas, optional).

A *cell* is a stripped string, or ``None`` for an empty cell (a missing value). Paths in a manifest
are normalised here: Windows separators (``images\\a\\b.jpg``) become ``/``, absolute paths are kept,
relative ones are joined to the manifest's root folder.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hydranet.data.readers.columns import text_cells

__all__ = ["Table", "load_table", "number_cells", "object_cells", "resolve_paths"]

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


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
            close = difflib.get_close_matches(name, list(self.columns), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{self.source.name} has no {what} {name!r}.{hint} It has: {', '.join(map(repr, self.columns))}."
            )
        return self.columns[name]


def load_table(path: str | os.PathLike[str], *, delimiter: str | None = None, encoding: str = "utf-8-sig") -> Table:
    """Read a ``.csv`` / ``.tsv`` / ``.txt``, ``.json`` (a list of objects) or ``.parquet`` manifest."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"Manifest {source} does not exist.")
    suffix = source.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _load_csv(source, delimiter or ("\t" if suffix == ".tsv" else ","), encoding)
    if suffix == ".json":
        return _load_json(source, encoding)
    if suffix in PARQUET_SUFFIXES:
        return _load_parquet(source)
    raise ValueError(
        f"Cannot tell the format of manifest {source.name}: use a {', '.join(CSV_SUFFIXES)} (CSV), .json or "
        f"{', '.join(PARQUET_SUFFIXES)} file."
    )


def _load_csv(source: Path, delimiter: str, encoding: str) -> Table:
    # utf-8-sig drops the byte-order mark that spreadsheet programs put before the first header.
    with source.open(newline="", encoding=encoding) as f:
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
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
    present = ~np.equal(cells, None)
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
    empty = np.equal(cells, None)
    text = np.where(empty, "", cells).astype(str)
    text = np.char.replace(text, "\\", "/")  # Windows separators (images\a\b.jpg)
    absolute = np.char.startswith(text, "/") | (np.char.find(text, ":/") == 1)  # /x, //server/x, C:/x
    prefix = str(root).rstrip("/\\") + "/"
    paths = np.where(absolute, text, np.char.add(prefix, text))
    return paths.astype(object), empty
