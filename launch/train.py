"""``drizzle-ml train``: one estimator, fitted on a cluster, reported and saved.

This runs on rank 0 of an ``mpiexec`` world (the command line either built
that world itself or the user did); the other ranks serve as workers.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import warnings
from typing import Any

from drizzle_ml.algorithms.registry import BY_CLI, option_table

from .common import CLIError, check_output_paths, save_result
from .data_files import (
    SUPERVISED,
    TEXT_FORMATS,
    add_column_arguments,
    add_hashing_arguments,
    check_data_file,
    check_hashing,
    check_hdf5_columns,
    check_parquet_columns,
    hashed_copy,
    hashing_of,
    is_parquet_data,
    open_data,
    open_hdf5,
)
from .report import Progress, TrainingReport

ALGORITHMS = tuple(BY_CLI)

# Option -> (estimator parameter, algorithms it applies to).
ALGORITHM_OPTIONS = option_table("train")
# The algorithms that take hashed features: a sparse X of 2**BITS columns (PCA's covariance would be dense).
HASHED_ALGORITHMS = ("logistic", "linear", "ridge", "lasso", "elasticnet", "kmeans")


def add_train_arguments(train: argparse.ArgumentParser, group_size_type: Any) -> None:
    train.add_argument("--algorithm", choices=ALGORITHMS, default="logistic",
                       help="what to train (default logistic)")
    train.add_argument("--data", default=None,
                       help="HDF5 file, Parquet file or directory of Parquet files (each worker reads its own "
                            "rows); default: a bundled dataset")
    train.add_argument("--x-key", default=None, help="HDF5 dataset (or CSR group) of the features (default X)")
    train.add_argument("--y-key", default=None, help="HDF5 dataset of the targets (supervised algorithms; default y)")
    add_column_arguments(train)
    add_hashing_arguments(train)
    train.add_argument("--workers", type=int, default=None,
                       help="worker processes (default 2; in a Slurm allocation its tasks minus one)")
    train.add_argument("--group-size", type=group_size_type, default="auto",
                       help="'auto' or iterations per group")
    train.add_argument("--scheduling", choices=("group", "bsp"), default="group")
    train.add_argument("--rebalance", action="store_true",
                       help="move rows away from a worker reported as a straggler (default: only report it)")
    train.add_argument("--output", "-o", default=None, help="save the trained model to this HDF5 file")
    train.add_argument("--report", default=None, help="write the final report as JSON to this file")
    train.add_argument("--plot", default=None, help="draw loss and group size over time to this PNG")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    add_recovery_arguments(train, "write a checkpoint at every group boundary to this directory")
    opts = train.add_argument_group("algorithm options (each applies to the algorithms named)")
    opts.add_argument("--max-iter", type=int, default=None, help="iteration limit (all)")
    opts.add_argument("--tol", type=float, default=None, help="convergence tolerance (all)")
    opts.add_argument("--solver", default=None, help="logistic: lbfgs|gd; linear, ridge: auto|exact|lbfgs|gd")
    opts.add_argument("--C", type=float, default=None, help="logistic: inverse penalty strength")
    opts.add_argument("--penalty", default=None, help="logistic: l2|l1|elasticnet")
    opts.add_argument("--alpha", type=float, default=None, help="ridge, lasso, elasticnet: penalty strength")
    opts.add_argument("--l1-ratio", type=float, default=None,
                      help="elasticnet, logistic (--penalty elasticnet): L1 share of the penalty")
    opts.add_argument("--learning-rate", type=float, default=None, help="solver gd: a fixed step")
    opts.add_argument("--no-intercept", action="store_false", default=None,
                      help="logistic, linear, ridge, lasso, elasticnet: no intercept")
    opts.add_argument("--n-components", type=int, default=None, help="pca: components to keep")
    opts.add_argument("--svd-solver", default=None, help="pca: covariance|subspace")
    opts.add_argument("--whiten", action="store_true", default=None, help="pca: whiten the projections")
    opts.add_argument("--n-clusters", type=int, default=None, help="kmeans: clusters")
    opts.add_argument("--init", default=None, help="kmeans: k-means++|random")
    opts.add_argument("--n-init", type=int, default=None, help="kmeans: initialisations")
    opts.add_argument("--seed", type=int, default=None, help="pca (subspace), kmeans: random seed")


def add_recovery_arguments(parser: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The options of checkpoints and supervised restarts, shared by ``train`` and ``stream``."""
    recovery = parser.add_argument_group("checkpoints and recovery")
    recovery.add_argument("--checkpoint-dir", default=None, help=checkpoint_help)
    recovery.add_argument("--checkpoint-every", default="1",
                          help="a checkpoint every N groups (default 1), or at most every interval like '30s'")
    recovery.add_argument("--resume", action="store_true",
                          help="continue from the newest valid checkpoint in --checkpoint-dir")
    recovery.add_argument("--max-restarts", type=int, default=3,
                          help="restart a failed MPI job from its newest checkpoint this many times (default 3)")
    recovery.add_argument("--min-workers", type=int, default=None,
                          help="after repeated failures at one size, restart with fewer workers, down to this")
    parser.add_argument("--mpiexec-args", default="",
                        help="extra arguments for mpiexec, e.g. '-hosts a,b' or '-f hostfile'")


def check_recovery_arguments(args: argparse.Namespace) -> None:
    """One-line errors for ``--workers`` and the options of :func:`add_recovery_arguments`."""
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if args.resume and args.checkpoint_dir is None:
        raise CLIError("--resume needs --checkpoint-dir")
    from drizzle_ml.job_state import parse_checkpoint_every

    try:
        parse_checkpoint_every(_checkpoint_every(args.checkpoint_every))
    except ValueError as exc:
        raise CLIError(f"--checkpoint-every: {exc}") from None
    if args.max_restarts < 0:
        raise CLIError(f"--max-restarts must be at least 0, got {args.max_restarts}")
    if args.min_workers is not None and args.checkpoint_dir is None:  # restarts resume from checkpoints
        raise CLIError("--min-workers needs --checkpoint-dir")
    if args.min_workers is not None and not 1 <= args.min_workers <= args.workers:
        raise CLIError(f"--min-workers must be between 1 and --workers ({args.workers}), got {args.min_workers}")
    try:
        shlex.split(args.mpiexec_args)
    except ValueError as exc:  # an unclosed quote
        raise CLIError(f"--mpiexec-args {args.mpiexec_args!r}: {exc}") from None
    from drizzle_ml.waiting import timeout_from_env

    try:  # before any rank starts: each would fail on it alone
        timeout_from_env()
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def check_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the options against the algorithm; return the estimator's parameters."""
    check_recovery_arguments(args)
    params = estimator_params(args, ALGORITHM_OPTIONS)
    if params.get("learning_rate") is not None and params.get("solver") != "gd":
        raise CLIError("--learning-rate is the step of --solver gd; other solvers choose their own steps")
    check_estimator_params(args.algorithm, params)
    if args.y_key is not None and args.algorithm not in SUPERVISED:
        supervised = [name for name in BY_CLI if name in SUPERVISED]
        raise CLIError(f"--y-key does not apply to --algorithm {args.algorithm}, which has no targets "
                       f"(it applies to {', '.join(supervised)})")
    if check_hashing(args, HASHED_ALGORITHMS) is not None:
        check_output_paths({"-o/--output": args.output, "--report": args.report, "--plot": args.plot},
                           {"--data": args.data}, {})
        return params  # the rows are counted when the file is hashed
    parquet = args.data is not None and is_parquet_data(args.data)
    check_output_paths({"-o/--output": args.output, "--report": args.report, "--plot": args.plot},
                       {"--data": args.data}, {"--data": args.data if parquet else None})
    if args.data is not None:
        if parquet:
            check_parquet_columns(args)
            n_rows = open_data(args).n_rows
        else:
            check_data_file(args.data)
            check_hdf5_columns(args)
            if not args.data.endswith((".h5", ".hdf5", ".hdf")):
                hint = (" (or train on its LIBSVM or token lines directly with --hash-features BITS)"
                        if os.path.splitext(args.data)[1].lower() in TEXT_FORMATS else "")
                raise CLIError(f"{args.data}: train reads HDF5 or Parquet files (.h5, .parquet, or a directory "
                               f"of .parquet files); convert it first with "
                               f"'drizzle-ml datasets convert {args.data} -o DATA.h5'{hint}")
            # Before any process starts: a thousand workers for three rows would start them all first.
            y_key = (args.y_key or "y") if args.algorithm in SUPERVISED else None
            n_rows = open_hdf5(args.data, args.x_key or "X", y_key).n_rows
        workers = getattr(args, "workers", None)
        if workers is not None and n_rows < workers:
            raise CLIError(f"{args.data} has {n_rows} row{'s' if n_rows != 1 else ''}, fewer than the "
                           f"{workers} workers; every worker needs at least one row (--workers)")
    elif args.features is not None or args.target is not None:
        raise CLIError("--features and --target choose columns of Parquet --data")
    return params


def estimator_params(args: argparse.Namespace, table: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """The estimator parameters given on the command line; an option for another algorithm is an error."""
    params: dict[str, Any] = {}
    for option, (param, applies) in table.items():
        value = getattr(args, option)
        if value is None:
            continue
        if args.algorithm not in applies:
            raise CLIError(f"--{option.replace('_', '-')} does not apply to --algorithm {args.algorithm} "
                           f"(it applies to {', '.join(applies)})")
        params[param] = value
    return params


def _checkpoint_every(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def make_estimator(algorithm: str, params: dict[str, Any], engine: dict[str, Any]) -> Any:
    """The estimator of ``--algorithm`` with its parameters."""
    return BY_CLI[algorithm].load()(**params, **engine)


def check_estimator_params(algorithm: str, params: dict[str, Any]) -> None:
    """The estimator's declared parameter constraints, checked before any process starts."""
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        make_estimator(algorithm, params, {})._validate_params()
    except InvalidParameterError as exc:
        raise CLIError(str(exc)) from None


def load_data(args: argparse.Namespace, hashed: str | None = None) -> tuple[Any, Any, str]:
    """``(X_or_dataset, y_or_None, description)``: the HDF5 or Parquet data, or the bundled default.

    ``hashed``: the HDF5 copy of a text ``--data`` hashed by ``--hash-features``.
    """
    from drizzle_ml.datasets import load_default

    if hashed is not None:
        dataset = open_hdf5(hashed, "X", "y" if args.algorithm in SUPERVISED else None)
        workers = getattr(args, "workers", None)
        if workers is not None and dataset.n_rows < workers:
            raise CLIError(f"{args.data} has {dataset.n_rows} row{'s' if dataset.n_rows != 1 else ''}, fewer than "
                           f"the {workers} workers; every worker needs at least one row (--workers)")
        return dataset, None, (f"{args.data} ({dataset.n_rows} x {dataset.n_features}, sparse, "
                               f"hashed into 2**{args.hash_features} columns)")
    if args.data is None:
        regression = args.algorithm in ("linear", "ridge", "lasso", "elasticnet")
        X, y, name = load_default("regression" if regression else "classification")
        return X, (y if args.algorithm in SUPERVISED else None), name
    if is_parquet_data(args.data):
        dataset = open_data(args)
        return dataset, None, dataset.describe()
    dataset = open_hdf5(args.data, args.x_key or "X", (args.y_key or "y") if args.algorithm in SUPERVISED else None)
    kind = "sparse" if dataset.sparse else "dense"
    return dataset, None, f"{args.data} ({dataset.n_rows} x {dataset.n_features}, {kind})"


def train(args: argparse.Namespace) -> int:
    """The body of ``drizzle-ml train`` on the driver."""
    import drizzle_ml

    params = check_arguments(args)
    t0 = time.perf_counter()
    cluster = drizzle_ml.get_cluster()
    t_start = time.perf_counter() - t0
    hashing = check_hashing(args, HASHED_ALGORITHMS)
    hashed, temporary = hashed_copy(args.data, hashing, args.checkpoint_dir) if hashing else (None, False)
    try:
        return _fit_and_save(args, params, cluster, t_start, hashing, hashed)
    finally:
        if temporary:
            os.unlink(hashed)


def _fit_and_save(args: argparse.Namespace, params: dict[str, Any], cluster: Any, t_start: float,
                  hashing: dict[str, Any] | None, hashed: str | None) -> int:
    from sklearn.exceptions import ConvergenceWarning

    from drizzle_ml.errors import DrizzleError

    X, y, description = load_data(args, hashed)
    engine = {"group_size": args.group_size, "scheduling": args.scheduling, "rebalance": args.rebalance}
    estimator = make_estimator(args.algorithm, params, engine)
    estimator.checkpoint_dir = args.checkpoint_dir
    estimator.checkpoint_every = _checkpoint_every(args.checkpoint_every)
    max_iter = getattr(estimator, "max_iter", None)
    print(f"drizzle-ml: {args.algorithm} on {description} with {cluster.n_workers} workers "
          f"(group size {args.group_size}, scheduling {args.scheduling})", flush=True)
    if not args.quiet:
        from .hosts import placement_line

        print(f"drizzle-ml: placement: {placement_line(cluster.placement())}", flush=True)
    progress = Progress(max_iter=max_iter, quiet=args.quiet)
    estimator.progress_callback = progress.on_group
    t_fit = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            estimator.fit(X, y, resume=args.resume)
    except (ValueError, TypeError, KeyError, OSError, DrizzleError) as exc:
        progress.close()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise CLIError(message.splitlines()[0] if message else type(exc).__name__) from None
    except MemoryError as exc:  # a model too wide for this host (--hash-features 31: 16 GiB a vector)
        progress.close()
        raise CLIError(f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'MemoryError'}") from None
    fit_wall = time.perf_counter() - t_fit
    progress.close()
    history = estimator.history_
    if args.resume and (not history or history[0]["start_iteration"] > 0):
        at = history[0]["start_iteration"] if history else estimator.n_iter_
        print(f"drizzle-ml: resumed from the checkpoint at iteration {at} in {args.checkpoint_dir}", flush=True)
    for warning in caught:  # recorded to tell convergence; the others are the user's to see
        if not issubclass(warning.category, ConvergenceWarning):
            print(f"drizzle-ml: warning: {warning.category.__name__}: {warning.message}", file=sys.stderr,
                  flush=True)
    not_converged = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    stopped = next((m.split("; ")[0].split(": ", 1)[-1] for m in not_converged if "line search" in m), None)
    report = TrainingReport.build(args, estimator, description, cluster.n_workers, t_start, fit_wall,
                                  converged=not not_converged, stopped_because=stopped)
    report.add_score(estimator, X, y)
    from drizzle_ml.algorithms.persist import save_model

    # Every output is attempted: a full disk under the model must not cost the report, or the reverse.
    problems: list[str] = []
    extra: dict[str, Any] = {"report": report.as_dict()}
    if getattr(X, "kind", None) == "parquet":  # predict picks the same columns by default
        extra.update(features=list(X.features), target=X.target)
    if hashing is None and hashed is None and getattr(X, "kind", None) == "hdf5":
        hashing = hashing_of(X.path, X.x_key)  # made by 'datasets convert --hash-features'
    if hashing is not None:  # predict hashes LIBSVM or token lines the same way
        extra["hashing"] = hashing
    saved = save_result("the model", args.output, lambda path: save_model(estimator, path, extra=extra), problems)
    report.model_path = os.path.abspath(saved) if saved else None
    print(report.text(), flush=True)
    save_result("the report", args.report, report.write_json, problems)
    save_result("the plot", args.plot, report.plot, problems)
    if problems:
        raise CLIError("; ".join(problems))
    return 0
