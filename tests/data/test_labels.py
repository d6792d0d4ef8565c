import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

import hydranet as hn
from hydranet.data.labels import (
    LabelScanWarning,
    as_label_array,
    check_labels,
    is_missing,
    item_labels,
    missing_mask,
    read_label_columns,
    read_labels,
    stack_labels,
    tensor_label_columns,
)

NAN = float("nan")


class NoLoading(Dataset):
    """Label metadata only: loading an item fails the test."""

    def __init__(self, n, **attributes):
        self.n = n
        for name, value in attributes.items():
            setattr(self, name, value)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        raise AssertionError("an item was loaded to read labels")


class Items(Dataset):
    """Items from a list; counts the loads."""

    def __init__(self, items):
        self.items = items
        self.loads = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.loads += 1
        return self.items[i]


# ------------------------------------------------------------------------------------ missing labels


@pytest.mark.parametrize(
    ("labels", "kind", "expected"),
    [
        ([0, -1, 3], "multiclass", [False, True, False]),
        ([1, -1, 0], "binary", [False, True, False]),
        ([1.0, -1.0, NAN], "binary", [False, True, True]),  # pandas turns missing ints into NaN floats
        ([0.5, -1.0, NAN], "regression", [False, False, True]),  # -1 is a value for regression
        ([[0.5, NAN], [NAN, NAN]], "regression", [False, True]),  # a vector is missing when all NaN
        ([1, -1, 2], "regression", [False, False, False]),
        ([[1, 0], [-1, -1], [-1, 0]], "multilabel", [False, True, False]),
        ([[1, 0], None, [0, 1]], "multilabel", [False, True, False]),
        ([[1, 0], [None, None]], "multilabel", [False, True]),
        ([1, None, 0], "binary", [False, True, False]),
        ([0.5, None, NAN], "regression", [False, True, True]),
        ([2, -1, None], None, [False, True, True]),  # unknown kind: -1 in integer labels
        ([2.0, -1.0, NAN], None, [False, False, True]),  # ... but a float -1 may be a regression value
        ([True, False], "binary", [False, False]),
    ],
)
def test_missing_mask_conventions(labels, kind, expected):
    assert missing_mask(labels, kind).tolist() == expected
    assert [is_missing(v, kind) for v in labels] == expected


def test_missing_mask_on_tensors_and_ragged_labels():
    assert missing_mask(torch.tensor([3, -1, 0]), "multiclass").tolist() == [False, True, False]
    boxes = [np.zeros((2, 4)), None, np.zeros((0, 4)), np.full((1, 4), NAN)]
    # an empty box array is a label (no objects), an all-NaN one is missing
    assert missing_mask(boxes, "regression").tolist() == [False, True, False, True]
    assert [is_missing(b, "regression") for b in boxes] == [False, True, False, True]


label_values = st.one_of(
    st.none(),
    st.sampled_from([-1, 0, 1, 2, -1.0, 0.0, 1.5, NAN]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(label_values, min_size=1, max_size=8), st.sampled_from([None, "binary", "multiclass", "regression"]))
def test_missing_mask_agrees_with_is_missing(values, kind):
    """Whole-column and one-sample rules agree when a column has one type (as a dataset's does)."""
    for column in ([v for v in values if not isinstance(v, float)], [v for v in values if not isinstance(v, int)]):
        if column:
            assert missing_mask(column, kind).tolist() == [is_missing(v, kind) for v in column]


def test_as_label_array_and_stack_labels():
    assert as_label_array(torch.tensor([1, 2])).dtype == np.int64
    assert as_label_array([torch.tensor(1), torch.tensor(2)]).tolist() == [1, 2]
    mixed = as_label_array([torch.tensor([1, 0]), None])
    assert mixed.dtype == object and mixed.shape == (2,) and isinstance(mixed[0], np.ndarray)
    assert stack_labels(mixed[:1]).tolist() == [[1, 0]]
    ragged = as_label_array([np.zeros(2), np.zeros(3)])
    assert ragged.dtype == object and stack_labels(ragged) is ragged
    with pytest.raises(TypeError, match="one entry per sample"):
        as_label_array(3)


# ------------------------------------------------------------------------------------ items


@pytest.mark.parametrize(
    "item",
    [
        ("x", {"a": 1, "b": 2.5}),
        ("x", 1, 2.5),
        ("x", (1, 2.5)),
        ["x", [1, 2.5]],
    ],
)
def test_item_labels_structures(item):
    assert item_labels(item, ["a", "b"]) == [1, 2.5]


def test_item_labels_dict_absent_task_and_tensor_row():
    assert item_labels(("x", {"b": 3}), ["a", "b"]) == [None, 3]
    row = item_labels(("x", torch.tensor([4, 5])), ["a", "b"])
    assert [int(v) for v in row] == [4, 5]
    assert item_labels(("x", (1, 0)), ["tags"]) == [(1, 0)]  # one task: the tuple is its label


@pytest.mark.parametrize(
    ("item", "tasks", "error", "match"),
    [
        (torch.zeros(3), ["a"], TypeError, r"Items must be \(x, y\).*found a Tensor"),
        (("x", 1, 2), ["a"], ValueError, r"found a tuple of 3 \(str, int, int\), i.e. 2 label\(s\) for 1 task"),
        (("x", 1, 2, 3), ["a", "b"], ValueError, r"3 label\(s\) for 2 task\(s\)"),
        (("x", {"a": 1, "c": 2}), ["a", "b"], ValueError, r"unknown task\(s\) \['c'\]"),
    ],
)
def test_item_labels_errors_say_what_was_found(item, tasks, error, match):
    with pytest.raises(error, match=match):
        item_labels(item, tasks)


# ------------------------------------------------------------------------------------ reading


def test_targets_then_labels_attribute_without_loading():
    assert read_labels(NoLoading(3, targets=[2, 0, 1])).tolist() == [2, 0, 1]
    assert read_labels(NoLoading(2, labels=torch.tensor([1, 1]))).tolist() == [1, 1]
    both = NoLoading(2, targets=np.array([0, 1]), labels=np.array([5, 5]))
    assert read_labels(both).tolist() == [0, 1]


def test_columns_from_a_table_or_a_dict_attribute():
    table = NoLoading(3, targets=[(30.0, 1), (41.5, None), (NAN, 0)])
    cols = read_label_columns(table, ["age", "gender"])
    assert np.isnan(cols["age"][2]) and cols["age"][:2].tolist() == [30.0, 41.5]
    assert cols["gender"].tolist() == [1, None, 0]
    per_task = NoLoading(2, targets={"age": [1.0, 2.0], "gender": torch.tensor([0, -1])})
    cols = read_label_columns(per_task, ["age", "gender"], need=["gender"])
    assert list(cols) == ["gender"] and cols["gender"].tolist() == [0, -1]


def test_tensor_dataset_label_tensors():
    x = torch.zeros(3, 2)
    one = TensorDataset(x, torch.tensor([1, 0, 1]))
    assert read_labels(one).tolist() == [1, 0, 1]
    several = TensorDataset(x, torch.tensor([1, 0, 1]), torch.tensor([0.5, 1.0, NAN]))
    cols = read_label_columns(several, ["c", "r"])
    assert cols["c"].tolist() == [1, 0, 1] and cols["r"][:2].tolist() == [0.5, 1.0]
    table = TensorDataset(x, torch.tensor([[1, 7], [0, 8], [-1, 9]]))
    assert read_label_columns(table, ["c", "d"])["d"].tolist() == [7, 8, 9]
    assert [c.tolist() for c in tensor_label_columns(table, 2)] == [[1, 0, -1], [7, 8, 9]]
    assert tensor_label_columns(table, 3) is None


def test_subset_and_concat_map_the_parent_labels():
    base = NoLoading(6, targets=[10, 11, 12, 13, 14, 15])
    assert read_labels(Subset(base, [5, 1, 3])).tolist() == [15, 11, 13]
    nested = Subset(Subset(base, [5, 4, 3, 2]), torch.tensor([3, 0]))
    assert read_labels(nested).tolist() == [12, 15]
    tensors = TensorDataset(torch.zeros(2, 1), torch.tensor([7, 8]))
    assert read_labels(ConcatDataset([base, tensors])).tolist() == [10, 11, 12, 13, 14, 15, 7, 8]


def test_scan_is_the_last_resort_warns_and_reads_the_right_values():
    items = Items([(torch.zeros(1), {"a": 3}), (torch.zeros(1), {"b": 1.5}), (torch.zeros(1), {"a": -1, "b": 0.5})])
    with pytest.warns(LabelScanWarning, match=r"loading all 3 items of Items.*labels=\{'a': array, 'b': array\}"):
        cols = read_label_columns(items, ["a", "b"])
    assert cols["a"].tolist() == [3, None, -1]
    assert cols["b"].tolist() == [None, 1.5, 0.5]
    assert items.loads == 3


def test_no_scan_leaves_unknown_columns_out():
    items = Items([(0, 1), (0, 2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_labels(items, scan=False) is None
    assert items.loads == 0


def test_targets_of_the_wrong_length_are_not_used_and_the_warning_says_so():
    items = Items([(0, 1), (0, 0)])
    items.targets = [1, 0, 1]
    with pytest.warns(LabelScanWarning, match=r"`targets` attribute has 3 entries for 2 items"):
        assert read_labels(items).tolist() == [1, 0]


def test_scan_errors_name_the_item():
    with pytest.warns(LabelScanWarning), pytest.raises(ValueError, match=r"Item 1 of Items: .*2 label\(s\) for 1"):
        read_labels(Items([(0, 1), (0, 1, 2)]))


# ------------------------------------------------------------------------------------ checks


def test_check_labels_returns_the_task_dtype():
    assert check_labels(np.array([1.0, 0.0]), hn.Task("b", "binary")).dtype == np.int64
    # Integer class labels keep their dtype (an int8 label matrix stays one byte a label); bools become int8.
    assert check_labels(np.array([1, 0], dtype=np.int8), hn.Task("b", "binary")).dtype == np.int8
    assert check_labels(np.array([True, False]), hn.Task("b", "binary")).tolist() == [1, 0]
    assert check_labels(np.array([True, False]), hn.Task("b", "binary")).dtype == np.int8
    assert check_labels(np.array([[2], [0]]), hn.Task("m", "multiclass", num_classes=3)).tolist() == [2, 0]
    assert check_labels(np.array([3, 4]), hn.Task("r", "regression")).dtype == np.float64
    assert check_labels(np.array([[1, 2]]), hn.Task("r", "regression", dim=2)).shape == (1, 2)
    tags = np.array([[1, 0, 1]], dtype=np.float32)
    assert check_labels(tags, hn.Task("t", "multilabel", num_classes=3)).dtype == np.float32
    ragged = as_label_array([np.zeros(2), np.zeros(3)])
    assert check_labels(ragged, hn.Task("boxes", "regression", ragged=True)) is ragged


@pytest.mark.parametrize(
    ("labels", "task", "match"),
    [
        ([0, 1, 5], hn.Task("a", "multiclass", num_classes=3),
         r"Task 'a' \(multiclass\): label 5 at index 12 of D is not a class in \[0, 3\): set num_classes=6"),
        ([0, 2], hn.Task("b", "binary"), r"label 2 at index 11 of D .*binary labels are 0 or 1"),
        ([0, -2], hn.Task("a", "multiclass", num_classes=3),
         r"label -2 at index 11 .*only negative label is -1, which marks a missing label"),
        ([0.0, 1.5], hn.Task("a", "multiclass", num_classes=3), r"label 1.5 at index 11 .*whole numbers"),
        ([[1, 0], [0, 2]], hn.Task("t", "multilabel", num_classes=2), r"label \[0, 2\] at index 11 .*other than 0"),
        ([[1, 0, 1]], hn.Task("t", "multilabel", num_classes=2), r"vector of 2 values.*found shape \(3,\)"),
        ([[1, 0]], hn.Task("a", "multiclass", num_classes=3), r"one class index per sample.*multilabel"),
        ([[1.0, 2.0]], hn.Task("r", "regression"), r"shape \(2,\) per sample .*dim=1.*dim=2"),
        (["cat", "dog"], hn.Task("a", "multiclass", num_classes=3), r"must be numbers; found 'cat'.*class_names"),
    ],
)
def test_check_labels_errors_name_task_value_index_and_fix(labels, task, match):
    with pytest.raises(ValueError, match=match):
        check_labels(np.asarray(labels), task, indices=np.arange(10, 10 + len(labels)), where="D")


def test_check_labels_shape_mismatch_names_the_sample_and_the_declared_size():
    labels = as_label_array([np.zeros(2), np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match=r"label at index 2 of the dataset has shape \(3,\), but the task declares dim=2"):
        check_labels(labels, hn.Task("r", "regression", dim=2))


@pytest.mark.parametrize(
    ("rows", "task", "match"),
    [
        # One multilabel row of 2 entries among rows of 3: the row is wrong, not the task.
        ([[0, 1, 0], [1, 1, 0], [1, 0], [0, 0, 1]], hn.Task("m", "multilabel", num_classes=3),
         r"Task 'm' \(multilabel\): the label at index 12 of D has shape \(2,\), but the task declares "
         r"num_classes=3, i.e. shape \(3,\) per sample\. Fix that sample's label .*or correct num_classes"),
        # A regression target of 3 values among targets of dim 2.
        ([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0, 3.0]], hn.Task("r", "regression", dim=2),
         r"index 12 of D has shape \(3,\), but the task declares dim=2, i.e. shape \(2,\).*correct dim"),
        # A vector among scalars of a dim-1 regression task.
        ([0.5, 1.0, [1.0, 0.0], 2.0], hn.Task("r", "regression"),
         r"index 12 of D has shape \(2,\), but the task declares dim=1, i.e. shape \(\) per sample"),
        ([0, [1, 2], 1], hn.Task("c", "multiclass", num_classes=3),
         r"index 11 of D has shape \(2,\), but the task declares one class index per sample"),
    ],
)
def test_one_label_of_the_wrong_size_names_the_sample_not_ragged(rows, task, match):
    labels = as_label_array(rows)
    with pytest.raises(ValueError, match=match) as info:
        check_labels(labels, task, indices=np.arange(10, 10 + len(rows)), where="D")
    assert "declare the task ragged=True" not in str(info.value)


def test_a_negative_label_in_a_shared_dataset_names_task_index_and_the_missing_marker():
    x = torch.zeros(4, 2)
    ds = TensorDataset(x, torch.tensor([0, 1, -3, -1]))
    with pytest.raises(ValueError) as info:
        hn.data.MultiTaskDataset.shared(ds, tasks=[hn.Task("c", "multiclass", num_classes=3)])
    text = str(info.value)
    assert "Task 'c' (multiclass): label -3 at index 2 of the shared dataset" in text
    assert "only negative label is -1, which marks a missing label" in text
    assert "num_classes=-2" not in text


