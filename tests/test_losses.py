import math

import pytest
import torch
import torch.nn.functional as F

import hydranet as hn
from hydranet.losses import MultiTaskLoss, focal_loss, task_loss


def test_losses_over_labelled_rows_match_hand_computed_values():
    tasks = [hn.Task("age", "regression"), hn.Task("race", "multiclass", num_classes=3), hn.Task("g", "binary")]
    outputs = {
        "age": torch.tensor([[1.0], [5.0], [2.0]]),
        "race": torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        "g": torch.tensor([[0.0], [2.0], [-1.0]]),
    }
    targets = {"age": torch.tensor([3.0, 0.0, 2.5]), "race": torch.tensor([0, 9, 1]), "g": torch.tensor([1, 0, 0])}
    masks = {
        "age": torch.tensor([True, False, True]),
        "race": torch.tensor([True, False, True]),   # row 1's 9 is filler and must not be read
        "g": torch.tensor([False, False, False]),     # all missing: absent from the result
    }
    losses = MultiTaskLoss(tasks)(outputs, targets, masks)
    assert set(losses) == {"age", "race"}
    assert losses["age"].item() == pytest.approx((2.0 + 0.5) / 2)
    ce0 = -(2 - math.log(math.exp(2) + 2))
    ce2 = -(1 - math.log(math.exp(1) + 2))
    assert losses["race"].item() == pytest.approx((ce0 + ce2) / 2)


def test_binary_and_multilabel_bce_by_formula():
    tasks = [hn.Task("g", "binary"), hn.Task("m", "multilabel", num_classes=2)]
    z = torch.tensor([[0.5], [-2.0]])
    zm = torch.tensor([[1.0, -1.0], [0.0, 3.0]])
    ones = torch.ones(2, dtype=torch.bool)
    losses = MultiTaskLoss(tasks)({"g": z, "m": zm}, {"g": torch.tensor([1, 0]), "m": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, {"g": ones, "m": ones})
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected_g = -(math.log(sig(0.5)) + math.log(1 - sig(-2.0))) / 2
    expected_m = -(math.log(sig(1.0)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(0.0)) + math.log(sig(3.0))) / 4
    assert losses["g"].item() == pytest.approx(expected_g, rel=1e-6)
    assert losses["m"].item() == pytest.approx(expected_m, rel=1e-6)


def test_class_weights_label_smoothing_and_mse():
    out, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    task = hn.Task("c", "multiclass", num_classes=3, loss_options={"class_weights": [1.0, 2.0, 3.0], "label_smoothing": 0.1})
    ref = F.cross_entropy(out, y, weight=torch.tensor([1.0, 2.0, 3.0]), label_smoothing=0.1)
    assert task_loss(task)(out, y).item() == pytest.approx(ref.item())
    mse = task_loss(hn.Task("r", "regression", loss="mse"))(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]]))
    assert mse.item() == pytest.approx((1 + 4) / 2)


def test_focal_loss_formula():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[torch.arange(2), y]
    expected = (-(1 - p) ** 2 * p.log()).mean()
    assert focal_loss(logits, y, "multiclass", gamma=2.0).item() == pytest.approx(expected.item())
    z, t = torch.tensor([1.5, -0.5]), torch.tensor([1.0, 0.0])
    pt = torch.sigmoid(z) * t + (1 - torch.sigmoid(z)) * (1 - t)
    expected = (-0.25 * t - 0.75 * (1 - t)) * (1 - pt) ** 2 * pt.log()
    assert focal_loss(z, t, "binary", gamma=2.0, alpha=0.25).item() == pytest.approx(expected.mean().item(), rel=1e-6)


def test_custom_and_ragged_losses():
    boxes = hn.Task("boxes", "regression", dim=4, ragged=True, loss=lambda out, targets: out.sum() * 0 + len(targets))
    out = {"boxes": torch.zeros(3, 4)}
    targets = {"boxes": [torch.zeros(2, 4), None, torch.zeros(1, 4)]}
    masks = {"boxes": torch.tensor([True, False, True])}
    assert MultiTaskLoss([boxes])(out, targets, masks)["boxes"].item() == 2


@pytest.mark.parametrize(
    ("task", "output", "target", "match"),
    [
        (hn.Task("c", "multiclass", num_classes=3), torch.zeros(2, 3), torch.tensor([0, 3]), r"class index 3 is out of range \[0, 3\)"),
        (hn.Task("c", "multiclass", num_classes=3), torch.zeros(2, 4), torch.tensor([0, 1]), r"shape \[batch, 3\]"),
        (hn.Task("g", "binary"), torch.zeros(2, 1), torch.tensor([0, 2]), "must be 0 or 1"),
        (hn.Task("r", "regression"), torch.zeros(2, 1), torch.tensor([0.0, float("nan")]), "NaN in targets"),
        (hn.Task("r", "regression", dim=2), torch.zeros(2, 2), torch.zeros(2, 3), "3 values per sample"),
    ],
)
def test_bad_targets_raise_clear_errors(task, output, target, match):
    masks = {task.name: torch.ones(2, dtype=torch.bool)}
    with pytest.raises(ValueError, match=match):
        MultiTaskLoss([task])({task.name: output}, {task.name: target}, masks)


def test_bad_loss_settings():
    with pytest.raises(ValueError, match="unknown loss option"):
        task_loss(hn.Task("c", "multiclass", num_classes=2, loss_options={"gama": 2}))
    with pytest.raises(ValueError, match="focal loss applies to classification"):
        task_loss(hn.Task("r", "regression", loss="focal"))
    with pytest.raises(ValueError, match="unknown regression loss"):
        task_loss(hn.Task("r", "regression", loss="l3"))
