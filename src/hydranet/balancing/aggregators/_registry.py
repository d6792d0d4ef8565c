"""The aggregator registry, ``AGGREGATORS`` by name, and :func:`get_aggregator`.

A module of its own so that a wrapper (:class:`~hydranet.balancing.aggregators.CRMOGM`) can build the
method it wraps by name without importing the package that lists the wrapper: the package fills the
registry once every family module has loaded; it is read only when an aggregator is built.
"""

from __future__ import annotations

import inspect
from typing import Any

from hydranet._checks import did_you_mean
from hydranet.balancing.aggregators.base import Aggregator

__all__ = ["AGGREGATORS", "get_aggregator"]

#: Gradient aggregators by name; ``AGGREGATORS[name](**settings)(G) -> update`` (filled by the package).
AGGREGATORS: dict[str, type[Aggregator]] = {}


def get_aggregator(name: str, **settings: Any) -> Aggregator:
    """Build the aggregator registered as ``name`` (case, spaces and ``-`` are forgiven) with ``settings``.

    Raises:
        ValueError: for an unknown name (listing the valid ones, with the closest match) or setting.
    """
    if not isinstance(name, str):
        raise TypeError(f"The aggregator name must be a string such as 'upgrad', got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in AGGREGATORS:
        hint = did_you_mean(key, AGGREGATORS)
        raise ValueError(f"Unknown aggregator {name!r}.{hint} Valid names: {', '.join(sorted(AGGREGATORS))}.")
    cls = AGGREGATORS[key]
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        hint = did_you_mean(unknown[0], allowed)
        raise ValueError(
            f"Aggregator {key!r} has no setting {', '.join(map(repr, unknown))}.{hint} "
            f"Its settings: {', '.join(allowed)}."
        )
    return cls(**settings)
