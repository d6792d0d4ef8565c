import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import hydranet as hn
from hydranet.losses import LOSSES, MultiTaskLoss, focal_loss, task_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def sig(v):
    return 1 / (1 + math.exp(-v))


def log_softmax(row, k):
    return row[k] - math.log(sum(math.exp(v) for v in row))


def test_masked_rows_are_never_read_and_all_missing_tasks_are_absent():
    tasks = [hn.Task("age", "regression"), hn.Task("race", "multiclass", num_classes=3), hn.Task("g", "binary")]
    outputs = {
        "age": torch.tensor([[1.0], [5.0], [2.0]]),
        "race": torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        "g": torch.tensor([[0.0], [2.0], [-1.0]]),
    }
    targets = {
        "age": torch.tensor([3.0, float("nan"), 2.5]),  # the NaN row is unlabelled filler
        "race": torch.tensor([0, 9, 1]),  # row 1's 9 is filler and must not be read
        "g": torch.tensor([1, 0, 0]),
    }
    masks = {
        "age": torch.tensor([True, False, True]),
        "race": torch.tensor([True, False, True]),
        "g": torch.tensor([False, False, False]),  # all missing: absent from the result
    }
    losses = MultiTaskLoss(tasks)(outputs, targets, masks)
    assert set(losses) == {"age", "race"}
    assert losses["age"].item() == pytest.approx((abs(1 - 3) + abs(2 - 2.5)) / 2)  # L1 by hand
    expected = -(log_softmax([2, 0, 0], 0) + log_softmax([0, 1, 0], 1)) / 2
    assert losses["race"].item() == pytest.approx(expected, rel=1e-6)


def test_tasks_without_targets_or_outputs_are_absent():
    tasks = [hn.Task("a", "regression"), hn.Task("b", "regression")]
    loss_fn = MultiTaskLoss(tasks)
    out = {"a": torch.zeros(2, 1), "b": torch.zeros(2, 1)}
    assert set(loss_fn(out, {"a": torch.ones(2)})) == {"a"}  # b ran but the batch has no b labels
    assert set(loss_fn({"b": out["b"]}, {"a": torch.ones(2), "b": torch.ones(2)})) == {"b"}
    assert loss_fn(out, {}) == {}


def test_regression_losses_by_formula():
    out = torch.tensor([[1.0, 0.0], [3.0, -2.0]])
    y = torch.tensor([[0.0, 0.5], [1.0, 0.0]])
    d = (out - y).abs()  # 1, .5, 2, 2

    def loss(name, **options):
        task = hn.Task("r", "regression", dim=2, loss=name, loss_options=options)
        return task_loss(task)(out, y).item()

    assert loss(None) == pytest.approx(d.mean().item())
    assert loss("mse") == pytest.approx((d**2).mean().item())
    huber = lambda e, delta: 0.5 * e * e if e <= delta else delta * (e - 0.5 * delta)  # noqa: E731
    assert loss("huber", delta=1.5) == pytest.approx(sum(huber(e, 1.5) for e in d.flatten().tolist()) / 4)
    smooth = lambda e, beta: 0.5 * e * e / beta if e < beta else e - 0.5 * beta  # noqa: E731
    assert loss("smooth_l1", beta=0.8) == pytest.approx(sum(smooth(e, 0.8) for e in d.flatten().tolist()) / 4)
    one = task_loss(hn.Task("r", "regression"))
    assert one(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0])).item() == pytest.approx(1.5)  # [B] targets


def test_binary_and_multilabel_bce_by_formula():
    tasks = [hn.Task("g", "binary"), hn.Task("m", "multilabel", num_classes=2)]
    z = torch.tensor([[0.5], [-2.0]])
    zm = torch.tensor([[1.0, -1.0], [0.0, 3.0]])
    targets = {"g": torch.tensor([1, 0]), "m": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    losses = MultiTaskLoss(tasks)({"g": z, "m": zm}, targets)
    expected_g = -(math.log(sig(0.5)) + math.log(1 - sig(-2.0))) / 2
    expected_m = -(math.log(sig(1.0)) + math.log(1 - sig(-1.0)) + math.log(1 - sig(0.0)) + math.log(sig(3.0))) / 4
    assert losses["g"].item() == pytest.approx(expected_g, rel=1e-6)
    assert losses["m"].item() == pytest.approx(expected_m, rel=1e-6)


def test_pos_weight_by_formula():
    task = hn.Task("g", "binary", loss_options={"pos_weight": 3.0})
    value = task_loss(task)(torch.tensor([[0.5], [-2.0]]), torch.tensor([1, 0])).item()
    assert value == pytest.approx(-(3 * math.log(sig(0.5)) + math.log(1 - sig(-2.0))) / 2, rel=1e-6)
    multi = hn.Task("m", "multilabel", num_classes=2, loss_options={"pos_weight": [2.0, 0.5]})
    z, y = torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    expected = -(2 * math.log(sig(1.0)) + 0.5 * math.log(sig(-1.0))) / 2
    assert task_loss(multi)(z, y).item() == pytest.approx(expected, rel=1e-6)


def test_class_weights_and_label_smoothing_match_torch_and_the_formula():
    torch.manual_seed(0)
    out, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    w, eps = [1.0, 2.0, 3.0], 0.1
    task = hn.Task("c", "multiclass", num_classes=3, loss_options={"class_weights": w, "label_smoothing": eps})
    value = task_loss(task)(out, y).item()
    assert value == pytest.approx(F.cross_entropy(out, y, weight=torch.tensor(w), label_smoothing=eps).item(), rel=1e-6)
    # the formula: sum_i sum_c w_c q_ic (-log p_ic) / sum_i w_{y_i}, with q = (1 - eps) onehot + eps / C
    logp = out.log_softmax(1).tolist()
    num = sum(
        w[c] * ((1 - eps) * (c == int(y[i])) + eps / 3) * -logp[i][c] for i in range(5) for c in range(3)
    )
    assert value == pytest.approx(num / sum(w[int(k)] for k in y), rel=1e-5)


def test_focal_loss_by_formula():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, 2])
    gamma, alpha = 2.0, [0.25, 0.5, 1.0]
    task = hn.Task("c", "multiclass", num_classes=3, loss="focal", loss_options={"gamma": gamma, "alpha": alpha})
    expected = 0.0
    for row, k in zip(z.tolist(), y.tolist()):
        p = math.exp(log_softmax(row, k))
        expected += -alpha[k] * (1 - p) ** gamma * math.log(p)
    assert task_loss(task)(z, y).item() == pytest.approx(expected / 2, rel=1e-6)

    binary = hn.Task("b", "binary", loss="focal", loss_options={"gamma": 1.5, "alpha": 0.25})
    zb, yb = torch.tensor([[1.0], [-0.5], [3.0]]), torch.tensor([1, 0, 0])
    expected = 0.0
    for v, t in zip([1.0, -0.5, 3.0], [1, 0, 0]):
        pt = sig(v) if t == 1 else 1 - sig(v)
        expected += -(0.25 if t == 1 else 0.75) * (1 - pt) ** 1.5 * math.log(pt)
    assert task_loss(binary)(zb, yb).item() == pytest.approx(expected / 3, rel=1e-6)

    multilabel = hn.Task("m", "multilabel", num_classes=2, loss="focal")  # gamma 2, no alpha
    zm, ym = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 0.0]])
    expected = sum(-(sig(v)) ** 2 * math.log(1 - sig(v)) for v in [1.0, -2.0]) / 2
    assert task_loss(multilabel)(zm, ym).item() == pytest.approx(expected, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-6, 6), min_size=3, max_size=3),
    st.integers(0, 2),
    st.sampled_from(["multiclass", "multilabel"]),
)
def test_focal_with_gamma_zero_is_the_cross_entropy(values, label, kind):
    z = torch.tensor([values])
    if kind == "multiclass":
        y = torch.tensor([label])
        reference = F.cross_entropy(z, y)
    else:
        y = (torch.arange(3) == label).float().unsqueeze(0)
        reference = F.binary_cross_entropy_with_logits(z, y)
    assert focal_loss(z, y, kind, gamma=0.0).item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)


def test_confident_focal_loss_stays_finite_and_tiny():
    value = focal_loss(torch.tensor([[40.0, 0.0]]), torch.tensor([0]), "multiclass", gamma=2.0)
    assert torch.isfinite(value) and value.item() < 1e-30


def test_custom_loss_callable_and_ragged_targets():
    seen = {}

    def count_loss(output, target):
        seen["target"] = target
        return (output.sum(1) - torch.tensor([float(len(t)) for t in target])).abs().mean()

    task = hn.Task("boxes", "regression", ragged=True, loss=count_loss)
    out = torch.tensor([[1.0], [9.0], [3.0]])
    targets = {"boxes": [torch.zeros(2, 4), None, torch.zeros(1, 4)]}
    losses = MultiTaskLoss([task])({"boxes": out}, targets, {"boxes": torch.tensor([True, False, True])})
    assert [t.shape for t in seen["target"]] == [(2, 4), (1, 4)]  # only the labelled targets, as a list
    assert losses["boxes"].item() == pytest.approx((abs(1 - 2) + abs(3 - 1)) / 2)
    mse = hn.Task("r", "regression", loss=lambda o, t: ((o.squeeze(1) - t) ** 2).sum())
    assert task_loss(mse)(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0])).item() == 5.0
    bad = hn.Task("r", "regression", loss=lambda o, t: (o - t) ** 2)
    with pytest.raises(ValueError, match="must return a scalar tensor"):
        task_loss(bad)(torch.ones(2, 1), torch.zeros(2, 1))


def test_gradients_flow_only_through_labelled_rows():
    task = hn.Task("c", "multiclass", num_classes=3)
    out = torch.randn(4, 3, requires_grad=True)
    mask = torch.tensor([True, False, True, False])
    loss = MultiTaskLoss([task])({"c": out}, {"c": torch.tensor([0, -1, 2, -1])}, {"c": mask})
    loss["c"].backward()
    assert out.grad[[1, 3]].abs().sum() == 0 and out.grad[[0, 2]].abs().sum() > 0


def test_class_out_of_range_names_task_value_range_and_fix():
    task = hn.Task("race", "multiclass", num_classes=5)
    loss_fn = MultiTaskLoss([task])
    out = torch.zeros(3, 5)
    expected = (
        r"Task 'race' \(multiclass, 5 classes\): target class 7 at batch row 2 is out of range; "
        r"valid classes are 0..4. Fix: map the labels to 0..4.*num_classes=8"
    )
    with pytest.raises(ValueError, match=expected):
        loss_fn({"race": out}, {"race": torch.tensor([0, 9, 7])}, {"race": torch.tensor([True, False, True])})
    with pytest.raises(ValueError, match=r"target class -1 .* -1 marks a missing label: set masks\['race'\] to False"):
        loss_fn({"race": out}, {"race": torch.tensor([0, -1, 1])})
    with pytest.raises(ValueError, match="not a class index"):
        loss_fn({"race": out}, {"race": torch.tensor([0.0, 1.5, 1.0])})
    assert loss_fn({"race": out}, {"race": torch.tensor([0.0, 4.0, 1.0])})["race"].item() == pytest.approx(math.log(5))


def test_value_errors_for_binary_multilabel_and_regression():
    tasks = [hn.Task("g", "binary"), hn.Task("m", "multilabel", num_classes=2), hn.Task("r", "regression")]
    loss_fn = MultiTaskLoss(tasks)
    with pytest.raises(ValueError, match=r"Task 'g' \(binary\): target 2 at batch row 1 is not 0 or 1.*'multiclass'"):
        loss_fn({"g": torch.zeros(2, 1)}, {"g": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match=r"Task 'm' \(multilabel, 2 labels\): target \[1, 0.5\] at batch row 1"):
        loss_fn({"m": torch.zeros(2, 2)}, {"m": torch.tensor([[0.0, 1.0], [1.0, 0.5]])})
    with pytest.raises(ValueError, match=r"Task 'r' \(regression\): target nan at batch row 0 is marked labelled"):
        loss_fn({"r": torch.zeros(2, 1)}, {"r": torch.tensor([float("nan"), 1.0])})
    unchecked = MultiTaskLoss([hn.Task("r", "regression")], validate=False)
    assert torch.isnan(unchecked({"r": torch.zeros(2, 1)}, {"r": torch.tensor([float("nan"), 1.0])})["r"])


def test_shape_errors_name_the_expected_layout():
    loss_fn = MultiTaskLoss([hn.Task("race", "multiclass", num_classes=5), hn.Task("m", "multilabel", num_classes=3)])
    with pytest.raises(ValueError, match=r"Task 'race' \(multiclass, 5 classes\) needs outputs \[batch, 5\], got \[2"):
        loss_fn({"race": torch.zeros(2, 3)}, {"race": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"targets of shape \[2, 5\]; expected class indices \[batch\].*multilabel"):
        loss_fn({"race": torch.zeros(2, 5)}, {"race": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match=r"targets of shape \[2\] for outputs \[2, 3\]; expected \[batch, 3\]"):
        loss_fn({"m": torch.zeros(2, 3)}, {"m": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match=r"masks\['m'\] must be a bool tensor \[batch\] = \[2\]"):
        loss_fn({"m": torch.zeros(2, 3)}, {"m": torch.zeros(2, 3)}, {"m": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"Output for unknown task 'rase'.*Did you mean 'race'"):
        loss_fn({"rase": torch.zeros(2, 5)}, {"rase": torch.tensor([0, 1])})


def test_loss_option_errors_at_construction():
    with pytest.raises(ValueError, match=r"unknown loss 'mae'; choose one of l1, mse, huber, smooth_l1"):
        task_loss(hn.Task("r", "regression", loss="mae"))
    with pytest.raises(ValueError, match=r"unknown loss option\(s\) \['focal_gamma'\].*Did you mean 'gamma'"):
        task_loss(hn.Task("c", "binary", loss="focal", loss_options={"focal_gamma": 2}))
    with pytest.raises(ValueError, match=r"allowed: pos_weight"):
        task_loss(hn.Task("c", "binary", loss_options={"class_weights": [1, 2]}))
    with pytest.raises(ValueError, match=r"class_weights needs 3 values"):
        task_loss(hn.Task("c", "multiclass", num_classes=3, loss_options={"class_weights": [1, 2]}))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\)"):
        task_loss(hn.Task("c", "multiclass", num_classes=3, loss_options={"label_smoothing": 1.0}))
    with pytest.raises(ValueError, match=r"alpha weighs the positives"):
        task_loss(hn.Task("c", "binary", loss="focal", loss_options={"alpha": 2.0}))
    with pytest.raises(ValueError, match=r"is ragged.*loss=my_loss"):
        task_loss(hn.Task("b", "regression", ragged=True))
    assert set(LOSSES) == {"regression", "binary", "multiclass", "multilabel"}


def test_weights_follow_the_module_and_outputs_are_computed_in_float32():
    task = hn.Task("c", "multiclass", num_classes=3, loss_options={"class_weights": [1.0, 2.0, 3.0]})
    loss_fn = MultiTaskLoss([task])
    assert "losses.c.class_weights" in loss_fn.state_dict()
    out = torch.randn(4, 3).to(torch.bfloat16)
    value = loss_fn({"c": out}, {"c": torch.tensor([0, 1, 2, 0])})["c"]
    assert value.dtype == torch.float32
    expected = F.cross_entropy(out.float(), torch.tensor([0, 1, 2, 0]), weight=torch.tensor([1.0, 2.0, 3.0]))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_negative_class_names_the_missing_marker_not_a_class_count():
    # A label of -3 once got "declare num_classes=-2": a negative label is never a count to declare.
    loss = hn.losses.MultiTaskLoss([hn.Task("c", "multiclass", num_classes=3)])
    mask = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError) as err:
        loss({"c": torch.randn(4, 3)}, {"c": torch.tensor([0, 1, -3, 2])}, {"c": mask})
    assert "num_classes=" not in str(err.value) and "only negative label is -1" in str(err.value)
    with pytest.raises(ValueError, match="declare num_classes=6"):
        loss({"c": torch.randn(4, 3)}, {"c": torch.tensor([0, 1, 5, 2])}, {"c": mask})
