"""``drizzle-ml bench scale``: a cost model of BSP and group scheduling, from measured costs, checked.

    drizzle-ml bench scale [--workers 1,2,3,4] [--hosts H1,H2] [--quick] [--json OUT]
    python bench/scale.py [same options]

It measures, with real ``mpiexec`` jobs:

1. per-message latency ``alpha`` and bandwidth ``beta``: MPI ping-pong
   between two ranks on this host and, with ``--hosts``, between the first
   two hosts listed;
2. the engine's costs: the coordination benchmark's engine job (logistic
   gradient descent, group sizes 1, 10, 100 and BSP) at each worker count.
   Per worker count it fits ``T(k) = a + c/k``: ``a`` is the per-iteration
   time, ``c`` the cost of a group boundary. Over the worker counts it fits
   the part of ``a`` beyond the measured work, the reduction, as
   ``r0 + r1 * rounds(W)`` (``rounds(W) = ceil(log2 W)``, the message rounds
   of the collective), and ``c(W) = c0 + cw * W``; and it takes the driver's
   measured time per BSP iteration per worker (``d``).

From these it predicts the per-iteration time at 4 to 1,024 workers (the
formulas are in docs/multihost.md)::

    msg(S) = alpha + S / beta                 S: bytes of one partial (or model)
    bsp:    work + 2 * msg(S) + d * W              d: driver's time per worker per iteration
    group:  work + r0 + r1 * rounds(W) + (c0 + cw * W) / k

and prints the relative error of the same formulas at every point it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from .bench_coordination import _mpirun, run_json
from .common import positive_int

#: Worker counts of the prediction table; group sizes it shows.
TABLE_WORKERS = (4, 16, 64, 256, 1024)
TABLE_GROUPS = (10, 100)
#: Group sizes the engine job measures (the coordination benchmark's, without 'auto').
MEASURED_GROUPS = (1, 10, 100)
SMALL, LARGE = 8, 1 << 20


def _pingpong(args: argparse.Namespace) -> dict[str, float]:
    """Rank 0 and 1: best half round-trip for a small and a large message; latency and bandwidth."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    out = {}
    for size, reps in ((SMALL, args.pingpongs), (LARGE, max(args.pingpongs // 20, 3))):
        buf = np.zeros(size, dtype=np.uint8)
        best = float("inf")
        for _ in range(5):  # best of five batches: the least disturbed by the other sessions' load
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                if rank == 0:
                    comm.Send(buf, 1)
                    comm.Recv(buf, 1)
                elif rank == 1:
                    comm.Recv(buf, 0)
                    comm.Send(buf, 0)
            best = min(best, (time.perf_counter() - t0) / reps / 2)
        out[size] = best
    latency = out[SMALL]
    return {"latency": latency, "bandwidth": LARGE / max(out[LARGE] - latency, 1e-9),
            "hosts": comm.gather(MPI.Get_processor_name())}


def _spawn_pingpong(args: argparse.Namespace, mpiexec_args: list[str]) -> dict[str, Any]:
    from drizzle_ml.worker_job import find_mpiexec

    cmd = [find_mpiexec(), "-n", "2", *mpiexec_args, sys.executable, "-m", "drizzle_ml.launch.bench_scale",
           "_pingpong", "--pingpongs", str(args.pingpongs)]
    return run_json(cmd, dict(os.environ, DRIZZLE_NO_SERVE="1"), timeout=600)


def message_time(link: dict[str, float], nbytes: int) -> float:
    """One message of ``nbytes`` over ``link`` (``latency`` s, ``bandwidth`` B/s)."""
    return link["latency"] + nbytes / link["bandwidth"]


def rounds(workers: int) -> int:
    """Message rounds of a recursive-doubling allgather or allreduce among ``workers``."""
    return math.ceil(math.log2(workers)) if workers > 1 else 0


def predict(params: dict[str, float], link: dict[str, float], workers: int, scheduling: str,
            group_size: int = 1) -> float:
    """Predicted seconds per iteration (see the module doc)."""
    if scheduling == "bsp":  # one hop each way, and the driver handles every worker's messages
        hop = message_time(link, int(params["message_bytes"]))
        return params["work"] + 2 * hop + params["bsp_driver"] * workers
    reduction = params["r0"] + params["r1"] * rounds(workers)
    driver = params["c0"] + params["cw"] * workers
    return params["work"] + reduction + driver / group_size


def _line(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = b0 + b1 x`` with both coefficients >= 0 (noise must not make a cost negative)."""
    if len(xs) > 1 and np.ptp(xs) > 0:
        (b0, b1), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(xs), xs]), ys, rcond=None)
        if b0 >= 0 and b1 >= 0:
            return float(b0), float(b1)
    b1 = float(ys @ xs / (xs @ xs)) if xs @ xs > 0 else 0.0
    if b1 > 0:
        return 0.0, b1
    return max(float(np.mean(ys)), 0.0), 0.0


def fit(engines: dict[int, dict], features: int) -> dict[str, float]:
    """Model parameters from engine jobs at several worker counts: work, r0, r1, c0, cw, d."""
    per_group, per_iteration = {}, {}
    for w, engine in engines.items():
        res = engine["results"]
        k = np.array(MEASURED_GROUPS, dtype=float)
        t = np.array([res[f"group={g}"]["per_iter"] for g in MEASURED_GROUPS])
        (a, c), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(k), 1 / k]), t, rcond=None)
        per_group[w] = max(float(c), 0.0)
        per_iteration[w] = max(float(a), 0.0)
    ws = np.array(sorted(per_group), dtype=float)
    cs = np.array([per_group[int(w)] for w in ws])
    c0, cw = 0.0, float(cs @ ws / (ws @ ws))  # all of it per worker: one worker count, or noise made c0 < 0
    if len(ws) > 1:
        (line_c0, line_cw), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(ws), ws]), cs, rcond=None)
        if line_c0 >= 0 and line_cw >= 0:
            c0, cw = line_c0, line_cw
    work = float(np.median([e["results"]["group=10"]["compute_per_iter"] + e["results"]["group=10"]["update_per_iter"]
                            for e in engines.values()]))
    # The reduction: what an iteration costs beyond the work, against the collective's rounds.
    rs = np.array([rounds(w) for w in sorted(per_iteration)], dtype=float)
    reduction = np.array([max(per_iteration[w] - work, 0.0) for w in sorted(per_iteration)])
    r0, r1 = _line(rs, reduction)
    # BSP: the driver's own time per iteration (sending tasks, combining partials), per worker.
    bsp_driver = float(np.median([e["results"]["bsp"]["driver_schedule_per_iter"] / w for w, e in engines.items()]))
    return {"work": work, "r0": r0, "r1": r1, "c0": float(c0), "cw": float(cw), "bsp_driver": bsp_driver,
            "message_bytes": 8 * (features + 1),
            "per_group": {str(w): c for w, c in per_group.items()},
            "per_iteration": {str(w): a for w, a in per_iteration.items()}}


def _engines(args: argparse.Namespace, mpiexec_args: list[str]) -> dict[int, dict]:
    return {w: _mpirun(w + 1, "_engine", args, {}, mpiexec_args) for w in args.workers}


def _checks(params: dict, link: dict, engines: dict[int, dict], where: str) -> list[dict]:
    rows = []
    for w, engine in engines.items():
        for name, res in engine["results"].items():
            if name == "group=auto":
                continue
            scheduling, k = ("bsp", 1) if name == "bsp" else ("group", int(name.split("=")[1]))
            predicted = predict(params, link, w, scheduling, k)
            rows.append({"where": where, "workers": w, "configuration": name, "measured": res["per_iter"],
                         "predicted": predicted, "error": predicted / res["per_iter"] - 1})
    return rows


def scale(args: argparse.Namespace) -> dict[str, Any]:
    host_args: list[str] = []
    links = {"one host": _spawn_pingpong(args, [])}
    if args.hosts:
        names = [h.split(":")[0] for h in args.hosts.split(",") if h]
        if len(names) < 2:
            raise SystemExit("drizzle-ml: error: --hosts: bench scale needs two hosts for the cross-host figures")
        host_args = ["-hosts", ",".join(names)]  # one rank per host in turn: every neighbour pair crosses
        links["two hosts"] = _spawn_pingpong(args, ["-hosts", ",".join(names[:2])])
    measured = {"one host": _engines(args, [])}
    if args.hosts:
        measured["two hosts"] = _engines(args, host_args)
    params = fit(measured["one host"], args.features)

    print(f"scale benchmark: ping-pong {SMALL} B and {LARGE >> 20} MiB; engine job logistic GD, {args.rows} rows x "
          f"{args.features} features per worker, {args.iterations} iterations, workers "
          f"{','.join(map(str, args.workers))}")
    for where, link in links.items():
        print(f"measured {where:9s} ({' -> '.join(link['hosts'])}): latency {link['latency'] * 1e6:8.2f} us, "
              f"bandwidth {link['bandwidth'] / 1e9:6.2f} GB/s")
    print(f"measured per-iteration work {params['work'] * 1e6:.1f} us; reduction r(W) = "
          f"{params['r0'] * 1e6:.1f} us + {params['r1'] * 1e6:.1f} us x rounds(W); driver cost per group c(W) = "
          f"{params['c0'] * 1e6:.1f} us + {params['cw'] * 1e6:.1f} us x W "
          f"(fit of T(k) = a + c/k, k = {', '.join(map(str, MEASURED_GROUPS))}, over W = "
          f"{', '.join(map(str, args.workers))}, one host); BSP driver time per worker per iteration "
          f"d = {params['bsp_driver'] * 1e6:.1f} us; message {params['message_bytes']} B")

    table = []
    for where, link in links.items():
        print(f"\nprediction, {where} links (a model, not measured): us per iteration")
        head = "".join(f"{f'group k={k}':>12s}" for k in TABLE_GROUPS)
        print(f"{'workers':>8s} {'rounds':>6s} {'bsp':>12s}{head} {'bsp/group k=100':>16s}")
        for w in TABLE_WORKERS:
            bsp = predict(params, link, w, "bsp")
            groups = {k: predict(params, link, w, "group", k) for k in TABLE_GROUPS}
            table.append({"where": where, "workers": w, "rounds": rounds(w), "bsp": bsp,
                          **{f"group{k}": t for k, t in groups.items()}})
            cells = "".join(f"{groups[k] * 1e6:12.1f}" for k in TABLE_GROUPS)
            print(f"{w:8d} {rounds(w):6d} {bsp * 1e6:12.1f}{cells} {bsp / groups[100]:16.1f}")

    checks = [row for where, engines in measured.items() for row in _checks(params, links[where], engines, where)]
    print("\ncheck: the same formulas at the points measured (r0, r1, c0, cw fitted on one host's group runs)")
    print(f"{'where':>9s} {'workers':>7s} {'configuration':>13s} {'measured us':>12s} {'predicted us':>13s} "
          f"{'error':>8s}")
    for row in checks:
        print(f"{row['where']:>9s} {row['workers']:7d} {row['configuration']:>13s} {row['measured'] * 1e6:12.1f} "
              f"{row['predicted'] * 1e6:13.1f} {row['error'] * 100:7.1f}%")
    errors = np.abs([row["error"] for row in checks])
    print(f"relative error: median {np.median(errors) * 100:.1f}%, largest {errors.max() * 100:.1f}%")
    report = {"links": links, "params": params, "table": table, "checks": checks,
              "engines": {where: {str(w): e for w, e in m.items()} for where, m in measured.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of worker counts, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive, got {text!r}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``drizzle-ml bench scale``."""
    parser.add_argument("role", nargs="?", default="scale", choices=("scale", "_pingpong"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=_worker_counts, default=None,
                        help="worker counts to measure (default 1,2,3,4)")
    parser.add_argument("--hosts", default=None, metavar="H1,H2",
                        help="also measure across these hosts (the first two for ping-pong)")
    parser.add_argument("--rows", type=positive_int, default=2000, help="rows per worker (default 2000)")
    parser.add_argument("--features", type=positive_int, default=10)
    parser.add_argument("--iterations", type=positive_int, default=None, help="per engine configuration (default 1000)")
    parser.add_argument("--pingpongs", type=positive_int, default=None,
                        help="round trips per small-message batch (1000)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast, rough run; defaults become workers 1,2, 100 iterations, 200 round trips")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drizzle-ml bench scale", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The benchmark (or its ping-pong role under mpiexec), with parsed options."""
    if args.role == "_pingpong":
        from mpi4py import MPI

        out = _pingpong(args)
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(json.dumps(out), flush=True)
        return 0
    defaults = {"workers": [1, 2], "iterations": 100, "pingpongs": 200} if args.quick else \
        {"workers": [1, 2, 3, 4], "iterations": 1000, "pingpongs": 1000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        scale(args)
    except RuntimeError as exc:  # a measurement job failed (an unreachable host, ...): its stderr, in short
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        why = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
        print(f"drizzle-ml bench scale: error: {why}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
