"""The one error surface of the ``hydranet`` command: an exception -> its exit code and one line.

:func:`classify` decides, :func:`report` prints ``hydranet COMMAND: MESSAGE`` on stderr and returns the
code. The codes are those of :mod:`hydranet.cli._codes` (documented in docs/config.md):

* hydranet's own errors: :class:`~hydranet.cli.config.ConfigError` -> 2, every other class defined in
  hydranet (``hydranet.train.errors.TrainingError`` and its ``CheckpointError``, ``NonFiniteLossError``,
  ..., ``ImageReadError``, and any class or subclass added later) -> 1 with the library's message, or 3
  for those that are also an ``OSError`` (``CheckpointWriteError``: a full disk);
* what a user can cause in the operating system: a missing file -> 2 (the path given is wrong), permission
  denied, a full disk (``ENOSPC``, or torch's ``inline_container.cc`` write failure) and other I/O
  errors -> 3; a damaged zip archive (``.npz``, checkpoint) or a text file in another encoding -> 1;
* ``ValueError``, ``TypeError``, ``RuntimeError``, ``FloatingPointError`` raised on purpose (by a
  ``raise`` statement, so with a message written for the user) -> 1;
* anything else (a ``KeyError``, an ``IndexError``, an error from inside a C extension): most likely a
  bug or a case nobody foresaw -> 70, with "run with --debug for the traceback". It is never hidden;
* ``KeyboardInterrupt`` -> 130, with how to continue.

Classes are looked up by name in :data:`sys.modules` when an error happens (never imported here: a module
that was not imported raised nothing), so this module imports neither torch nor the library.
"""

from __future__ import annotations

import errno
import linecache
import re
import sys
from typing import NamedTuple

from hydranet.cli._codes import EXIT_FAILURE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, EXIT_USAGE

__all__ = ["CommandError", "Outcome", "classify", "one_line", "raised_on_purpose", "report"]

DEBUG_HINT = "run with --debug for the traceback"


class CommandError(Exception):
    """A failure a command explains itself (exit 1): the message names the problem and the fix."""


class Outcome(NamedTuple):
    """What the command line makes of an exception."""

    code: int
    message: str


# Phrases of the library written for Python callers, and what a config user writes instead.
_PHRASES = (
    ("pass on_error='skip'", "set `on_error: skip` in the data source"),
    ("or on_error='skip'", "or `on_error: skip` in the data source"),
    ("run with verify=True", "set `verify: true` in the data source"),
    ("on_error='skip'", "`on_error: skip`"),
    ('on_error="skip"', "`on_error: skip`"),
    ("verify=True", "`verify: true`"),
    ("verify='decode'", "`verify: decode`"),
)

# Keyword arguments of the Trainer in a message, and the config keys that set them.
_ARGUMENTS = (
    (re.compile(r"\b(lr|grad_clip|monitor|patience|accumulate|epochs)=([^\s,;)]+)"), r"trainer.\1: \2"),
    (re.compile(r"\bbalancer='([\w-]+)'"), r"balancer: \1"),
    (re.compile(r"\bbatch_size=([^\s,;)]+)"), r"sampler.batch_size: \1"),
)

# torch's own words for a failed write of a checkpoint (a full disk, a quota), and for a damaged file.
_TORCH_WRITE = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")
_TORCH_READ = ("PytorchStreamReader", "failed finding central directory", "failed reading zip archive")


def one_line(text: object) -> str:
    """``text`` on one line (the lines of a multi-line message joined), phrased for the command line."""
    message = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    for python, cli in _PHRASES:
        message = message.replace(python, cli)
    for pattern, key in _ARGUMENTS:
        message = pattern.sub(key, message)
    return message


def _hydranet_class(err: BaseException) -> type | None:
    """The first class of ``err``'s hierarchy defined in hydranet (its own errors and their bases)."""
    for cls in type(err).__mro__:
        if cls.__module__.split(".")[0] == "hydranet":
            return cls
    return None


def _is_instance(err: BaseException, module: str, name: str) -> bool:
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(err, cls)


def raised_on_purpose(err: BaseException) -> bool:
    """Whether the innermost frame of ``err`` is a ``raise`` statement (a message written for the user),
    rather than an operation that failed (``x[k]``, ``None()``, a C extension's error)."""
    tb = err.__traceback__
    if tb is None:
        return True  # raised and caught without a frame: nothing says it is a bug
    while tb.tb_next is not None:
        tb = tb.tb_next
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    return line.startswith("raise")


def _os_error(err: OSError) -> Outcome:
    name = f" {err.filename!r}" if err.filename else ""
    # A library's own message (FileNotFoundError("No checkpoint at ...")) already names the file.
    own = str(err) if err.errno is None and str(err) else None
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return Outcome(EXIT_USAGE, one_line(own or f"{err.strerror}:{name}: check the path"))
    if isinstance(err, PermissionError):
        return Outcome(
            EXIT_IO,
            one_line(
                own or f"permission denied:{name}: make it readable (or its folder writable), or use another path"
            ),
        )
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        where = f" writing{name}" if name else ""
        return Outcome(
            EXIT_IO, f"no space left on the device{where}: free disk space, or write to another folder (--out)"
        )
    return Outcome(EXIT_IO, f"I/O error: {one_line(err)}")


def classify(err: BaseException, command: str = "") -> Outcome:
    """The exit code and the one-line message (without the ``hydranet COMMAND:`` prefix) for ``err``."""
    if isinstance(err, KeyboardInterrupt):
        resume = "; continue with `--resume last`" if command == "train" else ""
        return Outcome(EXIT_INTERRUPTED, f"interrupted{resume}")
    if _is_instance(err, "hydranet.cli.config", "ConfigError"):
        return Outcome(EXIT_USAGE, f"config error: {one_line(err)}")
    if isinstance(err, CommandError) or _hydranet_class(err) is not None:
        # hydranet's classes keep the code of a built-in base that has one: a CheckpointWriteError is an
        # OSError (a full disk), so exit 3 like any refused write.
        code = EXIT_IO if isinstance(err, OSError) else EXIT_FAILURE
        return Outcome(code, f"error: {one_line(err)}")
    if isinstance(err, OSError):
        return _os_error(err)
    text = str(err)
    if isinstance(err, RuntimeError) and any(s in text for s in _TORCH_WRITE):
        return Outcome(
            EXIT_IO,
            f"writing a checkpoint failed (torch: {one_line(text)[:120]}): the disk may be full; free disk space, "
            "or write to another folder (--out)",
        )
    if isinstance(err, RuntimeError) and any(s in text for s in _TORCH_READ):
        return Outcome(
            EXIT_FAILURE,
            f"a file is not a readable torch checkpoint, truncated or damaged ({one_line(text)[:120]}): "
            "pass the best.pt or last.pt that training wrote",
        )
    if _is_instance(err, "zipfile", "BadZipFile"):
        return Outcome(
            EXIT_FAILURE, f"a file is not a valid zip archive (.npz, checkpoint): {one_line(err)}; re-create it"
        )
    if isinstance(err, UnicodeDecodeError):
        return Outcome(
            EXIT_FAILURE,
            f"a text file is not in the expected encoding ({one_line(err)}): set `encoding:` in the data source "
            "(e.g. latin-1)",
        )
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return Outcome(
            EXIT_FAILURE, f"out of memory ({one_line(text)[:160]}): lower sampler.batch_size, or use a smaller model"
        )
    if isinstance(err, (ValueError, TypeError, RuntimeError, ArithmeticError)) and raised_on_purpose(err):
        return Outcome(EXIT_FAILURE, f"error: {one_line(err)}")
    detail = one_line(err) or "(no message)"
    return Outcome(
        EXIT_INTERNAL,
        f"unexpected error {type(err).__name__}: {detail}; {DEBUG_HINT} (and report it if it looks like a bug)",
    )


def report(err: BaseException, command: str | None) -> int:
    """Print ``err`` as one line on stderr; return its exit code."""
    outcome = classify(err, command or "")
    prefix = f"hydranet {command}" if command else "hydranet"
    print(f"{prefix}: {outcome.message}", file=sys.stderr)
    return outcome.code
