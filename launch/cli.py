"""``drizzle-ml``: train on a cluster, predict with saved models, make and convert datasets, benchmark.

``drizzle-ml train`` builds the ``mpiexec -n WORKERS+1`` command itself and
supervises it; the same command also runs when the user launches MPI
(``mpiexec -n 3 python -m drizzle_ml train``), in which case rank 0 trains
and the other ranks serve as workers.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import sys
import tempfile
from collections import deque

from .common import CLIError, positive_int
from .hosts import add_host_arguments, host_mpiexec_args, reject_under_user_mpiexec
from .predict import add_predict_arguments, info, predict
from .train import add_train_arguments, check_arguments, train


def _group_size(text: str):
    return "auto" if text == "auto" else positive_int(text, "'auto' or a positive integer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drizzle-ml", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # No abbreviated options for the commands the launcher re-runs under mpiexec: it removes
    # --workers, --hosts, ... from their argv by full name.
    train_parser = sub.add_parser("train", help="train an estimator on a cluster (builds and supervises mpiexec)",
                                  allow_abbrev=False)
    add_train_arguments(train_parser, _group_size)
    add_host_arguments(train_parser)
    from .stream import add_stream_arguments

    stream_parser = sub.add_parser("stream", help="learn online from a stream (file, dir, tcp, h5) until it ends",
                                   allow_abbrev=False)
    add_stream_arguments(stream_parser, _group_size)
    add_host_arguments(stream_parser)
    predict_parser = sub.add_parser("predict", help="predict (or transform) with a saved model")
    info_parser = sub.add_parser("info", help="describe a saved model")
    add_predict_arguments(predict_parser, info_parser)
    from .datasets import add_datasets_parser

    add_datasets_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks, side by side in one run: coordination, recovery, scale, "
                           "streaming, report")
    _add_bench_subcommands(bench)
    return parser


def _add_bench_subcommands(bench: argparse.ArgumentParser) -> None:
    """``drizzle-ml bench NAME``: each benchmark module declares its options and runs them (``run``)."""
    from . import bench_coordination, bench_recovery, bench_report, bench_scale, bench_streaming

    # The metavar hides the roles the measurement jobs run (_hand, _plain, _engine) from --help.
    sub = bench.add_subparsers(dest="bench", required=True, metavar="{coordination,recovery,scale,streaming,report}")
    bench_coordination.add_subcommands(sub)
    for name, module, what in (
            ("recovery", bench_recovery, "kill a worker mid-fit: time back, work redone, checkpoint cost"),
            ("scale", bench_scale, "BSP against groups over worker counts, and the cost model's error"),
            ("streaming", bench_streaming, "stream throughput and event-to-model latency"),
            ("report", bench_report, "every benchmark into report.md with plots")):
        parser = sub.add_parser(name, help=what, description=(module.__doc__ or "").split("\n\n")[0])
        module.add_arguments(parser)
        parser.set_defaults(run=module.run)


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this same command as rank 0 of ``mpiexec -n WORKERS+1``, supervised.

    With ``--checkpoint-dir``, a job that fails (a worker or the driver
    killed, a crash, a timeout) is restarted with ``--resume`` up to
    ``--max-restarts`` times, with back-off; after two failures in a row at
    one size it restarts with one worker fewer, down to ``--min-workers``.
    """
    import shlex
    import time

    from drizzle_ml.checkpoint import NOTE_ENV, noted_directories
    from drizzle_ml.hydra import show_notices
    from drizzle_ml.worker_job import find_mpiexec, hydra_environment

    from .supervisor import run_supervised

    if args.command == "stream":  # fail fast, before starting any process
        from .stream import check_stream_arguments

        check_stream_arguments(args)
    else:
        check_arguments(args)
        _check_plot(args)
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    hosts = host_mpiexec_args(args)
    base = _without_options(argv, {"--workers": 1, "--resume": 0, "--hosts": 1, "--hostfile": 1})
    workers, resume = args.workers, args.resume
    min_workers = args.min_workers or args.workers
    restarts = failures_at_size = 0
    reached = [0]

    def watch(line: str) -> None:  # the newest iteration a progress line reported
        found = re.findall(r"(?:iter|batch)\s+(\d+)", line)
        if found:
            reached[0] = max(reached[0], int(found[-1]))

    # The job's driver writes this at its end: an "mpiexec" that exits 0 without running anything is caught.
    done_dir = tempfile.mkdtemp(prefix="drizzle-ml-")
    atexit.register(shutil.rmtree, done_dir, True)
    done_file = os.path.join(done_dir, "done")
    # The job notes its own checkpoint directories here: a restart resumes from (and reports) those,
    # never from another job's checkpoints in a shared --checkpoint-dir.
    checkpoint_note = os.path.join(done_dir, "checkpoints")
    while True:
        cmd = [mpiexec, "-n", str(workers + 1), *hosts, *shlex.split(args.mpiexec_args), sys.executable, "-m",
               "drizzle_ml", *base, "--workers", str(workers), *(["--resume"] if resume else [])]
        env = hydra_environment(dict(os.environ, DRIZZLE_TTY="1" if sys.stderr.isatty() else "0",
                                     DRIZZLE_DONE_FILE=done_file, **{NOTE_ENV: checkpoint_note}),
                                shlex.split(args.mpiexec_args))
        # A stream stops gracefully on the first signal: SIGUSR1 goes through
        # mpiexec to every rank; workers ignore it, the driver ends the stream.
        notices: deque[str] = deque(maxlen=100)  # Hydra's: shown only when the job failed
        code = run_supervised(cmd, env=env, on_stderr_line=watch if args.checkpoint_dir else None,
                              graceful=signal.SIGUSR1 if args.command == "stream" else None, notices=notices)
        if code == 0 and not _take_done(done_file):
            raise CLIError(f"{mpiexec} exited 0, but the job never ran (its driver did not report an end): "
                           "is it an MPI launcher? (DRIZZLE_MPIEXEC, the mpich wheel's mpiexec)")
        # Done, a usage error, or stopped by a signal we forwarded: nothing to recover.
        if code in (0, 2) or code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            return code
        show_notices(notices)
        if args.checkpoint_dir is None:
            print(f"drizzle-ml: error: the MPI job failed (exit code {code}); with --checkpoint-dir it would "
                  "be restarted from its newest checkpoint", file=sys.stderr)
            return code
        if restarts >= args.max_restarts:
            print(f"drizzle-ml: the MPI job failed (exit code {code}); no restarts left "
                  f"(--max-restarts {args.max_restarts})", file=sys.stderr)
            return code
        restarts += 1
        failures_at_size += 1
        if failures_at_size >= 2 and workers > min_workers:
            workers, failures_at_size = workers - 1, 0
        newest = _newest_checkpoint(noted_directories(checkpoint_note))
        delay = min(0.5 * 2 ** (restarts - 1), 30.0)
        if newest is None:
            start = "from the beginning (the job wrote no checkpoint)"
        else:
            redo = f"; redoing iterations {newest} to {reached[0]}" if reached[0] > newest else ""
            start = f"from the checkpoint at iteration {newest}{redo}"
        print(f"drizzle-ml: the MPI job failed (exit code {code}); restart {restarts} of {args.max_restarts} "
              f"in {delay:.1f} s with {workers} workers {start}", file=sys.stderr, flush=True)
        time.sleep(delay)
        # Resume only from the job's own checkpoints (or when the user asked to).
        resume, reached[0] = resume or newest is not None, 0


def _default_workers(args: argparse.Namespace) -> None:
    """``--workers`` not given: the Slurm allocation's tasks less the driver's, outside Slurm 2."""
    if args.workers is not None:
        return
    from drizzle_ml.worker_job import slurm_allocation_tasks

    tasks = slurm_allocation_tasks()
    if tasks is None:
        args.workers = 2
    elif tasks < 2:
        raise CLIError(f"the Slurm allocation has {tasks} task, none left for a worker beside the driver: "
                       "ask for WORKERS+1 tasks (sbatch -n 3) or give --workers")
    else:
        args.workers = tasks - 1


def _without_options(argv: list[str], options: dict[str, int]) -> list[str]:
    """``argv`` without the given options (name -> how many values follow it)."""
    out, skip = [], 0
    for token in argv:
        if skip:
            skip -= 1
            continue
        name = token.split("=", 1)[0]
        if name in options:
            skip = 0 if "=" in token else options[name]
            continue
        out.append(token)
    return out


def _newest_checkpoint(job_directories: list[str]) -> int | None:
    """The iteration of the newest valid checkpoint of the last job that has one (None: none has)."""
    from drizzle_ml.checkpoint import CheckpointStore

    for directory in reversed(job_directories):
        valid = [c for c in CheckpointStore(directory).list() if c.valid]
        if valid:
            return max(c.iteration for c in valid)
    return None


def _check_plot(args: argparse.Namespace) -> None:
    import importlib.util

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--plot needs matplotlib: pip install 'drizzle-ml[plot]'")


def _mark_done(code: int) -> int:
    """On the driver of a launched job: tell the launcher that the job ran to its end."""
    path = os.environ.get("DRIZZLE_DONE_FILE")
    if code == 0 and path:
        try:
            with open(path, "w") as f:
                f.write("done\n")
        except OSError:
            pass
    return code


def _take_done(path: str) -> bool:
    """Whether the job's driver marked its end (and clear the mark for a restart)."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench":
            return args.run(args)
        if args.command == "datasets":
            from .datasets import run_datasets

            try:
                return run_datasets(args)
            except (ValueError, OSError) as exc:
                raise CLIError(str(exc)) from None
        if args.command == "predict":
            return predict(args)
        if args.command == "info":
            code = info(args)
            sys.stdout.flush()  # here, where a reader that left is caught, not at exit
            return code
        from drizzle_ml.worker_job import launched_by_mpiexec, slurm_world_mismatch

        problem = slurm_world_mismatch()  # srun --mpi=none: every task would start a worker job and hang
        if problem:
            raise CLIError(problem)
        _default_workers(args)
        if not launched_by_mpiexec():
            return _launch(args, argv)
        reject_under_user_mpiexec(args)
        if args.command == "stream":
            from .stream import run_stream

            return _mark_done(run_stream(args))
        _check_plot(args)
        return _mark_done(train(args))
    except CLIError as exc:
        print(f"drizzle-ml: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `drizzle-ml info m.h5 | head`: the reader left, which is no error
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so that the exit's flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
