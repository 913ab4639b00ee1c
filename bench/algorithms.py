"""Algorithms against scikit-learn and plain mpi4py loops, measured side by side in one run.

    python bench/algorithms.py [--rows 200000] [--features 100] [--workers 2] [--iterations 100] [--repeats 5]
                               [--json OUT]

On ``make_classification(rows, features, random_state=0)`` with BLAS pinned
to one thread per process, it prints:

- gradient descent: drizzle-ml's per-iteration time against a plain mpi4py
  loop (``mpiexec -n W``) computing the same gradient with ``Allreduce``;
- L-BFGS: drizzle-ml's fit time (cluster up, data loaded) to reach
  scikit-learn's optimum loss to 1e-6 relative, against scikit-learn's
  ``LogisticRegression(solver="lbfgs")`` fit;
- PCA(n_components=10): fit time against scikit-learn's
  ``PCA(svd_solver="covariance_eigh")``;
- KMeans(n_clusters=10): Lloyd iteration time against a plain mpi4py Lloyd loop.

Each round times both sides back to back (the plain loops in a fresh
``mpiexec``); the printed ratio is the median over rounds, with its range.
Read the ratios, not the absolute times.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads BLAS, here and in every process we start

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def make_data(rows: int, features: int):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=features, random_state=0)
    return X, y


# -- plain mpi4py loops (run under mpiexec -n W, one rank per worker) ----------------------
def plain_gd(X, y, comm, iterations: int, lr: float, C: float) -> float:
    """Per-iteration seconds of the textbook loop: z = Xw, r = sigmoid(z) - y, g = X^T r, Allreduce."""
    from scipy.special import expit

    n_total = comm.allreduce(X.shape[0])
    w, b = np.zeros(X.shape[1]), 0.0
    local, total = np.empty(X.shape[1] + 1), np.empty(X.shape[1] + 1)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(iterations):
        r = expit(X @ w + b) - y
        local[:-1] = X.T @ r
        local[-1] = r.sum()
        comm.Allreduce(local, total)
        w = w - lr * (total[:-1] / n_total + w / (C * n_total))
        b = b - lr * total[-1] / n_total
    return (time.perf_counter() - t0) / iterations


def plain_lloyd(X, comm, centers: np.ndarray, iterations: int) -> float:
    """Per-iteration seconds of a plain Lloyd loop: assign, per-cluster sums and counts, Allreduce."""
    import scipy.sparse as sp

    k, d = centers.shape
    xx = np.einsum("ij,ij->i", X, X)
    local, total = np.empty(k * d + k), np.empty(k * d + k)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(iterations):
        dist = xx[:, None] - 2.0 * (X @ centers.T) + np.einsum("ij,ij->i", centers, centers)
        labels = dist.argmin(axis=1)
        # Per-cluster row sums as a sparse indicator product (much faster than np.add.at).
        onehot = sp.csr_matrix((np.ones(X.shape[0]), (labels, np.arange(X.shape[0]))), shape=(k, X.shape[0]))
        sums = onehot @ X
        local[: k * d] = sums.ravel()
        local[k * d :] = np.bincount(labels, minlength=k)
        comm.Allreduce(local, total)
        counts = np.maximum(total[k * d :], 1.0)
        centers = total[: k * d].reshape(k, d) / counts[:, None]
    return (time.perf_counter() - t0) / iterations


def plain_main(args) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    X, y = make_data(args.rows, args.features)
    lo, hi = rank * len(X) // size, (rank + 1) * len(X) // size
    X, y = np.ascontiguousarray(X[lo:hi]), y[lo:hi].astype(np.float64)
    out = {"gd": min(plain_gd(X, y, comm, args.iterations, 0.5, 1.0) for _ in range(args.repeats))}
    centers = make_data(args.rows, args.features)[0][:10].copy()
    out["lloyd"] = min(plain_lloyd(X, comm, centers, args.iterations) for _ in range(args.repeats))
    if rank == 0:
        print(json.dumps(out))


def run_plain(args) -> dict:
    from drizzle_ml.launch.bench_coordination import run_json
    from drizzle_ml.worker_job import find_mpiexec

    cmd = [find_mpiexec(), "-n", str(args.workers), sys.executable, __file__, "--plain",
           "--rows", str(args.rows), "--features", str(args.features),
           "--iterations", str(args.iterations), "--repeats", str(args.repeats)]
    return run_json(cmd, dict(os.environ, DRIZZLE_NO_SERVE="1"), timeout=3600)


# -- drizzle-ml and scikit-learn, in this process ------------------------------------------
def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def engine_seconds(est) -> float:
    """Job time of the last fit without start-up (partition load, first-iteration set-up)."""
    return sum(g["wall"] for g in est.history_)


def logistic_objective(est, X, y, C: float) -> float:
    from sklearn.metrics import log_loss

    return log_loss(y, est.predict_proba(X)) + 0.5 * float(np.sum(est.coef_ ** 2)) / (C * len(y))


BENCHMARKS = [
    # name, what drizzle-ml is compared with, target ratio
    ("logistic gd, per iteration", "plain mpi4py Allreduce loop", 1.0),
    ("logistic lbfgs, fit to optimum", "scikit-learn lbfgs fit", 1.0),
    ("PCA(10) covariance, fit", "scikit-learn covariance_eigh", 1.0),
    ("kmeans lloyd, per iteration", "plain mpi4py Lloyd loop", 1.2),
]


def one_round(args, X, y, target_loss: float) -> tuple[dict, dict]:
    """One measurement of every benchmark, each side right after the other: {name: (ours, reference)}."""
    from sklearn import decomposition as skd
    from sklearn import linear_model as skl

    import drizzle_ml as dm

    plain = run_plain(args)
    out, extra = {}, {}
    gd = dm.LogisticRegression(solver="gd", learning_rate=0.5, tol=0.0, max_iter=args.iterations,
                               n_workers=args.workers).fit(X, y)
    out["logistic gd, per iteration"] = (engine_seconds(gd) / gd.n_iter_, plain["gd"])

    sk = skl.LogisticRegression()
    sk_time = timed(lambda: sk.fit(X, y))
    ours = dm.LogisticRegression(tol=1e-5, max_iter=1000, n_workers=args.workers)
    ours_time = timed(lambda: ours.fit(X, y))
    out["logistic lbfgs, fit to optimum"] = (ours_time, sk_time)
    extra["lbfgs"] = {
        "drizzle_gap": logistic_objective(ours, X, y, 1.0) / target_loss - 1, "drizzle_iter": ours.n_iter_,
        "sklearn_gap": logistic_objective(sk, X, y, 1.0) / target_loss - 1, "sklearn_iter": int(sk.n_iter_[0]),
    }

    sk_time = timed(lambda: skd.PCA(n_components=10, svd_solver="covariance_eigh").fit(X))
    ours_time = timed(lambda: dm.PCA(n_components=10, n_workers=args.workers).fit(X))
    out["PCA(10) covariance, fit"] = (ours_time, sk_time)

    km = dm.KMeans(n_clusters=10, init=X[:10].copy(), n_init=1, max_iter=args.iterations, tol=0.0,
                   n_workers=args.workers).fit(X)
    out["kmeans lloyd, per iteration"] = (engine_seconds(km) / (km.n_iter_ + 1), plain["lloyd"])
    return out, extra


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=100, help="iterations per timed loop")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each round measures both sides")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain:
        plain_main(args)
        return 0

    import warnings

    from sklearn import linear_model as skl
    from sklearn.exceptions import ConvergenceWarning

    import drizzle_ml as dm

    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = make_data(args.rows, args.features)
    print(f"data: make_classification({args.rows}, {args.features}), {args.workers} workers, "
          f"BLAS 1 thread per process; {args.repeats} rounds (+1 warm-up), each timing both sides "
          "back to back; ratio = drizzle-ml / reference, median and range over rounds", flush=True)
    target = logistic_objective(skl.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y), X, y, 1.0)
    dm.get_cluster(args.workers)
    args_plain = argparse.Namespace(**{**vars(args), "repeats": 1})
    one_round(args_plain, X, y, target)  # warm-up: partitions loaded, code paths hot
    rounds = [one_round(args_plain, X, y, target) for _ in range(args.repeats)]
    rows = []
    for name, against, goal in BENCHMARKS:
        ours = [r[0][name][0] for r in rounds]
        ref = [r[0][name][1] for r in rounds]
        ratios = [a / b for a, b in zip(ours, ref)]
        rows.append({"benchmark": name, "reference": against, "target": goal, "drizzle_s": ours,
                     "reference_s": ref, "ratio": float(np.median(ratios)),
                     "ratio_range": [min(ratios), max(ratios)]})
        print(f"{name:<32} drizzle-ml {np.median(ours) * 1e3:8.1f} ms  {against:<29} "
              f"{np.median(ref) * 1e3:8.1f} ms  ratio {np.median(ratios):5.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}; target <= {goal})", flush=True)
    lbfgs = rounds[-1][1]["lbfgs"]
    print(f"  lbfgs loss above the optimum: drizzle-ml {lbfgs['drizzle_gap']:.1e} ({lbfgs['drizzle_iter']} "
          f"iterations), scikit-learn {lbfgs['sklearn_gap']:.1e} ({lbfgs['sklearn_iter']} iterations)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows, "lbfgs": lbfgs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
