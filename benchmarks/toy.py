r"""The two-objective toy of CAGrad (Liu et al., NeurIPS 2021) and Nash-MTL (Navon et al., ICML 2022).

Reproduces, with hydranet's aggregators, which starting points reach the Pareto front per method.

Problem (on :math:`x = (x_1, x_2) \in \mathbb{R}^2`; the same formulas as ``Toy`` in the CAGrad authors'
``toy.py`` and the Nash-MTL authors' ``experiments/toy/problem.py``, re-derived and written here):

.. math::
    a = \max(\tanh(x_2/2), 0),\qquad b = \max(\tanh(-x_2/2), 0)\\
    u_1 = \log\max(|{-\tfrac12}(x_1+7) + \tanh x_2|,\ \epsilon) + 6,\qquad
    u_2 = \log\max(|\tfrac12(3-x_1) - \tanh x_2 + 2|,\ \epsilon) + 6\\
    q_1 = \big((x_1-7)^2 + 0.1\,(x_2+8)^2\big)/10 - 20,\qquad
    q_2 = \big((x_1+7)^2 + 0.1\,(x_2+8)^2\big)/10 - 20\\
    L_1 = s\,(a\,u_1 + b\,q_1),\qquad L_2 = a\,u_2 + b\,q_2,\qquad \epsilon = 5\cdot10^{-6}

:math:`s = 1` in the CAGrad setup; the Nash-MTL authors scale the first loss by :math:`s = 0.1` (their
``--scale`` default) to give the losses different scales. For :math:`x_2 < 0` only the quadratics act; the
Pareto set (invariant to :math:`s`) is the curve :math:`x_1 = 14\lambda - 7`, :math:`\lambda \in [0, 1]`, with
:math:`x_2` the root of :math:`\partial_{x_2}[\lambda L_1/s + (1-\lambda) L_2] = 0` (close to
:math:`x_2 = -8.3552`, the authors' ``yy``; the average loss is minimal at :math:`(0, -8.3552)`).

Setups (each constant from the authors' code, read at the commits named in ``docs/results.md``):

* ``cagrad``: CAGrad ``toy.py``: starts (-8.5, 7.5), (-8.5, -5), (9, 9); Adam, lr 0.001, 100,000 steps;
  CAGrad c = 0.5; methods there: Adam on the mean ("sgd"), MGDA, PCGrad, CAGrad.
* ``nash_mtl``: Nash-MTL ``experiments/toy/trainer.py``: starts (-8.5, 7.5), (0, 0), (9, 9),
  (-7.5, -0.5), (9, -1); Adam, lr 0.001, 35,000 steps (``n_epochs``); :math:`s = 0.1`; CAGrad c = 0.4
  (their default); Nash-MTL's update clipped to norm 1 (their ``max_norm``); methods there: LS, PCGrad,
  CAGrad, MGDA, Nash-MTL.

Every method of ``METHODS`` runs from every start of both setups: at each step the 2 x 2 task Jacobian
(rows :math:`\nabla L_1, \nabla L_2`, torch autograd, float64) goes through ``AGGREGATORS[name]`` and the
update is Adam's gradient. Adam is elementwise, so all runs of a setup share one ``[runs, 2]`` parameter
and one optimiser, and one autograd pass gives every run's Jacobian; only the aggregator calls are per run.
The constant factors between hydranet's and the authors' scalings (sum vs mean, CAGrad's 1 + c vs
1 + c^2) do not change Adam's steps (beyond its eps = 1e-8).

Reached the front: the final point lies within ``TOL`` (0.05) of the Pareto set in x-space (the set
is sampled at 20,001 values of lambda). Adam at lr 0.001 jitters by about 0.001 around a limit point,
and a stuck run sits at distance 2 or more, so the verdict does not hinge on ``TOL``.

Early stop (``--early-stop``, the default): a run that has reached the front and moved less than
``SETTLE`` (0.01) over the last ``WINDOW`` (2,000) steps is stopped; its remaining steps only jitter
within Adam's step. The steps each run took are in the JSON. ``--no-early-stop`` runs every step.

Run: ``python benchmarks/toy.py`` (writes ``benchmarks/results/toy.json``, ``docs/images/toy_*.png`` and the
table in ``docs/results.md``); ``--write-docs`` only regenerates the table from the JSON;
``--steps N`` runs N steps instead of the papers'.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq

from hydranet.balancing.aggregators import AGGREGATORS

__all__ = [
    "AVERAGE_OPTIMUM",
    "METHODS",
    "PAPER",
    "SETUPS",
    "distance_to_pareto",
    "jacobians",
    "pareto_set",
    "render_tables",
    "run_setup",
    "toy_losses",
    "write_docs",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "toy.json"
DOC = ROOT / "docs" / "results.md"
IMAGES = ROOT / "docs" / "images"
BEGIN, END = "<!-- toy-table:begin -->", "<!-- toy-table:end -->"

LOWER = 5e-6  # the authors' LOWER: floor of |.| inside the logs
TOL = 0.05  # distance to the Pareto set (x-space) that counts as reached
WINDOW, SETTLE = 2000, 0.01  # early stop: on the front and moved < SETTLE over WINDOW steps
AVERAGE_OPTIMUM = (0.0, -8.3552)  # the authors' marked minimum of the average loss

#: hydranet aggregator name -> label in the tables (``mean`` is the papers' Adam / LS baseline, "ew").
METHODS = {
    "mean": "ew (mean)",
    "mgda": "MGDA",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "imtl_g": "IMTL-G",
    "nash_mtl": "Nash-MTL",
    "upgrad": "UPGrad",
}

SETUPS = {
    "cagrad": {
        "title": "CAGrad setup (Liu et al. 2021, Fig. 1)",
        "starts": [(-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0)],
        "steps": 100_000,
        "lr": 1e-3,
        "scale": 1.0,
        "settings": {"cagrad": {"c": 0.5}},
    },
    "nash_mtl": {
        "title": "Nash-MTL setup (Navon et al. 2022, toy figure)",
        "starts": [(-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)],
        "steps": 35_000,
        "lr": 1e-3,
        "scale": 0.1,
        "settings": {"cagrad": {"c": 0.4}},
    },
}

#: What each paper's figure shows: the starts (indices into the setup's starts) that end on the front,
#: read from the figures (CAGrad: paper Fig. 1 = misc/cagrad.gif of the authors' repository; Nash-MTL:
#: the toy figure = misc/toy_pareto_2d.png of theirs). A method the paper does not run is absent.
PAPER = {
    "cagrad": {
        "mean": ([1], "1/3: the two upper starts stall in the valleys of the log terms (x2 about 2)"),
        "mgda": ([0, 1, 2], "3/3, at three different points of the front, none at the average optimum"),
        "pcgrad": ([0, 1, 2], "3/3, at three different points of the front, none at the average optimum"),
        "cagrad": ([0, 1, 2], "3/3, all at the average-loss optimum (0, -8.36)"),
    },
    "nash_mtl": {
        "mean": ([0, 1, 3, 4], "4/5 (LS): the start (9, 9) stalls"),
        "pcgrad": ([0, 1, 3, 4], "4/5: the start (9, 9) stalls"),
        "cagrad": ([0, 1, 3, 4], "4/5: the start (9, 9) stalls"),
        "mgda": ([0, 1, 2, 3, 4], "5/5, three of them at the l1 end of the front"),
        "nash_mtl": ([0, 1, 2, 3, 4], "5/5, spread along the front"),
    },
}


# -- the problem --------------------------------------------------------------------------------
def toy_losses(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``[..., 2]`` losses :math:`(L_1, L_2)` at points ``x [..., 2]`` (formulas in the module docstring)."""
    x1, x2 = x[..., 0], x[..., 1]
    upper = torch.clamp(torch.tanh(0.5 * x2), min=0.0)  # a: weight of the log terms (x2 > 0)
    lower = torch.clamp(torch.tanh(-0.5 * x2), min=0.0)  # b: weight of the quadratics (x2 < 0)
    log1 = torch.log(torch.clamp(torch.abs(-0.5 * (x1 + 7.0) - torch.tanh(-x2)), min=LOWER)) + 6.0
    log2 = torch.log(torch.clamp(torch.abs(0.5 * (3.0 - x1) + torch.tanh(-x2) + 2.0), min=LOWER)) + 6.0
    bowl = 0.1 * (x2 + 8.0) ** 2
    quad1 = ((x1 - 7.0) ** 2 + bowl) / 10.0 - 20.0
    quad2 = ((x1 + 7.0) ** 2 + bowl) / 10.0 - 20.0
    return torch.stack([scale * (upper * log1 + lower * quad1), upper * log2 + lower * quad2], dim=-1)


def jacobians(x: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses [R, 2], J [R, 2, 2])`` at the points ``x [R, 2]``; ``J[r, i]`` is :math:`\\nabla L_i(x_r)`.

    The points are independent, so the gradient of each loss summed over the points gives every point's
    gradient in one backward pass per loss."""
    point = x.detach().requires_grad_(True)
    losses = toy_losses(point, scale)
    rows = [torch.autograd.grad(losses[:, i].sum(), point, retain_graph=i == 0)[0] for i in range(2)]
    return losses.detach(), torch.stack(rows, dim=1)


def _pareto_x2(lam: float) -> float:
    """:math:`x_2` of the Pareto point with weight ``lam`` on :math:`L_1/s` (root of the x2-stationarity)."""
    mix = 196.0 * lam * (1.0 - lam)  # lam (x1 - 7)^2 + (1 - lam)(x1 + 7)^2 at x1 = 14 lam - 7

    def stationarity(x2: float) -> float:
        t = math.tanh(-0.5 * x2)
        value = (mix + 0.1 * (x2 + 8.0) ** 2) / 10.0 - 20.0
        return -0.5 * (1.0 - t * t) * value + 0.02 * (x2 + 8.0) * t

    return brentq(stationarity, -12.0, -6.0, xtol=1e-14)


@functools.lru_cache(maxsize=4)
def _pareto_samples(points: int) -> np.ndarray:
    lam = np.linspace(0.0, 1.0, points)
    out = np.stack([14.0 * lam - 7.0, [_pareto_x2(float(v)) for v in lam]], axis=1)
    out.setflags(write=False)
    return out


def pareto_set(points: int = 20_001) -> np.ndarray:
    """``[points, 2]`` samples of the Pareto set in x-space (the same for every scale ``s``), at
    ``points`` equally spaced weights lambda."""
    return _pareto_samples(points).copy()


def distance_to_pareto(points: np.ndarray, front: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance of each of ``points [n, 2]`` to the sampled Pareto set ``front``."""
    front = pareto_set() if front is None else front
    diff = np.asarray(points, dtype=np.float64)[:, None, :] - front[None, :, :]
    return np.sqrt((diff**2).sum(axis=2)).min(axis=1)


# -- the runs -----------------------------------------------------------------------------------
def run_setup(
    name: str,
    methods: list[str] | None = None,
    steps: int | None = None,
    early_stop: bool = True,
    record_every: int = 10,
) -> dict:
    """Every method from every start of setup ``name``; returns the runs with their trajectories.

    Returns ``{"runs": [{"method", "start", "steps", "final", "losses", "distance", "reached",
    "to_optimum", "cosine"}], "trajectories": {(method, start_index): array [k, 2]}, "seconds"}``.
    """
    setup = SETUPS[name]
    methods = list(METHODS) if methods is None else methods
    steps = setup["steps"] if steps is None else steps
    starts = setup["starts"]
    pairs = [(m, i) for m in methods for i in range(len(starts))]
    aggregators = [AGGREGATORS[m](**setup["settings"].get(m, {})) for m, _ in pairs]
    x = torch.tensor([starts[i] for _, i in pairs], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=setup["lr"])
    front = pareto_set()
    active = np.ones(len(pairs), dtype=bool)
    taken = np.full(len(pairs), steps)
    history = [x.detach().numpy().copy()]
    anchor = x.detach().numpy().copy()  # positions WINDOW steps ago (early stop)
    tic = time.perf_counter()
    for step in range(steps):
        _, jac = jacobians(x, setup["scale"])
        update = torch.zeros_like(jac[:, 0])
        for r in np.flatnonzero(active):
            update[r] = aggregators[r](jac[r])
        frozen = x.detach().clone()
        x.grad = update
        optimizer.step()
        with torch.no_grad():
            x[~torch.from_numpy(active)] = frozen[~torch.from_numpy(active)]
        if (step + 1) % record_every == 0:
            history.append(x.detach().numpy().copy())
        if (step + 1) % 10_000 == 0:
            print(f"  {name}: step {step + 1:,}, {active.sum()} of {len(pairs)} runs active, "
                  f"{time.perf_counter() - tic:.0f} s", flush=True)
        if early_stop and (step + 1) % WINDOW == 0:
            now = x.detach().numpy()
            settled = (np.linalg.norm(now - anchor, axis=1) < SETTLE) & (distance_to_pareto(now, front) < TOL)
            taken[active & settled] = step + 1
            active &= ~settled
            anchor = now.copy()
            if not active.any():
                break
    seconds = time.perf_counter() - tic
    final = x.detach()
    losses, jac = jacobians(final, setup["scale"])
    cosine = torch.nn.functional.cosine_similarity(jac[:, 0], jac[:, 1], dim=1)
    distance = distance_to_pareto(final.numpy(), front)
    optimum = np.linalg.norm(final.numpy() - np.array(AVERAGE_OPTIMUM), axis=1)
    traj = np.stack(history, axis=1)  # [runs, k, 2]
    runs = [
        {
            "method": m,
            "start": list(starts[i]),
            "steps": int(taken[r]),
            "final": [round(float(v), 4) for v in final[r]],
            "losses": [round(float(v), 4) for v in losses[r]],
            "distance": round(float(distance[r]), 4),
            "reached": bool(distance[r] < TOL),
            "to_optimum": round(float(optimum[r]), 4),
            "cosine": round(float(cosine[r]), 4),
        }
        for r, (m, i) in enumerate(pairs)
    ]
    trajectories = {}
    for r, (m, i) in enumerate(pairs):
        keep = (taken[r] // record_every) + 1
        trajectories[(m, i)] = traj[r, :keep]
    return {"runs": runs, "trajectories": trajectories, "seconds": seconds, "steps": steps}


# -- the table ----------------------------------------------------------------------------------
def _cell(run: dict) -> str:
    x1, x2 = run["final"]
    if run["reached"]:
        where = "at the average optimum" if run["to_optimum"] < TOL else f"x1 = {x1:.2f}"
        return f"yes ({where})"
    return f"no, at ({x1:.2f}, {x2:.2f})"


def render_tables(results: dict) -> str:
    """The Markdown tables of ``results`` (the content of ``toy.json``): per setup, a row per method."""
    out = []
    for name, setup in results["setups"].items():
        starts = [tuple(s) for s in setup["starts"]]
        header = ["method", *[f"({a:g}, {b:g})" for a, b in starts], "reached", "paper reports", "agrees"]
        steps = f"{setup['steps_planned']:,} steps"
        if setup["steps_planned"] != setup["paper_steps"]:
            steps += f" (the paper: {setup['paper_steps']:,})"
        out.append(f"**{SETUPS[name]['title']}**: {steps}, Adam lr {setup['lr']:g}, s = {setup['scale']:g}.\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---"] * len(header)) + "|")
        for method, label in METHODS.items():
            runs = [r for r in setup["runs"] if r["method"] == method]
            if not runs:
                continue
            reached = [i for i, r in enumerate(runs) if r["reached"]]
            claim = PAPER[name].get(method)
            if claim is None:
                paper, agrees = "not run", "-"
            else:
                paper, agrees = claim[1], "yes" if sorted(claim[0]) == reached else "**no**"
            cells = [label, *[_cell(r) for r in runs], f"{len(reached)}/{len(runs)}", paper, agrees]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_docs(results: dict, doc: Path = DOC) -> None:
    """Replace the text between the toy-table markers of ``doc`` with :func:`render_tables`."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} markers; add them where the toy table goes.")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    doc.write_text(pattern.sub(lambda _: f"{BEGIN}\n{render_tables(results)}{END}", text))


# -- the figure ---------------------------------------------------------------------------------
def plot(results: dict, trajectories: dict, path: Path) -> None:
    """One panel per method (columns) and setup (rows): trajectories on the contours of L1 + L2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_set(2001)
    grid = np.linspace(-11, 11, 301)
    gx, gy = np.meshgrid(grid, grid)
    names = list(results["setups"])
    fig, axes = plt.subplots(len(names), len(METHODS), figsize=(3.1 * len(METHODS), 3.3 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        setup = results["setups"][name]
        pts = torch.from_numpy(np.stack([gx, gy], axis=-1))
        total = toy_losses(pts, setup["scale"]).sum(-1).numpy()
        for col, (method, label) in enumerate(METHODS.items()):
            ax = axes[row, col]
            ax.contour(gx, gy, total, levels=14, cmap="viridis", linewidths=0.8)
            ax.plot(front[:, 0], front[:, 1], color="0.45", linewidth=4, alpha=0.6, zorder=1)
            ax.plot(*AVERAGE_OPTIMUM, marker="*", color="k", markersize=9, zorder=5)
            for run in setup["runs"]:
                if run["method"] != method:
                    continue
                i = [tuple(s) for s in setup["starts"]].index(tuple(run["start"]))
                path_xy = trajectories[name][(method, i)]
                ax.plot(path_xy[:, 0], path_xy[:, 1], color="tab:red" if run["reached"] else "tab:orange",
                        linewidth=1.4, zorder=3)
                ax.plot(*run["start"], "o", color="k", markersize=5, zorder=4)
                ax.plot(*run["final"], "x" if not run["reached"] else ".", color="k", markersize=7, zorder=6)
            reached = sum(r["reached"] for r in setup["runs"] if r["method"] == method)
            count = sum(r["method"] == method for r in setup["runs"])
            ax.set_title(f"{label}: {reached}/{count}", fontsize=10)
            ax.set_xlim(-11, 11)
            ax.set_ylim(-11, 11)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
        axes[row, 0].set_ylabel(SETUPS[name]["title"], fontsize=8)
    fig.suptitle("Toy of CAGrad / Nash-MTL: trajectories (red: reached the Pareto set, grey; orange: did not; "
                 "x: stuck end point; star: average-loss optimum)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_loss_space(results: dict, trajectories: dict, path: Path) -> None:
    """The Nash-MTL setup in loss space, as in their figure: (L1, L2) along each run, the front in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "nash_mtl" not in results["setups"]:
        return
    setup = results["setups"]["nash_mtl"]
    front = toy_losses(torch.from_numpy(pareto_set(2001)), setup["scale"]).numpy()
    fig, axes = plt.subplots(1, len(METHODS), figsize=(3.0 * len(METHODS), 3.2), squeeze=False)
    for col, (method, label) in enumerate(METHODS.items()):
        ax = axes[0, col]
        ax.plot(front[:, 0], front[:, 1], color="0.45", linewidth=4, alpha=0.6)
        for run in setup["runs"]:
            if run["method"] != method:
                continue
            i = [tuple(s) for s in setup["starts"]].index(tuple(run["start"]))
            losses = toy_losses(torch.from_numpy(trajectories["nash_mtl"][(method, i)]), setup["scale"]).numpy()
            ax.plot(losses[:, 0], losses[:, 1], color="tab:red" if run["reached"] else "tab:orange", linewidth=1.2)
            ax.plot(losses[0, 0], losses[0, 1], "o", color="k", markersize=5)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("L1 (scaled by 0.1)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("L2", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- entry point --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-docs", action="store_true", help="only rewrite the docs table from the JSON")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the paper's)")
    parser.add_argument("--no-early-stop", dest="early_stop", action="store_false")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.write_docs:
        write_docs(json.loads(args.out.read_text()))
        print(f"rewrote the toy table in {DOC.relative_to(ROOT)} from {args.out}")
        return 0
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be a positive number of steps, got {args.steps}")
    torch.set_num_threads(1)
    results: dict = {"tolerance": TOL, "early_stop": args.early_stop, "setups": {}}
    trajectories = {}
    total = time.perf_counter()
    for name in args.setups:
        out = run_setup(name, args.methods, args.steps, args.early_stop)
        setup = SETUPS[name]
        results["setups"][name] = {
            "starts": [list(s) for s in setup["starts"]],
            "steps_planned": out["steps"],
            "paper_steps": setup["steps"],
            "lr": setup["lr"],
            "scale": setup["scale"],
            "settings": setup["settings"],
            "seconds": round(out["seconds"], 1),
            "runs": out["runs"],
        }
        trajectories[name] = out["trajectories"]
        for run in out["runs"]:
            print(f"{name:9s} {run['method']:9s} start {tuple(run['start'])!s:13s} steps {run['steps']:6d} "
                  f"final {tuple(run['final'])!s:20s} distance {run['distance']:.4f} reached {run['reached']}")
        print(f"{name}: {out['seconds']:.1f} s")
    results["seconds"] = round(time.perf_counter() - total, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    if set(args.setups) == set(SETUPS) and set(args.methods) == set(METHODS) and args.out.resolve() == RESULTS:
        plot(results, trajectories, IMAGES / "toy_trajectories.png")
        plot_loss_space(results, trajectories, IMAGES / "toy_loss_space.png")
        write_docs(results)
    print(f"total {results['seconds']:.1f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
