"""Algorithms as engine programs, and the scikit-learn-style estimators that wrap them.

Programs declare what runs on a partition (``local``), how partials combine
(``combine``) and how the model updates (``update``); they know nothing of MPI.
"""

from .logistic import LogisticGD, LogisticRegression
from .pca import PCA, CovariancePCA, SubspacePCA

__all__ = ["CovariancePCA", "LogisticGD", "LogisticRegression", "PCA", "SubspacePCA"]
