r"""The aggregator interface: a task Jacobian :math:`G \in \mathbb{R}^{T\times P}` in, one update :math:`d \in \mathbb{R}^P` out.

Row :math:`i` of :math:`G` is the gradient :math:`g_i` of task :math:`i`'s loss with respect to the shared
parameters (or the shared features). Every aggregator

* checks :math:`G` (2-D, at least one row and one column, floating point, finite);
* optionally divides each row by its norm first (``normalize=True``; zero rows stay zero);
* works on the :math:`T\times T` Gram matrix :math:`K = GG^\top` wherever the method allows: it is
  computed in float64 with one matrix product per column block, the small solves run on the CPU in
  numpy, and only the :math:`T` weights travel back to :math:`G`'s device;
* returns :math:`d` in :math:`G`'s dtype and on its device.

Aggregators that are a *weighting of the rows* (:class:`WeightedAggregator`: :math:`d = w^\top G`)
also expose ``weights(G)``. The arithmetic runs under ``torch.no_grad()``: an update is not
differentiable with respect to :math:`G`.

Stateful methods (EMA targets, tracked gradients, warm starts) keep their state between calls:
``reset()`` forgets it, ``state_dict()`` / ``load_state_dict()`` save and restore it. Each call of
``agg(G)`` or ``agg.weights(G)`` is one step of such a method. Randomised methods draw from a
``torch.Generator`` seeded by ``seed`` (or the one given), so a run is reproducible and resumable.

Methods with *per-task* state (GradVac, Nash-MTL, MoCo, ExcessMTL) keep it for a fixed list of
:math:`T` tasks. When a batch has gradients for only some of them, ``agg(G, present=mask)`` says
which: ``mask`` has :math:`T` booleans, true for the :math:`k` tasks whose gradients are the rows of
:math:`G` (in order). Such a method then takes one step of its update restricted to the present
tasks :math:`S` and leaves the state of the absent tasks as it is (each docstring gives the step);
with every task present the step is exactly the one of ``agg(G)``. Methods without per-task state
ignore the mask. Hooks receive the rows' tasks as a :class:`TaskRows`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Aggregator", "NonFiniteJacobianError", "Present", "Randomized", "TaskRows", "WeightedAggregator", "check_matrix"]

# Column block of the Gram product: 2**23 float64 entries (64 MB) across all rows at a time.
_GRAM_BLOCK = 1 << 23


def _gram(matrix: Tensor) -> np.ndarray:
    """:math:`GG^\\top` as a float64 numpy array, computed on ``matrix``'s device in column blocks."""
    rows, cols = matrix.shape
    step = max(1, _GRAM_BLOCK // rows)
    out = torch.zeros(rows, rows, dtype=torch.float64, device=matrix.device)
    for start in range(0, cols, step):
        block = matrix[:, start : start + step].to(torch.float64)
        out.addmm_(block, block.T)
    result = out.cpu().numpy()
    return (result + result.T) / 2


def _precision(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``: rank decisions on a Gram matrix follow the precision of the gradients."""
    return torch.finfo(dtype).eps


#: A mask of the tasks whose gradients are the rows of a Jacobian (see :meth:`Aggregator.__call__`).
Present = Sequence[bool] | np.ndarray | Tensor


@dataclass(frozen=True)
class TaskRows:
    """Which tasks the rows of a Jacobian are: row ``j`` holds the gradient of task ``index[j]`` of
    ``total`` (``index`` increasing)."""

    index: np.ndarray
    total: int

    @property
    def complete(self) -> bool:
        """True when every task has a row."""
        return self.index.size == self.total


def _task_rows(present: Present | None, rows: int, name: str = "Aggregator") -> TaskRows:
    """The :class:`TaskRows` of a Jacobian with ``rows`` rows described by the mask ``present``
    (``None``: the rows are all the tasks), with an error saying what does not fit."""
    if present is None:
        return TaskRows(np.arange(rows), rows)
    mask = present.detach().cpu().numpy() if isinstance(present, Tensor) else np.asarray(present)
    if mask.dtype != np.bool_ or mask.ndim != 1:
        got = f"dtype {mask.dtype}" if mask.dtype != np.bool_ else f"shape {list(mask.shape)}"
        raise TypeError(
            f"{name} expects present= as a 1-D boolean mask of the tasks (true for the tasks whose gradients "
            f"are the rows, in order), got {got}. From the indices idx of the present tasks among T: "
            "mask = torch.zeros(T, dtype=torch.bool); mask[idx] = True."
        )
    index = np.flatnonzero(mask)
    if index.size != rows:
        raise ValueError(
            f"{name} got present= marking {index.size} of {mask.size} tasks but a Jacobian with {rows} rows: "
            "mark exactly the tasks whose gradients are the rows."
        )
    return TaskRows(index, int(mask.size))


class Aggregator(ABC):
    """Maps a task Jacobian ``G [k, P]`` to one update vector ``[P]``: ``agg(G)``, or
    ``agg(G, present=mask)`` when the rows are some of the tasks.

    Args:
        normalize: divide each task's gradient by its norm before aggregating (zero rows stay zero),
            so that every task enters with the same magnitude.
    """

    def __init__(self, *, normalize: bool = False) -> None:
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}.")
        self.normalize = normalize

    # -- public API -------------------------------------------------------------------------------
    def __call__(self, matrix: Tensor, *, present: Present | None = None) -> Tensor:
        """The update ``[P]`` for the task Jacobian ``matrix [k, P]``, in its dtype and on its device.

        Args:
            matrix: one row per task: the flattened gradient of its loss.
            present: a boolean mask of all ``T`` tasks, true for the ``k`` tasks whose gradients are the
                rows (in order); ``None``: the rows are all the tasks. Only methods with per-task state
                read it (their state follows the tasks, not the row positions).
        """
        with torch.no_grad():
            rows, _ = self._prepare(matrix)
            return self._aggregate(rows, _task_rows(present, rows.shape[0], type(self).__name__)).to(matrix.dtype)

    def reset(self) -> None:
        """Forget the state gathered by earlier calls (no-op for stateless methods)."""

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint (``{}`` for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state, but the state to load has keys {sorted(state)}.")

    def __repr__(self) -> str:
        parts = []
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            value = getattr(self, name)
            shown = f"<torch.Generator on {value.device}>" if isinstance(value, torch.Generator) else repr(value)
            parts.append(f"{name}={shown}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- for subclasses ---------------------------------------------------------------------------
    @abstractmethod
    def _aggregate(self, matrix: Tensor, tasks: TaskRows) -> Tensor:
        """The update for the validated (and, with ``normalize``, row-normalised) ``matrix`` whose rows
        are the tasks ``tasks`` (methods without per-task state do not need to know which)."""

    def _prepare(self, matrix: Tensor) -> tuple[Tensor, Tensor]:
        """``(rows to aggregate, row scale)``: with ``normalize`` the rows are ``G_i / |G_i|`` and the
        scale ``1 / |G_i|`` (0 for zero rows), otherwise ``G`` and ones."""
        check_matrix(matrix, type(self).__name__)
        matrix = matrix.detach()
        if matrix.dtype in (torch.float16, torch.bfloat16):
            matrix = matrix.float()
        if not self.normalize:
            return matrix, torch.ones(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        norms = torch.linalg.vector_norm(matrix, dim=1)
        scale = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
        return matrix * scale.unsqueeze(1), scale

    def _check_tasks(self, tasks: TaskRows, tracked: int | None) -> None:
        """Methods with per-task state track one fixed list of ``tracked`` tasks (``None``: no state yet)."""
        if tracked is None or tasks.total == tracked:
            return
        if tasks.complete:
            got = f"a Jacobian with {tasks.total} rows and no present= mask"
            fix = "pass present= (a mask of the tasks the rows are, as the Balancer does)"
        else:
            got = f"a present= mask of {tasks.total} tasks"
            fix = f"pass a mask of all {tracked} tasks"
        raise ValueError(
            f"{type(self).__name__} keeps per-task state for {tracked} tasks but got {got}. Its state follows "
            f"the tasks, so every call must describe the same task list: {fix}, or call reset() to start "
            "over with other tasks."
        )


class WeightedAggregator(Aggregator):
    """An aggregator whose update is a weighting of the rows: :math:`d = w^\\top G`.

    ``weights(G)`` returns the :math:`T` weights with respect to the rows of ``G`` as given (with
    ``normalize=True`` they already include the :math:`1/\\lVert g_i\\rVert` factors), so that
    ``agg.weights(G) @ G`` equals ``agg(G)``; useful for diagnostics and for applying the update
    through the features (representation path).
    """

    #: Whether ``_weights`` reads the Gram matrix (the baselines do not).
    uses_gram: bool = True
    #: Whether the weights depend on :math:`G` only through :math:`K = GG^\top` (and its dtype), so that
    #: :meth:`weights_from_gramian` gives them without :math:`G`.
    gramian_only: bool = False

    def weights_from_gramian(
        self, gramian: Tensor | np.ndarray, *, present: Present | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        r"""The weights of :meth:`weights` computed from :math:`K = GG^\top` alone (``[k, k]``, used in
        float64), for methods with ``gramian_only``; ``dtype`` is :math:`G`'s (rank decisions follow its
        precision). Returns CPU float64 weights of the rows of :math:`G` as given (with ``normalize=True``
        including the :math:`1/\lVert g_i\rVert` factors, read from the diagonal of :math:`K`)."""
        assert gramian is not None  # uses_gram: the base passes K = G G^T
        if not self.gramian_only:
            raise TypeError(
                f"{type(self).__name__} needs the task Jacobian itself, not only its Gramian: call weights(G)."
            )
        K = gramian.detach().to("cpu", torch.float64).numpy() if isinstance(gramian, Tensor) else np.asarray(gramian, dtype=np.float64)
        if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
            raise ValueError(f"{type(self).__name__} expects a square Gramian [k, k], got shape {list(K.shape)}.")
        if not np.all(np.isfinite(K)):
            bad = np.flatnonzero(~np.isfinite(np.diag(K))).tolist() or "(off-diagonal only)"
            raise NonFiniteJacobianError(
                f"{type(self).__name__} got a Gramian with NaN or infinite values (task rows {bad}): the task "
                "gradients are not finite. Check those losses for NaN/inf and consider gradient clipping or a "
                "lower learning rate."
            )
        K = (K + K.T) / 2
        size = K.shape[0]
        scale = np.ones(size)
        if self.normalize:
            norms = np.sqrt(np.clip(np.diag(K), 0.0, None))
            scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
            K = K * np.outer(scale, scale)
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32  # as _prepare: the rows are aggregated in float32
        with torch.no_grad():
            tasks = _task_rows(present, size, type(self).__name__)
            w = self._weights(torch.empty(size, 0, dtype=dtype), K if self.uses_gram else None, tasks)
        return torch.as_tensor(np.asarray(w, dtype=np.float64) * scale)

    def weights(self, matrix: Tensor, *, present: Present | None = None) -> Tensor:
        """The weights ``[k]`` such that ``weights @ G`` is the update, in ``G``'s dtype and on its device
        (``present``: as for :meth:`~Aggregator.__call__`)."""
        with torch.no_grad():
            rows, scale = self._prepare(matrix)
            tasks = _task_rows(present, rows.shape[0], type(self).__name__)
            w = self._weights(rows, _gram(rows) if self.uses_gram else None, tasks)
            return (torch.as_tensor(w, device=matrix.device) * scale.to(torch.float64)).to(matrix.dtype)

    def _aggregate(self, matrix: Tensor, tasks: TaskRows) -> Tensor:
        w = self._weights(matrix, _gram(matrix) if self.uses_gram else None, tasks)
        return torch.as_tensor(w, dtype=matrix.dtype, device=matrix.device) @ matrix

    @abstractmethod
    def _weights(self, matrix: Tensor, gramian: np.ndarray | None, tasks: TaskRows) -> np.ndarray:
        """Float64 weights of the rows of ``matrix`` (the tasks ``tasks``) whose Gram matrix is ``gramian``."""


class Randomized:
    """Mixin for randomised methods: a ``torch.Generator`` seeded by ``seed``, or the one given.

    The seeded generator is created on first use (on the device the draws happen on). ``reset()``
    re-seeds it, or rewinds a given generator to its state at construction; the generator's state is
    part of ``state_dict()`` so that a resumed run draws the same numbers. ``seed=None`` seeds from the
    operating system (not reproducible).
    """

    seed: int | None
    generator: torch.Generator | None

    def _init_random(self, seed: int | None, generator: torch.Generator | None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        self.seed = None if seed is None else int(seed)
        self.generator = generator
        self._initial_state = None if generator is None else generator.get_state()
        self._rng: torch.Generator | None = generator

    def _random(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float64) -> Tensor:
        """Uniform [0, 1) numbers of ``shape`` on ``device``, drawn from this method's generator."""
        if self._rng is None:
            self._rng = torch.Generator(device=device)
            if self.seed is None:
                self._rng.seed()
            else:
                self._rng.manual_seed(self.seed)
        return torch.rand(shape, generator=self._rng, device=self._rng.device, dtype=dtype).to(device)

    def _reset_random(self) -> None:
        if self.generator is None:
            self._rng = None
        else:
            assert self._initial_state is not None  # kept with the generator
            self.generator.set_state(self._initial_state)

    def _random_state(self) -> dict[str, Any]:
        if self._rng is None:
            return {"rng_state": None, "rng_device": None}
        return {"rng_state": self._rng.get_state(), "rng_device": str(self._rng.device)}

    def _load_random_state(self, state: Mapping[str, Any]) -> None:
        if state["rng_state"] is None:
            self._reset_random()
            return
        if self._rng is None:
            self._rng = torch.Generator(device=state["rng_device"])
        self._rng.set_state(state["rng_state"])


def _saved(array: np.ndarray | None) -> Tensor | None:
    """A numpy state array as a CPU float64 tensor, so that checkpoints load with ``torch.load(weights_only=True)``."""
    return None if array is None else torch.tensor(array, dtype=torch.float64)


def _restored(value: Any) -> np.ndarray | None:
    """The float64 numpy array of a state entry written by :func:`_saved` (or given as an array/list)."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.detach().to("cpu", torch.float64).numpy().copy()
    return np.array(value, dtype=np.float64)


class NonFiniteJacobianError(ValueError):
    """The task Jacobian (or its Gramian) holds NaN or infinite values. The training Step treats it as a
    non-finite gradient (the optimizer step is skipped or stops, as ``on_nonfinite`` says)."""


def check_matrix(matrix: Any, name: str = "Aggregator") -> None:
    """Raise a ``TypeError`` / ``ValueError`` saying what is wrong with a task Jacobian and how to fix it."""
    if not isinstance(matrix, Tensor):
        raise TypeError(
            f"{name} expects the task Jacobian as a torch.Tensor of shape [tasks, params], got "
            f"{type(matrix).__name__}. Stack the flattened per-task gradients: torch.stack([g.flatten() for g in grads])."
        )
    if matrix.dim() != 2:
        raise ValueError(
            f"{name} expects a 2-D task Jacobian [tasks, params], got shape {list(matrix.shape)}. Stack the "
            "flattened per-task gradients as rows: torch.stack([torch.cat([p.flatten() for p in g]) for g in grads])."
        )
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(
            f"{name} got an empty task Jacobian of shape {list(matrix.shape)}: it needs at least one task (row) "
            "and one parameter (column)."
        )
    if not matrix.dtype.is_floating_point:
        raise TypeError(f"{name} expects a floating-point task Jacobian, got dtype {matrix.dtype}; convert it with .float().")
    # A row sum is non-finite when the row holds NaN/inf (or overflows): one cheap reduction decides.
    if bool(torch.isfinite(matrix.sum(dim=1)).all()):
        return
    finite = torch.isfinite(matrix).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteJacobianError(
            f"{name} got non-finite values (NaN or inf) in the gradients of task rows {bad} of {matrix.shape[0]}. "
            "Check those losses for NaN/inf (log of 0, division by 0, a too-high learning rate) and consider "
            "gradient clipping (torch.nn.utils.clip_grad_norm_) or a lower learning rate."
        )
