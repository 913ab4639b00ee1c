"""LogisticRegression (binary and multinomial, L-BFGS and gradient descent) against scikit-learn."""

import itertools
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import expit
from sklearn import datasets
from sklearn import linear_model as sk
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from drizzle_ml import LogisticRegression


def standardized(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


BREAST = standardized(datasets.load_breast_cancer)
WINE = standardized(datasets.load_wine)
DIGITS = standardized(datasets.load_digits)
X, Y = BREAST


def objective(clf, X, y, C, sample_weight=None):
    """scikit-learn's objective divided by C * sum(w): mean log-loss + ||coef||² / (2 C sum(w))."""
    sw_sum = len(y) if sample_weight is None else np.sum(sample_weight)
    penalty = 0.0 if np.isinf(C) else 0.5 * np.sum(clf.coef_.astype(float) ** 2) / (C * sw_sum)
    return log_loss(y, clf.predict_proba(X), sample_weight=sample_weight) + penalty


@pytest.mark.parametrize("data", ["breast_cancer", "wine", "digits"])
@pytest.mark.parametrize("C", [1.0, 0.05])
def test_lbfgs_reaches_sklearn_optimum(data, C):
    X, y = {"breast_cancer": BREAST, "wine": WINE, "digits": DIGITS}[data]
    optimum = sk.LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = LogisticRegression(C=C, tol=1e-6, max_iter=1000, n_workers=2).fit(X, y)
    f_opt, f_ours = objective(optimum, X, y, C), objective(ours, X, y, C)
    assert f_ours <= f_opt * (1 + 1e-6), (f_ours, f_opt)
    assert np.mean(ours.predict(X) == optimum.predict(X)) >= 0.995
    n_classes = len(np.unique(y))
    assert ours.coef_.shape == ((1 if n_classes == 2 else n_classes), X.shape[1])
    assert ours.intercept_.shape == ((1 if n_classes == 2 else n_classes),)
    np.testing.assert_allclose(ours.predict_proba(X), optimum.predict_proba(X), atol=1e-3)


def test_default_fit_matches_sklearn_default_fit():
    ours = LogisticRegression(n_workers=2).fit(*DIGITS)
    theirs = sk.LogisticRegression().fit(*DIGITS)
    assert np.mean(ours.predict(DIGITS[0]) == theirs.predict(DIGITS[0])) >= 0.995
    rel = abs(objective(ours, *DIGITS, 1.0) / objective(theirs, *DIGITS, 1.0) - 1)
    assert rel < 1e-3  # both stop at tol=1e-4 on the gradient, at slightly different points


def test_no_penalty_matches_sklearn():
    Xs, ys = datasets.make_classification(300, 5, n_informative=3, flip_y=0.2, random_state=0)
    ours = LogisticRegression(C=np.inf, tol=1e-8, n_workers=2).fit(Xs, ys)
    theirs = sk.LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(Xs, ys)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-5)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-5, atol=1e-7)


def test_same_result_for_1_2_4_workers_and_bit_identical_repeats():
    fits = {n: LogisticRegression(n_workers=n, tol=1e-6, max_iter=500).fit(*WINE) for n in (1, 2, 4)}
    for n in (1, 4):
        np.testing.assert_allclose(fits[n].coef_, fits[2].coef_, rtol=1e-8, atol=1e-10)
        assert np.array_equal(fits[n].predict(WINE[0]), fits[2].predict(WINE[0]))
    again = LogisticRegression(n_workers=2, tol=1e-6, max_iter=500).fit(*WINE)
    assert np.array_equal(again.coef_, fits[2].coef_)
    assert np.array_equal(again.intercept_, fits[2].intercept_)


def reference_gd(X, y, C, lr, iters):
    n, d = X.shape
    coef, b = np.zeros(d), 0.0
    for _ in range(iters):
        r = expit(X @ coef + b) - y
        coef, b = coef - lr * (X.T @ r / n + coef / (C * n)), b - lr * r.mean()
    return coef, b


def test_fixed_step_gd_matches_numpy_reference_and_engine_attributes():
    clf = LogisticRegression(solver="gd", learning_rate=0.5, C=2.0, max_iter=40, tol=0.0,
                             n_workers=2, group_size=8)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, Y)
    coef, b = reference_gd(X, Y.astype(float), 2.0, 0.5, 40)
    # The engine returns the last evaluated point: the reference after 39 steps.
    coef39, b39 = reference_gd(X, Y.astype(float), 2.0, 0.5, 39)
    np.testing.assert_allclose(clf.coef_[0], coef39, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(clf.intercept_[0], b39, rtol=1e-10)
    assert clf.n_iter_ == 40 and clf.model_version_ == 40
    assert len(clf.history_) == 5 and {"wall", "compute", "coordination", "overhead"} <= set(clf.history_[0])
    assert clf.model_store_.latest().version == 40
    np.testing.assert_allclose(clf.model_store_.latest().model["w"][:-1], coef, rtol=1e-10, atol=1e-12)


def test_the_first_groups_wall_holds_its_execution():
    # The workers set a job up from its start, before its first group is sent; the first
    # group's wall runs from the job's start and leaves out only the quickest worker's
    # set-up, so no worker's execution is longer than it.
    Xs, ys = datasets.load_breast_cancer(return_X_y=True)
    Xs = StandardScaler().fit_transform(Xs)
    for _ in range(4):
        first = LogisticRegression(n_workers=2).fit(Xs, ys).history_[0]
        assert first["wall"] >= first["execution"] > 0, first


def test_fixed_step_gd_reports_the_loss_of_every_tenth_iteration():
    # A fixed step needs the loss only for the report: it is evaluated at iterations
    # 0, 9, 19, ... and each group reports the newest evaluated by its end, exactly.
    from scipy.special import log_expit

    def objective(c, b0):
        z = X @ c + b0
        return (np.sum((1.0 - Y) * z - log_expit(z)) + 0.5 * c @ c / 2.0) / len(Y)

    clf = LogisticRegression(solver="gd", learning_rate=0.5, C=2.0, max_iter=24, tol=0.0,
                             n_workers=2, group_size=4)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, Y)
    ends = [g["start_iteration"] + g["n_iterations"] - 1 for g in clf.history_]
    assert ends == [3, 7, 11, 15, 19, 23]
    evaluated = [0, 0, 9, 9, 19, 19]
    expected = [objective(*reference_gd(X, Y.astype(float), 2.0, 0.5, it)) for it in evaluated]
    np.testing.assert_allclose([g["metrics"]["loss"] for g in clf.history_], expected, rtol=1e-12)


def test_gd_with_line_search_converges_to_lbfgs_solution():
    gd = LogisticRegression(solver="gd", tol=1e-5, max_iter=5000, n_workers=2).fit(X, Y)
    lbfgs = LogisticRegression(tol=1e-8, n_workers=2).fit(X, Y)
    assert objective(gd, X, Y, 1.0) <= objective(lbfgs, X, Y, 1.0) * (1 + 1e-5)
    assert gd.n_iter_ > lbfgs.n_iter_


def test_bsp_and_group_agree():
    a = LogisticRegression(n_workers=2, group_size=4).fit(*WINE)
    c = LogisticRegression(n_workers=2, scheduling="bsp").fit(*WINE)
    np.testing.assert_allclose(a.coef_, c.coef_, rtol=1e-12)


def test_sparse_float32_and_string_labels():
    labels = np.array(["benign", "malignant"])[Y]
    dense = LogisticRegression(n_workers=2, tol=1e-6).fit(X, labels)
    sparse = LogisticRegression(n_workers=2, tol=1e-6).fit(sp.csr_matrix(X), labels)
    np.testing.assert_allclose(dense.coef_, sparse.coef_, rtol=1e-7, atol=1e-9)
    assert set(dense.predict(X[:20])) <= {"benign", "malignant"}
    single = LogisticRegression(n_workers=2, tol=1e-4).fit(X.astype(np.float32), labels)
    assert single.coef_.dtype == np.float32
    assert np.mean(single.predict(X) == dense.predict(X)) >= 0.99


def test_sample_weight_equals_repetition():
    w = np.ones(len(Y))
    w[:50] = 2.0
    w[50:60] = 0.0
    keep = w > 0
    weighted = LogisticRegression(tol=1e-10, n_workers=2).fit(X, Y, sample_weight=w)
    repeated = LogisticRegression(tol=1e-10, n_workers=2).fit(
        np.vstack([X[keep], X[:50]]), np.concatenate([Y[keep], Y[:50]]))
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-6)
    ref = sk.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, Y, sample_weight=w)
    np.testing.assert_allclose(weighted.coef_, ref.coef_, rtol=1e-5, atol=1e-6)


def test_convergence_warning_and_early_stop():
    with pytest.warns(ConvergenceWarning, match="did not converge in max_iter=3"):
        LogisticRegression(max_iter=3, n_workers=2).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = LogisticRegression(max_iter=1000, n_workers=2).fit(X, Y)
    assert clf.n_iter_ < 100


def test_predictions_are_consistent():
    clf = LogisticRegression(n_workers=2).fit(*DIGITS)
    proba = clf.predict_proba(DIGITS[0])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(DIGITS[0]))
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(DIGITS[0][:5])), proba[:5])
    assert clf.decision_function(DIGITS[0]).shape == (len(DIGITS[0]), 10)
    binary = LogisticRegression(n_workers=2).fit(X, Y)
    assert np.array_equal(binary.decision_function(X) > 0, binary.predict(X) == 1)


@pytest.mark.parametrize(
    "X_bad,y_bad,match",
    [
        (np.full((10, 3), np.nan), np.arange(10) % 2, "NaN"),
        (np.full((10, 3), np.inf), np.arange(10) % 2, "infinity"),
        (np.ones((10, 3)), np.arange(9) % 2, "inconsistent numbers of samples"),
        (np.ones(10), np.arange(10) % 2, "Expected 2D array"),
        (np.ones((0, 3)), np.array([]), "0 sample"),
        (np.ones((10, 3)), np.zeros(10), "at least 2 classes"),
        (np.ones((10, 3)), np.linspace(0, 1, 10), "Unknown label type"),
    ],
)
def test_bad_input_is_a_clear_value_error(X_bad, y_bad, match):
    with pytest.raises(ValueError, match=match):
        LogisticRegression(n_workers=2).fit(X_bad, y_bad)


def test_bad_sample_weight():
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(569,\)"):
        LogisticRegression(n_workers=2).fit(X, Y, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        LogisticRegression(n_workers=2).fit(X, Y, sample_weight=-np.ones(len(Y)))
    with pytest.raises(ValueError, match="sums to zero"):
        LogisticRegression(n_workers=2).fit(X, Y, sample_weight=np.zeros(len(Y)))


@pytest.mark.parametrize(
    "params,match",
    [
        ({"group_size": 0}, "group_size"),
        ({"scheduling": "spark"}, "scheduling"),
        ({"n_workers": 0}, "n_workers"),
        ({"C": -1}, r"The 'C' parameter of LogisticRegression must be a float in the range \(0\.0, inf\]\. "
                    r"Got -1 instead\."),
        ({"solver": "gd", "learning_rate": 0}, r"The 'learning_rate' parameter of LogisticRegression must be None "
                                               r"or a float in the range \(0\.0, inf\)\. Got 0 instead\."),
        ({"learning_rate": 0.1}, "learning_rate is a step of solver='gd'"),
        ({"max_iter": 0}, "max_iter"),
        ({"solver": "newton"}, r"The 'solver' parameter of LogisticRegression must be a str among \{.*\}\. "
                               r"Got 'newton' instead\."),
    ],
)
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        LogisticRegression(**params).fit(X, Y)


def test_fewer_samples_than_workers():
    with pytest.raises(ValueError, match="got 2 samples, fewer than the 3 workers"):
        LogisticRegression(n_workers=3).fit(X[:2], [0, 1])


def test_predict_checks_features():
    clf = LogisticRegression(n_workers=2).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :5])


def test_divergence_is_reported():
    with pytest.raises(Exception, match="lower learning_rate"):
        LogisticRegression(solver="gd", learning_rate=1e6, max_iter=200, n_workers=2).fit(X * 1e3, Y)


def test_predict_before_fit_is_not_fitted_error():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        LogisticRegression().predict(X)


def test_binomial_loss_and_gradient_at_extreme_scores_match_scipy():
    # The loss is computed as (1 - y) z - log(expit(z)) (one log); it must agree with the
    # textbook log(1 + e^z) - y z everywhere, including where expit underflows to 0.
    from scipy.special import expit, log_expit

    from drizzle_ml.algorithms.losses import LinearLoss

    z = np.concatenate([np.linspace(-800.0, 800.0, 2001), [-745.2, -746.0, -1e4, 36.0, 37.0, 1e4]])
    y = (np.arange(z.size) % 2).astype(float)
    sw = np.linspace(0.5, 2.0, z.size)
    loss_fn = LinearLoss("binomial", 1, 1, fit_intercept=True)
    for dense, weights in itertools.product((True, False), (sw, None)):
        X = z[:, None] if dense else sp.csr_matrix(z[:, None])
        grad, (loss, weight) = loss_fn.evaluate(np.array([1.0, 0.0]), X, y, weights)
        w = np.ones_like(z) if weights is None else weights
        expected = w * (-log_expit(z) + (1.0 - y) * z)
        assert np.isfinite(loss)
        np.testing.assert_allclose(loss, expected.sum(), rtol=1e-14)
        r = w * (expit(z) - y)
        np.testing.assert_allclose(grad, [r @ z, r.sum()], rtol=1e-12)
        assert weight == w.sum()
        # Without the loss (fixed-step gradient descent between reports): same gradient, loss NaN.
        grad_only, (no_loss, weight) = loss_fn.evaluate(np.array([1.0, 0.0]), X, y, weights, with_loss=False)
        np.testing.assert_array_equal(grad_only, grad)
        assert np.isnan(no_loss) and weight == w.sum()


@pytest.mark.parametrize("kind", ["binomial", "multinomial", "squared"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_sums_equal_numpys_and_one_blocks(kind, dtype, monkeypatch):
    # A partition larger than a block is summed block after block, in float64 whatever X's
    # dtype; the sums must equal the textbook formula and the one-block evaluation.
    from scipy.special import expit, softmax

    from drizzle_ml.algorithms import losses

    rng = np.random.default_rng(7)
    n, d, m = 1000, 5, 3 if kind == "multinomial" else 1
    X = rng.standard_normal((n, d)).astype(dtype)
    y = {"binomial": (rng.random(n) < 0.5).astype(dtype), "multinomial": rng.integers(0, m, n),
         "squared": rng.standard_normal(n)}[kind]
    sw = rng.uniform(0.5, 2.0, n)
    loss_fn = losses.LinearLoss(kind, d, m)
    w = rng.standard_normal(loss_fn.n_params) * 0.3
    coef, intercept = w[: d * m].reshape(m, d), w[d * m :]
    z = X.astype(np.float64) @ coef.T + intercept
    if kind == "binomial":
        resid = (expit(z[:, 0]) - y)[:, None]
        loss = np.logaddexp(0.0, z[:, 0]) - y * z[:, 0]
    elif kind == "multinomial":
        resid = softmax(z, axis=1)
        resid[np.arange(n), y] -= 1.0
        loss = np.logaddexp.reduce(z, axis=1) - z[np.arange(n), y]
    else:
        resid = z - y[:, None]
        loss = 0.5 * resid[:, 0] ** 2
    expected = np.r_[((resid * sw[:, None]).T @ X.astype(np.float64)).ravel(), (resid * sw[:, None]).sum(axis=0)]
    whole = loss_fn.evaluate(w, X, y, sw)
    monkeypatch.setattr(losses, "_BLOCK_BYTES", 1)  # blocks of 256 rows: four of them
    blocked = loss_fn.evaluate(w, X, y, sw)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for grad, (loss_sum, weight) in (whole, blocked):
        assert grad.dtype == np.float64 and grad.shape == (loss_fn.n_params,)
        np.testing.assert_allclose(grad, expected, rtol=rtol, atol=rtol * n)
        np.testing.assert_allclose(loss_sum, sw @ loss, rtol=rtol)
        assert weight == pytest.approx(sw.sum(), rel=1e-15)
    np.testing.assert_allclose(blocked[0], whole[0], rtol=rtol, atol=rtol * n)


def test_bsp_keeps_every_stored_version_of_the_lbfgs_memory():
    # L-BFGS reuses its memory (S, Y) in place when the arrays are its own; in BSP mode the
    # driver's store holds every version, so update must get them read-only and copy.
    X, y = datasets.make_classification(200, 6, random_state=3)
    est = LogisticRegression(tol=1e-12, max_iter=12, n_workers=2, scheduling="bsp").fit(X, y)
    store = est.model_store_
    old, new = store.get(store.versions()[0] + 4).model["S"], store.latest().model["S"]
    assert not old.flags.writeable and not np.array_equal(old, new)
