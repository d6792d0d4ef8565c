"""Labels in folder names: ``root/black_jeans/0001.jpg`` -> ``color="black"``, ``item="jeans"``.

Each folder directly under ``root`` names the labels of every image below it (sub-folders included).
The name is split into one field per task by a ``separator`` (``"_"`` with ``tasks=["color",
"item"]``), or by a regular expression with one named group per task
(``r"(?P<color>[a-z]+)_(?P<item>[a-z]+)"``, matched against the whole name); with neither, the whole
folder name is the label of a single task (``"label"`` unless named), as in ``ImageFolder``.

Folder names are class *names*: each task's vocabulary is its distinct names, sorted (so ``"10"``
comes before ``"2"``, as in ``ImageFolder``), unless given with ``vocabularies=``. A folder whose
name does not split into the tasks is left out and reported, with the images under it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hydranet.data.readers.base import (
    OnError,
    ReaderDataset,
    Verify,
    _check_policies,
    _drop_problems,
    _image_dataset,
    _resolve_transform,
    _screen_images,
)
from hydranet.data.readers.columns import Declared, Skipped, TasksArg, as_vocabularies, declare_tasks, encode_column
from hydranet.data.readers.images import IMAGE_EXTENSIONS

__all__ = ["read_folders"]


def _image_files(folder: Path, extensions: Sequence[str], *, recursive: bool) -> list[str]:
    """Image files under ``folder`` (sorted; hidden files and folders left out)."""
    suffixes = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        found += [
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in suffixes
        ]
    return found


def _check_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Image folder {path} does not exist (or is not a folder).")
    return path.resolve()


def _splitter(
    pattern: str | re.Pattern[str] | None, separator: str | None, tasks: TasksArg
) -> tuple[list[Declared], Callable[[str], list[str] | None], str]:
    """The declared tasks, a function folder name -> fields (None if it does not fit), and its description."""
    if pattern is not None and separator is not None:
        raise ValueError("Give either pattern= (a regular expression) or separator=, not both.")
    if pattern is not None:
        regex = re.compile(pattern)
        groups = sorted(regex.groupindex, key=lambda group: regex.groupindex[group])
        if not groups:
            raise ValueError(f"pattern {regex.pattern!r} has no named group: write one per task, e.g. (?P<color>\\w+).")
        declared = declare_tasks(groups if tasks is None else tasks, default_kind="multiclass")
        absent = [d.name for d in declared if d.name not in regex.groupindex]
        if absent:
            raise ValueError(f"Task(s) {absent} have no named group in pattern {regex.pattern!r} (groups: {groups}).")

        def by_pattern(name: str) -> list[str] | None:
            match = regex.fullmatch(name)
            return None if match is None else [match.group(d.name) for d in declared]

        return declared, by_pattern, f"does not match pattern {regex.pattern!r}"
    if separator is not None:
        if not separator:
            raise ValueError("separator= must be a non-empty string such as '_'.")
        if tasks is None:
            raise ValueError(f"separator={separator!r} needs the task names in order, e.g. tasks=['color', 'item'].")
        declared = declare_tasks(tasks, default_kind="multiclass")

        def by_separator(name: str) -> list[str] | None:
            fields = name.split(separator)
            return fields if len(fields) == len(declared) and all(fields) else None

        return declared, by_separator, f"does not split into {len(declared)} non-empty fields on {separator!r}"
    declared = declare_tasks(["label"] if tasks is None else tasks, default_kind="multiclass")
    if len(declared) != 1:
        raise ValueError(
            f"{len(declared)} tasks from one folder name need separator= or pattern= to split it into fields."
        )
    return declared, lambda name: [name], ""


def read_folders(
    root: str | os.PathLike[str],
    pattern: str | re.Pattern[str] | None = None,
    *,
    separator: str | None = None,
    tasks: TasksArg = None,
    transform: Callable[[Any], Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    vocabularies: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None = None,
    unknown: str = "error",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    verify: Verify = False,
    on_error: OnError = "error",
) -> ReaderDataset:
    """Images in folders whose names hold the labels (see the module docstring).

    Longer than 80 lines because of its 11 parameters: the signature and their documentation take
    35 of its 88 lines; the reading itself is delegated to helpers.

    Args:
        root: the folder holding one folder per label combination.
        pattern: regular expression with a named group per task, matched against the whole folder name.
        separator: splits the folder name into the tasks' fields, in the order of ``tasks``.
        tasks: task names, or ``{name: kind or Task fields or Task}``; kinds default to ``multiclass``.
            Default: the pattern's named groups, or one task ``"label"``.
        transform: callable applied to each RGB PIL image; default :func:`default_transform` of
            ``image_size``.
        image_size: ``(H, W)`` (or one int) of the default transform.
        vocabularies: ``{task: [class names]}`` or a JSON file of them (e.g. the training split's),
            fixing the class indices.
        unknown: a folder name outside a given vocabulary is an ``"error"``, or a ``"missing"`` label.
        extensions: file extensions taken as images (case-insensitive).
        verify: open every image at construction (``True``: ``Image.verify()``, ``"decode"``: decode
            all pixels); a bad file is an error naming it.
        on_error: ``"error"``, or ``"skip"``: check every image at construction and leave out (and
            report) the unreadable ones.
    """
    _check_policies(verify, on_error, unknown)
    transform = _resolve_transform(transform, image_size)
    base = _check_root(root)
    declared, split, mismatch = _splitter(pattern, separator, tasks)
    vocab = as_vocabularies(vocabularies, declared)

    folders = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    files = [_image_files(base / name, extensions, recursive=True) for name in folders]
    loose = _image_files(base, extensions, recursive=False)
    paths = np.array([p for group in files for p in group], dtype=object)
    counts = np.array([len(group) for group in files], dtype=np.int64)
    if not len(paths):
        raise ValueError(f"No image ({', '.join(extensions)}) in the folders under {base}.")

    # Names are parsed once per folder, then repeated for the images in it.
    fields = [split(name) for name in folders]
    fits = np.array([f is not None for f in fields])
    if not fits[counts > 0].any():
        raise ValueError(f"No folder under {base} can be read: each name {mismatch} (found {folders[:10]}).")
    n_tasks = len(declared)
    table = np.array([f if f is not None else [None] * n_tasks for f in fields], dtype=object).reshape(-1, n_tasks)
    columns = [
        encode_column(
            d,
            np.repeat(table[:, j], counts),
            vocabulary=vocab.get(d.name),
            names_only=True,
            unknown=unknown,
            source=" (folder names)",
        )
        for j, d in enumerate(declared)
    ]
    keep, skipped = _drop_problems(paths, columns)
    malformed = np.repeat(~fits, counts)
    keep &= ~malformed
    skipped = (
        [Skipped(p, "not inside a label folder") for p in loose]
        + [Skipped(p, f"folder {Path(p).relative_to(base).parts[0]!r} {mismatch}") for p in paths[malformed]]
        + skipped
    )
    paths, columns = paths[keep], [c.take(keep) for c in columns]

    ok, _, bad_files = _screen_images(paths, verify, on_error)
    return _image_dataset(
        "read_folders",
        paths[ok],
        [c.take(ok) for c in columns],
        transform=transform,
        skipped=skipped + bad_files,
        total=len(keep) + len(loose),
    )
