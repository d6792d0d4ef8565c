r"""Task losses over the labelled samples of a batch.

A task's loss is the mean over the rows labelled for it, :math:`L_t = \frac{1}{|M_t|}\sum_{i \in M_t}
\ell_t(\hat y_i, y_i)` (a weighted mean with ``class_weights``, as in ``F.cross_entropy``), with
:math:`M_t` = the rows where ``masks[t]`` is true. Rows outside :math:`M_t` are never read: their targets
are filler. A task with no labelled row is absent from the result (never a NaN, never a zero that drags
averages down).

Default loss per kind, and the ``Task.loss`` names and ``Task.loss_options`` each accepts:

==============  ===========================  ==============================================================
kind            ``loss``                     ``loss_options``
==============  ===========================  ==============================================================
regression      ``"l1"`` (default)           —
                ``"mse"``                    —
                ``"huber"``                  ``delta`` (1.0)
                ``"smooth_l1"``              ``beta`` (1.0)
binary          ``"bce"`` (default)          ``pos_weight``: weight of the positive class
multiclass      ``"cross_entropy"`` (def.)   ``class_weights`` ``[C]``, ``label_smoothing`` in [0, 1)
multilabel      ``"bce"`` (default)          ``pos_weight``: one number, or one per label
classification  ``"focal"``                  ``gamma`` (2.0), ``alpha``
==============  ===========================  ==============================================================

Focal loss (Lin et al., ICCV 2017), with :math:`p_t` the predicted probability of the true class (of the
true value of each label for binary and multilabel):

.. math:: \mathrm{FL} = -\alpha_t\,(1 - p_t)^{\gamma}\,\log p_t

For binary and multilabel, ``alpha`` weighs positives (:math:`\alpha_t = \alpha` for :math:`y = 1`,
:math:`1 - \alpha` for :math:`y = 0`; one number or one per label); for multiclass it is one weight per
class (:math:`\alpha_t = \alpha_{y}`). :math:`\gamma = 0` without ``alpha`` is the cross-entropy.

A callable ``Task.loss(output, target) -> scalar`` replaces the default; it receives the labelled rows
only (for a ragged task, the list of labelled targets) and is not validated.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hydranet.tasks import MISSING_INT, Task, TaskDict, as_task_dict

__all__ = ["LOSSES", "DEFAULT_LOSSES", "MultiTaskLoss", "TaskLoss", "task_loss", "focal_loss"]

DEFAULT_LOSSES: dict[str, str] = {
    "regression": "l1",
    "binary": "bce",
    "multiclass": "cross_entropy",
    "multilabel": "bce",
}

#: ``{kind: {loss name: allowed loss_options}}``.
LOSSES: dict[str, dict[str, tuple[str, ...]]] = {
    "regression": {"l1": (), "mse": (), "huber": ("delta",), "smooth_l1": ("beta",)},
    "binary": {"bce": ("pos_weight",), "focal": ("gamma", "alpha")},
    "multiclass": {"cross_entropy": ("class_weights", "label_smoothing"), "focal": ("gamma", "alpha")},
    "multilabel": {"bce": ("pos_weight",), "focal": ("gamma", "alpha")},
}


def focal_loss(
    logits: Tensor, target: Tensor, kind: str, gamma: float = 2.0, alpha: float | Tensor | None = None
) -> Tensor:
    r"""Mean focal loss :math:`-\alpha_t (1 - p_t)^\gamma \log p_t` over samples (and labels).

    Args:
        logits: ``[N, C]`` class logits (multiclass) or ``[N, C]`` logits of independent labels.
        target: ``[N]`` class indices (multiclass) or ``[N, C]`` 0/1 values.
        kind: ``"multiclass"``, or ``"binary"`` / ``"multilabel"``.
        gamma: focusing parameter :math:`\gamma \ge 0`.
        alpha: multiclass: per-class weights ``[C]`` (or one number); otherwise the weight of
            positives (one number or ``[C]``), negatives getting :math:`1 - \alpha`.
    """
    if kind == "multiclass":
        log_p = F.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)
        weight = None if alpha is None else (alpha[target] if isinstance(alpha, Tensor) and alpha.ndim else alpha)
    else:
        log_p = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        weight = None if alpha is None else target * alpha + (1 - target) * (1 - alpha)
    # 1 - p_t computed as -expm1(log p_t): exact for confident predictions, where 1 - exp(.) cancels
    loss = -((-torch.expm1(log_p)).clamp_min(0) ** gamma) * log_p
    if weight is not None:
        loss = weight * loss
    return loss.mean()


def _number(value: Any, what: str, low: float, high: float | None = None, *, open_high: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}.") from None
    above = high is not None and (number >= high if open_high else number > high)
    if not number >= low or above:
        bound = f"[{low}, {high}{')' if open_high else ']'}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be in {bound}, got {value!r}.")
    return number


def _vector(value: Any, what: str, size: int | None, *, scalar_ok: bool) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if tensor.ndim == 0 and scalar_ok:
        return tensor
    if tensor.ndim != 1 or (size is not None and tensor.numel() != size):
        expected = f"{size} values" + (" or one number" if scalar_ok else "")
        raise ValueError(f"{what} needs {expected}, got {list(tensor.shape) or value!r}.")
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(f"{what} must be finite and >= 0, got {value!r}.")
    return tensor


class TaskLoss(nn.Module):
    """The loss of one task: ``loss(output, target) -> scalar``, over rows that are all labelled.

    Built from ``task.loss`` and ``task.loss_options`` (see the module docstring); options are checked
    here, at construction. Weight tensors are buffers: they follow ``.to(device)``.
    """

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task
        self.custom: Callable[..., Any] | None = task.loss if callable(task.loss) else None
        where = f"Task {task.name!r} ({task.kind})"
        options = dict(task.loss_options)
        if self.custom is not None:
            self.loss_name = getattr(task.loss, "__name__", "custom")
            if options:
                raise ValueError(f"{where}: loss_options apply to named losses; bind them into your loss callable.")
            return
        if task.ragged:
            raise ValueError(
                f"{where} is ragged: its targets are lists, which no built-in loss reads. Give it a loss callable, "
                "Task(..., ragged=True, loss=my_loss) with my_loss(outputs_of_labelled_rows, list_of_targets) "
                "-> scalar."
            )
        choices = LOSSES[task.kind]
        name = DEFAULT_LOSSES[task.kind] if task.loss is None else task.loss
        if name not in choices:
            close = difflib.get_close_matches(str(name), list(choices), n=1)
            raise ValueError(
                f"{where}: unknown loss {name!r}; choose one of {', '.join(choices)}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + ", or pass a callable loss(output, target) -> scalar."
            )
        allowed = choices[name]
        unknown = [k for k in options if k not in allowed]
        if unknown:
            hints = [m for k in unknown for m in difflib.get_close_matches(k, allowed, n=1)]
            raise ValueError(
                f"{where}: unknown loss option(s) {unknown} for loss {name!r}; allowed: "
                f"{', '.join(allowed) or 'none'}." + (f" Did you mean {hints[0]!r}?" if hints else "")
            )
        self.loss_name = name
        c = task.n_classes if task.kind != "binary" else 1
        self.delta = _number(options.get("delta", 1.0), f"{where}: delta", 0.0) if name == "huber" else None
        self.beta = _number(options.get("beta", 1.0), f"{where}: beta", 0.0) if name == "smooth_l1" else None
        self.label_smoothing = _number(
            options.get("label_smoothing", 0.0), f"{where}: label_smoothing", 0.0, 1.0, open_high=True
        )
        self.gamma = _number(options.get("gamma", 2.0), f"{where}: gamma", 0.0)
        if name == "huber" and self.delta == 0:
            raise ValueError(f"{where}: delta must be > 0.")
        self.class_weights: Tensor | None
        self.pos_weight: Tensor | None
        self.alpha: Tensor | None
        weights = options.get("class_weights")
        if weights is not None:
            weights = _vector(weights, f"{where}: class_weights", c, scalar_ok=False)
        self.register_buffer("class_weights", weights)
        pos = options.get("pos_weight")
        if pos is not None:
            pos = _vector(pos, f"{where}: pos_weight", c if task.kind == "multilabel" else None, scalar_ok=True)
        self.register_buffer("pos_weight", pos)
        if self.pos_weight is not None and self.pos_weight.ndim == 1 and task.kind == "binary":
            raise ValueError(f"{where}: pos_weight is one number for a binary task, got {options['pos_weight']!r}.")
        alpha = options.get("alpha")
        if alpha is not None:
            alpha = _vector(alpha, f"{where}: alpha", c, scalar_ok=True)
            if task.kind != "multiclass" and bool((alpha > 1).any()):
                raise ValueError(
                    f"{where}: alpha weighs the positives and must be in [0, 1], got {options['alpha']!r}."
                )
        self.register_buffer("alpha", alpha)

    def extra_repr(self) -> str:
        return f"task={self.task.name!r}, loss={self.loss_name!r}"

    # --- shapes: cheap, always checked -------------------------------------------------------------
    def prepare(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Check the shapes of output and target rows and bring them to the loss's layout (float32 outputs)."""
        task, n = self.task, output.shape[0]
        k = task.out_features
        what = f"Task {task.name!r} ({task.kind}" + (f", {task.n_classes} classes)" if task.is_classification else ")")
        if output.ndim == 1 and k == 1:
            output = output.unsqueeze(1)
        if output.ndim != 2 or output.shape[1] != k:
            raise ValueError(
                f"{what} needs outputs [batch, {k}], got {list(output.shape)}. Fix: give the head {k} outputs, e.g. "
                "let HydraNet build it from the task."
            )
        if target.shape[0] != n:
            raise ValueError(f"{what}: {target.shape[0]} target rows for {n} output rows.")
        out = output.float()
        if task.kind == "multiclass":
            if target.shape not in ((n,), (n, 1)):
                raise ValueError(
                    f"{what}: targets of shape {list(target.shape)}; expected class indices [batch] (integers in "
                    f"0..{k - 1}). For 0/1 vectors over several labels use kind='multilabel'."
                )
            return out, target.reshape(n)
        expected = (n, k)
        if target.shape == expected or (k == 1 and target.shape == (n,)):
            return out, target.reshape(expected).to(torch.float32)
        layout = f"[batch] or [batch, {k}]" if k == 1 else f"[batch, {k}]"
        raise ValueError(
            f"{what}: targets of shape {list(target.shape)} for outputs {list(output.shape)}; expected {layout}."
        )

    # --- values: one vectorised flag per task, one host sync per batch -----------------------------
    def invalid(self, target: Tensor) -> Tensor:
        """A 0-d bool tensor, true when some target value is invalid for the task (see :meth:`explain`)."""
        kind = self.task.kind
        if kind == "regression":
            return ~torch.isfinite(target).all()
        if kind == "multiclass":
            bad = (target < 0) | (target >= self.task.n_classes)
            if target.is_floating_point():
                bad = bad | (target != target.round()) | ~torch.isfinite(target)
            return bad.any()
        return ((target != 0) & (target != 1)).any()

    def explain(self, target: Tensor, rows: Tensor) -> str:
        """What is wrong with the first invalid target, with the batch row (``rows`` maps target rows to it)."""
        task, name = self.task, self.task.name
        flat = target.reshape(target.shape[0], -1)
        if task.kind == "regression":
            bad = ~torch.isfinite(flat).all(1)
        elif task.kind == "multiclass":
            bad = (flat < 0) | (flat >= task.n_classes)
            if flat.is_floating_point():
                bad = bad | (flat != flat.round()) | ~torch.isfinite(flat)
            bad = bad.any(1)
        else:
            bad = ((flat != 0) & (flat != 1)).any(1)
        i = int(bad.nonzero()[0, 0])
        row = int(rows[i])
        values = flat[i].tolist()
        value = values[0] if len(values) == 1 else values
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        if isinstance(value, list):
            shown = "[" + ", ".join(f"{v:g}" for v in value) + "]"
        missing = (
            f" {MISSING_INT} marks a missing label: set masks[{name!r}] to False for that row (hydranet.data.collate "
            "does this for None labels)."
        )
        if task.kind == "regression":
            return (
                f"Task {name!r} (regression): target {shown} at batch row {row} is marked labelled. Fix: set "
                f"masks[{name!r}] to False for missing values (collate does it for None/NaN labels), or clean the data."
            )
        if task.kind == "multiclass":
            c = task.n_classes
            if isinstance(value, float) and value == value and value != round(value):
                return (
                    f"Task {name!r} (multiclass): target {shown} at batch row {row} is not a class index. Fix: pass "
                    "integer class indices (torch.long); for soft or 0/1 vector labels use kind='multilabel'."
                )
            text = (
                f"Task {name!r} (multiclass, {c} classes): target class {shown} at batch row {row} is out of range; "
                f"valid classes are 0..{c - 1}."
            )
            if value == MISSING_INT:
                return text + missing
            if values[0] < 0:
                # A negative class is never a count to declare: only -1 (the missing marker) is negative.
                return text + (
                    f" Fix: map the labels to 0..{c - 1}; the only negative label is {MISSING_INT}, which marks "
                    "a sample without a label for this task (masked, not trained on)."
                )
            return text + (
                f" Fix: map the labels to 0..{c - 1} (e.g. np.unique(labels, return_inverse=True)), or declare "
                f"num_classes={int(values[0]) + 1} if there are that many classes."
            )
        kind = "binary" if task.kind == "binary" else f"multilabel, {task.n_classes} labels"
        text = f"Task {name!r} ({kind}): target {shown} at batch row {row} is not 0 or 1."
        if task.kind == "binary" and value == MISSING_INT:
            return text + missing
        return text + (
            " Fix: map the two classes to 0 and 1, or use kind='multiclass' for more classes."
            if task.kind == "binary"
            else " Fix: give each label as 0 or 1 (a multi-hot vector)."
        )

    # --- the loss ----------------------------------------------------------------------------------
    def _on(self, buffer: Tensor | None, device: torch.device) -> Tensor | None:
        # follows the outputs even when nobody moved the loss module with .to(device)
        return buffer if buffer is None or buffer.device == device else buffer.to(device)

    def compute(self, out: Tensor, y: Tensor) -> Tensor:
        """The loss on prepared (and, if wanted, validated) rows."""
        name, kind = self.loss_name, self.task.kind
        if name == "l1":
            return F.l1_loss(out, y)
        if name == "mse":
            return F.mse_loss(out, y)
        if name == "huber":
            return F.huber_loss(out, y, delta=self.delta)  # type: ignore[arg-type]
        if name == "smooth_l1":
            return F.smooth_l1_loss(out, y, beta=self.beta)  # type: ignore[arg-type]
        if name == "cross_entropy":
            weight = self._on(self.class_weights, out.device)
            return F.cross_entropy(out, y.long(), weight=weight, label_smoothing=self.label_smoothing)
        if name == "focal":
            target = y.long() if kind == "multiclass" else y
            return focal_loss(out, target, kind, self.gamma, self._on(self.alpha, out.device))
        return F.binary_cross_entropy_with_logits(out, y, pos_weight=self._on(self.pos_weight, out.device))

    def call_custom(self, output: Any, target: Any) -> Tensor:
        value = self.custom(output, target)  # type: ignore[misc]
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"Task {self.task.name!r}: the loss callable returned {shape}; it must return a scalar tensor "
                "(reduce with .mean())."
            )
        return value.reshape(())

    def forward(self, output: Tensor, target: Any, validate: bool = True) -> Tensor:
        """The loss of labelled rows ``output`` against ``target`` (validated unless ``validate=False``)."""
        if self.custom is not None:
            return self.call_custom(output, target)
        out, y = self.prepare(output, torch.as_tensor(target, device=output.device))
        if validate and bool(self.invalid(y)):
            raise ValueError(self.explain(y, torch.arange(y.shape[0])))
        return self.compute(out, y)


def task_loss(task: Task) -> TaskLoss:
    """The loss module of one task (see :class:`TaskLoss`)."""
    return TaskLoss(task)


def _rows(value: Any, keep: list[bool] | None, index: Tensor | None) -> Any:
    if index is None:
        return value
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    return [v for v, k in zip(value, keep) if k]  # type: ignore[arg-type]


class MultiTaskLoss(nn.Module):
    """``loss_fn(outputs, targets, masks) -> {task: scalar}`` over the labelled samples of each task.

    Args:
        tasks: the tasks, a list or ``{name: Task}`` mapping.
        validate: check target values (class range, 0/1, NaN) before computing. The checks are
            vectorised and cost one host synchronisation per batch; ``validate=False`` skips them.
            Shape checks always run (they are free).

    ``outputs`` may hold more tasks than ``targets`` (the heads of all tasks ran): tasks without targets,
    or with no labelled row, are absent from the result. ``masks=None`` means every row is labelled.
    A ragged task (list targets) gets the labelled targets as a list.
    """

    def __init__(self, tasks: Iterable[Task] | Mapping[str, Task], *, validate: bool = True) -> None:
        super().__init__()
        self.tasks: dict[str, Task] = as_task_dict(tasks)
        self.validate = validate
        # Any: nn.Module attribute access types as Tensor | Module; the items are TaskLoss
        self.losses: Any = TaskDict({name: TaskLoss(task) for name, task in self.tasks.items()})

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Mapping[str, Any],
        masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        names = []
        for name in outputs:
            if name not in self.tasks:
                close = difflib.get_close_matches(str(name), list(self.tasks), n=1)
                raise ValueError(
                    f"Output for unknown task {name!r}; the loss knows {', '.join(map(repr, self.tasks))}."
                    + (f" Did you mean {close[0]!r}?" if close else "")
                )
            if name in targets:
                names.append(name)
        if not names:
            return {}
        sizes = {name: _batch_size(outputs[name]) for name in names}
        task_masks: dict[str, Tensor | None] = {}
        for name in names:
            mask = None if masks is None else masks.get(name)
            if mask is not None:
                mask = torch.as_tensor(mask)
                if mask.dtype != torch.bool or mask.shape != (sizes[name],):
                    raise ValueError(
                        f"masks[{name!r}] must be a bool tensor [batch] = [{sizes[name]}], got {mask.dtype} "
                        f"{list(mask.shape)}."
                    )
            task_masks[name] = mask
        counted = [n for n in names if task_masks[n] is not None]
        sums = [m.sum() for m in (task_masks[n] for n in counted) if m is not None]
        counts = dict(zip(counted, torch.stack(sums).tolist())) if counted else {}

        prepared: dict[str, tuple[Any, Any, Tensor | None]] = {}
        for name in names:
            count, size, mask = counts.get(name, sizes[name]), sizes[name], task_masks[name]
            if count == 0:
                continue
            index = keep = None
            if count != size:  # select the labelled rows; lists (ragged) are filtered in Python
                index = mask.nonzero().squeeze(1)  # type: ignore[union-attr]
                if not (isinstance(outputs[name], Tensor) and isinstance(targets[name], Tensor)):
                    keep = mask.tolist()  # type: ignore[union-attr]
            output, target = _rows(outputs[name], keep, index), _rows(targets[name], keep, index)
            loss = self.losses[name]
            if loss.custom is not None:
                prepared[name] = (output, target, None)
                continue
            if isinstance(target, list):
                raise ValueError(
                    f"Task {name!r} has list (ragged) targets but a built-in loss; declare Task(..., ragged=True, "
                    "loss=my_loss) with a loss callable that reads lists."
                )
            target = torch.as_tensor(target).to(output.device, non_blocking=True)
            out, y = loss.prepare(output, target)
            prepared[name] = (out, y, index)

        if self.validate:
            checked = [n for n in prepared if self.losses[n].custom is None]
            if checked:
                device = prepared[checked[0]][1].device
                flags = torch.stack([self.losses[n].invalid(prepared[n][1]).to(device) for n in checked]).tolist()
                for name, bad in zip(checked, flags):
                    if bad:
                        _, y, index = prepared[name]
                        rows = index.cpu() if index is not None else torch.arange(y.shape[0])
                        raise ValueError(self.losses[name].explain(y.cpu(), rows))

        result: dict[str, Tensor] = {}
        for name, (out, y, _) in prepared.items():
            loss = self.losses[name]
            result[name] = loss.call_custom(out, y) if loss.custom is not None else loss.compute(out, y)
        return result


def _batch_size(output: Any) -> int:
    if isinstance(output, Tensor):
        return int(output.shape[0])
    if isinstance(output, Sequence):
        return len(output)
    raise TypeError(f"A task output must be a tensor [batch, ...] or a list per sample, got {type(output).__name__}.")
