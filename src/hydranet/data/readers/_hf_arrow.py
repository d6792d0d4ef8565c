"""Arrow columns of a Hugging Face dataset read whole, with NumPy: feature types, values, validity.

Private to :mod:`hydranet.data.readers.hf`. Nothing here formats a row or decodes an image: a column
is fetched once from ``dataset.data`` (through the row mapping ``select`` / ``shuffle`` / ``filter``
leave) and converted by ``pyarrow.compute``. ``datasets`` and ``pyarrow`` are imported on first use
(the ``hf`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "EXTRA",
    "Problems",
    "arrow_column",
    "describe",
    "distinct_names",
    "float_values",
    "import_datasets",
    "int_values",
    "is_list",
    "is_numeric",
    "list_parts",
    "make_problems",
    "row_mapping",
    "scalar_type",
    "valid_mask",
]

EXTRA = "pip install 'hydranet[hf]'"


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"Reading Hugging Face datasets needs the `datasets` package: {EXTRA}.") from err
    return datasets


# -- feature types -----------------------------------------------------------------------------------------
def scalar_type(feature: Any) -> str | None:
    """``"class"``, ``"bool"``, ``"int"``, ``"float"`` or ``"string"`` for a one-value feature, else None."""
    hf = import_datasets()
    if isinstance(feature, hf.ClassLabel):
        return "class"
    if isinstance(feature, hf.Value):
        import pyarrow as pa

        t = feature.pa_type
        if pa.types.is_boolean(t):
            return "bool"
        if pa.types.is_integer(t):
            return "int"
        if pa.types.is_floating(t):
            return "float"
        if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t):
            return "string"
    return None


def is_list(feature: Any) -> bool:
    hf = import_datasets()
    # datasets 4 still has a Sequence class (List derives from it); in 5 Sequence is a function returning a List.
    kinds = tuple(t for t in (hf.List, hf.LargeList, getattr(hf, "Sequence", None)) if isinstance(t, type))
    return isinstance(feature, kinds)


def is_numeric(feature: Any) -> bool:
    """Numbers, bools, (nested) lists of them and ``Array2D`` ... ``Array5D``: what can be an input tensor."""
    hf = import_datasets()
    if scalar_type(feature) in ("bool", "int", "float"):
        return True
    if is_list(feature):
        return is_numeric(feature.feature)
    if isinstance(feature, (hf.Array2D, hf.Array3D, hf.Array4D, hf.Array5D)):
        return scalar_type(hf.Value(feature.dtype)) in ("bool", "int", "float")
    return False


def describe(feature: Any) -> str:
    if isinstance(feature, dict):
        return "a struct of fields " + ", ".join(map(repr, feature))
    return repr(feature)




# -- reading Arrow columns ---------------------------------------------------------------------------------
def row_mapping(dataset: Any) -> np.ndarray | None:
    """The table rows of the dataset's positions when ``select`` / ``shuffle`` / ``filter`` left a mapping.

    ``dataset.data`` is the whole underlying table; the mapping (``_indices``, one uint64 column) is how
    ``datasets`` itself resolves ``dataset[i]``. Fetching a column through it row by row builds one Arrow
    chunk per row, so it is applied here once, with NumPy.
    """
    indices = getattr(dataset, "_indices", None)
    if indices is None:
        return None
    return indices.column(0).to_numpy().astype(np.int64, copy=False)


def arrow_column(dataset: Any, name: str, rows: np.ndarray | None) -> pa.Array:
    """Column ``name`` as one Arrow array in the dataset's order (no row is formatted or decoded)."""
    import pyarrow as pa

    array = dataset.data.column(name).combine_chunks()
    return array if rows is None else array.take(pa.array(rows))


def valid_mask(array: pa.Array) -> np.ndarray:
    return array.is_valid().to_numpy(zero_copy_only=False)


def int_values(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 values with 0 where null, valid mask)``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    valid = valid_mask(array)
    values = pc.fill_null(pc.cast(array, pa.int64()), 0).to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.int64), valid  # a writable copy


def float_values(array: pa.Array) -> np.ndarray:
    """float64 values, NaN where null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return np.array(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def list_parts(array: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray]:
    """``(valid rows, lengths, flat values, owner row of each flat value)`` of a list column."""
    import pyarrow.compute as pc

    valid = valid_mask(array)
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = array.flatten()  # skips null rows, whatever storage backs them
    owner = np.repeat(np.arange(len(array), dtype=np.int64), lengths)
    return valid, lengths, flat, owner


def distinct_names(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, distinct names)`` of a string array: codes index the names, -1 where null or blank."""
    import pyarrow.compute as pc

    stripped = pc.utf8_trim_whitespace(array)
    blank = pc.equal(pc.utf8_length(stripped), 0)
    encoded = pc.dictionary_encode(pc.if_else(blank, None, stripped))
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return codes, names


# -- rows that cannot be used ------------------------------------------------------------------------------
#: Rows that cannot be used and why, kept sparse: ``(int64 rows, one reason each)``.
Problems = tuple[np.ndarray, list[str]]


def make_problems(bad: np.ndarray | Sequence[int], reasons: Sequence[str]) -> Problems:
    return np.asarray(bad, dtype=np.int64).reshape(-1), list(reasons)
