"""Synthetic datasets written to HDF5 chunk by chunk: :func:`make_dataset` and its four kinds.

Each kind is a :class:`_Generator`: its parameters and model (centers,
weights, basis) are drawn once from the seed, then rows are drawn in fixed
blocks of :data:`_BLOCK_ROWS`, so a file depends on the seed only.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from drizzle_ml.files import atomic_output

from ._h5files import check_chunk_rows, h5_chunk_rows, json_attr, positive_int, work_chunk_rows
from .summary import describe

KINDS = ("classification", "regression", "lowrank", "blobs")

# Rows of one random stream in make_dataset. Fixed: each block of this many
# rows draws from its own generator seeded by (seed, block index), so a file
# depends on the seed only, never on the chunk size used to write it.
_BLOCK_ROWS = 65536


def _seed_seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


class _Generator:
    """Parameters of one synthetic dataset kind and its per-row sampler.

    ``sample(streams, m)`` draws the next ``m`` rows from the block's
    generators; each stream is used for one kind of draw only, so drawing a
    block in several pieces yields exactly the rows of drawing it at once.
    """

    has_y = True
    y_dtype: Any = np.int64

    def __init__(self, rows: int, features: int, rng: np.random.Generator, **options: Any):
        raise NotImplementedError

    params: dict[str, Any]
    model: dict[str, np.ndarray]

    def sample(self, streams: list[np.random.Generator], m: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError


def _matmul_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` computed so that each row's result depends on that row only.

    BLAS picks different kernels (and summation orders) for different numbers
    of rows, so ``A @ B`` on a chunk can differ in the last bit from the same
    rows in another chunk; this fixed-order accumulation cannot.
    """
    out = np.zeros((A.shape[0],) + B.shape[1:])
    for j in range(A.shape[1]):
        out += A[:, j, None] * B[j] if B.ndim == 2 else A[:, j] * B[j]
    return out


def _labels(stream: np.random.Generator, m: int, n: int) -> np.ndarray:
    # uniform doubles (one draw each, no buffering across calls), not integers()
    return np.minimum((stream.random(m) * n).astype(np.int64), n - 1)


def _nonnegative(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class _Classification(_Generator):
    """Like ``sklearn.datasets.make_classification`` (one cluster per class, no redundant features).

    Each class has a centroid at a distinct vertex of the hypercube
    ``[-class_sep, class_sep]^n_informative``; a row is its class centroid plus
    standard normal noise mixed by a random ``n_informative`` square matrix
    (informative features, the first ones), then standard normal noise features.
    Labels are uniform over ``0..n_classes-1``.
    """

    def __init__(self, rows, features, rng, n_classes=2, n_informative=None, class_sep=1.0):
        n_classes = positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        needed = max(2, math.ceil(math.log2(n_classes)))
        if n_informative is None:
            n_informative = min(features, needed)
        n_informative = positive_int("n_informative", n_informative)
        if n_informative > features:
            raise ValueError(f"n_informative={n_informative} exceeds features={features}")
        if 2**n_informative < n_classes:
            raise ValueError(
                f"{n_classes} classes need at least {math.ceil(math.log2(n_classes))} informative features "
                f"(distinct hypercube vertices), got {n_informative}"
            )
        class_sep = _nonnegative("class_sep", class_sep)
        if n_informative <= 30:
            vertices = rng.choice(2**n_informative, n_classes, replace=False)
            bits = (vertices[:, None] >> np.arange(n_informative)) & 1
        else:
            bits = rng.random((n_classes, n_informative)) < 0.5
        self.centers = class_sep * (2.0 * bits - 1.0)
        self.mixing = rng.uniform(-1.0, 1.0, (n_informative, n_informative))
        self.n_classes, self.n_informative, self.features = n_classes, n_informative, features
        self.params = {"n_classes": n_classes, "n_informative": n_informative, "class_sep": class_sep}
        self.model = {"centers": self.centers, "mixing": self.mixing}

    def sample(self, streams, m):
        y = _labels(streams[0], m, self.n_classes)
        X = streams[1].standard_normal((m, self.features))
        k = self.n_informative
        X[:, :k] = _matmul_rows(X[:, :k], self.mixing) + self.centers[y]
        return X, y


class _Regression(_Generator):
    """A linear model plus noise: ``y = X @ coef + bias + noise * N(0, 1)``, X standard normal.

    ``n_informative`` randomly chosen features (default all) get coefficients
    uniform in ``[0, 100)`` as in ``sklearn.datasets.make_regression``; the
    coefficients are stored in ``model/coef``.
    """

    y_dtype = np.float64

    def __init__(self, rows, features, rng, n_informative=None, noise=0.1, bias=0.0):
        n_informative = features if n_informative is None else positive_int("n_informative", n_informative)
        if n_informative > features:
            raise ValueError(f"n_informative={n_informative} exceeds features={features}")
        noise = _nonnegative("noise", noise)
        bias = float(bias)
        self.coef = np.zeros(features)
        self.coef[rng.permutation(features)[:n_informative]] = 100.0 * rng.random(n_informative)
        self.noise, self.bias, self.features = noise, bias, features
        self.params = {"n_informative": n_informative, "noise": noise, "bias": bias}
        self.model = {"coef": self.coef}

    def sample(self, streams, m):
        X = streams[1].standard_normal((m, self.features))
        y = _matmul_rows(X, self.coef) + self.bias + self.noise * streams[2].standard_normal(m)
        return X, y


class _LowRank(_Generator):
    """``X = Z diag(s) V^T + noise * N(0, 1)``: rows with a rank-``rank`` covariance plus isotropic noise.

    ``V`` (``features x rank``) has orthonormal columns (stored transposed as
    ``model/components``), ``Z`` is standard normal, and ``s_k = 1 / (k + 1)``
    (``model/singular_values``): the rows' covariance is
    ``V diag(s**2) V^T + noise**2 I``. No ``y``.
    """

    has_y = False
    y_dtype = None

    def __init__(self, rows, features, rng, rank=None, noise=0.01):
        rank = min(10, features) if rank is None else positive_int("rank", rank)
        if rank > features:
            raise ValueError(f"rank={rank} exceeds features={features}")
        noise = _nonnegative("noise", noise)
        q, r = np.linalg.qr(rng.standard_normal((features, rank)))
        self.components = (q * np.sign(np.diag(r))).T.copy()  # (rank, features), orthonormal rows
        self.s = 1.0 / np.arange(1, rank + 1)
        self.rank, self.noise, self.features = rank, noise, features
        self.params = {"rank": rank, "noise": noise}
        self.model = {"components": self.components, "singular_values": self.s}

    def sample(self, streams, m):
        Z = streams[0].standard_normal((m, self.rank))
        X = _matmul_rows(Z * self.s, self.components)
        if self.noise:
            X += self.noise * streams[1].standard_normal((m, self.features))
        return X, None


class _Blobs(_Generator):
    """Isotropic Gaussian blobs like ``sklearn.datasets.make_blobs``.

    ``centers`` centers uniform in ``center_box`` (stored in ``model/centers``);
    a row is a uniformly chosen center (its index is the label) plus
    ``cluster_std * N(0, 1)``.
    """

    def __init__(self, rows, features, rng, centers=3, cluster_std=1.0, center_box=(-10.0, 10.0)):
        centers = positive_int("centers", centers)
        cluster_std = _nonnegative("cluster_std", cluster_std)
        lo, hi = (float(v) for v in center_box)
        if not lo < hi:
            raise ValueError(f"center_box must be (low, high) with low < high, got {center_box!r}")
        self.centers = rng.uniform(lo, hi, (centers, features))
        self.n_centers, self.cluster_std, self.features = centers, cluster_std, features
        self.params = {"centers": centers, "cluster_std": cluster_std, "center_box": [lo, hi]}
        self.model = {"centers": self.centers}

    def sample(self, streams, m):
        y = _labels(streams[0], m, self.n_centers)
        X = self.centers[y] + self.cluster_std * streams[1].standard_normal((m, self.features))
        return X, y


_GENERATORS: dict[str, type[_Generator]] = {
    "classification": _Classification,
    "regression": _Regression,
    "lowrank": _LowRank,
    "blobs": _Blobs,
}


def _kind_options(kind: str) -> list[str]:
    import inspect

    params = inspect.signature(_GENERATORS[kind].__init__).parameters
    return [p for p in params if p not in ("self", "rows", "features", "rng")]


def make_dataset(
    kind: str,
    path: str | os.PathLike,
    rows: int,
    features: int,
    *,
    random_state: int = 0,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    **kind_options: Any,
) -> dict[str, Any]:
    """Write a synthetic dataset to the HDF5 file ``path``, chunk by chunk; return :func:`describe` of it.

    kind : ``"classification"`` (options ``n_classes=2``, ``n_informative``,
        ``class_sep=1.0``; int64 labels ``0..n_classes-1``),
        ``"regression"`` (``n_informative``, ``noise=0.1``, ``bias=0.0``;
        float64 ``y``), ``"lowrank"`` (``rank=min(10, features)``,
        ``noise=0.01``; no ``y``) or ``"blobs"`` (``centers=3``,
        ``cluster_std=1.0``, ``center_box=(-10, 10)``; int64 labels).
    rows, features : the shape of ``X`` (float64).
    random_state : a non-negative integer seed. The model (centers, weights,
        basis) is drawn once from it; rows are drawn in fixed blocks of
        65,536, each from a generator seeded by ``(random_state, block)``,
        so the file depends on the seed only, not on ``chunk_rows``.
    chunk_rows : rows generated and written at a time (default: about 32 MB
        of ``X``); memory use is bounded by it, not by ``rows``.
    overwrite : replace ``path`` if it exists (otherwise ``FileExistsError``).

    The model arrays are stored in the group ``model`` (e.g. ``model/coef``),
    and the file attributes record ``kind``, ``seed``, ``rows``, ``features``
    and every option.
    """
    import h5py

    if kind not in _GENERATORS:
        raise ValueError(f"unknown dataset kind {kind!r}: choose from {', '.join(KINDS)}")
    rows = positive_int("rows", rows)
    features = positive_int("features", features)
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer, got {random_state!r}")
    seed = int(random_state)
    allowed = _kind_options(kind)
    unknown = sorted(set(kind_options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{kind} datasets take no option {', '.join(map(repr, unknown))} (options: {', '.join(allowed)})"
        )
    chunk_rows = check_chunk_rows(chunk_rows, work_chunk_rows(features))
    gen = _GENERATORS[kind](rows, features, np.random.default_rng(_seed_seq(seed, 0)), **kind_options)

    with atomic_output(path, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
        X = f.create_dataset("X", shape=(rows, features), dtype=np.float64,
                             chunks=(min(rows, h5_chunk_rows(features)), features))
        y = None
        if gen.has_y:
            y = f.create_dataset("y", shape=(rows,), dtype=gen.y_dtype, chunks=(min(rows, 65536),))
        streams: list[np.random.Generator] = []
        for lo in range(0, rows, chunk_rows):
            hi = min(rows, lo + chunk_rows)
            xs, ys = [], []
            start = lo
            while start < hi:  # split the chunk at block boundaries
                block, offset = divmod(start, _BLOCK_ROWS)
                stop = min(hi, (block + 1) * _BLOCK_ROWS)
                if offset == 0:  # chunks are written in order: a block always starts with its first row
                    streams = [np.random.default_rng(_seed_seq(seed, 1, block, s)) for s in range(3)]
                xb, yb = gen.sample(streams, stop - start)
                xs.append(xb)
                ys.append(yb)
                start = stop
            X[lo:hi] = xs[0] if len(xs) == 1 else np.concatenate(xs)
            if y is not None:
                y[lo:hi] = np.concatenate(ys)
        model = f.create_group("model")
        for name, arr in gen.model.items():
            model.create_dataset(name, data=arr)
        f.attrs["generator"] = "drizzle_ml.datasets.make_dataset"
        f.attrs["kind"] = kind
        f.attrs["seed"] = seed
        f.attrs["rows"] = rows
        f.attrs["features"] = features
        f.attrs["block_rows"] = _BLOCK_ROWS
        for name, value in gen.params.items():
            f.attrs[name] = json_attr(value)
    return describe(path, y_key="y" if gen.has_y else None)
