import pickle

import numpy as np
import pytest
import torch

from hydranet.data._collate import Batch, collate, make_collate


def test_masks_mark_exactly_the_labelled_samples():
    samples = [
        (torch.zeros(2), {"a": 1}),
        (torch.ones(2), {"b": 2.5}),
        (torch.full((2,), 2.0), {"a": 0, "b": -1.0}),
    ]
    batch = collate(samples)
    assert batch.inputs.shape == (3, 2)
    assert batch.masks["a"].tolist() == [True, False, True]
    assert batch.masks["b"].tolist() == [False, True, True]
    assert batch.targets["a"][batch.masks["a"]].tolist() == [1, 0]
    assert batch.targets["b"][batch.masks["b"]].tolist() == [2.5, -1.0]
    assert batch.targets["a"].dtype == torch.int64
    assert batch.targets["b"].dtype == torch.float32
    assert batch.tasks == ["a", "b"]
    assert batch.counts() == {"a": 2, "b": 2}
    assert len(batch) == 3


def test_homogeneous_batch_has_one_task():
    batch = collate([(np.zeros(3, dtype=np.float32), {"a": i}) for i in range(4)])
    assert batch.tasks == ["a"]
    assert batch.masks["a"].all()
    assert batch.targets["a"].tolist() == [0, 1, 2, 3]


def test_ragged_targets_stay_a_list():
    boxes = [torch.rand(n, 4) for n in (2, 0, 5)]
    samples = [(torch.zeros(1), {"boxes": b, "cls": i}) for i, b in enumerate(boxes)]
    samples.append((torch.zeros(1), {"cls": 3}))
    batch = collate(samples)
    out = batch.targets["boxes"]
    assert isinstance(out, list) and len(out) == 4
    assert [None if t is None else t.shape[0] for t in out] == [2, 0, 5, None]
    assert batch.masks["boxes"].tolist() == [True, True, True, False]


def test_declared_ragged_task_is_a_list_even_with_equal_shapes():
    samples = [(torch.zeros(1), {"boxes": torch.rand(2, 4)}) for _ in range(2)]
    assert isinstance(collate(samples, ragged=["boxes"]).targets["boxes"], list)
    fn = pickle.loads(pickle.dumps(make_collate(["boxes"])))
    assert isinstance(fn(samples).targets["boxes"], list)


def test_dict_and_tuple_inputs_are_stacked_per_key():
    samples = [({"img": torch.zeros(2, 2), "meta": torch.ones(3)}, {"a": 0}) for _ in range(3)]
    batch = collate(samples)
    assert batch.inputs["img"].shape == (3, 2, 2)
    assert batch.inputs["meta"].shape == (3, 3)


def test_inputs_of_different_shapes_name_the_sample():
    samples = [(torch.zeros(3, 8, 8), {"a": 0}), (torch.zeros(3, 9, 8), {"a": 1})]
    with pytest.raises(ValueError, match=r"different shapes.*dataset index 11"):
        collate(samples, indices=[10, 11])


def test_bad_sample_structure_says_what_to_do():
    with pytest.raises(TypeError, match="MultiTaskDataset"):
        collate([(torch.zeros(1), 3)])
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_batch_passes_through_and_moves():
    batch = collate([(torch.zeros(2), {"a": 1})])
    assert collate(batch) is batch
    moved = batch.to("cpu")
    inputs, targets, masks = moved
    assert torch.equal(inputs, batch.inputs) and targets["a"].tolist() == [1] and masks["a"].tolist() == [True]
    assert isinstance(moved, Batch)


def test_works_as_a_dataloader_collate_fn():
    data = [(torch.full((2,), float(i)), {"a": i % 3} if i % 2 else {"b": float(i)}) for i in range(10)]
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sum(int(b.masks.get("a", torch.zeros(0)).sum()) for b in batches) == 5
