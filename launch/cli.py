"""``drizzle-ml``: train on a cluster, predict with saved models, make and convert datasets, benchmark.

``drizzle-ml train`` builds the ``mpiexec -n WORKERS+1`` command itself and
supervises it; the same command also runs when the user launches MPI
(``mpiexec -n 3 python -m drizzle_ml train``), in which case rank 0 trains
and the other ranks serve as workers.
"""

from __future__ import annotations

import argparse
import sys

from .predict import add_predict_arguments, info, predict
from .train import CLIError, add_train_arguments, check_arguments, train


def _group_size(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drizzle-ml", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser = sub.add_parser("train", help="train an estimator on a cluster (builds and supervises mpiexec)")
    add_train_arguments(train_parser, _group_size)
    predict_parser = sub.add_parser("predict", help="predict (or transform) with a saved model")
    info_parser = sub.add_parser("info", help="describe a saved model")
    add_predict_arguments(predict_parser, info_parser)
    from drizzle_ml.datasets.tools import add_datasets_parser

    add_datasets_parser(sub)
    from drizzle_ml.bench import build_parser as bench_parser

    bench = sub.add_parser("bench", help="benchmarks (coordination)")
    bench_parser(bench)
    return parser


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this same command as rank 0 of ``mpiexec -n WORKERS+1``, supervised."""
    import shlex

    from drizzle_ml.cluster import find_mpiexec

    from .supervisor import run_supervised

    check_arguments(args)  # fail fast, before starting any process
    _check_plot(args)
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    cmd = [mpiexec, "-n", str(args.workers + 1), *shlex.split(args.mpiexec_args),
           sys.executable, "-m", "drizzle_ml", *argv]
    return run_supervised(cmd)


def _check_plot(args: argparse.Namespace) -> None:
    import importlib.util

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--plot needs matplotlib: pip install 'drizzle-ml[plot]'")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            from drizzle_ml.bench import run as run_bench

            return run_bench(args)
        if args.command == "datasets":
            from drizzle_ml.datasets.tools import run_datasets

            try:
                return run_datasets(args)
            except (ValueError, OSError) as exc:
                raise CLIError(str(exc)) from None
        if args.command == "predict":
            return predict(args)
        if args.command == "info":
            return info(args)
        from drizzle_ml.cluster import launched_by_mpiexec

        if not launched_by_mpiexec():
            return _launch(args, argv)
        _check_plot(args)
        return train(args)
    except CLIError as exc:
        print(f"drizzle-ml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
