"""Detection-style annotations: a variable number of boxes per image (and landmarks), plus image labels.

Two manifest layouts:

* JSON, one object per image: ``[{"path": "a.jpg", "boxes": [[x1, y1, x2, y2], ...], "label":
  "cat", "landmarks": [[x, y, x, y, ...], ...]}, ...]``. ``"boxes": []`` is an image with no box;
  no ``"boxes"`` key (or ``null``) is an image whose boxes are not annotated (a missing label).
* CSV (or Parquet), one row per box: ``path, x1, y1, x2, y2, label``; the rows of an image must agree
  on its image-level labels; a row with empty box cells lists an image with no box.

Boxes are ``x1, y1, x2, y2`` in pixels of the original image, with ``x1 <= x2`` and ``y1 <= y2``;
landmarks are ``x, y`` pairs, one row per box. The ``boxes`` (and ``landmarks``) tasks are ragged
regression tasks: ``ds[i]`` gives a float32 ``[n_i, 4]`` tensor, and a batch keeps a list of them
(use ``ds.collate_fn``, or ``hydranet.data.make_collate(ragged=["boxes"])``).

Coordinates (``box_format``):

* ``"normalized"`` (default): divided by the image's width and height, so in ``[0, 1]`` for boxes
  inside the image (not clipped). They stay right whatever the transform resizes to.
* ``"pixels"``: pixels of the image the model sees: rescaled by ``(W / w, H / h)`` when the default
  transform resizes a ``w x h`` image to ``size=(H, W)``, left as they are otherwise (a transform of
  your own that resizes must then rescale them itself).

The original sizes come from ``width`` / ``height`` fields of the manifest when it has them; otherwise
each image's header (not its pixels) is read once at construction. Transforms that crop or flip do
not move the boxes: do that in your own transform of image and targets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hydranet._checks import check_bool, check_choice
from hydranet.data._none import NONE, none_mask
from hydranet.data.readers.base import (
    ImageSamples,
    OnError,
    ReaderDataset,
    Verify,
    _assemble,
    _check_policies,
    _resolve_transform,
    _screen_images,
)
from hydranet.data.readers.columns import (
    Declared,
    Encoded,
    Skipped,
    TasksArg,
    as_vocabularies,
    declare_tasks,
    encode_column,
    _first_problems,
)
from hydranet.data.readers.images import DefaultTransform
from hydranet.data.readers.manifest import _manifest_root
from hydranet.data.readers.tables import Table, confine_paths, load_table, number_cells, resolve_paths
from hydranet.tasks import Task

__all__ = ["read_detection"]


@dataclass
class _Annotations:
    """Per-image view of a manifest: a representative row per image, the boxes as one flat array."""

    first_row: np.ndarray  # int64 [n]: a row of each image, for its path and image-level cells
    image_of_row: np.ndarray  # int64 [rows]: the image each row belongs to
    boxes: np.ndarray  # float64 [N, 4], grouped by image
    owner: np.ndarray  # int64 [N]: the image of each box
    has_boxes: np.ndarray  # bool [n]: boxes annotated (possibly zero of them)
    points: np.ndarray | None  # float64 [N, L]: landmarks of each box
    has_points: np.ndarray  # bool [n]
    problems: np.ndarray  # object [n]


def _matrix(value: Any, columns: int | None) -> np.ndarray | None:
    """A JSON list of rows as float64 ``[m, columns]`` (``[]`` is ``m = 0``), or None if it is not one."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if m.ndim == 1 and m.size == 0:
        return m.reshape(0, columns or 0)
    if m.ndim != 2 or (columns is not None and m.shape[1] != columns):
        return None
    return m


def _from_records(table: Table, boxes: str, landmarks: str | None) -> _Annotations:
    records = table.records or []
    n = len(records)
    problems = np.full(n, None, dtype=object)
    has_boxes, has_points = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    box_parts: list[np.ndarray] = []
    point_parts: list[np.ndarray | None] = []
    width = None  # landmark values per box, fixed by the first image that has some
    for k, record in enumerate(records):  # JSON objects are per image: one step each
        if record.get(boxes) is None:
            if landmarks is not None and record.get(landmarks) is not None:
                problems[k] = f"{landmarks!r} are given without {boxes!r}; give one row per box"
            continue
        b = _matrix(record[boxes], 4)
        if b is None:
            problems[k] = f"{boxes!r} must be a list of [x1, y1, x2, y2] boxes"
            continue
        p = None
        if landmarks is not None and record.get(landmarks) is not None:
            p = _matrix(record[landmarks], width if len(b) else None)
            if p is None or len(p) != len(b) or p.shape[1] % 2 or (len(p) and not p.shape[1]):
                problems[k] = f"{landmarks!r} must hold one row of x, y pairs per box, as many for every box"
                continue
            width = width or (p.shape[1] if len(p) else None)
        has_boxes[k], has_points[k] = True, p is not None
        box_parts.append(b)
        point_parts.append(p)
    owner = np.repeat(np.flatnonzero(has_boxes), [len(b) for b in box_parts]).astype(np.int64)
    flat = np.concatenate(box_parts) if box_parts else np.empty((0, 4))
    points = None
    if landmarks is not None:
        width = width or 2
        blank = [np.full((len(b), width), np.nan) for b in box_parts]  # boxes without landmarks
        rows = [p if p is not None and len(p) else q for p, q in zip(point_parts, blank)]
        points = np.concatenate(rows or [np.empty((0, width))])
    return _Annotations(np.arange(n), np.arange(n), flat, owner, has_boxes, points, has_points, problems)


def _from_rows(
    table: Table, path_column: str, box_columns: Sequence[str], landmark_columns: Sequence[str] | None
) -> _Annotations:
    if len(box_columns) != 4:
        raise ValueError(f"box_columns= names the 4 columns x1, y1, x2, y2; got {list(box_columns)}.")
    if landmark_columns is not None and (len(landmark_columns) == 0 or len(landmark_columns) % 2):
        raise ValueError(f"landmark_columns= names x, y columns in pairs; got {list(landmark_columns)}.")
    cells = table.column(path_column)
    keys = np.char.replace(np.where(none_mask(cells), "", cells).astype(str), "\\", "/")
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    # Images in the order they first appear; the rows of an image may be anywhere in the file.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    image_of_row = rank[inverse]
    n = len(order)
    problems = np.full(n, None, dtype=object)

    def numbers(names: Sequence[str], what: str) -> tuple[np.ndarray, np.ndarray]:
        """Values ``[rows, k]`` and the rows holding all k; a row with some only is a problem."""
        values = np.empty((len(table), len(names)))
        bad = np.zeros(len(table), dtype=bool)
        for j, name in enumerate(names):
            values[:, j], not_number = number_cells(table.column(name))
            bad |= not_number
        given = ~np.isnan(values)
        complete = given.all(axis=1)
        wrong = bad | (given.any(axis=1) & ~complete) | (complete & ~np.isfinite(values).all(axis=1))
        fill = np.zeros(n, dtype=bool)
        fill[image_of_row[wrong]] = True
        problems[fill & none_mask(problems)] = f"a row has incomplete or non-numeric {what} ({', '.join(names)})"
        return values, complete & ~wrong

    values, is_box = numbers(box_columns, "box coordinates")
    by_image = np.argsort(image_of_row[is_box], kind="stable")
    owner = image_of_row[is_box][by_image]
    points, has_points = None, np.zeros(n, dtype=bool)
    if landmark_columns is not None:
        point_values, with_points = numbers(landmark_columns, "landmarks")
        # An image's landmarks are annotated when every one of its boxes has them.
        boxes_per_image = np.bincount(owner, minlength=n)
        points_per_image = np.bincount(image_of_row[is_box & with_points], minlength=n)
        has_points = points_per_image == boxes_per_image
        mixed = (points_per_image > 0) & ~has_points & none_mask(problems)
        problems[mixed] = "some boxes of the image have landmarks and others not"
        points = point_values[is_box][by_image]
    boxes = values[is_box][by_image]
    return _Annotations(first[order], image_of_row, boxes, owner, np.ones(n, dtype=bool), points, has_points, problems)


def _ragged(values: np.ndarray, owner: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Object array ``[n]``: float32 ``[n_i, k]`` per image where ``present``, None elsewhere."""
    n = len(present)
    pieces = np.split(values.astype(np.float32), np.cumsum(np.bincount(owner, minlength=n))[:-1])
    column = np.full(n, None, dtype=object)
    for k in np.flatnonzero(present):  # an object array of arrays cannot be filled in one assignment
        column[k] = pieces[k]
    return column


def _check_ragged_names(declared: Sequence[Declared], ragged: Sequence[str]) -> None:
    """The boxes and landmarks task names: identifiers, apart from each other and from the label tasks."""
    for name in ragged:
        if not name.isidentifier():
            raise ValueError(f"Task name {name!r} is not valid: use an identifier such as 'boxes'.")
    clash = sorted({d.name for d in declared} & set(ragged))
    if clash or len(set(ragged)) != len(ragged):
        raise ValueError(f"Task name(s) {clash or ragged} are used twice; name the boxes, landmarks and labels apart.")


def _box_problems(notes: _Annotations) -> np.ndarray:
    """Object ``[images]``: a problem for each image with a box that is not finite ``x1 <= x2, y1 <= y2``."""
    b = notes.boxes
    invalid = ~np.isfinite(b).all(axis=1) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    bad_box = np.zeros(len(notes.first_row), dtype=bool)
    bad_box[notes.owner[invalid]] = True
    return np.where(bad_box, "a box is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2", NONE)


def _image_labels(
    table: Table, notes: _Annotations, declared: Sequence[Declared], vocab: Mapping[str, Sequence[str]], unknown: str,
    problems: list[np.ndarray],
) -> list[Encoded]:
    """Image-level labels: the cells of each image's first row. An image whose other rows disagree, or
    whose label is unusable, gets a problem appended to ``problems``."""
    first, n = notes.first_row, len(notes.first_row)
    columns: list[Encoded] = []
    for d in declared:
        cells = table.column(d.name)
        disagree = np.zeros(n, dtype=bool)
        disagree[notes.image_of_row[np.not_equal(cells, cells[first][notes.image_of_row])]] = True
        problems.append(np.where(disagree, f"its rows disagree on {d.name!r}", NONE))
        source = f" (field of {table.source.name})"
        columns.append(encode_column(d, cells[first], vocabulary=vocab.get(d.name), unknown=unknown, source=source))
    problems += [c.problems for c in columns]
    return columns


def _kept_boxes(
    notes: _Annotations, keep: np.ndarray, factors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(boxes, points, owner)`` of the kept images, their owners renumbered among the kept ones, the
    coordinates multiplied by their image's ``factors [kept images, 2]`` (x, y) when given, all at once."""
    kept_box = keep[notes.owner]
    owner = (np.cumsum(keep) - 1)[notes.owner[kept_box]]
    flat = notes.boxes[kept_box]
    points = notes.points[kept_box] if notes.points is not None else None
    if factors is not None:
        xy = factors[owner]  # [N, 2]: x and y factors of each box's image
        flat = flat * np.tile(xy, 2)
        if points is not None:
            points = points * np.tile(xy, points.shape[1] // 2)
    return flat, points, owner


def read_detection(
    manifest: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    tasks: TasksArg = None,
    path_column: str = "path",
    boxes: str = "boxes",
    box_columns: Sequence[str] = ("x1", "y1", "x2", "y2"),
    landmarks: str | None = None,
    landmark_columns: Sequence[str] | None = None,
    size_columns: Sequence[str] = ("width", "height"),
    box_format: str = "normalized",
    transform: Callable[[Any], Any] | None = None,
    image_size: int | Sequence[int] | None = None,
    vocabularies: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None = None,
    unknown: str = "error",
    verify: Verify = False,
    on_error: OnError = "error",
    delimiter: str | None = None,
    encoding: str = "utf-8-sig",
    allow_outside_root: bool = False,
) -> ReaderDataset:
    """Images with boxes (and optionally landmarks) and image-level labels (see the module docstring).

    Longer than 80 lines because of its 19 parameters: the signature and their documentation take 43
    of its 111 lines; the body is a sequence of steps (annotations, labels, paths, problems, image
    checks, boxes), the larger ones delegated.

    Args:
        manifest: a JSON file (one object per image) or a CSV / Parquet file (one row per box).
        root: folder that relative paths are relative to (default: the manifest's folder).
        tasks: image-level tasks, as in :func:`read_manifest`; default ``{"label": "multiclass"}``,
            ``{}`` for none.
        path_column: field or column of the image paths.
        boxes: name of the boxes task, and of the JSON field holding them.
        box_columns: the CSV columns x1, y1, x2, y2.
        landmarks: name of a landmarks task (and JSON field), if any.
        landmark_columns: the CSV columns of the landmarks, x and y in pairs.
        size_columns: fields or columns with each image's width and height, used when present.
        box_format: ``"normalized"`` or ``"pixels"`` (see the module docstring).
        transform, image_size, vocabularies, unknown, verify, on_error: as in :func:`read_folders`.
        delimiter, encoding, allow_outside_root: as in :func:`read_manifest`.
    """
    _check_policies(verify, on_error, unknown)
    check_choice("box_format", box_format, ("normalized", "pixels"))
    check_bool("allow_outside_root", allow_outside_root)
    transform = _resolve_transform(transform, image_size)
    table = load_table(manifest, delimiter=delimiter, encoding=encoding)
    declared = declare_tasks({"label": "multiclass"} if tasks is None else tasks, allow_empty=True)
    _check_ragged_names(declared, [boxes] + ([landmarks] if landmarks is not None else []))
    if table.records is not None:
        notes = _from_records(table, boxes, landmarks)
    else:
        if landmarks is not None and landmark_columns is None:
            raise ValueError(f"landmarks={landmarks!r} in a CSV manifest needs landmark_columns=['x1', 'y1', ...].")
        notes = _from_rows(table, path_column, box_columns, landmark_columns if landmarks is not None else None)
    first = notes.first_row
    n = len(first)
    problems = [notes.problems]

    columns = _image_labels(table, notes, declared, as_vocabularies(vocabularies, declared), unknown, problems)

    base = _manifest_root(table.source, root)
    paths, empty = resolve_paths(table.column(path_column)[first], base)
    confine_paths(
        paths, empty, base, rows=list(np.asarray(table.rows, dtype=object)[first]), source=table.source,
        allow=allow_outside_root,
    )
    problems.append(np.where(empty, f"empty {path_column!r}", NONE))
    sizes = None
    if all(c in table.columns for c in size_columns):
        sizes = np.stack([number_cells(table.column(c)[first])[0] for c in size_columns], axis=1)
        problems.append(np.where((sizes > 0).all(axis=1), NONE, f"{' and '.join(size_columns)} must be positive"))
    problems.append(_box_problems(notes))
    problem = _first_problems(problems, n)
    keep = none_mask(problem)
    names = np.where(empty, np.array(table.rows, dtype=object)[first], paths)
    skipped = [Skipped(names[k], problem[k]) for k in np.flatnonzero(~keep)]

    resize = transform.size if isinstance(transform, DefaultTransform) else None
    scale = box_format == "normalized" or resize is not None
    candidates = np.flatnonzero(keep)
    ok, read_sizes, bad_files = _screen_images(paths[candidates], verify, on_error, need_sizes=scale and sizes is None)
    if sizes is None and read_sizes is not None:
        sizes = np.zeros((n, 2))
        sizes[candidates] = read_sizes
    keep[candidates[~ok]] = False

    factors = None
    if scale:
        assert sizes is not None  # read from the files above when the manifest has none
        target = np.array([resize[1], resize[0]]) if resize is not None and box_format == "pixels" else 1.0
        factors = target / sizes[keep]
    flat, points, owner = _kept_boxes(notes, keep, factors)

    columns = [c.take(keep) for c in columns]
    labels = {c.task.name: c.values for c in columns}
    labels[boxes] = _ragged(flat, owner, notes.has_boxes[keep])
    tasks_out = [c.task for c in columns] + [Task(boxes, "regression", dim=4, ragged=True)]
    if landmarks is not None and points is not None:
        labels[landmarks] = _ragged(points, owner, notes.has_points[keep])
        tasks_out.append(Task(landmarks, "regression", dim=points.shape[1], ragged=True))
    return _assemble(
        "read_detection",
        ImageSamples(paths[keep], labels, transform),
        tasks_out,
        labels,
        vocabularies={c.task.name: c.vocabulary for c in columns if c.vocabulary is not None},
        skipped=skipped + bad_files,
        total=n,
    )
