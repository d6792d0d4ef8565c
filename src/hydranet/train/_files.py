"""Checkpoint files on disk: atomic, hashed writes; verified reads; stale temporary files removed.

**Layout.** A checkpoint is the ``torch.save`` zip archive followed by a 99-byte ASCII footer::

    <torch.save payload, N bytes>\\nHYDRANET-SHA256 <sha256 of the payload, 64 hex> <N, 16 hex>\\n

The zip reader of ``torch.load`` finds its central directory by searching backwards from the end, so
the file still loads with ``torch.load(path, weights_only=True)``. The hash is computed while
``torch.save`` streams the payload (no second copy in memory) and verified on load: a truncated file
(its size is not ``N + 99``), changed bytes (the SHA-256 differs) or a foreign file are one error,
:class:`~hydranet.train.errors.CheckpointError`, naming the file and what to use instead. Files
without the footer (written before it existed) still load, with a warning that they cannot be verified.

**Atomic.** The bytes go to ``.<name>.<pid>.tmp`` beside the target, are flushed and fsynced, then
renamed over the target (and the folder fsynced): a crash or a full disk during a save leaves the
previous file complete. A full disk (``ENOSPC``, a quota, a file-size limit, or torch's
``inline_container.cc`` message that hides them) becomes
:class:`~hydranet.train.errors.CheckpointWriteError` naming the folder and its free space.
A killed save leaves its temporary file; :func:`remove_stale_temporaries` deletes those whose process
is gone (or whose pid was reused by a process younger than the file), never a live writer's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from hydranet.train.errors import CheckpointError, CheckpointWriteError

__all__ = ["FOOTER_SIZE", "advice", "copy_file", "read_file", "remove_stale_temporaries", "write_file"]

logger = logging.getLogger("hydranet.train")

_MAGIC = b"\nHYDRANET-SHA256 "
#: Bytes of the footer: magic, 64 hex digits of SHA-256, a space, 16 hex digits of the payload size, newline.
FOOTER_SIZE = len(_MAGIC) + 64 + 1 + 16 + 1
_CHUNK = 1 << 22
_TEMPORARY = re.compile(r"^\.(?P<name>.+\.pt)\.(?P<pid>\d+)\.tmp$")
# errno values of "the disk cannot take these bytes": no space, quota exceeded, file too large (ulimit -f)
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through, and keeps the first error
    of the file below (torch's zip writer replaces it by a bare ``inline_container.cc`` message)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0
        self.error: BaseException | None = None

    def write(self, data: Any) -> int:
        try:
            written = self.handle.write(data)
        except BaseException as err:
            self.error = self.error or err
            raise
        self.sha256.update(data)
        self.size += len(data)
        return written

    def flush(self) -> None:
        self.handle.flush()

    def footer(self) -> bytes:
        return _MAGIC + self.sha256.hexdigest().encode() + b" " + f"{self.size:016x}".encode() + b"\n"


def write_file(state: dict[str, Any], target: Path) -> None:
    """``torch.save(state)`` into ``target``, atomically, with the hash footer."""

    def write(hashing: _HashingWriter) -> None:
        torch.save(state, hashing)  # type: ignore[arg-type]  # a file-like object with write/flush
        hashing.handle.write(hashing.footer())

    _write_atomic(target, write)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` byte for byte (its footer included), atomically."""

    def copy(hashing: _HashingWriter) -> None:
        with open(source, "rb") as src:
            while chunk := src.read(_CHUNK):
                hashing.write(chunk)

    _write_atomic(target, copy)


def _write_atomic(target: Path, write: Callable[[_HashingWriter], None]) -> None:
    """``write`` into a temporary file beside ``target``, flush and fsync it, rename it over ``target``."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    hashing: _HashingWriter | None = None
    try:
        with open(tmp, "wb") as handle:
            hashing = _HashingWriter(handle)
            write(hashing)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = hashing.error if hashing is not None and hashing.error is not None else err
        if _is_disk_full(cause) or _is_disk_full(err):
            raise CheckpointWriteError(_disk_full_message(target, cause)) from cause
        if cause is not err:
            raise cause from None  # e.g. KeyboardInterrupt inside a write, reported by torch as RuntimeError
        raise
    _fsync_dir(target.parent)


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        return True
    # torch's zip writer turns a failed write into this, without the errno
    text = str(err)
    return isinstance(err, RuntimeError) and "inline_container.cc" in text and ("file write failed" in text or "unexpected pos" in text)


def _disk_full_message(target: Path, err: BaseException) -> str:
    folder = target.parent.resolve()
    try:
        free = _human(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    reason = (
        "the file exceeds this process's file-size limit (ulimit -f)"
        if isinstance(err, OSError) and err.errno == errno.EFBIG
        else "the disk quota is exceeded"
        if isinstance(err, OSError) and err.errno == errno.EDQUOT
        else "the disk is full"
    )
    return (
        f"Could not write the checkpoint {target}: {reason} ({free} free in {folder}). The previous "
        f"{target.name} is untouched. Free some space (or set out_dir to a folder on another disk) and "
        "continue with resume='last'."
    )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------- reading


def advice(path: Path) -> str:
    """What to do instead of reading the damaged checkpoint ``path``."""
    other = {"last.pt": "best.pt", "best.pt": "last.pt"}.get(path.name)
    if other is not None and (path.parent / other).is_file():
        return (
            f"Resume from {path.parent / other} (resume='{path.parent / other}'), or delete {path} to start "
            "this run afresh."
        )
    return f"Delete {path} (and start afresh), or pass another last.pt or best.pt that training wrote."


def read_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, after checking the footer's size and SHA-256.

    Raises:
        CheckpointError: the file is truncated, damaged or not a torch file.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 2 * FOOTER_SIZE))
        tail = handle.read()
        at = tail.rfind(_MAGIC)
        if at >= 0 and at != len(tail) - FOOTER_SIZE:  # a footer, but not where it ends the file
            raise CheckpointError(
                f"The checkpoint {path} is damaged: its end was cut or extended after it was written. {advice(path)}"
            )
        verified = at >= 0
        if verified:
            _verify(handle, tail[at:], size, path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign file fails in many ways: UnpicklingError, RuntimeError, EOFError, IndexError, ...
        what = "is damaged" if verified else "is truncated, damaged or not a checkpoint file"
        raise CheckpointError(
            f"The checkpoint {path} cannot be read: it {what} ({type(err).__name__}: {_first_line(err)}). "
            f"{advice(path)}"
        ) from err
    if not verified:
        warnings.warn(
            f"The checkpoint {path} carries no content hash (written before checkpoints had one): it loads, but "
            "cannot be verified. A new save (resume and train on) adds the hash.",
            stacklevel=4,
        )
    return state


def _verify(handle: BinaryIO, footer: bytes, size: int, path: Path) -> None:
    """Check the payload of the open file ``handle`` against its ``footer`` (size, then SHA-256)."""
    digest, expected = _parse_footer(footer, path)
    if size != expected + FOOTER_SIZE:
        raise CheckpointError(
            f"The checkpoint {path} is damaged: {size - FOOTER_SIZE} bytes before its footer, which records "
            f"{expected} (the file was cut or extended after it was written). {advice(path)}"
        )
    handle.seek(0)
    sha256, left = hashlib.sha256(), expected
    while left and (chunk := handle.read(min(_CHUNK, left))):
        sha256.update(chunk)
        left -= len(chunk)
    if sha256.hexdigest() != digest:
        raise CheckpointError(
            f"The checkpoint {path} is damaged: its content hash (SHA-256) differs from the one recorded when it "
            f"was written, so some bytes changed on disk or in transfer. {advice(path)}"
        )


def _parse_footer(footer: bytes, path: Path) -> tuple[str, int]:
    rest = footer[len(_MAGIC) :].decode("ascii", "replace")
    digest, _, size = rest.strip().partition(" ")
    if len(digest) != 64 or not re.fullmatch(r"[0-9a-f]{64}", digest) or not re.fullmatch(r"[0-9a-f]{16}", size):
        raise CheckpointError(f"The checkpoint {path} is damaged: its footer is unreadable. {advice(path)}")
    return digest, int(size, 16)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:200]


# ----------------------------------------------------------------------------- stale temporaries


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.<name>.pt.<pid>.tmp`` files of killed saves in ``folder``; return them.

    A file is stale when its process is gone, or when the process now holding its pid started after
    the file was last written (the pid was reused). Files of live writers are kept; so is everything
    on a platform where that cannot be told (no POSIX signals or no ``/proc``).
    """
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        pid = int(match["pid"])
        try:
            modified = path.stat().st_mtime
        except OSError:
            continue
        started = _process_start(pid)
        if started is False or (isinstance(started, float) and started > modified + 1.0):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted saves in %s", len(removed), folder)
    return removed


def _process_start(pid: int) -> float | bool | None:
    """``False`` when no process has ``pid``; else its start time (Unix seconds), None if unknown."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
