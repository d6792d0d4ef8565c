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
from hydranet.data.readers._hf_arrow import (
    arrow_column,
    describe,
    import_datasets,
    is_numeric,
    Problems,
    make_problems,
    row_mapping,
)
from hydranet.data.readers._hf_columns import declare, encode
from hydranet.data.readers._hf_samples import HFSamples, feature_inputs, input_columns
from hydranet.data.readers.base import ReaderDataset, _assemble, _resolve_transform
from hydranet.data.readers.columns import Skipped, TasksArg, as_vocabularies

if TYPE_CHECKING:
    import datasets

__all__ = ["FILE_FORMATS", "HFSamples", "load_hf", "read_hf", "read_hf_path", "PathLike"]

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


# -- the readers -------------------------------------------------------------------------------------------
def _check_split(dataset: Any) -> Any:
    hf = import_datasets()
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
    dataset = _check_split(dataset)
    check_choice("unknown", unknown, ("error", "missing"))
    features = dataset.features
    inputs = input_columns(features, input)
    numeric = all(is_numeric(features[c]) for c in inputs)
    if numeric and (transform is not None or image_size is not None):
        raise ValueError(
            f"transform= and image_size= apply to an Image (or other single) input; input={inputs} is numeric "
            "and is read as one float tensor. Transform the tensors in your model or with dataset.map."
        )
    single = None if numeric else _input_transform(features, inputs[0], transform, image_size)
    if tasks is None:
        tasks = [c for c in features if c not in inputs]
    declared = declare(tasks, list(features), inputs)
    vocab = as_vocabularies(vocabularies, declared)
    n = len(dataset)
    if n == 0:
        raise ValueError("The dataset has no rows.")
    rows = row_mapping(dataset)
    encoded = [encode(d, features[d.name], arrow_column(dataset, d.name, rows), vocab.get(d.name), unknown)
               for d in declared]
    if numeric:
        values, input_problems = feature_inputs(dataset, inputs, rows)
    else:
        input_problems = [_missing_inputs(dataset, inputs[0], rows)]
    first = _first_problems(input_problems + [(e.bad, e.reasons) for e in encoded])
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
        assert single is not None  # set for every non-numeric input above
        kinds = {t.name: t.kind for t in tasks_out}
        samples = HFSamples(dataset, inputs[0], np.flatnonzero(keep), labels, kinds, single)
    vocabularies_out = {e.task.name: e.vocabulary for e in encoded if e.vocabulary is not None}
    return _assemble("read_hf", samples, tasks_out, labels, vocabularies=vocabularies_out, skipped=skipped, total=n)


def _input_transform(
    features: Mapping[str, Any], column: str, transform: Callable[[Any], Any] | None,
    image_size: int | Sequence[int] | None,
) -> Callable[[Any], Any]:
    """The transform of a single (non-numeric) input column: the user's, or the default one for an image."""
    if isinstance(features[column], import_datasets().Image):
        return _resolve_transform(transform, image_size)
    if transform is None or image_size is not None:
        raise ValueError(
            f"Input column {column!r} is {describe(features[column])}: pass transform=, a callable that "
            "turns one value into what the model takes (a tokenizer, say); image_size= is for Image columns."
        )
    return _resolve_transform(transform, None)


def _missing_inputs(dataset: Any, column: str, rows: np.ndarray | None) -> Problems:
    """The rows without a value in the input column, from the Arrow validity only (nothing decoded or copied)."""
    table_valid = ~dataset.data.column(column).is_null().to_numpy(zero_copy_only=False)
    has = table_valid if rows is None else table_valid[rows]
    missing = np.flatnonzero(~has)
    return make_problems(missing, [f"no value in input column {column!r}"] * len(missing))


def _first_problems(problems: Sequence[Problems]) -> dict[int, str]:
    """``{row: its first problem}``, in the order given (inputs, then tasks); problem rows are few."""
    first: dict[int, str] = {}
    for bad_rows, reasons in problems:
        for row, reason in zip(bad_rows.tolist(), reasons):
            first.setdefault(row, reason)
    return first


def _one_split(loaded: Any, split: str | None, where: str) -> Any:
    hf = import_datasets()
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
    hf = import_datasets()
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
