"""``drizzle-ml``: train on a cluster, run benchmarks, describe saved models.

``drizzle-ml train`` builds the ``mpiexec -n WORKERS+1`` command itself and
supervises it; the same command also runs when the user launches MPI
(``mpiexec -n 3 python -m drizzle_ml train``), in which case rank 0 trains
and the other ranks serve as workers.
"""

from __future__ import annotations

import argparse
import sys
import time


class CLIError(Exception):
    """A one-line error for the user; exits with status 2."""


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
    train = sub.add_parser("train", help="train logistic regression on the bundled default dataset")
    train.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    train.add_argument("--group-size", type=_group_size, default="auto", help="'auto' or iterations per group")
    train.add_argument("--scheduling", choices=("group", "bsp"), default="group")
    train.add_argument("--max-iter", type=int, default=2000)
    train.add_argument("--solver", choices=("lbfgs", "gd"), default="lbfgs")
    train.add_argument("--learning-rate", type=float, default=None,
                       help="fixed step for --solver gd (default: a backtracking line search)")
    train.add_argument("--tol", type=float, default=1e-4, help="stop when max |gradient| <= tol")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.add_argument("--mpiexec-args", default="", help="extra arguments for mpiexec, e.g. '-hosts a,b'")
    from drizzle_ml.bench import build_parser as bench_parser

    bench = sub.add_parser("bench", help="benchmarks (coordination)")
    bench_parser(bench)
    info = sub.add_parser("info", help="describe a saved model file (save_model) without loading it")
    info.add_argument("model", help="an HDF5 model file written by drizzle_ml.algorithms.persist.save_model")
    return parser


def _info(args: argparse.Namespace) -> int:
    from drizzle_ml.algorithms.persist import format_info, model_info

    try:
        info = model_info(args.model)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(format_info(info))
    return 0


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    import shlex

    from drizzle_ml.cluster import find_mpiexec

    from .supervisor import run_supervised

    if args.learning_rate is not None and args.solver != "gd":
        raise CLIError("--learning-rate is the step of --solver gd; lbfgs chooses its own steps")
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    cmd = [mpiexec, "-n", str(args.workers + 1), *shlex.split(args.mpiexec_args),
           sys.executable, "-m", "drizzle_ml", *argv]
    return run_supervised(cmd)


def _train(args: argparse.Namespace) -> int:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    import drizzle_ml
    from drizzle_ml.datasets import load_default

    t0 = time.perf_counter()
    X, y, name = load_default()
    cluster = drizzle_ml.get_cluster()
    t_load = time.perf_counter() - t0
    clf = drizzle_ml.LogisticRegression(
        solver=args.solver, learning_rate=args.learning_rate, max_iter=args.max_iter, tol=args.tol,
        group_size=args.group_size, scheduling=args.scheduling, verbose=0 if args.quiet else 1,
    )
    print(f"drizzle-ml: training logistic regression on {name} with {cluster.n_workers} workers "
          f"(group size {args.group_size}, scheduling {args.scheduling})", flush=True)
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(X, y)
    wall = time.perf_counter() - t1
    history = clf.history_
    total = {k: sum(g[k] for g in history) for k in ("wall", "compute", "update", "coordination")}
    loss = history[-1]["metrics"].get("loss", float("nan"))
    print(f"done: {clf.n_iter_} iterations in {len(history)} groups, {wall:.3f} s "
          f"({clf.n_iter_ / wall:,.0f} it/s), model version {clf.model_version_}")
    print(f"  loss {loss:.6f}, training accuracy {clf.score(X, y):.4f}"
          + ("" if not caught else " (did not converge: raise --max-iter)"))
    per_iter = lambda k: 1e6 * total[k] / max(clf.n_iter_, 1)
    coordination = 100 * total["coordination"] / total["wall"] if total["wall"] else 0.0
    print(f"  per iteration: {per_iter('wall'):.0f} us, of which local compute {per_iter('compute'):.0f} us "
          f"and update {per_iter('update'):.0f} us (the rest is the tree's reduce and broadcast); "
          f"coordination {coordination:.1f}% of the time; load {t_load:.3f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "bench":
            from drizzle_ml.bench import run as run_bench

            return run_bench(args)
        from drizzle_ml.cluster import launched_by_mpiexec

        if not launched_by_mpiexec():
            return _launch(args, argv)
        return _train(args)
    except CLIError as exc:
        print(f"drizzle-ml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
