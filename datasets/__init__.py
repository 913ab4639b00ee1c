"""Datasets: the bundled defaults, and making, converting and inspecting the HDF5 files the engine reads."""

from __future__ import annotations

import numpy as np

from .tools import (
    FORMATS,
    KINDS,
    convert,
    describe,
    make_dataset,
    parquet_info_lines,
    parquet_summary_line,
    summary_line,
)

__all__ = [
    "FORMATS",
    "KINDS",
    "convert",
    "describe",
    "load_default",
    "make_dataset",
    "parquet_info_lines",
    "parquet_summary_line",
    "summary_line",
]


def load_default(task: str = "classification") -> tuple[np.ndarray, np.ndarray, str]:
    """The bundled default dataset for a task, standardized. Returns ``(X, y, name)``.

    ``classification``: Wisconsin breast cancer (569 x 30, binary);
    ``regression``: diabetes (442 x 10). Both ship with scikit-learn, so the
    first training command works on a fresh machine with no download.
    """
    from sklearn.datasets import load_breast_cancer, load_diabetes

    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    loader, name = ((load_breast_cancer, "breast_cancer (569 x 30, standardized)") if task == "classification"
                    else (load_diabetes, "diabetes (442 x 10, standardized)"))
    X, y = loader(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, y, name
