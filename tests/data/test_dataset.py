import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import hydranet as hn
from hydranet.data.collate import Batch, collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.labels import LabelScanWarning, missing_mask


class NoLoading(Dataset):
    """Labels in `targets`; loading an item is an error (labels must not need it)."""

    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("an input was loaded to read labels")


class DictItems(Dataset):
    def __init__(self, labels):
        self.rows = labels

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return torch.full((2,), float(i)), self.rows[i]


def two_tasks():
    a = TensorDataset(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    b = TensorDataset(torch.randn(4, 3), torch.tensor([0.5, 1.5, 2.5, 3.5]))
    return MultiTaskDataset({"a": a, "b": b}, tasks=[hn.Task("a", "multiclass", num_classes=3), hn.Task("b", "regression")])


def test_mapping_form_index_space():
    ds = two_tasks()
    assert len(ds) == 10
    assert ds.part_ranges == {"a": range(0, 6), "b": range(6, 10)}
    assert ds.task_indices("b").tolist() == [6, 7, 8, 9]
    assert ds.labels("a").tolist() == [0, 1, 2, 0, 1, 2]
    assert ds.class_counts("a").tolist() == [2, 2, 2]
    x, y = ds[7]
    assert x.shape == (3,) and set(y) == {"b"} and float(y["b"]) == 1.5
    assert not ds.is_shared and ds.task_names == ["a", "b"]
    with pytest.raises(IndexError, match="out of range"):
        ds[10]


def test_labels_from_targets_attribute_do_not_load_inputs():
    ds = MultiTaskDataset({"a": NoLoading([0, 1, 1, 1]), "b": NoLoading(np.array([1, 0]))})
    assert ds.labels("a").tolist() == [0, 1, 1, 1]
    assert ds.class_counts("b").tolist() == [1, 1]


def test_explicit_labels_and_subsets():
    base = NoLoading([0, 1, 2, 3, 4, 5])
    ds = MultiTaskDataset({"a": Subset(base, [5, 1, 3])})
    assert ds.labels("a").tolist() == [5, 1, 3]
    ds = MultiTaskDataset({"a": DictItems([0] * 3)}, labels={"a": [2, 1, 0]})
    assert ds.labels("a").tolist() == [2, 1, 0]


def test_scan_is_the_last_resort_and_warns():
    class Plain(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1), i

    with pytest.warns(LabelScanWarning, match="labels="):
        labels = MultiTaskDataset({"a": Plain()}).labels("a")
    assert labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "items",
    [
        [{"c": 1, "r": 0.5}, {"c": None, "r": 1.5}, {"r": float("nan"), "c": 0}, {"c": -1}],
    ],
)
def test_shared_dict_items_with_missing_labels(items):
    ds = MultiTaskDataset.shared(DictItems(items), tasks=[hn.Task("c", "binary"), hn.Task("r", "regression")])
    with pytest.warns(LabelScanWarning):
        assert ds.task_indices("c").tolist() == [0, 2]
    assert ds.task_indices("r").tolist() == [0, 1]
    assert ds.labels("r").tolist() == [0.5, 1.5]
    assert ds[1][1] == {"r": 1.5}
    assert ds[3][1] == {}
    assert ds.is_shared


def test_shared_tensor_dataset_columns_and_tuple_items():
    labels = torch.tensor([[0, 2], [-1, 1], [1, -1]])
    ds = MultiTaskDataset.shared(TensorDataset(torch.zeros(3, 2), labels), tasks=["u", "v"])
    assert ds.task_indices("u").tolist() == [0, 2]
    assert ds.labels("v").tolist() == [2, 1]

    class Tuples(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(1), (i, None if i else 3.0)

    ds = MultiTaskDataset.shared(Tuples(), tasks=["u", "v"], labels={"u": [0, 1], "v": [3.0, None]})
    assert ds.task_indices("v").tolist() == [0]
    assert ds[1][1] == {"u": 1}


def test_missing_mask_conventions():
    assert missing_mask(np.array([0, -1, 3]), "multiclass").tolist() == [False, True, False]
    assert missing_mask(np.array([0.0, np.nan, -1.0]), "regression").tolist() == [False, True, False]
    assert missing_mask(np.array([[1, 0], [-1, -1]]), "multilabel").tolist() == [False, True]
    assert missing_mask(np.array([1, None, 0], dtype=object), "binary").tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MultiTaskDataset({}), "non-empty mapping"),
        (lambda: MultiTaskDataset({"a": TensorDataset(torch.zeros(0, 1), torch.zeros(0))}), "empty dataset"),
        (lambda: MultiTaskDataset({"a": 3}), "no __getitem__"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, labels={"b": [0]}), "unknown task 'b'"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, labels={"a": [0, 1]}), "2 entries for a dataset of 1"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, tasks=[hn.Task("b", "binary")]), "missing"),
    ],
)
def test_construction_errors(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_label_range_errors_name_task_value_and_index():
    ds = MultiTaskDataset({"a": NoLoading([0, 1, 5])}, tasks=[hn.Task("a", "multiclass", num_classes=3)])
    with pytest.raises(ValueError, match=r"Task 'a' \(multiclass\) has a label 5 at dataset index 2.*\[0, 3\)"):
        ds.labels("a")
    ds = MultiTaskDataset({"a": NoLoading([0, 2])}, tasks=[hn.Task("a", "binary")])
    with pytest.raises(ValueError, match=r"label 2 at dataset index 1"):
        ds.labels("a")
    with pytest.raises(KeyError, match="Unknown task 'z'"):
        ds.task_indices("z")


def test_shared_task_without_labels_is_an_error():
    ds = MultiTaskDataset.shared(TensorDataset(torch.zeros(2, 1), torch.tensor([-1, -1])), tasks=["a"])
    with pytest.raises(ValueError, match="no labelled sample"):
        ds.task_indices("a")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=12))
def test_getitems_equals_per_item_collate_mapping(indices):
    ds = two_tasks()
    fast = ds.__getitems__(indices)
    slow = collate([ds[i] for i in indices])
    assert isinstance(fast, Batch)
    assert torch.equal(fast.inputs, slow.inputs)
    assert list(fast.masks) == list(slow.masks)
    for t in slow.masks:
        assert torch.equal(fast.masks[t], slow.masks[t])
        assert torch.equal(fast.targets[t], slow.targets[t])
    assert fast.indices.tolist() == indices


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=10))
def test_getitems_equals_per_item_collate_shared(indices):
    c = torch.tensor([0, 1, -1, 1, -1, 0])
    r = torch.tensor([0.5, float("nan"), 2.0, float("nan"), 1.0, 3.0])
    ds = MultiTaskDataset.shared(TensorDataset(torch.arange(12.0).view(6, 2), c, r), tasks=[hn.Task("c", "binary"), hn.Task("r", "regression")])
    fast = ds.__getitems__(indices)
    slow = collate([ds[i] for i in indices])
    assert torch.equal(fast.inputs, slow.inputs)
    assert list(fast.masks) == list(slow.masks)
    for t in slow.masks:
        assert torch.equal(fast.masks[t], slow.masks[t])
        assert torch.equal(fast.targets[t], slow.targets[t])


def test_works_in_a_dataloader_with_workers():
    ds = two_tasks()
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 10
    assert sum(int(b.masks["a"].sum()) for b in batches if "a" in b.masks) == 6
