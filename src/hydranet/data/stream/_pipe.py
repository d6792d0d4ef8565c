r"""One task's samples for one consumer: passes over the source, class balancing, the shuffle buffer.

**Shuffle buffer** (capacity :math:`S`): the first :math:`S` samples fill it; each draw takes the sample in
a uniformly random slot and puts the next sample of the source in its place; at the end of the pass the
buffer drains in random order. A sample leaves the buffer after a geometric number of draws (mean
:math:`S`), so the order is a local shuffle: combined with the shuffled shard order, samples of one shard
are spread over about :math:`S` draws. :math:`S \le 1` keeps the source's order.

**Class balancing by rejection**: a sample of class :math:`c` is kept with probability
:math:`a_c = w_c / \max_k w_k`, where :math:`w` is the per-sample weight of a
:mod:`~hydranet.data.balance` method computed from the running class counts :math:`n_c` of the samples
seen so far (``inverse``: :math:`w_c = 1 / n_c`, so :math:`a_c = \min_k n_k / n_c`). Class :math:`c` is then
kept at a rate :math:`\propto n_c w_c`, the frequency the sampler's balanced draws give, without knowing the
stream in advance and without repeating a sample; the cost is the discarded samples (a 50:5 stream keeps
about 10 of every 55). Labels are read as samples arrive, from a label function or the task's target.

**State**: everything random comes from blocks of uniforms whose generator state is saved, and the
buffer is saved as the *positions* of its samples in the pass, not the samples: a resume re-reads the pass
from the oldest buffered position (shard sources skip whole shards up to it), about :math:`S \ln S` samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hydranet.data.balance import ClassBalance, class_weights
from hydranet.data.stream._sources import Source

__all__ = ["Pipe", "Uniforms"]

_BLOCK = 1024
_END = object()


class Uniforms:
    """:math:`U(0, 1)` draws made a block at a time; the state is the generator's state at the block and
    the offset in it, so a restored stream draws exactly the same numbers."""

    def __init__(self, seed: Any) -> None:
        self.rng = np.random.default_rng(seed)
        self._refill()

    def _refill(self) -> None:
        self._at = self.rng.bit_generator.state
        self._block = self.rng.random(_BLOCK).tolist()
        self._i = 0

    def __call__(self) -> float:
        if self._i == _BLOCK:
            self._refill()
        u = self._block[self._i]
        self._i += 1
        return u

    def state(self) -> dict[str, Any]:
        return {"generator": self._at, "offset": self._i}

    def load(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["generator"]
        self._refill()
        self._i = int(state["offset"])


class Pipe:
    """Samples ``(input, {task: target})`` of one task for one consumer, pass after pass.

    Args:
        task: the task name; ``index`` its position (keys the random streams).
        source: where samples come from.
        where: ``(consumer, consumers, rank, world)``.
        seed, epoch: with ``index`` and the consumer they fix every draw.
        shuffle: capacity :math:`S` of the shuffle buffer; shard order is shuffled too when :math:`S > 1`.
        transform: raw sample -> ``(input, target)`` or ``(input, {task: target})``.
        balance: the rejection's weighting, or ``None``.
        label: raw sample -> class for balancing; ``None``: the task's target.
    """

    def __init__(
        self,
        task: str,
        index: int,
        source: Source,
        where: tuple[int, int, int, int],
        seed: int,
        epoch: int,
        shuffle: int,
        transform: Callable[[Any], Any] | None,
        balance: ClassBalance | None,
        label: Callable[[Any], Any] | None,
    ) -> None:
        self.task, self.index, self.source = task, index, source
        self.where, self.seed, self.epoch = where, seed, epoch
        self.capacity = max(1, shuffle)
        self.transform, self.balance, self.label = transform, balance, label
        self.uniform = Uniforms(np.random.SeedSequence([seed, epoch, index, where[0], 1]))
        self.classes: list[int] = []
        self._accept: list[float] = []
        self.passes = 0  # passes completed in this epoch: the source's epoch counter
        self._open(0, 0, [])

    # ------------------------------------------------------------------ passes

    def _order(self, pass_: int) -> np.ndarray | None:
        if not self.source.sharded or self.capacity <= 1:
            return None
        return np.random.default_rng([self.seed, self.epoch, self.index, pass_, 2]).permutation(self.source.n_shards)

    def _open(self, pass_: int, start: int, counts: list[int]) -> None:
        consumer, consumers, rank, world = self.where
        self.pass_ = pass_
        self.shard_counts = counts
        self.read = start
        self.done = False
        self.buffer: list[Any] = []
        self.positions: list[int] = []
        self._items = self.source.open(consumer, consumers, rank, world, self._order(pass_), start, counts)

    def end_pass(self) -> None:
        """Count the pass and start the next one."""
        if self.read == 0:
            consumer, consumers = self.where[:2]
            raise ValueError(
                f"The source of task {self.task!r} gave no samples to consumer {consumer} of {consumers} (ranks x "
                "DataLoader workers). Give it more samples or shards, or use fewer workers."
            )
        self.passes += 1
        self._open(self.pass_ + 1, 0, [])

    def at_end(self) -> bool:
        """True when the pass has no sample left (reads ahead one sample to know)."""
        if not self.buffer and not self.done:
            self._fill(1)
        return self.done and not self.buffer

    # ------------------------------------------------------------------ samples

    def _sample(self, raw: Any) -> tuple[Any, Mapping[str, Any]]:
        item = self.transform(raw) if self.transform is not None else raw
        if isinstance(item, tuple) and len(item) == 2:
            if isinstance(item[1], Mapping):
                return item
            return item[0], {self.task: item[1]}
        kind = type(item).__name__
        hint = (
            f" Its fields are {sorted(item)}: pass transform=hn.data.stream.Fields('<input field>', '<target field>')."
            if isinstance(item, Mapping)
            else ""
        )
        raise TypeError(
            f"Task {self.task!r}: a sample must be (input, target) or (input, {{task: target}}), got a {kind}.{hint}"
        )

    def _keep(self, raw: Any, sample: tuple[Any, Mapping[str, Any]]) -> bool:
        value = self.label(raw) if self.label is not None else sample[1].get(self.task)
        try:
            c = int(value) if value is not None else -1
        except (TypeError, ValueError):
            c = -1
        if c < 0 or (value is not None and hasattr(value, "__float__") and float(value) != c):
            raise ValueError(
                f"Task {self.task!r}: class balancing needs one integer class >= 0 per sample, got {value!r}. "
                "Pass labels= (a field name or a function of the raw sample) that reads the class."
            )
        if c >= len(self.classes):
            self.classes.extend([0] * (c + 1 - len(self.classes)))
        self.classes[c] += 1
        assert self.balance is not None
        w = class_weights(self.classes, self.balance.method, beta=self.balance.beta, threshold=self.balance.threshold)
        return self.uniform() * w.max() < w[c]

    def _fill(self, size: int) -> None:
        """Read accepted samples into the buffer until it holds ``size`` or the pass ends."""
        while len(self.buffer) < size:
            raw = next(self._items, _END)
            if raw is _END:
                self.done = True
                return
            position = self.read
            self.read += 1
            sample = self._sample(raw)
            if self.balance is not None and not self._keep(raw, sample):
                continue
            self.buffer.append(sample)
            self.positions.append(position)

    def next(self) -> Any:
        """The next sample of this pass, or ``_END`` when the pass is over."""
        buffer = self.buffer
        if len(buffer) < self.capacity and not self.done:
            self._fill(self.capacity)
        if not buffer:
            return _END
        j = int(self.uniform() * len(buffer)) if len(buffer) > 1 and self.capacity > 1 else 0
        sample = buffer[j]
        if self.capacity == 1:
            buffer.pop()
            self.positions.pop()
            return sample
        if not self.done:
            self._fill(len(buffer) + 1)
        if len(buffer) > self.capacity or self.done:
            # Move the last sample (just read, or the last left when draining) into the freed slot.
            buffer[j] = buffer[-1]
            self.positions[j] = self.positions[-1]
            buffer.pop()
            self.positions.pop()
        return sample

    def take(self, n: int, restart: bool) -> list[Any] | None:
        """``n`` samples; at the end of a pass the next starts (``restart``) or ``None`` is returned."""
        out: list[Any] = []
        while len(out) < n:
            sample = self.next()
            if sample is _END:
                if not restart:
                    return None
                self.end_pass()
                continue
            out.append(sample)
        return out

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "pass": self.pass_,
            "passes": self.passes,
            "read": self.read,
            "done": self.done,
            "buffer": list(self.positions),
            "shard_counts": list(self.shard_counts),
            "uniform": self.uniform.state(),
            "classes": list(self.classes),
        }

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`: re-read the pass from its oldest buffered sample (see the module docstring)."""
        positions = [int(p) for p in state["buffer"]]
        read = int(state["read"])
        start = min(positions) if positions else read
        self._open(int(state["pass"]), start, [int(c) for c in state["shard_counts"]])
        slots = {p: i for i, p in enumerate(positions)}
        buffer: list[Any] = [None] * len(positions)
        for position in range(start, read):
            raw = next(self._items, _END)
            if raw is _END:
                raise ValueError(
                    f"Task {self.task!r}: the source ended at sample {position} of the pass, before the {read} the "
                    "saved state had read. The data changed since the state was saved."
                )
            if position in slots:
                buffer[slots[position]] = self._sample(raw)
        self.buffer, self.positions, self.read = buffer, positions, read
        self.done = bool(state["done"])
        self.passes = int(state["passes"])
        self.uniform.load(state["uniform"])
        self.classes = [int(c) for c in state["classes"]]
