"""Sharded model state: coordinates split across workers, reduce-scatter in, all-gather out.

Real MPI jobs: a sharded run equals the replicated run of the same program
(to rounding), for 1, 2, 3 and 5 workers, dense and sparse, and repeats bit
for bit; a model sharded over 3 workers continues over 2; the estimators'
L-BFGS and OWL-QN fits reach the replicated fits' optimum; a killed worker
of a sharded fit is replaced and the model is the same bit for bit.
"""

from __future__ import annotations

import os
import pickle
import signal

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError

import drizzle_ml as dm
from drizzle_ml import ArrayDataset, Cluster
from drizzle_ml import protocol as P
from drizzle_ml.datasets import load_default
from drizzle_ml.errors import WorkerError, WorkerRecoveredWarning
from drizzle_ml.sharding import MIN_COORDINATES, assemble, bounds, choose, n_coordinates, split
from drizzle_ml.store import ModelStore
from drizzle_ml.testing import LeastSquaresGD, ShardedMomentumGD

rng = np.random.default_rng(7)
X = rng.normal(size=(240, 23))
Y = X @ rng.normal(size=23) + 0.1 * rng.normal(size=240)


# -- the pure part ---------------------------------------------------------------------------
def test_bounds_are_contiguous_and_even():
    for n, w in [(23, 1), (23, 2), (23, 5), (3, 5), (1 << 20, 15)]:
        spans = bounds(n, w)
        assert spans[0][0] == 0 and spans[-1][1] == n and len(spans) == w
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        sizes = [hi - lo for lo, hi in spans]
        assert max(sizes) - min(sizes) <= 1


def test_split_and_assemble_round_trip():
    model = {"w": np.arange(10.0), "S": np.arange(30.0).reshape(3, 10), "state": np.array([1.0, 2.0])}
    keys = ("w", "S")
    parts = [split(model, keys, lo, hi) for lo, hi in bounds(10, 3)]
    assert parts[1]["S"].shape == (3, 3) and parts[1]["state"] is model["state"]
    whole = assemble({"state": model["state"]}, [{k: p[k] for k in keys} for p in parts])
    assert all(np.array_equal(whole[k], model[k]) for k in model)


def test_a_sharded_version_joins_each_key_when_read_and_then_drops_its_shards():
    model = {"state": np.array([1.0, 2.0]), "w": np.arange(10.0), "S": np.arange(30.0).reshape(3, 10)}
    shards = [{k: split(model, ("w", "S"), lo, hi)[k] for k in ("w", "S")} for lo, hi in bounds(10, 3)]
    version = assemble({"state": model["state"]}, shards)
    assert list(version) == ["state", "w", "S"] and len(version) == 3
    assert version.nbytes == sum(a.nbytes for a in model.values())
    assert all(not a.flags.writeable for s in shards for a in s.values())  # the store's arrays are read-only
    assert version._shards[0].keys() == {"w", "S"}  # nothing joined at the commit
    w = version["w"]
    assert np.array_equal(w, model["w"]) and not w.flags.writeable and version["w"] is w
    assert version._shards[0].keys() == {"S"} and version.nbytes == sum(a.nbytes for a in model.values())
    with pytest.raises(KeyError):
        version["missing"]
    store = ModelStore()
    store.commit(4, version, 40)
    assert store.latest().model is version and store.latest().nbytes == version.nbytes
    back = pickle.loads(pickle.dumps(store))  # an estimator's store pickles as plain dicts
    assert type(back.latest().model) is dict and np.array_equal(back.latest().model["S"], model["S"])


def test_all_zero_arrays_travel_as_their_shape():
    model = {"S": np.zeros((10, 1 << 14)), "w": np.arange(1 << 14, dtype=float), "small": np.zeros(3)}
    compacted = P.compact(model)
    assert compacted["S"] == P.Zeros((10, 1 << 14), "<f8") and compacted["w"] is model["w"]
    assert compacted["small"] is model["small"]  # not worth it below ZEROS_MIN_BYTES
    part = split(compacted, ("S", "w"), 100, 250)
    assert part["S"] == P.Zeros((10, 150), "<f8") and np.array_equal(part["w"], model["w"][100:250])
    back = P.expand(part)
    assert back["S"].shape == (10, 150) and back["S"].dtype == np.float64 and not back["S"].any()
    assert n_coordinates(compacted, ("S", "w")) == 1 << 14


def test_choose():
    big = ShardedMomentumGD.initial_model(MIN_COORDINATES)
    small = ShardedMomentumGD.initial_model(100)
    program = ShardedMomentumGD()
    assert choose(program, big, "auto", 2) == ("w", "m")
    assert choose(program, big, "auto", 1) == ()  # one worker: nothing to split
    assert choose(program, small, "auto", 4) == ()  # too small to gain
    assert choose(program, small, "sharded", 4) == ("w", "m")
    assert choose(program, big, "replicated", 4) == ()
    assert choose(program, big, "sharded", 4, possible=False) == ()  # e.g. BSP or a stream
    with pytest.raises(ValueError, match="LeastSquaresGD cannot shard its model"):
        choose(LeastSquaresGD(), {"coef": np.zeros(3)}, "sharded", 2)
    with pytest.raises(ValueError, match="sharding must be one of"):
        choose(program, small, "yes", 2)
    with pytest.raises(ValueError, match="must share their last axis"):
        n_coordinates({"w": np.zeros(3), "m": np.zeros(4)}, ("w", "m"))


# -- real jobs --------------------------------------------------------------------------------
def _run(cluster, X, y, sharding, max_iter=40, model=None, version=0):
    model = ShardedMomentumGD.initial_model(X.shape[1]) if model is None else model
    return cluster.run(ShardedMomentumGD(0.05), model, ArrayDataset(X, y), max_iter=max_iter, group_size=7,
                       sharding=sharding, version=version)


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_sharded_equals_replicated(n_workers):
    Xs = sp.random(240, 23, density=0.3, random_state=3, format="csr")
    with Cluster(n_workers, timeout=30) as cluster:
        for data in ((X, Y), (Xs, Y)):
            replicated = _run(cluster, *data, "replicated")
            sharded = _run(cluster, *data, "sharded")
            again = _run(cluster, *data, "sharded")
            assert sharded.reduction == "scatter+sharded" and replicated.reduction != sharded.reduction
            for key in ("w", "m", "t"):
                np.testing.assert_allclose(sharded.model[key], replicated.model[key], rtol=1e-10, atol=1e-12)
                assert np.array_equal(again.model[key], sharded.model[key])  # bit for bit
            for name in ("loss", "gnorm", "gmax"):
                np.testing.assert_allclose(sharded.iteration_metrics[name], replicated.iteration_metrics[name],
                                           rtol=1e-10)
            assert sharded.model["w"].shape == (23,) and sharded.version == 40


def test_a_nan_on_one_shard_reaches_every_worker():
    with Cluster(3, timeout=30) as cluster:
        result = cluster.run(ShardedMomentumGD(0.05, nan_at=5), ShardedMomentumGD.initial_model(23),
                             ArrayDataset(X, Y), max_iter=8, group_size=4, sharding="sharded")
    gmax, gnorm = result.iteration_metrics["gmax"], result.iteration_metrics["gnorm"]
    assert np.isfinite(gmax[:5]).all() and np.isnan(gmax[5]) and np.isnan(gnorm[5])


def test_a_model_sharded_over_three_workers_continues_over_two():
    with Cluster(3, timeout=30) as cluster:
        whole = _run(cluster, X, Y, "sharded", max_iter=50)
        first = _run(cluster, X, Y, "sharded", max_iter=20)
    with Cluster(2, timeout=30) as cluster:
        rest = _run(cluster, X, Y, "sharded", max_iter=30, model=dict(first.model), version=first.version)
    assert rest.version == whole.version == 50
    for key in ("w", "m", "t"):
        np.testing.assert_allclose(rest.model[key], whole.model[key], rtol=1e-10, atol=1e-12)


def test_a_partial_that_is_not_the_coordinate_vector_is_refused():
    with Cluster(2, timeout=30) as cluster:
        with pytest.raises(WorkerError, match=r"partial\[0\] must be a float64 vector of its 23 coordinates, "
                                              r"got float32 of shape \(23,\)"):
            cluster.run(ShardedMomentumGD(partial_dtype=np.float32), ShardedMomentumGD.initial_model(23),
                        ArrayDataset(X, Y), max_iter=2, sharding="sharded")


# -- estimators: L-BFGS and OWL-QN with sharded coordinates -----------------------------------
def _estimators(n_workers, sharding):
    common = dict(n_workers=n_workers, sharding=sharding)
    return {
        "logistic": (dm.LogisticRegression(tol=1e-10, max_iter=2000, **common), "classification"),
        "multinomial sparse": (dm.LogisticRegression(C=0.5, tol=1e-10, max_iter=2000, **common), "sparse"),
        "lasso (OWL-QN)": (dm.Lasso(alpha=0.1, tol=1e-10, max_iter=5000, **common), "regression"),
    }


def _data(kind):
    if kind == "sparse":
        Xs = sp.random(400, 120, density=0.1, random_state=0, format="csr")
        return Xs, np.asarray(Xs.sum(axis=1)).ravel().argsort().argsort() * 3 // 400
    return load_default(kind)[:2]


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_sharded_fits_agree_with_replicated_fits(n_workers):
    sharded, replicated, again = (_estimators(n_workers, m) for m in ("sharded", "replicated", "sharded"))
    for name, (est, kind) in sharded.items():
        X_, y_ = _data(kind)
        est.fit(X_, y_)
        ref = replicated[name][0].fit(X_, y_)
        rerun = again[name][0].fit(X_, y_)
        assert est.history_[-1]["reduction"] == "scatter+sharded", name
        assert ref.history_[-1]["reduction"] != "scatter+sharded", name
        assert np.array_equal(rerun.coef_, est.coef_) and np.array_equal(rerun.intercept_, est.intercept_), name
        # The same optimum: the objectives to rounding, the coefficients as closely as the solver
        # converges (the sums run in another order, so the paths differ in the last bits).
        loss, ref_loss = est.history_[-1]["metrics"]["loss"], ref.history_[-1]["metrics"]["loss"]
        assert loss == pytest.approx(ref_loss, rel=1e-12), name
        scale = max(1.0, float(np.abs(ref.coef_).max()))
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=0, atol=1e-8 * scale, err_msg=name)
        if n_workers == 1:  # one shard is the whole model: the same arithmetic
            assert np.array_equal(est.coef_, ref.coef_), name


def test_auto_shards_wide_models_only():
    wide = sp.random(300, MIN_COORDINATES, density=1e-4, random_state=1, format="csr")
    y = np.arange(300) % 2
    with pytest.warns(ConvergenceWarning):
        est = dm.LogisticRegression(max_iter=3, n_workers=2).fit(wide, y)
    assert est.history_[-1]["reduction"] == "sparse-scatter+sharded"  # each worker touches 2% of it
    narrow = dm.LogisticRegression(n_workers=2).fit(*load_default("classification")[:2])
    assert narrow.history_[-1]["reduction"] != "scatter+sharded"
    with pytest.raises(InvalidParameterError, match="The 'sharding' parameter of LogisticRegression must be"):
        dm.LogisticRegression(sharding="yes").fit(wide, y)


def test_forced_sharding_of_a_narrow_least_squares_model_iterates():
    # 3 features over 3 workers: solver="auto" takes L-BFGS rather than the (unshardable) normal equations.
    X_ = X[:, :3]
    y_ = X_ @ np.array([1.0, -2.0, 0.5]) + 3.0
    for est in (dm.LinearRegression, dm.Ridge):
        sharded = est(n_workers=3, sharding="sharded", tol=1e-10).fit(X_, y_)
        ref = est(n_workers=3, sharding="replicated", solver="lbfgs", tol=1e-10).fit(X_, y_)
        assert sharded.solver_ == "lbfgs" and sharded.history_[-1]["reduction"] == "scatter+sharded"
        np.testing.assert_allclose(sharded.coef_, ref.coef_, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match=r"^solver='exact' cannot shard the model \(it sums the normal equations "
                                         r"whole\): use solver='lbfgs' or 'gd' with sharding='sharded'$"):
        dm.Ridge(solver="exact", sharding="sharded", n_workers=2).fit(X_, y_)


@pytest.mark.parametrize("n_workers", [2, 3, 5])
def test_sparse_partials_and_pulls_agree_with_replicated_fits(n_workers):
    # 600 rows of 10 values over 2^16 columns: each worker touches a few percent of the coordinates,
    # so the workers exchange only those (an all-to-all) instead of reduce-scatter and all-gather.
    rng = np.random.default_rng(0)
    n, d, k = 600, 1 << 16, 10
    X_ = sp.csr_matrix((rng.normal(size=n * k), rng.integers(0, d, size=n * k), np.arange(0, n * k + 1, k)),
                       shape=(n, d))
    X_.sum_duplicates()
    for y_ in ((X_ @ rng.normal(size=d) > 0).astype(int), np.asarray(X_.sum(axis=1)).ravel().argsort() % 3):
        fits = [dm.LogisticRegression(C=10, tol=1e-10, max_iter=500, n_workers=n_workers, sharding=m).fit(X_, y_)
                for m in ("replicated", "sharded", "sharded")]
        ref, est, again = fits
        assert est.history_[-1]["reduction"] == "sparse-scatter+sharded"
        assert np.array_equal(again.coef_, est.coef_)
        assert est.history_[-1]["metrics"]["loss"] == pytest.approx(ref.history_[-1]["metrics"]["loss"], rel=1e-12)
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=0, atol=1e-8 * max(1.0, np.abs(ref.coef_).max()))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_killed_worker_of_a_sharded_fit_recovers_to_the_same_model():
    X_, y_ = load_default("classification")[:2]

    def fit(callback=None):
        est = dm.LogisticRegression(solver="gd", learning_rate=0.5, tol=0.0, max_iter=150, n_workers=3,
                                    group_size=5, sharding="sharded")
        est.progress_callback = callback
        return est.fit(X_, y_)

    reference = fit()
    victim = dm.get_cluster(3).workers[1].pid
    killed = []

    def kill_once(group):
        if group.start_iteration >= 40 and not killed:
            killed.append(group.start_iteration)
            os.kill(victim, signal.SIGKILL)

    with pytest.warns(WorkerRecoveredWarning, match=r"worker 1 .* died"):
        recovered = fit(kill_once)
    assert killed and recovered.history_[-1]["reduction"] == "scatter+sharded"
    assert np.array_equal(recovered.coef_, reference.coef_) and recovered.n_iter_ == 150


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_sharded_checkpoint_resumes_on_fewer_workers(tmp_path):
    X_, y_ = load_default("classification")[:2]

    def gd(max_iter, n_workers, **kw):
        return dm.LogisticRegression(solver="gd", learning_rate=0.5, tol=0.0, max_iter=max_iter,
                                     n_workers=n_workers, group_size=10, sharding="sharded", **kw)

    whole = gd(120, 2).fit(X_, y_)
    gd(60, 3, checkpoint_dir=tmp_path).fit(X_, y_)  # the checkpoint holds the assembled model
    resumed = gd(120, 2, checkpoint_dir=tmp_path).fit(X_, y_, resume=True)  # re-sharded over 2
    assert resumed.n_iter_ == 120 and resumed.history_[0]["start_iteration"] == 60
    np.testing.assert_allclose(resumed.coef_, whole.coef_, rtol=1e-10, atol=1e-14)
