"""The minimal LogisticRegression(solver="gd") end to end through the engine."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from drizzle_ml import LogisticRegression

X, Y = load_breast_cancer(return_X_y=True)
X = StandardScaler().fit_transform(X)


def reference_gd(X, y, C, lr, iters):
    n, d = X.shape
    coef, b = np.zeros(d), 0.0
    for _ in range(iters):
        r = expit(X @ coef + b) - y
        coef, b = coef - lr * (X.T @ r / n + coef / (C * n)), b - lr * r.mean()
    return coef, b


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def fit(**kw):
    params = dict(learning_rate=0.5, max_iter=40, n_workers=2, group_size=8)
    params.update(kw)
    return LogisticRegression(**params)


def test_matches_numpy_reference_and_attributes():
    clf = fit(C=2.0).fit(X, Y)
    coef, b = reference_gd(X, Y.astype(float), 2.0, 0.5, 40)
    np.testing.assert_allclose(clf.coef_[0], coef, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(clf.intercept_[0], b, rtol=1e-10)
    assert clf.coef_.shape == (1, X.shape[1]) and clf.intercept_.shape == (1,)
    assert clf.n_iter_ == 40 and clf.model_version_ == 40
    assert len(clf.history_) == 5 and {"wall", "compute", "coordination", "overhead"} <= set(clf.history_[0])
    assert clf.model_store_.latest().version == 40
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(X, Y) > 0.95
    assert set(clf.predict(X)) <= set(clf.classes_)


def test_bsp_and_group_agree_and_repeat_bit_identically():
    a = fit().fit(X, Y)
    b = fit().fit(X, Y)
    c = fit(scheduling="bsp").fit(X, Y)
    assert np.array_equal(a.coef_, b.coef_)
    np.testing.assert_allclose(a.coef_, c.coef_, rtol=1e-12)


def test_sparse_input_and_string_labels():
    labels = np.where(Y == 1, "benign", "malignant")
    dense = fit().fit(X, labels)
    sparse = fit().fit(sp.csr_matrix(X), labels)
    np.testing.assert_allclose(dense.coef_, sparse.coef_, rtol=1e-10)
    assert set(dense.predict(X[:20])) <= {"benign", "malignant"}


def test_sample_weight_equals_repetition():
    w = np.ones(len(Y))
    w[:50] = 2.0
    weighted = fit().fit(X, Y, sample_weight=w)
    repeated = fit().fit(np.vstack([X, X[:50]]), np.concatenate([Y, Y[:50]]))
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-8)


def test_convergence_warning_and_early_stop():
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=3"):
        LogisticRegression(learning_rate=0.5, max_iter=3, n_workers=2).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = LogisticRegression(learning_rate=0.5, max_iter=5000, tol=1e-2, n_workers=2, group_size=50).fit(X, Y)
    assert clf.n_iter_ < 5000


@pytest.mark.parametrize(
    "X_bad,y_bad,match",
    [
        (np.full((10, 3), np.nan), np.arange(10) % 2, "NaN"),
        (np.full((10, 3), np.inf), np.arange(10) % 2, "infinity"),
        (np.ones((10, 3)), np.arange(9) % 2, "inconsistent numbers of samples"),
        (np.ones(10), np.arange(10) % 2, "Expected 2D array"),
        (np.ones((0, 3)), np.array([]), "0 sample"),
        (np.ones((10, 3)), np.zeros(10), "at least 2 classes"),
        (np.ones((10, 3)), np.arange(10) % 3, "binary"),
        (np.ones((10, 3)), np.linspace(0, 1, 10), "Unknown label type"),
    ],
)
def test_bad_input_is_a_clear_value_error(X_bad, y_bad, match):
    with pytest.raises(ValueError, match=match):
        LogisticRegression(n_workers=2).fit(X_bad, y_bad)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"group_size": 0}, "group_size"),
        ({"scheduling": "spark"}, "scheduling"),
        ({"n_workers": 0}, "n_workers"),
        ({"C": -1}, "C must be positive"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"max_iter": 0}, "max_iter"),
        ({"solver": "newton"}, "solver"),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        LogisticRegression(**params).fit(X, Y)


def test_fewer_samples_than_workers():
    with pytest.raises(ValueError, match="got 2 samples, fewer than the 3 workers"):
        LogisticRegression(n_workers=3).fit(X[:2], [0, 1])


def test_predict_checks_features():
    clf = fit().fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :5])


def test_divergence_is_reported():
    with pytest.raises(Exception, match="diverged"):
        fit(learning_rate=1e6, max_iter=200).fit(X * 1e3, Y)


def test_predict_before_fit_is_not_fitted_error():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LogisticRegression().predict(X)
