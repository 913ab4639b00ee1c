"""``drizzle-ml predict`` and ``drizzle-ml info``: use a saved model on the local machine.

Prediction is a local, chunked pass over the data (no cluster): the model is
small, and reading rows in chunks keeps memory bounded for files of any size.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from .common import CLIError, check_output_paths
from .data_files import (
    TEXT_FORMATS,
    add_column_arguments,
    add_hashing_arguments,
    check_data_file,
    check_hashing,
    check_hdf5_columns,
    check_parquet_columns,
    is_parquet_data,
    iter_hashed_rows,
    iter_rows,
    open_hdf5,
    open_parquet,
)


def _output_of(estimator: Any) -> tuple[str, Any]:
    """(name, method) of what ``predict`` writes for this kind of model."""
    if hasattr(estimator, "predict"):
        return "y_pred", estimator.predict
    return "X_transformed", estimator.transform


def predict(args: argparse.Namespace) -> int:
    from drizzle_ml.algorithms.persist import load_model, model_info

    parquet = is_parquet_data(args.data)
    check_output_paths({"-o/--output": args.output}, {"--model": args.model, "--data": args.data},
                       {"--data": args.data if parquet else None})
    try:
        estimator = load_model(args.model)
        extra = model_info(args.model)["extra"]
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from None
    hashing = _hashing(args, (extra or {}).get("hashing"))
    if hashing is not None:
        source = _HashedText(args.data, hashing)
    elif parquet:
        check_parquet_columns(args)
        # The model's own columns when it was trained on Parquet; otherwise every numeric column but 'y'.
        trained_on = (extra or {}).get("features")
        features = args.features or (list(trained_on) if isinstance(trained_on, list) else None)
        source = open_parquet(args.data, features, None if features else args.target or "auto")
        if source.target is not None:  # it only kept the target out of the features; predict needs none
            source = open_parquet(args.data, source.features, None)
    else:
        check_hdf5_columns(args)
        source = open_hdf5(args.data, args.x_key or "X", None)
    expected = getattr(estimator, "n_features_in_", source.n_features)
    if source.n_features != expected:
        chosen = f" ({', '.join(source.features)})" if parquet else ""
        raise CLIError(f"{args.data} has {source.n_features} features{chosen}, but the model was trained on "
                       f"{expected}" + (" (choose them with --features)" if parquet else ""))
    name, method = _output_of(estimator)
    out = args.output
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".h5", ".hdf5", ".npy", ".csv"):
        raise CLIError(f"--output must end in .h5, .npy or .csv, got {out!r}")
    try:  # damaged rows or NaN/infinity: the file's problem, in one line
        rows = iter_hashed_rows(args.data, hashing) if hashing is not None else iter_rows(source)
        parts = [np.asarray(method(X)) for X in rows]
    except (ValueError, OSError) as exc:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CLIError(message if message.startswith(source.path) else f"{args.data}: {message}") from None
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    result = np.concatenate(parts) if parts else np.empty(0)
    from drizzle_ml.files import atomic_output
    from drizzle_ml.h5files import write_hdf5

    def fill(f) -> None:
        import h5py

        if result.dtype.kind == "U":
            f.create_dataset(name, data=result.astype(object), dtype=h5py.string_dtype())
        else:
            f[name] = result

    if ext in (".h5", ".hdf5"):
        write_hdf5(out, fill)  # built in memory: a full disk is a clean OSError
    else:
        with atomic_output(out) as tmp:
            with open(tmp, "wb") as f:
                if ext == ".npy":
                    np.save(f, result)
                else:
                    fmt = "%s" if result.dtype.kind in "UO" else "%.17g"
                    np.savetxt(f, result.reshape(len(result), -1), delimiter=",", fmt=fmt)
    print(f"wrote {out}: {name} for {len(result)} rows ({type(estimator).__name__}, "
          f"model version {getattr(estimator, 'model_version_', '?')})")
    return 0


class _HashedText:
    """A LIBSVM or tokens ``--data`` that predict hashes as the model's training data was."""

    def __init__(self, path: str, hashing: dict[str, Any]):
        self.path, self.n_features = path, 1 << int(hashing["n_bits"])


def _hashing(args: argparse.Namespace, trained: Any) -> dict[str, Any] | None:
    """How to hash a text ``--data``: as the model's training data (``extra["hashing"]``), or as told."""
    text = not is_parquet_data(args.data) and not args.data.lower().endswith((".h5", ".hdf5", ".hdf"))
    if args.hash_features is None and args.data_format is None:
        if not text or not isinstance(trained, dict):
            return None  # HDF5, Parquet, or text the model cannot read: reported as before
        hashing = dict(trained)
    else:
        args.algorithm = None  # not a training option here
        asked = check_hashing(args)
        if asked is None:
            raise CLIError("--data-format says how to read --data for --hash-features; give --hash-features BITS")
        if isinstance(trained, dict) and (asked["n_bits"] != trained.get("n_bits")
                                          or (args.data_format or trained.get("format")) != trained.get("format")):
            raise CLIError(f"the model was trained on {trained.get('format')} hashed into 2**{trained.get('n_bits')} "
                           f"columns, not {asked['format']} into 2**{asked['n_bits']}: leave out --hash-features "
                           "and --data-format, predict hashes as the training did")
        hashing = dict(trained) if isinstance(trained, dict) else asked
    check_data_file(args.data)
    if args.x_key is not None or args.features is not None or args.target is not None:
        raise CLIError(f"--x-key, --features and --target choose columns of HDF5 or Parquet data, not of the text "
                       f"{args.data}")
    if args.data_format is None and not isinstance(trained, dict) \
            and os.path.splitext(args.data)[1].lower() not in TEXT_FORMATS:
        raise CLIError(f"cannot tell the format of {args.data} from its extension: give --data-format")
    return hashing


def info(args: argparse.Namespace) -> int:
    from drizzle_ml.algorithms.persist import format_info, model_info

    try:
        text = format_info(model_info(args.model))
    except (OSError, ValueError, KeyError) as exc:
        raise CLIError(str(exc)) from None
    print(text)
    return 0


def add_predict_arguments(predict_parser: argparse.ArgumentParser, info_parser: argparse.ArgumentParser) -> None:
    predict_parser.add_argument("--model", required=True, help="a model saved by 'drizzle-ml train --output'")
    predict_parser.add_argument("--data", required=True,
                                help="HDF5 file, Parquet file or directory of Parquet files with the rows to predict")
    predict_parser.add_argument("--x-key", default=None,
                                help="HDF5 dataset (or CSR group) of the features (default X)")
    add_column_arguments(predict_parser)
    add_hashing_arguments(predict_parser)
    predict_parser.add_argument("--output", "-o", required=True, help="where to write: .h5, .npy or .csv")
    info_parser.add_argument("model", help="a model saved by 'drizzle-ml train --output'")
