"""Algorithms as engine programs, and the scikit-learn-style estimators that wrap them.

Programs declare what runs on a partition (``local``), how partials combine
(``combine``) and how the model updates (``update``); they know nothing of MPI.
"""

from .kmeans import KMeans, KMeansPlusPlusInit, Lloyd, RandomInit
from .linear import LinearRegression, NormalEquations, Ridge
from .logistic import LogisticRegression
from .optim import Minimize
from .pca import PCA, CovariancePCA, SubspacePCA

__all__ = [
    "CovariancePCA",
    "KMeans",
    "KMeansPlusPlusInit",
    "LinearRegression",
    "LogisticRegression",
    "Lloyd",
    "Minimize",
    "NormalEquations",
    "PCA",
    "RandomInit",
    "Ridge",
    "SubspacePCA",
]
