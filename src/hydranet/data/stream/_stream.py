r"""MultiTaskStream: multi-task batches from iterable sources larger than memory.

The vocabulary is :class:`~hydranet.data.TaskBatchSampler`'s, over one iterable source per task:

* **one task per batch** (a schedule: ``round_robin``, ``proportional``, ``temperature``, weights
  ``{"a": 1, "b": 3}``; the last three with shares :math:`p_t`), or **quotas** per batch
  (``{"a": 2, "b": 6}``: every batch holds exactly :math:`q_t` samples of task :math:`t`);
* the task of a batch depends only on ``(seed, epoch)``, the DataLoader worker :math:`w` of :math:`W` that
  makes it and its number :math:`j` among that worker's batches (rank step :math:`s = jW + w`), never on
  the rank: every rank trains the same task at the same step. Each worker follows the schedule on its own,
  so that it needs its sources in the schedule's shares (it reads only its own share of them, see below):
  round robin is :math:`s \bmod T` when :math:`\gcd(T, W) = 1` and :math:`(j + w) \bmod T` otherwise;
  weighted schedules lay out blocks of 4096 batches per worker with exactly :math:`4096 p_t` of task
  :math:`t` (largest remainders) in a stratified random order (:func:`~hydranet.data.schedule.interleave`),
  so over any :math:`L` batches a worker has :math:`L p_t` of task :math:`t` up to :math:`\pm T`, tighter
  than independent draws.

**Stopping** (one epoch of the stream):

* ``"first_exhausted"``: the epoch ends at the first batch a source cannot fill (that batch is dropped);
* ``"all_exhausted"``: an exhausted source restarts (a new pass, counted in :attr:`Pipe.passes`) and the
  epoch ends after the batch in which the last source finished its first pass;
* an int :math:`N`: exactly :math:`N` batches per rank, sources restarting as they run out.

**Ranks and workers.** Consumer :math:`g = r W + w` of :math:`G = R W` (rank :math:`r` of :math:`R`,
DataLoader worker :math:`w` of :math:`W`) reads a disjoint share of every source (by shard, see
:mod:`~hydranet.data.stream._sources`) and makes the rank steps :math:`s \equiv w \pmod W`, the ones the
DataLoader takes from worker :math:`w`. Ranks read different amounts of data, so a stop observed on the
data would end epochs at different steps and hang the collectives; instead, with several ranks the number
of steps is fixed before reading: an int ``stop``, or **declared sizes** ``sizes={task: n_t}`` (samples over
all shards). With a share :math:`p_t` (1 with quotas) and a width :math:`b_t` (``batch_size``, or :math:`q_t`),
one pass over task :math:`t` lasts :math:`k_t / p_t` rank steps, :math:`k_t = n_t / (R b_t)`:
``first_exhausted`` is :math:`N = \lfloor \min_t k_t / p_t \rfloor` steps and ``all_exhausted``
:math:`N = \lceil \max_t k_t / p_t \rceil`; a consumer whose shards are shorter than average restarts them,
one whose shards are longer leaves their end unread this epoch (the schedule's :math:`\pm T` per
worker counts as shorter by up to a batch of each task: quotas or round robin over sources whose shards are
equal are exact). Declared sizes fix :math:`N` in one
process too (the same epochs at any scale); without them one process observes the stop on the data.

**Resume.** ``state_dict()`` in a consumer (what torchdata's ``StatefulDataLoader`` calls in each worker)
is exact and cheap: the epoch, the steps made, and every source's position, shuffle-buffer positions, class
counts and generator states. ``state_dict(position=k)`` is the rank-level form a training loop can save
with any DataLoader (``k`` batches consumed): a resume regenerates, without collating, the batches before
``k``, so it is exact (with the same ranks and workers) at the cost of re-reading them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from hydranet import runtime
from hydranet._checks import check_int, unknown_name
from hydranet.data.balance import ClassBalance
from hydranet.data._collate import collate
from hydranet.data.schedule import RoundRobin, Schedule, apportion, interleave, make_schedule
from hydranet.data.stream._pipe import Pipe
from hydranet.data.stream._sources import Source, as_source

__all__ = ["STOPS", "MultiTaskStream"]

#: Stopping strategies of ``MultiTaskStream(stop=...)`` besides an int (batches per epoch and rank).
STOPS: tuple[str, ...] = ("first_exhausted", "all_exhausted")

# Steps laid out at a time by a weighted schedule: exact shares inside each block.
_BLOCK = 4096
_STATE_VERSION = 1


class MultiTaskStream(IterableDataset):
    """An ``IterableDataset`` of collated multi-task batches mixed from one iterable source per task.

    Use it with ``DataLoader(stream, batch_size=None, num_workers=...)`` or torchdata's ``StatefulDataLoader``.

    Args:
        sources: ``{task: source}``: a list or any re-iterable, a function returning an iterator (e.g. a
            generator function), a list of shard files (``.tar`` WebDataset-style, ``.jsonl``, ``.npy``),
            :class:`~hydranet.data.stream.Shards` / :class:`~hydranet.data.stream.TarShards`, or a Hugging Face
            ``datasets.IterableDataset``. A sample is ``(input, target)``, ``(input, {task: target})``, or
            anything ``transform`` maps to one of these.
        batch_size: samples per batch and per rank.
        schedule: one task per batch: ``"round_robin"`` (default), ``"proportional"``, ``"temperature"``
            (both need ``sizes``), weights ``{"a": 1, "b": 3}`` or a :class:`~hydranet.data.schedule.Schedule`.
        quotas: ``{task: samples per batch}`` summing to ``batch_size``: mixed batches (no schedule).
        sizes: declared samples per task over all shards: fix the epoch length (see the module docstring).
        stop: ``"first_exhausted"``, ``"all_exhausted"`` (default) or an int number of batches per epoch.
        shuffle: shuffle-buffer capacity per source and consumer (0: keep the sources' order; shard order
            is shuffled too when > 1).
        balance: class balancing by rejection: a method (``"inverse"``, ``"sqrt"``, ``"effective"``,
            ``"repeat_factor"``) or ClassBalance for every task, or ``{task: method}``.
        labels: the class of a raw sample for ``balance``: a field name, a function, or ``{task: ...}``;
            default the task's target (after ``transform``).
        transform: raw sample -> ``(input, target)`` (e.g. :class:`~hydranet.data.stream.Fields`), or
            ``{task: function}``. Must be picklable with worker processes that spawn.
        seed: with the epoch, rank and worker it fixes every batch.
        rank, world_size: this rank and the number of ranks; default :func:`hydranet.runtime.rank` and
            :func:`hydranet.runtime.world_size` when iterated.
        temperature, size_cap: of ``schedule="temperature"``.
        collate_fn: samples -> batch; default :func:`hydranet.data.collate` (a :class:`~hydranet.data.Batch`).
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        batch_size: int,
        schedule: str | Mapping[str, float] | Schedule | None = None,
        quotas: Mapping[str, int] | None = None,
        sizes: Mapping[str, int] | None = None,
        stop: str | int = "all_exhausted",
        shuffle: int = 0,
        balance: str | ClassBalance | Mapping[str, Any] | None = None,
        labels: str | Callable[[Any], Any] | Mapping[str, Any] | None = None,
        transform: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        temperature: float = 2.0,
        size_cap: int | None = None,
        collate_fn: Callable[[list[Any]], Any] = collate,
    ) -> None:
        super().__init__()
        if not isinstance(sources, Mapping) or not sources:
            raise TypeError("sources must be a non-empty mapping {task: source}, e.g. {'digits': shards_a, 'fashion': shards_b}.")
        self.task_names = [str(t) for t in sources]
        self._sources: list[Source] = [as_source(s) for s in sources.values()]
        self.batch_size = check_int("batch_size", batch_size, 1, hint="e.g. batch_size=32")
        self.seed = check_int("seed", seed, 0, hint="any integer >= 0")
        self.shuffle = check_int("shuffle", shuffle, 0, hint="a buffer capacity in samples, e.g. 1000; 0 for none")
        self.stop = _check_stop(stop)
        self.sizes = None if sizes is None else _per_task("sizes", sizes, self.task_names, all_tasks=True)
        if self.sizes is not None:
            for t, n in self.sizes.items():
                check_int(f"sizes[{t!r}]", n, 1, hint="the number of samples of the task over all shards")
        if world_size is not None:
            check_int("world_size", world_size, 1, hint="the number of processes")
        if rank is not None:
            check_int("rank", rank, 0, (world_size or runtime.world_size()) - 1, hint="this process's rank")
        self._rank, self._world = rank, world_size

        if quotas is not None and schedule is not None:
            raise ValueError(
                "quotas= and schedule= are exclusive: quotas give every batch a fixed share of each task, a schedule "
                "picks one task per batch. Pass one of them."
            )
        self.quotas = None if quotas is None else _check_quotas(quotas, self.task_names, self.batch_size)
        self.schedule: Schedule | None = None
        if self.quotas is None:
            self.schedule = make_schedule("round_robin" if schedule is None else schedule, temperature=temperature,
                                          size_cap=size_cap)
            if self.schedule.name in ("proportional", "temperature") and self.sizes is None:
                raise ValueError(
                    f"schedule={self.schedule.name!r} weighs tasks by their sizes, which a stream cannot know in "
                    "advance: declare sizes={task: samples}, or give weights such as {'a': 1, 'b': 3}."
                )
            ref = self.sizes or {t: 1 for t in self.task_names}
            self._p = np.asarray(self.schedule.probabilities(ref), dtype=np.float64)
        else:
            self._p = np.ones(len(self.task_names))

        specs = _check_balance(balance, self.task_names)
        self._balance = [specs.get(t) for t in self.task_names]
        label_specs = {} if labels is None else _per_task("labels", labels, self.task_names)
        for t, spec in label_specs.items():
            if not (callable(spec) or isinstance(spec, str)):
                raise TypeError(f"labels[{t!r}] must be a field name or a function of the raw sample, got {spec!r}.")
        self._labels = [_label_reader(label_specs.get(t)) for t in self.task_names]
        transforms = {} if transform is None else _per_task("transform", transform, self.task_names)
        for t, fn in transforms.items():
            if not callable(fn):
                raise TypeError(f"transform[{t!r}] must be a function raw sample -> (input, target), got {fn!r}.")
        self._transforms = [transforms.get(t) for t in self.task_names]
        self.collate_fn = collate_fn

        self._epoch = 0
        self._finished = False
        self._pending: dict[str, Any] | None = None
        self._run: _Run | None = None
        if self._world is not None and self._world > 1:
            self.steps_per_epoch  # noqa: B018 (raises now, not in a worker, when the length cannot be agreed)

    # ------------------------------------------------------------------ where this process stands

    @property
    def rank(self) -> int:
        return runtime.rank() if self._rank is None else self._rank

    @property
    def world_size(self) -> int:
        return runtime.world_size() if self._world is None else self._world

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def probabilities(self) -> dict[str, float]:
        """Share :math:`p_t` of the batches of each task (one task per batch); empty with quotas."""
        return {} if self.quotas is not None else dict(zip(self.task_names, map(float, self._p)))

    @property
    def steps_per_epoch(self) -> int | None:
        """Batches per epoch on every rank, or ``None`` when the stop is observed on the data (one rank,
        no declared sizes). See the module docstring for the formula."""
        if isinstance(self.stop, int):
            return self.stop
        if self.sizes is None:
            if self.world_size > 1:
                raise ValueError(
                    f"Under {self.world_size} ranks every rank must make the same number of steps, and stop="
                    f"{self.stop!r} observed on each rank's own data would differ (and hang). Declare sizes="
                    "{task: samples over all shards} or pass stop=<batches per epoch>."
                )
            return None
        widths = self.quotas or {t: self.batch_size for t in self.task_names}
        steps = [self.sizes[t] / (self.world_size * widths[t]) / p for t, p in zip(self.task_names, self._p)]
        n = math.floor(min(steps) + 1e-9) if self.stop == "first_exhausted" else math.ceil(max(steps) - 1e-9)
        if n < 1:
            raise ValueError(
                f"stop='first_exhausted' with sizes {self.sizes} over {self.world_size} rank(s) leaves no full batch "
                "for the smallest task. Lower the batch size, or use stop='all_exhausted' or an int."
            )
        return n

    def __len__(self) -> int:
        """Batches per epoch and rank (what ``len(DataLoader(stream, batch_size=None))`` gives)."""
        n = self.steps_per_epoch
        if n is None:
            raise TypeError(
                "This stream's length is observed on the data (no declared sizes= and a data stop); declare sizes= "
                "or pass stop=<batches per epoch> to give it a length."
            )
        return n

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` at the next ``iter()`` (call it before each epoch: worker copies do not
        report back that an epoch ended)."""
        self._epoch = check_int("epoch", epoch, 0, hint="an epoch number >= 0")
        self._finished = False
        self._pending = None

    # ------------------------------------------------------------------ iteration

    def _where(self) -> tuple[int, int, int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        world, rank = self.world_size, self.rank
        return rank * workers + worker, world * workers, worker, workers

    def __iter__(self) -> Iterator[Any]:
        consumer, consumers, worker, workers = self._where()
        pending, self._pending = self._pending, None
        skip = 0
        if pending is not None and "sources" in pending:
            if (pending["consumer"], pending["consumers"]) != (consumer, consumers):
                raise ValueError(
                    f"This state was saved by consumer {pending['consumer']} of {pending['consumers']} (ranks x "
                    f"workers) and is loaded into consumer {consumer} of {consumers}. Resume with the same ranks and "
                    "workers."
                )
            self._epoch = int(pending["epoch"])
            run = self._new_run(consumer, consumers, worker, workers)
            run.load(pending)
        else:
            if pending is not None:
                self._epoch = int(pending["epoch"])
                position = int(pending["position"])
                # The DataLoader asks worker 0 first, so worker 0 plays the worker that made step `position`.
                worker = (worker + position) % workers
                consumer = self.rank * workers + worker
                skip = len(range(worker, position, workers))  # this role's steps among the first `position`
            elif self._finished:
                self._epoch += 1
            self._finished = False
            run = self._new_run(consumer, consumers, worker, workers)
        self._run = run
        return self._generate(run, skip)

    def _new_run(self, consumer: int, consumers: int, worker: int, workers: int) -> _Run:
        where = (consumer, consumers, self.rank, self.world_size)
        pipes = [
            Pipe(t, i, src, where, self.seed, self._epoch, self.shuffle, self._transforms[i], self._balance[i],
                 self._labels[i])
            for i, (t, src) in enumerate(zip(self.task_names, self._sources))
        ]
        return _Run(self, pipes, consumer, consumers, worker, workers)

    def _generate(self, run: _Run, skip: int) -> Iterator[Any]:
        n = self.steps_per_epoch
        restart = n is not None or self.stop == "all_exhausted"
        watch_all = n is None and self.stop == "all_exhausted"
        plan = _TaskPlan(self.schedule, self._p, self.seed, self._epoch, run.worker, run.workers)
        while True:
            step = run.worker + run.made * run.workers  # the rank step this batch is
            if n is not None and step >= n:
                break
            if self.quotas is None:
                t = plan.task(run.made)
                samples = run.pipes[t].take(self.batch_size, restart)
            else:
                parts = [p.take(self.quotas[p.task], restart) for p in run.pipes]
                got = [x for x in parts if x is not None]
                samples = None if len(got) < len(parts) else [s for x in got for s in x]
            if samples is None:
                break
            if restart:
                for pipe in run.pipes:  # count a pass when it ends, not at the next draw
                    if pipe.at_end():
                        pipe.end_pass()
            run.made += 1
            last = watch_all and all(p.passes >= 1 for p in run.pipes)
            if skip:
                skip -= 1
            else:
                yield self.collate_fn(samples)
            if last:
                break
        self._finished = True

    # ------------------------------------------------------------------ state

    @property
    def source_epochs(self) -> dict[str, int]:
        """Passes completed over each source in the current epoch, by this process's consumer."""
        if self._run is None:
            return {t: 0 for t in self.task_names}
        return {p.task: p.passes for p in self._run.pipes}

    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """The stream's state.

        Args:
            position: batches of the current epoch the training loop consumed on this rank. Given, the
                rank-level state ``{"seed", "epoch", "position"}`` (any DataLoader; resumed with the same
                ranks and workers by regenerating the skipped batches without collating them). Otherwise, inside the consumer that iterates
                (the main process with ``num_workers=0``, or a worker, as ``StatefulDataLoader`` calls it), the
                exact consumer state; before any iteration, position 0 of the current epoch.
        """
        if position is not None:
            n = self.steps_per_epoch
            check_int("position", position, 0, n, hint="the batches of this epoch already consumed")
            return {"version": _STATE_VERSION, "seed": self.seed, "epoch": self._epoch, "position": int(position)}
        if self._run is None or self._finished:
            epoch = self._epoch + 1 if self._finished else self._epoch
            return {"version": _STATE_VERSION, "seed": self.seed, "epoch": epoch, "position": 0}
        return self._run.state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the next ``iter()`` from what :meth:`state_dict` returned."""
        if not isinstance(state, Mapping) or "epoch" not in state or "seed" not in state:
            raise ValueError("A stream state must be what MultiTaskStream.state_dict() returned (a mapping with 'epoch').")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Stream state version {state.get('version')!r} is not {_STATE_VERSION}; save it again.")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"The state was saved with seed={state['seed']} and this stream has seed={self.seed}.")
        if "sources" in state:
            if list(state["sources"]) != self.task_names:
                raise ValueError(f"The state holds tasks {list(state['sources'])}; this stream's are {self.task_names}.")
        elif "position" not in state:
            raise ValueError("A stream state needs 'position' (rank-level) or 'sources' (consumer state).")
        self._pending = dict(state)
        self._epoch = int(state["epoch"])
        self._finished = False

    def __repr__(self) -> str:
        mix = f"quotas={self.quotas}" if self.quotas is not None else f"schedule={self.schedule!r}"
        return (
            f"MultiTaskStream(tasks={self.task_names}, batch_size={self.batch_size}, {mix}, stop={self.stop!r}, "
            f"shuffle={self.shuffle}, seed={self.seed}, epoch={self._epoch})"
        )


class _Run:
    """One consumer's iteration of one epoch: its pipes and the batches it made."""

    def __init__(self, stream: MultiTaskStream, pipes: list[Pipe], consumer: int, consumers: int, worker: int,
                 workers: int) -> None:
        self.stream, self.pipes = stream, pipes
        self.consumer, self.consumers, self.worker, self.workers = consumer, consumers, worker, workers
        self.made = 0

    def state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "seed": self.stream.seed,
            "epoch": self.stream.epoch,
            "consumer": self.consumer,
            "consumers": self.consumers,
            "made": self.made,
            "sources": {p.task: p.state() for p in self.pipes},
        }

    def load(self, state: Mapping[str, Any]) -> None:
        self.made = int(state["made"])
        for pipe in self.pipes:
            pipe.load(state["sources"][pipe.task])


class _TaskPlan:
    """The task of each batch of a worker (see the module docstring), a block of batches at a time."""

    def __init__(self, schedule: Schedule | None, p: np.ndarray, seed: int, epoch: int, worker: int,
                 workers: int) -> None:
        self.schedule, self.p, self.seed, self.epoch = schedule, p, seed, epoch
        self.worker, self.workers = worker, workers
        self._block, self._tasks = -1, np.zeros(0, dtype=np.int32)

    def task(self, j: int) -> int:
        """The task of this worker's ``j``-th batch (rank step ``j * workers + worker``)."""
        n = len(self.p)
        if isinstance(self.schedule, RoundRobin):
            if math.gcd(n, self.workers) == 1:
                return (j * self.workers + self.worker) % n  # a, b, c, ... at the rank level too
            return (j + self.worker) % n  # every worker still cycles through all tasks
        block = j // _BLOCK
        if block != self._block:
            rng = np.random.default_rng([self.seed, self.epoch, block, self.worker, 3])
            self._tasks = interleave(apportion(_BLOCK, self.p), self.p, rng)[0]
            self._block = block
        return int(self._tasks[j % _BLOCK])


def _check_stop(stop: Any) -> str | int:
    if isinstance(stop, str):
        if stop not in STOPS:
            raise unknown_name("stop", stop, STOPS)
        return stop
    return check_int("stop", stop, 1, hint=f"batches per epoch, or one of {', '.join(STOPS)}")


def _per_task(name: str, value: Any, tasks: list[str], all_tasks: bool = False) -> dict[str, Any]:
    """``{task: value}`` from a mapping naming some (or, with ``all_tasks``, all) tasks, or one value for all."""
    if not isinstance(value, Mapping):
        if all_tasks:
            raise TypeError(f"{name} must be a mapping {{task: value}} for the tasks {tasks}, got {type(value).__name__}.")
        return {t: value for t in tasks}
    unknown = [t for t in value if t not in tasks]
    if unknown:
        raise unknown_name(f"task in {name}", unknown[0], tasks)
    missing = [t for t in tasks if t not in value]
    if all_tasks and missing:
        raise ValueError(f"{name} must name every task; missing {missing}.")
    return dict(value)


def _check_quotas(quotas: Any, tasks: list[str], batch_size: int) -> dict[str, int]:
    spec = _per_task("quotas", quotas, tasks, all_tasks=True)
    out = {t: check_int(f"quotas[{t!r}]", q, 1, hint="samples of the task per batch") for t, q in spec.items()}
    if sum(out.values()) != batch_size:
        raise ValueError(
            f"quotas {out} sum to {sum(out.values())} but batch_size is {batch_size}: every batch holds exactly the "
            f"quotas. Make them sum to {batch_size}, or pass batch_size={sum(out.values())}."
        )
    return {t: out[t] for t in tasks}


def _check_balance(balance: Any, tasks: list[str]) -> dict[str, ClassBalance]:
    if balance is None:
        return {}
    return {t: ClassBalance.parse(v) for t, v in _per_task("balance", balance, tasks).items()}


class _Field:
    """Reads ``sample[key]`` (picklable, unlike a lambda)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, sample: Any) -> Any:
        return sample[self.key]


def _label_reader(spec: Any) -> Callable[[Any], Any] | None:
    return _Field(spec) if isinstance(spec, str) else spec
