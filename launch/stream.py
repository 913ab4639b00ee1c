"""``drizzle-ml stream``: online learning from a source until it ends or a signal arrives.

Runs on rank 0 of an ``mpiexec`` world, like ``train``. Prints throughput
and event-to-model latency per group, optionally answers predictions over
HTTP from the newest version while it trains (``--serve``), checkpoints the
model with the stream's offsets, and saves the final model.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from typing import Any

from drizzle_ml.algorithms.registry import option_table

from .common import CLIError, check_output_paths, save_result
from .data_files import SUPERVISED, add_column_arguments
from .serve import QUEUE_PER_THREAD, PredictionServer, ServeLimits
from .train import (
    ALGORITHMS,
    _checkpoint_every,
    add_recovery_arguments,
    check_estimator_params,
    check_recovery_arguments,
    estimator_params,
    make_estimator,
)

# Option -> (estimator parameter, algorithms it applies to): the online learners' knobs.
STREAM_OPTIONS = option_table("stream")


def _seconds_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text.rstrip("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds (e.g. 0.01) or 'none', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive seconds or 'none', got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds_or_none(text)
    if value is None or not math.isfinite(value):  # nan or inf would disable the timeout, or fire at once
        raise argparse.ArgumentTypeError(f"must be positive seconds, got {text!r}")
    return value


def add_stream_arguments(stream: argparse.ArgumentParser, group_size_type: Any) -> None:
    stream.add_argument("--algorithm", choices=ALGORITHMS, default="logistic")
    stream.add_argument("--source", required=True,
                        help="file:PATH (tail a CSV/JSON-lines file), dir:PATH (new files), "
                             "parquet:DIR (new Parquet files), tcp:HOST:PORT (lines), "
                             "h5:PATH#KEY (a growing 2-D dataset)")
    stream.add_argument("--format", choices=("csv", "json", "libsvm", "tokens"), default="csv",
                        help="text record format (libsvm, tokens: with --hash-features)")
    stream.add_argument("--hash-features", type=int, default=None, metavar="BITS",
                        help="libsvm or tokens records: each worker hashes the records it reads into 2**BITS "
                             "columns (1..31), as scikit-learn's FeatureHasher")
    stream.add_argument("--n-features", type=int, default=None,
                        help="features per record (default: read from the first record; required for tcp)")
    add_column_arguments(stream)
    stream.add_argument("--classes", default=None, help="logistic: every label, comma-separated (e.g. 0,1)")
    stream.add_argument("--workers", type=int, default=None,
                        help="worker processes (default 2; in a Slurm allocation its tasks minus one)")
    stream.add_argument("--group-size", type=group_size_type, default="auto")
    stream.add_argument("--max-batch", type=int, default=10_000,
                        help="records per worker per micro-batch (default 10000)")
    stream.add_argument("--batch-interval", type=_seconds_or_none, default=0.01,
                        help="cut a micro-batch this many seconds after the last (default 0.01); "
                             "'none': by size only (the model then does not depend on timing)")
    stream.add_argument("--idle-timeout", type=_seconds_or_none, default=None,
                        help="end when no worker got a record for this long (default: never)")
    stream.add_argument("--no-follow", action="store_true",
                        help="read what the file/dir/h5 source holds now and stop")
    stream.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                        help="malformed records: count and skip (default) or stop with an error")
    stream.add_argument("--max-batches", type=int, default=None, help="stop after this many micro-batches")
    stream.add_argument("--output", "-o", default=None, help="save the final model to this HDF5 file")
    serve = stream.add_argument_group("the prediction server (see docs/operating-safely.md)")
    serve.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                       help="answer predictions over HTTP from the newest version while training, from a "
                            "process of its own (HOST default 127.0.0.1; another host is warned about)")
    serve.add_argument("--serve-max-body", type=_byte_size, default=None, metavar="BYTES",
                       help="largest request body, e.g. 8M (default 8M): larger ones get 413")
    serve.add_argument("--serve-threads", type=int, default=None, metavar="N",
                       help=f"threads that compute predictions (default {ServeLimits.threads}); "
                            f"{QUEUE_PER_THREAD}x as many requests may wait, more get 503")
    serve.add_argument("--serve-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                       help=f"for a request's headers, and for its body (default {ServeLimits.timeout:g}): "
                            "a slower client gets 408 and is disconnected")
    serve.add_argument("--serve-max-connections", type=int, default=None, metavar="N",
                       help=f"open connections at most (default {ServeLimits.max_connections}); more get 503")
    stream.add_argument("--quiet", action="store_true", help="no progress lines")
    add_recovery_arguments(stream, "checkpoint the model with every partition's offset at group boundaries")
    opts = stream.add_argument_group("learner options (each applies to the algorithms named)")
    opts.add_argument("--C", type=float, default=None, help="logistic: inverse penalty strength")
    opts.add_argument("--penalty", default=None, help="logistic: l2|l1|elasticnet (L1 terms learn by FTRL)")
    opts.add_argument("--alpha", type=float, default=None, help="ridge, lasso, elasticnet: penalty strength")
    opts.add_argument("--l1-ratio", type=float, default=None,
                      help="elasticnet, logistic (--penalty elasticnet): L1 share of the penalty")
    opts.add_argument("--eta0", type=float, default=None,
                      help="linear models: step scale (FTRL's learning rate with an L1 term)")
    opts.add_argument("--power-t", type=float, default=None, help="logistic, linear, ridge: step decay exponent")
    opts.add_argument("--no-intercept", action="store_false", default=None, help="linear models: no intercept")
    opts.add_argument("--n-components", type=int, default=None, help="pca: components")
    opts.add_argument("--n-clusters", type=int, default=None, help="kmeans: clusters")
    opts.add_argument("--decay", type=float, default=None, help="kmeans: weight kept per micro-batch")
    opts.add_argument("--half-life", type=float, default=None, help="kmeans: micro-batches to halve old weight")
    opts.add_argument("--seed", type=int, default=None, help="kmeans: seed of the k-means++ seeding")


def check_stream_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Validate; return the estimator's parameters."""
    from drizzle_ml.streams import parse_source

    check_recovery_arguments(args)
    for option, value in (("--max-batch", args.max_batch), ("--max-batches", args.max_batches),
                          ("--n-features", args.n_features)):
        if value is not None and value < 1:
            raise CLIError(f"{option} must be at least 1, got {value}")
    try:
        source = parse_source(args.source)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    path = getattr(source, "path", None)
    kind = args.source.partition(":")[0]
    watched = kind in ("dir", "parquet")
    check_output_paths({"-o/--output": args.output},
                       {"--source": path if not watched else None},
                       {"--source": path if watched else None})
    if kind == "parquet":
        from drizzle_ml.parquet import pyarrow_parquet

        try:
            pyarrow_parquet()
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    elif args.features is not None or args.target is not None:
        raise CLIError("--features and --target choose the columns of a parquet: source")
    _check_hashed_records(args, kind)
    if args.algorithm == "logistic" and not args.classes:
        raise CLIError("--algorithm logistic needs --classes (every label the stream will have, e.g. 0,1)")
    if args.classes and args.algorithm != "logistic":
        raise CLIError("--classes applies to --algorithm logistic only")
    _classes(args.classes)
    if args.serve is not None:
        _host_port(args.serve)
    serve_limits(args)
    params = estimator_params(args, STREAM_OPTIONS)
    check_estimator_params(args.algorithm, params)
    return params


def _check_hashed_records(args: argparse.Namespace, kind: str) -> None:
    hashed = args.format in ("libsvm", "tokens")
    if args.hash_features is None:
        if hashed:
            raise CLIError(f"--format {args.format} records are hashed: give --hash-features BITS")
        return
    from drizzle_ml.hashing import check_n_bits

    try:
        check_n_bits(args.hash_features, "--hash-features")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not hashed:
        raise CLIError(f"--hash-features hashes libsvm or tokens records, not {args.format} (--format)")
    if kind not in ("file", "dir", "tcp"):
        raise CLIError(f"--hash-features reads lines of text: a file:, dir: or tcp: source, not {kind}:")
    if args.algorithm == "pca":
        raise CLIError("--hash-features does not apply to --algorithm pca (its scatter matrix would be dense)")
    if args.n_features is not None:
        raise CLIError(f"--n-features does not apply to hashed records: they have 2**{args.hash_features} features")


def _host_port(text: str) -> tuple[str, int]:
    """``--serve``: ``PORT`` (on 127.0.0.1), ``HOST:PORT``, ``[IPv6]:PORT`` or ``IPv6:PORT``."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise CLIError(f"--serve must look like HOST:PORT or PORT (e.g. 127.0.0.1:8000), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _byte_size(text: str) -> int:
    """``8388608``, ``512k``, ``8M``, ``8MiB``, ``1g``: bytes (binary multiples)."""
    number = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = number[-1:] if number[-1:] in _SIZE_UNITS else ""
    try:
        value = int(float(number[:len(number) - len(unit)]) * _SIZE_UNITS[unit])
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be bytes like 8388608, 512k or 8M, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def serve_limits(args: argparse.Namespace) -> ServeLimits:
    """The prediction server's limits from ``--serve-*`` (checked; they need ``--serve``)."""
    given = {name: getattr(args, "serve_" + name, None) for name in ("max_body", "threads", "timeout",
                                                                      "max_connections")}
    for name, value in given.items():
        if value is not None and args.serve is None:
            raise CLIError(f"--serve-{name.replace('_', '-')} needs --serve")
    for name in ("threads", "max_connections"):
        if given[name] is not None and not 1 <= given[name] <= 100_000:
            raise CLIError(f"--serve-{name.replace('_', '-')} must be between 1 and 100000, got {given[name]}")
    return ServeLimits(**{name: value for name, value in given.items() if value is not None})


def _classes(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(c) for c in text.split(",") if c.strip()]
    except ValueError:
        values = None
    if values is None or not all(map(math.isfinite, values)):
        raise CLIError(f"--classes must be numbers separated by commas, got {text!r}")
    return values


def run_stream(args: argparse.Namespace) -> int:
    """The body of ``drizzle-ml stream`` on the driver."""
    import drizzle_ml
    from drizzle_ml.algorithms.stream import stream_fit
    from drizzle_ml.errors import DrizzleError
    from drizzle_ml.streams import ParquetSource, StreamError, parse_source

    params = check_stream_arguments(args)
    source = parse_source(args.source, follow=not args.no_follow)
    if isinstance(source, ParquetSource):  # columns fixed here, so that the saved model can name them
        source.features, source.target = args.features, args.target
        try:
            source = source.resolved(args.algorithm in SUPERVISED)
        except StreamError as exc:
            raise CLIError(str(exc)) from None
    cluster = drizzle_ml.get_cluster()
    estimator = make_estimator(args.algorithm, params, {"group_size": args.group_size})
    # Estimator state for a server that starts before the first version.
    estimator.model_store_ = drizzle_ml.ModelStore()
    stopping = threading.Event()

    def on_signal(signum, _frame):  # first SIGUSR1/SIGTERM: finish the group, save, exit 0
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        print(f"drizzle-ml: {signal.Signals(signum).name}: stopping at the next group boundary", file=sys.stderr,
              flush=True)

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, on_signal)
    server = None
    if args.serve:
        host, port = _host_port(args.serve)
        try:
            server = PredictionServer(estimator, host, port, serve_limits(args))
        except OSError as exc:
            raise CLIError(f"--serve {args.serve}: {exc}") from None
        print(f"drizzle-ml: serving predictions on http://{server.address} (POST /predict, GET /model)",
              flush=True)
        if not server.local_only:
            print(f"drizzle-ml: warning: the prediction server on {server.address} is reachable from other "
                  "hosts and has no authentication", file=sys.stderr, flush=True)
    print(f"drizzle-ml: streaming {args.algorithm} from {source.describe()} with {cluster.n_workers} workers "
          f"(max batch {args.max_batch}, interval {args.batch_interval or 'none'}, group size {args.group_size})",
          flush=True)
    if not args.quiet:
        from .hosts import placement_line

        print(f"drizzle-ml: placement: {placement_line(cluster.placement())}", flush=True)
    t0 = time.perf_counter()
    totals = {"records": 0.0}

    def on_group(g) -> None:
        totals["records"] += g.metrics.get("records", 0.0)
        if args.quiet:
            return
        rate = g.metrics.get("records", 0.0) / g.wall if g.wall > 0 else 0.0
        p50, p99 = g.metrics.get("latency_p50"), g.metrics.get("latency_p99")
        latency = f" latency p50 {p50 * 1e3:.1f} ms p99 {p99 * 1e3:.1f} ms" if p99 is not None else ""
        bad, unpublished = int(g.metrics.get("malformed", 0)), int(g.metrics.get("unpublished", 0))
        print(f"batch {g.start_iteration + g.n_iterations:>7} records {int(totals['records']):>10} "
              f"{rate:>11,.0f} rec/s{latency} version {g.version} group {g.group_size}"
              + (f" malformed {bad}" if bad else "") + (f" unpublished {unpublished}" if unpublished else ""),
              file=sys.stderr, flush=True)

    try:
        stream_fit(estimator, source, n_features=args.n_features, classes=_classes(args.classes),
                   record_format=args.format, max_batch=args.max_batch, batch_interval=args.batch_interval,
                   idle_timeout=args.idle_timeout, on_error=args.on_error, max_batches=args.max_batches,
                   checkpoint_dir=args.checkpoint_dir, checkpoint_every=_checkpoint_every(args.checkpoint_every),
                   resume=args.resume, stop=stopping.is_set, on_group=on_group, hash_features=args.hash_features)
    except (ValueError, TypeError, KeyError, OSError, ImportError, StreamError, DrizzleError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise CLIError(message.splitlines()[0] if message else type(exc).__name__) from None
    finally:
        if server is not None:
            server.close()
    wall = time.perf_counter() - t0
    ran = int(totals["records"])  # a resumed stream read only those after its checkpoint
    resumed = f" (resumed at {estimator.records_seen_ - ran})" if ran < estimator.records_seen_ else ""
    print(f"drizzle-ml: {estimator.records_seen_} records{resumed} in {estimator.n_iter_} micro-batches, "
          f"{ran / wall:,.0f} records/s; {estimator.malformed_} malformed skipped; "
          f"model version {estimator.model_version_}" + _unpublished(estimator.stream_stats_["unpublished"]),
          flush=True)
    if not estimator.records_seen_:
        # A model that learnt nothing is no result: no file that looks like one, no exit 0.
        raise CLIError(f"the stream gave no valid record ({estimator.malformed_} malformed skipped): "
                       "nothing was learnt" + ("; no model saved" if args.output else ""))
    if args.output:
        from drizzle_ml.algorithms.persist import save_model

        extra = {"source": source.describe(), "offsets": estimator.stream_offsets_,
                 "records": estimator.records_seen_}
        if isinstance(source, ParquetSource):  # predict picks the same columns by default
            extra.update(features=list(source.features), target=source.target)
        if args.hash_features is not None:  # predict hashes LIBSVM or token lines the same way
            extra["hashing"] = {"n_bits": args.hash_features, "format": args.format, "alternate_sign": True,
                                "label": args.format == "libsvm" or args.algorithm in SUPERVISED}
        problems: list[str] = []
        saved = save_result("the model", args.output, lambda path: save_model(estimator, path, extra=extra),
                            problems)
        if problems:
            raise CLIError("; ".join(problems))
        print(f"drizzle-ml: model saved to {saved}", flush=True)
    return 0


def _unpublished(count: int) -> str:
    """The summary's note on versions the driver could not keep up with (none: nothing)."""
    if not count:
        return ""
    return (f"; {count} version{'s' if count != 1 else ''} not served while training "
            "(the driver fell behind; readers got newer ones)")
