"""One task's labels from its Arrow column: the rules of the table in :mod:`hydranet.data.readers.hf`.

Private to :mod:`hydranet.data.readers.hf`. :func:`declare` turns ``tasks=`` into declared tasks that
name label columns; :func:`encode` reads one of them, by its feature type, into the label array of the
task (``-1`` / NaN / a row of ``-1`` where missing), its :class:`~hydranet.tasks.Task` and vocabulary,
and the rows whose value cannot be a label (kept sparse, never mislabelled).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from hydranet._checks import did_you_mean
from hydranet.data._none import none_mask
from hydranet.data.readers._hf_arrow import (
    Problems,
    describe,
    distinct_names,
    float_values,
    int_values,
    is_list,
    list_parts,
    make_problems,
    scalar_type,
)
from hydranet.data.readers.columns import Declared, TasksArg, declare_tasks, encode_column, _listing, _reader_warning
from hydranet.tasks import MISSING_INT, Task, TaskKind

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LabelColumn", "declare", "encode"]

_NONE_INSIDE = -5  # a None inside a list: a problem of that row
_DROPPED = -4  # a name outside the vocabulary, dropped with unknown="missing"
_OPTIONS = tuple(f.name for f in dataclasses.fields(Task) if f.name not in ("name", "kind"))

_LABEL_TYPES = (
    "labels are ClassLabel, bool, int, float or string columns, a List of ClassLabel, string or int "
    "(multilabel), or a fixed-length List of floats (vector regression)"
)


# -- declared tasks ----------------------------------------------------------------------------------------
def _spec_kind(spec: Any) -> str | None:
    if isinstance(spec, Task):
        return spec.kind
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return spec.get("kind")
    return None


def declare(tasks: TasksArg, columns: Sequence[str], inputs: Sequence[str]) -> list[Declared]:
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



@dataclasses.dataclass
class LabelColumn:
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
    names = f"outside its vocabulary {list(given)}:\n{_listing(list(found))}"
    if unknown == "error":
        raise ValueError(
            f"{where} have class name(s) {names}\nPass unknown='missing' to treat them as missing labels, or a "
            "vocabulary that includes them."
        )
    _reader_warning(f"{where} dropped (now missing labels): class name(s) {names}")


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
    return Task(name=d.name, kind=cast(TaskKind, kind), **options)  # kind: checked by _check_kind


def _indices_to_classes(
    d: Declared, values: np.ndarray, valid: np.ndarray, n_classes: int, source: str
) -> tuple[np.ndarray, Problems]:
    """int64 class indices (-1 missing) and problems, from numbers that should be indices in [0, n)."""
    finite = np.isfinite(values) if values.dtype.kind == "f" else np.ones(len(values), dtype=bool)
    whole = finite & (np.floor(values) == values) if values.dtype.kind == "f" else finite
    ok = valid & whole & (values >= MISSING_INT) & (values < n_classes)
    bad = np.flatnonzero(valid & ~ok)
    codes = np.full(len(values), MISSING_INT, dtype=np.int64)
    codes[ok] = values[ok].astype(np.int64)
    reasons = [f"{d.name}={values[k].item()!r} is not a class index in [0, {n_classes})" for k in bad]
    return codes, make_problems(bad, reasons)


def _class_label(d: Declared, feature: Any, array: pa.Array, vocab: Sequence[str] | None, unknown: str,
                 source: str) -> LabelColumn:
    names = list(feature.names)
    if d.kind is None:
        d = dataclasses.replace(d, kind="multiclass")
    _check_kind(d, ("multiclass", "binary"), f"a ClassLabel column (classes {names})", source)
    values, valid = int_values(array)
    codes, problems = _indices_to_classes(d, values, valid, len(names), source)
    given = vocab if vocab is not None else d.options.get("class_names")
    codes, names = _remap(d, names, given, codes, unknown, source)
    task = _class_task(d, str(d.kind), names, len(names), source)
    return LabelColumn(codes, task, names, *problems)


def _numbers(d: Declared, kind_of: str, array: pa.Array, vocab: Sequence[str] | None, source: str) -> LabelColumn:
    name = d.name
    if vocab is not None:
        raise ValueError(
            f"vocabularies[{name!r}]: column {name!r} holds {kind_of} values, not class names; vocabularies apply "
            f"to string and ClassLabel columns. Name its classes with tasks={{{name!r}: {{'kind': ..., "
            "'class_names': [...]}}}."
        )
    if kind_of == "float":
        values = float_values(array)
        valid = ~np.isnan(values)
    else:
        values, valid = int_values(array)
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
        problems = make_problems(bad, [f"{name}={floats[k]!r} is not a finite number" for k in bad])
        return LabelColumn(out, Task(name=name, kind="regression", **d.options), None, *problems)
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
    return LabelColumn(codes, _class_task(d, kind, names, int(declared_n), source), None, *problems)


def _is_int_text(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except (ValueError, OverflowError):
        return False


def _strings(d: Declared, array: pa.Array, vocab: Sequence[str] | None, unknown: str, source: str) -> LabelColumn:
    """Text labels: the rules of :func:`encode_column`, applied to the distinct values only."""
    codes, names = distinct_names(array)
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
    bad_names = np.flatnonzero(~none_mask(encoded.problems))  # problems of distinct values
    bad = np.flatnonzero(present & np.isin(codes, bad_names))
    return LabelColumn(values, encoded.task, encoded.vocabulary, bad, encoded.problems[codes[bad]].tolist())


def _multilabel(d: Declared, inner: Any, kind_of: str, array: pa.Array, vocab: Sequence[str] | None,
                unknown: str, source: str) -> LabelColumn:
    """0/1 rows ``[n, C]`` (a row of -1 where the list is None) from lists of classes, names or indices."""
    name, n = d.name, len(array)
    valid, _, flat, owner = list_parts(array)
    given = vocab if vocab is not None else d.options.get("class_names")
    names: list[str] | None
    if kind_of == "string":
        codes, distinct = distinct_names(flat)
        names = distinct.tolist()
        target = given if given is not None else sorted(names)
    else:
        codes, ok = int_values(flat)
        codes[~ok] = _NONE_INSIDE
        names = list(inner.names) if kind_of == "class" else None
        target = given
    if names is not None:
        codes, names = _remap(d, names, target, codes, unknown, source, dropped=_DROPPED, what="label(s)")
        width = len(names)
    else:
        names = list(given) if given is not None else None
        declared = d.options.get("num_classes") or (len(names) if names is not None else None)
        if declared is None:
            raise ValueError(
                f"Task {name!r}{source} is a List of integers: declare it multilabel with its number of labels, "
                f"e.g. tasks={{{name!r}: {{'kind': 'multilabel', 'num_classes': K}}}} (the integers are the indices "
                "of the labels present)."
            )
        width = int(declared)
    use = (codes >= 0) & (codes < width)
    bad_rows = np.unique(owner[~use & (codes != _DROPPED)])
    problems = make_problems(bad_rows, [f"{name}: a value in row {k} is not a label in [0, {width})" for k in bad_rows])
    labels = np.zeros((n, width), dtype=np.float32)
    labels[owner[use], codes[use]] = 1.0
    labels[~valid] = MISSING_INT  # a row of -1: no label for this task
    options = {k: v for k, v in d.options.items() if k not in ("num_classes", "class_names")}
    task = Task(name=name, kind="multilabel", num_classes=width, class_names=names, **options)
    return LabelColumn(labels, task, names if kind_of in ("class", "string") else None, *problems)


def _vectors(d: Declared, array: pa.Array, source: str) -> LabelColumn:
    name, n = d.name, len(array)
    valid, lengths, flat, _ = list_parts(array)
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
    values = float_values(flat)
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
    return LabelColumn(out, Task(name=name, kind="regression", dim=dim, **options), None, *make_problems(bad, reasons))


def encode(d: Declared, feature: Any, array: pa.Array, vocab: Sequence[str] | None, unknown: str) -> LabelColumn:
    """One task's labels from its Arrow column (see the module docstring for the rules)."""
    source = f" (column {d.name!r})"
    kind_of = scalar_type(feature)
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
    if is_list(feature):
        inner = scalar_type(feature.feature)
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
            f"Column {d.name!r} holds JSON values of mixed types ({describe(feature)}), so it cannot be a label: "
            "give it one type (all numbers or all strings), e.g. when writing the file, or with "
            f"dataset.cast_column({d.name!r}, datasets.Value('string'))."
        )
    if isinstance(feature, dict):
        fix = "Flatten it first (dataset = dataset.flatten()) and name the field's column, e.g. 'meta.label'."
    elif is_list(feature):
        fix = "Convert it with dataset.map to one of those."
    else:
        fix = "Pass it as input= instead, or convert it with dataset.map."
    raise ValueError(f"Column {d.name!r} is {describe(feature)}, which cannot be a label: {_LABEL_TYPES}. {fix}")
