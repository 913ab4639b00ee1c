"""Pack nested numeric values (arrays, scalars, tuples, dicts) into one byte buffer.

Partials and models cross the reduce tree as raw bytes in preallocated
buffers: no pickling on the hot path. A :class:`Layout` is computed once per
job from a sample value and then reused for every iteration; values whose
structure, shapes or dtypes differ from the layout are rejected.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

_ALIGN = 8


def _is_numeric_leaf(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufc"
    return isinstance(value, (np.generic, int, float)) and np.asarray(value).dtype.kind in "biufc"


def is_packable(value: Any) -> bool:
    """True when ``value`` is a tree of numeric arrays/scalars that a Layout can carry."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_packable(v) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return all(is_packable(v) for v in value)
    return _is_numeric_leaf(value)


class Layout:
    """Byte layout of a nested numeric value.

    ``pack(value, buf)`` copies the leaves into ``buf``; ``unpack(buf)``
    returns the same structure with arrays that are *views* of ``buf``
    (scalars come back as numpy scalars).
    """

    __slots__ = ("treedef", "leaves", "nbytes", "runs", "_views", "_has_scalars", "_scalar_flags", "_flatten",
                 "_assemble", "_specs", "_run_slices")

    def __init__(self, value: Any, by_dtype: bool = False):
        leaves: list[tuple[tuple[int, ...], np.dtype, int, bool]] = []
        offset = 0

        def build(v: Any) -> Any:
            nonlocal offset
            if isinstance(v, dict):
                return ("d", tuple((k, build(x)) for k, x in v.items()))
            if isinstance(v, (tuple, list)):
                return ("t" if isinstance(v, tuple) else "l", tuple(build(x) for x in v))
            if not _is_numeric_leaf(v):
                raise TypeError(
                    f"cannot pack a value of type {type(v).__name__}: partials and "
                    "models must be numeric arrays, scalars, tuples, lists or dicts"
                )
            arr = np.asarray(v)
            index = len(leaves)
            leaves.append((arr.shape, arr.dtype, offset, not isinstance(v, np.ndarray)))
            offset += -(-arr.nbytes // _ALIGN) * _ALIGN
            return ("a", index)

        self.treedef = build(value)
        if by_dtype:
            leaves, offset = _group_by_dtype(leaves)
        self.leaves = leaves
        self.nbytes = max(offset, _ALIGN)
        self.runs = _dtype_runs(leaves) if by_dtype else None
        self._init_cache()

    def _init_cache(self) -> None:
        self._views: dict[tuple[int, int], tuple[np.ndarray, list, Any]] = {}
        self._has_scalars = any(scalar for *_, scalar in self.leaves)
        self._scalar_flags = [scalar for *_, scalar in self.leaves]
        # Compiled once: packing and unpacking run every iteration.
        self._flatten = _compile_flatten(self.treedef)
        self._assemble = _compile_assemble(self.treedef)
        self._specs = [(shape, dtype, off) for shape, dtype, off, _ in self.leaves]
        self._run_slices = _run_slices(self.leaves, self.runs) if self.runs is not None else None

    def new_buffer(self) -> np.ndarray:
        return np.empty(self.nbytes, dtype=np.uint8)

    def pack(self, value: Any, buf: np.ndarray, offset: int = 0) -> None:
        flat: list = []
        self._flatten(value, flat)
        for leaf, dest in zip(flat, self._cached(buf, offset)[1]):
            if getattr(leaf, "shape", ()) != dest.shape:
                raise ValueError(f"shape {np.shape(leaf)} differs from the job's layout {dest.shape}")
            np.copyto(dest, leaf, casting="same_kind")

    def unpack(self, buf: np.ndarray, offset: int = 0, reused: bool = True) -> Any:
        """The value in ``buf``, as views of it.

        Views of a buffer are built once and reused (the engine's ring buffers
        never move), so packing and unpacking on the hot path allocate nothing;
        calls on the same buffer return the same objects. Scalar leaves are
        read afresh each time. ``reused=False`` is for a buffer used once
        (nothing is kept for it, so it is freed with the value).
        """
        if reused:
            _, leaves, value = self._cached(buf, offset)
        else:
            leaves = self._views_of(buf, offset)
            value = self._assemble(leaves)
        if self._has_scalars:
            return self._assemble([v[()] if scalar else v for v, scalar in zip(leaves, self._scalar_flags)])
        return value

    def from_runs(self, arrays: list[np.ndarray]) -> Any:
        """The value whose leaves are slices of ``arrays``, one 1-d array per dtype run (``by_dtype``).

        ``arrays[i]`` holds run i's elements (``runs[i]``: dtype, offset,
        count). Slicing a typed array is cheaper than building views of a
        byte buffer, and a reduction's total is built this way every iteration.
        """
        leaves = []
        for run, lo, hi, shape in self._run_slices:
            if shape is None:  # a scalar
                leaves.append(arrays[run][lo])
            else:
                leaf = arrays[run][lo:hi]
                leaves.append(leaf if len(shape) == 1 else leaf.reshape(shape))
        return self._assemble(leaves)

    def _cached(self, buf: np.ndarray, offset: int) -> tuple[np.ndarray, list[np.ndarray], Any]:
        key = (id(buf), offset)
        cached = self._views.get(key)
        if cached is None or cached[0] is not buf:
            leaves = self._views_of(buf, offset)
            cached = (buf, leaves, self._assemble(leaves))
            self._views[key] = cached
        return cached

    def _views_of(self, buf: np.ndarray, offset: int) -> list[np.ndarray]:
        return [np.ndarray(shape, dtype, buffer=buf, offset=offset + off) for shape, dtype, off in self._specs]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Layout)
            and self.treedef == other.treedef
            and self.leaves == other.leaves
        )

    def signature(self) -> bytes:
        """16 bytes that differ, in practice, between layouts that differ."""
        return hashlib.blake2b(repr((self.treedef, self.leaves)).encode(), digest_size=16).digest()

    def __getstate__(self):
        return (self.treedef, self.leaves, self.nbytes, self.runs)

    def __setstate__(self, state) -> None:
        self.treedef, self.leaves, self.nbytes, self.runs = state
        self._init_cache()


def _compile_flatten(node: Any) -> Callable[[Any, list], None]:
    """A function appending a value's leaves to a list, in layout order, checking its structure."""
    kind, payload = node
    if kind == "a":
        return lambda v, out: out.append(v)
    if kind == "d":
        subs = [(key, _compile_flatten(sub)) for key, sub in payload]
        n = len(subs)

        def flatten_dict(v: Any, out: list) -> None:
            if not isinstance(v, dict) or len(v) != n:
                raise ValueError("value structure differs from the job's layout")
            for key, flatten in subs:
                if key not in v:
                    raise ValueError(f"value is missing key {key!r} of the job's layout")
                flatten(v[key], out)

        return flatten_dict
    n = len(payload)
    if all(sub[0] == "a" for sub in payload):
        def flatten_leaves(v: Any, out: list) -> None:
            if not isinstance(v, (tuple, list)) or len(v) != n:
                raise ValueError("value structure differs from the job's layout")
            out.extend(v)

        return flatten_leaves
    subs = [_compile_flatten(sub) for sub in payload]

    def flatten_sequence(v: Any, out: list) -> None:
        if not isinstance(v, (tuple, list)) or len(v) != n:
            raise ValueError("value structure differs from the job's layout")
        for flatten, item in zip(subs, v):
            flatten(item, out)

    return flatten_sequence


def _compile_assemble(node: Any) -> Callable[[list], Any]:
    """A function building the value's structure around a list of leaves."""
    kind, payload = node
    if kind == "a":
        return operator.itemgetter(payload)
    if kind == "d":
        subs = [(key, _compile_assemble(sub)) for key, sub in payload]
        return lambda leaves: {key: build(leaves) for key, build in subs}
    if kind == "t" and len(payload) >= 2 and all(sub[0] == "a" for sub in payload):
        return operator.itemgetter(*(sub[1] for sub in payload))  # a tuple of leaves, in C
    subs = [_compile_assemble(sub) for sub in payload]
    if kind == "t":
        return lambda leaves: tuple([build(leaves) for build in subs])
    return lambda leaves: [build(leaves) for build in subs]


def _group_by_dtype(leaves: list) -> tuple[list, int]:
    """The same leaves laid out so that each dtype's leaves are contiguous, without padding between them.

    A run of one dtype is then a single typed array: MPI can sum it in one call.
    """
    order = sorted(range(len(leaves)), key=lambda i: leaves[i][1].str)
    placed: list = [None] * len(leaves)
    offset, current = 0, None
    for i in order:
        shape, dtype, _, scalar = leaves[i]
        if dtype != current:  # each run starts aligned
            offset = -(-offset // _ALIGN) * _ALIGN
            current = dtype
        placed[i] = (shape, dtype, offset, scalar)
        offset += math.prod(shape) * dtype.itemsize
    return placed, -(-offset // _ALIGN) * _ALIGN


def _run_slices(leaves: list, runs: tuple) -> list[tuple[int, int, int, tuple[int, ...] | None]]:
    """Per leaf: ``(run index, first element, end element, shape or None for a scalar)``."""
    out = []
    for shape, dtype, offset, scalar in leaves:
        run = next(i for i, (dt, off, count) in enumerate(runs)
                   if dt == dtype and off <= offset <= off + count * dt.itemsize)
        lo = (offset - runs[run][1]) // dtype.itemsize
        out.append((run, lo, lo + math.prod(shape), None if scalar else shape))
    return out


def _dtype_runs(leaves: list) -> tuple[tuple[np.dtype, int, int], ...]:
    """``(dtype, byte offset, element count)`` of each contiguous single-dtype run, in buffer order."""
    runs: list[list] = []
    for shape, dtype, offset, _ in sorted(leaves, key=lambda leaf: leaf[2]):
        count = math.prod(shape)
        last = runs[-1] if runs else None
        if last is not None and last[0] == dtype and last[1] + last[2] * dtype.itemsize == offset:
            last[2] += count
        else:
            runs.append([dtype, offset, count])
    return tuple((dtype, offset, count) for dtype, offset, count in runs)
