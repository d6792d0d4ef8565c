"""Hugging Face ``datasets`` as a :class:`~hydranet.data.readers.ReaderDataset`.

:func:`read_hf` takes one split, a ``datasets.Dataset``, and reads the label of every task from its
Arrow table, a whole column at a time (``dataset.data.column`` to NumPy, through the row mapping
that ``select`` / ``shuffle`` / ``filter`` leave): no row is formatted and no image decoded to know
the labels, so samplers can balance classes at once. Inputs are decoded only when a sample is asked
for. :func:`read_hf_path` does the same for a dataset saved with ``save_to_disk`` or for local data
files, without any download.

Label columns, by feature type (``None`` is a missing label everywhere; so is ``-1`` in class columns,
Hugging Face's own convention for unlabelled rows):

=============================  =====================  ====================================================
feature                        kind if not declared   labels
=============================  =====================  ====================================================
``ClassLabel``                 ``multiclass``         its indices; its ``names`` are the class names
``Value("bool")``              ``binary``             0 / 1
``Value("int...")``            declare it             class indices (binary, multiclass) or values
``Value("float...")``          ``regression``         values; whole numbers only need a declared kind
``Value("string")``            ``multiclass``         class names (``""`` is missing), sorted unless given
``List(ClassLabel)``           ``multilabel``         the classes present, as a 0/1 row; ``[]``: none
``List(Value("string"))``      ``multilabel``         the names present; names sorted unless given
``List(Value("int..."))``      declare it             ``multilabel`` with ``num_classes``: the indices
``List(Value("float"), n)``    ``regression``         a vector, ``dim = n`` (one length for all rows)
=============================  =====================  ====================================================

Inputs (``input=``): one ``Image`` column (decoded by ``datasets``, converted to RGB, then
``transform``, by default :func:`~hydranet.data.readers.default_transform`); numeric columns
(numbers, fixed-length lists, ``Array2D`` ...), read once into a float32 tensor so that batches are
one indexing operation; or any other single column (text, audio), whose decoded value is handed to
``transform=`` (a tokenizer, say). A row without an input, or with a value that cannot be a label
(a class index out of range), is left out and reported, never mislabelled.

``datasets`` is an optional dependency: ``pip install 'hydranet[hf]'``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from hydranet._checks import check_choice, did_you_mean
from hydranet.data.labels import missing_mask
from hydranet.data.readers.base import ReaderDataset, assemble, resolve_transform
from hydranet.data.readers.columns import (
    Declared,
    Skipped,
    TasksArg,
    as_vocabularies,
    declare_tasks,
    encode_column,
    listing,
    reader_warning,
)
from hydranet.data.readers.images import ImageReadError
from hydranet.tasks import MISSING_INT, Task

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

__all__ = ["HFSamples", "load_hf", "read_hf", "read_hf_path"]

_EXTRA = "pip install 'hydranet[hf]'"
_NONE_INSIDE = -5  # a None inside a list: a problem of that row
_DROPPED = -4  # a name outside the vocabulary, dropped with unknown="missing"
_OPTIONS = tuple(f.name for f in dataclasses.fields(Task) if f.name not in ("name", "kind"))
#: Builders of ``datasets.load_dataset`` for local files, by file suffix.
FILE_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
}
_SAVED = ("state.json", "dataset_dict.json")  # what save_to_disk writes at the top of its folder

PathLike = Union[str, "os.PathLike[str]"]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"Reading Hugging Face datasets needs the `datasets` package: {_EXTRA}.") from err
    return datasets


# -- feature types -----------------------------------------------------------------------------------------
def _scalar(feature: Any) -> str | None:
    """``"class"``, ``"bool"``, ``"int"``, ``"float"`` or ``"string"`` for a one-value feature, else None."""
    hf = _datasets()
    if isinstance(feature, hf.ClassLabel):
        return "class"
    if isinstance(feature, hf.Value):
        import pyarrow as pa

        t = feature.pa_type
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_floating(t):
            return "float"
        if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t):
            return "string"
    return None


def _is_list(feature: Any) -> bool:
    hf = _datasets()
    # datasets 4 still has a Sequence class (List derives from it); in 5 Sequence is a function returning a List.
    kinds = tuple(t for t in (hf.List, hf.LargeList, getattr(hf, "Sequence", None)) if isinstance(t, type))
    return isinstance(feature, kinds)


def _is_numeric(feature: Any) -> bool:
    """Numbers, bools, (nested) lists of them and ``Array2D`` ... ``Array5D``: what can be an input tensor."""
    hf = _datasets()
    if _scalar(feature) in ("bool", "int", "float"):
        return True
    if _is_list(feature):
        return _is_numeric(feature.feature)
    if isinstance(feature, (hf.Array2D, hf.Array3D, hf.Array4D, hf.Array5D)):
        return _scalar(hf.Value(feature.dtype)) in ("bool", "int", "float")
    return False


def _describe(feature: Any) -> str:
    if isinstance(feature, dict):
        return "a struct of fields " + ", ".join(map(repr, feature))
    return repr(feature)


_LABEL_TYPES = (
    "labels are ClassLabel, bool, int, float or string columns, a List of ClassLabel, string or int "
    "(multilabel), or a fixed-length List of floats (vector regression)"
)


# -- reading Arrow columns ---------------------------------------------------------------------------------
def _row_mapping(dataset: Any) -> np.ndarray | None:
    """The table rows of the dataset's positions when ``select`` / ``shuffle`` / ``filter`` left a mapping.

    ``dataset.data`` is the whole underlying table; the mapping (``_indices``, one uint64 column) is how
    ``datasets`` itself resolves ``dataset[i]``. Fetching a column through it row by row builds one Arrow
    chunk per row, so it is applied here once, with NumPy.
    """
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return None
    return indices.column(0).to_numpy().astype(np.int64, copy=False)


def _column(dataset: Any, name: str, rows: np.ndarray | None) -> pa.Array:
    """Column ``name`` as one Arrow array in the dataset's order (no row is formatted or decoded)."""
    import pyarrow as pa

    array = dataset.data.column(name).combine_chunks()
    return array if rows is None else array.take(pa.array(rows))


def _valid(array: pa.Array) -> np.ndarray:
    return array.is_valid().to_numpy(zero_copy_only=False)


def _ints(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 values with 0 where null, valid mask)``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    valid = _valid(array)
    values = pc.fill_null(pc.cast(array, pa.int64()), 0).to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.int64), valid  # a writable copy


def _floats(array: pa.Array) -> np.ndarray:
    """float64 values, NaN where null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return np.array(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _lists(array: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray]:
    """``(valid rows, lengths, flat values, owner row of each flat value)`` of a list column."""
    import pyarrow.compute as pc

    valid = _valid(array)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = array.flatten()  # skips null rows, whatever storage backs them
    owner = np.repeat(np.arange(len(array), dtype=np.int64), lengths)
    return valid, lengths, flat, owner


def _names(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, distinct names)`` of a string array: codes index the names, -1 where null or blank."""
    import pyarrow.compute as pc

    stripped = pc.utf8_trim_whitespace(array)
    blank = pc.equal(pc.utf8_length(stripped), 0)
    encoded = pc.dictionary_encode(pc.if_else(blank, None, stripped))
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return codes, names


# -- declared tasks ----------------------------------------------------------------------------------------
def _spec_kind(spec: Any) -> str | None:
    if isinstance(spec, Task):
        return spec.kind
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return spec.get("kind")
    return None


def _declare(tasks: TasksArg, columns: Sequence[str], inputs: Sequence[str]) -> list[Declared]:
    """``tasks=`` as :class:`Declared` tasks (multilabel included), each naming a label column."""
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    if isinstance(tasks, Mapping):
        items = list(tasks.items())
    elif tasks is None:
        items = []
    else:
        items = [(t.name, t) if isinstance(t, Task) else (t, None) for t in tasks]
    if not items:
        raise ValueError(
            "No tasks to read: pass tasks=['label_column', ...] or {'column': 'kind', ...}; every column other "
            f"than the input is a task by default, and this dataset has no other column (columns: {list(columns)})."
        )
    out: list[Declared] = []
    for name, spec in items:
        if not isinstance(name, str) or name not in columns:
            raise ValueError(
                f"tasks= names {name!r}, which is not a column of the dataset.{did_you_mean(name, columns)} "
                f"Its columns: {', '.join(map(repr, columns))}."
            )
        if name in inputs:
            raise ValueError(f"Column {name!r} is the input (input={list(inputs)}); it cannot also be a task.")
        if not name.isidentifier():
            fixed = "".join(c if c.isalnum() else "_" for c in name)
            fixed = fixed if fixed.isidentifier() else f"t_{fixed}"
            raise ValueError(
                f"Column {name!r} cannot name a task (task names are identifiers): rename it first, "
                f"dataset = dataset.rename_column({name!r}, {fixed!r})."
            )
        if _spec_kind(spec) == "multilabel":
            # declare_tasks checks the fields; readers of text cells have no multilabel, this one has.
            if isinstance(spec, Task):
                fields = {f: getattr(spec, f) for f in _OPTIONS}
            else:  # "multilabel" or {"kind": "multilabel", ...}
                fields = {k: v for k, v in spec.items() if k != "kind"} if isinstance(spec, Mapping) else {}
            (checked,) = declare_tasks({name: {**fields, "kind": "binary"}})
            out.append(Declared(name, "multilabel", checked.options))
        else:
            out.extend(declare_tasks({name: spec}))
    return out


# -- label columns -----------------------------------------------------------------------------------------
#: Rows that cannot be used and why, kept sparse: ``(int64 rows, one reason each)``.
Problems = tuple[np.ndarray, list[str]]


def _problems(bad: np.ndarray | Sequence[int], reasons: Sequence[str]) -> Problems:
    return np.asarray(bad, dtype=np.int64).reshape(-1), list(reasons)


@dataclasses.dataclass
class _Column:
    """One task's labels for every row, and the rows whose value cannot be a label."""

    values: np.ndarray
    task: Task
    vocabulary: list[str] | None  # class names, when the column held names
    bad: np.ndarray
    reasons: list[str]


def _check_kind(d: Declared, allowed: Sequence[str], what: str, source: str) -> None:
    if d.kind not in allowed:
        raise ValueError(
            f"Task {d.name!r}{source} is {what}; it can be {' or '.join(map(repr, allowed))}, not {d.kind!r}. "
            f"Declare one of those, e.g. tasks={{{d.name!r}: {allowed[0]!r}}}."
        )


def _remap(
    d: Declared,
    names: list[str],
    given: Sequence[str] | None,
    codes: np.ndarray,
    unknown: str,
    source: str,
    *,
    dropped: int = MISSING_INT,
    what: str = "sample(s)",
) -> tuple[np.ndarray, list[str]]:
    """Class indices of ``names`` re-expressed in the vocabulary ``given`` (another split's), by name.

    Codes outside ``[-1, len(names))`` are kept as they are (the caller reports them); names outside
    ``given`` are an error, or become ``dropped`` with ``unknown="missing"``."""
    if given is None or list(given) == names:
        return codes, names
    index = {v: i for i, v in enumerate(given)}
    table = np.array([index.get(v, -2) for v in names] + [MISSING_INT], dtype=np.int64)  # [-1] -> -1
    inside = (codes >= -1) & (codes < len(names))
    mapped = np.where(inside, table[np.where(inside, codes, -1)], codes)
    outside = mapped == -2
    if outside.any():
        found = sorted({names[k] for k in np.unique(codes[outside])})
        _outside(d, source, int(outside.sum()), what, given, found, unknown)
        mapped[outside] = dropped
    return mapped, list(given)


def _outside(
    d: Declared, source: str, count: int, what: str, given: Sequence[str], found: Sequence[str], unknown: str
) -> None:
    """Class names outside a given vocabulary: an error, or (``unknown="missing"``) a warning."""
    where = f"Task {d.name!r}{source}: {count} {what}"
    names = f"outside its vocabulary {list(given)}:\n{listing(list(found))}"
    if unknown == "error":
        raise ValueError(
            f"{where} have class name(s) {names}\nPass unknown='missing' to treat them as missing labels, or a "
            "vocabulary that includes them."
        )
    reader_warning(f"{where} dropped (now missing labels): class name(s) {names}")


def _class_task(d: Declared, kind: str, names: list[str] | None, n_classes: int, source: str) -> Task:
    options = dict(d.options)
    declared_n = options.pop("num_classes", None)
    if names is not None:
        options["class_names"] = names
        if kind == "binary" and n_classes != 2:
            raise ValueError(
                f"Task {d.name!r}{source} is binary but has {n_classes} class names {names}; use kind='multiclass'."
            )
        if declared_n is not None and int(declared_n) != n_classes:
            raise ValueError(
                f"Task {d.name!r}{source}: num_classes={declared_n} but its classes are {names}; drop num_classes "
                "(it is taken from the names)."
            )
    if kind == "multiclass" and n_classes < 2:
        raise ValueError(
            f"Task {d.name!r}{source}: only {n_classes} class ({names}); a multiclass task needs at least 2. "
            "Give all class names (vocabularies= or the ClassLabel's names) or leave the task out."
        )
    if kind != "binary":
        options["num_classes"] = n_classes
    return Task(name=d.name, kind=kind, **options)  # type: ignore[arg-type]


def _indices_to_classes(
    d: Declared, values: np.ndarray, valid: np.ndarray, n_classes: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """int64 class indices (-1 missing) and problems, from numbers that should be indices in [0, n)."""
    finite = np.isfinite(values) if values.dtype.kind == "f" else np.ones(len(values), dtype=bool)
    whole = finite & (np.floor(values) == values) if values.dtype.kind == "f" else finite
    ok = valid & whole & (values >= MISSING_INT) & (values < n_classes)
    bad = np.flatnonzero(valid & ~ok)
    codes = np.full(len(values), MISSING_INT, dtype=np.int64)
    codes[ok] = values[ok].astype(np.int64)
    reasons = [f"{d.name}={values[k].item()!r} is not a class index in [0, {n_classes})" for k in bad]
    return codes, _problems(bad, reasons)


def _class_label(d: Declared, feature: Any, array: pa.Array, vocab: Sequence[str] | None, unknown: str,
                 source: str) -> _Column:
    names = list(feature.names)
    if d.kind is None:
        d = dataclasses.replace(d, kind="multiclass")
    _check_kind(d, ("multiclass", "binary"), f"a ClassLabel column (classes {names})", source)
    values, valid = _ints(array)
    codes, problems = _indices_to_classes(d, values, valid, len(names), source)
    given = vocab if vocab is not None else d.options.get("class_names")
    codes, names = _remap(d, names, given, codes, unknown, source)
    task = _class_task(d, str(d.kind), names, len(names), source)
    return _Column(codes, task, names, *problems)


def _numbers(d: Declared, kind_of: str, array: pa.Array, vocab: Sequence[str] | None, source: str) -> _Column:
    name = d.name
    if vocab is not None:
        raise ValueError(
            f"vocabularies[{name!r}]: column {name!r} holds {kind_of} values, not class names; vocabularies apply "
            f"to string and ClassLabel columns. Name its classes with tasks={{{name!r}: {{'kind': ..., "
            "'class_names': [...]}}}."
        )
    if kind_of == "float":
        values = _floats(array)
        valid = ~np.isnan(values)
    else:
        values, valid = _ints(array)
    if not valid.any():
        raise ValueError(f"Task {name!r}{source}: every value is missing (None); check the column or leave it out.")
    kind = d.kind
    if kind is None:
        if kind_of == "bool":
            kind = "binary"
        elif kind_of == "int" or np.all(np.floor(values[valid]) == values[valid]):
            raise ValueError(
                f"Task {name!r}{source}: its values are whole numbers, which could be class indices or values; "
                f"declare the kind, e.g. tasks={{{name!r}: 'multiclass'}} or {{{name!r}: 'regression'}}."
            )
        else:
            kind = "regression"
    d = dataclasses.replace(d, kind=kind)
    _check_kind(d, ("regression", "binary", "multiclass"), f"a column of {kind_of} values", source)
    if kind == "regression":
        if int(d.options.get("dim") or 1) != 1:
            raise ValueError(
                f"Task {name!r}{source}: a column of single numbers gives dim=1; for vectors use a List column."
            )
        floats = values.astype(np.float64)
        bad = np.flatnonzero(valid & ~np.isfinite(floats))
        out = np.where(valid & np.isfinite(floats), floats, np.nan).astype(np.float32)
        problems = _problems(bad, [f"{name}={floats[k]!r} is not a finite number" for k in bad])
        return _Column(out, Task(name=name, kind="regression", **d.options), None, *problems)
    class_names = d.options.get("class_names")
    declared_n = d.options.get("num_classes") if kind == "multiclass" else 2
    if declared_n is None and class_names is not None:
        declared_n = len(class_names)
    if declared_n is None:
        present = values[valid & (values >= 0)]
        present = present[np.isfinite(present)] if present.dtype.kind == "f" else present
        declared_n = max(int(present.max()) + 1 if present.size else 0, 2)
    codes, problems = _indices_to_classes(d, values, valid, int(declared_n), source)
    names = list(class_names) if class_names is not None else None
    return _Column(codes, _class_task(d, kind, names, int(declared_n), source), None, *problems)


def _is_int_text(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except (ValueError, OverflowError):
        return False


def _strings(d: Declared, array: pa.Array, vocab: Sequence[str] | None, unknown: str, source: str) -> _Column:
    """Text labels: the rules of :func:`encode_column`, applied to the distinct values only."""
    codes, names = _names(array)
    given = vocab if vocab is not None else d.options.get("class_names")
    # Class names given as Task(class_names=...) do not make integer texts names (encode_column's rule).
    as_names = vocab is not None or not all(_is_int_text(v) for v in names)
    if given is not None and as_names and d.kind != "regression":
        known = set(given)
        outside = np.array([v not in known for v in names], dtype=bool)
        if outside.any():
            hits = int((outside[np.where(codes >= 0, codes, 0)] & (codes >= 0)).sum())
            _outside(d, source, hits, "sample(s)", given, sorted(names[outside].tolist()), unknown)
            names = names.copy()
            names[outside] = None
    encoded = encode_column(d, names, vocabulary=vocab, unknown=unknown, source=source)
    fill = np.nan if encoded.values.dtype.kind == "f" else MISSING_INT
    present = codes >= 0
    values = np.full(len(codes), fill, dtype=encoded.values.dtype)
    values[present] = encoded.values[codes[present]]
    bad_names = np.flatnonzero(~np.equal(encoded.problems, None))  # problems of distinct values
    bad = np.flatnonzero(present & np.isin(codes, bad_names))
    return _Column(values, encoded.task, encoded.vocabulary, bad, encoded.problems[codes[bad]].tolist())


def _multilabel(d: Declared, inner: Any, kind_of: str, array: pa.Array, vocab: Sequence[str] | None,
                unknown: str, source: str) -> _Column:
    """0/1 rows ``[n, C]`` (a row of -1 where the list is None) from lists of classes, names or indices."""
    name, n = d.name, len(array)
    valid, _, flat, owner = _lists(array)
    given = vocab if vocab is not None else d.options.get("class_names")
    names: list[str] | None
    if kind_of == "string":
        codes, distinct = _names(flat)
        names = distinct.tolist()
        target = given if given is not None else sorted(names)
    else:
        codes, ok = _ints(flat)
        codes[~ok] = _NONE_INSIDE
        names = list(inner.names) if kind_of == "class" else None
        target = given
    if names is not None:
        codes, names = _remap(d, names, target, codes, unknown, source, dropped=_DROPPED, what="label(s)")
        width = len(names)
    else:
        names = list(given) if given is not None else None
        width = d.options.get("num_classes") or (len(names) if names is not None else None)
        if width is None:
            raise ValueError(
                f"Task {name!r}{source} is a List of integers: declare it multilabel with its number of labels, "
                f"e.g. tasks={{{name!r}: {{'kind': 'multilabel', 'num_classes': K}}}} (the integers are the indices "
                "of the labels present)."
            )
        width = int(width)
    use = (codes >= 0) & (codes < width)
    bad_rows = np.unique(owner[~use & (codes != _DROPPED)])
    problems = _problems(bad_rows, [f"{name}: a value in row {k} is not a label in [0, {width})" for k in bad_rows])
    labels = np.zeros((n, width), dtype=np.float32)
    labels[owner[use], codes[use]] = 1.0
    labels[~valid] = MISSING_INT  # a row of -1: no label for this task
    options = {k: v for k, v in d.options.items() if k not in ("num_classes", "class_names")}
    task = Task(name=name, kind="multilabel", num_classes=width, class_names=names, **options)
    return _Column(labels, task, names if kind_of in ("class", "string") else None, *problems)


def _vectors(d: Declared, array: pa.Array, source: str) -> _Column:
    name, n = d.name, len(array)
    valid, lengths, flat, _ = _lists(array)
    found = np.unique(lengths[valid])
    dim = d.options.get("dim")
    if dim is None:
        if len(found) > 1:
            raise ValueError(
                f"Task {name!r}{source} holds lists of {len(found)} different lengths ({', '.join(map(str, found[:5]))}"
                f"{', ...' if len(found) > 5 else ''}): a regression target has one length. Declare it, e.g. "
                f"tasks={{{name!r}: {{'kind': 'regression', 'dim': {found[-1]}}}}} (rows of another length are then "
                "left out), or make the lists one length."
            )
        dim = int(found[0]) if len(found) else 1
    dim = int(dim)
    values = _floats(flat)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    right = valid & (lengths == dim)
    take = (starts[right][:, None] + np.arange(dim)[None, :]).reshape(-1)
    out = np.full((n, dim), np.nan, dtype=np.float32)
    out[right] = values[take].reshape(-1, dim) if dim else out[right]
    finite = np.isfinite(out).all(axis=1)
    bad = np.flatnonzero(valid & ~(right & finite))
    reasons = [
        f"{name} has {lengths[k]} values, not dim={dim}" if lengths[k] != dim else f"{name} holds a None or non-finite value"
        for k in bad
    ]
    out[bad] = np.nan
    options = {k: v for k, v in d.options.items() if k != "dim"}
    return _Column(out, Task(name=name, kind="regression", dim=dim, **options), None, *_problems(bad, reasons))


def _encode(d: Declared, feature: Any, array: pa.Array, vocab: Sequence[str] | None, unknown: str) -> _Column:
    """One task's labels from its Arrow column (see the module docstring for the rules)."""
    source = f" (column {d.name!r})"
    kind_of = _scalar(feature)
    if kind_of == "class":
        return _class_label(d, feature, array, vocab, unknown, source)
    if kind_of == "string":
        if d.kind == "multilabel":
            _check_kind(d, ("multiclass", "binary", "regression"), "a column of one string per row", source)
        return _strings(d, array, vocab, unknown, source)
    if kind_of is not None:
        if d.kind == "multilabel":
            _check_kind(d, ("binary", "multiclass", "regression"), f"a column of one {kind_of} value per row", source)
        return _numbers(d, kind_of, array, vocab, source)
    if _is_list(feature):
        inner = _scalar(feature.feature)
        if inner in ("class", "string") or (inner == "int" and d.kind == "multilabel"):
            if d.kind is not None and d.kind != "multilabel":
                _check_kind(d, ("multilabel",), f"a List of {inner} values", source)
            return _multilabel(d, feature.feature, inner, array, vocab, unknown, source)
        if inner in ("float", "int") and d.kind in (None, "regression"):
            if inner == "int" and d.kind is None:
                raise ValueError(
                    f"Task {d.name!r}{source} is a List of integers, which could be label indices (multilabel) or "
                    f"a vector of values; declare it, e.g. tasks={{{d.name!r}: {{'kind': 'multilabel', "
                    f"'num_classes': K}}}} or {{{d.name!r}: 'regression'}}."
                )
            return _vectors(d, array, source)
        if inner == "float" and d.kind == "multilabel":
            raise ValueError(
                f"Task {d.name!r}{source} is a List of floats, read as a vector: a multilabel column lists the labels "
                "present (a List of ClassLabel, strings or integer indices). Cast 0/1 vectors to indices first, or "
                f"declare tasks={{{d.name!r}: 'regression'}}."
            )
        if inner in ("float", "int"):
            _check_kind(d, ("regression", "multilabel"), f"a List of {inner} values", source)
    if type(feature).__name__ == "Json":  # datasets >= 5: JSON values of any type
        raise ValueError(
            f"Column {d.name!r} holds JSON values of mixed types ({_describe(feature)}), so it cannot be a label: "
            "give it one type (all numbers or all strings), e.g. when writing the file, or with "
            f"dataset.cast_column({d.name!r}, datasets.Value('string'))."
        )
    if isinstance(feature, dict):
        fix = "Flatten it first (dataset = dataset.flatten()) and name the field's column, e.g. 'meta.label'."
    elif _is_list(feature):
        fix = "Convert it with dataset.map to one of those."
    else:
        fix = "Pass it as input= instead, or convert it with dataset.map."
    raise ValueError(f"Column {d.name!r} is {_describe(feature)}, which cannot be a label: {_LABEL_TYPES}. {fix}")


# -- inputs ------------------------------------------------------------------------------------------------
def _input_columns(features: Mapping[str, Any], input: str | Sequence[str] | None) -> list[str]:
    hf = _datasets()
    columns = list(features)
    if input is None:
        images = [c for c, f in features.items() if isinstance(f, hf.Image)]
        if len(images) != 1:
            found = f"its Image columns are {images}" if images else "it has no Image column"
            raise ValueError(
                f"Which column is the input? {found.capitalize()}; pass input='column' (an Image or other column) "
                f"or input=['feature', ...] (numeric columns). Columns: {', '.join(map(repr, columns))}."
            )
        return images
    names = [input] if isinstance(input, str) else list(input)
    if not names:
        raise ValueError("input= is empty: name the input column, or the numeric feature columns.")
    for name in names:
        if name not in features:
            raise ValueError(
                f"input= names {name!r}, which is not a column of the dataset.{did_you_mean(name, columns)} "
                f"Its columns: {', '.join(map(repr, columns))}."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"input= names a column twice: {names}.")
    if len(names) > 1:
        odd = [n for n in names if not _is_numeric(features[n])]
        if odd:
            raise ValueError(
                f"input={names} mixes types: {', '.join(f'{n!r} is {_describe(features[n])}' for n in odd)}. "
                "Several input columns are stacked into one float tensor, so each must hold numbers (or "
                "fixed-length lists of them); an Image or text column is one input on its own."
            )
    return names


def _dense(array: pa.Array, name: str) -> np.ndarray:
    """float32 ``[n, ...]`` of a numeric column (lists and ArrayND nested), NaN where a row is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array.type, pa.ExtensionType):
        array = array.storage
    t = array.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        valid = _valid(array)
        present = array.filter(pa.array(valid))
        lengths = np.unique(pc.list_value_length(present).to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ValueError(
                f"Input column {name!r} holds lists of different lengths ({', '.join(map(str, lengths[:5]))}"
                f"{', ...' if len(lengths) > 5 else ''}): the inputs are stacked into one tensor, so every row needs "
                "the same length. Pad or cut them first (dataset.map), or pass it as the only input with transform=."
            )
        size = int(lengths[0]) if len(lengths) else 0
        inner = _dense(present.flatten(), name)
        out = np.full((len(array), size, *inner.shape[1:]), np.nan, dtype=np.float32)
        out[valid] = inner.reshape(-1, size, *inner.shape[1:])
        return out
    return np.asarray(pc.cast(array, pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)


def _feature_inputs(
    dataset: Any, names: Sequence[str], rows: np.ndarray | None
) -> tuple[np.ndarray, list[Problems]]:
    """``(float32 inputs [n, ...], problems)``: one column keeps its shape, several are flattened side by side."""
    n = len(dataset)
    parts, problems = [], []
    for name in names:
        values = _dense(_column(dataset, name, rows), name)
        bad = np.flatnonzero(~np.isfinite(values.reshape(n, -1)).all(axis=1))
        problems.append(_problems(bad, [f"input {name!r} is None or not finite"] * len(bad)))
        parts.append(values)
    if len(parts) == 1:
        values = parts[0] if parts[0].ndim > 1 else parts[0][:, None]
    else:
        values = np.concatenate([p.reshape(n, -1) for p in parts], axis=1)
    return values, problems


class HFSamples(Dataset):
    """Rows of a Hugging Face dataset: ``samples[i] -> (transform(input), {task: label})``.

    Args:
        dataset: the ``datasets.Dataset``; only its ``column`` is fetched, and only on ``__getitem__``.
        column: the input column: an ``Image`` column (decoded, converted to RGB) or any other.
        rows: the dataset position of each sample (rows left out by the reader are absent).
        labels: ``{task: array [n]}``: int64 class indices (-1 missing), float32 values (NaN missing),
            multilabel ``[n, C]`` 0/1 rows (a row of -1 missing), float32 ``[n, dim]`` vectors.
        kinds: ``{task: kind}``, to tell missing labels by the conventions of :mod:`hydranet.data.labels`.
        transform: applied to the decoded value.

    Picklable (``DataLoader`` workers): a dataset saved on disk pickles as its memory-mapped files.
    ``__getitems__`` fetches a batch of rows in one call, which ``MultiTaskDataset`` uses.
    """

    def __init__(
        self,
        dataset: Any,
        column: str,
        rows: np.ndarray,
        labels: Mapping[str, np.ndarray],
        kinds: Mapping[str, str],
        transform: Callable[[Any], Any],
    ) -> None:
        hf = _datasets()
        self.column = column
        self.image = isinstance(dataset.features[column], hf.Image)
        data = dataset.select_columns([column])
        if self.image and not data.features[column].decode:
            data = data.cast_column(column, hf.Image(decode=True))
        self.dataset = data
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = {name: np.asarray(values) for name, values in labels.items()}
        for name, values in self.targets.items():
            if len(values) != len(self.rows):
                raise ValueError(f"labels[{name!r}] has {len(values)} entries for {len(self.rows)} rows.")
        self._present = {name: ~missing_mask(values, kinds[name]) for name, values in self.targets.items()}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def _labels(self, index: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, values in self.targets.items():
            if self._present[name][index]:
                out[name] = torch.as_tensor(values[index])
        return out

    def _input(self, value: Any, row: int) -> Any:
        if self.image:
            if value is None:
                raise ImageReadError(f"Row {row} of the dataset has no image in column {self.column!r}.")
            value = value.convert("RGB")
        return self.transform(value)

    def _fetch(self, rows: list[int]) -> list[Any]:
        try:
            return self.dataset[rows][self.column]
        except Exception as err:  # decoding errors of any image library: find and name the row
            if len(rows) > 1:
                return [self._fetch([r])[0] for r in rows]
            raise ImageReadError(
                f"Cannot decode row {rows[0]} of column {self.column!r}: {type(err).__name__}: {err}."
            ) from err

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        row = int(self.rows[index])
        (value,) = self._fetch([row])
        return self._input(value, row), self._labels(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, dict[str, torch.Tensor]]]:
        rows = self.rows[np.asarray(indices, dtype=np.int64)].tolist()
        values = self._fetch(rows)
        return [(self._input(v, r), self._labels(i)) for v, r, i in zip(values, rows, indices)]

    def __repr__(self) -> str:
        return f"HFSamples({len(self)} rows, input={self.column!r}, tasks={list(self.targets)})"


# -- the readers -------------------------------------------------------------------------------------------
def _check_split(dataset: Any) -> Any:
    hf = _datasets()
    if isinstance(dataset, hf.DatasetDict):
        raise TypeError(
            f"read_hf takes one split, a datasets.Dataset; got a DatasetDict with splits {list(dataset)}: "
            f"pass dataset[{next(iter(dataset), 'train')!r}]."
        )
    if isinstance(dataset, (hf.IterableDataset, hf.IterableDatasetDict)):
        raise TypeError(
            "read_hf needs a map-style datasets.Dataset (random access, a length); got a streaming "
            "IterableDataset. Load it without streaming=True, or mix streams with hydranet.data.MultiTaskStream."
        )
    if not isinstance(dataset, hf.Dataset):
        raise TypeError(f"read_hf takes a datasets.Dataset, got {type(dataset).__name__}.")
    return dataset


def read_hf(
    dataset: datasets.Dataset,
    *,
    input: str | Sequence[str] | None = None,
    tasks: TasksArg = None,
    transform: Callable[[Any], Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    vocabularies: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None = None,
    unknown: str = "error",
) -> ReaderDataset:
    """A Hugging Face ``datasets.Dataset`` as a multi-task dataset (rules in the module docstring).

    Args:
        dataset: one split, e.g. ``load_dataset(...)["train"]`` or ``Dataset.from_dict(...)``.
        input: the input column (an ``Image`` column, or any column with ``transform=``) or a list of
            numeric feature columns. Default: the dataset's one ``Image`` column.
        tasks: label columns: names (kinds inferred where the type decides), ``{column: kind}``,
            ``{column: {kind, num_classes, class_names, ...}}`` or ``hn.Task`` objects named like the
            columns. Default: every column other than the inputs.
        transform: applied to each decoded input (the RGB PIL image for an ``Image`` column); default
            :func:`~hydranet.data.readers.default_transform` of ``image_size`` for images. Not for
            numeric inputs.
        image_size: ``(H, W)`` or an int, for the default transform.
        vocabularies: ``{task: [class names]}`` or a JSON file of them (another split's
            ``ds.vocabularies``), fixing the class indices of string and ClassLabel columns by name.
        unknown: a class name outside a given vocabulary: ``"error"``, or ``"missing"`` (warned).

    Returns:
        A :class:`~hydranet.data.readers.ReaderDataset`; its ``samples`` are an :class:`HFSamples`
        (image or other input) or a ``TensorDataset`` (numeric inputs), ``skipped`` the rows left out
        (``Skipped("row 12", reason)``, rows counted in the dataset's order).
    """
    hf = _datasets()
    dataset = _check_split(dataset)
    check_choice("unknown", unknown, ("error", "missing"))
    features = dataset.features
    inputs = _input_columns(features, input)
    image = len(inputs) == 1 and isinstance(features[inputs[0]], hf.Image)
    numeric = all(_is_numeric(features[c]) for c in inputs)
    if numeric:
        if transform is not None or image_size is not None:
            raise ValueError(
                f"transform= and image_size= apply to an Image (or other single) input; input={inputs} is numeric "
                "and is read as one float tensor. Transform the tensors in your model or with dataset.map."
            )
    elif image:
        transform = resolve_transform(transform, image_size)
    else:
        if transform is None or image_size is not None:
            raise ValueError(
                f"Input column {inputs[0]!r} is {_describe(features[inputs[0]])}: pass transform=, a callable that "
                "turns one value into what the model takes (a tokenizer, say); image_size= is for Image columns."
            )
        transform = resolve_transform(transform, None)
    if tasks is None:
        tasks = [c for c in features if c not in inputs]
    declared = _declare(tasks, list(features), inputs)
    vocab = as_vocabularies(vocabularies, declared)

    n = len(dataset)
    if n == 0:
        raise ValueError("The dataset has no rows.")
    rows = _row_mapping(dataset)
    encoded = [_encode(d, features[d.name], _column(dataset, d.name, rows), vocab.get(d.name), unknown)
               for d in declared]
    if numeric:
        values, input_problems = _feature_inputs(dataset, inputs, rows)
    else:
        # The image structs' validity only: no bytes are copied and nothing is decoded.
        table_valid = ~dataset.data.column(inputs[0]).is_null().to_numpy(zero_copy_only=False)
        has = table_valid if rows is None else table_valid[rows]
        missing = np.flatnonzero(~has)
        input_problems = [_problems(missing, [f"no value in input column {inputs[0]!r}"] * len(missing))]
    first: dict[int, str] = {}  # row -> its first problem (inputs, then tasks in order); rows are few
    for bad_rows, reasons in input_problems + [(e.bad, e.reasons) for e in encoded]:
        for row, reason in zip(bad_rows.tolist(), reasons):
            first.setdefault(row, reason)
    skipped = [Skipped(f"row {k}", first[k]) for k in sorted(first)]
    keep = np.ones(n, dtype=bool)
    keep[list(first)] = False
    if first:
        encoded = [dataclasses.replace(e, values=e.values[keep]) for e in encoded]
    for e in encoded:
        if missing_mask(e.values, e.task.kind).all():
            raise ValueError(
                f"Task {e.task.name!r} (column {e.task.name!r}): no row left has a label ({len(skipped)} of {n} rows "
                "skipped); check the column or leave the task out."
            )
    labels = {e.task.name: e.values for e in encoded}
    tasks_out = [e.task for e in encoded]
    if numeric:
        samples: Dataset = TensorDataset(torch.from_numpy(np.ascontiguousarray(values[keep] if first else values)),
                                         *(torch.from_numpy(v) for v in labels.values()))
    else:
        kinds = {t.name: t.kind for t in tasks_out}
        samples = HFSamples(dataset, inputs[0], np.flatnonzero(keep), labels, kinds, transform)  # type: ignore[arg-type]
    vocabularies_out = {e.task.name: e.vocabulary for e in encoded if e.vocabulary is not None}
    return assemble("read_hf", samples, tasks_out, labels, vocabularies=vocabularies_out, skipped=skipped, total=n)


def _one_split(loaded: Any, split: str | None, where: str) -> Any:
    hf = _datasets()
    if isinstance(loaded, hf.DatasetDict):
        names = list(loaded)
        if split is None:
            if len(names) == 1:
                return loaded[names[0]]
            raise ValueError(f"{where} holds the splits {names}: pass split=, e.g. split={names[0]!r}.")
        if split not in loaded:
            raise ValueError(f"{where} has no split {split!r}.{did_you_mean(split, names)} Its splits: {names}.")
        return loaded[split]
    if split is not None and loaded.split is not None and str(loaded.split) != split:
        raise ValueError(f"{where} holds one split, {str(loaded.split)!r}, not {split!r}: leave split= out.")
    if split is not None and loaded.split is None:
        raise ValueError(f"{where} holds one dataset, not a DatasetDict of splits: leave split= out.")
    return loaded


def _files(data_files: Any) -> list[str]:
    if isinstance(data_files, (str, os.PathLike)):
        return [os.fspath(data_files)]
    if isinstance(data_files, Mapping):
        return [f for v in data_files.values() for f in _files(v)]
    return [os.fspath(f) for f in data_files]


def load_hf(
    path: PathLike,
    *,
    split: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    cache_dir: PathLike | None = None,
) -> datasets.Dataset:
    """One split of local data as a ``datasets.Dataset``; nothing is downloaded.

    Args:
        path: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; a data file
            (``.csv``, ``.json`` / ``.jsonl``, ``.parquet``, ``.arrow``); a folder of data files (read by
            ``datasets.load_dataset(folder)``); or a format name (``"csv"``, ``"json"``, ``"parquet"``,
            ``"arrow"``) with ``data_files=``.
        split: the split to take from a ``DatasetDict`` (not needed when there is one).
        data_files: files (or glob patterns), or ``{split: files}``, for a format name.
        cache_dir: where ``load_dataset`` writes its Arrow cache of data files (default: the
            ``datasets`` cache, ``~/.cache/huggingface/datasets``).
    """
    hf = _datasets()
    builders = sorted(set(FILE_FORMATS.values()))
    cache = None if cache_dir is None else os.fspath(cache_dir)
    text = os.fspath(path)
    local = Path(text).expanduser()
    if data_files is not None:
        if text not in builders:
            raise ValueError(
                f"With data_files=, path names their format: one of {builders}, got {text!r}."
                f"{did_you_mean(text, builders)}"
            )
        import glob

        for pattern in _files(data_files):
            if not glob.glob(os.path.expanduser(pattern)):
                raise FileNotFoundError(f"data_files: {pattern} does not exist (nothing is downloaded).")
        return _one_split(_load(hf, text, data_files, split, cache), split, f"The {text} files {data_files!r}")
    if local.is_dir():
        if any((local / name).is_file() for name in _SAVED):
            return _one_split(hf.load_from_disk(str(local)), split, f"The saved dataset {local}")
        return _one_split(_load(hf, str(local), None, split, cache), split, f"The folder {local}")
    if local.is_file():
        builder = FILE_FORMATS.get(local.suffix.lower())
        if builder is None:
            raise ValueError(
                f"Cannot tell the format of {local.name}: use one of {', '.join(FILE_FORMATS)}, or pass the format "
                f"with data_files=, e.g. load_hf('csv', data_files={str(local)!r})."
            )
        return _one_split(_load(hf, builder, str(local), split, cache), split, f"The file {local}")
    if text in builders:
        raise ValueError(f"path={text!r} is a format: give the files with data_files=[...].")
    raise FileNotFoundError(
        f"{local} does not exist. Only local data is read (no download): for a dataset of the Hugging Face Hub, "
        "load it with datasets.load_dataset(...) (or save_to_disk it once) and pass the Dataset to read_hf."
    )


def _load(hf: Any, builder: str, data_files: Any, split: str | None, cache: str | None) -> Any:
    import pyarrow as pa

    try:
        return hf.load_dataset(builder, data_files=data_files, split=split, cache_dir=cache)
    except (pa.ArrowInvalid, pa.ArrowTypeError, hf.exceptions.DatasetGenerationError) as err:
        cause = err.__cause__ or err
        raise ValueError(
            f"Cannot read {data_files or builder} with datasets ({type(cause).__name__}: {cause}). A column whose "
            "values mix types (numbers and text) is a common cause: give each column one type."
        ) from err


def read_hf_path(
    path: PathLike,
    *,
    split: str | None = None,
    input: str | Sequence[str] | None = None,
    tasks: TasksArg = None,
    data_files: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
    cache_dir: PathLike | None = None,
    **options: Any,
) -> ReaderDataset:
    """:func:`read_hf` of :func:`load_hf` ``(path, split=, data_files=, cache_dir=)``: local data, no download.

    ``options`` are those of :func:`read_hf` (``transform``, ``image_size``, ``vocabularies``,
    ``unknown``).
    """
    dataset = load_hf(path, split=split, data_files=data_files, cache_dir=cache_dir)
    return read_hf(dataset, input=input, tasks=tasks, **options)
