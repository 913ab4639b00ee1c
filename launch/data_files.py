"""The data a command reads: HDF5 or Parquet files (``--data``), their columns, and reading them in chunks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from drizzle_ml.algorithms.registry import ENTRIES

from .common import CLIError

SUPERVISED = {entry.cli_name for entry in ENTRIES if entry.supervised}


CHUNK_ROWS = 65_536


def iter_rows(source: Any, with_targets: bool = False, chunk_rows: int = CHUNK_ROWS) -> Iterator[Any]:
    """Rows of an :class:`~drizzle_ml.HDF5Dataset` or a :class:`~drizzle_ml.ParquetDataset` in chunks:
    ``X`` (dense or CSR), or ``(X, y)``."""
    import h5py

    if source.kind == "parquet":
        yield from source.iter_rows(with_targets, chunk_rows)
        return

    from drizzle_ml.data import read_csr_rows, read_targets

    with h5py.File(source.path, "r") as f:
        node = f[source.x_key]
        for lo in range(0, source.n_rows, chunk_rows):
            hi = min(lo + chunk_rows, source.n_rows)
            if source.sparse:
                X = read_csr_rows(node, lo, hi, source.path, source.x_key)
            else:
                X = node[lo:hi]
            yield (X, read_targets(f[source.y_key], lo, hi)) if with_targets else X


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """``--features`` and ``--target``: the columns of Parquet data (train, predict, stream)."""
    parser.add_argument("--features", type=column_list, default=None, metavar="COL,...",
                        help="Parquet: the feature columns (default: every numeric column but the target)")
    parser.add_argument("--target", default=None, metavar="COL",
                        help="Parquet: the target column (default: the column 'y'); never a default feature")


def column_list(text: str) -> list[str]:
    """An argparse type: comma-separated column names."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be column names separated by commas, got {text!r}")
    return names


def check_data_file(path: str) -> None:
    """A data file must exist and be a regular file (reading a FIFO or a device would block)."""
    if not os.path.exists(path):
        raise CLIError(f"data file not found: {path}")
    if not os.path.isfile(path):
        raise CLIError(f"{path} is not a regular file (a directory, a FIFO or a device): give an HDF5 file")


def open_hdf5(path: str, x_key: str, y_key: str | None):
    """An :class:`~drizzle_ml.HDF5Dataset`, or a one-line CLIError saying what is wrong with the file."""
    from drizzle_ml import HDF5Dataset

    check_data_file(path)
    try:
        return HDF5Dataset(path, x_key=x_key, y_key=y_key)
    except KeyError as exc:
        raise CLIError(exc.args[0]) from None
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def is_parquet_data(path: str) -> bool:
    """Whether ``--data`` names Parquet data (a .parquet/.pq file or a directory); pyarrow is not needed to tell."""
    from drizzle_ml.parquet import is_parquet_path

    return is_parquet_path(path)


def check_parquet_columns(args: argparse.Namespace) -> None:
    if getattr(args, "x_key", None) is not None or getattr(args, "y_key", None) is not None:
        raise CLIError(f"--x-key and --y-key name HDF5 datasets; {args.data} is Parquet "
                       "(choose its columns with --features and --target)")


def check_hdf5_columns(args: argparse.Namespace) -> None:
    if getattr(args, "features", None) is not None or getattr(args, "target", None) is not None:
        raise CLIError(f"--features and --target choose Parquet columns; {args.data} is read as HDF5 "
                       "(use --x-key and --y-key)")


def open_parquet(path: str, features: list[str] | None, target: str | None):
    """A :class:`~drizzle_ml.ParquetDataset`, or a one-line CLIError (pyarrow missing, a bad file or column)."""
    from drizzle_ml.parquet import ParquetDataset

    try:
        return ParquetDataset(path, features=features, target=target)
    except (ImportError, OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def open_data(args: argparse.Namespace):
    """The Parquet ``--data`` with the columns the algorithm reads.

    Supervised algorithms need their target (``--target``, default ``y``);
    the others read no target, but a column named ``y`` (or ``--target``)
    is still left out of the default features, so that every command
    picks the same features from the same file.
    """
    supervised = args.algorithm in SUPERVISED
    dataset = open_parquet(args.data, args.features, args.target or ("y" if supervised else "auto"))
    if not supervised and dataset.target is not None:
        dataset = open_parquet(args.data, dataset.features, None)
    return dataset
