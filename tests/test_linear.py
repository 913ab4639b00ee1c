"""LinearRegression and Ridge: exact (tree-summed moments) and iterative solvers against scikit-learn."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import datasets
from sklearn import linear_model as sk
from sklearn.exceptions import ConvergenceWarning

from drizzle_ml import LinearRegression, Ridge
from drizzle_ml.algorithms.moments import combine_moments, partition_moments

X, Y = datasets.load_diabetes(return_X_y=True)
RNG = np.random.default_rng(0)
W = RNG.uniform(0.1, 3.0, len(Y))


def assert_same_model(ours, theirs, rtol=1e-8):
    scale = np.abs(theirs.coef_).max()
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_exact_linear_regression_matches_sklearn(fit_intercept, weighted):
    sw = W if weighted else None
    ours = LinearRegression(fit_intercept=fit_intercept, n_workers=2).fit(X, Y, sample_weight=sw)
    theirs = sk.LinearRegression(fit_intercept=fit_intercept).fit(X, Y, sample_weight=sw)
    assert_same_model(ours, theirs)
    assert ours.solver_ == "exact" and ours.n_iter_ == 1
    np.testing.assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-10)
    assert ours.score(X, Y) == pytest.approx(theirs.score(X, Y), rel=1e-10)


@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
def test_exact_ridge_matches_sklearn(alpha):
    ours = Ridge(alpha=alpha, n_workers=2).fit(X, Y, sample_weight=W)
    theirs = sk.Ridge(alpha=alpha).fit(X, Y, sample_weight=W)
    assert_same_model(ours, theirs)


@pytest.mark.parametrize("solver", ["lbfgs", "gd"])
def test_iterative_solvers_reach_the_exact_solution(solver):
    Xs = X / X.std(axis=0)  # gradient descent needs a reasonable conditioning
    exact = Ridge(alpha=1.0, n_workers=2).fit(Xs, Y)
    iterative = Ridge(alpha=1.0, solver=solver, tol=1e-9, max_iter=20_000, n_workers=2).fit(Xs, Y)
    assert iterative.solver_ == solver and iterative.n_iter_ > 1
    # s1..s4 of diabetes are nearly collinear: a gradient of 1e-9 still leaves ~1e-5 in coef.
    assert_same_model(iterative, exact, rtol=1e-4)


def test_multi_output_and_sparse():
    Y2 = np.column_stack([Y, 2 * Y + X[:, 0]])
    ours = LinearRegression(n_workers=2).fit(sp.csr_matrix(X), Y2)
    theirs = sk.LinearRegression().fit(X, Y2)
    assert ours.coef_.shape == (2, X.shape[1]) and ours.intercept_.shape == (2,)
    assert_same_model(ours, theirs)
    assert ours.predict(X).shape == (len(X), 2)
    lbfgs = Ridge(alpha=0.5, solver="lbfgs", tol=1e-8, max_iter=5000, n_workers=2).fit(X, Y2)
    assert_same_model(lbfgs, sk.Ridge(alpha=0.5).fit(X, Y2), rtol=1e-6)


def test_rank_deficient_gives_minimum_norm_solution():
    Xd = np.column_stack([X[:, :3], X[:, :3] @ [1.0, -2.0, 0.5]])  # 4th column collinear
    ours = LinearRegression(n_workers=2).fit(Xd, Y)
    theirs = sk.LinearRegression().fit(Xd, Y)
    assert_same_model(ours, theirs, rtol=1e-6)


def test_same_result_for_1_2_4_workers_and_bit_identical_repeats():
    fits = {n: Ridge(alpha=0.3, n_workers=n).fit(X, Y, sample_weight=W) for n in (1, 4, 2)}
    for n in (1, 4):
        np.testing.assert_allclose(fits[n].coef_, fits[2].coef_, rtol=1e-10)
    again = Ridge(alpha=0.3, n_workers=2).fit(X, Y, sample_weight=W)
    assert np.array_equal(again.coef_, fits[2].coef_) and again.intercept_ == fits[2].intercept_


def test_float32_input_keeps_its_dtype():
    ours = Ridge(n_workers=2).fit(X.astype(np.float32), Y.astype(np.float32))
    assert ours.coef_.dtype == np.float32 and ours.predict(X.astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(ours.coef_, sk.Ridge().fit(X, Y).coef_, rtol=1e-4)


@pytest.mark.parametrize("offset", [0.0, 1e8])  # 1e8: uncentered sums would cancel entirely
@pytest.mark.parametrize("weighted", [False, True])
def test_moments_merge_matches_numpy_and_is_stable(offset, weighted):
    rng = np.random.default_rng(1)
    data = offset + rng.standard_normal((300, 3))
    w = rng.uniform(0.5, 2.0, 300) if weighted else np.ones(300)
    parts = [partition_moments(data[a:b], w[a:b] if weighted else None) for a, b in [(0, 100), (100, 130), (130, 300)]]
    total = parts[0]
    for p in parts[1:]:
        total = combine_moments(total, p)
    weight, mean, scatter = total
    ref_mean = np.average(data, axis=0, weights=w)
    ref_scatter = ((data - ref_mean).T * w) @ (data - ref_mean)
    assert weight[0] == pytest.approx(w.sum())
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(scatter, ref_scatter, rtol=1e-7, atol=1e-5)


def test_convergence_warning():
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=2"):
        LinearRegression(solver="lbfgs", max_iter=2, n_workers=2).fit(X, Y)


@pytest.mark.parametrize(
    "estimator,match",
    [
        (Ridge(alpha=-1.0), r"^The 'alpha' parameter of Ridge must be a float in the range \[0\.0, inf\)\. "
                            r"Got -1\.0 instead\.$"),
        (Ridge(solver="cholesky"), r"^The 'solver' parameter of Ridge must be a str among \{.*'exact'.*\}\. "
                                   r"Got 'cholesky' instead\.$"),
        (LinearRegression(solver="exact", learning_rate=0.1), "learning_rate is a step of solver='gd'"),
        (LinearRegression(tol=-1), r"The 'tol' parameter of LinearRegression must be a float in the range "
                                   r"\[0\.0, inf\)\. Got -1 instead\."),
        (LinearRegression(max_iter=0), r"The 'max_iter' parameter of LinearRegression must be None or an int in "
                                       r"the range \[1, inf\)\. Got 0 instead\."),
    ],
)
def test_bad_parameters(estimator, match):
    with pytest.raises(ValueError, match=match):
        estimator.set_params(n_workers=2).fit(X, Y)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        LinearRegression(n_workers=2).fit(np.full((5, 2), np.nan), np.ones(5))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LinearRegression(n_workers=2).fit(X, Y[:-1])
    with pytest.raises(ValueError, match="features"):
        LinearRegression(n_workers=2).fit(X, Y).predict(X[:, :3])


def test_line_search_at_the_precision_limit_warns_and_stops():
    Xs = X / X.std(axis=0)
    with pytest.warns(ConvergenceWarning, match="line search found no step that lowers the loss"):
        est = Ridge(alpha=1.0, solver="gd", tol=0.0, max_iter=100_000, n_workers=2).fit(Xs, Y)
    assert est.n_iter_ < 100_000  # stopped by the line search, not by max_iter
    assert_same_model(est, Ridge(alpha=1.0, n_workers=2).fit(Xs, Y), rtol=1e-4)
