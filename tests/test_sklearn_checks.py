"""scikit-learn's own estimator checks, run against every estimator on a real cluster."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from drizzle_ml import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge

# Checks expected to fail, by estimator name, each with the reason it cannot hold.
EXPECTED_FAILURES: dict[str, dict[str, str]] = {}

ESTIMATORS = [
    LogisticRegression(n_workers=2),
    LinearRegression(n_workers=2),
    Ridge(n_workers=2),
    Lasso(n_workers=2),
    ElasticNet(n_workers=2),
    LogisticRegression(penalty="elasticnet", l1_ratio=0.5, n_workers=2),
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILURES.get(type(est).__name__, {}))
def test_sklearn_compatible(estimator, check):
    check(estimator)
