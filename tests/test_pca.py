"""PCA through the engine, against scikit-learn's PCA(svd_solver="covariance_eigh") and numpy."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.decomposition import PCA as SkPCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from drizzle_ml import PCA
from drizzle_ml.algorithms.pca_programs import CovariancePCA, SubspacePCA
from drizzle_ml.program import Partition

SOLVERS = ["covariance", "subspace"]

DIGITS = load_digits().data
CANCER = load_breast_cancer().data
WINE = load_wine().data
CANCER_STD = StandardScaler().fit_transform(CANCER)
WINE_STD = StandardScaler().fit_transform(WINE)

# (name, X, n_components): the subspace must be well separated at n_components
# for a comparison to 1e-8 to be meaningful (raw breast_cancer's 10th
# eigenvalue is 2e-7 of the first, where even two dense eigensolvers differ).
CASES = [
    ("digits", DIGITS, 10),
    ("cancer_std", CANCER_STD, 10),
    ("cancer_raw", CANCER, 3),
    ("wine_std", WINE_STD, 5),
    ("wine_raw", WINE, 2),
]


def fit(X, solver, **kw):
    params = dict(svd_solver=solver, n_workers=2, random_state=0)
    params.update(kw)
    return PCA(**params).fit(X)


def max_angle(a, b):
    return float(np.max(subspace_angles(a.T, b.T)))


def assert_rel(actual, expected, rtol=1e-8, scale=None):
    """Equal to ``rtol`` relative to the largest entry (or ``scale``), entry by entry."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    if scale is None:
        scale = np.max(np.abs(expected)) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name,X,k", CASES, ids=[c[0] for c in CASES])
def test_matches_sklearn(name, X, k, solver):
    ours = fit(X, solver, n_components=k)
    ref = SkPCA(k, svd_solver="covariance_eigh").fit(X)
    assert max_angle(ours.components_, ref.components_) <= 1e-8
    assert_rel(ours.explained_variance_, ref.explained_variance_)
    assert_rel(ours.explained_variance_ratio_, ref.explained_variance_ratio_)
    assert_rel(ours.singular_values_, ref.singular_values_)
    assert_rel(ours.mean_, ref.mean_, rtol=1e-12, scale=np.abs(X).max())
    assert ours.noise_variance_ == pytest.approx(ref.noise_variance_, rel=1e-7)
    assert ours.n_components_ == k and ours.n_samples_ == X.shape[0] and ours.n_features_in_ == X.shape[1]
    assert ours.components_.shape == (k, X.shape[1])
    # Signs included: the projections and components agree entry by entry.
    assert_rel(ours.components_, ref.components_)
    assert_rel(ours.transform(X), ref.transform(X))
    Z = ref.transform(X[:50])
    assert_rel(ours.inverse_transform(Z), ref.inverse_transform(Z))
    assert_rel(ours.fit_transform(X), ref.fit_transform(X))


@pytest.mark.parametrize("solver", SOLVERS)
def test_whiten_matches_sklearn(solver):
    ours = fit(DIGITS, solver, n_components=8, whiten=True)
    ref = SkPCA(8, svd_solver="covariance_eigh", whiten=True).fit(DIGITS)
    T = ours.transform(DIGITS)
    assert_rel(T, ref.transform(DIGITS))
    np.testing.assert_allclose(T.std(axis=0, ddof=1), 1.0, rtol=1e-10)
    assert_rel(ours.inverse_transform(T[:20]), ref.inverse_transform(T[:20]))


@pytest.mark.parametrize("solver", SOLVERS)
def test_full_rank_round_trip_and_default_n_components(solver):
    ours = fit(WINE, solver, whiten=True)
    assert ours.n_components_ == WINE.shape[1] and ours.noise_variance_ == 0.0
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(WINE)), WINE, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours.explained_variance_ratio_.sum(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_large_offset_is_stable(solver):
    # The Chan merge (and the subspace solver's centered products) do not form
    # X^T X - n mu mu^T, which loses everything at this offset; compare with
    # scikit-learn's SVD of the centered data.
    X = WINE_STD + 1e7
    ours = fit(X, solver, n_components=4)
    ref = SkPCA(4, svd_solver="full").fit(X)
    assert max_angle(ours.components_, ref.components_) <= 1e-8
    assert_rel(ours.explained_variance_, ref.explained_variance_, rtol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sparse_matches_dense(solver):
    rng = np.random.default_rng(0)
    X = DIGITS[:400].copy()
    X[rng.random(X.shape) < 0.5] = 0.0
    dense = fit(X, solver, n_components=5)
    for Xs in (sp.csr_matrix(X), sp.csc_matrix(X)):
        sparse = fit(Xs, solver, n_components=5)
        assert_rel(sparse.components_, dense.components_, rtol=1e-9)
        assert_rel(sparse.explained_variance_, dense.explained_variance_, rtol=1e-10)
        assert_rel(sparse.transform(Xs), dense.transform(X), rtol=1e-9)
    ref = SkPCA(5, svd_solver="covariance_eigh").fit(sp.csr_matrix(X))
    assert max_angle(dense.components_, ref.components_) <= 1e-8


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_preserves_dtype(solver):
    X32 = CANCER_STD.astype(np.float32)
    ours = fit(X32, solver, n_components=4)
    ref = SkPCA(4, svd_solver="covariance_eigh").fit(CANCER_STD)
    for attr in ("components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "mean_"):
        assert getattr(ours, attr).dtype == np.float32, attr
    assert ours.transform(X32).dtype == np.float32
    assert ours.inverse_transform(ours.transform(X32)).dtype == np.float32
    assert max_angle(ours.components_.astype(np.float64), ref.components_) <= 1e-5
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_weight_equals_repetition(solver):
    X = WINE_STD
    w = np.ones(len(X))
    w[:40] = 3.0
    w[40:50] = 0.0
    weighted = PCA(4, svd_solver=solver, n_workers=2, random_state=0).fit(X, sample_weight=w)
    repeated = fit(np.vstack([X[:40], X[:40], X[:40], X[50:]]), solver, n_components=4)
    assert_rel(weighted.components_, repeated.components_, rtol=1e-9)
    assert_rel(weighted.explained_variance_, repeated.explained_variance_, rtol=1e-10)
    assert_rel(weighted.mean_, repeated.mean_, rtol=1e-12, scale=np.abs(X).max())


@pytest.mark.parametrize("solver", SOLVERS)
def test_bsp_scheduling_agrees(solver):
    group = fit(DIGITS, solver, n_components=5, group_size=3)
    bsp = fit(DIGITS, solver, n_components=5, scheduling="bsp")
    assert bsp.n_iter_ == group.n_iter_
    assert_rel(bsp.components_, group.components_, rtol=1e-12)
    assert_rel(bsp.explained_variance_, group.explained_variance_, rtol=1e-12)


def test_convergence_warning_and_metrics():
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=3"):
        p = fit(DIGITS, "subspace", n_components=10, max_iter=3)
    assert p.n_iter_ == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        p = fit(DIGITS, "subspace", n_components=10, n_oversamples=5, group_size=4)
    assert 2 <= p.n_iter_ < 200
    assert p.history_[-1]["metrics"]["angle"] <= 1e-12
    ref = SkPCA(10, svd_solver="covariance_eigh").fit(DIGITS)
    assert max_angle(p.components_, ref.components_) <= 1e-8


@pytest.mark.parametrize(
    "params,X,match",
    [
        ({"n_components": 14}, WINE, r"n_components=14 must be between 1 and min\(n_samples, n_features\)=13"),
        ({"n_components": 0}, WINE, r"The 'n_components' parameter of PCA must be None or an int in the range "
                                    r"\[1, inf\)\. Got 0 instead\."),
        ({"n_components": 0.9}, WINE, r"The 'n_components' parameter of PCA must be None or an int in the range "
                                      r"\[1, inf\)\. Got 0\.9 instead\."),
        ({"n_components": "mle"}, WINE, r"The 'n_components' .* Got 'mle' instead\."),
        ({"svd_solver": "arpack"}, WINE, r"The 'svd_solver' parameter of PCA must be a str among \{.*\}\. "
                                         r"Got 'arpack' instead\."),
        ({"tol": -1.0}, WINE, "tol"),
        ({"max_iter": 0}, WINE, "max_iter"),
        ({"n_oversamples": -1}, WINE, "n_oversamples"),
        ({"n_workers": 0}, WINE, "n_workers"),
        ({}, np.full((10, 3), np.nan), "NaN"),
        ({}, np.ones((1, 3)), "at least 2 samples"),
        ({"n_components": 3}, np.ones((5, 2)), r"min\(n_samples, n_features\)=2"),
    ],
)
def test_bad_input_is_a_clear_value_error(params, X, match):
    with pytest.raises(ValueError, match=match):
        PCA(**{"n_workers": 2, **params}).fit(X)


def test_transform_checks_and_feature_names():
    p = fit(WINE, "covariance", n_components=3)
    with pytest.raises(ValueError, match="features"):
        p.transform(WINE[:, :5])
    assert list(p.get_feature_names_out()) == ["pca0", "pca1", "pca2"]


def test_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PCA().transform(WINE)


# -- the programs without the engine ---------------------------------------------------------


def _partitions(X, bounds, sw=None):
    return [Partition(X=X[lo:hi], sample_weight=None if sw is None else sw[lo:hi], row_offset=lo,
                      n_total=X.shape[0]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def test_chan_merge_equals_direct_scatter():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 4)) * [1, 10, 100, 0.1] + 5.0
    sw = rng.random(50)
    sw[10:20] = 0.0  # a partition with no weight at all
    prog = CovariancePCA()
    parts = [prog.local({}, p) for p in _partitions(X, [0, 10, 20, 37, 50], sw)]
    total = parts[0]
    for p in parts[1:]:
        total = prog.combine(total, p)
    mean = sw @ X / sw.sum()
    Xc = X - mean
    np.testing.assert_allclose(total[0], [sw.sum()], rtol=1e-14)
    np.testing.assert_allclose(total[1], mean, rtol=1e-13)
    np.testing.assert_allclose(total[2], Xc.T @ (Xc * sw[:, None]), rtol=1e-12)


@pytest.mark.parametrize("block_entries", [1 << 20, 10])  # one block, and blocks of 2 rows
@pytest.mark.parametrize("kind", ["dense", "float32", "csr"])
def test_subspace_partial_is_centered_product(kind, block_entries, monkeypatch):
    import drizzle_ml.algorithms.moments as moments_module

    monkeypatch.setattr(moments_module, "_BLOCK_ENTRIES", block_entries)
    rng = np.random.default_rng(2)
    X = np.round(rng.standard_normal((30, 5)) + 3.0, 2)
    Xin = {"dense": X, "float32": X.astype(np.float32), "csr": sp.csr_matrix(X)}[kind]
    X = Xin.toarray() if kind == "csr" else Xin.astype(np.float64)
    sw = rng.random(30)
    Q, _ = np.linalg.qr(rng.standard_normal((5, 3)))
    m = rng.standard_normal(5)
    prog = SubspacePCA(2)
    parts = [prog.local({"Q": Q, "mean": m}, p) for p in _partitions(Xin, [0, 7, 30], sw)]
    total = prog.combine(*parts)
    mean = sw @ X / sw.sum()
    np.testing.assert_allclose(total[0], [sw.sum()], rtol=1e-14)
    np.testing.assert_allclose(total[3], (X - m).T @ (sw[:, None] * ((X - m) @ Q)), rtol=1e-12)
    np.testing.assert_allclose(total[1], mean, rtol=1e-13)
    np.testing.assert_allclose(total[2], sw @ ((X - mean) ** 2), rtol=1e-12)
    assert np.array_equal(X, Xin.toarray() if kind == "csr" else Xin)  # the partition is not modified

    cov = CovariancePCA()
    parts = [cov.local({}, p) for p in _partitions(Xin, [0, 7, 30], sw)]
    total = cov.combine(*parts)
    np.testing.assert_allclose(total[2], (X - mean).T @ (sw[:, None] * (X - mean)), rtol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_fewer_samples_than_features(solver):
    # Rank 19: the 20th component is any direction in the null space, so
    # compare the first 19; the subspace solver must not wait for it to settle.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 50)) * np.linspace(1, 3, 50)
    for k in (None, 10):
        ref = SkPCA(k, svd_solver="covariance_eigh").fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            ours = fit(X, solver, n_components=k)
        top = min(ref.n_components_, 19)
        assert ours.n_components_ == ref.n_components_
        assert max_angle(ours.components_[:top], ref.components_[:top]) <= 1e-8
        assert_rel(ours.transform(X)[:, :top], ref.transform(X)[:, :top])
        assert_rel(ours.explained_variance_, ref.explained_variance_)
        assert ours.noise_variance_ == pytest.approx(ref.noise_variance_, rel=1e-8, abs=1e-12)


def test_import_paths():
    import drizzle_ml
    import drizzle_ml.algorithms

    assert drizzle_ml.PCA is drizzle_ml.algorithms.PCA is PCA
    assert "PCA" in drizzle_ml.__all__ and "PCA" in drizzle_ml.algorithms.__all__


# -- scikit-learn's estimator checks -----------------------------------------------------------


_NONE_DEPENDS_ON_ROWS = (
    "n_components=None keeps min(n_samples, n_features) components, and n_samples counts rows: "
    "the repeated data (27 rows) gets 27 components, the weighted data (15 rows) 15, so the "
    "transform outputs differ in shape. With n_components set, weights and repetition agree: "
    "see test_sample_weight_equivalence_with_n_components"
)


def _expected_failed_checks(estimator):
    return {
        "check_sample_weight_equivalence_on_dense_data": _NONE_DEPENDS_ON_ROWS,
        "check_sample_weight_equivalence_on_sparse_data": _NONE_DEPENDS_ON_ROWS,
    }


@parametrize_with_checks(
    [PCA(n_workers=2, group_size=4), PCA(svd_solver="subspace", n_workers=2, group_size=4, random_state=0)],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_weight_equivalence_with_n_components(solver):
    from sklearn.utils.estimator_checks import (
        check_sample_weight_equivalence_on_dense_data,
        check_sample_weight_equivalence_on_sparse_data,
    )

    # The check's data has rank 11 at most (12 rows of positive weight): keep 8 components.
    estimator = PCA(8, svd_solver=solver, n_workers=2, random_state=0)
    check_sample_weight_equivalence_on_dense_data("PCA", estimator)
    check_sample_weight_equivalence_on_sparse_data("PCA", estimator)


# Last: it launches clusters of 1 and 4 workers (the tests above share one of 2).
def test_worker_counts_agree_and_repeats_are_bit_identical():
    X = DIGITS[:601]  # uneven split
    fits = {}
    for w in (1, 2, 4):
        for solver in SOLVERS:
            fits[w, solver] = fit(X, solver, n_components=6, n_workers=w)
    for solver in SOLVERS:
        again = fit(X, solver, n_components=6, n_workers=4)
        last = fits[4, solver]
        for w in (1, 2):
            assert_rel(fits[w, solver].components_, last.components_, rtol=1e-10)
            assert_rel(fits[w, solver].explained_variance_, last.explained_variance_, rtol=1e-10)
            assert_rel(fits[w, solver].mean_, last.mean_, rtol=1e-12, scale=np.abs(X).max())
        for attr in ("components_", "explained_variance_", "singular_values_", "mean_"):
            assert np.array_equal(getattr(again, attr), getattr(last, attr))
        assert again.n_iter_ == last.n_iter_


@pytest.mark.parametrize("scheduling", ["group", "bsp"])
def test_a_refit_after_changing_x_in_place_learns_the_new_content(scheduling, monkeypatch):
    # A refit on the same array object runs on the cached partitions while the driver
    # fingerprints X in the background; X changed in place, so that job is dropped
    # before its result counts and the fit runs again on the new content.
    from drizzle_ml.data import ArrayDataset

    answers = []
    confirm = ArrayDataset.confirm
    monkeypatch.setattr(ArrayDataset, "confirm", lambda self: answers.append(confirm(self)) or answers[-1])
    X = np.random.default_rng(11).standard_normal((300, 6))
    before = PCA(2, n_workers=2, scheduling=scheduling).fit(X)
    X[:, 4] *= 10.0
    answers.clear()
    after = PCA(2, n_workers=2, scheduling=scheduling).fit(X)
    assert answers[0] is False  # the speculative id was checked, and did not hold
    reference = SkPCA(2, svd_solver="covariance_eigh").fit(X)
    np.testing.assert_allclose(after.explained_variance_, reference.explained_variance_, rtol=1e-10)
    assert np.max(subspace_angles(after.components_.T, reference.components_.T)) < 1e-8
    assert not np.allclose(after.explained_variance_, before.explained_variance_)
    assert len(after.history_) == before.n_iter_ == after.n_iter_  # no trace of the dropped job
    assert after.model_version_ == before.model_version_


def test_x_is_checked_for_nan_once_per_content(monkeypatch):
    # The NaN/inf check runs after the fingerprint and is remembered by content: a refit
    # on the same data skips it, changed data (here a NaN written in place) is checked.
    from drizzle_ml import KMeans, LinearRegression, LogisticRegression
    from drizzle_ml.algorithms import base

    calls = []
    real = base.assert_all_finite
    monkeypatch.setattr(base, "assert_all_finite", lambda X, **kw: (calls.append(1), real(X, **kw)))
    X = np.random.default_rng(7).standard_normal((60, 4))
    y = (X[:, 0] > 0).astype(int)
    makers = (lambda: PCA(2, n_workers=2), lambda: KMeans(2, n_init=1, n_workers=2),
              lambda: LogisticRegression(n_workers=2), lambda: LinearRegression(n_workers=2))
    for shift, make in enumerate(makers):
        Z = X + shift  # content no fit has seen (PCA's and KMeans's datasets would be the same)
        calls.clear()
        make().fit(Z, y)
        make().fit(Z, y)
        assert len(calls) == 1
        Z[5, 2] = np.nan
        with pytest.raises(ValueError, match="Input X contains NaN"):
            make().fit(Z, y)
        Z[5, 2] = np.inf
        with pytest.raises(ValueError, match="Input X contains infinity"):
            make().fit(sp.csr_matrix(Z), y)
