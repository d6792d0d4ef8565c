"""The diagnostics of one balancing step (:class:`StepInfo`), computed when first read."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

__all__ = ["StepInfo"]

_KEYS = ("tasks", "losses", "total", "weights", "grad_norms", "cosines", "jacobian")


class StepInfo(MutableMapping[str, Any]):
    """The diagnostics of one step: a dict whose entries are computed when first read.

    Building the per-task dicts and lists (and, for gradient methods, the cosine matrix) costs more than
    a small model's backward pass; a training loop that logs every hundredth step should not pay for
    them at every step. Reading an entry (or ``dict(info)``) computes it once.
    """

    __slots__ = ("_values", "_lazy")

    def __init__(self, values: dict[str, Any], **lazy: Callable[[], Any]) -> None:
        self._values = values
        self._lazy = lazy

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            self._values[key] = self._lazy.pop(key)()
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._lazy.pop(key, None)
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        if self._lazy.pop(key, None) is None:
            del self._values[key]
        else:
            self._values.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        known = [k for k in _KEYS if k in self._values or k in self._lazy]
        return iter(known + [k for k in list(self._values) + list(self._lazy) if k not in _KEYS])

    def __len__(self) -> int:
        return len(set(self._values) | set(self._lazy))

    def __repr__(self) -> str:
        return repr(dict(self))
