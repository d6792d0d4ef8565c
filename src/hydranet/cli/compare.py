r"""``hydranet compare``: every balancer × seed of one config, ranked, with the seed spread and a test.

For each seed :math:`s` (the config's seed, then the next ones: ``--seeds 3`` runs ``seed, seed+1,
seed+2``; the seed fixes the data a builtin source builds, the initial weights and the batches):

1. one single-task baseline per task, trained **once** and shared by every balancer of that seed:
   the config's model, optimizer, scheduler and budget, equal weighting, the training loader restricted to
   the task (:class:`~hydranet.train.loaders.TaskView`, as ``trainer.baselines: train`` does), its best
   epoch chosen on the task's main validation metric;
2. one multi-task run per balancer, monitoring the validation Δm against those baselines.

Every model is scored on the test split (the validation split when there is none) at its best validation
epoch, and for run :math:`(b, s)`

.. math:: \Delta_m(b, s) = \frac{100}{T}\sum_t (-1)^{l_t}\,\frac{M_t(b, s) - B_t(s)}{|B_t(s)|}

(:func:`hydranet.metrics.delta_m`; :math:`l_t = 1` where lower is better). The table ranks the balancers by
mean Δm and gives every task's main metric and Δm as mean ± standard deviation over the seeds.

**Which differences exceed the seed spread.** A value is marked ``*`` when it differs from the best
balancer's in that column by a two-sided **paired t-test** across seeds at :math:`p < 0.05`
(:func:`scipy.stats.ttest_rel` on the per-seed differences). Paired, not Welch's test on two independent
samples: within a seed every balancer shares the data, the initial weights and the baselines, so the
seed-to-seed variation common to all of them (an easier test pool, a better baseline) cancels in the
difference, and what remains is the method's effect and its own noise. With 3 seeds the test has 2
degrees of freedom: only consistent differences pass it, and an unmarked one is not shown to be equal.

**Resumable.** Each run writes its result file (``runs/seed<S>/<run>.json``) atomically when it has
finished, and keeps its checkpoints in ``runs/seed<S>/<run>/``; a compare started again with the same
``--out`` skips the finished runs and resumes an unfinished one from its last checkpoint. The results
are tied to the config and ``--set`` overrides (a fingerprint): another config in the same folder is an
error, not a silent mix. ``--jobs N`` runs N runs at a time in spawned processes (one torch thread each).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from hydranet.cli._codes import EXIT_OK

__all__ = ["ALPHA", "TEST", "command", "markdown_table", "plot_compare", "run_compare", "summarize"]

#: Significance level of the paired test.
ALPHA = 0.05
#: The test, as written into compare.json and under the table.
TEST = (
    "* differs from the best in its column: two-sided paired t-test across seeds (shared data, weights and "
    f"baselines per seed), p < {ALPHA}"
)


# ------------------------------------------------------------------------------------------ the runs


@dataclasses.dataclass(frozen=True)
class _Run:
    """One training run of a compare: a task's baseline or a balancer's multi-task model, for one seed."""

    kind: str  # "baseline" | "mtl"
    seed: int
    name: str  # the task (baseline) or the balancer (mtl)

    @property
    def key(self) -> str:
        return f"baseline-{self.name}" if self.kind == "baseline" else self.name

    def result_file(self, out: Path) -> Path:
        return out / "runs" / f"seed{self.seed}" / f"{self.key}.json"

    def folder(self, out: Path) -> Path:
        return out / "runs" / f"seed{self.seed}" / self.key


def _overrides(texts: Sequence[str]) -> dict[str, Any]:
    from hydranet.cli.config import parse_override

    return dict(parse_override(t) for t in texts)


def _fingerprint(config: Path, overrides: Mapping[str, Any]) -> str:
    """What the results depend on besides the seed and the balancer: the validated config."""
    from hydranet.cli.config import load_config

    cfg = load_config(config, overrides=dict(overrides))
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("cache", "source", "output", "seed", "balancer")}
    fields["trainer"] = {k: v for k, v in fields["trainer"].items() if k != "baselines"}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_atomic(path: Path, content: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(content, handle, indent=1, default=float)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)  # a killed run leaves no file, never half of one


def _build(config: Path, overrides: Mapping[str, Any]) -> tuple[Any, dict[str, Any], Any, Any, Any, Any]:
    """The config's tasks, model and loaders, built the way ``hydranet train`` builds them."""
    from hydranet.cli import commands
    from hydranet.cli.config import ConfigError, load_config
    from hydranet.cli.sources import build_split

    import torch

    cfg = load_config(config, overrides=dict(overrides))
    torch.manual_seed(cfg.seed)
    train_ds = build_split(cfg, "train")
    if train_ds is None:
        raise ConfigError("The config has no 'data.train' split.")
    tasks = commands._tasks_of(cfg, train_ds)
    val_ds, test_ds = build_split(cfg, "val", tasks), build_split(cfg, "test", tasks)
    if val_ds is None:
        raise ConfigError("hydranet compare needs a 'data.val' split: baselines and runs keep their best validation epoch.")
    model = commands.build_model(cfg, tasks, commands._example_input(train_ds))
    commands._init_output_bias(cfg, model, train_ds, tasks)
    loaders = [commands.make_loader(cfg, ds, tasks, train=ds is train_ds) for ds in (train_ds, val_ds, test_ds or val_ds)]
    train_loader, val_loader, test_loader = loaders
    return cfg, tasks, model, train_loader, val_loader, test_loader


def _fit_and_score(cfg: Any, model: Any, tasks: dict[str, Any], folder: Path, loaders: Sequence[Any]) -> Any:
    """Train (resuming from ``folder/last.pt`` when a killed run left one) and return the trainer with its
    best validation epoch loaded."""
    from hydranet.cli import commands

    trainer = commands._trainer(cfg, model, tasks, folder, progress=False)
    train_loader, val_loader = loaders[0], loaders[1]
    resume = "last" if (folder / "last.pt").is_file() else None
    trainer.fit(train_loader, val_loader, epochs=cfg.trainer["epochs"], resume=resume)
    if trainer.best_epoch is not None and (folder / "best.pt").is_file():
        trainer.load_checkpoint(folder / "best.pt")
    return trainer


def _execute(
    run: _Run, config: str, overrides: dict[str, Any], out: str, fingerprint: str, needs: dict[str, Any]
) -> dict[str, Any]:
    """Train one run and write its result file; runs in a worker process with ``--jobs``. ``needs``: a
    baseline's ``metric`` and ``higher_is_better``, or a multi-task run's ``baselines`` (of its seed)."""
    from hydranet.train.loaders import TaskView

    start = time.perf_counter()
    out_dir = Path(out)
    folder = run.folder(out_dir)
    settings = {**overrides, "seed": run.seed}
    if run.kind == "baseline":
        settings["trainer.baselines"] = None
        settings["balancer"] = "ew"
        settings["trainer.monitor"] = f"val/{run.name}/{needs['metric']}"
        cfg, tasks, model, *loaders = _build(Path(config), settings)
        views = [TaskView(loader, run.name) for loader in loaders]
        trainer = _fit_and_score(cfg, model, {run.name: tasks[run.name]}, folder, views)
        test = trainer.evaluate(views[2])[run.name]
        result = {"val": trainer.best_score, "test": {k: float(v) for k, v in test.items()}, **needs}
    else:
        baselines = needs["baselines"]
        settings["trainer.baselines"] = {t: {b["metric"]: b["val"]} for t, b in baselines.items()}
        if run.name != _config_balancer(config, overrides):
            settings["balancer"] = run.name  # the config's options belong to its own balancer
        cfg, tasks, model, *loaders = _build(Path(config), settings)
        trainer = _fit_and_score(cfg, model, tasks, folder, loaders)
        test = trainer.evaluate(loaders[2])
        result = {"val_delta_m": trainer.best_score, "test": {t: {k: float(v) for k, v in s.items()} for t, s in test.items()}}
    result.update(
        kind=run.kind, seed=run.seed, name=run.name, best_epoch=trainer.best_epoch, seconds=time.perf_counter() - start,
        fingerprint=fingerprint, split="test" if cfg.data.get("test") else "val",
    )
    _write_atomic(run.result_file(out_dir), result)
    return result


def _config_balancer(config: str | Path, overrides: Mapping[str, Any]) -> str:
    from hydranet.cli.config import load_config

    return str(load_config(config, overrides=dict(overrides)).balancer["name"])


def _init_worker() -> None:
    # N jobs on N cores: one thread each, or they oversubscribe the cores and all run slower.
    import torch

    torch.set_num_threads(1)


def _read_done(run: _Run, out: Path, fingerprint: str) -> dict[str, Any] | None:
    path = run.result_file(out)
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path} is a result of another config or other --set overrides (fingerprint {result.get('fingerprint')} "
            f"here {fingerprint}): compare into another --out folder, or delete {out / 'runs'} to start afresh."
        )
    return result


def _check_balancers(balancers: Sequence[str]) -> list[str]:
    from hydranet._checks import did_you_mean
    from hydranet.balancing import AGGREGATORS, WEIGHTINGS

    names = []
    for raw in balancers:
        key = str(raw).strip().lower().replace("-", "_")
        if key not in WEIGHTINGS and key not in AGGREGATORS:
            raise ValueError(
                f"--balancers: unknown balancer {raw!r}.{did_you_mean(key, [*WEIGHTINGS, *AGGREGATORS])} "
                f"Weightings: {', '.join(sorted(WEIGHTINGS))}; aggregators: {', '.join(sorted(AGGREGATORS))}."
            )
        if key in names:
            raise ValueError(f"--balancers names {key!r} twice; name each balancer once.")
        names.append(key)
    if not names:
        raise ValueError("--balancers: name at least one balancer, e.g. --balancers ew uw pcgrad upgrad.")
    return names


def command(args: argparse.Namespace) -> int:
    """``hydranet compare``: :func:`run_compare` with the parsed arguments (dispatched here, not through
    ``commands``, which this module builds its runs with)."""
    run_compare(
        args.config, args.balancers, seeds=args.seeds, jobs=args.jobs, out=args.out, overrides=args.overrides, plot=not args.no_plot
    )
    return EXIT_OK


def run_compare(
    config: str | Path,
    balancers: Sequence[str] = ("ew", "uw", "pcgrad", "upgrad"),
    *,
    seeds: int = 3,
    jobs: int = 1,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    plot: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or continue) a compare and write ``compare.json``, ``compare.md`` and ``compare.png`` into
    ``out`` (default ``compare-<config name>``); returns the ``compare.json`` content.

    Args:
        config: the YAML config; its ``balancer`` and ``seed`` are replaced per run.
        balancers: method names of :func:`hydranet.balancing.make`.
        seeds: number of seeds, from the config's seed on.
        jobs: runs at a time (spawned processes, one torch thread each); 1 runs them in this process.
        overrides: ``KEY=VALUE`` texts, as ``--set`` (e.g. ``trainer.epochs=2``).
        plot: draw ``compare.png`` (matplotlib, the ``report`` extra).
    """
    from hydranet._checks import check_int
    from hydranet.cli.config import load_config

    names = _check_balancers(balancers)
    n_seeds = check_int("seeds", seeds, 1)
    jobs = check_int("jobs", jobs, 1)
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise ImportError("compare's plot needs matplotlib: pip install 'hydranet[report]', or pass --no-plot.") from error
    config = Path(config)
    settings = _overrides(overrides)
    cfg = load_config(config, overrides=settings)
    first = int(cfg.seed)
    seed_list = list(range(first, first + n_seeds))
    out_dir = Path(out) if out is not None else Path(f"compare-{config.stem}")
    fingerprint = _fingerprint(config, settings)
    mains = _main_metrics(config, settings)
    task_names = list(mains)
    # Seed after seed, a seed's baselines first: with one job, whole seeds finish one by one.
    plan = [_Run("baseline", s, t) for s in seed_list for t in task_names] + [_Run("mtl", s, b) for s in seed_list for b in names]
    plan.sort(key=lambda r: (r.seed, r.kind != "baseline"))
    done = {run: r for run in plan if (r := _read_done(run, out_dir, fingerprint)) is not None}
    log(
        f"hydranet compare: {len(names)} balancer(s) x {n_seeds} seed(s) + {len(task_names)} baseline(s) per seed = "
        f"{len(plan)} runs, {len(done)} done already; results in {out_dir}"
    )
    started = time.perf_counter()
    _run_plan(plan, done, str(config), settings, out_dir, fingerprint, jobs, log, mains)
    result = summarize(done, names, seed_list, task_names)
    result.update(config=str(config), overrides=list(overrides), fingerprint=fingerprint, seconds=time.perf_counter() - started, jobs=jobs)
    _write_atomic(out_dir / "compare.json", result)
    (out_dir / "compare.md").write_text(markdown_table(result))
    if plot:
        plot_compare(result, out_dir / "compare.png")
    log("\n" + markdown_table(result))
    return result


def _main_metrics(config: Path, overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task: {"metric": main metric, "higher_is_better": bool}}`` of the config's tasks."""
    from hydranet.cli import commands
    from hydranet.cli.config import ConfigError, load_config
    from hydranet.cli.sources import build_split
    from hydranet.metrics import main_metric

    cfg = load_config(config, overrides=dict(overrides))
    train_ds = build_split(cfg, "train")
    if train_ds is None:
        raise ConfigError("The config has no 'data.train' split.")
    tasks = commands._tasks_of(cfg, train_ds)
    return {name: dict(zip(("metric", "higher_is_better"), main_metric(task))) for name, task in tasks.items()}


def _baselines_of(done: Mapping[_Run, dict[str, Any]], seed: int, tasks: Sequence[str]) -> dict[str, Any] | None:
    found = {r.name: v for r, v in done.items() if r.kind == "baseline" and r.seed == seed}
    return found if all(t in found for t in tasks) else None


def _run_plan(
    plan: list[_Run],
    done: dict[_Run, dict[str, Any]],
    config: str,
    overrides: dict[str, Any],
    out: Path,
    fingerprint: str,
    jobs: int,
    log: Callable[[str], None],
    mains: Mapping[str, dict[str, Any]],
) -> None:
    """Run what is not done: baselines first, a seed's multi-task runs once its baselines are."""
    tasks = list(mains)
    todo = [r for r in plan if r not in done]
    total, count = len(plan), len(done)

    def finished(run: _Run, result: dict[str, Any]) -> None:
        nonlocal count
        done[run] = result
        count += 1
        what = f"baseline {run.name}" if run.kind == "baseline" else run.name
        log(f"[{count}/{total}] seed {run.seed} {what}: done in {result['seconds']:.0f} s")

    def ready(run: _Run) -> dict[str, Any] | None:
        """What the run needs, or None while its seed's baselines are not all done."""
        if run.kind == "baseline":
            return dict(mains[run.name])
        found = _baselines_of(done, run.seed, tasks)
        return None if found is None else {"baselines": found}

    if jobs == 1:
        for run in todo:
            needs = ready(run)
            assert needs is not None  # the plan puts a seed's baselines before its runs
            finished(run, _execute(run, config, overrides, str(out), fingerprint, needs))
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after torch's threads start is unsafe
    running: dict[Future[dict[str, Any]], _Run] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker) as pool:
        try:
            while todo or running:
                for run in list(todo):
                    needs = ready(run)
                    if needs is not None:
                        running[pool.submit(_execute, run, config, overrides, str(out), fingerprint, needs)] = run
                        todo.remove(run)
                finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    run = running.pop(future)
                    try:
                        result = future.result()
                    except Exception as error:
                        raise RuntimeError(
                            f"run {run.key} of seed {run.seed} failed: {error} (the finished runs are kept: run the "
                            "same compare again to continue)"
                        ) from error
                    finished(run, result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# -------------------------------------------------------------------------------------- the table


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "values": [float(v) for v in arr]}


def _paired_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided paired t-test p-value of ``a - b`` across seeds (None below 2 seeds or without spread)."""
    if len(a) < 2:
        return None
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.allclose(diff, 0.0):
        return 1.0
    if np.ptp(diff) <= 1e-12 * np.abs(diff).max():  # the same difference on every seed: no spread at all
        return 0.0
    from scipy import stats

    return float(stats.ttest_rel(a, b).pvalue)


def _mark(column: dict[str, dict[str, Any]], higher: bool) -> None:
    """Mark the entries that differ from the best one of the column (paired test across seeds)."""
    best = (max if higher else min)(column, key=lambda b: column[b]["mean"])
    for name, entry in column.items():
        entry["p"] = None if name == best else _paired_p(entry["values"], column[best]["values"])
        entry["marked"] = entry["p"] is not None and entry["p"] < ALPHA
        entry["best"] = name == best


def summarize(
    done: Mapping[Any, dict[str, Any]], balancers: Sequence[str], seeds: Sequence[int], tasks: Sequence[str]
) -> dict[str, Any]:
    """compare.json's content from the run results: per-seed baselines and runs, Δm, the ranked table."""
    from hydranet.metrics import delta_m

    base = {s: {r.name: v for r, v in done.items() if r.kind == "baseline" and r.seed == s} for s in seeds}
    runs = {b: {r.seed: v for r, v in done.items() if r.kind == "mtl" and r.name == b and r.seed in seeds} for b in balancers}
    info = {t: {"metric": base[seeds[0]][t]["metric"], "higher_is_better": base[seeds[0]][t]["higher_is_better"]} for t in tasks}
    scores: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in tasks}
    dms: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for b in balancers:
        per_seed = []
        for s in seeds:
            mtl = {t: {info[t]["metric"]: runs[b][s]["test"][t][info[t]["metric"]]} for t in tasks}
            single = {t: {info[t]["metric"]: base[s][t]["test"][info[t]["metric"]]} for t in tasks}
            hib = {t: {info[t]["metric"]: info[t]["higher_is_better"]} for t in tasks}
            runs[b][s]["delta_m"] = delta_m(mtl, single, hib)
            per_seed.append(runs[b][s]["delta_m"])
        dms[b] = _stats(per_seed)
        for t in tasks:
            scores[t][b] = _stats([runs[b][s]["test"][t][info[t]["metric"]] for s in seeds])
        seconds[b] = float(np.mean([runs[b][s]["seconds"] for s in seeds]))
    _mark(dms, True)
    for t in tasks:
        _mark(scores[t], info[t]["higher_is_better"])
    order = sorted(balancers, key=lambda b: -dms[b]["mean"])
    table = [
        {"rank": k + 1, "balancer": b, "scores": {t: scores[t][b] for t in tasks}, "delta_m": dms[b], "seconds": seconds[b]}
        for k, b in enumerate(order)
    ]
    single_scores = {t: _stats([base[s][t]["test"][info[t]["metric"]] for s in seeds]) for t in tasks}
    return {
        "seeds": list(seeds),
        "balancers": list(balancers),
        "tasks": info,
        "test": TEST,
        "alpha": ALPHA,
        "split": next(iter(base[seeds[0]].values()))["split"],
        "single_task": {"scores": single_scores, "seconds": float(np.mean([v["seconds"] for s in seeds for v in base[s].values()]))},
        "table": table,
        "baselines": {str(s): {t: v for t, v in base[s].items()} for s in seeds},
        "runs": {b: {str(s): v for s, v in runs[b].items()} for b in balancers},
    }


def _cell(entry: Mapping[str, Any], digits: int, sign: bool = False) -> str:
    text = f"{entry['mean']:{'+' if sign else ''}.{digits}f} ± {entry['std']:.{digits}f}"
    return text + (" *" if entry.get("marked") else "")


def markdown_table(result: Mapping[str, Any]) -> str:
    """The ranked table of a ``compare.json`` (what ``compare.md`` holds and the docs show)."""
    tasks = result["tasks"]
    seeds = result["seeds"]
    header = ["rank", "balancer", *[f"{t} {v['metric']}" for t, v in tasks.items()], "Δm (%)", "time per run (s)"]
    lines = [
        f"{result['split']} split, mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); Δm against "
        "single-task baselines trained once per seed and shared.",
        "",
        "| " + " | ".join(header) + " |",
        "| ---: | --- | " + " | ".join("---:" for _ in header[2:]) + " |",
    ]
    for row in result["table"]:
        cells = [str(row["rank"]), f"`{row['balancer']}`", *[_cell(row["scores"][t], 3) for t in tasks], _cell(row["delta_m"], 2, True), f"{row['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    single = result["single_task"]
    cells = ["", "single-task", *[_cell(single["scores"][t], 3) for t in tasks], "0", f"{single['seconds']:.0f} per task"]
    lines.append("| " + " | ".join(cells) + " |")
    lines += ["", TEST + ("." if len(seeds) > 1 else " (needs 2 seeds or more: nothing is marked with one).")]
    return "\n".join(lines) + "\n"


def plot_compare(result: Mapping[str, Any], path: str | Path) -> Path:
    """``compare.png``: Δm and every task's score per balancer (mean ± std, seeds as dots), ranked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("compare's plot needs matplotlib: pip install 'hydranet[report]', or pass --no-plot.") from error
    rows = result["table"]
    names = [r["balancer"] for r in rows]
    tasks = list(result["tasks"])
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(3.2 * (len(tasks) + 1), 0.45 * len(names) + 1.8), squeeze=False)
    y = np.arange(len(names))[::-1]
    panels = [("Δm (%)", [r["delta_m"] for r in rows], 0.0)] + [
        (f"{t} {result['tasks'][t]['metric']}", [r["scores"][t] for r in rows], result["single_task"]["scores"][t]["mean"]) for t in tasks
    ]
    for ax, (title, entries, reference) in zip(axes[0], panels):
        means = [e["mean"] for e in entries]
        ax.errorbar(means, y, xerr=[e["std"] for e in entries], fmt="o", color="C0", capsize=3)
        for yy, e in zip(y, entries):
            ax.plot(e["values"], [yy] * len(e["values"]), ".", color="0.4", ms=4)
            if e.get("marked"):
                ax.annotate("*", (e["mean"], yy), textcoords="offset points", xytext=(0, 5), ha="center", color="C3")
        ax.axvline(reference, color="C1", ls="--", lw=1, label="single-task" if reference else "Δm = 0")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(y, names if ax is axes[0][0] else [""] * len(names))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"hydranet compare: {len(result['seeds'])} seeds, * paired t-test p < {ALPHA} vs the best", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
