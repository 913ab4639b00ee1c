"""Records: how lines of CSV or JSON, and rows, become numbers; malformed records; the stream's errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..hashing import LINE_FORMATS, LineHasher, check_n_bits

FORMATS = ("csv", "json", *LINE_FORMATS)
ON_ERROR = ("skip", "fail")
_BLANKS = (b" ", b"\t", b"\r", b"\v", b"\f")
_SOLID = np.ones(256, dtype=np.int32)  # whether a byte is not blank
_SOLID[[ord(blank) for blank in _BLANKS]] = 0
BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark, which some editors put at a text file's start


class StreamError(ValueError):
    """A stream cannot be read: a malformed record under ``on_error="fail"``, a source that is gone."""


@dataclass
class RecordFormat:
    """How records become numbers.

    kind : "csv", "json", or "libsvm" / "tokens" (hashed; text sources; HDF5 rows need no parsing).
    n_features : features per record, or None to take it from the first good record
        (``2**hash_bits`` for hashed records).
    has_target : the record's last field (CSV/list) or ``"y"`` is the target.
    classes : known labels (classifiers); other labels are malformed records.
    on_error : "skip" (count and drop malformed records) or "fail".
    hash_bits : LIBSVM or token lines (:class:`~drizzle_ml.hashing.LineHasher`)
        hashed into ``2**hash_bits`` columns, on the worker that reads them;
        their rows are then a CSR matrix (the target in its last column).
    """

    kind: str = "csv"
    n_features: int | None = None
    has_target: bool = False
    classes: np.ndarray | None = None
    on_error: str = "skip"
    hash_bits: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FORMATS:
            raise ValueError(f"record format must be one of {FORMATS}, got {self.kind!r}")
        if (self.kind in LINE_FORMATS) != (self.hash_bits is not None):
            raise ValueError(f"{' and '.join(LINE_FORMATS)} records are hashed: give hash_bits with them, and only "
                             f"with them (record format {self.kind!r})")
        if self.hash_bits is not None:
            self.hash_bits = check_n_bits(self.hash_bits, "hash_bits")
            if self.n_features not in (None, 1 << self.hash_bits):
                raise ValueError(f"hashed records have 2**{self.hash_bits} features, not n_features="
                                 f"{self.n_features}")
            self.n_features = 1 << self.hash_bits
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        if self.n_features is not None and (not isinstance(self.n_features, (int, np.integer))
                                            or self.n_features < 1):
            raise ValueError(f"n_features must be a positive integer or None, got {self.n_features!r}")
        if self.classes is not None:
            self.classes = np.asarray(self.classes, dtype=np.float64)
            if not np.isfinite(self.classes).all():
                raise ValueError(f"classes must be finite numbers, got {self.classes.tolist()}")

    @property
    def width(self) -> int | None:
        return None if self.n_features is None else self.n_features + int(self.has_target)

    def check_rows(self, rows: np.ndarray, where: Callable[[int], str]) -> tuple[np.ndarray, int]:
        """Keep the rows of a (n, width) block that are finite and have a known label."""
        good = np.isfinite(rows).all(axis=1)
        if self.classes is not None and rows.shape[0]:
            good &= np.isin(rows[:, -1], self.classes)
        n_bad = int(rows.shape[0] - np.count_nonzero(good))
        if n_bad:
            first = int(np.flatnonzero(~good)[0])
            row = rows[first]
            reason = ("a label not among the known classes " + _short(self.classes)
                      if np.isfinite(row).all() else "NaN or infinity")
            self.fail(where(first), f"{reason}: {row.tolist()}")
            rows = rows[good]
        return rows, n_bad

    def fail(self, where: str, what: str) -> None:
        if self.on_error == "fail":
            raise StreamError(f"malformed record at {where}: {what} (on_error='fail')")

    def parse_text(self, data: bytes, where: Callable[[int], str]) -> tuple[np.ndarray, int]:
        """Rows of shape (n, width) from complete lines; blank lines are ignored.

        ``where(i)`` names the i-th line of ``data`` (its offset) in errors.
        Hashed records give a CSR matrix of that shape.
        """
        if self.hash_bits is not None:
            return self._parse_hashed(data, where)
        if self.kind == "csv" and self.width is not None and data:
            rows = self._parse_csv_fast(data)
            if rows is not None:
                return self.check_rows(rows, where)
        rows, line_of_row, n_bad = [], [], 0
        for i, line in enumerate(data.split(b"\n")):
            line = line.strip()
            if not line:
                continue
            try:
                values = self._parse_line(line)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                n_bad += 1
                self.fail(where(i), f"{exc}: {line[:80]!r}")
                continue
            if self.n_features is None:
                if len(values) < 1 + int(self.has_target):
                    n_bad += 1
                    self.fail(where(i), f"no features: {line[:80]!r}")
                    continue
                self.n_features = len(values) - int(self.has_target)
            if len(values) != self.width:
                n_bad += 1
                self.fail(where(i), f"{len(values)} fields, expected {self.width}: {line[:80]!r}")
                continue
            rows.append(values)
            line_of_row.append(i)
        block = np.array(rows, dtype=np.float64).reshape(len(rows), self.width or 0)
        block, more_bad = self.check_rows(block, lambda j: where(line_of_row[j]))
        return block, n_bad + more_bad

    def _parse_hashed(self, data: bytes, where: Callable[[int], str]) -> tuple[Any, int]:
        import scipy.sparse as sp

        hasher = self.__dict__.get("_hasher")
        if hasher is None:  # one per reader process: it remembers the names it hashed
            # LIBSVM lines always start with a label (dropped without a target); token lines only with a target.
            hasher = self.__dict__["_hasher"] = LineHasher(self.hash_bits, self.kind,
                                                           has_label=self.kind == "libsvm" or self.has_target)
        lines = data.decode("utf-8", errors="replace").split("\n")
        bad: list[tuple[int, str]] = []  # (line, reason): the first in the data fails under on_error="fail"
        X, y, kept = hasher.hash_lines(lines, lambda i, reason: bad.append((i, reason)))
        if self.has_target and self.classes is not None and len(y):
            known = np.isin(y, self.classes)
            if not known.all():
                bad += [(kept[r], f"a label not among the known classes {_short(self.classes)}")
                        for r in np.flatnonzero(~known)]
                X, y = X[known], y[known]
        if bad:
            i, reason = min(bad)
            self.fail(where(i), f"{reason}: {lines[i].strip()[:80]!r}")
        if not self.has_target:
            return X, len(bad)
        return sp.hstack([X, sp.csr_matrix(y.reshape(-1, 1))], format="csr"), len(bad)

    def __getstate__(self) -> dict[str, Any]:  # the hasher is made again where the records are read
        return {k: v for k, v in self.__dict__.items() if k != "_hasher"}

    def _parse_csv_fast(self, data: bytes) -> np.ndarray | None:
        # One C-level parse of the whole block; any irregularity (a blank or
        # short line, a word) falls back to the line-by-line path. Every line
        # must have width - 1 commas: a total count alone would let a long and
        # a short line make up for each other.
        data = data.replace(b"\r\n", b"\n")  # Windows line ends: then the blank check below is rarely due
        raw = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(raw == ord("\n"))
        if not data.endswith(b"\n"):
            ends = np.append(ends, len(data))
        n_lines = len(ends)
        commas = np.flatnonzero(raw == ord(","))
        commas_before_end = np.searchsorted(commas, ends)
        if np.any(np.diff(commas_before_end, prepend=0) != self.width - 1):
            return None
        # NumPy reads a field of only blanks ("1, ,0", or "1,2,\r\n": a trailing comma
        # before CRLF) as -1: every field must hold a non-blank byte.
        if any(blank in data for blank in _BLANKS):
            field_ends = np.column_stack([commas.reshape(n_lines, self.width - 1), ends]).ravel()
            solid = np.zeros(len(raw) + 1, dtype=np.int32)
            np.cumsum(_SOLID[raw], out=solid[1:])  # non-blank bytes before each position
            if np.any(solid[field_ends] == solid[np.concatenate([[0], field_ends[:-1] + 1])]):
                return None
        try:
            values = np.fromstring(data.replace(b"\n", b","), sep=",")
        except ValueError:
            return None
        if values.size != n_lines * self.width:
            return None
        return values.reshape(n_lines, self.width)

    def _parse_line(self, line: bytes) -> list[float]:
        if self.kind == "csv":
            return [float(token) for token in line.split(b",")]
        try:  # a line nested thousands deep, or an integer beyond a float's range, is one bad record
            obj = json.loads(line)
            if isinstance(obj, dict):
                if not isinstance(obj["x"], list):  # a string would be read as one feature per character
                    raise TypeError(f'"x" must be a list of numbers, got {type(obj["x"]).__name__}')
                x = [float(v) for v in obj["x"]]
                if self.has_target:
                    x.append(float(obj["y"]))
                return x
            if isinstance(obj, list):
                return [float(v) for v in obj]
        except (RecursionError, OverflowError) as exc:
            raise ValueError(str(exc)) from None
        raise TypeError(f"a JSON record must be an object or a list, got {type(obj).__name__}")


def _short(values: np.ndarray | None) -> str:
    if values is None:
        return ""
    shown = values[:10].tolist()
    return str(shown)[:-1] + (", ...]" if len(values) > 10 else "]")


def first_lines(data: bytes, n: int) -> bytes:
    """The first ``n`` newline-terminated lines of ``data`` (all of it if it has no more)."""
    if not n or data.count(b"\n") <= n:
        return data
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    return data[: int(ends[n - 1]) + 1]


def not_there(kind: str, path: str) -> StreamError:
    """The error for a stream ``kind`` ("file" or "directory") that is missing, or is something else."""
    return StreamError(f"stream {kind} {path} " + ("does not exist" if not os.path.exists(path)
                                                   else f"is not a {kind}"))


def too_long(where: str, limit: int) -> StreamError:
    return StreamError(f"{where}: a record longer than {limit} bytes (no newline); records are lines")
