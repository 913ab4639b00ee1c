"""Algorithms as engine programs, and the scikit-learn-style estimators that wrap them.

Programs declare what runs on a partition (``local``), how partials combine
(``combine``) and how the model updates (``update``); they know nothing of MPI.
They live in modules that do not import scikit-learn (``*_programs``,
``normal_equations``, ``optim``, ``online``, ``moments``): workers unpickle
programs and start a second or two faster without it. The names below load
on first use for the same reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import ENTRIES

_MODULE_OF = {
    "CovariancePCA": "pca_programs",
    "KMeansPlusPlusInit": "kmeans_programs",
    "Lloyd": "kmeans_programs",
    "Minimize": "optim",
    "NormalEquations": "normal_equations",
    "OnlineLearner": "online_learning",
    "RandomInit": "kmeans_programs",
    "SubspacePCA": "pca_programs",
    **{entry.class_name: entry.module for entry in ENTRIES},
}

__all__ = sorted(_MODULE_OF)  # noqa: PLE0605  (the lazy names are the public ones)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
