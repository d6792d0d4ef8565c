"""What each ``hydranet`` sub-command does (argument parsing lives in :mod:`hydranet.cli.main`)."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from hydranet import runtime as distributed
from hydranet.cli._codes import EXIT_OK
from hydranet.cli.config import Config, ConfigError, config_key, load_config, parse_override, task_names
from hydranet.cli.errors import CommandError
from hydranet.cli.sources import build_split, build_tasks, tasks_differ
from hydranet.data import make_collate
from hydranet.data.dataset import MultiTaskDataset
from hydranet.data.sampler import TaskBatchSampler
from hydranet.tasks import Task
from hydranet.train.checkpoint import load_checkpoint

__all__ = ["bench", "build_model", "demo", "evaluate", "inspect", "make_loader", "make_sampler", "predict", "train"]


def _config(args: argparse.Namespace) -> Config:
    overrides = dict(parse_override(o) for o in getattr(args, "overrides", []))
    if getattr(args, "out", None):
        overrides["output"] = str(args.out)
    return load_config(args.config, overrides=overrides)


def _tasks_of(cfg: Config, dataset: MultiTaskDataset) -> dict[str, Task]:
    return build_tasks(cfg, extra=dataset.tasks or {})


def make_sampler(cfg: Config, dataset: MultiTaskDataset, *, train: bool) -> TaskBatchSampler:
    """The batch sampler of a split: the config's for training, plain passes over the data otherwise."""
    with config_key("sampler"):
        return _make_sampler(cfg, dataset, train=train)


def _make_sampler(cfg: Config, dataset: MultiTaskDataset, *, train: bool) -> TaskBatchSampler:
    s = cfg.sampler
    if not train:
        schedule = "joint" if dataset.is_shared else "round_robin"
        return TaskBatchSampler(dataset, batch_size=s["batch_size"], schedule=schedule, length="all", seed=cfg.seed)
    return TaskBatchSampler(
        dataset,
        batch_size=s["batch_size"],
        schedule=s["schedule"],
        quotas=s["quotas"],
        balance=s["balance"],
        length=s["length"],
        temperature=s["temperature"],
        size_cap=s["size_cap"],
        drop_last=s["drop_last"],
        replacement=s["replacement"],
        seed=cfg.seed,
    )


def make_loader(cfg: Config, dataset: MultiTaskDataset, tasks: dict[str, Task], *, train: bool) -> DataLoader:
    options = {k: v for k, v in cfg.loader.items() if v is not None}
    if not options.get("num_workers"):
        options.pop("persistent_workers", None)
        options.pop("prefetch_factor", None)
    ragged = [t.name for t in tasks.values() if t.ragged]
    sampler = make_sampler(cfg, dataset, train=train)
    with config_key("loader"):
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=make_collate(ragged), **options)


def build_model(cfg: Config, tasks: dict[str, Task], example: torch.Tensor) -> torch.nn.Module:
    """The model section: a backbone by registry name and an architecture around it."""
    from hydranet.models import build_architecture

    spec = cfg.model
    backbone = spec["backbone"]
    if isinstance(backbone, str):
        backbone = {"name": backbone}
    with config_key("model"):
        return build_architecture(
            spec["architecture"],
            backbone=dict(backbone),
            tasks=list(tasks.values()),
            input_shape=tuple(example.shape[1:]),
            head=spec["head"],
            hidden=spec["hidden"],
            dropout=spec["dropout"],
            **spec["options"],
        )


def _example_input(dataset: MultiTaskDataset) -> torch.Tensor:
    x, _ = dataset[0]
    return torch.as_tensor(x).unsqueeze(0)


def _trainer(
    cfg: Config, model: torch.nn.Module, tasks: dict[str, Task], out: Path, progress: bool, verbose: bool = False
) -> Any:
    from hydranet.train import Progress, Trainer

    settings = dict(cfg.trainer)
    settings.pop("epochs")
    settings["progress"] = progress and settings.get("progress", True)
    if verbose and settings["progress"]:  # --verbose: every metric and the balancer's diagnostics
        settings["callbacks"] = [Progress(verbose=True)]
    balancer = dict(cfg.balancer)
    name = balancer.pop("name")
    with config_key("balancer"):
        from hydranet.balancing import make

        method = make(name, list(tasks.values()), **balancer)
    with config_key("trainer"):
        return Trainer(model, list(tasks.values()), balancer=method, out_dir=out, seed=cfg.seed, **settings)


def train(args: argparse.Namespace) -> int:
    """Train from a config; under torchrun in the process group hydranet starts and shuts down."""
    cfg = _config(args)
    with distributed.process_group():
        # The run lives in its own function: its model and tensors are released when it returns,
        # before the process group is destroyed (see hydranet.distributed).
        _train(cfg, args)
    return EXIT_OK


def _train(cfg: Config, args: argparse.Namespace) -> None:
    torch.manual_seed(cfg.seed)
    train_ds = build_split(cfg, "train")
    if train_ds is None:  # the schema requires data.train; kept for the type checker's sake
        raise ConfigError("The config has no 'data.train' split.")
    tasks = _tasks_of(cfg, train_ds)
    val_ds, test_ds = build_split(cfg, "val", tasks), build_split(cfg, "test", tasks)
    out = Path(args.out or cfg.output)
    model = build_model(cfg, tasks, _example_input(train_ds))
    _init_output_bias(cfg, model, train_ds, tasks)
    trainer = _trainer(cfg, model, tasks, out, progress=not args.quiet, verbose=args.verbose)
    if args.resume is not None:
        _check_resume(cfg, out / "last.pt" if str(args.resume) == "last" else Path(args.resume))
    train_loader = make_loader(cfg, train_ds, tasks, train=True)
    val_loader = make_loader(cfg, val_ds, tasks, train=False) if val_ds is not None else None
    trainer.fit(train_loader, val_loader, epochs=cfg.trainer["epochs"], resume=args.resume)
    if test_ds is not None and trainer.best_epoch is not None and (out / "best.pt").is_file():
        trainer.load_checkpoint(out / "best.pt")  # the test split scores the model that validation chose
    test_loader = make_loader(cfg, test_ds, tasks, train=False) if test_ds is not None else None
    report = trainer.report(out, test_loader=test_loader)
    if distributed.is_main_process():
        from hydranet.report.loggers import describe_outputs

        print(report.console_text())
        print(describe_outputs(out))


def _init_output_bias(cfg: Config, model: torch.nn.Module, dataset: MultiTaskDataset, tasks: dict[str, Task]) -> None:
    """``model.init_output_bias``: each head's bias from the training labels (hn.models.init_output_bias).
    ``true`` starts the tasks the sampler balances at the uniform prior (it draws their classes equally)."""
    setting = cfg.model["init_output_bias"]
    if setting is False:
        return
    from hydranet.models import init_output_bias

    if isinstance(setting, dict):
        balanced = list(setting.get("balanced") or [])
    else:
        balance = cfg.sampler["balance"]
        classes = [n for n, t in tasks.items() if t.is_classification and not t.ragged]
        balanced = classes if isinstance(balance, str) else [n for n, m in (balance or {}).items() if m and n in tasks]
    with config_key("model.init_output_bias"):
        init_output_bias(model, dataset, balanced=balanced)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file's contents; a file that is not one (truncated, damaged, a config) is one
    :class:`CommandError` naming it, whatever the failure torch met while reading it."""
    try:
        return load_checkpoint(path)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:
        if type(err).__module__.split(".")[0] == "hydranet":
            raise  # the library's own checkpoint errors say it already
        raise CommandError(
            f"{str(path)!r} is not a readable hydranet checkpoint: truncated, damaged or another kind of file "
            f"({type(err).__name__}); pass the best.pt or last.pt that training wrote."
        ) from err


def _check_resume(cfg: Config, path: Path) -> None:
    """Before resuming: the checkpoint is readable and was trained with the config's optimizer (the
    optimizer's state of another one does not load)."""
    if not path.is_file():
        return  # --resume last before any checkpoint: the trainer starts from the beginning (and warns)
    saved = str(read_checkpoint(path).get("config", {}).get("optimizer", ""))
    mine = cfg.trainer["optimizer"]
    if saved and saved.lower() != mine.lower():
        raise ConfigError(
            f"'trainer.optimizer' is {mine!r}, but {str(path)!r} was trained with {saved}: resume with "
            f"--set trainer.optimizer={saved.lower()}, or start a new run in another --out."
        )


def _load_trained(cfg: Config, checkpoint: str, split: str) -> tuple[Any, dict[str, Task], MultiTaskDataset]:
    saved = read_checkpoint(checkpoint)["tasks"]  # the trained tasks, with their class vocabularies
    trained = {name: Task.from_dict(spec) for name, spec in saved.items()}
    expected = task_names(cfg)
    if expected is not None and set(expected) != set(trained):
        raise tasks_differ(trained, expected, f"the checkpoint {str(checkpoint)!r}")
    dataset = build_split(cfg, split, trained)
    if dataset is None:
        raise ConfigError(f"The config has no 'data.{split}' split to run on.")
    tasks = _tasks_of(cfg, dataset)
    model = build_model(cfg, tasks, _example_input(dataset))
    trainer = _trainer(cfg, model, tasks, Path(cfg.output), progress=False)
    trainer.load_checkpoint(checkpoint, weights_only=True)
    return trainer, tasks, dataset


def evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    trainer, tasks, dataset = _load_trained(cfg, args.checkpoint, args.split)
    metrics = trainer.evaluate(make_loader(cfg, dataset, tasks, train=False))
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True, default=float))
    else:
        for task, values in metrics.items():
            if isinstance(values, dict):
                print(f"{task:>16}  " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(values.items())))
    return EXIT_OK


def predict(args: argparse.Namespace) -> int:
    cfg = _config(args)
    trainer, tasks, dataset = _load_trained(cfg, args.checkpoint, args.split)
    # Every sample once, in dataset order, so that row k of the CSV is sample k whatever the data.
    in_order = BatchSampler(SequentialSampler(range(len(dataset))), cfg.sampler["batch_size"], drop_last=False)
    collate_fn = make_collate([t.name for t in tasks.values() if t.ragged])
    predictions = trainer.predict(DataLoader(dataset, batch_sampler=in_order, collate_fn=collate_fn))
    rows = len(dataset)
    # Into the run's folder (the checkpoint's, or --out), not wherever the command happens to run.
    output = Path(args.output) if args.output else Path(args.out or Path(args.checkpoint).parent) / "predictions.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["index"]
        columns: list[tuple[str, np.ndarray]] = []
        paths = getattr(dataset, "paths", None)  # readers of image files: name the file of each row
        if paths is not None:
            columns.append(("path", np.asarray(paths, dtype=object)))
        for name, values in predictions.items():
            values = values.float().cpu().numpy().reshape(rows, -1)
            task = tasks[name]
            if task.kind == "multiclass":
                labels = values.argmax(1)
                names = task.class_names
                columns.append((name, np.array([names[i] for i in labels]) if names else labels))
            elif task.kind == "binary":
                columns.append((f"{name}_probability", values[:, 0]))
            else:
                for j in range(values.shape[1]):
                    columns.append((f"{name}_{j}" if values.shape[1] > 1 else name, values[:, j]))
        header += [c for c, _ in columns]
        writer.writerow(header)
        for i in range(rows):
            writer.writerow([i, *[c[i] for _, c in columns]])
    print(f"wrote {rows} predictions for {len(predictions)} task(s) to {output}")
    return EXIT_OK


def _class_counts(dataset: MultiTaskDataset, task: Task, positions: np.ndarray | None = None) -> dict[str, int]:
    labels = dataset.labels(task.name)
    if positions is not None:
        labels = labels[positions]
    if task.kind == "multilabel":
        return {f"label{j}": int(v) for j, v in enumerate(np.asarray(labels).sum(0))}
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=task.n_classes)
    names = task.class_names or [str(c) for c in range(task.n_classes)]
    return {names[c]: int(n) for c, n in enumerate(counts)}


def _fmt_counts(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return "  ".join(f"{k}: {v} ({100 * v / total:.0f}%)" for k, v in counts.items())


def inspect(args: argparse.Namespace) -> int:
    cfg = _config(args)
    dataset = build_split(cfg, args.split)
    if dataset is None:
        raise ConfigError(f"The config has no 'data.{args.split}' split.")
    tasks = _tasks_of(cfg, dataset)
    sampler = make_sampler(cfg, dataset, train=args.split == "train")
    print(f"{len(dataset)} samples, {len(tasks)} task(s), {len(sampler)} batches per epoch")
    seen: dict[str, list[int]] = {t: [] for t in tasks}
    batches = list(iter(sampler))
    for batch in batches:
        for name in tasks:
            seen[name].extend(batch)
    print("\nper task (before balancing -> as sampled in one epoch):")
    for name, task in tasks.items():
        indices = dataset.task_indices(name)
        print(f"  {name} [{task.kind}]: {len(indices)} labelled samples")
        if task.is_classification and not task.ragged:
            print(f"    dataset: {_fmt_counts(_class_counts(dataset, task))}")
            drawn = np.concatenate([np.asarray(b) for b in batches]) if batches else np.zeros(0, dtype=np.int64)
            positions = np.searchsorted(indices, drawn)
            positions = positions[(positions < len(indices)) & (indices[np.minimum(positions, len(indices) - 1)] == drawn)]
            print(f"    sampled: {_fmt_counts(_class_counts(dataset, task, positions))}")
    print(f"\nfirst {min(args.batches, len(batches))} batches:")
    collate = make_collate([t.name for t in tasks.values() if t.ragged])
    for k, rows in enumerate(batches[: args.batches]):
        batch = collate(dataset.__getitems__(rows))
        parts = Counter({t: int(m.sum()) for t, m in batch.masks.items()})
        mix = " + ".join(f"{n} {t}" for t, n in parts.items() if n)
        line = f"  {k:>3}: [{mix}]"
        inputs = batch.inputs
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 2 and inputs.shape[1] == 1:
            line += f"  inputs={inputs[:, 0].tolist()}"
        for t in batch.tasks:
            target = batch.targets[t]
            if isinstance(target, torch.Tensor) and target.ndim == 1:
                line += f"  {t}={target[batch.masks[t]].tolist()}"
        print(line)
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from hydranet.cli.demo import run_demo

    run_demo(
        out=args.out,
        epochs=args.epochs,
        seed=args.seed,
        balancer=args.balancer,
        train_size=args.train_size,
        batches_per_epoch=args.batches,
        baselines=not args.no_baselines,
        progress=not args.quiet,
        verbose=args.verbose,
        scarce=args.scarce,
    )
    return EXIT_OK


def bench(args: argparse.Namespace) -> int:
    from hydranet.cli.bench import run_bench

    run_bench(quick=args.quick)
    return EXIT_OK
