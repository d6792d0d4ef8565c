"""Multi-task streams: :class:`MultiTaskStream` over iterable sources, and the sources it reads."""

from hydranet.data.stream._sources import Fields, Shards, TarShards, decode_field, read_jsonl, read_tar
from hydranet.data.stream._stream import STOPS, MultiTaskStream

__all__ = ["STOPS", "Fields", "MultiTaskStream", "Shards", "TarShards", "decode_field", "read_jsonl", "read_tar"]
