import pytest

import hydranet as hn
from hydranet.tasks import as_task_dict


@pytest.mark.parametrize(
    ("task", "out", "n_classes"),
    [
        (hn.Task("age", "regression"), 1, 0),
        (hn.Task("box", "regression", dim=4), 4, 0),
        (hn.Task("gender", "binary"), 1, 2),
        (hn.Task("race", "multiclass", num_classes=5), 5, 5),
        (hn.Task("attrs", "multilabel", num_classes=14), 14, 14),
    ],
)
def test_output_size_follows_kind(task, out, n_classes):
    assert task.out_features == out
    assert task.n_classes == n_classes
    assert task.is_classification == (task.kind != "regression")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "x", "kind": "ordinal"}, "unknown kind"),
        ({"name": "x", "kind": "multiclass"}, "num_classes >= 2"),
        ({"name": "x", "kind": "multiclass", "num_classes": 1}, "num_classes >= 2"),
        ({"name": "x", "kind": "multilabel"}, "multilabel task needs"),
        ({"name": "x", "kind": "binary", "num_classes": 3}, "kind='multiclass'"),
        ({"name": "x", "kind": "regression", "num_classes": 3}, "no classes"),
        ({"name": "x", "kind": "binary", "dim": 2}, "dim applies"),
        ({"name": "not valid", "kind": "binary"}, "not valid"),
        ({"name": "", "kind": "binary"}, "not valid"),
        ({"name": "x", "kind": "multiclass", "num_classes": 3, "class_names": ["a"]}, "1 class names for 3"),
        ({"name": "x", "kind": "binary", "weight": -1.0}, "weight"),
    ],
)
def test_invalid_tasks_are_rejected_with_a_hint(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hn.Task(**kwargs)


def test_round_trip_through_dict():
    task = hn.Task("race", "multiclass", num_classes=3, class_names=["a", "b", "c"], loss_options={"label_smoothing": 0.1})
    assert hn.Task.from_dict(task.to_dict()) == task


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="colour"):
        hn.Task.from_dict({"name": "a", "kind": "binary", "colour": "red"})


def test_as_task_dict_rejects_duplicates_and_empties():
    a = hn.Task("a", "binary")
    assert as_task_dict([a]) == {"a": a}
    assert as_task_dict({"a": a}) == {"a": a}
    with pytest.raises(ValueError, match="Duplicate"):
        as_task_dict([a, hn.Task("a", "regression")])
    with pytest.raises(ValueError, match="No tasks"):
        as_task_dict([])
    with pytest.raises(TypeError, match="hydranet.Task"):
        as_task_dict(["a"])


def test_a_task_read_back_from_its_dict_equals_the_original():
    task = hn.Task("race", "multiclass", num_classes=3, class_names=("a", "b", "c"), metrics=["accuracy"])
    assert hn.Task.from_dict(task.to_dict()) == task
    assert task.class_names == ["a", "b", "c"]
