"""KMeans end to end through the engine, against numpy references and scikit-learn."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from drizzle_ml import KMeans
from drizzle_ml.algorithms.kmeans_programs import KMeansPlusPlusInit
from drizzle_ml.program import Partition

DATA = {
    name: StandardScaler().fit_transform(load(return_X_y=True)[0])
    for name, load in [("digits", load_digits), ("wine", load_wine), ("breast_cancer", load_breast_cancer)]
}
X = DATA["wine"]


def sq_dists(X, C):
    return ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)


def reference_lloyd(X, centers, w, tol, max_iter):
    """Plain numpy Lloyd with scikit-learn's stopping rule and empty-cluster relocation."""
    tol_abs = np.var(X, axis=0).mean() * tol
    centers = centers.astype(float).copy()
    for it in range(1, max_iter + 1):  # noqa: B007  (the iterations run are returned)
        d2 = sq_dists(X, centers)
        labels = d2.argmin(axis=1)
        dist = d2[np.arange(len(X)), labels]
        k = len(centers)
        sums = np.zeros_like(centers)
        for j in range(k):
            sums[j] = (w[labels == j, None] * X[labels == j]).sum(axis=0)
        weights = np.bincount(labels, weights=w, minlength=k)
        empty = np.flatnonzero(weights == 0)
        if empty.size:
            far = [i for i in np.lexsort((np.arange(len(X)), -dist)) if w[i] > 0]
            for e, i in zip(empty, far):
                sums[labels[i]] -= w[i] * X[i]
                weights[labels[i]] -= w[i]
                sums[e], weights[e] = w[i] * X[i], w[i]
        new = centers.copy()
        nz = weights > 0
        new[nz] = sums[nz] / weights[nz, None]
        shift = ((new - centers) ** 2).sum()
        centers = new
        if shift <= tol_abs:
            break
    d2 = sq_dists(X, centers)
    labels = d2.argmin(axis=1)
    return centers, labels, float(w @ d2[np.arange(len(X)), labels]), it


def km(**kw):
    params = dict(n_clusters=3, n_workers=2, random_state=0)
    params.update(kw)
    return KMeans(**params)


# -- agreement with references ----------------------------------------------------------------

@pytest.mark.parametrize("name,k", [("digits", 10), ("digits", 5), ("wine", 3), ("wine", 6),
                                    ("breast_cancer", 2), ("breast_cancer", 8)])
def test_inertia_within_one_percent_of_sklearn(name, k):
    Xd = DATA[name]
    ours = km(n_clusters=k, n_init=10, random_state=0).fit(Xd).inertia_
    theirs = SKKMeans(k, n_init=10, random_state=0).fit(Xd).inertia_
    assert ours <= 1.01 * theirs, (ours, theirs)


def test_labels_inertia_transform_consistent_with_centers():
    model = km(n_clusters=5).fit(X)
    d2 = sq_dists(X, model.cluster_centers_)
    assert model.cluster_centers_.shape == (5, X.shape[1]) and model.labels_.shape == (len(X),)
    np.testing.assert_array_equal(model.labels_, d2.argmin(axis=1))
    np.testing.assert_array_equal(model.predict(X), model.labels_)
    np.testing.assert_allclose(model.inertia_, d2.min(axis=1).sum(), rtol=1e-10)
    np.testing.assert_allclose(model.transform(X), np.sqrt(d2), rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(model.score(X), -model.inertia_, rtol=1e-10)
    assert model.n_iter_ >= 1 and model.n_features_in_ == X.shape[1]
    assert model.model_version_ == model.n_iter_ + 1  # Lloyd iterations + the evaluation iteration
    np.testing.assert_array_equal(km(n_clusters=5).fit_predict(X), model.labels_)
    np.testing.assert_allclose(km(n_clusters=5).fit_transform(X), model.transform(X), rtol=1e-12)


@pytest.mark.parametrize("tol,max_iter", [(1e-4, 300), (0.0, 300), (1e-4, 3)])
def test_lloyd_from_init_array_matches_numpy(tol, max_iter):
    Xd = DATA["digits"][:600]
    init = Xd[np.random.default_rng(1).choice(len(Xd), 8, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = km(n_clusters=8, init=init, tol=tol, max_iter=max_iter, group_size=4).fit(Xd)
    centers, labels, inertia, n_iter = reference_lloyd(Xd, init, np.ones(len(Xd)), tol, max_iter)
    assert model.n_iter_ == n_iter
    np.testing.assert_allclose(model.cluster_centers_, centers, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(model.labels_, labels)
    np.testing.assert_allclose(model.inertia_, inertia, rtol=1e-10)


def test_empty_cluster_is_relocated_like_the_reference():
    Xd = DATA["wine"]
    init = np.vstack([Xd[:3], np.full((2, Xd.shape[1]), 100.0)])  # two centers nobody is close to
    model = km(n_clusters=5, init=init, max_iter=50).fit(Xd)
    centers, labels, inertia, n_iter = reference_lloyd(Xd, init, np.ones(len(Xd)), 1e-4, 50)
    assert set(sq_dists(Xd, init).argmin(axis=1)) == {0, 1, 2}  # clusters 3 and 4 start empty
    np.testing.assert_allclose(model.cluster_centers_, centers, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(model.labels_, labels)
    assert np.bincount(model.labels_, minlength=5).min() > 0
    assert model.n_iter_ == n_iter


# -- determinism -------------------------------------------------------------------------------

def test_same_result_for_1_2_4_workers_and_bit_identical_repeats():
    Xd = DATA["breast_cancer"]
    fits = {w: km(n_clusters=6, n_init=2, n_workers=w, random_state=7).fit(Xd) for w in (1, 2, 4)}
    for w in (1, 4):
        np.testing.assert_allclose(fits[w].cluster_centers_, fits[2].cluster_centers_, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(fits[w].labels_, fits[2].labels_)
        np.testing.assert_allclose(fits[w].inertia_, fits[2].inertia_, rtol=1e-10)
        assert fits[w].n_iter_ == fits[2].n_iter_
    again = km(n_clusters=6, n_init=2, n_workers=2, random_state=7).fit(Xd)
    assert np.array_equal(again.cluster_centers_, fits[2].cluster_centers_)
    assert again.inertia_ == fits[2].inertia_
    other = km(n_clusters=6, n_init=2, n_workers=2, random_state=8).fit(Xd)
    assert not np.array_equal(other.cluster_centers_, fits[2].cluster_centers_)


def test_bsp_scheduling_agrees():
    a = km(n_clusters=4).fit(X)
    b = km(n_clusters=4, scheduling="bsp").fit(X)
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-12)


# -- k-means++ sampling, tested on the program directly -----------------------------------------

def run_program(program, model, X, w, bounds, n_iter):
    """Run ``program`` in-process over partitions ``bounds`` like the engine's reduce does."""
    parts = [Partition(X[lo:hi], None, None if w is None else w[lo:hi], lo, len(X), i)
             for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    for it in range(n_iter):
        partials = [program.local(model, p) for p in parts]
        total = partials[0]
        for p in partials[1:]:
            total = program.combine(total, p)
        model, metrics = program.update(model, total, it)
        if metrics.get("converged"):
            break
    return model


def test_kmeans_plus_plus_samples_proportional_to_weight_times_d2():
    # One center at 0 is chosen; the second candidate must be drawn with p ∝ w * D².
    Xs = np.array([[0.0], [1.0], [2.0], [3.0]])
    w = np.array([5.0, 1.0, 2.0, 1.0])
    expected = w * Xs[:, 0] ** 2 / (w * Xs[:, 0] ** 2).sum()
    counts = np.zeros(4)
    for seed in range(3000):
        prog = KMeansPlusPlusInit(2, 1, seed)
        model = prog.initial_model(2, 1, 1)
        model["state"][:] = (0, 1)  # sample phase, one center chosen (at 0)
        parts = [Partition(Xs[:2], None, w[:2], 0, 4), Partition(Xs[2:], None, w[2:], 2, 4)]
        total = prog.combine(prog.local(model, parts[0]), prog.local(model, parts[1]))
        counts[total["id"][0]] += 1
    freq = counts / counts.sum()
    assert counts[0] == 0
    np.testing.assert_allclose(freq, expected, atol=0.03)


def test_kmeans_plus_plus_does_not_depend_on_partitioning():
    Xd = DATA["wine"]
    prog = KMeansPlusPlusInit(6, 2 + int(np.log(6)), 123)
    runs = [run_program(prog, prog.initial_model(6, Xd.shape[1], prog.n_local_trials), Xd, None, b, 11)
            for b in ([0, len(Xd)], [0, 1, 90, len(Xd)], [0, 40, 41, 120, len(Xd)])]
    for r in runs[1:]:
        np.testing.assert_array_equal(r["centers"], runs[0]["centers"])
    assert len({tuple(c) for c in runs[0]["centers"]}) == 6  # six distinct data rows
    assert all(any(np.array_equal(c, x) for x in Xd) for c in runs[0]["centers"])


# -- input variants ----------------------------------------------------------------------------

def test_sample_weight_equals_repetition_from_fixed_init():
    Xd = DATA["wine"]
    w = np.ones(len(Xd))
    w[:40] = 3.0
    w[40:50] = 0.0
    init = Xd[[0, 60, 130, 170]]
    weighted = km(n_clusters=4, init=init).fit(Xd, sample_weight=w)
    keep = np.repeat(np.arange(len(Xd)), w.astype(int))
    repeated = km(n_clusters=4, init=init).fit(Xd[keep])
    np.testing.assert_allclose(weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weighted.inertia_, repeated.inertia_, rtol=1e-10)
    centers, _, inertia, _ = reference_lloyd(Xd, init, w, 1e-4, 300)
    np.testing.assert_allclose(weighted.cluster_centers_, centers, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(weighted.score(Xd, sample_weight=w), -weighted.inertia_, rtol=1e-10)


def test_sparse_equals_dense():
    Xd = DATA["digits"][:500].copy()
    Xd[np.abs(Xd) < 0.5] = 0.0
    dense = km(n_clusters=5).fit(Xd)
    sparse = km(n_clusters=5).fit(sp.csr_matrix(Xd))
    np.testing.assert_allclose(sparse.cluster_centers_, dense.cluster_centers_, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(sparse.labels_, dense.labels_)
    np.testing.assert_allclose(sparse.inertia_, dense.inertia_, rtol=1e-10)
    np.testing.assert_allclose(dense.transform(sp.csr_matrix(Xd)), dense.transform(Xd), rtol=1e-8, atol=1e-8)


def test_float32_is_preserved():
    X32 = X.astype(np.float32)
    model = km(n_clusters=3).fit(X32)
    assert model.cluster_centers_.dtype == np.float32
    assert model.transform(X32).dtype == np.float32
    assert model.fit_transform(X32).dtype == np.float32
    ref = km(n_clusters=3).fit(X)
    np.testing.assert_allclose(model.inertia_, ref.inertia_, rtol=1e-4)


def test_random_init_and_auto_n_init():
    model = km(n_clusters=3, init="random").fit(X)
    theirs = SKKMeans(3, n_init=10, random_state=0).fit(X).inertia_
    assert model.inertia_ <= 1.01 * theirs
    assert len(set(model.labels_)) == 3


# -- errors and warnings -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "params,data,match",
    [
        ({"n_clusters": 5}, X[:4], "n_samples=4 should be >= n_clusters=5"),
        ({"init": np.zeros((2, X.shape[1]))}, X, r"init array must have shape .*\(3, 13\).*\(2, 13\)"),
        ({"init": np.zeros((3, 2))}, X, "init array must have shape"),
        ({"init": "kmeans"}, X, r"The 'init' parameter of KMeans must be a str among \{.*\} or an array-like\. "
                                r"Got 'kmeans' instead\."),
        ({"n_init": 0}, X, r"The 'n_init' parameter of KMeans must be a str among \{'auto'\} or an int in the "
                           r"range \[1, inf\)\. Got 0 instead\."),
        ({"n_init": "many"}, X, r"The 'n_init' parameter of KMeans .* Got 'many' instead\."),
        ({"n_clusters": 0}, X, r"The 'n_clusters' parameter of KMeans must be an int in the range \[1, inf\)\. "
                               r"Got 0 instead\."),
        ({"max_iter": 0}, X, r"The 'max_iter' parameter of KMeans must be an int in the range \[1, inf\)\."),
        ({"tol": -1.0}, X, r"The 'tol' parameter of KMeans must be a float in the range \[0\.0, inf\)\."),
        ({"n_workers": 0}, X, "n_workers"),
        ({}, np.full((10, 3), np.nan), "NaN"),
        ({}, np.ones(10), "Expected 2D array"),
    ],
)
def test_clear_value_errors(params, data, match):
    with pytest.raises(ValueError, match=match):
        km(**params).fit(data)


def test_bad_sample_weight():
    with pytest.raises(ValueError, match="sample_weight"):
        km().fit(X, sample_weight=np.ones(3))


def test_init_array_with_n_init_warns_and_runs_once():
    with pytest.warns(RuntimeWarning, match="only one init"):
        km(init=X[:3], n_init=4).fit(X)


def test_convergence_warning():
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=1"):
        model = km(n_clusters=6, max_iter=1, tol=0.0).fit(DATA["digits"][:300])
    assert model.n_iter_ == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        km(n_clusters=3).fit(X)


def test_predict_before_fit_and_wrong_features():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        KMeans().predict(X)
    with pytest.raises(ValueError, match="features"):
        km().fit(X).predict(X[:, :5])


# -- scikit-learn's estimator checks -----------------------------------------------------------

# k-means++ draws are keyed by global row index (so any partitioning draws the
# same centers); repeating a row shifts the indices of the rows after it, so the
# repeated and the weighted data start Lloyd from different centers. From the
# same initial centers the two agree.
INIT_KEYED_BY_ROW = (
    "k-means++ sampling is keyed by row index, and repeating rows shifts the indices: the "
    "initial centers differ (scikit-learn marks its own KMeans likewise); from equal initial "
    "centers weights and repetition agree (test_sample_weight_equals_repetition_from_fixed_init)"
)


@parametrize_with_checks(
    [KMeans(n_clusters=2, n_init=2, max_iter=20, n_workers=2, random_state=0)],
    expected_failed_checks=lambda est: {
        "check_sample_weight_equivalence_on_dense_data": INIT_KEYED_BY_ROW,
        "check_sample_weight_equivalence_on_sparse_data": INIT_KEYED_BY_ROW,
    },
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
