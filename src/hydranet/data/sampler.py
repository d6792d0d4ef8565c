r"""TaskBatchSampler: multi-task batches for ``DataLoader(batch_sampler=...)``.

Three kinds of batches:

* **one task per batch** (default for separate datasets): a :mod:`~hydranet.data.schedule` picks the
  task of each step, the batch holds ``batch_size`` samples of that task;
* **mixed batches** (``quotas={"a": 2, "b": 6}``): every batch holds exactly ``quotas[t]`` samples of
  each task ``t``;
* **joint** (default for a shared dataset, ``ds.is_shared``): the union of all labelled samples is one
  pool, cut into plain shuffled batches, every sample once per epoch; each sample brings all its labels.

Notation: :math:`R` ranks (``num_replicas``), :math:`B = R \cdot` ``batch_size`` samples per step over
all ranks (:math:`R q_t` for a quota :math:`q_t`), task :math:`t` has :math:`n_t` samples and share
:math:`p_t` of the batches (its schedule), and one *pass* over it is :math:`k_t` steps:
:math:`\lceil n_t / B \rceil`, or :math:`\lfloor n_t / B \rfloor` with ``drop_last``.

**Within a task**, samples are drawn without replacement, pass after pass: a pass is a fresh shuffle of
the task's samples, cut into :math:`k_t` full steps. With ``drop_last`` the :math:`n_t \bmod B` left over
are skipped (a different few each pass); without it the last step is completed with the first samples of
the same shuffle, as ``DistributedSampler`` pads. So a step never holds a sample twice (unless the task is
smaller than a step) and ranks get disjoint samples at every step. With ``balance=`` (or
``replacement=True``) samples are drawn with replacement, a class first by its total weight, then a
sample of that class (:mod:`~hydranet.data.balance`); :math:`k_t = \lceil n_t / B \rceil` then counts
the steps of a pass only to set the epoch length.

**Epoch length** :math:`N` (batches per rank):

* ``"max_size_cycle"``: :math:`N = \max_t \lceil k_t / p_t \rceil`, every task gets at least one full
  pass, smaller ones restart with a fresh shuffle. Round robin: every task gets :math:`\max_t k_t` batches.
* ``"min_size"``: :math:`N = \min_t \lfloor k_t / p_t \rfloor`, no task gets more than one pass.
  Round robin: every task gets :math:`\min_t k_t` batches.
* an int: that many batches.
* ``"all"``: one pass over every task, every sample exactly once: task :math:`t` gives
  :math:`\lceil n_t / B \rceil` batches, the last one short (:math:`m = n_t \bmod B` samples), or
  :math:`\lfloor n_t / B \rfloor` full ones with ``drop_last``. Under several ranks a short step is padded
  to a multiple of :math:`R` with the first samples of the same pass (at most :math:`R - 1` repeats), so
  each rank gets :math:`\lceil m / R \rceil` of them.

With one task per batch, task :math:`t` gets :math:`c_t` = :math:`N p_t` batches rounded by largest
remainders (exact counts in a stratified order, see :mod:`~hydranet.data.schedule`); under ``"all"``
:math:`c_t` is fixed by the data and the schedule only orders the batches. With mixed batches every task
is in every batch: :math:`N = \max_t k_t`, :math:`\min_t k_t` or the int (``"all"`` is not possible:
the tasks would run out at different steps). The joint pool has nothing to cycle against:
``"max_size_cycle"``, ``"min_size"`` and ``"all"`` all mean one pass, short last batch included.

**Distributed**: each step draws :math:`B` indices of the step's task (the task sequence depends only on
``(seed, epoch)``) and rank :math:`r` takes the :math:`r`-th slice of ``batch_size``: disjoint samples,
the same task at the same step, the same number of batches on every rank.

Everything random comes from ``(seed, epoch)``; ``state_dict()`` / ``load_state_dict()`` resume
mid-epoch with exactly the batches an uninterrupted run would give.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from hydranet._checks import check_bool, check_int, did_you_mean
from hydranet.data.balance import ClassBalance, WeightedDraw, class_strata
from hydranet.data.schedule import Schedule, apportion, epoch_batches, make_schedule

__all__ = ["LENGTHS", "EpochPlan", "SmallTaskWarning", "TaskBatchSampler"]

#: Epoch lengths accepted by ``TaskBatchSampler(length=...)`` besides an int (batches per epoch).
LENGTHS: tuple[str, ...] = ("max_size_cycle", "min_size", "all")

# Pools smaller than this are shuffled many passes at a time (row-wise); larger ones a pass at a time.
_SMALL_POOL = 4096


class SmallTaskWarning(UserWarning):
    """A task (or the joint pool) has fewer samples than one step takes, so its batches repeat samples."""


@dataclass
class EpochPlan:
    """All batches of one epoch for one rank, as compact arrays.

    Step ``s`` is row ``occurrence[s]`` of ``rows[task[s]]`` (``[batches, batch_size]`` global indices of
    task ``task[s]``), or that task's short last batch ``tails[task[s]]`` when the row is past the full
    ones. Mixed batches: ``task`` is ``None`` and ``rows[0]`` holds every batch.
    """

    task: np.ndarray | None
    occurrence: np.ndarray | None
    rows: list[np.ndarray]
    tails: list[np.ndarray | None]

    def __len__(self) -> int:
        return len(self.rows[0]) if self.task is None else len(self.task)

    def batch(self, step: int) -> list[int]:
        """The global indices of batch ``step``, as python ints."""
        if self.task is None:
            return self.rows[0][step].tolist()
        assert self.occurrence is not None  # set together with task
        t, j = int(self.task[step]), int(self.occurrence[step])
        rows = self.rows[t]
        if j < len(rows):
            return rows[j].tolist()
        tail = self.tails[t]
        assert tail is not None  # the plan counts a tail batch only where there is one
        return tail.tolist()


class TaskBatchSampler(Sampler[list[int]]):
    """Yields lists of global dataset indices: one task per batch, mixed quotas, or a joint pool.

    Args:
        dataset: anything with ``task_names``, ``task_indices(task)``, ``labels(task)`` (for
            ``balance``), ``tasks`` (``{name: Task}`` or ``None``), ``is_shared`` and ``len()``, such
            as :class:`~hydranet.data.MultiTaskDataset`.
        batch_size: samples per batch and per rank.
        schedule: task of each step: ``"round_robin"``, ``"proportional"``, ``"temperature"``, weights
            ``{"a": 1, "b": 3}`` (see :mod:`~hydranet.data.schedule`), or ``"joint"`` (one pool of all
            labelled samples). ``None``: ``"joint"`` for a shared dataset, ``"round_robin"`` otherwise.
        quotas: ``{task: samples per batch}`` summing to ``batch_size``: mixed batches (no schedule).
        balance: class balancing inside tasks: a method (``"inverse"``, ``"sqrt"``, ``"effective"``,
            ``"repeat_factor"``) or :class:`~hydranet.data.balance.ClassBalance` for every task, or a
            mapping ``{task: method | ClassBalance | per-sample weights [n_t]}`` for some tasks.
            Balanced tasks are drawn with replacement.
        length: ``"max_size_cycle"``, ``"min_size"``, ``"all"`` or an int (batches per epoch).
        seed: seed of every random draw; with the epoch it fixes all batches.
        drop_last: a pass over a task is :math:`\\lfloor n_t / B \\rfloor` full steps, the rest of its
            shuffle skipped, instead of :math:`\\lceil n_t / B \\rceil` steps whose last one is padded (or
            short under ``"all"`` and for the joint pool).
        num_replicas: number of ranks; default the ``torch.distributed`` world size when initialised, else 1.
        rank: this rank; default the ``torch.distributed`` rank when initialised, else 0.
        temperature: :math:`\\tau` of ``schedule="temperature"``.
        size_cap: size cap of ``schedule="temperature"``.
        replacement: draw every task's samples uniformly with replacement (i.i.d. batches).

    ``drop_last`` and ``replacement`` must be real bools (``"false"`` is refused, as torch's
    ``BatchSampler`` does). A task with fewer samples than a step (``batch_size`` times the ranks, or its
    quota) drawn without replacement gives batches that hold each of its samples several times: a
    :class:`SmallTaskWarning` names it, its size and the batch size (``replacement=True`` says it is meant
    and silences it; with ``drop_last=True`` it is an error, with ``length="all"`` a short batch).

    Raises:
        ValueError: with what is wrong and how to fix it, for any inconsistent setting.
        TypeError: ``drop_last`` or ``replacement`` not a bool.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        schedule: str | Mapping[str, float] | Schedule | None = None,
        quotas: Mapping[str, int] | None = None,
        balance: str | ClassBalance | Mapping[str, Any] | None = None,
        length: str | int = "max_size_cycle",
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        temperature: float = 2.0,
        size_cap: int | None = None,
        replacement: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1, hint="e.g. batch_size=32")
        self.seed = check_int("seed", seed, 0, hint="any integer >= 0")
        # Strict bools, as torch's BatchSampler: drop_last="false" would otherwise read as True.
        self.drop_last = check_bool("drop_last", drop_last)
        self.replacement = check_bool("replacement", replacement)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.length = _check_length(length)
        self.task_names: list[str] = list(dataset.task_names)
        if not self.task_names:
            raise ValueError("The dataset has no tasks: a TaskBatchSampler needs at least one.")
        index_dtype = np.int32 if len(dataset) < 2**31 else np.int64
        pools = [_pool(dataset, t, index_dtype) for t in self.task_names]

        # What is scheduled: one pool per task (one task per batch, or quotas), or the joint pool.
        if quotas is not None and schedule is not None:
            raise ValueError(
                "quotas= and schedule= are exclusive: quotas give every batch a fixed share of each task, "
                "a schedule picks one task per batch. Pass one of them."
            )
        self._schedule: Schedule | None = None
        if quotas is not None:
            self.mode = "quotas"
            self._widths = _check_quotas(quotas, self.task_names, self.batch_size)
        elif schedule == "joint" or (schedule is None and bool(getattr(dataset, "is_shared", False))):
            self.mode = "joint"
            self._widths = [self.batch_size]
            pools = [np.unique(np.concatenate(pools))]
        else:
            self.mode = "tasks"
            self._widths = [self.batch_size] * len(pools)
            spec = "round_robin" if schedule is None else schedule
            self._schedule = make_schedule(spec, temperature=temperature, size_cap=size_cap)
        self._pools = pools
        names = ["joint pool"] if self.mode == "joint" else self.task_names
        self._one_pass = self.length == "all" or (
            self.mode == "joint" and isinstance(self.length, str) and not self.replacement
        )

        specs = _check_balance(balance, self.task_names)
        self._check_combination(bool(specs))
        info = getattr(dataset, "tasks", None) or {}
        self._draws: list[WeightedDraw | None] = [
            _balanced_draw(dataset, name, pool, specs[name], info.get(name)) if name in specs
            else WeightedDraw.uniform(pool) if self.replacement
            else None
            for name, pool in zip(names, pools)
        ]

        # A step takes `unit` samples of a pool over all ranks; a pass over the pool is `k` steps.
        self._units = [self.num_replicas * w for w in self._widths]
        self._pass_batches = [
            self._steps_per_pass(name, len(pool), unit, draw is None)
            for name, pool, unit, draw in zip(names, pools, self._units, self._draws)
        ]
        self._warn_small(names, pools)
        self._count_batches(names, pools)
        self._epoch = 0
        self._position = 0

    def _count_batches(self, names: list[str], pools: list[np.ndarray]) -> None:
        """The schedule's shares and the batches of each pool in an epoch (``_counts``, ``_n_batches``)."""
        if self._schedule is not None:
            self._probabilities = self._schedule.probabilities(dict(zip(names, map(len, pools))))
        else:
            self._probabilities = np.ones(len(pools))
        if self._one_pass or (self.mode == "joint" and isinstance(self.length, str)):
            self._counts = np.asarray(self._pass_batches, dtype=np.int64)  # one pass (or as many draws)
        elif self.mode == "quotas":
            n = epoch_batches(self.length, self._probabilities, self._pass_batches)
            self._counts = np.full(len(pools), n, dtype=np.int64)
        else:
            n = epoch_batches(self.length, self._probabilities, self._pass_batches)
            self._counts = apportion(n, self._probabilities)
        self._n_batches = int(self._counts[0] if self.mode == "quotas" else self._counts.sum())

    def _check_combination(self, balanced: bool) -> None:
        if balanced and self.mode == "joint":
            raise ValueError(
                "balance= balances classes inside each task's pool, and the joint schedule has a single pool "
                "for all tasks. Use schedule='round_robin' (or another per-task schedule) or quotas= to balance."
            )
        if self.length == "all" and (balanced or self.replacement):
            raise ValueError(
                "length='all' visits every sample exactly once, which draws with replacement (balance= or "
                "replacement=True) cannot do. Use length='max_size_cycle' or an int number of batches."
            )
        if self.length == "all" and self.mode == "quotas":
            raise ValueError(
                "length='all' cannot be combined with quotas: every batch takes a fixed number of samples of "
                "each task, so tasks run out at different times. Use 'max_size_cycle', 'min_size' or an int."
            )

    def _warn_small(self, names: list[str], pools: list[np.ndarray]) -> None:
        """Warn where a pool drawn without replacement is smaller than a step: its passes are padded with
        the same samples again, so each batch holds every sample several times. (With ``drop_last`` that
        is an error in :meth:`_steps_per_pass`; one pass, ``length="all"``, gives a short batch instead.)"""
        if self._one_pass or self.drop_last:
            return
        small = [
            (name, len(pool), unit)
            for name, pool, unit, draw in zip(names, pools, self._units, self._draws)
            if draw is None and len(pool) < unit
        ]
        if not small:
            return
        what = "quota" if self.mode == "quotas" else "batch"
        lines = "; ".join(
            f"{'the joint pool' if self.mode == 'joint' else f'task {name!r}'} has {n} samples for a {what} of "
            f"{unit} ({unit // self.num_replicas} x {self.num_replicas} rank(s)), so each of its batches holds "
            f"every sample about {unit / n:.3g} times"
            for name, n, unit in small
        )
        warnings.warn(
            f"TaskBatchSampler: {lines}. Lower batch_size (or the quota) to at most the task's size, or pass "
            "replacement=True to draw batches with replacement on purpose (no warning then).",
            SmallTaskWarning,
            stacklevel=3,
        )

    def _steps_per_pass(self, name: str, n: int, unit: int, without_replacement: bool) -> int:
        """:math:`k`: ``floor(n / unit)`` with drop_last (without replacement), else ``ceil(n / unit)``."""
        if not (without_replacement and self.drop_last):
            return -(-n // unit)
        if n < unit:
            who = "The joint pool" if self.mode == "joint" else f"Task {name!r}"
            what = "a batch" if self.mode != "quotas" else f"its quota of {unit // self.num_replicas}"
            raise ValueError(
                f"{who} has {n} samples, fewer than {what} over {self.num_replicas} rank(s) ({unit}), so "
                "drop_last=True would never give it a batch. Lower the batch size or quota, set drop_last=False, "
                "or draw with replacement (replacement=True or balance=)."
            )
        return n // unit

    # ------------------------------------------------------------------ public state

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank and every epoch)."""
        return self._n_batches

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Batches of the current epoch already yielded."""
        return self._position

    @property
    def batches_per_task(self) -> dict[str, int]:
        """Batches of each task per epoch (one task per batch); every task is in every batch otherwise."""
        if self.mode != "tasks":
            return {}
        return {t: int(c) for t, c in zip(self.task_names, self._counts)}

    @property
    def probabilities(self) -> dict[str, float]:
        """The schedule's share :math:`p_t` of each task (one task per batch)."""
        if self.mode != "tasks":
            return {}
        return {t: float(p) for t, p in zip(self.task_names, self._probabilities)}

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch at the next ``iter()``."""
        check_int("epoch", epoch, 0, hint="an epoch number >= 0")
        self._epoch = int(epoch)
        self._position = 0

    def state_dict(self, position: int | None = None) -> dict[str, int]:
        """``{"seed", "epoch", "position"}``.

        Args:
            position: batches of the current epoch the caller has consumed. A ``DataLoader`` with
                workers runs ahead of the training loop (prefetching), so a trainer passes its own count
                here; default: the batches this sampler has yielded so far.
        """
        if position is None:
            position = self._position
        elif not (isinstance(position, (int, np.integer)) and 0 <= position <= self._n_batches):
            raise ValueError(f"position must be an int in [0, {self._n_batches}], got {position!r}.")
        return {"seed": self.seed, "epoch": self._epoch, "position": int(position)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume: the next ``iter()`` continues epoch ``state["epoch"]`` after ``state["position"]`` batches."""
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"Sampler state lacks {sorted(missing)}; pass what state_dict() returned.")
        check_int("seed", state["seed"], 0, hint="the seed saved by state_dict()")
        check_int("epoch", state["epoch"], 0, hint="the epoch saved by state_dict()")
        position = state["position"]
        if not (isinstance(position, (int, np.integer)) and 0 <= position <= self._n_batches):
            raise ValueError(
                f"Saved position {position!r} is outside [0, {self._n_batches}]: the state comes from a sampler "
                "with another epoch length (dataset, batch size, length or replicas differ)."
            )
        self.seed, self._epoch, self._position = int(state["seed"]), int(state["epoch"]), int(position)

    def __iter__(self) -> Iterator[list[int]]:
        """The batches of the current epoch from the current position; once an epoch has been yielded in
        full, the next ``iter()`` moves on to the next epoch (unless ``set_epoch`` says otherwise)."""
        if self._position >= self._n_batches:
            self._epoch += 1
            self._position = 0
        plan = self.epoch_plan(self._epoch)
        for step in range(self._position, self._n_batches):
            self._position = step + 1
            yield plan.batch(step)

    # ------------------------------------------------------------------ the epoch plan

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """All batches of ``epoch`` for this rank, as compact arrays (vectorised; a few bytes per index)."""
        seeds = np.random.SeedSequence([self.seed, epoch]).spawn(len(self._pools) + 1)
        order_rng = np.random.default_rng(seeds[0])
        rngs = [np.random.default_rng(s) for s in seeds[1:]]
        if self.mode == "quotas":
            blocks = [self._rows(t, int(self._counts[t]), rngs[t]) for t in range(len(self._pools))]
            return EpochPlan(None, None, [np.concatenate(blocks, axis=1)], [None])
        if self._one_pass:
            rows, tails = zip(*(self._one_pass_rows(t, rngs[t]) for t in range(len(self._pools))))
        else:
            rows = tuple(self._rows(t, int(c), rngs[t]) for t, c in enumerate(self._counts))
            tails = (None,) * len(rows)
        if self.mode == "joint":
            task = np.zeros(self._n_batches, dtype=np.int32)
            occurrence = np.arange(self._n_batches, dtype=np.int32)
        else:
            assert self._schedule is not None
            task, occurrence = self._schedule.sequence(self._counts, self._probabilities, order_rng)
        return EpochPlan(task, occurrence, list(rows), list(tails))

    def _rows(self, t: int, n_rows: int, rng: np.random.Generator) -> np.ndarray:
        """``[n_rows, width]``: this rank's slice of ``n_rows`` full steps of pool ``t``."""
        pool, draw, width = self._pools[t], self._draws[t], self._widths[t]
        total = n_rows * self._units[t]
        if draw is not None:
            stream = draw.draw(rng, total)
        else:
            stream = _passes(pool, int(self._pass_batches[t]) * self._units[t], total, rng)
        return _rank_slice(stream.reshape(n_rows, self.num_replicas, width), self.rank)

    def _one_pass_rows(self, t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """One shuffled pass over pool ``t``: full steps, and this rank's share of the short last step."""
        pool, width, unit = self._pools[t], self._widths[t], self._units[t]
        perm = rng.permuted(pool)
        n_full = len(perm) // unit
        rows = _rank_slice(perm[: n_full * unit].reshape(n_full, self.num_replicas, width), self.rank)
        short = len(perm) - n_full * unit
        if short == 0 or self.drop_last:
            return rows, None
        # Pad the short step to a multiple of the ranks with the first samples of this pass.
        share = math.ceil(short / self.num_replicas)
        first = n_full * unit + self.rank * share
        return rows, perm[(first + np.arange(share)) % len(perm)]

    def __repr__(self) -> str:
        return (
            f"TaskBatchSampler(mode={self.mode!r}, batch_size={self.batch_size}, length={self.length!r}, "
            f"batches={self._n_batches}, seed={self.seed}, epoch={self._epoch}, "
            f"rank={self.rank}/{self.num_replicas})"
        )


def _passes(pool: np.ndarray, per_pass: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """The first ``total`` values of consecutive passes over ``pool``.

    A pass is a fresh shuffle cut to ``per_pass`` values, or extended cyclically to ``per_pass`` with its
    own first values (so no step straddles two shuffles and a step never holds a sample twice while the
    pool is at least a step long).
    """
    n = len(pool)
    if n < _SMALL_POOL:
        # Many passes over a small pool: shuffle every row of a [passes, n] array in one call.
        perms = rng.permuted(np.broadcast_to(pool, (-(-total // per_pass), n)), axis=1)
        return perms[:, np.arange(per_pass) % n].reshape(-1)[:total]
    # A large pool: one 1-d shuffle per pass (several times faster than row-wise). A pass of which only
    # a small part is used draws just that part (an ordered sample without replacement, O(m)).
    out = np.empty(total, dtype=pool.dtype)
    for lo in range(0, total, per_pass):
        m = min(per_pass, total - lo)
        if m <= n // 50:
            out[lo : lo + m] = rng.choice(pool, size=m, replace=False)
        elif m < n:
            out[lo : lo + m] = rng.permuted(pool)[:m]
        else:
            rng.permuted(pool, out=out[lo : lo + n])
            out[lo + n : lo + m] = np.resize(out[lo : lo + n], m - n)  # padding: the pass's first values
    return out


def _rank_slice(steps: np.ndarray, rank: int) -> np.ndarray:
    """``[rows, ranks, width] -> [rows, width]`` of one rank, contiguous (a copy unless single-rank)."""
    return steps[:, 0, :] if steps.shape[1] == 1 else np.ascontiguousarray(steps[:, rank, :])


def _check_length(length: Any) -> str | int:
    if isinstance(length, str):
        if length not in LENGTHS:
            raise ValueError(
                f"Unknown length {length!r};{did_you_mean(length, LENGTHS)} choose one of {', '.join(LENGTHS)} or an "
                "int number of batches per epoch."
            )
        return length
    return check_int("length", length, 1, hint=f"a number of batches per epoch, or one of {', '.join(LENGTHS)}")


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    check_int("num_replicas", num_replicas, 1, hint="the number of processes")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
        raise ValueError(
            f"rank must be an integer in [0, {num_replicas}) for num_replicas={num_replicas}, got {rank!r}."
        )
    return int(num_replicas), int(rank)


def _pool(dataset: Any, task: str, dtype: type) -> np.ndarray:
    """The task's global indices, checked, in the sampler's index dtype."""
    idx = np.asarray(dataset.task_indices(task))
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"task_indices({task!r}) must be a 1-d integer array, got {idx.dtype} of shape {idx.shape}.")
    if idx.size == 0:
        raise ValueError(
            f"Task {task!r} has no labelled samples, so no batch can be drawn for it. Label some samples "
            "or remove the task from the dataset."
        )
    n = len(dataset)
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"task_indices({task!r}) holds indices outside [0, {n}): the dataset's index is inconsistent.")
    return idx.astype(dtype, copy=False)


def _check_quotas(quotas: Mapping[str, int], tasks: list[str], batch_size: int) -> list[int]:
    if not isinstance(quotas, Mapping):
        raise TypeError(f"quotas must be a mapping {{task: samples per batch}}, got {type(quotas).__name__}.")
    unknown = sorted(set(quotas) - set(tasks))
    if unknown:
        raise ValueError(f"quotas name unknown task(s) {unknown}; the dataset's tasks are {tasks}.")
    missing = [t for t in tasks if t not in quotas]
    if missing:
        raise ValueError(
            f"quotas must give every task a share; missing {missing}. Add them, or leave the task out of the dataset."
        )
    bad = {t: q for t, q in quotas.items() if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q < 1}
    if bad:
        raise ValueError(f"quotas must be positive integers (samples per batch), got {bad}.")
    total = sum(int(q) for q in quotas.values())
    if total != batch_size:
        raise ValueError(
            f"quotas {dict(quotas)} sum to {total} but batch_size is {batch_size}: every batch holds exactly the "
            f"quotas. Make them sum to {batch_size}, or pass batch_size={total}."
        )
    return [int(quotas[t]) for t in tasks]


def _check_balance(balance: Any, tasks: list[str]) -> dict[str, Any]:
    """``{task: ClassBalance | weights array}`` for the balanced tasks."""
    if balance is None:
        return {}
    if isinstance(balance, (str, ClassBalance)):
        spec = ClassBalance.parse(balance)
        return {t: spec for t in tasks}
    if not isinstance(balance, Mapping):
        raise TypeError(
            "balance must be a method name, a ClassBalance, or a mapping {task: method}, "
            f"got {type(balance).__name__}."
        )
    unknown = sorted(set(balance) - set(tasks))
    if unknown:
        raise ValueError(f"balance names unknown task(s) {unknown}; the dataset's tasks are {tasks}.")
    return {t: (v if isinstance(v, np.ndarray) else ClassBalance.parse(v)) for t, v in balance.items()}


def _balanced_draw(dataset: Any, task: str, pool: np.ndarray, spec: Any, info: Any) -> WeightedDraw:
    if isinstance(spec, np.ndarray):
        if spec.shape != (len(pool),):
            raise ValueError(
                f"balance[{task!r}]: per-sample weights must have shape ({len(pool)},), one per index of "
                f"task_indices({task!r}); got {spec.shape}."
            )
        return WeightedDraw.from_weights(spec, pool)
    kind = getattr(info, "kind", None)
    num_classes = info.n_classes if kind in ("binary", "multiclass", "multilabel") else None
    labels = dataset.labels(task)
    if len(labels) != len(pool):
        raise ValueError(f"labels({task!r}) has {len(labels)} rows but task_indices({task!r}) has {len(pool)}.")
    strata, weights = class_strata(labels, spec, num_classes=num_classes, kind=kind, task=task)
    return WeightedDraw(strata, weights, pool)
