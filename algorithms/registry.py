"""The estimators, one entry each: where the class lives and what the rest of the project needs to know.

Adding an estimator is one module and one :class:`Entry` here: the package
exports it, model files save and load it, and ``drizzle-ml train``/``stream``
offer it under its command-line name with the options it lists. This module
imports nothing heavy (no scikit-learn, no estimator): the package's lazy
names and the workers read it cheaply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

# The options of the linear models, on the command line -> their estimator parameter.
_LINEAR_TRAIN = {"solver": "solver", "learning_rate": "learning_rate", "no_intercept": "fit_intercept",
                 "max_iter": "max_iter", "tol": "tol"}
_LINEAR_STREAM = {"eta0": "eta0", "power_t": "power_t", "no_intercept": "fit_intercept"}
# Lasso and ElasticNet: no solver to choose, and FTRL online (no step decay).
_SPARSE_TRAIN = {"no_intercept": "fit_intercept", "max_iter": "max_iter", "tol": "tol", "alpha": "alpha"}
_SPARSE_STREAM = {"eta0": "eta0", "no_intercept": "fit_intercept", "alpha": "alpha"}
_PENALTY = {"penalty": "penalty", "l1_ratio": "l1_ratio"}


@dataclass(frozen=True)
class Entry:
    """One estimator.

    ``train_options`` and ``stream_options`` map the ``drizzle-ml train`` and
    ``drizzle-ml stream`` options (argparse destinations) that apply to it to
    its parameters; ``saved`` are the fitted attributes a model file must
    hold for it to predict.
    """

    class_name: str
    module: str  # in drizzle_ml.algorithms
    cli_name: str
    supervised: bool
    saved: tuple[str, ...]
    train_options: dict[str, str] = field(default_factory=dict)
    stream_options: dict[str, str] = field(default_factory=dict)

    def load(self) -> type:
        """The estimator class (imports its module)."""
        return getattr(importlib.import_module(f"drizzle_ml.algorithms.{self.module}"), self.class_name)


ENTRIES: tuple[Entry, ...] = (
    Entry("LogisticRegression", "logistic", "logistic", True,
          ("classes_", "coef_", "intercept_", "n_features_in_"),
          {**_LINEAR_TRAIN, "C": "C", **_PENALTY}, {**_LINEAR_STREAM, "C": "C", **_PENALTY}),
    Entry("LinearRegression", "linear", "linear", True,
          ("coef_", "intercept_", "n_features_in_"),
          _LINEAR_TRAIN, _LINEAR_STREAM),
    Entry("Ridge", "linear", "ridge", True,
          ("coef_", "intercept_", "n_features_in_"),
          {**_LINEAR_TRAIN, "alpha": "alpha"}, {**_LINEAR_STREAM, "alpha": "alpha"}),
    Entry("Lasso", "linear", "lasso", True,
          ("coef_", "intercept_", "n_features_in_"),
          _SPARSE_TRAIN, _SPARSE_STREAM),
    Entry("ElasticNet", "linear", "elasticnet", True,
          ("coef_", "intercept_", "n_features_in_"),
          {**_SPARSE_TRAIN, "l1_ratio": "l1_ratio"}, {**_SPARSE_STREAM, "l1_ratio": "l1_ratio"}),
    Entry("PCA", "pca", "pca", False,
          ("components_", "explained_variance_", "mean_", "n_components_", "n_features_in_"),
          {"n_components": "n_components", "svd_solver": "svd_solver", "whiten": "whiten", "seed": "random_state",
           "max_iter": "max_iter", "tol": "tol"},
          {"n_components": "n_components"}),
    Entry("KMeans", "kmeans", "kmeans", False,
          ("cluster_centers_", "n_features_in_"),
          {"n_clusters": "n_clusters", "init": "init", "n_init": "n_init", "seed": "random_state",
           "max_iter": "max_iter", "tol": "tol"},
          {"n_clusters": "n_clusters", "decay": "decay", "half_life": "half_life", "seed": "random_state"}),
)

BY_CLASS: dict[str, Entry] = {e.class_name: e for e in ENTRIES}
BY_CLI: dict[str, Entry] = {e.cli_name: e for e in ENTRIES}


def option_table(kind: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Command-line option -> (estimator parameter, the CLI names it applies to), for ``"train"`` or ``"stream"``."""
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for entry in ENTRIES:
        for option, param in getattr(entry, f"{kind}_options").items():
            known = table.get(option)
            if known is not None and known[0] != param:
                raise ValueError(f"option {option!r} means {known[0]!r} and {param!r}")
            table[option] = (param, (known[1] if known else ()) + (entry.cli_name,))
    return table
