"""Label columns: declared tasks, text cells turned into labels, class vocabularies, skip reports.

Every reader ends with one *cell* per sample and task: the text of a folder-name field, of a
file-name field or of a manifest cell, or ``None`` where the label is missing (an empty cell).
:func:`encode_column` turns a task's cells into a label array, int64 class indices with ``-1`` for a
missing label or float32 values with NaN for a missing one, following these rules:

* ``regression``: cells are numbers.
* ``binary`` / ``multiclass``: integer cells are class indices (``0 .. num_classes - 1``; ``-1``
  is a missing label), unless the reader's values are always names (folder names) or a vocabulary
  is given for the task. Other cells are class *names*, mapped to indices through the task's
  vocabulary: the one given (``vocabularies=``, or the task's ``class_names``), otherwise the
  distinct names sorted (``sorted()``, so the same data always gives the same indices).
* kind not declared: text gives ``multiclass``, numbers with a fraction give ``regression``, and
  integers are an error, because they could be either (declare the kind).

A cell that cannot be used (``race=7`` for 5 classes, ``age=abc``) excludes its sample, which is
reported (:class:`Skipped`, :class:`ReaderWarning`), never silently mislabelled. A class name missing
from a given vocabulary is an error, or a missing label with ``unknown="missing"``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, Union, cast

import numpy as np

from hydranet.data._none import none_mask
from hydranet.tasks import KINDS, MISSING_INT, Task, TaskKind

__all__ = [
    "Declared",
    "Encoded",
    "ReaderWarning",
    "Skipped",
    "TaskSpec",
    "TasksArg",
    "as_vocabularies",
    "declare_tasks",
    "encode_column",
    "load_vocabularies",
    "save_vocabularies",
    "text_cells",
]

#: How one task is declared: a kind (``"binary"``), Task keyword arguments (``{"kind": "multiclass",
#: "num_classes": 5}``), or a :class:`~hydranet.Task`.
TaskSpec = Union[str, Mapping[str, Any], Task]
#: The ``tasks=`` of a reader: names (kinds inferred), Task objects, or ``{name: TaskSpec}``.
TasksArg = Union[Sequence[Union[str, Task]], Mapping[str, Union[TaskSpec, None]], None]

_OPTIONS = tuple(f.name for f in dataclasses.fields(Task) if f.name not in ("name", "kind"))
_SHOWN = 10  # entries listed in warnings and errors; the rest are counted
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


class ReaderWarning(UserWarning):
    """Samples were left out (malformed names, invalid values, unreadable files) or labels dropped."""


class Skipped(NamedTuple):
    """A file (or manifest row) left out, and why."""

    path: str
    reason: str


def _listing(entries: Sequence[str]) -> str:
    """The first entries, one per line, and how many more there are."""
    lines = [f"  {e}" for e in entries[:_SHOWN]]
    if len(entries) > _SHOWN:
        lines.append(f"  ... and {len(entries) - _SHOWN} more")
    return "\n".join(lines)


def _reader_warning(message: str) -> None:
    """Warn with the user's line as the location: the first caller outside this package."""
    level = 1
    frame: FrameType | None = sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ReaderWarning, stacklevel=level)


def _warn_skipped(reader: str, skipped: Sequence[Skipped], total: int) -> None:
    if skipped:
        _reader_warning(
            f"{reader}: {len(skipped)} of {total} samples skipped (all of them are in dataset.skipped):\n"
            + _listing([f"{s.path}: {s.reason}" for s in skipped])
        )


@dataclass(frozen=True)
class Declared:
    """A task as declared, before its classes are known from the data."""

    name: str
    kind: str | None  # None: inferred from the values
    options: Mapping[str, Any]  # the other Task fields given


def declare_tasks(tasks: TasksArg, *, default_kind: str | None = None, allow_empty: bool = False) -> list[Declared]:
    """Normalise a reader's ``tasks=`` (see :data:`TasksArg`) to :class:`Declared` tasks, in order."""
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    if tasks is not None and len(tasks) == 0 and allow_empty:
        return []
    if tasks is None or len(tasks) == 0:
        raise ValueError("No tasks declared: pass tasks=['name', ...] or {'name': 'kind', ...}.")
    if isinstance(tasks, Mapping):
        items = list(tasks.items())
    else:  # a list of names (kinds by default) and Task objects
        items = [(t.name, t) if isinstance(t, Task) else (t, None) for t in tasks]
    out: list[Declared] = []
    for name, spec in items:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Task name {name!r} is not valid: use an identifier such as 'age' or 'color'.")
        kind: str | None
        if isinstance(spec, Task):
            if spec.name != name:
                raise ValueError(f"tasks={{{name!r}: Task({spec.name!r}, ...)}}: the key and the Task's name differ.")
            kind, options = spec.kind, {f: getattr(spec, f) for f in _OPTIONS}
        elif spec is None:
            kind, options = default_kind, {}
        elif isinstance(spec, str):
            kind, options = spec, {}
        elif isinstance(spec, Mapping):
            options = dict(spec)
            kind = options.pop("kind", default_kind)
            unknown = sorted(set(options) - set(_OPTIONS))
            if unknown:
                raise ValueError(f"Task {name!r}: unknown field(s) {unknown}; allowed: kind, {', '.join(_OPTIONS)}.")
        else:
            raise TypeError(f"Task {name!r}: expected a kind, a mapping of Task fields or a Task, got {spec!r}.")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"Task {name!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}.")
        if kind == "multilabel":
            raise ValueError(
                f"Task {name!r}: readers take one value per task and sample; describe a multilabel target as "
                "one binary task per label."
            )
        if any(d.name == name for d in out):
            raise ValueError(f"Task {name!r} is declared twice.")
        out.append(Declared(name, kind, options))
    return out


# -- vocabularies ------------------------------------------------------------------------------------------
def _check_vocabularies(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must map task names to lists of class names, got {type(value).__name__}.")
    out = {}
    for task, names in value.items():
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{where}[{task!r}] must be a list of class names (strings), got {names!r}.")
        if len(set(names)) != len(names):
            raise ValueError(f"{where}[{task!r}] lists a class name twice: {list(names)}.")
        out[str(task)] = list(names)
    return out


def save_vocabularies(vocabularies: Mapping[str, Sequence[str]], path: str | os.PathLike[str]) -> None:
    """Write ``{task: [class names]}`` as JSON (index ``i`` of a list is class index ``i``)."""
    vocab = _check_vocabularies(vocabularies, "vocabularies")
    Path(path).write_text(json.dumps(vocab, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_vocabularies(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read vocabularies written by :func:`save_vocabularies`."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Vocabulary file {path} does not exist.") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"Vocabulary file {path} is not valid JSON: {err}.") from err
    return _check_vocabularies(raw, f"the vocabulary file {path}")


def as_vocabularies(
    value: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None, tasks: Sequence[Declared]
) -> dict[str, list[str]]:
    """``vocabularies=`` of a reader (a mapping, a JSON file, or None), checked against its tasks."""
    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        vocab = load_vocabularies(value)
    else:
        vocab = _check_vocabularies(value, "vocabularies=")
    names = [d.name for d in tasks]
    stray = sorted(set(vocab) - set(names))
    if stray:
        raise ValueError(f"vocabularies= has task(s) {stray} that are not read here (tasks: {names}).")
    return vocab


# -- cells -------------------------------------------------------------------------------------------------
def text_cells(values: Sequence[Any]) -> np.ndarray:
    """Object array of stripped strings, ``None`` where the text is empty (a missing label)."""
    text = np.char.strip(np.asarray(values, dtype=str))
    cells = text.astype(object)
    cells[text == ""] = None
    return cells


def _parse_numbers(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(numbers, ok)`` for an array of distinct strings (NaN where not a number)."""
    try:
        numbers = texts.astype(np.float64)
        return numbers, np.ones(len(texts), dtype=bool)
    except ValueError:
        pass  # some are not numbers: find which, one distinct value at a time
    numbers = np.full(len(texts), np.nan)
    ok = np.zeros(len(texts), dtype=bool)
    for k, text in enumerate(texts):
        try:
            numbers[k], ok[k] = float(text), True
        except ValueError:
            pass
    return numbers, ok


@dataclass
class Encoded:
    """One task's labels, aligned with the cells they came from."""

    values: np.ndarray  # int64 class indices (-1 missing) or float32 values (NaN missing)
    problems: np.ndarray  # object [n]: None, or why that sample cannot be used
    task: Task
    vocabulary: list[str] | None  # class names of the indices, when the cells were names

    def take(self, keep: np.ndarray) -> Encoded:
        """The rows where ``keep`` is True."""
        return dataclasses.replace(self, values=self.values[keep], problems=self.problems[keep])


def _convert(
    name: str, texts: np.ndarray, converter: Callable[[str], Any] | None, problems_u: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(texts to read, usable)`` of the distinct cell ``texts`` after ``converter`` (``None``: as they are).

    A converter returns ``None`` for a missing label; one that raises marks its text's problem in
    ``problems_u`` (the user's converter may raise anything: it is reported with the value)."""
    if converter is None:
        return texts, np.ones(len(texts), dtype=bool)
    converted = np.empty(len(texts), dtype=object)
    for k, text in enumerate(texts):
        try:
            converted[k] = converter(str(text))
        except Exception as err:
            problems_u[k] = f"{name}={str(text)!r}: converter failed ({type(err).__name__}: {err})"
    as_text = np.array(["" if v is None else str(v) for v in converted], dtype=str)
    return as_text, ~none_mask(converted)


def _infer_kind(name: str, source: str, numeric: np.ndarray, integral: np.ndarray) -> str:
    """The kind of an undeclared task from its usable values: numbers with a fraction are a regression,
    text a multiclass task; integers only are ambiguous (class indices or numbers), an error."""
    if not numeric.all():
        return "multiclass"
    if integral.all():
        raise ValueError(
            f"Task {name!r}{source}: its values are integers, which could be class indices or numbers; "
            f"declare the kind, e.g. tasks={{{name!r}: 'regression'}} or {{{name!r}: 'multiclass'}}."
        )
    return "regression"


def _codes_by_name(
    name: str, source: str, as_text: np.ndarray, usable: np.ndarray, inverse: np.ndarray, vocab: list[str],
    unknown: str,
) -> np.ndarray:
    """Class indices in ``vocab`` of the usable distinct texts; a name outside it is an error, or with
    ``unknown="missing"`` a missing label (warned). ``inverse`` maps samples to distinct texts (counts)."""
    index = {v: i for i, v in enumerate(vocab)}
    codes = np.array([index.get(t, -2) for t in as_text[usable]], dtype=np.int64)
    outside = codes == -2
    if outside.any():
        found = sorted(set(as_text[usable][outside].tolist()))
        count = int(np.isin(inverse, np.flatnonzero(usable)[outside]).sum())
        if unknown == "error":
            raise ValueError(
                f"Task {name!r}{source}: {count} sample(s) have class name(s) outside its vocabulary "
                f"{vocab}:\n{_listing(found)}\nPass unknown='missing' to treat them as missing labels, "
                "or a vocabulary that includes them."
            )
        codes[outside] = MISSING_INT
        _reader_warning(
            f"Task {name!r}{source}: {count} label(s) dropped (now missing): class name(s) outside its "
            f"vocabulary {vocab}:\n{_listing(found)}"
        )
    return codes


def encode_column(
    declared: Declared,
    cells: np.ndarray,
    *,
    vocabulary: Sequence[str] | None = None,
    names_only: bool = False,
    converter: Callable[[str], Any] | None = None,
    unknown: str = "error",
    source: str = "",
) -> Encoded:
    """Labels of one task from its cells (see the module docstring for the rules).

    Args:
        declared: the task as declared.
        cells: object array ``[n]``, strings or ``None`` (missing).
        vocabulary: class names fixing the indices (e.g. the training split's).
        names_only: class cells are names even when they look like integers (folder names).
        converter: applied to each distinct cell text first; its result (a number, a class name, or
            ``None`` for a missing label) is read by the same rules; an exception marks the cell invalid.
        unknown: ``"error"`` or ``"missing"``, for class names outside a given vocabulary.
        source: where the cells come from, for messages.
    """
    name = declared.name
    n = len(cells)
    present = ~none_mask(cells)
    texts, inverse = np.unique(cells[present].astype(str), return_inverse=True)
    # Everything below works on the distinct values, then maps back with `inverse`.
    problems_u = np.full(len(texts), None, dtype=object)
    as_text, usable = _convert(name, texts, converter, problems_u)
    usable &= none_mask(problems_u)
    numbers, numeric = _parse_numbers(as_text)
    numeric &= usable
    integral = numeric & np.isfinite(numbers) & (numbers == np.floor(numbers))
    if not usable.any():
        raise ValueError(
            f"Task {name!r}{source}: no sample has a usable label; check the data or leave the task out."
        )

    kind = declared.kind or _infer_kind(name, source, numeric[usable], integral[usable])
    options = dict(declared.options)
    vocab: list[str] | None = None
    if kind == "regression":
        if int(options.get("dim") or 1) != 1:
            raise ValueError(f"Task {name!r}{source}: a reader gives one value per task and sample; dim must be 1.")
        bad = usable & ~(numeric & np.isfinite(numbers))
        problems_u[bad] = [f"{name}={str(t)!r} is not a finite number" for t in texts[bad]]
        codes_u = np.where(usable & ~bad, numbers, np.nan).astype(np.float32)
        task = Task(name=name, kind="regression", **options)
        fill: Any = np.nan
    else:
        class_names = options.get("class_names")
        as_names = names_only or vocabulary is not None or not integral[usable].all()
        codes_u = np.full(len(texts), MISSING_INT, dtype=np.int64)
        if as_names:
            given = vocabulary if vocabulary is not None else class_names
            vocab = list(given) if given is not None else sorted(set(as_text[usable].tolist()))
            codes_u[usable] = _codes_by_name(name, source, as_text, usable, inverse, vocab, unknown)
            _check_vocabulary_size(name, kind, vocab, options, given is None, source)
            n_classes = len(vocab)
        else:
            ints = np.where(integral, numbers, 0).astype(np.int64)
            declared_n = options.get("num_classes") if kind == "multiclass" else 2
            if declared_n is None and class_names is not None:
                declared_n = len(class_names)
            n_classes = int(declared_n) if declared_n is not None else max(int(ints[usable].max()) + 1, 2)
            bad = usable & ((ints < MISSING_INT) | (ints >= n_classes))
            problems_u[bad] = [f"{name}={str(t)!r} is not a class index in [0, {n_classes})" for t in texts[bad]]
            codes_u[usable & ~bad] = ints[usable & ~bad]
        if kind == "multiclass":
            options["num_classes"] = n_classes
        options["class_names"] = vocab if vocab is not None else class_names
        task = Task(name=name, kind=cast(TaskKind, kind), **options)  # kind: checked in declare_tasks
        fill = MISSING_INT

    values = np.full(n, fill, dtype=codes_u.dtype)
    values[present] = codes_u[inverse]
    problems = np.full(n, None, dtype=object)
    problems[present] = problems_u[inverse]
    return Encoded(values, problems, task, vocab)


def _check_vocabulary_size(
    name: str, kind: str, vocab: list[str], options: Mapping[str, Any], built: bool, source: str
) -> None:
    where = f"Task {name!r}{source}"
    if kind == "binary" and len(vocab) != 2:
        if built and len(vocab) < 2:
            raise ValueError(
                f"{where} is binary but only {vocab} occurs; name both classes, e.g. "
                f"vocabularies={{{name!r}: ['no', 'yes']}} (index 0, then 1)."
            )
        raise ValueError(f"{where} is binary but has {len(vocab)} class names {vocab}; use kind='multiclass'.")
    if kind == "multiclass":
        if len(vocab) < 2:
            raise ValueError(
                f"{where}: only the class {vocab} occurs; a multiclass task needs at least 2. Give all class "
                f"names with vocabularies={{{name!r}: [...]}}."
            )
        declared_n = options.get("num_classes")
        if declared_n is not None and int(declared_n) != len(vocab):
            raise ValueError(
                f"{where}: num_classes={declared_n} but its vocabulary has {len(vocab)} names {vocab}; "
                "drop num_classes (it is taken from the vocabulary) or give the full vocabulary."
            )


def _first_problems(problems: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Object ``[n]``: for each sample, the first of its problems (``None`` if it has none)."""
    out = np.full(n, None, dtype=object)
    for column in problems:
        fill = none_mask(out) & ~none_mask(column)
        out[fill] = column[fill]
    return out
