"""The command line's console: ``--quiet`` / ``--verbose`` / ``--threads``, warnings, log messages.

* ``--quiet``: only the final summary and errors; ``--verbose``: also every validation metric and the
  balancer's diagnostics per epoch (:class:`hydranet.train.Progress`).
* Warnings are one line on stderr, ``hydranet: warning: MESSAGE``, without the file, line number and
  source line Python adds (they mean something to the library's developers, not to a user); under
  ``torchrun`` only rank 0 prints them, so that a warning shows once, not once per process.
* The library's log messages (logger ``hydranet``, e.g. "training the single-task baseline of ...")
  are printed on rank 0 above the progress bars; only warnings and errors with ``--quiet``.
* Threads: :mod:`hydranet.cli._threads`, the choice printed in one line (not with ``--quiet``).

Nothing here imports torch before :func:`setup` has prepared the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, TextIO

from hydranet.cli import _threads

__all__ = ["add_arguments", "rank", "setup"]


def rank() -> int:
    """This process's rank under torchrun (``RANK``), 0 outside it; read without importing torch."""
    value = os.environ.get("RANK", "0").strip()
    return int(value) if value.isdigit() else 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser, *, progress: bool = True) -> None:
    """``--threads`` and, for commands that train (``progress``), ``--quiet`` / ``--verbose``."""
    if progress:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--quiet", "-q", action="store_true", help="print only the final summary and errors")
        group.add_argument(
            "--verbose", "-v", action="store_true",
            help="also every validation metric and the balancer's diagnostics (weights, gradient norms, cosines) per epoch",
        )
    parser.add_argument(
        "--threads", type=_positive, default=None, metavar="N",
        help="CPU threads per process (default: the CPUs other processes leave free, from the load average)",
    )


def _write(text: str, stream: TextIO) -> None:
    # tqdm.write prints above any progress bar on the stream instead of through it.
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; keep warnings working without it all the same
        stream.write(text + "\n")
    else:
        tqdm.write(text, file=stream)


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    if rank() != 0:
        return
    kind = "" if category in (UserWarning, RuntimeWarning) else f" ({category.__name__})"
    _write(f"hydranet: warning: {message}{kind}", file if file is not None else sys.stderr)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                _write(f"hydranet: {record.levelname.lower()}: {text}", sys.stderr)
            else:
                _write(text, sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


def setup(args: argparse.Namespace) -> _threads.ThreadChoice:
    """Configure warnings, the ``hydranet`` logger and the threads for the command in ``args``; print the
    thread choice for the commands that train (``args.quiet`` is false). Returns the choice."""
    quiet = bool(getattr(args, "quiet", False))
    warnings.showwarning = _show_warning
    logger = logging.getLogger("hydranet")
    handler = next((h for h in logger.handlers if isinstance(h, _Handler)), None)
    if handler is None:
        handler = _Handler()
        logger.addHandler(handler)
    # Records still propagate (to a handler the caller may have); the root has none in the command line.
    handler.setLevel(logging.ERROR if rank() != 0 else logging.WARNING if quiet else logging.INFO)
    logger.setLevel(logging.INFO)

    _threads.prepare()  # before torch is imported
    choice = _threads.choose(getattr(args, "threads", None))
    _threads.apply(choice)
    if hasattr(args, "quiet") and not quiet and rank() == 0:
        print(choice.describe(), flush=True)
    return choice
