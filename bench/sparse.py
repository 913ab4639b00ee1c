"""Wide sparse logistic regression against scikit-learn, measured side by side in one run.

    python bench/sparse.py [--rows 200000] [--bits 20] [--nnz 40] [--workers 2] [--repeats 3]
                           [--sharding auto,replicated] [--json OUT]

The data are what hashed click logs or text look like: ``rows`` rows over
``2**bits`` columns, ``nnz`` nonzeros a row (value 1, columns drawn with a
Zipf-like skew so some features are frequent), labels drawn from a logistic
model. With BLAS pinned to one thread per process it prints, for
``LogisticRegression(C=1.0)``:

- scikit-learn's ``lbfgs`` fit time (one process) and its final objective;
- for each ``--sharding`` mode, drizzle-ml's time to reach that objective
  (1e-6 relative; the sum of group times up to the first group at or below
  it, data already on the workers), its iterations, and the ratio to
  scikit-learn's time;
- each worker's peak memory (``VmHWM``) against its data partition, its
  shard of the optimizer state and one dense vector of all coordinates.

Each round times every side back to back; the ratio is the median over
rounds, with its range. Read the ratios, not the absolute times.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads BLAS, here and in every process we start

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def make_data(rows: int, bits: int, nnz: int, seed: int = 0):
    """CSR rows x 2**bits with ``nnz`` ones a row, and 0/1 labels from a sparse logistic model."""
    rng = np.random.default_rng(seed)
    n = 1 << bits
    # Zipf-like column popularity: column c drawn with weight 1 / (c + 10).
    u = rng.random(rows * nnz)
    cols = np.minimum((np.exp(u * np.log(n / 10 + 1)) - 1) * 10, n - 1).astype(np.int64)
    cols = rng.permutation(n)[cols]  # popular columns spread over the index range
    indptr = np.arange(0, rows * nnz + 1, nnz)
    X = sp.csr_matrix((np.ones(rows * nnz), cols, indptr), shape=(rows, n))
    X.sum_duplicates()
    coef = rng.normal(scale=0.5, size=n) * (rng.random(n) < 0.2)
    p = 1.0 / (1.0 + np.exp(-(X @ coef)))
    y = (rng.random(rows) < p).astype(np.int64)
    return X, y


def objective(coef: np.ndarray, intercept: float, X, y, C: float) -> float:
    """scikit-learn's objective per sample: mean log-loss + ||coef||^2 / (2 C n)."""
    z = X @ coef + intercept
    loss = np.logaddexp(0.0, z) - y * z
    return float(loss.mean() + 0.5 * float(coef @ coef) / (C * len(y)))


def time_to(est, target: float) -> tuple[float, int]:
    """Seconds of the fit's groups up to the first whose loss is within 1e-6 of ``target``, and the iterations."""
    elapsed, iterations = 0.0, 0
    for group in est.history_:
        elapsed += group["wall"]
        iterations = group["start_iteration"] + group["n_iterations"]
        if group["metrics"].get("loss", np.inf) <= target * (1 + 1e-6):
            return elapsed, iterations
    return float("nan"), iterations


def peak_memory(cluster) -> list[int]:
    """Each worker's peak resident memory in bytes (VmHWM; workers on this host)."""
    peaks = []
    for hello in getattr(cluster, "workers", []):
        try:
            with open(f"/proc/{hello.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
            peaks.append(int(fields["VmHWM"].split()[0]) * 1024)
        except OSError:
            peaks.append(-1)
    return peaks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--nnz", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each round measures every side")
    parser.add_argument("--sharding", default="sharded,replicated",
                        help="drizzle-ml modes to compare, comma-separated (auto, sharded, replicated)")
    parser.add_argument("--max-iter", type=int, default=200, help="drizzle-ml's iteration budget")
    parser.add_argument("--skip-sklearn", action="store_true", help="only drizzle-ml (e.g. for --bits 24)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression as SkLogistic

    import drizzle_ml as dm

    warnings.simplefilter("ignore", ConvergenceWarning)
    t0 = time.perf_counter()
    X, y = make_data(args.rows, args.bits, args.nnz)
    modes = args.sharding.split(",")
    print(f"data: {args.rows} x 2^{args.bits} sparse, {X.nnz / args.rows:.1f} nonzeros a row "
          f"({X.data.nbytes + X.indices.nbytes >> 20} MiB), made in {time.perf_counter() - t0:.1f} s; "
          f"{args.workers} workers, BLAS 1 thread per process; {args.repeats} rounds, each timing every side "
          "back to back", flush=True)
    halves = np.array_split(np.arange(args.rows), args.workers)
    touched = [np.unique(X[h].indices).size / X.shape[1] for h in halves]
    print("columns a worker's gradient touches: " + ", ".join(f"{t:.0%}" for t in touched)
          + " (a sharded fit exchanges only the touched values where every worker touches at most a quarter)",
          flush=True)
    cluster = dm.get_cluster(args.workers)
    ours = {m: dm.LogisticRegression(C=1.0, tol=1e-6, max_iter=args.max_iter, n_workers=args.workers, sharding=m)
            for m in modes}
    rows = {m: [] for m in modes}
    sk_times, target = [], None
    for round_ in range(args.repeats + 1):  # round 0 warms up: partitions loaded, code paths hot
        if not args.skip_sklearn:
            sk = SkLogistic(C=1.0)
            t0 = time.perf_counter()
            sk.fit(X, y)
            sk_time = time.perf_counter() - t0
            if target is None:
                target = objective(sk.coef_[0], sk.intercept_[0], X, y, 1.0)
                print(f"scikit-learn lbfgs: {sk_time:.2f} s, {int(sk.n_iter_[0])} iterations, "
                      f"objective {target:.8f}", flush=True)
            if round_:
                sk_times.append(sk_time)
        for m in modes:
            est = ours[m].fit(X, y)
            reached, iterations = time_to(est, target) if target is not None else (np.nan, est.n_iter_)
            total = sum(g["wall"] for g in est.history_)
            if round_ or not args.repeats:  # --repeats 0: the one (cold) fit is all there is
                rows[m].append({"time_to_target": reached, "fit_groups": total, "iterations": iterations,
                                "n_iter": est.n_iter_, "reduction": est.history_[-1].get("reduction", "")})
    out = {"args": vars(args), "sklearn_s": sk_times, "target": target, "modes": {}}
    for m in modes:
        times = [r["time_to_target"] for r in rows[m]]
        line = f"drizzle-ml {m:<10} to target {np.median(times):7.2f} s"
        entry = {"rounds": rows[m]}
        if sk_times:
            ratios = [a / b for a, b in zip(times, sk_times)]
            entry["ratio"], entry["ratio_range"] = float(np.median(ratios)), [min(ratios), max(ratios)]
            line += (f"  scikit-learn {np.median(sk_times):6.2f} s  ratio {np.median(ratios):5.2f} "
                     f"({min(ratios):.2f}-{max(ratios):.2f}; target <= 1.0)")
        line += f"  iterations {rows[m][-1]['iterations']} (fit ran {rows[m][-1]['n_iter']})"
        print(line, flush=True)
        out["modes"][m] = entry
    peaks = peak_memory(cluster)
    n = 1 << args.bits
    part = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / args.workers
    shard = (2 * 10 + 5) * 8 * n / args.workers  # L-BFGS memory (S, Y) and the other vectors, per worker
    budget = 2 * (part + shard + 8 * n)
    print("worker peak memory: " + ", ".join(f"{p / 2**20:.0f} MiB" for p in peaks)
          + f"  (budget 2 x (partition {part / 2**20:.0f} + shard {shard / 2**20:.0f} + one dense vector "
          f"{8 * n / 2**20:.0f}) = {budget / 2**20:.0f} MiB; in one process over all modes)", flush=True)
    out["worker_peak_bytes"], out["budget_bytes"] = peaks, budget
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
