"""World mode: the user launches mpiexec; rank 0 runs the script, the other ranks serve."""

import re

import numpy as np
import pytest

from .conftest import last_json, run_mpi

SCRIPT = """
import json, numpy as np
import drizzle_ml
from drizzle_ml import ArrayDataset, ModelStore
from drizzle_ml.testing import LeastSquaresGD, TreeSum, Counter

rng = np.random.default_rng(0)
X = rng.standard_normal((61, 5)); y = X @ np.arange(5.0)
cluster = drizzle_ml.get_cluster()
out = {"workers": cluster.n_workers}
r = cluster.run(TreeSum(), {"sums": np.zeros(5), "rows": np.zeros(1)}, ArrayDataset(X), max_iter=2)
out["sum_err"] = float(np.max(np.abs(r.model["sums"] - X.sum(axis=0))))
runs = [cluster.run(LeastSquaresGD(), {"coef": np.zeros(5)}, ArrayDataset(X, y), max_iter=30, group_size=g)
        for g in (4, 4, "auto")]
out["identical"] = bool(np.array_equal(runs[0].model["coef"], runs[1].model["coef"]))
out["coef"] = runs[0].model["coef"].tolist()
store = ModelStore(history=50)
c = cluster.run(Counter(stop_at=9), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X),
                max_iter=50, group_size=4, store=store)
out["stop"] = [c.n_iter, c.version, c.converged]
out["versions_ok"] = all(store.get(v).model["x"][0] == v for v in store.versions())
print(json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("ranks", [2, 3, 5])
def test_world_mode_jobs(ranks, tmp_path):
    code, out, err = run_mpi(ranks, SCRIPT, tmp_path)
    assert code == 0, err
    result = last_json(out)
    assert result["workers"] == ranks - 1
    assert result["sum_err"] < 1e-12
    assert result["identical"]
    assert result["stop"] == [10, 10, True]
    assert result["versions_ok"]
    # reference gradient descent in numpy
    rng = np.random.default_rng(0)
    X = rng.standard_normal((61, 5))
    y = X @ np.arange(5.0)
    coef = np.zeros(5)
    for _ in range(30):
        coef = coef - 0.1 * (X.T @ (X @ coef - y)) / len(y)
    np.testing.assert_allclose(result["coef"], coef, rtol=1e-10)


def test_world_mode_estimator_script(tmp_path):
    script = """
    import json
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler
    from drizzle_ml import LogisticRegression
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = LogisticRegression(solver="gd", learning_rate=0.5, max_iter=50, tol=0.0, group_size=10).fit(X, y)
    print(json.dumps({"acc": clf.score(X, y), "n_iter": clf.n_iter_, "groups": len(clf.history_)}))
    """
    code, out, err = run_mpi(3, script, tmp_path)
    assert code == 0, err
    result = last_json(out)
    assert result["acc"] > 0.95 and result["n_iter"] == 50 and result["groups"] == 5


def test_world_mode_driver_exception_shuts_workers_down(tmp_path):
    script = """
    import numpy as np, drizzle_ml
    cluster = drizzle_ml.get_cluster()
    raise RuntimeError("user code failed on the driver")
    """
    code, out, err = run_mpi(3, script, tmp_path, timeout=60)
    assert code != 0
    assert "user code failed on the driver" in err


def test_world_mode_dead_worker_ends_the_job(tmp_path):
    script = """
    import numpy as np, drizzle_ml
    from drizzle_ml import ArrayDataset
    from drizzle_ml.testing import Counter
    cluster = drizzle_ml.get_cluster()
    cluster.run(Counter(kill_at=3, kill_worker=1), {"x": np.zeros(1), "seen": np.zeros(1)},
                ArrayDataset(np.ones((10, 2))), max_iter=100, group_size=2)
    print("not reached")
    """
    code, out, err = run_mpi(3, script, tmp_path, timeout=60)
    assert code != 0
    assert "not reached" not in out
    assert "BAD TERMINATION" in out + err


def test_world_mode_n_workers_mismatch(tmp_path):
    script = """
    import drizzle_ml
    try:
        drizzle_ml.Cluster(n_workers=5)
    except ValueError as exc:
        print("ERR", exc)
    """
    code, out, err = run_mpi(3, script, tmp_path)
    assert code == 0, err
    assert "ERR n_workers=5 but mpiexec started 2 workers" in out


def test_world_mode_workers_use_the_drivers_timeout(tmp_path):
    # DRIZZLE_TIMEOUT is 30 s in the workers' environment; Cluster(timeout=1) must win.
    script = """
    import numpy as np, drizzle_ml
    from drizzle_ml import ArrayDataset, WorkerError
    from drizzle_ml.testing import Counter
    cluster = drizzle_ml.Cluster(timeout=1.0)
    try:
        cluster.run(Counter(update_sleep=4.0), {"x": np.zeros(1), "seen": np.zeros(1)},
                    ArrayDataset(np.ones((10, 2))), max_iter=3, scheduling="bsp")
    except WorkerError as exc:
        print("ERR", exc)
    """
    code, out, err = run_mpi(3, script, tmp_path, timeout=60)
    assert code == 0, err
    assert "ERR worker" in out and "waited 1 s for the driver's task for iteration 1" in out


def test_world_mode_worker_hung_mid_group_ends_the_job_not_hangs(tmp_path):
    # Long groups: worker 0's wait for the stopped worker's partials runs out before the driver's
    # (which has the group's expected duration on top). That is a dead cluster too: the job must
    # end (so that `drizzle-ml train` can restart it), not go on with a hung rank and never exit.
    script = """
    import os, signal
    from sklearn.datasets import make_classification
    import drizzle_ml
    X, y = make_classification(6000, 12, random_state=0)
    cluster = drizzle_ml.Cluster(timeout=3.0)
    victim, stopped = cluster.workers[1].pid, []
    def stop_once(group):
        if group.start_iteration >= 400 and not stopped:
            stopped.append(os.kill(victim, signal.SIGSTOP))
    est = drizzle_ml.LogisticRegression(solver="gd", learning_rate=0.5, tol=0.0, max_iter=4000, group_size=200)
    est.progress_callback = stop_once
    try:
        est.fit(X, y)
    except drizzle_ml.WorkerTimeoutError as exc:
        with open("error.txt", "w") as f:  # not stdout: the abort may cut mpiexec's forwarding of it short
            f.write(str(exc))
    """
    code, out, err = run_mpi(3, script, tmp_path, timeout=60)
    assert code == 1, out + err  # MPI_Abort(1): the driver aborted the hung ranks
    error = (tmp_path / "error.txt").read_text() if (tmp_path / "error.txt").exists() else ""
    assert re.match(r"worker 0 waited [0-9.]+ s for the workers' partials for iteration \d+; the cluster "
                    r"has been shut down$", error), out + err + error  # no driver's timeout suffix


def test_world_mode_worker_hung_at_exit_ends_the_job(tmp_path):
    # The driver's exit waits for the workers' goodbyes (bounded), then must abort: MPI_Finalize
    # would wait for the stopped rank for ever.
    script = """
    import os, signal, drizzle_ml
    cluster = drizzle_ml.Cluster(timeout=2.0)
    os.kill(cluster.workers[1].pid, signal.SIGSTOP)
    open("bye.txt", "w").close()  # not stdout: the abort may cut mpiexec's forwarding of it short
    """
    code, out, err = run_mpi(3, script, tmp_path, timeout=60)
    assert code == 1 and (tmp_path / "bye.txt").exists(), out + err  # MPI_Abort(1), within the goodbyes' timeout
