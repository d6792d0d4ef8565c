"""Labels in file names: ``UTKFace/30_0_3_20170117145159065.jpg.chip.jpg`` -> age 30, gender 0, race 3.

A regular expression with one named group per task is matched against each *whole* file name (end
it with ``\\..+`` to accept any extension). Fields that are not tasks are unnamed groups or plain
patterns; a named group that did not take part in the match (``(?P<x>...)?``) is a missing label.

A file whose name does not match, or whose value is invalid (not a number, a class index out of
range such as race 7 of 5 classes), is left out and reported in a :class:`ReaderWarning` (the first
names and the count) and in ``dataset.skipped``: never silently mislabelled. UTKFace has a few such
names (``39_1_20170116174525125.jpg.chip.jpg`` has no race field).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from hydranet._checks import check_bool
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
from hydranet.data.readers.columns import (
    Skipped,
    TasksArg,
    as_vocabularies,
    declare_tasks,
    encode_column,
    _reader_warning,
)
from hydranet.data.readers.folders import _check_root, _image_files
from hydranet.data.readers.images import IMAGE_EXTENSIONS

__all__ = ["UTKFACE_PATTERN", "UTKFACE_TASKS", "read_filenames"]

#: UTKFace names, ``age_gender_race_date.jpg.chip.jpg`` (the date is not a task).
UTKFACE_PATTERN = r"(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_\d+\..+"
#: UTKFace's tasks: age in years, gender 0 male / 1 female, race 0-4.
UTKFACE_TASKS: Mapping[str, Any] = MappingProxyType(
    {
        "age": "regression",
        "gender": MappingProxyType({"kind": "binary", "class_names": ("male", "female")}),
        "race": MappingProxyType(
            {"kind": "multiclass", "num_classes": 5, "class_names": ("white", "black", "asian", "indian", "others")}
        ),
    }
)


def read_filenames(
    root: str | os.PathLike[str],
    pattern: str | re.Pattern[str],
    *,
    tasks: TasksArg = None,
    converters: Mapping[str, Callable[[str], Any]] | None = None,
    transform: Callable[[Any], Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    vocabularies: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None = None,
    unknown: str = "error",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    recursive: bool = False,
    verify: Verify = False,
    on_error: OnError = "error",
) -> ReaderDataset:
    """Images whose file names hold the labels (see the module docstring).

    Longer than 80 lines because of its 12 parameters: the signature and their documentation take
    34 of its 89 lines; the reading itself is delegated to helpers.

    Args:
        root: the folder of the images.
        pattern: regular expression with a named group per task, e.g. :data:`UTKFACE_PATTERN`.
        tasks: ``{name: kind or Task fields or Task}`` (e.g. :data:`UTKFACE_TASKS`), or names whose
            kinds are inferred from the values (integers need a declared kind). Default: every named
            group, kinds inferred.
        converters: ``{task: function(text) -> value}`` applied to a field before it is read, e.g.
            ``{"gender": {"m": 0, "f": 1}.__getitem__}``; ``None`` from it is a missing label and an
            exception an invalid value.
        transform, image_size, vocabularies, unknown, extensions, verify, on_error: as in
            :func:`~hydranet.data.readers.read_folders`.
        recursive: also read the images in sub-folders (the UTKFace download comes as ``part1/``,
            ``part2/``, ``part3/``). Without it, images found only in sub-folders are an error, and
            images in sub-folders beside the top-level ones a :class:`ReaderWarning` with their count;
            both name the fix, ``recursive=True``.
    """
    _check_policies(verify, on_error, unknown)
    check_bool("recursive", recursive)
    transform = _resolve_transform(transform, image_size)
    base = _check_root(root)
    regex = re.compile(pattern)
    groups = sorted(regex.groupindex, key=lambda group: regex.groupindex[group])
    if not groups:
        raise ValueError(f"pattern {regex.pattern!r} has no named group: write one per task, e.g. (?P<age>\\d+).")
    declared = declare_tasks(groups if tasks is None else tasks)
    absent = [d.name for d in declared if d.name not in regex.groupindex]
    if absent:
        raise ValueError(f"Task(s) {absent} have no named group in pattern {regex.pattern!r} (groups: {groups}).")
    converters = dict(converters or {})
    unknown_converters = sorted(set(converters) - {d.name for d in declared})
    if unknown_converters:
        raise ValueError(f"converters= names unknown task(s) {unknown_converters}.")
    vocab = as_vocabularies(vocabularies, declared)

    paths = np.array(_image_files(base, extensions, recursive=recursive), dtype=object)
    if not recursive:
        _check_nested(base, extensions, len(paths))
    if not len(paths):
        raise ValueError(f"No image ({', '.join(extensions)}) in {base}.")
    matches = [regex.fullmatch(os.path.basename(p)) for p in paths]
    matched = np.array([m is not None for m in matches])
    if not matched.any():
        names = [os.path.basename(p) for p in paths[:5]]
        raise ValueError(f"No file name in {base} matches pattern {regex.pattern!r}; for example {names}.")
    columns = [
        encode_column(
            d,
            np.array([m.group(d.name) if m is not None else None for m in matches], dtype=object),
            vocabulary=vocab.get(d.name),
            converter=converters.get(d.name),
            unknown=unknown,
            source=" (file names)",
        )
        for d in declared
    ]
    keep, skipped = _drop_problems(paths, columns)
    keep &= matched
    skipped = [Skipped(p, f"name does not match {regex.pattern!r}") for p in paths[~matched]] + skipped
    paths, columns = paths[keep], [c.take(keep) for c in columns]

    ok, _, bad_files = _screen_images(paths, verify, on_error)
    return _image_dataset(
        "read_filenames",
        paths[ok],
        [c.take(ok) for c in columns],
        transform=transform,
        skipped=skipped + bad_files,
        total=len(keep),
    )


def _check_nested(base: Path, extensions: Sequence[str], top: int) -> None:
    """Images in sub-folders that ``recursive=False`` leaves out: an error if there is no other image, else
    a warning, both with their count and the fix."""
    folders = sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith("."))
    counts = {name: len(_image_files(base / name, extensions, recursive=True)) for name in folders}
    nested = sum(counts.values())
    if not nested:
        return
    where = ", ".join(f"{name}/ ({n})" for name, n in counts.items() if n)
    if top == 0:
        raise ValueError(
            f"read_filenames: no image in {base} itself, but {nested} in its sub-folders {where}: pass "
            "recursive=True to read them."
        )
    _reader_warning(
        f"read_filenames: {nested} image(s) in sub-folders of {base} are not read ({where}), only the {top} "
        "directly in it: pass recursive=True to read them too."
    )
