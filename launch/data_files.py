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


# Text files that --hash-features reads, by extension (--data-format says it for any other name).
TEXT_FORMATS = {".svm": "libsvm", ".libsvm": "libsvm", ".svmlight": "libsvm", ".txt": "libsvm", ".tokens": "tokens"}


def add_hashing_arguments(parser: argparse.ArgumentParser) -> None:
    """``--hash-features`` and ``--data-format``: LIBSVM or token lines hashed into ``2**BITS`` columns."""
    parser.add_argument("--hash-features", type=int, default=None, metavar="BITS",
                        help="--data is LIBSVM or token lines: hash their features into 2**BITS columns (1..31), as "
                             "scikit-learn's FeatureHasher")
    parser.add_argument("--data-format", choices=("libsvm", "tokens"), default=None,
                        help="the text format of --data with --hash-features (default: from the extension: .tokens "
                             "is tokens; .svm, .libsvm, .svmlight, .txt are libsvm)")


def check_hashing(args: argparse.Namespace, applies: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The hashing ``--hash-features`` asks for (``{"n_bits", "format", "alternate_sign", "label"}``), or None."""
    bits = getattr(args, "hash_features", None)
    if bits is None:
        if getattr(args, "data_format", None) is not None:
            raise CLIError("--data-format says how to read --data for --hash-features; give --hash-features BITS")
        return None
    from drizzle_ml.hashing import check_n_bits

    try:
        check_n_bits(bits, "--hash-features")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if applies is not None and args.algorithm not in applies:
        raise CLIError(f"--hash-features does not apply to --algorithm {args.algorithm} "
                       f"(it applies to {', '.join(applies)})")
    if args.data is None:
        raise CLIError("--hash-features hashes the features of --data, a LIBSVM or tokens file: give --data")
    if is_parquet_data(args.data) or args.data.endswith((".h5", ".hdf5", ".hdf")):
        raise CLIError(f"--hash-features reads LIBSVM or token lines; {args.data} is "
                       f"{'Parquet' if is_parquet_data(args.data) else 'HDF5'} (columns of numbers already)")
    for option in ("x_key", "y_key", "features", "target"):
        if getattr(args, option, None) is not None:
            raise CLIError(f"--{option.replace('_', '-')} chooses columns of HDF5 or Parquet data, not of the "
                           f"text {args.data}")
    check_data_file(args.data)
    fmt = args.data_format or TEXT_FORMATS.get(os.path.splitext(args.data)[1].lower())
    if fmt is None:
        raise CLIError(f"cannot tell the format of {args.data} from its extension: give --data-format libsvm or "
                       "tokens")
    return {"n_bits": bits, "format": fmt, "alternate_sign": True, "label": True}


def hashed_copy(path: str, hashing: dict[str, Any], checkpoint_dir: str | None) -> tuple[str, bool]:
    """``(HDF5 path, temporary)``: ``path`` hashed into an HDF5 file the workers read their rows of.

    With a checkpoint directory the copy is kept there (``hashed-NAME-BITS.h5``)
    and reused while the text file is unchanged, so that a restart resumes
    from its checkpoints (they name the data by path, size and time).
    Otherwise it is a temporary file beside ``path`` (the directory every
    host sees it in), or in the temporary directory if that one is not
    writable; the caller removes it.
    """
    import tempfile

    import h5py

    from drizzle_ml.datasets import convert

    stat = os.stat(path)
    source = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        name = os.path.join(checkpoint_dir, f"hashed-{os.path.basename(path)}-{hashing['n_bits']}.h5")
        try:
            with h5py.File(name, "r") as f:
                if f.attrs.get("hashed_from") == source and f.attrs.get("format") == hashing["format"]:
                    return name, False
        except OSError:
            pass
        temporary = False
    else:
        prefix = f".{os.path.basename(path)}.hashed-"
        try:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".h5", dir=os.path.dirname(os.path.abspath(path)))
        except OSError:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".h5")
        os.close(fd)
        temporary = True
    try:
        convert(path, name, fmt=hashing["format"], hash_features=hashing["n_bits"], overwrite=True)
        with h5py.File(name, "r+") as f:
            f.attrs["hashed_from"] = source
    except (ValueError, OSError) as exc:
        if temporary:
            os.unlink(name)
        raise CLIError(str(exc)) from None
    return name, temporary


def hashing_of(path: str, x_key: str) -> dict[str, Any] | None:
    """The hashing an HDF5 file was made with (``datasets convert --hash-features``), from its attributes."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return None
    bits, fmt = attrs.get("hash_bits"), attrs.get("format")
    if bits is None or fmt not in ("libsvm", "tokens") or x_key != "X":
        return None
    return {"n_bits": int(bits), "format": str(fmt), "alternate_sign": bool(attrs.get("alternate_sign", True)),
            "label": attrs.get("label_column") != "none"}


def iter_hashed_rows(path: str, hashing: dict[str, Any], chunk_rows: int = CHUNK_ROWS) -> Iterator[Any]:
    """The rows of a LIBSVM or tokens file hashed as ``hashing`` says, ``chunk_rows`` lines at a time (CSR)."""
    import itertools

    from drizzle_ml.hashing import LineHasher

    hasher = LineHasher(hashing["n_bits"], hashing["format"], has_label=hashing.get("label", True),
                        alternate_sign=hashing.get("alternate_sign", True))
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        first = 1
        while lines := list(itertools.islice(fh, chunk_rows)):
            def fail(i: int, reason: str, first: int = first) -> None:
                raise CLIError(f"{path} line {first + i}: {reason}")

            X, _, _ = hasher.hash_lines(lines, fail)
            first += len(lines)
            if X.shape[0]:
                yield X
