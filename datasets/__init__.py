"""Datasets: the bundled default and loaders for the engine's data paths."""

from __future__ import annotations

import numpy as np


def load_default() -> tuple[np.ndarray, np.ndarray, str]:
    """The bundled default dataset: Wisconsin breast cancer (569 x 30, binary), standardized.

    It ships with scikit-learn, so the first training command works on a fresh
    machine with no download. Returns ``(X, y, name)``.
    """
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y, "breast_cancer (569 x 30, standardized)"
