import sys
import timeit
import types

import numpy as np
import pytest

from hydranet.data import builtin
from hydranet.data.builtin import digit_pools, load, mnist_digits, multi_mnist, multi_mnist_arrays, multi_mnist_tasks


def test_mnist_digits_layout():
    images, labels = mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    assert np.all(np.diff(labels) >= 0)  # sorted by class
    assert images.max() == 255 and images.min() == 0
    # MNIST digits are centred by their centre of mass: a misread column (label first, or an offset)
    # would shift every image.
    rows, cols = np.indices((28, 28))
    mass = images.astype(np.float64)
    com_r = (mass * rows).sum((1, 2)) / mass.sum((1, 2))
    com_c = (mass * cols).sum((1, 2)) / mass.sum((1, 2))
    assert abs(np.median(com_r) - 13.5) < 1 and abs(np.median(com_c) - 13.5) < 1
    assert not images.flags.writeable and not labels.flags.writeable


def test_pools_are_disjoint_stratified_and_seeded():
    _, labels = mnist_digits()
    pools = digit_pools(seed=3)
    assert list(pools) == ["train", "val", "test"]
    joined = np.concatenate(list(pools.values()))
    np.testing.assert_array_equal(np.sort(joined), np.arange(5000))  # disjoint and complete
    for split, per_class in {"train": 350, "val": 50, "test": 100}.items():
        np.testing.assert_array_equal(np.bincount(labels[pools[split]], minlength=10), [per_class] * 10)
    np.testing.assert_array_equal(digit_pools(seed=3)["test"], pools["test"])
    assert not np.array_equal(digit_pools(seed=4)["test"], pools["test"])


def test_arrays_shapes_ranges_and_labels():
    a = multi_mnist_arrays(500, split="val", seed=1)
    assert a["images"].shape == (500, 1, 36, 36) and a["images"].dtype == np.float32
    assert 0.0 <= a["images"].min() and a["images"].max() <= 1.0
    _, labels = mnist_digits()
    np.testing.assert_array_equal(a["left"], labels[a["left_source"]])
    np.testing.assert_array_equal(a["right"], labels[a["right_source"]])
    np.testing.assert_array_equal(a["left_is_zero"], (a["left"] == 0).astype(np.int64))
    for key in ("left", "right", "left_is_zero", "left_source", "right_source"):
        assert a[key].dtype == np.int64 and a[key].shape == (500,)
    assert set(np.unique(a["left"])) == set(range(10)) and set(np.unique(a["left_is_zero"])) == {0, 1}
    assert np.all(a["left_source"] != a["right_source"])


def test_images_follow_the_composition_rule():
    digits, _ = mnist_digits()
    a = multi_mnist_arrays(8, seed=2, overlap=20)
    for i in range(8):  # one sample at a time, independently of the vectorised code
        left = np.zeros((36, 36), np.float32)
        right = np.zeros((36, 36), np.float32)
        left[:28, :28] = digits[a["left_source"][i]] / 255
        right[8:, 8:] = digits[a["right_source"][i]] / 255
        np.testing.assert_allclose(a["images"][i, 0], np.maximum(left, right), atol=1e-6)


def test_overlap_extremes():
    digits, _ = mnist_digits()
    apart = multi_mnist_arrays(4, seed=0, overlap=0)
    assert apart["images"].shape == (4, 1, 56, 56)
    np.testing.assert_allclose(apart["images"][:, 0, :28, :28], digits[apart["left_source"]] / 255, atol=1e-6)
    np.testing.assert_allclose(apart["images"][:, 0, 28:, 28:], digits[apart["right_source"]] / 255, atol=1e-6)
    assert apart["images"][:, 0, :28, 28:].max() == 0 and apart["images"][:, 0, 28:, :28].max() == 0
    stacked = multi_mnist_arrays(4, seed=0, overlap=28)
    expected = np.maximum(digits[stacked["left_source"]], digits[stacked["right_source"]]) / 255
    np.testing.assert_allclose(stacked["images"][:, 0], expected, atol=1e-6)


def test_train_and_test_pairs_use_disjoint_digit_images():
    pools = digit_pools(seed=0)
    sources = {}
    for split in ("train", "val", "test"):
        a = multi_mnist_arrays(3000, split=split, seed=0)
        sources[split] = np.union1d(a["left_source"], a["right_source"])
        assert np.isin(sources[split], pools[split]).all()
    assert not np.intersect1d(sources["train"], sources["test"]).size
    assert not np.intersect1d(sources["train"], sources["val"]).size
    assert not np.intersect1d(sources["val"], sources["test"]).size


def test_classes_are_balanced_and_the_auxiliary_task_is_one_to_nine():
    # Two full passes over the 3,500-image train pool: every left class appears exactly 700 times.
    a = multi_mnist_arrays(7000, split="train", seed=5)
    np.testing.assert_array_equal(np.bincount(a["left"], minlength=10), [700] * 10)
    right = np.bincount(a["right"], minlength=10)
    assert np.abs(right - 700).max() <= 10  # only the rare left == right image clashes are redrawn
    assert a["left_is_zero"].sum() == 700  # exactly 1 positive for 9 negatives
    b = multi_mnist_arrays(4321, split="test", seed=5)
    assert b["left_is_zero"].mean() == pytest.approx(0.1, abs=0.01)


def test_deterministic_from_seed():
    a = multi_mnist_arrays(300, seed=7)
    b = multi_mnist_arrays(300, seed=7)
    c = multi_mnist_arrays(300, seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["left_source"], c["left_source"])


def test_twenty_thousand_pairs_build_fast():
    mnist_digits(), digit_pools(0)  # parsing the csv once per process is not part of the budget
    # best of three: the machine is shared, a single timing can catch another process's burst
    best = min(timeit.repeat(lambda: multi_mnist_arrays(20_000, seed=0), number=1, repeat=3))
    assert best < 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "positive number of pairs"),
        ({"n": 10, "overlap": 29}, r"overlap must be .* \[0, 28\]"),
        ({"n": 10, "split": "dev"}, "Unknown split 'dev'"),
        ({"n": 10, "seed": -1}, "seed must be"),
    ],
)
def test_invalid_arguments_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multi_mnist_arrays(**kwargs)


def test_tasks():
    tasks = {t.name: t for t in multi_mnist_tasks()}
    assert list(tasks) == ["left", "right", "left_is_zero"]
    assert tasks["left"].kind == "multiclass" and tasks["left"].num_classes == 10
    assert tasks["left_is_zero"].kind == "binary"


class _StandIn:
    """Records what MultiTaskDataset.shared receives (the real class is tested below when present)."""

    def __init__(self, dataset, tasks):
        self.dataset, self.tasks = dataset, tasks

    @classmethod
    def shared(cls, dataset, tasks=None, labels=None):
        return cls(dataset, tasks)


@pytest.fixture
def stand_in(monkeypatch):
    module = types.ModuleType("hydranet.data.dataset")
    module.MultiTaskDataset = _StandIn
    monkeypatch.setitem(sys.modules, "hydranet.data.dataset", module)


def test_multi_mnist_wraps_the_arrays_in_a_shared_dataset(stand_in):
    train, test, tasks = multi_mnist(n_train=40, n_test=20, seed=0)
    assert [t.name for t in tasks] == ["left", "right", "left_is_zero"]
    images, left, right, zero = train.dataset.tensors
    expected = multi_mnist_arrays(40, split="train", seed=0)
    np.testing.assert_array_equal(images.numpy(), expected["images"])
    np.testing.assert_array_equal(left.numpy(), expected["left"])
    np.testing.assert_array_equal(right.numpy(), expected["right"])
    np.testing.assert_array_equal(zero.numpy(), expected["left_is_zero"])
    assert len(test.dataset) == 20 and train.tasks == tasks


def test_load_builds_one_split_and_checks_its_options(stand_in):
    ds = load("multi_mnist", split="val", seed=0, n=30, overlap=24)
    assert ds.dataset.tensors[0].shape == (30, 1, 32, 32)
    assert len(load("multi_mnist", split="test").dataset) == builtin.DEFAULT_SIZES["test"]
    with pytest.raises(ValueError, match="Unknown built-in dataset 'cifar'.*multi_mnist"):
        load("cifar")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['size'\]"):
        load("multi_mnist", size=3)


def test_with_the_real_multitask_dataset():
    train, test, tasks = multi_mnist(n_train=50, n_test=10, seed=0)
    arrays = multi_mnist_arrays(50, split="train", seed=0)
    assert len(train) == 50 and len(test) == 10
    assert train.task_names == ["left", "right", "left_is_zero"]
    x, y = train[3]
    assert tuple(x.shape) == (1, 36, 36)
    assert {k: int(v) for k, v in y.items()} == {k: int(arrays[k][3]) for k in ("left", "right", "left_is_zero")}
    np.testing.assert_array_equal(train.labels("left"), arrays["left"])
    np.testing.assert_array_equal(train.task_indices("left_is_zero"), np.arange(50))
