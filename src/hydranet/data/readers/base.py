"""What every reader returns: a :class:`ReaderDataset` over an :class:`ImageSamples` dataset.

:class:`ImageSamples` is the per-sample dataset: image paths, one label array per task, and a
transform. It is picklable (``DataLoader`` workers) and keeps its paths in one byte buffer rather
than a list of Python strings: forked workers that touch Python objects update their reference
counts and thereby copy the memory pages holding them, one worker at a time, while a NumPy buffer
stays shared.

:class:`ReaderDataset` is the :class:`~hydranet.data.MultiTaskDataset` (shared form) built on it,
with the label arrays given explicitly, so no image is opened to know the labels. It also carries
what the reader found: class ``vocabularies``, the ``skipped`` files and the ``Task`` objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any, Literal, NamedTuple, cast

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from hydranet._checks import check_choice, check_number
from hydranet.data._collate import make_collate
from hydranet.data._none import none_mask
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.readers.columns import Encoded, Skipped, _first_problems, _listing, save_vocabularies, _warn_skipped
from hydranet.data.readers.images import CheckLevel, DefaultTransform, ImageReadError, check_images, load_image
from hydranet.data.split import split_indices, strata
from hydranet.tasks import Task

__all__ = ["ImageSamples", "Parts", "ReaderDataset", "OnError", "PackedStrings", "Verify"]

Verify = Literal[False, True, "decode"]
OnError = Literal["error", "skip"]


class PackedStrings:
    """An immutable list of strings stored as one UTF-8 buffer and offsets (see the module docstring)."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        return self._buffer[self._offsets[index] : self._offsets[index + 1]].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        buffer, bounds = self._buffer.tobytes(), self._offsets.tolist()
        return [buffer[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]


class ImageSamples(Dataset):
    """Image files and their labels: ``samples[i] -> (transform(image), {task: label})``.

    Args:
        paths: one image file per sample.
        labels: ``{task: array [n]}``; int64 class indices (-1 missing), float32 values (NaN missing),
            or an object array of float32 arrays (ragged targets such as boxes; ``None`` missing).
        transform: callable applied to the RGB PIL image.

    Only the labelled tasks of a sample are in its dict. Labels come back as tensors: int64 scalars
    for classes, float32 scalars for values, float32 ``[n_i, ...]`` for ragged targets.
    """

    def __init__(self, paths: Sequence[str], labels: Mapping[str, np.ndarray], transform: Callable[[Any], Any]) -> None:
        self._paths = PackedStrings(paths)
        self.targets = {name: np.asarray(column) for name, column in labels.items()}
        for name, column in self.targets.items():
            if len(column) != len(self._paths):
                raise ValueError(f"labels[{name!r}] has {len(column)} entries for {len(self._paths)} paths.")
        self.transform = transform
        self._present = {name: _present(column) for name, column in self.targets.items()}

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def paths(self) -> list[str]:
        return self._paths.tolist()

    def __getitem__(self, index: int) -> tuple[Any, dict[str, torch.Tensor]]:
        x = self.transform(load_image(self._paths[index]))
        labels = {}
        for name, column in self.targets.items():
            if self._present[name][index]:
                value = column[index]
                labels[name] = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.tensor(value)
        return x, labels


def _take(samples: Dataset, index: np.ndarray, labels: Mapping[str, np.ndarray]) -> Dataset:
    """The per-sample dataset of the rows ``index``, in the same form (so batches stay fast)."""
    if isinstance(samples, ImageSamples):
        paths = samples.paths
        return ImageSamples([paths[k] for k in index], labels, samples.transform)
    if isinstance(samples, TensorDataset):
        rows = torch.from_numpy(index)
        return TensorDataset(*(tensor[rows] for tensor in samples.tensors))
    return Subset(samples, index.tolist())


def _present(column: np.ndarray) -> np.ndarray:
    if column.dtype == object:  # ragged targets: arrays, which `==` would compare elementwise
        return np.fromiter((v is not None for v in column), dtype=bool, count=len(column))
    if column.dtype.kind == "f":
        return ~np.isnan(column)
    return column != -1


class Parts(NamedTuple):
    """``ReaderDataset.split(val=..., test=...)``: the training part and the others (``None`` if not asked)."""

    train: ReaderDataset
    val: ReaderDataset | None
    test: ReaderDataset | None


class ReaderDataset(MultiTaskDataset):
    """A :class:`~hydranet.data.MultiTaskDataset` read from files by a reader.

    Everything of a shared ``MultiTaskDataset`` (``ds[i]``, ``task_indices``, ``labels``, ...), and:

    * ``tasks``: ``{name: Task}``, with ``num_classes`` and ``class_names`` from the data;
    * ``vocabularies``: ``{task: [class names]}`` of the tasks whose classes were names; pass it (or
      the file written by :meth:`save_vocabularies`) as ``vocabularies=`` when reading another split;
    * ``skipped``: the files or rows left out, as ``Skipped(path, reason)``;
    * ``samples``: the per-sample dataset (an :class:`ImageSamples`, or a ``TensorDataset`` for a
      tabular manifest); ``paths``: its image files (None for tabular data);
    * ``collate_fn``: :func:`hydranet.data.make_collate` keeping the ragged tasks (boxes) as lists;
    * ``split(val=0.1, test=0.1, seed=0)`` (or ``split([0.8, 0.2])``), stratified by a class task, and
      ``subset(indices)``: parts of the read with the same tasks and class indices, for a layout that is
      not split on disk (UTKFace, one CSV).
    """

    vocabularies: dict[str, list[str]]
    skipped: list[Skipped]
    _samples: Dataset
    _columns: dict[str, np.ndarray]

    @classmethod
    def build(
        cls,
        samples: Dataset,
        tasks: Sequence[Task],
        labels: Mapping[str, np.ndarray],
        *,
        vocabularies: Mapping[str, list[str]],
        skipped: Sequence[Skipped],
    ) -> ReaderDataset:
        self = cast(ReaderDataset, cls.shared(samples, tasks=list(tasks), labels=dict(labels)))
        self.vocabularies = dict(vocabularies)
        self.skipped = list(skipped)
        self._samples = samples
        self._columns = {name: np.asarray(column) for name, column in labels.items()}
        return self

    @property
    def samples(self) -> Dataset:
        return self._samples

    @property
    def paths(self) -> list[str] | None:
        samples = self.samples
        return samples.paths if isinstance(samples, ImageSamples) else None

    @property
    def collate_fn(self) -> Callable[[Sequence[Any]], Any]:
        return make_collate([t.name for t in (self.tasks or {}).values() if t.ragged])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ReaderDataset:
        """The samples at ``indices`` (in that order), with this dataset's tasks and vocabularies.

        A part of one read keeps its class indices, which reading each part on its own would not
        (a part may lack a class). ``skipped`` is the read's. Raises ``ValueError`` if a task has no
        labelled sample among ``indices``.
        """
        index = np.asarray(indices)
        if index.ndim != 1 or not (index.size == 0 or np.issubdtype(index.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-d sequence of integers, got an array of shape {index.shape}.")
        if index.size == 0:
            raise ValueError("indices is empty: a dataset needs at least one sample.")
        if index.min() < -len(self) or index.max() >= len(self):
            raise IndexError(
                f"indices must lie in [0, {len(self)}) (negative ones count from the end); "
                f"got {index.min()}..{index.max()}."
            )
        index = index % len(self)
        labels = {name: column[index] for name, column in self._columns.items()}
        return ReaderDataset.build(
            _take(self.samples, index, labels),
            list((self.tasks or {}).values()),
            labels,
            vocabularies=self.vocabularies,
            skipped=self.skipped,
        )

    def split(
        self,
        fractions: Sequence[float] | None = None,
        *,
        val: float | None = None,
        test: float | None = None,
        seed: int = 0,
        stratify: str | None = "auto",
    ) -> Any:
        """Disjoint random parts sharing this read's tasks, class indices and vocabularies.

        Two forms:

        * ``train, val = ds.split([0.8, 0.2])``: one part per fraction (a list);
        * ``train, val, test = ds.split(val=0.1, test=0.1)``: a :class:`Parts` ``(train, val, test)``, the
          training part taking the rest; a part of fraction 0 (or not given) is ``None``.

        The split is stratified (see :mod:`hydranet.data.split`): each class of the ``stratify`` task is
        shared among the parts in their proportions (up to rounding), and the part sizes are those of
        the fractions exactly.

        Args:
            fractions: the share of the samples each part gets, positive, summing to 1 (rounded part
                sizes; the last part takes the rest).
            val, test: the shares of the validation and test parts, in ``[0, 1)`` with ``val + test < 1``
                (instead of ``fractions``).
            seed: fixes the shuffle, so the same data and seed always give the same parts.
            stratify: a binary or multiclass task; ``"auto"`` (default): the first one, if any;
                ``None``: a plain random split. Regression tasks are never stratified on.
        """
        if fractions is not None and (val is not None or test is not None):
            raise ValueError("Give fractions=[...] or val= / test=, not both.")
        named = fractions is None
        present: list[str] = []
        if fractions is None:
            shares = {
                name: 0.0 if value is None else check_number(name, value, 0.0, 1.0, hint="a share of the samples, e.g. 0.1")
                for name, value in (("val", val), ("test", test))
            }
            rest = 1.0 - sum(shares.values())
            if rest <= 0 or not any(shares.values()):
                raise ValueError(
                    f"split(val={val!r}, test={test!r}): give val and/or test as shares in [0, 1) with val + test < 1, "
                    "e.g. split(val=0.1, test=0.1); the training part takes the rest."
                )
            present = [name for name, value in shares.items() if value]
            fractions = [rest, *(shares[name] for name in present)]
        _, labels = strata(self, stratify)
        parts = split_indices(len(self), fractions, seed=seed, strata=labels)
        empty = [k for k, part in enumerate(parts) if part.size == 0]
        if empty:
            raise ValueError(
                f"fractions {list(fractions)} of {len(self)} samples leave part(s) {empty} empty; use larger shares."
            )
        out = [self.subset(part) for part in parts]
        if not named:
            return out
        found = dict(zip(["train", *present], out))
        return Parts(found["train"], found.get("val"), found.get("test"))

    def save_vocabularies(self, path: str | os.PathLike[str]) -> None:
        """Write :attr:`vocabularies` as JSON, to read another split (or decode predictions) with them."""
        save_vocabularies(self.vocabularies, path)

    def __repr__(self) -> str:
        return f"ReaderDataset({len(self)} samples, tasks={self.task_names}, skipped={len(self.skipped)})"


# -- steps shared by the readers ----------------------------------------------------------------------------
def _check_policies(verify: Any, on_error: Any, unknown: Any) -> None:
    # verify is a bool or "decode": 1 or "true" would compare equal to True or read as a wrong bool.
    if not isinstance(verify, (bool, np.bool_, str)):
        raise TypeError(f"verify must be True, False or 'decode', got {verify!r} ({type(verify).__name__}).")
    check_choice("verify", verify, (False, True, "decode"))
    for name, value, choices in (("on_error", on_error, ("error", "skip")), ("unknown", unknown, ("error", "missing"))):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
        check_choice(name, value, choices)


def _resolve_transform(
    transform: Callable[[Any], Any] | None, image_size: int | Sequence[int] | None
) -> Callable[[Any], Any]:
    """The user's transform, or :func:`default_transform` of ``image_size``."""
    if transform is None:
        return DefaultTransform(size=image_size)
    if image_size is not None:
        raise ValueError(
            "image_size= sets the size of the default transform; with your own transform= resize inside it "
            "(or pass transform=hydranet.data.readers.default_transform(size=..., mean=..., std=...))."
        )
    if not callable(transform):
        raise TypeError(f"transform must be a callable taking a PIL image, got {type(transform).__name__}.")
    return transform


def _drop_problems(names: Sequence[str] | np.ndarray, columns: Sequence[Encoded]) -> tuple[np.ndarray, list[Skipped]]:
    """``(keep mask, skipped)``: samples with an unusable value in any task are left out."""
    problems = _first_problems([c.problems for c in columns], len(names))
    bad = np.flatnonzero(~none_mask(problems))
    keep = np.ones(len(names), dtype=bool)
    keep[bad] = False
    return keep, [Skipped(names[k], problems[k]) for k in bad.tolist()]


def _screen_images(
    paths: Sequence[str] | np.ndarray, verify: Verify, on_error: OnError, *, need_sizes: bool = False
) -> tuple[np.ndarray, np.ndarray | None, list[Skipped]]:
    """Check the files up front when asked (``verify``, or ``on_error="skip"``, which needs it).

    Returns ``(keep mask, sizes [n, 2] as (width, height) or None, skipped)``. With
    ``on_error="error"`` a bad file is an :class:`ImageReadError` naming the bad files.
    ``need_sizes`` reads at least each header (not the pixels) to learn the image sizes.
    """
    keep = np.ones(len(paths), dtype=bool)
    if not (verify or on_error == "skip" or need_sizes):
        return keep, None, []
    level: CheckLevel = "decode" if verify == "decode" else ("verify" if (verify or on_error == "skip") else "header")
    sizes, errors = check_images(paths, level)
    if errors and on_error == "error":
        raise ImageReadError(
            f"{len(errors)} of {len(paths)} image files cannot be read:\n"
            + _listing([f"{paths[k]}: {reason}" for k, reason in errors])
            + "\nFix or remove them, or pass on_error='skip' to leave them out."
        )
    keep[[k for k, _ in errors]] = False
    return keep, sizes, [Skipped(paths[k], reason) for k, reason in errors]


def _assemble(
    reader: str,
    samples: Dataset,
    tasks: Sequence[Task],
    labels: Mapping[str, np.ndarray],
    *,
    vocabularies: Mapping[str, list[str]],
    skipped: Sequence[Skipped],
    total: int,
) -> ReaderDataset:
    """Report what was skipped, check every task kept a label, and build the dataset."""
    _warn_skipped(reader, skipped, total)
    if len(cast(Sized, samples)) == 0:  # every reader's samples are sized; torch's Dataset type has no __len__
        raise ValueError(f"{reader}: no sample left ({len(skipped)} of {total} skipped; see the warning).")
    for task in tasks:
        if not _present(labels[task.name]).any():
            raise ValueError(
                f"{reader}: no sample left has a label for task {task.name!r} ({len(skipped)} skipped); "
                "check the data or leave the task out."
            )
    return ReaderDataset.build(samples, tasks, labels, vocabularies=vocabularies, skipped=skipped)


def _image_dataset(
    reader: str,
    paths: Sequence[str],
    columns: Sequence[Encoded],
    *,
    transform: Callable[[Any], Any],
    skipped: Sequence[Skipped],
    total: int,
) -> ReaderDataset:
    """The dataset of image files whose labels are the encoded ``columns`` (rows already filtered)."""
    labels = {c.task.name: c.values for c in columns}
    vocabularies = {c.task.name: c.vocabulary for c in columns if c.vocabulary is not None}
    samples = ImageSamples(paths, labels, transform)
    return _assemble(
        reader, samples, [c.task for c in columns], labels, vocabularies=vocabularies, skipped=skipped, total=total
    )
