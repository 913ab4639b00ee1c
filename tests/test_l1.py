"""L1 and elastic-net penalties: Lasso, ElasticNet and LogisticRegression(penalty=...) against scikit-learn.

Batch fits run OWL-QN (``algorithms/optim.py``: ``OrthantWise``), online ones
FTRL-proximal (``algorithms/online.py``: ``OnlineFTRL``). The targets: the
objective at our model within 1e-6 relative of scikit-learn's optimum, and
every coefficient scikit-learn's solution zeroes exactly zero in ours.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import log_softmax
from sklearn import datasets
from sklearn import linear_model as sk
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

import drizzle_ml as dm
from drizzle_ml.algorithms.optim import orthant, project_orthant, pseudo_gradient
from drizzle_ml.datasets import load_default

REG_X, REG_Y, _ = load_default("regression")  # diabetes, standardized
CLS_X, CLS_Y, _ = load_default("classification")  # breast cancer, standardized
WINE_X, WINE_Y = datasets.load_wine(return_X_y=True)
WINE_X = StandardScaler().fit_transform(WINE_X)


def _sparse_problem():
    """400 x 120 CSR, 5 % dense, 10 informative columns: a regression and a classification target."""
    rng = np.random.default_rng(0)
    X = sp.random(400, 120, density=0.05, format="csr", random_state=1) * 3.0
    w = np.zeros(120)
    w[:10] = 3.0 * rng.standard_normal(10)
    y = X @ w + 0.1 * rng.standard_normal(400)
    labels = (X @ w + 0.5 * rng.standard_normal(400) > 0).astype(int)
    return X, y, labels


SPARSE_X, SPARSE_Y, SPARSE_LABELS = _sparse_problem()


def enet_objective(coef, intercept, X, y, alpha, l1_ratio):
    """scikit-learn's ElasticNet (and Lasso, l1_ratio=1) objective."""
    r = y - X @ coef - intercept
    return (r @ r / (2 * len(y)) + alpha * l1_ratio * np.abs(coef).sum()
            + 0.5 * alpha * (1 - l1_ratio) * coef @ coef)


def logistic_objective(coef, intercept, X, y, C, l1_ratio):
    """scikit-learn's: ``C * sum(logloss) + (1 - l1_ratio) ||coef||² / 2 + l1_ratio ||coef||₁``."""
    coef = np.atleast_2d(coef)
    z = np.asarray(X @ coef.T) + intercept
    if coef.shape[0] == 1:  # binary: the positive class is classes_[1]
        z = np.column_stack([np.zeros(len(y)), z[:, 0]])
    loss = -log_softmax(z, axis=1)[np.arange(len(y)), y].sum()
    return C * loss + 0.5 * (1 - l1_ratio) * np.sum(coef * coef) + l1_ratio * np.abs(coef).sum()


def assert_same_zeros(ours, theirs):
    """Every coefficient scikit-learn zeroes is exactly zero in ours, and no other."""
    assert np.array_equal(np.asarray(ours) == 0, np.asarray(theirs) == 0), (ours, theirs)


# -- pseudo-gradient and orthants (no cluster) ------------------------------------------------------
def test_pseudo_gradient_orthant_and_projection():
    x = np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
    g = np.array([0.5, 0.5, -2.0, 2.0, 0.5, 3.0])
    lam = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # the last one unpenalized (an intercept)
    pg = pseudo_gradient(x, g, lam)
    # x > 0: g + lam; x < 0: g - lam; at 0: the decreasing one-sided derivative, else 0; unpenalized: g.
    np.testing.assert_array_equal(pg, [1.5, -0.5, -1.0, 1.0, 0.0, 3.0])
    xi = orthant(x, pg)
    np.testing.assert_array_equal(xi[:5], [1.0, -1.0, 1.0, -1.0, 0.0])
    w = np.array([-0.1, -2.0, 0.3, 0.3, 0.2, -5.0])
    np.testing.assert_array_equal(project_orthant(w, xi, lam), [0.0, -2.0, 0.3, 0.0, 0.0, -5.0])


# -- batch fits (OWL-QN) against scikit-learn's optimum --------------------------------------------
@pytest.mark.parametrize("alpha,l1_ratio", [(1.0, 1.0), (0.1, 1.0), (0.5, 0.5), (5.0, 0.7), (0.05, 0.2)])
def test_elastic_net_and_lasso_reach_sklearn_optimum_on_diabetes(alpha, l1_ratio):
    X, y = REG_X, REG_Y
    if l1_ratio == 1.0:
        ours = dm.Lasso(alpha=alpha, tol=1e-10, max_iter=5000, n_workers=2).fit(X, y)
        ref = sk.Lasso(alpha=alpha, tol=1e-12, max_iter=100_000).fit(X, y)
    else:
        ours = dm.ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-10, max_iter=5000, n_workers=2).fit(X, y)
        ref = sk.ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-12, max_iter=100_000).fit(X, y)
    f_ours = enet_objective(ours.coef_, ours.intercept_, X, y, alpha, l1_ratio)
    f_ref = enet_objective(ref.coef_, ref.intercept_, X, y, alpha, l1_ratio)
    assert f_ours <= f_ref * (1 + 1e-6), (f_ours, f_ref, f_ours / f_ref - 1)
    assert_same_zeros(ours.coef_, ref.coef_)
    assert ours.coef_.shape == (X.shape[1],) and isinstance(ours.intercept_, float)
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-5)


def test_lasso_on_sparse_csr_and_multi_target_and_weights():
    ours = dm.Lasso(alpha=0.01, tol=1e-10, max_iter=5000, n_workers=2).fit(SPARSE_X, SPARSE_Y)
    ref = sk.Lasso(alpha=0.01, tol=1e-12, max_iter=100_000).fit(SPARSE_X, SPARSE_Y)
    f_ours = enet_objective(ours.coef_, ours.intercept_, SPARSE_X, SPARSE_Y, 0.01, 1.0)
    f_ref = enet_objective(ref.coef_, ref.intercept_, SPARSE_X, SPARSE_Y, 0.01, 1.0)
    assert f_ours <= f_ref * (1 + 1e-6), (f_ours, f_ref, f_ours / f_ref - 1)
    assert_same_zeros(ours.coef_, ref.coef_)
    assert np.count_nonzero(ours.coef_) <= 20  # sparse: most of the 120 columns are out
    # Two targets: coef_ (2, d), one penalty over both (as scikit-learn's ElasticNet with 2-D y).
    Y = np.column_stack([REG_Y, np.sqrt(REG_Y)])
    two = dm.ElasticNet(alpha=0.3, l1_ratio=0.8, tol=1e-10, max_iter=5000, n_workers=2).fit(REG_X, Y)
    ref2 = sk.ElasticNet(alpha=0.3, l1_ratio=0.8, tol=1e-12, max_iter=100_000).fit(REG_X, Y)
    assert two.coef_.shape == (2, REG_X.shape[1]) and two.intercept_.shape == (2,)
    np.testing.assert_allclose(two.coef_, ref2.coef_, rtol=1e-5, atol=1e-6)
    assert_same_zeros(two.coef_, ref2.coef_)
    # Weights: scikit-learn rescales them to sum to n; the objective is the weighted mean's.
    sw = np.random.default_rng(2).uniform(0.2, 3.0, len(REG_Y))
    weighted = dm.Lasso(alpha=0.2, tol=1e-10, max_iter=5000, n_workers=2).fit(REG_X, REG_Y, sample_weight=sw)
    ref3 = sk.Lasso(alpha=0.2, tol=1e-12, max_iter=100_000).fit(REG_X, REG_Y, sample_weight=sw)
    f_ours, f_ref = (weighted_lasso_objective(m, sw, 0.2) for m in (weighted, ref3))
    assert f_ours <= f_ref * (1 + 1e-6), (f_ours, f_ref, f_ours / f_ref - 1)
    assert_same_zeros(weighted.coef_, ref3.coef_)


def weighted_lasso_objective(model, sw, alpha):
    r = REG_Y - REG_X @ model.coef_ - model.intercept_
    return sw @ (r * r) / (2 * sw.sum()) + alpha * np.abs(model.coef_).sum()


@pytest.mark.parametrize("data,C,l1_ratio", [
    ("breast_cancer", 0.1, 1.0),
    ("breast_cancer", 1.0, 0.5),
    ("wine", 0.5, 1.0),  # multinomial
    ("sparse", 1.0, 1.0),
])
def test_logistic_l1_and_elasticnet_reach_sklearn_optimum(data, C, l1_ratio):
    X, y = {"breast_cancer": (CLS_X, CLS_Y), "wine": (WINE_X, WINE_Y), "sparse": (SPARSE_X, SPARSE_LABELS)}[data]
    penalty = {"penalty": "l1"} if l1_ratio == 1.0 else {"penalty": "elasticnet", "l1_ratio": l1_ratio}
    ours = dm.LogisticRegression(C=C, **penalty, tol=1e-10, max_iter=5000, n_workers=2).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn >= 1.8 takes l1_ratio alone
        ref = sk.LogisticRegression(solver="saga", C=C, l1_ratio=l1_ratio, tol=1e-12, max_iter=100_000).fit(X, y)
    f_ours = logistic_objective(ours.coef_, ours.intercept_, X, y, C, l1_ratio)
    f_ref = logistic_objective(ref.coef_, ref.intercept_, X, y, C, l1_ratio)
    assert f_ours <= f_ref * (1 + 1e-6), (f_ours, f_ref, f_ours / f_ref - 1)
    assert_same_zeros(ours.coef_, ref.coef_)
    assert np.mean(ours.predict(X) == ref.predict(X)) >= 0.99


def test_l2_paths_are_unchanged():
    # penalty="l2" is the default; elasticnet with l1_ratio=0 has no L1 term: both run the plain
    # L-BFGS of before, bit for bit, online too.
    default = dm.LogisticRegression(n_workers=2).fit(CLS_X, CLS_Y)
    for params in ({"penalty": "l2"}, {"penalty": "elasticnet", "l1_ratio": 0.0}):
        other = dm.LogisticRegression(n_workers=2, **params).fit(CLS_X, CLS_Y)
        assert np.array_equal(other.coef_, default.coef_) and np.array_equal(other.intercept_, default.intercept_)
        assert other.n_iter_ == default.n_iter_
    none = dm.LogisticRegression(penalty=None, tol=1e-8, n_workers=2).fit(CLS_X[:, :5], CLS_Y)
    inf = dm.LogisticRegression(C=np.inf, tol=1e-8, n_workers=2).fit(CLS_X[:, :5], CLS_Y)
    assert np.array_equal(none.coef_, inf.coef_)
    sgd = dm.LogisticRegression(n_workers=2).partial_fit(CLS_X, CLS_Y, classes=[0, 1])
    assert "z" not in sgd._online_model_  # the SGD step, not FTRL


# -- workers, repeats, resume ----------------------------------------------------------------------
def test_same_model_for_1_2_3_5_workers_and_bit_identical_repeats():
    fits = {}
    for n in (1, 2, 3, 5):
        lasso = dm.Lasso(alpha=0.5, tol=1e-10, max_iter=5000, n_workers=n).fit(REG_X, REG_Y)
        logit = dm.LogisticRegression(penalty="l1", C=0.1, tol=1e-10, max_iter=5000, n_workers=n).fit(CLS_X, CLS_Y)
        again = dm.Lasso(alpha=0.5, tol=1e-10, max_iter=5000, n_workers=n).fit(REG_X, REG_Y)
        assert np.array_equal(again.coef_, lasso.coef_) and again.intercept_ == lasso.intercept_
        logit_again = dm.LogisticRegression(penalty="l1", C=0.1, tol=1e-10, max_iter=5000,
                                            n_workers=n).fit(CLS_X, CLS_Y)
        assert np.array_equal(logit_again.coef_, logit.coef_)
        fits[n] = lasso, logit
    for n in (1, 3, 5):
        for ours, base in zip(fits[n], fits[2]):
            np.testing.assert_allclose(ours.coef_, base.coef_, rtol=1e-6, atol=1e-8)
            assert_same_zeros(ours.coef_, base.coef_)


def test_resume_continues_bit_identically(tmp_path):
    full = dm.Lasso(alpha=0.1, tol=1e-10, max_iter=5000, n_workers=2, group_size=5).fit(REG_X, REG_Y)
    with pytest.warns(ConvergenceWarning):
        dm.Lasso(alpha=0.1, tol=1e-10, max_iter=15, n_workers=2, group_size=5,
                 checkpoint_dir=tmp_path).fit(REG_X, REG_Y)
    resumed = dm.Lasso(alpha=0.1, tol=1e-10, max_iter=5000, n_workers=2, group_size=5,
                       checkpoint_dir=tmp_path).fit(REG_X, REG_Y, resume=True)
    assert resumed.history_[0]["start_iteration"] == 15
    assert np.array_equal(resumed.coef_, full.coef_) and resumed.n_iter_ == full.n_iter_


# -- online: FTRL-proximal ----------------------------------------------------------------------------
def test_lasso_partial_fit_by_ftrl_approaches_the_batch_optimum():
    X, y = REG_X, REG_Y
    batch = dm.Lasso(alpha=1.0, tol=1e-10, n_workers=2).fit(X, y)

    def epochs(est, n):
        for _ in range(n):
            for lo in range(0, len(y), 50):
                est.partial_fit(X[lo:lo + 50], y[lo:lo + 50])
        return est

    online = epochs(dm.Lasso(alpha=1.0, eta0=20.0, n_workers=2), 30)
    f_batch = enet_objective(batch.coef_, batch.intercept_, X, y, 1.0, 1.0)
    f_online = enet_objective(online.coef_, online.intercept_, X, y, 1.0, 1.0)
    assert f_online <= 1.01 * f_batch, (f_online, f_batch)
    assert_same_zeros(online.coef_, batch.coef_)  # FTRL's zeros are exact too
    assert online.model_version_ == 30 * 9 and online.at_version().model_version_ == online.model_version_
    again = epochs(dm.Lasso(alpha=1.0, eta0=20.0, n_workers=2), 30)
    assert np.array_equal(again.coef_, online.coef_)
    # After a fit, partial_fit continues from the fitted coefficients (with fresh per-coordinate
    # statistics: the first micro-batches move them by up to about eta0) and stays near the optimum.
    version = batch.model_version_
    epochs(batch.set_params(eta0=20.0), 10)
    assert batch.model_version_ == version + 90
    assert enet_objective(batch.coef_, batch.intercept_, X, y, 1.0, 1.0) <= 1.01 * f_batch


def test_logistic_l1_partial_fit_and_stream_learn_sparse_models():
    X, y = CLS_X, CLS_Y
    # The L1 strength 1 / C counts once over every record seen (as OnlineLinear's L2 term): one pass.
    est = dm.LogisticRegression(penalty="l1", C=0.05, eta0=0.5, n_workers=2)
    for lo in range(0, len(y), 50):
        est.partial_fit(X[lo:lo + 50], y[lo:lo + 50], classes=[0, 1])
    batch = dm.LogisticRegression(penalty="l1", C=0.05, n_workers=2).fit(X, y)
    assert "z" in est._online_model_ and np.count_nonzero(est.coef_ == 0) >= 5  # 25 in the batch optimum
    assert est.score(X, y) >= batch.score(X, y) - 0.03
    net = dm.ElasticNet(alpha=0.5, l1_ratio=0.7, eta0=20.0, n_workers=2)
    dm.stream_fit(net, dm.IterableSource(list(zip(REG_X, REG_Y)) * 10), max_batch=50, batch_interval=None)
    assert net.records_seen_ == 4420 and net.score(REG_X, REG_Y) > 0.45
    ref = sk.ElasticNet(alpha=0.5, l1_ratio=0.7).fit(REG_X, REG_Y)
    assert net.score(REG_X, REG_Y) >= ref.score(REG_X, REG_Y) - 0.02


# -- parameters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,match", [
    (lambda: dm.ElasticNet(l1_ratio=2), r"The 'l1_ratio' parameter of ElasticNet must be a float in the range "
                                        r"\[0\.0, 1\.0\]\. Got 2 instead\."),
    (lambda: dm.ElasticNet(alpha=-1), r"The 'alpha' parameter of ElasticNet must be a float in the range "
                                      r"\[0\.0, inf\)\. Got -1 instead\."),
    (lambda: dm.Lasso(max_iter=0), r"The 'max_iter' parameter of Lasso must be an int in the range \[1, inf\)\. "
                                   r"Got 0 instead\."),
    (lambda: dm.LogisticRegression(penalty="elasticnet", l1_ratio=-0.5),
     r"The 'l1_ratio' parameter of LogisticRegression must be a float in the range \[0\.0, 1\.0\] or None\. "
     r"Got -0\.5 instead\."),
    (lambda: dm.LogisticRegression(penalty="l3"),
     r"The 'penalty' parameter of LogisticRegression must be a str among \{.*\} or None\. Got 'l3' instead\."),
    (lambda: dm.LogisticRegression(penalty="elasticnet"), r"^l1_ratio must be specified when penalty is elasticnet\.$"),
    (lambda: dm.LogisticRegression(penalty="l1", solver="gd"),
     r"penalty='l1' needs solver='lbfgs' \(OWL-QN\); solver='gd' supports only 'l2' or None penalties"),
])
def test_bad_parameters(make, match):
    from sklearn.utils._param_validation import InvalidParameterError

    est = make()
    X, y = (CLS_X, CLS_Y) if isinstance(est, dm.LogisticRegression) else (REG_X, REG_Y)
    with pytest.raises(ValueError, match=match) as caught:
        est.fit(X, y)
    if "parameter of" in match:
        assert isinstance(caught.value, InvalidParameterError)


def test_l1_ratio_outside_elasticnet_warns_as_sklearn():
    with pytest.warns(UserWarning, match=r"l1_ratio parameter is only used when penalty is 'elasticnet'\. "
                                         r"Got \(penalty=l1\)"):
        dm.LogisticRegression(penalty="l1", l1_ratio=0.5, C=0.1, n_workers=2).fit(CLS_X, CLS_Y)
    with pytest.warns(UserWarning, match="Setting penalty=None will ignore the C and l1_ratio parameters"):
        dm.LogisticRegression(penalty=None, C=0.5, n_workers=2).fit(CLS_X[:, :3], CLS_Y)
    assert dm.Lasso().get_params()["alpha"] == 1.0 and "l1_ratio" not in dm.Lasso().get_params()
    assert dm.ElasticNet().get_params()["l1_ratio"] == 0.5


# -- model files and the command line ------------------------------------------------------------------
def test_cli_trains_lasso_and_elasticnet_saves_and_predicts(tmp_path):
    import subprocess
    import sys

    from drizzle_ml.algorithms.persist import load_model

    from .conftest import run_cli

    model, out = tmp_path / "lasso.h5", tmp_path / "pred.npy"
    proc = subprocess.run([sys.executable, "-m", "drizzle_ml", "train", "--algorithm", "lasso", "--alpha", "0.5",
                           "--tol", "1e-10", "--workers", "2", "-o", str(model), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lasso on diabetes (442 x 10, standardized) with 2 workers" in proc.stdout
    loaded = load_model(model)
    ref = sk.Lasso(alpha=0.5, tol=1e-12, max_iter=100_000).fit(REG_X, REG_Y)
    assert type(loaded) is dm.Lasso and loaded.alpha == 0.5
    assert_same_zeros(loaded.coef_, ref.coef_)
    np.testing.assert_allclose(loaded.coef_, ref.coef_, rtol=1e-5, atol=1e-6)
    import h5py

    data = tmp_path / "data.h5"
    with h5py.File(data, "w") as f:
        f["X"] = REG_X
    predict = run_cli("predict", "--model", str(model), "--data", str(data), "-o", str(out))
    assert predict.returncode == 0, predict.stderr
    np.testing.assert_allclose(np.load(out), ref.predict(REG_X), rtol=1e-6)
    for args, message in [
        (["--algorithm", "elasticnet", "--l1-ratio", "2"],
         "The 'l1_ratio' parameter of ElasticNet must be a float in the range [0.0, 1.0]. Got 2.0 instead."),
        (["--algorithm", "ridge", "--l1-ratio", "0.5"],
         "--l1-ratio does not apply to --algorithm ridge (it applies to logistic, elasticnet)"),
        (["--penalty", "l3"], "The 'penalty' parameter of LogisticRegression must be a str among"),
    ]:
        proc = run_cli("train", "--workers", "2", *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
