"""Datasets: the bundled defaults, and making, converting and inspecting the HDF5 files the engine reads.

:func:`load_default` returns a bundled dataset in memory. The rest write and
read files for :class:`drizzle_ml.data.HDF5Dataset`:

* :mod:`.make`: :func:`make_dataset`, synthetic data (:data:`KINDS`);
* :mod:`.converters`: :func:`convert`, CSV, NPY/NPZ, LIBSVM or Parquet to
  HDF5, or to Parquet (:data:`FORMATS`; pyarrow, imported only then);
* :mod:`.summary`: :func:`describe` a file, :func:`summary_line`, and the
  lines about Parquet data.

The command line (``drizzle-ml datasets``) is :mod:`drizzle_ml.launch.datasets`.

Layout written by :func:`make_dataset` and :func:`convert`:

* ``X``: a dense 2-D dataset ``(n_rows, n_features)``, chunked by rows; or,
  for sparse input (LIBSVM), a group ``X`` holding CSR arrays ``data``
  (float64), ``indices`` (int32), ``indptr`` (int64) and an attribute
  ``shape = (n_rows, n_features)``;
* ``y``: a 1-D dataset ``(n_rows,)`` (absent when there are no labels);
* file attributes saying how the file was made (kind, parameters, seed, or
  the source file and its format).

Everything streams: :func:`make_dataset` generates rows chunk by chunk and
:func:`convert` reads its source chunk by chunk, so files larger than memory
can be made and converted. Output goes to a temporary file in the
destination's directory that is renamed into place once complete, so a
failed run never leaves a half-written file behind.

Errors are ``ValueError`` / ``FileNotFoundError`` / ``FileExistsError`` with
one-line messages that name the file and, for text input, the line.
"""

from __future__ import annotations

import numpy as np

from .converters import FORMATS, convert
from .make import KINDS, make_dataset
from .summary import describe, parquet_info_lines, parquet_summary_line, summary_line

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
