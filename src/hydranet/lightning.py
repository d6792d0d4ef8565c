r"""A LightningModule over hydranet's multi-task :class:`~hydranet.train.Step` (``pip install hydranet[lightning]``).

:class:`MultiTaskModule` trains any model with the HydraNet contract under ``lightning.Trainer`` with
the very step :class:`hydranet.Trainer` runs: the backbone once per batch, the heads of the tasks in the
batch, masked losses :math:`L_t` (each the mean over the samples labelled for task :math:`t`), a
finiteness guard, and the balancer.

* **Loss weightings** (``ew``, ``uw``, ``dwa``, ...) use Lightning's *automatic* optimization:
  ``training_step`` returns the weighting's objective (:meth:`hydranet.balancing.Balancer.objective`,
  for ``ew`` :math:`\sum_t L_t`) and Lightning runs the backward pass, gradient accumulation, the
  precision plugin and the optimizer step.
* **Gradient methods** (``upgrad``, ``pcgrad``, ``mgda``, ...) use *manual* optimization: the balancer
  computes the task Jacobian :math:`G` itself and writes the aggregated direction into ``.grad``, so a
  ``manual_backward`` of one scalar would be wrong. Under Lightning's DDP strategy the step runs inside
  the DDP wrapper's ``no_sync()``; the balancer all-reduces :math:`G` (and the heads' gradients), so
  every rank aggregates the same matrix, as :class:`hydranet.Trainer` does under ``torchrun``.

Under DDP, ranks agree at every step on which tasks any of them has, the heads a rank does not use get
a zero-valued loss term (DDP's reducer waits for every parameter), and the heads of tasks no rank had
get no gradient, as in one process (:class:`~hydranet.train.step.UnusedParameters`).

**Data.** hydranet's :class:`~hydranet.data.TaskBatchSampler` and :class:`~hydranet.data.MultiTaskStream`
shard by rank themselves: build the Trainer with ``use_distributed_sampler=False`` (the module refuses a
distributed run without it: Lightning would re-create the batch sampler around a ``DistributedSampler``
and fail, or shard the indices twice). Build the sampler inside ``train_dataloader()`` (or pass
``num_replicas=trainer.world_size, rank=trainer.global_rank``), where the process group exists. The
module calls ``set_epoch`` on the batch sampler or stream of the training loaders every epoch (Lightning
calls it only on ``loader.sampler``).

**Logged** (``self.log``): per step ``train/<task>/loss_step`` and the balancer's
``train/<task>/weight_step``; per epoch the means over the ranks' steps ``train/loss``,
``train/<task>/loss``, ``train/<task>/weight``, ``train/<task>/grad_norm``; after validation (and
testing, with ``test/``) ``val/loss``, ``val/<task>/loss`` (mean over the labelled samples of all
ranks) and ``val/<task>/<metric>`` (torchmetrics, synchronised over the ranks). The names are those of
:class:`hydranet.Trainer`'s monitor, so ``ModelCheckpoint(monitor="val/loss")`` works as it does there.

**Checkpoints.** The balancer's state (``uw``'s log-variances, ``dwa``'s loss history, ...) is saved in
Lightning checkpoints under ``"hydranet"`` and restored with them (``Trainer.fit(..., ckpt_path=...)``,
``MultiTaskModule.load_from_checkpoint(path, model=...)``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - the extra is installed for the tests
    raise ImportError(
        "hydranet.lightning needs PyTorch Lightning: pip install 'hydranet[lightning]'."
    ) from error

from hydranet import runtime
from hydranet.balancing import Balancer
from hydranet.balancing.weighting import GradNorm
from hydranet.data import Batch
from hydranet.metrics import MultiTaskMetrics
from hydranet.tasks import Task, probabilities
from hydranet.train import make_balancer, make_optimizer, select_tasks
from hydranet.train.step import NonFiniteLossError, Step, StepOutput

__all__ = ["MultiTaskModule", "check_trainer"]

#: Where the module keeps its own state in a Lightning checkpoint.
CHECKPOINT_KEY = "hydranet"
#: The step's autocast mode of Lightning's mixed precisions (the precision plugin scales fp16 losses).
_AMP = {"bf16-mixed": "bf16", "16-mixed": "fp16"}


def check_trainer(trainer: Any, balancer: Balancer) -> None:
    """Raise when ``trainer`` (a ``lightning.Trainer``) runs ``balancer`` in a way that would be wrong.

    * Under DDP: ``use_distributed_sampler=False`` (hydranet's samplers and streams shard themselves),
      and a DDP strategy (the balancer all-reduces the Jacobian over the default process group; FSDP
      and DeepSpeed shard the parameters it differentiates).
    * fp16 mixed precision multiplies the gradients by a changing loss scale, which gradient methods
      and GradNorm are not invariant to (use ``precision="bf16-mixed"``), and which the manual
      optimization of gradient methods would not undo.
    """
    world = int(getattr(trainer, "world_size", 1))
    if world > 1:
        connector = getattr(trainer, "_accelerator_connector", None)
        if getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                f"This run has {world} processes and lightning.Trainer(use_distributed_sampler=True), the default: "
                "Lightning would wrap hydranet's TaskBatchSampler in a DistributedSampler, which fails or shards "
                "the data twice. TaskBatchSampler and MultiTaskStream shard by rank themselves: build the "
                "Trainer with use_distributed_sampler=False."
            )
        strategy = getattr(trainer, "strategy", None)
        if not isinstance(strategy, pl.strategies.DDPStrategy) or "DeepSpeed" in type(strategy).__name__:
            raise ValueError(
                f"hydranet's MultiTaskModule trains under a DDP strategy (strategy='ddp', 'ddp_spawn', ...), "
                f"not {type(strategy).__name__}: the balancer averages the task losses and Jacobians over the "
                "ranks and needs every parameter on every rank."
            )
    precision = str(getattr(trainer, "precision", "32-true"))
    if precision.startswith("16") and (balancer.uses_jacobian or isinstance(balancer.method, GradNorm)):
        raise ValueError(
            f"precision={precision!r} scales the gradients by a changing loss scale, which {balancer.name!r} "
            "is not invariant to (it reads per-task gradients). Use precision='bf16-mixed', which needs no "
            "loss scaling."
        )


class MultiTaskModule(pl.LightningModule):
    """A LightningModule that trains a multi-task model with hydranet's :class:`~hydranet.train.Step`.

    Args:
        model: a model with the HydraNet contract (``model(x, tasks=..., return_features=...)``,
            ``.tasks``, ``shared_parameters()``, ``task_parameters(task)``), e.g.
            :class:`hydranet.models.HydraNet`.
        tasks: the tasks to train (Task objects or names); default every task of the model.
        balancer: a method name for :func:`hydranet.balancing.make` (``"ew"``, ``"uw"``, ``"upgrad"``,
            ...) or a :class:`~hydranet.balancing.Balancer`. Loss weightings train with automatic
            optimization, gradient methods with manual optimization (see the module docstring).
        balancer_options: settings of a balancer given by name (``{"temperature": 2.0}``).
        loss: ``(outputs, targets, masks) -> {task: loss}``; default
            :class:`~hydranet.losses.MultiTaskLoss` of the tasks.
        metrics: ``{task: [metric names]}`` overriding the tasks' metrics.
        optimizer: as for :class:`hydranet.Trainer`: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``,
            ``{"name": ..., **options}``, an Optimizer or a factory ``param_groups -> Optimizer``. The
            balancer's own parameters (``uw``, ...) join it as a group without weight decay.
        lr, weight_decay: learning rate and the model parameters' weight decay (named optimizers).
        scheduler: ``None`` or a factory ``optimizer -> torch scheduler``, stepped every
            ``scheduler_interval`` (``"epoch"`` or ``"step"``). For ``ReduceLROnPlateau`` override
            ``configure_optimizers``.
        grad_clip: clip the total gradient norm of the model's parameters to this value before each
            optimizer step (both optimizations; the norm before clipping is logged as ``train/grad_norm``).
        diagnostics: log the balancer's per-task weights and gradient norms.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task | str] | Mapping[str, Task] | None = None,
        balancer: str | Balancer = "ew",
        *,
        balancer_options: Mapping[str, Any] | None = None,
        loss: Callable[..., Mapping[str, Tensor]] | None = None,
        metrics: Mapping[str, Sequence[str]] | None = None,
        optimizer: str | Mapping[str, Any] | Optimizer | Callable[..., Optimizer] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: Callable[[Optimizer], Any] | None = None,
        scheduler_interval: str = "epoch",
        grad_clip: float | None = None,
        diagnostics: bool = True,
    ) -> None:
        super().__init__()
        for attribute in ("tasks", "shared_parameters", "task_parameters"):
            if not hasattr(model, attribute):
                raise TypeError(
                    f"{type(model).__name__} has no {attribute!r}: MultiTaskModule needs a model with the HydraNet "
                    "contract (tasks, shared_parameters(), task_parameters(task), forward(x, tasks=...))."
                )
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("Pass the model itself: Lightning's DDP strategy wraps the LightningModule.")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}.")
        if not (isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
        if scheduler is not None and not callable(scheduler):
            raise TypeError(
                f"scheduler must be None or a factory optimizer -> scheduler (e.g. lambda o: StepLR(o, 5)), got "
                f"{type(scheduler).__name__}; a scheduler bound to an optimizer cannot follow Lightning's."
            )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}.")
        if grad_clip is not None and not (
            isinstance(grad_clip, (int, float)) and not isinstance(grad_clip, bool) and grad_clip > 0
        ):
            raise ValueError(f"grad_clip must be None or a positive number, got {grad_clip!r}.")
        self.model = model
        self.tasks = select_tasks(model.tasks, tasks)  # type: ignore[arg-type]
        self.balancer = make_balancer(balancer, balancer_options, self.tasks)
        self.metrics = MultiTaskMetrics(list(self.tasks.values()), metrics)
        self.step = Step(model, self.tasks, self.balancer, loss)
        self.optimizer_spec, self.lr, self.weight_decay = optimizer, float(lr), float(weight_decay)
        self.scheduler_factory, self.scheduler_interval = scheduler, scheduler_interval
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.diagnostics = bool(diagnostics)
        # Gradient methods write .grad themselves: Lightning must not run a backward pass of its own.
        self.automatic_optimization = not self.balancer.uses_jacobian
        self._train: dict[str, float] = {}  # running sums of the epoch's steps: "<task>/loss", "<task>/loss#"
        self._eval: dict[str, float] = {}  # sums over labelled samples of the running evaluation

    # ------------------------------------------------------------------------------------- setup

    def forward(self, x: Any, tasks: Sequence[str] | None = None) -> Any:
        """``model(x, tasks=tasks)``: ``{task: output}``."""
        return self.model(x, tasks=tasks)

    def setup(self, stage: str) -> None:
        """Check the Trainer's settings (:func:`check_trainer`); under DDP, the step synchronises the ranks."""
        check_trainer(self.trainer, self.balancer)
        # Lightning's DDP wraps this module, not the model: the step is told (see Step._sync_context).
        self.step.ddp = runtime.is_distributed()
        # The step's forward runs under its own autocast (off without amp): follow Lightning's precision.
        self.step.amp = _AMP.get(str(self.trainer.precision))

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self.optimizer_spec, self.model, self.balancer, self.lr, self.weight_decay)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                "ReduceLROnPlateau steps on a monitored value: override configure_optimizers and return "
                "{'optimizer': ..., 'lr_scheduler': {'scheduler': ..., 'monitor': 'val/loss'}}."
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def on_train_start(self) -> None:
        """Under DDP: every training loader shards over all ranks and gives each as many batches."""
        if runtime.is_distributed():
            for loader in _loaders(self.trainer.train_dataloader):
                _check_shards(loader)

    def on_train_epoch_start(self) -> None:
        self._train = {}
        # Lightning calls set_epoch on loader.sampler only: the batch sampler (TaskBatchSampler) and an
        # iterable dataset (MultiTaskStream) are told here
        for loader in _loaders(self.trainer.train_dataloader):
            dataset = getattr(loader, "dataset", None)
            holders = [getattr(loader, "batch_sampler", None)]
            if isinstance(dataset, torch.utils.data.IterableDataset):
                holders.append(dataset)
            for holder in holders:
                set_epoch = getattr(holder, "set_epoch", None)
                if callable(set_epoch):
                    set_epoch(self.current_epoch)

    # ---------------------------------------------------------------------------------- training

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        batch = _as_batch(batch)
        self.step.device = self.device
        epoch, position, step = self.current_epoch, batch_idx + 1, self.global_step  # named in errors
        if self.automatic_optimization:
            out = self.step(batch, backward=False, epoch=epoch, position=position, global_step=step)
            self._record(out, len(batch))
            return out.objective  # None when no rank had a trained task: Lightning skips the step
        optimizer = self.optimizers()
        with self._no_sync():
            out = self.step(batch, epoch=epoch, position=position, global_step=step)
        self._record(out, len(batch))
        if out.losses:  # every rank agrees (the step raised otherwise)
            optimizer.step()  # type: ignore[union-attr]
            if self.scheduler_factory is not None and self.scheduler_interval == "step":
                self.lr_schedulers().step()  # type: ignore[union-attr]
        optimizer.zero_grad()  # type: ignore[union-attr]
        return None

    def _no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """The DDP wrapper's ``no_sync()``: the balancer all-reduces the Jacobian itself. (Manual
        optimization already keeps DDP's reducer idle; this keeps it so whatever the strategy does.)"""
        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, nn.parallel.DistributedDataParallel):
            return wrapper.no_sync()
        return contextlib.nullcontext()

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """The heads no rank's tasks reached get no gradient (as in one process); then ``grad_clip``."""
        self.step.release_unused()
        if self.grad_clip is None:
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        if not math.isfinite(norm) and not str(self.trainer.precision).startswith("16"):
            raise NonFiniteLossError(
                f"The gradient norm is {norm} at optimizer step {self.global_step + 1}. Lower the learning rate, "
                "or check the targets and inputs for extreme values."
            )
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    def _record(self, out: StepOutput, size: int) -> None:
        """Log the step's losses (and diagnostics), and add them to the epoch's sums."""
        values = {task: float(value) for task, value in out.losses.items()}
        if self.diagnostics and out.losses:
            weights = {t: float(w) for t, w in (out.info.get("weights") or {}).items()}
            norms = {t: float(g) for t, g in (out.info.get("grad_norms") or {}).items()}
        else:
            weights, norms = {}, {}
        logged = {f"train/{t}/loss_step": v for t, v in values.items()}
        logged.update({f"train/{t}/weight_step": w for t, w in weights.items()})
        if "regularization" in out.info:  # the model's own term (Step.regularization), outside the balancing
            logged["train/regularization_step"] = float(out.info["regularization"])
        if logged:
            self.log_dict(logged, on_step=True, on_epoch=False, batch_size=size)
        for name, group in (("loss", values), ("weight", weights), ("grad_norm", norms)):
            for task, value in group.items():
                if math.isfinite(value):
                    key = f"{task}/{name}"
                    self._train[key] = self._train.get(key, 0.0) + value
                    self._train[key + "#"] = self._train.get(key + "#", 0.0) + 1.0

    def on_train_epoch_end(self) -> None:
        """Epoch means over every rank's steps (what one process on the ranks' batches would average),
        then the balancer's end of epoch and, under manual optimization, the per-epoch scheduler."""
        totals = runtime.sum_by_key(self._train)
        means = {f"train/{k}": s / totals[k + "#"] for k, s in totals.items() if not k.endswith("#") and totals[k + "#"]}
        losses = [v for k, v in means.items() if k.endswith("/loss")]
        if losses:
            means["train/loss"] = float(sum(losses))
        if means:
            self.log_dict(means, on_step=False, on_epoch=True, batch_size=1)
        self.balancer.on_epoch_end()
        if not self.automatic_optimization and self.scheduler_factory is not None and self.scheduler_interval == "epoch":
            self.lr_schedulers().step()  # type: ignore[union-attr]

    # ------------------------------------------------------------------------- evaluation

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _start_evaluation(self) -> None:
        self._eval = {}
        self.metrics.reset()

    def _evaluate(self, batch: Any) -> None:
        """Losses summed over the labelled samples, and metric updates, of one evaluation batch."""
        batch = _as_batch(batch)
        self.step.device = self.device
        tasks = [t for t in batch.tasks if t in self.tasks]
        if not tasks:
            return
        outputs = {t: o.float() for t, o in self.step.forward(self.model, batch, tasks).items()}
        for task, value in self.step.loss_fn(outputs, batch.targets, batch.masks).items():
            if task in self.tasks:
                n = float(batch.masks[task].sum())
                self._eval[f"{task}/loss"] = self._eval.get(f"{task}/loss", 0.0) + float(value) * n
                self._eval[f"{task}/loss#"] = self._eval.get(f"{task}/loss#", 0.0) + n
        self.metrics.update(outputs, batch.targets, batch.masks)

    def _log_evaluation(self, split: str) -> None:
        """``<split>/loss``, ``<split>/<task>/loss`` and ``<split>/<task>/<metric>`` over all ranks (collective)."""
        totals = runtime.sum_by_key(self._eval)
        values = {f"{split}/{k}": s / totals[k + "#"] for k, s in totals.items() if not k.endswith("#") and totals[k + "#"]}
        scores = self.metrics.compute()  # torchmetrics synchronises the ranks' states
        self.metrics.reset()
        if not values:
            return
        values[f"{split}/loss"] = float(sum(values.values()))
        values.update({f"{split}/{t}/{m}": float(v) for t, ms in scores.items() for m, v in ms.items()})
        self.log_dict(values, on_step=False, on_epoch=True, batch_size=1)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{task: probabilities}`` (sigmoid / softmax of the logits; values for regression) of every task."""
        inputs = batch.inputs if isinstance(batch, Batch) else batch[0] if isinstance(batch, (tuple, list)) else batch
        outputs = self.step.forward(self.model, Batch(inputs, {}, {}), list(self.tasks))
        return {t: probabilities(self.tasks[t], outputs[t].float()) for t in self.tasks}

    # ------------------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"tasks": list(self.tasks), "balancer": self.balancer.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise ValueError(
                "This checkpoint holds no hydranet state (balancer): it was not written by MultiTaskModule. Load "
                "its weights with model.load_state_dict(...) instead."
            )
        if list(state["tasks"]) != list(self.tasks):
            raise ValueError(f"This checkpoint trained tasks {state['tasks']}; this module trains {list(self.tasks)}.")
        self.balancer.load_state_dict(state["balancer"])


def _as_batch(batch: Any) -> Batch:
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 3 and isinstance(batch[1], Mapping):
        return Batch(batch[0], dict(batch[1]), dict(batch[2]))
    raise TypeError(
        f"The loader yields {type(batch).__name__}; MultiTaskModule needs hydranet Batch objects (or "
        "(inputs, targets, masks) triples): use DataLoader(..., collate_fn=hydranet.data.collate)."
    )


def _check_shards(loader: Any) -> None:
    """Raise on every rank (the facts are gathered) when ``loader`` shards over another number of ranks
    than there are, or gives the ranks different numbers of batches (some rank would wait forever)."""
    sampler = getattr(loader, "batch_sampler", None)
    replicas = getattr(sampler, "num_replicas", None)
    if replicas is None:
        replicas = getattr(getattr(loader, "sampler", None), "num_replicas", None)
    if replicas is None and isinstance(getattr(loader, "dataset", None), torch.utils.data.IterableDataset):
        replicas = getattr(loader.dataset, "world_size", None)  # a MultiTaskStream told its world size
    try:
        length: int | None = len(loader)
    except TypeError:
        length = None
    facts = runtime.gather((length, replicas))
    world = runtime.world_size()
    shards = {r for _, r in facts if r is not None}
    if shards and shards != {world}:
        raise ValueError(
            f"A training loader's sampler shards the data over {sorted(shards)} replica(s), but {world} processes "
            "train: build the TaskBatchSampler inside train_dataloader() (of the LightningModule or a "
            "LightningDataModule), where Lightning has started the process group, or pass "
            "num_replicas=trainer.world_size, rank=trainer.global_rank."
        )
    lengths = [n for n, _ in facts]
    if None in lengths or len(set(lengths)) > 1:
        shown = ", ".join(f"rank {r}: {'no length' if n is None else n}" for r, n in enumerate(lengths))
        raise ValueError(
            f"Under DDP every rank must run the same number of training batches; the training loader gives "
            f"{shown}. Use hydranet.data.TaskBatchSampler or a MultiTaskStream with sizes= or stop=<batches>."
        )


def _loaders(loaders: Any) -> Iterator[Any]:
    """The loaders of a (nested) collection of loaders, as ``trainer.train_dataloader`` holds them."""
    if isinstance(loaders, Mapping):
        for value in loaders.values():
            yield from _loaders(value)
    elif isinstance(loaders, (list, tuple)):
        for value in loaders:
            yield from _loaders(value)
    elif loaders is not None:
        yield loaders
