"""Validation helpers shared by every module: one "did you mean", one cutoff, one wording.

Each check raises ``ValueError`` (``TypeError`` for a value of the wrong type) with a message that names
the parameter, what was given and what is accepted, so that the caller can fix it without reading code.
This module imports nothing of hydranet.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CUTOFF",
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "closest",
    "did_you_mean",
    "unknown_name",
]

#: Similarity (``difflib`` ratio) a name needs to be suggested: ``uwx`` -> ``uw``, ``pcgrd`` -> ``pcgrad``.
CUTOFF = 0.6


def closest(name: object, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name`` (at least :data:`CUTOFF` similar), or ``None``."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=CUTOFF)
    return matches[0] if matches else None


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices``, or an empty string."""
    match = closest(name, choices)
    return f" Did you mean {match!r}?" if match is not None else ""


def unknown_name(what: str, name: object, choices: Iterable[str]) -> ValueError:
    """The error for a name that is not one of ``choices``: the suggestion, then every valid name."""
    choices = sorted(map(str, choices))
    return ValueError(f"Unknown {what} {name!r}.{did_you_mean(name, choices)} Valid: {', '.join(choices)}.")


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, hint: str = "") -> int:
    """``value`` as an ``int`` in ``[low, high]``; bools and floats are refused (``2.0`` is not a count)."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise ValueError(f"{name} must be an integer{_bounds(low, high)}, got {value!r}{_hint(hint)}.")
    return int(value)


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    strict: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``(low, high)`` with ``strict``).

    A string that reads as a number (``"1e-3"``, which YAML 1.1 leaves a string) is accepted: users write
    learning rates that way.
    """
    number = _as_number(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number{_bounds(low, high, strict)}, got {value!r}{_hint(hint)}.")
    ok = True
    if low is not None:
        ok = number > low if strict else number >= low
    if ok and high is not None:
        ok = number < high if strict else number <= high
    if not ok:
        raise ValueError(f"{name} must be a finite number{_bounds(low, high, strict)}, got {value!r}{_hint(hint)}.")
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a real bool; ``"false"``, ``0`` or ``None`` are refused (they would read as a wrong bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``; otherwise an error with the closest choice and all of them."""
    if value not in choices:
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.{hint}"
        )
    return value


def _as_number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _bounds(low: float | None, high: float | None, strict: bool = False) -> str:
    ge, le = (">", "<") if strict else (">=", "<=")
    parts = ([f"{ge} {low}"] if low is not None else []) + ([f"{le} {high}"] if high is not None else [])
    return " " + " and ".join(parts) if parts else ""


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""
