"""``drizzle-ml datasets``: make, convert and inspect dataset files (:mod:`drizzle_ml.datasets` does the work)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from drizzle_ml.datasets import (
    FORMATS,
    KINDS,
    convert,
    describe,
    make_dataset,
    parquet_info_lines,
    parquet_summary_line,
    summary_line,
)
from drizzle_ml.parquet import is_parquet_path


def _label_column_arg(text: str) -> int | str | None:
    if text.lower() == "none":
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        return text


def _columns_arg(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be column names separated by commas, got {text!r}")
    return names


def _key_arg(text: str) -> str | None:
    return None if text.lower() == "none" else text


def _zero_based_arg(text: str) -> bool | str:
    value = {"auto": "auto", "yes": True, "true": True, "no": False, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"must be auto, yes or no, got {text!r}")
    return value


def _delimiter_arg(text: str) -> str:
    return {"\\t": "\t", "tab": "\t", "space": " "}.get(text, text)


# CLI flag -> (make_dataset option, kinds that take it)
_MAKE_FLAGS = {
    "classes": ("n_classes", ("classification",)),
    "rank": ("rank", ("lowrank",)),
    "centers": ("centers", ("blobs",)),
    "noise": ("noise", ("regression", "lowrank")),
}


def add_datasets_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``datasets`` command (``make``, ``convert``, ``info``) to an argparse sub-parsers object."""
    ds = subparsers.add_parser("datasets", help="make, convert and inspect HDF5 datasets for the engine",
                               description="Make, convert and inspect the HDF5 files HDF5Dataset reads.")
    sub = ds.add_subparsers(dest="datasets_command", required=True)

    make = sub.add_parser("make", help="write a synthetic dataset")
    make.add_argument("kind", choices=KINDS)
    make.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    make.add_argument("--rows", type=int, default=10000, help="rows (default 10000)")
    make.add_argument("--features", type=int, default=20, help="features (default 20)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.add_argument("--classes", type=int, default=None, help="classification: number of classes (default 2)")
    make.add_argument("--rank", type=int, default=None, help="lowrank: rank (default min(10, features))")
    make.add_argument("--centers", type=int, default=None, help="blobs: number of centers (default 3)")
    make.add_argument("--noise", type=float, default=None, help="regression, lowrank: noise standard deviation")
    make.add_argument("--chunk-rows", type=int, default=None, help="rows generated at a time")
    make.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")

    conv = sub.add_parser("convert", help="convert CSV, NPY, NPZ, LIBSVM or Parquet to HDF5, or to Parquet")
    conv.add_argument("src", help="input file (.csv, .npy, .npz, .svm/.libsvm/.svmlight/.txt, .parquet or a "
                                  "directory of them; .h5 when the output is Parquet)")
    conv.add_argument("-o", "--output", required=True, help="HDF5 file to write, or a .parquet file")
    conv.add_argument("--format", choices=FORMATS, default=None, help="input format (default: from the extension)")
    conv.add_argument("--label-column", type=_label_column_arg, default="auto",
                      help="CSV/NPY label column: index, header name or 'none' "
                           "(default: last column for CSV, none for NPY); tokens: 'none' for lines without a "
                           "label; Parquet: the target column's name "
                           "(default: y if there is one)")
    conv.add_argument("--features", type=_columns_arg, default=None, metavar="COL,...",
                      help="Parquet input: the feature columns (default: every numeric column but the target)")
    header = conv.add_mutually_exclusive_group()
    header.add_argument("--header", dest="has_header", action="store_const", const=True, default=None,
                        help="the CSV's first line is a header")
    header.add_argument("--no-header", dest="has_header", action="store_const", const=False,
                        help="the CSV has no header (default: detected)")
    conv.add_argument("--delimiter", type=_delimiter_arg, default=",", help="CSV delimiter (default ','; 'tab')")
    conv.add_argument("--n-features", type=int, default=None, help="LIBSVM: number of features")
    conv.add_argument("--zero-based", type=_zero_based_arg, default="auto",
                      help="LIBSVM: indices start at 0: auto (default), yes or no")
    conv.add_argument("--hash-features", type=int, default=None, metavar="BITS",
                      help="LIBSVM or --format tokens: hash the features into 2**BITS columns (1..31), as "
                           "scikit-learn's FeatureHasher")
    conv.add_argument("--x-key", default="X", help="name of X in the output (and in a .npz)")
    conv.add_argument("--y-key", type=_key_arg, default="y", help="name of y in the output (and in a .npz), or none")
    conv.add_argument("--chunk-rows", type=int, default=None, help="rows read at a time")
    conv.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")

    info = sub.add_parser("info", help="describe an HDF5 dataset, or Parquet data")
    info.add_argument("path")
    info.add_argument("--x-key", default="X")
    info.add_argument("--y-key", type=_key_arg, default="y")
    return ds


def _info_lines(info: dict[str, Any]) -> list[str]:
    layout = "sparse CSR" if info["sparse"] else "dense"
    lines = [f"{info['path']}: {info['rows']} rows x {info['features']} features, {layout} {info['dtype']}"]
    if info["sparse"]:
        cells = info["rows"] * info["features"]
        lines.append(f"  nonzeros: {info['nnz']} ({100 * info['nnz'] / cells if cells else 0:.3g}% dense)")
    y = info["y"]
    if y is None:
        lines.append("  y: none")
    elif "classes" in y:
        pairs = ", ".join(f"{c}: {n}" for c, n in zip(y["classes"][:20], y["counts"][:20]))
        more = f", ... ({len(y['classes'])} classes)" if len(y["classes"]) > 20 else ""
        lines.append(f"  y ({y['key']}, {y['dtype']}): {len(y['classes'])} classes, counts {{{pairs}{more}}}")
    elif "mean" in y:
        lines.append(f"  y ({y['key']}, {y['dtype']}): min {y['min']:.6g}, max {y['max']:.6g}, mean {y['mean']:.6g}")
    else:
        lines.append(f"  y ({y['key']}, {y['dtype']}): {y['n_distinct']} distinct values in [{y['min']}, {y['max']}]")
    lines.append(f"  keys: {', '.join(info['keys'])}")
    for k, v in info["attributes"].items():
        lines.append(f"  {k}: {v}")
    return lines


def run_datasets(args: argparse.Namespace) -> int:
    """Run a parsed ``datasets`` command; print its summary; return the exit status (0).

    Errors raise ``ValueError`` / ``OSError`` (``FileNotFoundError``,
    ``FileExistsError``) with one-line messages for the CLI to print.
    """
    if args.datasets_command == "make":
        options = {}
        for flag, (option, kinds) in _MAKE_FLAGS.items():
            value = getattr(args, flag)
            if value is None:
                continue
            if args.kind not in kinds:
                raise ValueError(f"--{flag} applies to {' and '.join(kinds)} datasets, not {args.kind}")
            options[option] = value
        info = make_dataset(args.kind, args.output, args.rows, args.features, random_state=args.seed,
                            chunk_rows=args.chunk_rows, overwrite=args.overwrite, **options)
        print(summary_line(info))
    elif args.datasets_command == "convert":
        from drizzle_ml.files import check_outputs

        check_outputs({"-o/--output": args.output}, {"file": args.src},
                      {"directory": args.src if os.path.isdir(args.src) else None})
        if args.hash_features is not None:
            from drizzle_ml.hashing import check_n_bits

            check_n_bits(args.hash_features, "--hash-features")
        try:
            info = convert(args.src, args.output, fmt=args.format, x_key=args.x_key, y_key=args.y_key,
                           label_column=args.label_column, delimiter=args.delimiter, has_header=args.has_header,
                           chunk_rows=args.chunk_rows, n_features=args.n_features, zero_based=args.zero_based,
                           overwrite=args.overwrite, features=args.features, hash_features=args.hash_features)
        except ImportError as exc:  # pyarrow missing: the install hint, in one line
            raise ValueError(str(exc)) from None
        print(parquet_summary_line(info) if "row_groups" in info else summary_line(info))
    elif args.datasets_command == "info" and os.path.exists(args.path) and is_parquet_path(args.path):
        try:
            print("\n".join(parquet_info_lines(args.path)))
        except ImportError as exc:
            raise ValueError(str(exc)) from None
    elif args.datasets_command == "info":
        try:
            info = describe(args.path, x_key=args.x_key, y_key=args.y_key)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise OSError(f"cannot read {args.path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        print("\n".join(_info_lines(info)))
    else:  # pragma: no cover - argparse requires a sub-command
        raise ValueError(f"unknown datasets command {args.datasets_command!r}")
    return 0
