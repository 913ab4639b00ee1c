"""Recovery and checkpoint costs, measured side by side in one run.

    drizzle-ml bench recovery [--rows 200000] [--features 100] [--iterations 300] [--repeats 3] [--json OUT]
    python bench/recovery.py [same options]

1. **Recovery**: a logistic-regression gradient-descent fit (2 workers) at
   group sizes 10 and 100; a worker is killed with SIGKILL at a group
   boundary half-way through. It prints the time from the kill until the job
   is back at the iteration it had reached, and the iterations redone (work
   since the last committed version), next to the undisturbed fit's time.
2. **Checkpoint cost**: the same fit with a checkpoint every group
   (``checkpoint_dir``) against no checkpoints, alternating, per-iteration
   time ratio (target: under 5% slower), and the time to write one checkpoint.

Figures are medians over ``--repeats`` rounds of this one run; read the
ratios, not the absolute times.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

DESCRIPTION = __doc__.split("\n\n")[0]


def _estimator(args, group_size, **kw):
    import drizzle_ml as dm

    return dm.LogisticRegression(solver="gd", learning_rate=0.5, tol=0.0, max_iter=args.iterations,
                                 n_workers=2, group_size=group_size, **kw)


def recovery_round(args, X, y, group_size: int) -> dict:
    """One killed fit: kill-to-caught-up time, iterations redone; and the undisturbed fit's time."""
    import drizzle_ml as dm
    from drizzle_ml.algorithms.base import WorkerRecoveredWarning

    t0 = time.perf_counter()
    clean = _estimator(args, group_size).fit(X, y)
    undisturbed = time.perf_counter() - t0
    victim = dm.get_cluster(2).workers[1].pid
    marks: dict[str, float] = {}

    def watch(group) -> None:
        reached = group.start_iteration + group.n_iterations
        # At a group boundary past a third of the fit, while a whole group is still to come after the
        # one in flight: a kill later than that can land after the dead worker's last work is done,
        # and the fit then ends without needing a recovery.
        if "kill" not in marks and reached >= args.iterations // 3 and args.iterations - reached > group_size:
            marks["kill"], marks["reached"] = time.perf_counter(), reached
            os.kill(victim, signal.SIGKILL)
        elif "kill" in marks and "back" not in marks and reached >= marks["reached"]:
            marks["back"] = time.perf_counter()

    est = _estimator(args, group_size)
    est.progress_callback = watch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WorkerRecoveredWarning)
        est.fit(X, y)
    message = next((str(w.message) for w in caught if issubclass(w.category, WorkerRecoveredWarning)), "")
    resumed_at = int(message.split("resuming at iteration ")[1].split()[0]) if message else None
    return {
        "group_size": group_size,
        "kill_to_caught_up_s": marks.get("back", float("nan")) - marks.get("kill", float("nan")),
        "reached_at_kill": marks.get("reached"),
        "resumed_at": resumed_at,
        # Redone: committed work lost (reached - resumed_at), plus the part of the group in
        # flight that had run when the worker died (at most one group). Groups already running
        # may still commit after the kill before the death is noticed: then nothing was lost.
        "committed_lost": None if resumed_at is None else max(0, marks["reached"] - resumed_at),
        "undisturbed_fit_s": undisturbed,
        "same_model": bool(np.array_equal(est.coef_, clean.coef_)),
    }


def checkpoint_round(args, X, y) -> dict:
    """Per-iteration time with and without a checkpoint every group, back to back."""
    from drizzle_ml.checkpoint import Checkpoint, CheckpointStore

    with tempfile.TemporaryDirectory() as directory:
        plain = _estimator(args, 10).fit(X, y)
        ckpt = _estimator(args, 10, checkpoint_dir=directory).fit(X, y)
        per_iter = lambda est: sum(g["wall"] for g in est.history_) / est.n_iter_  # noqa: E731
        store = CheckpointStore(os.path.join(directory, "timing"), job_key="timing")
        model = dict(ckpt.model_store_.latest().model)
        t0 = time.perf_counter()
        for version in range(1, 6):
            store.save(Checkpoint("timing", version, version, model))
        write = (time.perf_counter() - t0) / 5
    return {"plain_per_iter_s": per_iter(plain), "checkpoint_per_iter_s": per_iter(ckpt),
            "ratio": per_iter(ckpt) / per_iter(plain), "write_s": write}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``drizzle-ml bench recovery``."""
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=300,
                        help="per fit (the kill needs a group of 100 after the one in flight: more than 200; "
                             "default 300)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drizzle-ml bench recovery", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The benchmark, with parsed options."""
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = make_classification(args.rows, args.features, random_state=0)
    print(f"recovery benchmark: logistic GD, make_classification({args.rows}, {args.features}), 2 workers, "
          f"{args.iterations} iterations, median of {args.repeats} rounds", flush=True)
    _estimator(args, 10).fit(X, y)  # warm-up: cluster up, partitions loaded
    out: dict = {"recovery": {}, "checkpoints": []}
    for group_size in (10, 100):
        rounds = [recovery_round(args, X, y, group_size) for _ in range(args.repeats)]
        out["recovery"][group_size] = rounds
        med = lambda key: float(np.median([r[key] for r in rounds if r[key] is not None] or [np.nan]))  # noqa: E731
        print(f"group size {group_size:>3}: kill -> back at the same iteration {med('kill_to_caught_up_s'):.2f} s, "
              f"resumed {med('committed_lost'):.0f} iterations before the kill point, so at most the "
              f"group in flight ({group_size}) was redone, "
              f"undisturbed fit {med('undisturbed_fit_s'):.2f} s; same model as undisturbed: "
              f"{all(r['same_model'] for r in rounds)}", flush=True)
    rounds = [checkpoint_round(args, X, y) for _ in range(args.repeats)]
    out["checkpoints"] = rounds
    ratios = [r["ratio"] for r in rounds]
    print(f"checkpoint every group (size 10): per-iteration time x{np.median(ratios):.3f} "
          f"({min(ratios):.3f}-{max(ratios):.3f}; target < 1.05), one checkpoint write "
          f"{1e3 * np.median([r['write_s'] for r in rounds]):.1f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
