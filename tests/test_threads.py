"""Fits from several threads of one process share the default cluster: their jobs take turns."""

import threading

import numpy as np
import pytest
from sklearn.datasets import make_classification, make_regression

import drizzle_ml as dm
from drizzle_ml.errors import ClusterClosedError
from drizzle_ml.testing import TreeSum

DATA = [make_classification(400, 6, random_state=seed) for seed in range(4)]


def test_fits_from_several_threads_at_once_equal_sequential_fits():
    sequential = [dm.LogisticRegression(n_workers=2).fit(X, y).coef_ for X, y in DATA]
    results: dict[int, object] = {}
    start = threading.Barrier(len(DATA) + 2)

    def fit(i: int) -> None:
        X, y = DATA[i]
        start.wait()
        try:
            results[i] = dm.LogisticRegression(n_workers=2).fit(X, y).coef_
        except BaseException as exc:  # shown by the assertion below
            results[i] = exc

    Xr, yr = make_regression(300, 5, random_state=0)

    def other_estimators() -> None:
        start.wait()
        try:
            results["pca"] = dm.PCA(n_components=2, n_workers=2).fit(Xr).components_
            results["ridge"] = dm.Ridge(alpha=1.0, n_workers=2).fit(Xr, yr).coef_
        except BaseException as exc:
            results["pca"] = exc

    threads = [threading.Thread(target=fit, args=(i,)) for i in range(len(DATA))]
    threads.append(threading.Thread(target=other_estimators))
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    for i, coef in enumerate(sequential):
        assert isinstance(results[i], np.ndarray), results[i]
        assert np.array_equal(results[i], coef)
    assert np.array_equal(results["pca"], dm.PCA(n_components=2, n_workers=2).fit(Xr).components_)
    assert np.array_equal(results["ridge"], dm.Ridge(alpha=1.0, n_workers=2).fit(Xr, yr).coef_)


def test_a_thread_asking_for_another_size_waits_for_the_running_job():
    X, y = DATA[0]
    reference = dm.LogisticRegression(solver="gd", max_iter=60, group_size=10, n_workers=2).fit(X, y).coef_
    in_job, go_on = threading.Event(), threading.Event()
    out: dict[str, object] = {}

    def hold_at_first_group(_group) -> None:
        in_job.set()
        go_on.wait(timeout=30)

    def slow_fit() -> None:
        est = dm.LogisticRegression(solver="gd", max_iter=60, group_size=10, n_workers=2)
        est.progress_callback = hold_at_first_group
        try:
            out["coef"] = est.fit(X, y).coef_
        except BaseException as exc:
            out["coef"] = exc

    def three_workers() -> None:
        out["cluster"] = dm.get_cluster(3)

    a = threading.Thread(target=slow_fit)
    a.start()
    assert in_job.wait(timeout=120)
    b = threading.Thread(target=three_workers)
    b.start()
    b.join(timeout=1.0)
    assert "cluster" not in out  # replacing the 2-worker cluster waits while its job runs
    go_on.set()
    a.join(timeout=120)
    b.join(timeout=120)
    assert isinstance(out["coef"], np.ndarray), out["coef"]
    assert np.array_equal(out["coef"], reference)
    assert out["cluster"].n_workers == 3 and not out["cluster"].closed


def test_a_cluster_replaced_by_another_size_says_why():
    two = dm.get_cluster(2)
    three = dm.get_cluster(3)
    assert two.closed and not three.closed
    X, y = DATA[0]
    with pytest.raises(ClusterClosedError, match=r"^the default cluster of 2 workers was closed: a fit asked for "
                       r"n_workers=3 \(in another thread\?\) and replaced it\. Threads that fit at once must use "
                       r"the same n_workers \(their jobs then take turns\)$"):
        two.run(TreeSum(), {"sums": np.zeros(6), "rows": np.zeros(1)}, dm.ArrayDataset(X),
                max_iter=1)
