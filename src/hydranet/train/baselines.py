r"""Single-task baselines, the reference of :math:`\Delta_m`.

:func:`train_baselines` trains one single-task model per task of a multi-task
:class:`~hydranet.train.Trainer` with the same settings, and keeps each one's best validation score of
its main metric; :math:`\Delta_m` (:func:`hydranet.metrics.delta_m`) is the mean relative change of the
multi-task scores against them (Maninis et al., 2019, "Attentive Single-Tasking of Multiple Tasks").
:func:`baseline_scores` scores the trained baseline models on other data (a test set), so that Δm
compares like with like.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from torch import nn

from hydranet import runtime
from hydranet.metrics import main_metric
from hydranet.tasks import Task
from hydranet.train.loaders import TaskView
from hydranet.train.step import unwrap

if TYPE_CHECKING:
    from hydranet.train.trainer import Trainer

__all__ = ["baseline_scores", "train_baselines"]

logger = logging.getLogger("hydranet.train")


def _baseline_model(trainer: Trainer, task: Task) -> nn.Module:
    if trainer.model_factory is not None:
        return trainer.model_factory([task])
    model = copy.deepcopy(unwrap(trainer.model))
    if trainer.initial_state is not None:  # kept at construction whenever there is no model_factory
        model.load_state_dict(trainer.initial_state)
    return model


def _metrics_of(trainer: Trainer, task: str) -> dict[str, Any] | None:
    return {task: trainer.metric_names[task]} if task in trainer.metric_names else None


def train_baselines(
    trainer: Trainer,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None,
    *,
    epochs: int,
    make_trainer: Callable[..., Trainer],
) -> dict[str, dict[str, float]]:
    """Train one single-task model per task of ``trainer``; return ``{task: {main metric: best score}}``.

    Each baseline starts from the weights the multi-task model had when given to the trainer (or from
    ``trainer.model_factory([task])``), runs only its task's head with equal weighting and the same
    optimizer, scheduler, clipping, accumulation, AMP, seed, patience and number of epochs, on the same
    loaders restricted to its task (:class:`~hydranet.train.loaders.TaskView`). Its best epoch is
    chosen on that main metric. The histories and models go to ``trainer.baseline_histories`` and
    ``trainer.baseline_models``. ``make_trainer`` builds each baseline's trainer (the Trainer class:
    passed in, so that this module need not import the trainer, which imports it).
    """
    if val_loader is None:
        raise ValueError("Training baselines needs a val_loader: a baseline is its task's best validation score.")
    baselines: dict[str, dict[str, float]] = {}
    for task in trainer.tasks:
        metric = main_metric(trainer.tasks[task], trainer.metric_names.get(task))[0]
        child = make_trainer(
            _baseline_model(trainer, trainer.tasks[task]),
            [trainer.tasks[task]],
            balancer="ew",
            loss=trainer.loss_fn,
            metrics=_metrics_of(trainer, task),
            optimizer=trainer.optimizer_spec,
            lr=trainer.lr,
            weight_decay=trainer.weight_decay,
            scheduler=trainer.scheduler_spec,
            scheduler_interval=trainer.scheduler_interval,
            epochs=epochs,
            grad_clip=trainer.grad_clip,
            accumulate=trainer.accumulate,
            amp=trainer.amp,
            device=trainer.device,
            monitor=f"val/{task}/{metric}",
            patience=trainer.patience,
            min_delta=trainer.min_delta,
            out_dir=None,
            progress=trainer.progress,
            seed=trainer.seed,
            log_every=trainer.log_every,
        )
        child.progress_label = f"baseline {task}: "  # read by the Progress callback
        if runtime.is_main_process():
            logger.info("training the single-task baseline of %r (%s)", task, metric)
        child.fit(TaskView(train_loader, task), TaskView(val_loader, task), epochs=epochs)
        best = child.early_stopping.best
        if best is None or best == 0:
            raise ValueError(
                f"The single-task baseline of {task!r} scored {best} on {metric}, so Δm (relative to it) is "
                f"undefined. Train longer (epochs=), or make another metric the task's main one "
                f"(metrics={{{task!r}: [...]}} or Task(metrics=[...]))."
            )
        baselines[task] = {metric: float(best)}
        trainer.baseline_histories[task] = child.history
        trainer.baseline_models[task] = unwrap(child.model).cpu()  # kept to score on other data (report)
    return baselines


def baseline_scores(
    trainer: Trainer, loader: Iterable[Any], *, make_trainer: Callable[..., Trainer]
) -> dict[str, dict[str, float]]:
    """Main-metric scores of ``trainer``'s trained baseline models on ``loader`` (each evaluated by a
    trainer that ``make_trainer`` builds)."""
    scores = {}
    for task, model in trainer.baseline_models.items():
        metric = main_metric(trainer.tasks[task], trainer.metric_names.get(task))[0]
        judge = make_trainer(
            model,
            [trainer.tasks[task]],
            loss=trainer.loss_fn,
            metrics=_metrics_of(trainer, task),
            amp=trainer.amp,
            device=trainer.device,
            progress=False,
        )
        scores[task] = {metric: judge.evaluate(TaskView(loader, task))[task][metric]}
        model.cpu()
    return scores
