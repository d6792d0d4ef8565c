"""``None`` in object arrays, in the form NumPy's type stubs accept.

Readers keep per-row values and problems in object arrays where ``None`` means "no value" / "no
problem". ``np.equal(a, None)`` and ``np.where(c, x, None)`` work at run time (``None`` becomes a 0-d
object array) but the stubs take array-likes only, so the same 0-d array is spelt out here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NONE", "none_mask"]

#: ``None`` as a 0-d object array: the third argument of ``np.where`` for "no value".
NONE = np.array(None, dtype=object)


def none_mask(values: np.ndarray) -> np.ndarray:
    """Boolean array, True where the object array ``values`` holds ``None`` (elementwise, vectorised)."""
    return np.asarray(np.equal(values, NONE), dtype=bool)
