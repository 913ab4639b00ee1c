"""Feature hashing: raw sparse inputs to ``2**n_bits`` columns, as scikit-learn's ``FeatureHasher`` does.

:class:`FeatureHasher` hashes rows of feature-name -> value dicts, of
``(name, value)`` pairs, or of tokens (each worth 1). Its output is
identical to ``sklearn.feature_extraction.FeatureHasher(n_features=2**n_bits,
input_type=..., alternate_sign=...)``: the same ``murmurhash3_32`` with seed 0
(scikit-learn's own), column ``abs(h) % 2**n_bits``, sign ``+1`` when
``h >= 0`` (with ``alternate_sign``), zero values dropped, a string value
``v`` of feature ``f`` turned into the feature ``"f=v"`` with value 1, and
duplicates summed (``sum_duplicates``, which also sorts each row). Nothing
depends on Python's ``hash()``, so every process, worker and restart hashes
a name to the same column.

:class:`LineHasher` reads text records, one a line, into a hashed CSR
matrix and their labels: LIBSVM lines (``label index:value ...``, each index
hashed as the string of its integer, ``"7"``) or token lines (``label token
token ...``, each token a feature worth 1). ``datasets convert``, ``train``,
``predict`` and the ``libsvm``/``tokens`` stream records all use it.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp

MAX_BITS = 31
INPUT_TYPES = ("dict", "pair", "string")
LINE_FORMATS = ("libsvm", "tokens")
_CACHE_LIMIT = 1 << 18  # names whose hash is remembered (per hasher)
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


def check_n_bits(n_bits: Any, name: str = "n_bits") -> int:
    """``n_bits`` as an int in 1..31, or a one-line ValueError naming ``name``."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)) or not 1 <= n_bits <= MAX_BITS:
        raise ValueError(f"{name} must be an integer between 1 and {MAX_BITS}, got {n_bits!r}")
    return int(n_bits)


def _number(value: Any) -> float:
    """A feature value as C would take it (``float(v)``), but never from text or bytes."""
    if not isinstance(value, (str, bytes, bytearray)):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            pass
    raise TypeError(f"feature values must be numbers, got {type(value).__name__} {str(value)[:40]!r}")


class FeatureHasher:
    """scikit-learn's ``FeatureHasher`` with ``n_features=2**n_bits``, identical output, usable in the engine.

    n_bits : the matrix has ``2**n_bits`` columns (1..31).
    input_type : ``"dict"`` (a mapping name -> value per row), ``"pair"``
        (an iterable of ``(name, value)`` per row) or ``"string"`` (an
        iterable of tokens per row, each worth 1).
    alternate_sign : give each feature the sign of its hash, so that
        collisions cancel in expectation (scikit-learn's default).
    dtype : of the values (float64).

    Feature names are ``str`` (hashed as UTF-8) or ``bytes``. ``transform``
    returns a ``scipy.sparse.csr_matrix`` of shape ``(rows, 2**n_bits)``; an
    empty input gives zero rows (scikit-learn raises instead). Names already
    hashed are remembered (up to 262,144 of them), which makes repeated
    names (LIBSVM indices, frequent tokens) cheap.
    """

    def __init__(self, n_bits: int = 20, *, input_type: str = "dict", alternate_sign: bool = True,
                 dtype: Any = np.float64):
        self.n_bits = check_n_bits(n_bits)
        if input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {', '.join(map(repr, INPUT_TYPES))}, got {input_type!r}")
        if not isinstance(alternate_sign, (bool, np.bool_)):
            raise ValueError(f"alternate_sign must be True or False, got {alternate_sign!r}")
        self.input_type, self.alternate_sign = input_type, bool(alternate_sign)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be a numpy dtype, got {dtype!r}") from None
        self._cache: dict[Any, int] = {}

    @property
    def n_features(self) -> int:
        return 1 << self.n_bits

    def __getstate__(self) -> dict[str, Any]:  # the cache stays behind
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _cache={})

    def __repr__(self) -> str:
        return (f"FeatureHasher(n_bits={self.n_bits}, input_type={self.input_type!r}, "
                f"alternate_sign={self.alternate_sign})")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"n_bits": self.n_bits, "input_type": self.input_type, "alternate_sign": self.alternate_sign,
                "dtype": self.dtype}

    def fit(self, X: Any = None, y: Any = None) -> FeatureHasher:
        """Nothing to learn: hashing is stateless."""
        return self

    def fit_transform(self, raw_X: Iterable[Any], y: Any = None) -> sp.csr_matrix:
        return self.transform(raw_X)

    def transform(self, raw_X: Iterable[Any]) -> sp.csr_matrix:
        """The rows of ``raw_X`` hashed: a CSR matrix ``(rows, 2**n_bits)``."""
        if isinstance(raw_X, (str, bytes, dict)):
            raise TypeError(f"raw_X must be an iterable of rows, got a single {type(raw_X).__name__}")
        try:
            rows = iter(raw_X)
        except TypeError:
            raise TypeError(f"raw_X must be an iterable of rows, got {type(raw_X).__name__}") from None
        names: list[Any] = []
        ptr = [0]
        if self.input_type == "string":
            for i, row in enumerate(rows):
                if isinstance(row, (str, bytes)):
                    raise ValueError(f"input_type='string' takes an iterable of tokens per row; row {i} is a "
                                     "single string (split it into tokens)")
                try:
                    names.extend(row)
                except TypeError:
                    raise TypeError(f"input_type='string' takes an iterable of tokens per row; row {i} is "
                                    f"{type(row).__name__}") from None
                ptr.append(len(names))
            return self.hash_flat(names, np.ones(len(names)), ptr)
        rows = list(rows)
        flat = self._flat_numbers(rows)
        if flat is not None:
            names, values, ptr = flat
            return self.hash_flat(names, values, ptr)
        names, values, ptr = [], [], [0]  # text values ("f=v"), unusual numbers, or a wrong input: item by item
        pairs = self.input_type == "pair"
        for i, row in enumerate(rows):
            try:
                items = row if pairs else row.items()
            except AttributeError:
                raise TypeError(f"input_type='dict' takes a mapping (feature name -> value) per row; row {i} "
                                f"is {type(row).__name__}") from None
            try:
                for f, v in items:
                    if isinstance(v, str):  # a categorical value: the feature "f=v", worth 1
                        names.append(f"{f}={v}")
                        values.append(1.0)
                    else:
                        values.append(_number(v))
                        names.append(f)
            except (TypeError, ValueError) as exc:
                what = "(feature name, value) pairs" if pairs else "a mapping"
                raise TypeError(f"row {i}: {exc} (input_type={self.input_type!r} takes {what} per row)") from None
            ptr.append(len(names))
        return self.hash_flat(names, np.array(values, dtype=np.float64), ptr)

    def _flat_numbers(self, rows: list[Any]) -> tuple[list[Any], np.ndarray, np.ndarray] | None:
        """``(names, values, indptr)`` when every row is well formed and every value an int or a float
        (the common case, done at C speed); otherwise None."""
        try:
            if self.input_type == "dict":
                lengths = [len(row) for row in rows]
                flat = list(itertools.chain.from_iterable(row.items() for row in rows))
            else:
                rows = [row if isinstance(row, (list, tuple)) else list(row) for row in rows]
                lengths = [len(row) for row in rows]
                flat = list(itertools.chain.from_iterable(rows))
            if not flat:
                return [], np.empty(0), np.zeros(len(rows) + 1, dtype=np.int64)
            if set(map(len, flat)) != {2}:
                return None
            names, values = list(map(_first, flat)), list(map(_second, flat))
        except (TypeError, AttributeError, ValueError):
            return None
        if not set(map(type, values)) <= {float, int}:
            return None
        try:
            numbers = np.array(values, dtype=np.float64)
        except OverflowError:
            return None
        return names, numbers, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    def hashes(self, names: list[Any]) -> np.ndarray:
        """The signed 32-bit murmurhash3 (seed 0) of each name, as int64."""
        cache = self._cache
        try:
            new = set(names).difference(cache)
        except TypeError:
            bad = next(n for n in names if not isinstance(n, (str, bytes)))
            raise TypeError(f"feature names must be strings, got {type(bad).__name__}") from None
        if new:
            if len(cache) + len(new) > _CACHE_LIMIT:
                cache.clear()
                new = set(names)
            from sklearn.utils import murmurhash3_32

            for name in new:
                if not isinstance(name, (str, bytes)):
                    raise TypeError(f"feature names must be strings, got {type(name).__name__} {str(name)[:40]!r}")
                cache[name] = int(murmurhash3_32(name, seed=0))
        return np.fromiter(map(cache.__getitem__, names), dtype=np.int64, count=len(names))

    def hash_flat(self, names: list[Any], values: np.ndarray, indptr: Any) -> sp.csr_matrix:
        """Rows given flat: ``names[indptr[i]:indptr[i+1]]`` with their ``values`` are row ``i``."""
        indptr = np.asarray(indptr, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        n_rows, n = len(indptr) - 1, self.n_features
        zero = values == 0
        if zero.any():  # scikit-learn drops zero values before hashing
            keep = ~zero
            rows = np.repeat(np.arange(n_rows), np.diff(indptr))
            indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=n_rows))])
            names = list(itertools.compress(names, keep.tolist()))
            values = values[keep]
        h = self.hashes(names)
        columns = np.abs(h) % n
        columns[h == _INT32_MIN] = (_INT32_MAX - (n - 1)) % n
        if self.alternate_sign:
            values = values * np.where(h >= 0, 1.0, -1.0)
        itype = np.int64 if indptr[-1] > _INT32_MAX else np.int32
        X = sp.csr_matrix((values.astype(self.dtype, copy=False), columns.astype(itype), indptr.astype(itype)),
                          shape=(n_rows, n), dtype=self.dtype)
        X.sum_duplicates()
        return X


def finite_number(token: str, what: str | None = None) -> float:
    """``float(token)``, or a ValueError saying that ``what`` (default: the token) is not a finite number."""
    what = repr(token) if what is None else what
    try:
        value = float(token)
    except ValueError:
        raise ValueError(f"{what} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} is not a finite number")
    return value


def line_label(token: str) -> float:
    """The label that starts a LIBSVM (or token) line, or a ValueError saying what is wrong with it."""
    if ":" in token:
        raise ValueError(f"the line starts with {token!r}, not a label")
    if "," in token:
        raise ValueError(f"multilabel {token!r} is not supported")
    return finite_number(token, f"label {token!r}")


def _libsvm_record(line: str, has_label: bool) -> tuple[float | None, list[str], list[float]] | None:
    tokens = line.split("#", 1)[0].split()
    if not tokens:
        return None
    label = None
    if has_label:
        label = line_label(tokens[0])
        tokens = tokens[1:]
    names, values = [], []
    for tok in tokens:
        idx, sep, val = tok.partition(":")
        if not sep:
            raise ValueError(f"expected index:value, got {tok!r}")
        if idx == "qid":
            continue  # query ids (ranking data) are not features
        if not (idx.isascii() and idx.isdigit()) or (idx[0] == "0" and len(idx) > 1):
            digits = idx[1:] if idx[:1] in ("+", "-") else idx
            if not (digits.isascii() and digits.isdigit()):
                raise ValueError(f"{idx!r} is not a feature index (an integer)")
            if int(idx) < 0:
                raise ValueError(f"feature index {idx} is negative")
            idx = str(int(idx))  # "007" and "+7" are feature "7"
        names.append(idx)
        values.append(finite_number(val))
    return label, names, values


def _tokens_record(line: str, has_label: bool) -> tuple[float | None, list[str], None] | None:
    tokens = line.split()
    if not tokens:
        return None
    if has_label:
        return line_label(tokens[0]), tokens[1:], None
    return None, tokens, None


class LineHasher:
    """Text records, one a line, hashed into ``2**n_bits`` columns.

    fmt : ``"libsvm"``: ``label index:value index:value ...`` (``#`` starts
        a comment; ``qid:`` is ignored; each index is the feature named by
        its integer's decimal string, ``"7"``, any order, duplicates summed),
        or ``"tokens"``: ``label token token ...`` separated by whitespace,
        each token (case kept, ``#`` included) a feature worth 1, repeats
        summed, as scikit-learn's ``input_type="string"``.
    has_label : the first field of a line is its label (a number).

    A line's features are hashed exactly as :class:`FeatureHasher` (``pair``
    for LIBSVM, ``string`` for tokens) hashes them.
    """

    def __init__(self, n_bits: int, fmt: str, has_label: bool = True, alternate_sign: bool = True):
        if fmt not in LINE_FORMATS:
            raise ValueError(f"hashed records are {' or '.join(LINE_FORMATS)}, got {fmt!r}")
        self.fmt, self.has_label = fmt, bool(has_label)
        self.hasher = FeatureHasher(n_bits, input_type="pair", alternate_sign=alternate_sign)
        self._parse = _libsvm_record if fmt == "libsvm" else _tokens_record

    @property
    def n_features(self) -> int:
        return self.hasher.n_features

    def hash_lines(self, lines: Iterable[str], on_error: Callable[[int, str], None]
                   ) -> tuple[sp.csr_matrix, np.ndarray | None, list[int]]:
        """``(X, y, kept)`` for ``lines``: ``kept[r]`` is the index of row ``r``'s line.

        Blank lines (and LIBSVM comment lines) are no records. A malformed
        line ``i`` calls ``on_error(i, reason)``, which raises to stop or
        returns to skip the line.
        """
        parse, has_label = self._parse, self.has_label
        names: list[str] = []
        values: list[float] = []
        ptr, labels, kept = [0], [], []
        for i, line in enumerate(lines):
            try:
                record = parse(line, has_label)
            except ValueError as exc:
                on_error(i, str(exc))
                continue
            if record is None:
                continue
            label, row_names, row_values = record
            names.extend(row_names)
            if row_values is not None:
                values.extend(row_values)
            ptr.append(len(names))
            labels.append(label)
            kept.append(i)
        vals = np.ones(len(names)) if self.fmt == "tokens" else np.array(values, dtype=np.float64)
        X = self.hasher.hash_flat(names, vals, ptr)
        y = np.array(labels, dtype=np.float64) if has_label else None
        return X, y, kept
