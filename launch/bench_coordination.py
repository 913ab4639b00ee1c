"""Benchmarks that print figures measured side by side in one run.

``drizzle-ml bench coordination`` (also ``python -m drizzle_ml.launch.bench_coordination coordination``)
runs a tiny logistic-regression gradient-descent job with 2 workers at group
sizes 1, 10, 100 and auto, the ``bsp`` baseline, and a plain mpi4py loop doing
the same arithmetic with ``Allreduce`` (the limit), and prints per-iteration
times and their ratios to the plain loop, then a cost model extrapolating the
driver's measured costs to more workers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from .common import positive_int


def _make_data(rows_per_worker: int, features: int, n_workers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = rows_per_worker * n_workers
    X = rng.standard_normal((n, features))
    w = rng.standard_normal(features)
    y = (X @ w + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    return X, y


def _program(features: int):
    from drizzle_ml.algorithms.losses import LinearLoss
    from drizzle_ml.algorithms.optim import Minimize

    return Minimize(LinearLoss("binomial", features), "gd", alpha=1.0, tol=0.0, learning_rate=0.5)


def _model(features: int) -> dict:
    from drizzle_ml.algorithms.optim import initial_model

    return initial_model(features + 1, "gd", 0)


def _hand(args: argparse.Namespace) -> dict[str, Any]:
    """The limit: the same gradient descent written directly with mpi4py and numpy.

    No engine object: no Program, no Layout, no Partition. Each rank
    computes its rows' gradient (and, every tenth iteration, the loss, as the
    program does), one ``comm.Allreduce`` sums it, every rank steps.
    """
    from mpi4py import MPI
    from scipy.special import expit

    from drizzle_ml.data import row_bounds

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = _make_data(args.rows, args.features, size)
    lo, hi = row_bounds(X.shape[0], size)[rank : rank + 2]
    X, y = np.ascontiguousarray(X[lo:hi]), y[lo:hi]
    f = args.features
    penalty = np.r_[np.ones(f), 0.0]  # alpha = 1 on the coefficients, not the intercept
    send, total = np.empty(f + 3), np.empty(f + 3)  # gradient (f + 1), loss, rows
    elapsed, x = float("inf"), np.zeros(f + 1)
    for _ in range(2):  # best of two, as for the engine
        comm.Barrier()
        t0 = time.perf_counter()
        w = np.zeros(f + 1)
        for it in range(args.iterations):
            z = X @ w[:f]
            z += w[f]
            p = expit(z)
            send[f + 1] = z.sum() - y @ z - np.log(p).sum() if it % 10 == 0 else np.nan
            p -= y
            send[:f] = p @ X
            send[f] = p.sum()
            send[f + 2] = X.shape[0]
            comm.Allreduce(send, total)
            x, w = w, w - 0.5 * ((total[: f + 1] + penalty * w) / total[f + 2])
        elapsed = min(elapsed, time.perf_counter() - t0)
    # The point whose gradient was last evaluated, as the program's model["x"].
    return {"per_iter": elapsed / args.iterations, "coef": x.tolist()}


def _plain(args: argparse.Namespace) -> dict[str, Any]:
    """Rank-symmetric loop over the program: local gradient, Allreduce, update on every rank."""
    from mpi4py import MPI

    from drizzle_ml.data import row_bounds
    from drizzle_ml.layout import Layout
    from drizzle_ml.program import Partition

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = _make_data(args.rows, args.features, size)
    bounds = row_bounds(X.shape[0], size)
    part = Partition(X[bounds[rank] : bounds[rank + 1]], y[bounds[rank] : bounds[rank + 1]])
    program = _program(args.features)
    model = _model(args.features)
    layout = Layout(program.local(model, part))
    send, recv = np.empty(layout.nbytes // 8), np.empty(layout.nbytes // 8)
    send_bytes, recv_bytes = send.view(np.uint8), recv.view(np.uint8)  # one view each: Layout caches by buffer
    elapsed = float("inf")
    for _ in range(2):  # best of two, as for the engine
        comm.Barrier()
        t0 = time.perf_counter()
        model = _model(args.features)
        for it in range(args.iterations):
            layout.pack(program.local(model, part), send_bytes)
            comm.Allreduce(send, recv)
            model, _ = program.update(model, layout.unpack(recv_bytes), it)
        elapsed = min(elapsed, time.perf_counter() - t0)
    return {"per_iter": elapsed / args.iterations, "coef": model["x"].tolist()}


def _engine(args: argparse.Namespace) -> dict[str, Any]:
    """Rank 0 of an mpiexec world: the engine at each group size, and BSP."""
    from drizzle_ml import ArrayDataset, Cluster

    with Cluster(timeout=120) as cluster:
        X, y = _make_data(args.rows, args.features, cluster.n_workers)
        dataset = ArrayDataset(X, y)
        cluster.load(dataset)
        results = {}
        sizes = [int(k) for k in getattr(args, "group_sizes", "1,10,100").split(",")]
        configs = [("group", k) for k in sizes] + [("group", "auto"), ("bsp", 1)]
        for scheduling, group_size in configs:
            best = None
            for _ in range(2):  # first pass warms caches and code paths
                model = _model(args.features)
                t0 = time.perf_counter()
                result = cluster.run(_program(args.features), model, dataset, max_iter=args.iterations,
                                     group_size=group_size, scheduling=scheduling)
                elapsed = time.perf_counter() - t0
                if best is None or elapsed < best[0]:
                    best = (elapsed, result)
            elapsed, result = best
            summary = result.summary()
            name = "bsp" if scheduling == "bsp" else f"group={group_size}"
            results[name] = {
                "per_iter": elapsed / result.n_iter,
                "groups": len(result.history),
                "max_group_size": max(g.group_size for g in result.history),
                "driver_per_group": (summary["schedule"] + summary["wall"] - summary["wait"])
                / max(len(result.history), 1),
                "driver_schedule_per_iter": (summary["schedule"] + summary["reduce"]) / result.n_iter
                if scheduling == "bsp" else None,
                "compute_per_iter": summary["compute"] / result.n_iter,
                "update_per_iter": summary["update"] / result.n_iter,
                "coef": np.asarray(result.model["x"]).tolist(),
            }
        return {"n_workers": cluster.n_workers, "fanout": cluster.fanout, "results": results}


def _mpirun(n: int, role: str, args: argparse.Namespace, extra_env: dict[str, str],
            mpiexec_args: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    from drizzle_ml.worker_job import find_mpiexec

    cmd = [find_mpiexec(), "-n", str(n), *mpiexec_args, sys.executable, "-m", "drizzle_ml.launch.bench_coordination",
           role, "--rows", str(args.rows), "--features", str(args.features), "--iterations", str(args.iterations),
           "--group-sizes", getattr(args, "group_sizes", "1,10,100")]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               **extra_env)
    return run_json(cmd, env, timeout=1800)


def _rounds(workers: int) -> int:
    """Message rounds of a recursive-doubling allgather or allreduce among ``workers``."""
    return math.ceil(math.log2(workers)) if workers > 1 else 0


def run_bounded(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a benchmark command in its own process group, capturing its output.

    After ``timeout`` seconds the whole group (mpiexec and its ranks, not only
    the direct child) is killed and RuntimeError says so.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"{' '.join(cmd)} did not finish within {timeout:g} s; stopped") from None
    except BaseException:  # Ctrl-C: take the job's ranks down too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_json(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a benchmark job; the last JSON line it printed (RuntimeError with its stderr if none)."""
    out = run_bounded(cmd, env, timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def coordination(args: argparse.Namespace) -> dict[str, Any]:
    workers = args.workers
    # Hand loop, program loop and engine alternate, so that a change in the
    # machine's load hits all three; each ratio pairs the runs of one repeat.
    hands, plains, engines = [], [], []
    no_serve = {"DRIZZLE_NO_SERVE": "1"}
    for _ in range(args.repeats):
        hands.append(_mpirun(workers, "_hand", args, no_serve))
        plains.append(_mpirun(workers, "_plain", args, no_serve))
        engines.append(_mpirun(workers + 1, "_engine", args, {}))
    plain, engine = plains[-1], engines[-1]
    base = float(np.median([h["per_iter"] for h in hands]))
    ratios = {
        name: [e["results"][name]["per_iter"] / h["per_iter"] for h, e in zip(hands, engines)]
        for name in engine["results"]
    }
    plain_ratios = [p["per_iter"] / h["per_iter"] for h, p in zip(hands, plains)]
    print(f"coordination benchmark: logistic GD, {args.rows} rows x {args.features} features per worker, "
          f"{args.iterations} iterations, {workers} worker{'s' if workers != 1 else ''}, "
          f"median of {args.repeats} alternating repeats")
    print(f"{'configuration':42s} {'us/iter':>10s} {'x hand':>8s} {'range':>12s}  notes")
    print(f"{'hand-written mpi4py loop (the limit)':42s} {base * 1e6:10.1f} {1.0:8.2f} {'':>12s}  "
          "numpy + comm.Allreduce, no engine objects")
    print(f"{'program loop (Program + Layout, Allreduce)':42s} "
          f"{np.median([p['per_iter'] for p in plains]) * 1e6:10.1f} {np.median(plain_ratios):8.2f} "
          f"{min(plain_ratios):.2f}-{max(plain_ratios):.2f}".rstrip() + "  the algorithm's code, no engine")
    for name, res in engine["results"].items():
        per_iter = np.median([e["results"][name]["per_iter"] for e in engines])
        spread = f"{min(ratios[name]):.2f}-{max(ratios[name]):.2f}"
        note = f"{res['groups']} groups" + (f", largest {res['max_group_size']}" if "auto" in name else "")
        print(f"{'drizzle ' + name:42s} {per_iter * 1e6:10.1f} {np.median(ratios[name]):8.2f} "
              f"{spread:>12s}  {note}")
    agree = max(float(np.max(np.abs(np.subtract(r["coef"], p["coef"]))))
                for p, e in zip(plains, engines) for r in e["results"].values())
    hand_agree = max(float(np.max(np.abs(np.subtract(h["coef"], p["coef"])))) for h, p in zip(hands, plains))
    print(f"max |coef - program loop coef| over all configurations and repeats: {agree:.2e} "
          f"(hand loop: {hand_agree:.2e})")
    best_fixed = min((n for n in ratios if n.startswith("group=") and n != "group=auto"),
                     key=lambda n: np.median(ratios[n]))
    auto_vs_best = [e["results"]["group=auto"]["per_iter"] / e["results"][best_fixed]["per_iter"] for e in engines]
    bsp_vs_100 = ([e["results"]["bsp"]["per_iter"] / e["results"]["group=100"]["per_iter"] for e in engines]
                  if "group=100" in engine["results"] else [])
    print(f"auto / best fixed group size ({best_fixed}): median {np.median(auto_vs_best):.2f} "
          f"(range {min(auto_vs_best):.2f}-{max(auto_vs_best):.2f})")
    if bsp_vs_100:
        print(f"bsp / group=100: median {np.median(bsp_vs_100):.2f} "
              f"(range {min(bsp_vs_100):.2f}-{max(bsp_vs_100):.2f})")

    # Cost model from the measured driver costs (labelled as a model, not a measurement).
    bsp, g10 = engine["results"]["bsp"], engine["results"]["group=10"]
    work = g10["compute_per_iter"] + g10["update_per_iter"]
    # One round of the reduction: what the hand loop spends beyond the arithmetic
    # (its Allreduce), per round of a recursive-doubling exchange among these workers.
    hop = max(base - work, 1e-6) / max(_rounds(workers), 1)
    bsp_per_worker = bsp["driver_schedule_per_iter"] / workers
    group_per_worker = g10["driver_per_group"] / workers
    print("\ncost model (extrapolated from this run's measured costs, not measured):")
    print(f"  per-iteration work {work * 1e6:.1f} us, reduction round {hop * 1e6:.1f} us, "
          f"driver cost per worker: bsp {bsp_per_worker * 1e6:.1f} us/iteration, "
          f"group {group_per_worker * 1e6:.1f} us/group")
    print(f"  {'workers':>8s} {'bsp us/iter':>12s} {'group=10':>10s} {'group=100':>10s} {'bsp/group=100':>14s}")
    model_rows = []
    for w in (4, 16, 128, 1024):
        rounds = _rounds(w)
        t_bsp = work + 2 * hop + w * bsp_per_worker
        t_g10 = work + rounds * hop + w * group_per_worker / 10
        t_g100 = work + rounds * hop + w * group_per_worker / 100
        model_rows.append({"workers": w, "bsp": t_bsp, "group10": t_g10, "group100": t_g100})
        print(f"  {w:8d} {t_bsp * 1e6:12.1f} {t_g10 * 1e6:10.1f} {t_g100 * 1e6:10.1f} {t_bsp / t_g100:14.1f}")
    report = {"hand": hands[-1], "plain": plain, "engine": engine,
              "repeats": {"hand": hands, "plain": plains, "engine": engines},
              "plain_ratios": plain_ratios,
              "cost_model": model_rows,
              "ratios": {name: float(np.median(r)) for name, r in ratios.items()},
              "ratio_ranges": {name: [min(r), max(r)] for name, r in ratios.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drizzle-ml bench")
    # The metavar hides the internal roles (_hand, _plain, _engine) from --help.
    add_subcommands(parser.add_subparsers(dest="bench", required=True, metavar="{coordination}"))
    return parser


def add_subcommands(sub: Any) -> None:
    """``coordination`` and the roles its measurement jobs run, as subcommands of ``sub``."""
    for name in ("coordination", "_hand", "_plain", "_engine"):
        p = sub.add_parser(name, **({"help": "engine overhead vs group size, BSP and a plain MPI loop"}
                                    if name == "coordination" else {}))
        p.add_argument("--rows", type=int, default=2000, help="rows per worker")
        p.add_argument("--features", type=int, default=10)
        p.add_argument("--iterations", type=int, default=2000)
        p.add_argument("--json", default=None, help="also write the figures to this JSON file")
        p.add_argument("--group-sizes", default="1,10,100",
                       help="fixed group sizes to measure, comma-separated (10 is always needed)")
        p.add_argument("--repeats", type=positive_int, default=3,
                       help="alternating hand/program/engine repeats; the table shows medians (default 3)")
        p.add_argument("--workers", type=positive_int, default=2, help="workers (ranks besides the driver; default 2)")
        p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.bench in ("_hand", "_plain"):
        from mpi4py import MPI

        out = (_hand if args.bench == "_hand" else _plain)(args)
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(json.dumps(out), flush=True)
    elif args.bench == "_engine":
        print(json.dumps(_engine(args)), flush=True)
    else:
        coordination(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
