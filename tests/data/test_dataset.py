import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

import hydranet as hn
from hydranet.data._collate import Batch, collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.labels import LabelScanWarning

NAN = float("nan")


class NoLoading(Dataset):
    """Labels in a `targets` attribute; loading an item fails the test."""

    def __init__(self, targets):
        self.targets = targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("an item was loaded to read labels")


class Items(Dataset):
    """Items ``(tensor([i, i]), *labels[i])``, or ``(x, labels[i])`` for dicts; counts the loads."""

    def __init__(self, labels, spread=False):
        self.rows = labels
        self.spread = spread
        self.loads = 0

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.loads += 1
        x = torch.full((2,), float(i))
        return (x, *self.rows[i]) if self.spread else (x, self.rows[i])


class Batched(Items):
    """A dataset with its own __getitems__ (records the calls)."""

    def __init__(self, labels):
        super().__init__(labels)
        self.calls = []

    def __getitems__(self, indices):
        self.calls.append(list(indices))
        return [self[i] for i in indices]


def scanned(ds, task):
    with pytest.warns(LabelScanWarning):
        return ds.task_indices(task), ds.labels(task)


def per_task():
    a = TensorDataset(torch.arange(18.0).view(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    b = TensorDataset(-torch.arange(12.0).view(4, 3), torch.tensor([0.5, 1.5, 2.5, 3.5]))
    return MultiTaskDataset(
        {"a": a, "b": b}, tasks=[hn.Task("a", "multiclass", num_classes=3), hn.Task("b", "regression")]
    )


# ------------------------------------------------------------------------------------ the two forms


def test_mapping_form_index_space_items_and_counts():
    ds = per_task()
    assert len(ds) == 10 and not ds.is_shared and ds.task_names == ["a", "b"]
    assert ds.part_ranges == {"a": range(0, 6), "b": range(6, 10)}
    assert ds.task_indices("b").tolist() == [6, 7, 8, 9]
    assert ds.task_indices("b").dtype == np.int64
    assert ds.labels("a").tolist() == [0, 1, 2, 0, 1, 2] and ds.labels("a").dtype == np.int64
    assert ds.labels("b").dtype == np.float32
    assert ds.class_counts("a").tolist() == [2, 2, 2]
    x, y = ds[7]
    assert x.tolist() == [-3.0, -4.0, -5.0] and list(y) == ["b"] and float(y["b"]) == 1.5
    assert ds[-1][1]["b"] == 3.5 and ds[np.int64(0)][1] == {"a": 0}
    assert set(ds.tasks) == {"a", "b"} and ds.tasks["a"].num_classes == 3
    with pytest.raises(IndexError, match="Index 10 is out of range for a MultiTaskDataset of 10"):
        ds[10]
    with pytest.raises(KeyError, match=r"Unknown task 'z'; this dataset's tasks are \['a', 'b'\]"):
        ds.labels("z")


def test_cached_arrays_are_read_only():
    ds = MultiTaskDataset.shared(TensorDataset(torch.zeros(3, 1), torch.tensor([1, -1, 0])), tasks=["c"])
    with pytest.raises(ValueError, match="read-only"):
        ds.task_indices("c")[0] = 5
    with pytest.raises(ValueError, match="read-only"):
        ds.labels("c")[0] = 5


def test_shared_dict_items_with_every_missing_convention():
    rows = [
        {"c": 1, "r": 0.5, "t": [1, 0]},
        {"c": None, "r": 1.5, "t": None},  # None, any kind
        {"c": -1, "r": NAN, "t": [-1, -1]},  # -1 class label, NaN regression, all -1 multilabel
        {"t": [0, 1]},  # absent from the dict
        {"c": 0, "r": -1.0},  # -1.0 is a regression value
    ]
    tasks = [hn.Task("c", "binary"), hn.Task("r", "regression"), hn.Task("t", "multilabel", num_classes=2)]
    items = Items(rows)
    ds = MultiTaskDataset.shared(items, tasks=tasks)
    assert items.loads == 0  # labels of a dataset without metadata are read when needed, not before
    idx, lab = scanned(ds, "c")
    assert items.loads == 5  # one pass read every column
    assert (idx.tolist(), lab.tolist()) == ([0, 4], [1, 0])
    assert ds.task_indices("r").tolist() == [0, 1, 4] and ds.labels("r").tolist() == [0.5, 1.5, -1.0]
    assert ds.task_indices("t").tolist() == [0, 3] and ds.labels("t").tolist() == [[1, 0], [0, 1]]
    assert items.loads == 5  # cached
    assert ds[1][1] == {"r": 1.5}
    assert ds[2][1] == {}
    assert ds[4][1] == {"c": 0, "r": -1.0}
    assert ds.is_shared and ds.class_counts("t").tolist() == [1, 1]


@pytest.mark.parametrize(
    "rows",
    [
        [(0.5, 1), (NAN, 0), (2.5, -1)],  # (x, y1, y2)
        [((0.5, 1),), ((NAN, 0),), ((2.5, None),)],  # (x, (y1, y2))
    ],
)
def test_shared_tuple_items(rows):
    ds = MultiTaskDataset.shared(Items(rows, spread=True), tasks=["r", "c"])
    idx, _ = scanned(ds, "r")
    assert idx.tolist() == [0, 2] and ds.labels("r").tolist() == [0.5, 2.5]
    assert ds.task_indices("c").tolist() == [0, 1] and ds.labels("c").tolist() == [1, 0]
    assert ds[2][1] == {"r": 2.5}
    assert ds[1][0].tolist() == [1.0, 1.0]


def test_shared_tensor_dataset_one_tensor_per_task_or_one_column_per_task():
    x = torch.arange(6.0).view(3, 2)
    ds = MultiTaskDataset.shared(TensorDataset(x, torch.tensor([[0, 2], [-1, 1], [1, -1]])), tasks=["u", "v"])
    assert ds.task_indices("u").tolist() == [0, 2] and ds.labels("v").tolist() == [2, 1]
    assert {t: int(y) for t, y in ds[1][1].items()} == {"v": 1}
    columns = TensorDataset(x, torch.tensor([0, -1, 1]), torch.tensor([NAN, 1.0, 2.0]))
    ds = MultiTaskDataset.shared(columns, tasks=["u", "v"])
    assert ds.task_indices("v").tolist() == [1, 2] and ds.labels("u").tolist() == [0, 1]


# ------------------------------------------------------------------------------------ label sources


def test_targets_attribute_is_read_without_loading_items():
    ds = MultiTaskDataset({"a": NoLoading([0, 1, 1, 1]), "b": NoLoading(np.array([1, 0]))})
    assert ds.labels("a").tolist() == [0, 1, 1, 1]
    assert ds.class_counts("b").tolist() == [1, 1]
    shared = NoLoading(np.array([[1, 0.5], [-1, 2.0], [0, NAN]]))
    ds = MultiTaskDataset.shared(shared, tasks=[hn.Task("c", "binary"), hn.Task("r", "regression")])
    assert ds.task_indices("c").tolist() == [0, 2] and ds.labels("c").tolist() == [1, 0]
    assert ds.task_indices("r").tolist() == [0, 1]


def test_explicit_labels_come_first():
    items = Items([5, 5, 5])
    items.targets = [9, 9, 9]
    ds = MultiTaskDataset({"a": items}, labels={"a": [2, 1, 0]})
    assert ds.labels("a").tolist() == [2, 1, 0] and items.loads == 0
    shared = Items([(0, 0)] * 3, spread=True)
    ds = MultiTaskDataset.shared(shared, tasks=["u", "v"], labels={"u": [0, None, 1], "v": torch.tensor([-1, 2, 3])})
    assert ds.task_indices("u").tolist() == [0, 2] and ds.task_indices("v").tolist() == [1, 2]
    assert shared.loads == 0


def test_explicit_labels_for_some_columns_and_a_scan_for_the_others():
    items = Items([(1, 0.5), (-1, 1.5)], spread=True)
    ds = MultiTaskDataset.shared(items, tasks=["c", "r"], labels={"r": [0.5, NAN]})
    assert ds.task_indices("r").tolist() == [0] and items.loads == 0
    idx, lab = scanned(ds, "c")
    assert (idx.tolist(), lab.tolist()) == ([0], [1])


def test_subset_labels_map_through_indices():
    base = NoLoading([0, 1, 2, 3, 4, 5])
    ds = MultiTaskDataset({"a": Subset(base, [5, 1, 3])})
    assert ds.labels("a").tolist() == [5, 1, 3]
    tensors = TensorDataset(torch.zeros(5, 1), torch.tensor([0, -1, 1, -1, 1]))
    ds = MultiTaskDataset.shared(Subset(tensors, [4, 3, 1, 0]), tasks=["c"])
    assert ds.task_indices("c").tolist() == [0, 3] and ds.labels("c").tolist() == [1, 0]


def test_iteration_is_the_last_resort_warns_once_and_reads_right_values():
    items = Items([3, 0, 1])
    ds = MultiTaskDataset({"a": items}, tasks=[hn.Task("a", "multiclass", num_classes=4)])
    assert items.loads == 0
    with pytest.warns(LabelScanWarning, match=r"loading all 3 items of Items.*labels=\{'a': array\}"):
        labels = ds.labels("a")
    assert labels.tolist() == [3, 0, 1] and items.loads == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds.class_counts("a").tolist() == [1, 1, 0, 1]
    assert items.loads == 3
    assert ds.task_indices("a").tolist() == [0, 1, 2]  # known without labels in the mapping form


# ------------------------------------------------------------------------------------ alignment


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([-1, 0, 1, 2]), st.sampled_from([NAN, 0.25, 1.0])), min_size=1, max_size=20))
def test_task_indices_labels_and_items_agree(rows):
    c = torch.tensor([r[0] for r in rows])
    r = torch.tensor([r[1] for r in rows])
    if (c == -1).all() or r.isnan().all():
        return
    tasks = [hn.Task("c", "multiclass", num_classes=3), hn.Task("r", "regression")]
    ds = MultiTaskDataset.shared(TensorDataset(torch.zeros(len(rows), 1), c, r), tasks=tasks)
    for task, column, missing in (("c", c, c == -1), ("r", r, r.isnan())):
        idx = ds.task_indices(task)
        assert idx.tolist() == torch.nonzero(~missing).flatten().tolist()
        np.testing.assert_array_equal(ds.labels(task), column[~missing].numpy())
        assert [i for i in range(len(ds)) if task in ds[i][1]] == idx.tolist()
        assert [float(ds[int(i)][1][task]) for i in idx] == ds.labels(task).tolist()
    assert ds.class_counts("c").tolist() == np.bincount(c[c >= 0].numpy(), minlength=3).tolist()


def test_class_counts():
    ds = MultiTaskDataset({"b": NoLoading([1, 1, 1])}, tasks=[hn.Task("b", "binary")])
    assert ds.class_counts("b").tolist() == [0, 3]  # n_classes long even when a class is absent
    ds = MultiTaskDataset({"a": NoLoading([0, 4, 4])})
    assert ds.class_counts("a").tolist() == [1, 0, 0, 0, 2]
    ds = MultiTaskDataset({"t": NoLoading([[1, 0, 1], [1, 0, 0]])})
    assert ds.class_counts("t").tolist() == [2, 0, 1]  # positives per label
    ds = MultiTaskDataset({"r": NoLoading([0.5, 1.5])}, tasks=[hn.Task("r", "regression")])
    with pytest.raises(ValueError, match="'r' is not a classification task"):
        ds.class_counts("r")
    ds = MultiTaskDataset({"r": NoLoading([0.5, 1.5])})
    with pytest.raises(ValueError, match="not class indices"):
        ds.class_counts("r")


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: MultiTaskDataset({}), TypeError, "non-empty mapping"),
        (lambda: MultiTaskDataset([NoLoading([0])]), TypeError, r"mapping \{task: dataset\}, got list"),
        (lambda: MultiTaskDataset({"a": TensorDataset(torch.zeros(0, 1), torch.zeros(0))}), ValueError,
         "The dataset of task 'a' is empty"),
        (lambda: MultiTaskDataset({"a": 3}), TypeError, "task 'a' is a int, which is not a map-style dataset"),
        (lambda: MultiTaskDataset({"a": torch.zeros(3)}), TypeError, r"wrap inputs and labels in .*TensorDataset"),
        (lambda: MultiTaskDataset({"a": TensorDataset(torch.zeros(2, 1), torch.zeros(2), torch.zeros(2))}),
         ValueError, r"TensorDataset of 3 tensors .*must be \(x, y\)"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, labels={"b": [0]}), ValueError,
         r"unknown task 'b'; the tasks are \['a'\]"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, labels={"a": [0, 1]}), ValueError,
         "labels\\['a'\\] has 2 entries but the dataset of task 'a' has 1 items"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, labels=[0]), TypeError, "labels= must be a mapping"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, tasks=[hn.Task("b", "binary")]), ValueError,
         r"missing \['a'\], unknown \['b'\]"),
        (lambda: MultiTaskDataset({"a": NoLoading([0])}, tasks=["a"]), TypeError, "names are the mapping's keys"),
        (lambda: MultiTaskDataset({"a": NoLoading([0, -1])}), ValueError,
         r"item 1 of its dataset has a missing label \(-1\).*Subset"),
        (lambda: MultiTaskDataset.shared(NoLoading([0]), tasks="a"), TypeError, r"tasks=\['a'\]"),
        (lambda: MultiTaskDataset.shared(NoLoading([0]), tasks=["a", hn.Task("b", "binary")]), TypeError,
         "all names or all"),
        (lambda: MultiTaskDataset.shared(NoLoading([0]), tasks=["a", "a"]), ValueError, "Duplicate"),
        (lambda: MultiTaskDataset.shared({"a": NoLoading([0])}, tasks=["a"]), TypeError, "not a dataset"),
        (lambda: MultiTaskDataset.shared(TensorDataset(torch.zeros(2, 1), torch.tensor([-1, -1])), tasks=["a"]),
         ValueError, "Task 'a' has no labelled sample: all 2 of its labels"),
        (lambda: MultiTaskDataset.shared(TensorDataset(torch.zeros(2, 1), torch.zeros(2, 3)), tasks=["a", "b"]),
         ValueError, r"shapes \[\(2, 1\), \(2, 3\)\]: for the 2 tasks .*Y of shape \[n, 2\]"),
        (lambda: MultiTaskDataset.shared(NoLoading([[0, 1]]), tasks=["a", "b"], labels={"a": [0, 1]}), ValueError,
         r"labels\['a'\] has 2 entries but the shared dataset has 1 items.*where missing"),
    ],
)
def test_construction_errors(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_label_checks_at_construction_name_task_value_index_and_fix():
    with pytest.raises(ValueError, match=r"Task 'a' \(multiclass\): label 5 at index 2 of the dataset of task 'a' "
                                         r"is not a class in \[0, 3\): set num_classes=6"):
        MultiTaskDataset({"a": NoLoading([0, 1, 5])}, tasks=[hn.Task("a", "multiclass", num_classes=3)])
    with pytest.raises(ValueError, match=r"label 2 at index 3 of the shared dataset .*binary labels are 0 or 1"):
        MultiTaskDataset.shared(NoLoading([0, -1, None, 2]), tasks=[hn.Task("b", "binary")])
    with pytest.raises(ValueError, match=r"vector of 3 values 0/1 \(num_classes=3\); found shape \(2,\)"):
        tags = TensorDataset(torch.zeros(2, 1), torch.ones(2, 2))
        MultiTaskDataset.shared(tags, tasks=[hn.Task("t", "multilabel", num_classes=3)])


def test_checks_of_scanned_labels_happen_when_they_are_read():
    ds = MultiTaskDataset({"a": Items([0, 7])}, tasks=[hn.Task("a", "multiclass", num_classes=3)])
    with pytest.warns(LabelScanWarning), pytest.raises(ValueError, match="label 7 at index 1"):
        ds.labels("a")


def test_item_structure_errors_say_what_was_found():
    ds = MultiTaskDataset({"a": Items([(1, 2)], spread=True)})
    with pytest.raises(ValueError, match=r"Item 0 of the dataset of task 'a': .*a tuple of 3 \(Tensor, int, int\)"):
        ds[0]
    ds = MultiTaskDataset.shared(Items([{"a": 1, "z": 0}]), tasks=["a", "b"])
    with pytest.raises(ValueError, match=r"Item 0 of the shared dataset: .*unknown task\(s\) \['z'\]"):
        ds[0]


# ------------------------------------------------------------------------------------ batches


def assert_same_batch(fast, slow):
    assert isinstance(fast, Batch)
    assert torch.equal(fast.inputs, slow.inputs) and fast.inputs.dtype == slow.inputs.dtype
    assert list(fast.masks) == list(slow.masks)  # same tasks, same order
    for t in slow.masks:
        assert torch.equal(fast.masks[t], slow.masks[t])
        assert fast.targets[t].dtype == slow.targets[t].dtype
        assert torch.equal(fast.targets[t], slow.targets[t])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-10, 9), min_size=1, max_size=12))
def test_getitems_equals_per_item_collate_mapping(indices):
    ds = per_task()
    fast = ds.__getitems__(indices)
    assert_same_batch(fast, collate([ds[i] for i in indices]))
    assert fast.indices.tolist() == [i % 10 for i in indices]


def test_getitems_homogeneous_and_mixed_batches():
    ds = per_task()
    for indices in ([8, 6, 9], [1, 0, 5], [7, 2, 6, 3], [0]):
        assert_same_batch(ds.__getitems__(indices), collate([ds[i] for i in indices]))
    mixed = ds.__getitems__([7, 2])
    assert mixed.tasks == ["b", "a"] and mixed.masks["a"].tolist() == [False, True]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=10))
def test_getitems_equals_per_item_collate_shared_with_missing_labels(indices):
    c = torch.tensor([0, 1, -1, 1, -1, 0])
    r = torch.tensor([0.5, NAN, 2.0, NAN, 1.0, 3.0])
    t = torch.tensor([[1, 0], [-1, -1], [0, 1], [1, 1], [-1, -1], [0, 0]])
    tasks = [hn.Task("c", "binary"), hn.Task("r", "regression"), hn.Task("t", "multilabel", num_classes=2)]
    ds = MultiTaskDataset.shared(TensorDataset(torch.arange(12.0).view(6, 2), c, r, t), tasks=tasks)
    fast = ds.__getitems__(indices)
    assert_same_batch(fast, collate([ds[i] for i in indices]))
    assert fast.indices.tolist() == indices


def test_getitems_column_table_subsets_and_dtype_promotion():
    table = TensorDataset(torch.arange(10.0).view(5, 2), torch.tensor([[0, 2], [-1, 1], [1, -1], [-1, -1], [0, 0]]))
    ds = MultiTaskDataset.shared(table, tasks=["u", "v"])
    for indices in ([1, 2, 3], [3], [2, 1, 0, 4]):
        assert_same_batch(ds.__getitems__(indices), collate([ds[i] for i in indices]))
    sub = MultiTaskDataset.shared(Subset(table, [4, 2, 1]), tasks=["u", "v"])
    assert_same_batch(sub.__getitems__([2, 0]), collate([sub[2], sub[0]]))
    assert sub.__getitems__([2, 0]).inputs.tolist() == [[2.0, 3.0], [8.0, 9.0]]
    parts = {
        "a": Subset(TensorDataset(torch.ones(4, 2), torch.arange(4)), [3, 1]),
        "b": TensorDataset(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1.0, 2.0])),
    }
    ds = MultiTaskDataset(parts)
    batch = ds.__getitems__([2, 0, 1])
    assert_same_batch(batch, collate([ds[2], ds[0], ds[1]]))
    assert batch.inputs.dtype == torch.float64 and batch.targets["a"].tolist() == [0, 3, 1]


def test_getitems_without_tensors_returns_items_and_uses_each_part_getitems():
    batched = Batched([7, 8, 9])
    plain = Items([0.5, 1.5])
    ds = MultiTaskDataset({"a": batched, "b": plain}, labels={"a": [7, 8, 9], "b": [0.5, 1.5]})
    items = ds.__getitems__([3, 2, 0, 4])
    assert batched.calls == [[2, 0]]  # one call for the part's indices, in batch order
    assert [y for _, y in items] == [{"b": 0.5}, {"a": 9}, {"a": 7}, {"b": 1.5}]
    assert [x[0].item() for x, _ in items] == [0.0, 2.0, 0.0, 1.0]
    # a part with tensors and one without: items, collated as usual
    tensors = TensorDataset(torch.zeros(2, 2), torch.tensor([1, 2]))
    ds = MultiTaskDataset({"a": tensors, "b": plain}, labels={"b": [0.5, 1.5]})
    mixed = ds.__getitems__([0, 2])
    assert isinstance(mixed, list) and mixed[1][1] == {"b": 0.5}
    assert_same_batch(collate(mixed), collate([ds[0], ds[2]]))


def test_getitems_keeps_ragged_tasks_as_lists():
    task = hn.Task("p", "regression", dim=2, ragged=True)
    ds = MultiTaskDataset({"p": TensorDataset(torch.zeros(3, 1), torch.ones(3, 2))}, tasks=[task])
    assert isinstance(ds.__getitems__([0, 1]), list)


def test_getitems_errors():
    ds = per_task()
    with pytest.raises(IndexError, match="Index 10 is out of range"):
        ds.__getitems__([1, 10])
    with pytest.raises(TypeError, match="integer indices"):
        ds.__getitems__([0.5])
    assert ds.__getitems__([]) == []


def test_dataloader_with_collate():
    ds = per_task()
    batches = list(DataLoader(ds, batch_size=4, collate_fn=collate))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches[1].tasks == ["a", "b"] and batches[1].masks["a"].tolist() == [True, True, False, False]
    assert torch.cat([b.inputs for b in batches]).tolist() == [ds[i][0].tolist() for i in range(10)]
    assert batches[2].indices.tolist() == [8, 9]


def test_dataloader_with_workers():
    ds = per_task()
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert torch.cat([b.indices for b in batches]).tolist() == list(range(10))
    assert torch.cat([b.targets["a"][b.masks["a"]] for b in batches if "a" in b.masks]).tolist() == [0, 1, 2, 0, 1, 2]


def test_the_callers_label_arrays_stay_writable():
    targets = np.array([1, 0, 1])
    ds = MultiTaskDataset({"a": NoLoading(targets)}, tasks=[hn.Task("a", "binary")])
    targets[0] = 0  # still the caller's to change
    assert ds.labels("a").flags.writeable is False


def test_a_tensor_dataset_subclass_with_its_own_getitem_is_not_indexed_around():
    class Doubled(TensorDataset):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return 2 * x, y

    ds = MultiTaskDataset({"a": Doubled(torch.ones(3, 2), torch.tensor([0, 1, 0]))})
    assert ds.labels("a").tolist() == [0, 1, 0]  # labels still read from the tensors
    items = ds.__getitems__([0, 2])
    assert isinstance(items, list) and collate(items).inputs.tolist() == [[2.0, 2.0], [2.0, 2.0]]


# ------------------------------------------------------------------------------------ memory of labels


def test_shared_labels_cost_a_small_factor_of_the_label_matrix():
    """10^6 samples x 20 binary tasks, an int8 matrix (20 MB) with a third of its labels missing.

    What the dataset keeps per task is its labelled values in their dtype (<= n bytes) and a bool mask
    (n bytes): at most 2x the matrix, plus per-task temporaries; int64 indices and labels per task would be
    16 bytes a label (about 11x here). tracemalloc traces NumPy's allocations (torch's are not, and the
    TensorDataset's label tensor is a view of the matrix).
    """
    import tracemalloc

    n, k = 10**6, 20
    labels = np.random.default_rng(0).integers(-1, 2, size=(n, k), dtype=np.int8)
    data = TensorDataset(torch.zeros(n, 1, dtype=torch.uint8), torch.from_numpy(labels))
    tasks = [hn.Task(f"t{j}", "binary") for j in range(k)]
    tracemalloc.start()
    try:
        ds = hn.data.MultiTaskDataset.shared(data, tasks=tasks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 3 * labels.nbytes, f"peak {peak / labels.nbytes:.2f}x the label matrix"
    # Kept in their dtype, aligned with task_indices, equal to the matrix's labelled entries.
    column = labels[:, 7]
    assert ds.labels("t7").dtype == np.int8
    np.testing.assert_array_equal(ds.task_indices("t7"), np.flatnonzero(column != -1))
    np.testing.assert_array_equal(ds.labels("t7"), column[column != -1])
    batch = ds.__getitems__([0, 1, 2, 3])
    np.testing.assert_array_equal(batch.masks["t7"].numpy(), column[:4] != -1)
