"""Sources of a :class:`~hydranet.data.MultiTaskStream`: what one task's samples are read from.

A source is opened once per *pass* by each *consumer* (one DataLoader worker of one rank; consumer
:math:`g` of :math:`G = R \\cdot W`) and yields that consumer's share of the samples:

* :class:`Shards` (a list of files, e.g. WebDataset-style ``.tar`` shards): the pass's shard order is the
  same on every consumer (shuffled by ``(seed, epoch, task, pass)`` when the stream shuffles) and consumer
  :math:`g` reads shards :math:`g, g + G, g + 2G, \\ldots` of it. Shards are split, not samples: no
  sample is read twice, and each consumer opens only its own files.
* any other re-iterable (a list, an object with ``__iter__``, a function returning an iterator): consumer
  :math:`g` keeps items :math:`g, g + G, \\ldots` (``itertools.islice``, in C). *Cost*: every consumer still
  pulls the whole stream, so the producer's work is paid :math:`G` times; split big data into shards.
* a Hugging Face ``datasets.IterableDataset``: split over ranks by ``datasets.distributed.split_dataset_by_node``
  and over DataLoader workers by the library itself (by shard; it needs ``n_shards >= num_workers``).

Every source also knows how to skip to a position of a pass (for exact resume): shard sources skip whole
shards whose sample counts they recorded, others read and discard (counted per consumer).
"""

from __future__ import annotations

import io
import itertools
import json
import mmap
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Fields", "Shards", "TarShards", "as_source", "decode_field", "read_jsonl", "read_tar", "Source"]


# ------------------------------------------------------------------ readers of one shard


def decode_field(extension: str, data: bytes) -> Any:
    """A WebDataset field from its bytes, by the file extension (the part of the name after the key).

    ``npy`` -> array, ``cls`` / ``cls2`` / ``index`` / ``id`` -> int, ``txt`` / ``text`` -> str, ``json`` -> object,
    ``pth`` / ``pt`` -> ``torch.load``; anything else stays ``bytes``.
    """
    ext = extension.rsplit(".", 1)[-1].lower()
    if ext == "npy":
        return _load_npy(data)
    if ext in ("cls", "cls2", "index", "id"):
        return int(data)
    if ext in ("txt", "text"):
        return data.decode("utf-8")
    if ext == "json":
        return json.loads(data)
    if ext in ("pth", "pt"):
        import torch

        return torch.load(io.BytesIO(data), weights_only=True)
    return data


# Parsed .npy headers: samples of one shard share a handful of them, and np.load parses each one again
# (tens of microseconds per sample). Bounded: a stream of ragged arrays has one header per shape.
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]] | None] = {}
_NPY_HEADERS_MAX = 4096


def _load_npy(data: bytes) -> np.ndarray:
    """``np.load`` of a ``.npy`` payload, with the header parsed once per distinct header."""
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        return np.load(io.BytesIO(data), allow_pickle=False)
    start = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    header = data[:start]
    parsed: tuple[np.dtype, tuple[int, ...]] | None
    if header in _NPY_HEADERS:
        parsed = _NPY_HEADERS[header]
    else:
        buf = io.BytesIO(header)
        version = np.lib.format.read_magic(buf)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        parsed = None
        if version in readers:
            shape, fortran, dtype = readers[version](buf)  # the parser np.load uses
            parsed = None if fortran or dtype.hasobject else (dtype, shape)
        if len(_NPY_HEADERS) < _NPY_HEADERS_MAX:
            _NPY_HEADERS[header] = parsed
    if parsed is None:
        return np.load(io.BytesIO(data), allow_pickle=False)
    dtype, shape = parsed
    return np.frombuffer(data, dtype=dtype, offset=start).reshape(shape).copy()  # writable, as np.load's


_TAR_BLOCK = 512


def _ustar_members(view: Any, handle: Any) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of the tar's regular files.

    Plain ustar headers of regular files (the members WebDataset writes) are parsed here, checksum checked;
    at the first other header (pax, GNU long names, links, ...) the rest of the archive is handed to the
    standard library's ``tarfile``. The fast path is about ten times faster than ``tarfile``'s header parse.
    """
    size_all = len(view)
    pos = 0
    while pos + _TAR_BLOCK <= size_all:
        header = view[pos : pos + _TAR_BLOCK]
        if header == _ZERO_BLOCK:
            return  # end of archive
        kind = header[156:157]
        stored = header[148:156]
        if kind in (b"0", b"\x00") and header[257:262] in (b"ustar", b"\x00\x00\x00\x00\x00"):
            try:
                checksum = int(stored.rstrip(b"\x00 ") or b"0", 8)
                size = int(header[124:136].rstrip(b"\x00 ") or b"0", 8)
            except ValueError:
                break
            if checksum == sum(header[:148]) + 256 + sum(header[156:]):
                name = header[0:100].split(b"\x00", 1)[0]
                prefix = header[345:500].split(b"\x00", 1)[0] if header[257:262] == b"ustar" else b""
                if prefix:
                    name = prefix + b"/" + name
                yield name.decode("utf-8", "surrogateescape"), pos + _TAR_BLOCK, size
                pos += _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK
                continue
        break
    else:
        return
    handle.seek(pos)
    with tarfile.open(fileobj=handle, mode="r:") as tar:  # starts at the handle's position; offsets are absolute
        for member in tar:
            if member.isfile():
                yield member.name, member.offset_data, member.size


_ZERO_BLOCK = bytes(_TAR_BLOCK)


def read_tar(path: str | os.PathLike, decode: bool = True) -> Iterator[dict[str, Any]]:
    """The samples of a WebDataset-style tar shard, in file order.

    Members are grouped by *key* as webdataset does: ``dir/0001.input.npy`` and ``dir/0001.cls`` are the
    fields ``input.npy`` and ``cls`` of the sample whose ``"__key__"`` is ``dir/0001`` (the key ends at the
    first dot of the file name). Consecutive members with one key form one sample. The data are sliced from a
    memory map of the file; headers are parsed as in :func:`_ustar_members` (``tarfile`` for anything but
    plain ustar members).
    """
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            sample: dict[str, Any] = {}
            key = None
            for name, offset, size in _ustar_members(view, handle):
                slash = name.rfind("/") + 1
                dot = name.find(".", slash)
                if dot < 0:
                    continue  # no extension: not a field (webdataset skips these too)
                stem, ext = name[:dot], name[dot + 1 :]
                if stem != key:
                    if sample:
                        yield sample
                    sample, key = {"__key__": stem}, stem
                data = view[offset : offset + size]
                sample[ext] = decode_field(ext, data) if decode else data
            if sample:
                yield sample


def read_jsonl(path: str | os.PathLike) -> Iterator[Any]:
    """One sample per line of a JSON-lines file."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _read_npy(path: str | os.PathLike) -> Iterator[Any]:
    """One sample per row of a ``.npy`` array, memory-mapped."""
    yield from np.load(path, mmap_mode="r")


_READERS: dict[str, Callable[[str], Iterable[Any]]] = {".tar": read_tar, ".jsonl": read_jsonl, ".npy": _read_npy}


class Fields:
    """A picklable transform from a dict sample (tar shard, HF row) to ``(input, target)``.

    ``Fields("input.npy", "cls")`` maps ``{"input.npy": x, "cls": y, ...}`` to ``(x, y)``.
    """

    def __init__(self, input: str, target: str) -> None:
        self.input, self.target = input, target

    def __call__(self, sample: Any) -> tuple[Any, Any]:
        try:
            return sample[self.input], sample[self.target]
        except KeyError as err:
            keys = sorted(sample) if hasattr(sample, "keys") else type(sample).__name__
            raise KeyError(f"Fields({self.input!r}, {self.target!r}): sample has no field {err}; fields: {keys}.") from None

    def __repr__(self) -> str:
        return f"Fields({self.input!r}, {self.target!r})"


# ------------------------------------------------------------------ sources


class Source:
    """A task's samples; :meth:`open` gives one consumer's share of one pass."""

    #: Shard sources are split by file; others by striding over items (see the module docstring).
    sharded = False

    def open(self, consumer: int, consumers: int, rank: int, world: int, order: np.ndarray | None,
             start: int, counts: list[int]) -> Iterator[Any]:
        """Samples ``start, start + 1, ...`` of this consumer's share of a pass.

        Args:
            consumer, consumers: :math:`g` and :math:`G`.
            rank, world: the consumer's rank and the number of ranks (for sources that split by rank only).
            order: the pass's shard order (shard sources), the same on every consumer.
            start: position in this consumer's share to start at.
            counts: samples of this consumer's shards read to their end in this pass (appended to as shards
                end; read to skip shards on resume).
        """
        raise NotImplementedError

    @property
    def n_shards(self) -> int:
        return 1


class Shards(Source):
    """A list of files, each read by ``read(path) -> iterable of samples``: split over consumers by file.

    Args:
        paths: the shard files (``str`` or ``Path``).
        read: reads one shard; default by suffix: ``.tar`` :func:`read_tar`, ``.jsonl`` :func:`read_jsonl`,
            ``.npy`` one sample per row. Must be picklable for DataLoader workers (a module-level function).
    """

    sharded = True

    def __init__(self, paths: Sequence[str | os.PathLike], read: Callable[[str], Iterable[Any]] | None = None) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("Shards needs at least one file path; got an empty list.")
        if read is None:
            suffixes = {Path(p).suffix.lower() for p in self.paths}
            unknown = sorted(suffixes - set(_READERS))
            if unknown or len(suffixes) != 1:
                raise ValueError(
                    f"Shards: no default reader for files ending in {unknown or sorted(suffixes)}; defaults exist for "
                    f"{', '.join(_READERS)} (one suffix per source). Pass read=function(path) -> iterable of samples."
                )
            read = _READERS[suffixes.pop()]
        if not callable(read):
            raise TypeError(f"read must be a function path -> iterable of samples, got {type(read).__name__}.")
        self.read = read

    @property
    def n_shards(self) -> int:
        return len(self.paths)

    def open(self, consumer, consumers, rank, world, order, start, counts):  # noqa: D102 (see Source.open)
        if len(self.paths) < consumers:
            raise ValueError(
                f"A source has {len(self.paths)} shard(s) for {consumers} consumers (ranks x DataLoader workers), so "
                "some would get no data. Split the data into at least as many shards, or use fewer workers."
            )
        mine = (np.arange(len(self.paths)) if order is None else order)[consumer::consumers]
        return self._samples([self.paths[i] for i in mine], start, counts)

    def _samples(self, paths: list[str], start: int, counts: list[int]) -> Iterator[Any]:
        position = 0  # samples of this consumer's pass before shard i
        for i, path in enumerate(paths):
            skip = max(0, start - position)
            if i < len(counts):  # read to its end earlier in this pass: its length is known
                if skip >= counts[i]:
                    position += counts[i]
                    continue  # skipped without opening the file
                yield from itertools.islice(iter(self.read(path)), skip, None)
                position += counts[i]
                continue
            n = 0
            for item in self.read(path):
                if n >= skip:
                    yield item
                n += 1
            counts.append(n)
            position += n

    def __repr__(self) -> str:
        return f"Shards({len(self.paths)} files, read={getattr(self.read, '__name__', self.read)!r})"


class TarShards(Shards):
    """WebDataset-style ``.tar`` shards read by :func:`read_tar` (samples are dicts of decoded fields)."""

    def __init__(self, paths: Sequence[str | os.PathLike], decode: bool = True) -> None:
        super().__init__(paths, read=read_tar if decode else _read_tar_raw)


def _read_tar_raw(path: str) -> Iterator[dict[str, Any]]:
    return read_tar(path, decode=False)


class _IterableSource(Source):
    """Any re-iterable, or a function returning a fresh iterator: split over consumers by striding."""

    def __init__(self, obj: Any) -> None:
        if isinstance(obj, Iterator):
            raise TypeError(
                f"A source must be re-iterable (each pass and each consumer starts it again), got a one-shot "
                f"{type(obj).__name__}. Pass a function that returns it, e.g. lambda: my_generator(), or a list."
            )
        if not (callable(obj) or isinstance(obj, Iterable)):
            raise TypeError(
                f"A source must be iterable, a function returning an iterator, Shards or TarShards; got {type(obj).__name__}."
            )
        self.obj = obj

    def open(self, consumer, consumers, rank, world, order, start, counts):  # noqa: D102
        items = self.obj() if callable(self.obj) and not isinstance(self.obj, Iterable) else self.obj
        return itertools.islice(iter(items), consumer + start * consumers, None, consumers)

    def __repr__(self) -> str:
        return f"Iterable({type(self.obj).__name__})"


class _HFIterable(Source):
    """A Hugging Face ``datasets.IterableDataset``: split by rank here, by worker inside ``datasets``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def n_shards(self) -> int:
        return int(getattr(self.dataset, "num_shards", getattr(self.dataset, "n_shards", 1)))

    def open(self, consumer, consumers, rank, world, order, start, counts):  # noqa: D102
        ds = self.dataset
        if world > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        return itertools.islice(iter(ds), start, None)

    def __repr__(self) -> str:
        return f"HFIterable({self.n_shards} shards)"


def _is_hf_iterable(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("datasets.") and type(obj).__name__ == "IterableDataset"


def _is_path_list(obj: Any) -> bool:
    return (
        isinstance(obj, (list, tuple))
        and len(obj) > 0
        and all(isinstance(p, (str, os.PathLike)) for p in obj)
        and all(os.path.isfile(p) for p in obj)
    )


def as_source(obj: Any) -> Source:
    """A :class:`Source` for ``obj``: itself, a HF ``IterableDataset``, a list of existing file paths
    (:class:`Shards` with the reader for their suffix), or any re-iterable."""
    if isinstance(obj, Source):
        return obj
    if _is_hf_iterable(obj):
        return _HFIterable(obj)
    if _is_path_list(obj):
        return Shards(obj)
    return _IterableSource(obj)
