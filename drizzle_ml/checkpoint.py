"""Durable checkpoints at group boundaries.

At each group boundary the driver holds everything needed to continue a job:
the model (with optimizer state such as L-BFGS memory), the group sizer's
state, random state, stream offsets. :class:`CheckpointStore` writes that as
one HDF5 file per model version, ``ckpt-{version:012d}.h5``, atomically, and
finds the newest valid one to resume from.

File layout (format ``drizzle-ml-checkpoint``, version 1)::

    /           attributes: format, format_version, job_key, version, iteration,
                created, tuner, rng, stream_offsets, params, metrics (JSON text),
                model_keys (JSON list), checksum ("sha256:<hex>")
    /model/<i>  one dataset per model array, in model_keys order; attributes
                key, dtype (numpy dtype.str), order ("C" or "F")

The checksum is a sha256 over a canonical, length-prefixed serialization of
the format version, every scalar and JSON field (exactly the text stored) and,
for every array, its key, dtype, order, shape and C-order bytes. A file whose
checksum does not match (a flipped bit, a truncated write that still opens)
is invalid. Nothing is ever pickled: model arrays must be numeric (bool, int,
uint, float, complex); the other fields must be JSON (numpy scalars become
python numbers, numpy arrays in ``params`` are stored as
``{"__ndarray__": [...], "dtype": ...}`` and come back as arrays, tuples come
back as lists, NaN and infinities are allowed). Arrays and JSON are written
and read by :mod:`drizzle_ml.h5files`, the codec saved models use too.

A save of version ``v`` is the newest state of its job: it supersedes this
job's checkpoint files with a higher version (left by a run that resumed from
an older checkpoint because the newer ones were damaged, or that was
restarted from scratch), and of the others only the newest ``keep`` are kept.
Files of other jobs, foreign files and files that cannot be read are never
deleted. Temporary files a killed writer left behind (``.ckpt-*.tmp``) are
removed by a later save once they are an hour old.

Under a user's checkpoint directory each job has its own directory,
``job-<k>-<hash of its job key>`` (:func:`open_job_store`): jobs that share a
checkpoint directory never write, rotate or resume each other's files, and
while a job runs it holds that directory's lock, so that a second copy of the
same job is refused up front instead of deleting the first one's checkpoints.

This is an engine module: it imports nothing from ``drizzle_ml.algorithms``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CheckpointError, CheckpointInUseError, CheckpointMismatchError, CheckpointWarning
from .files import fsync_dir
from .h5files import (
    NUMERIC_KINDS,
    FormatError,
    attribute_text,
    from_json,
    json_text,
    memory_order,
    open_hdf5,
    read_array,
    root_attributes,
    write_array,
    write_hdf5,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointStore",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWarning",
    "job_key_for",
]

FORMAT = "drizzle-ml-checkpoint"
FORMAT_VERSION = 1

_NAME = re.compile(r"^ckpt-(\d+)\.h5$")
_TEMP = re.compile(r"^\.ckpt-\d+\.h5\..+\.tmp$")
#: A temporary file this old was left by a writer that died (killed mid-write); removed on save.
STALE_TEMP_SECONDS = 3600.0
_JSON_FIELDS = ("tuner", "rng", "stream_offsets", "params", "metrics")


@dataclass
class Checkpoint:
    """Everything needed to continue a job from a group boundary.

    ``model`` is the full model dict, optimizer state included; ``tuner`` the
    group sizer's state; ``rng`` random state (JSON); ``stream_offsets`` how
    far each input stream has been consumed; ``params`` the job's parameters;
    ``metrics`` the last group's metrics. ``job_key`` identifies the job (see
    :func:`job_key_for`).
    """

    job_key: str
    version: int
    iteration: int
    model: dict[str, np.ndarray]
    tuner: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    stream_offsets: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint file as :meth:`CheckpointStore.list` sees it.

    ``valid`` is True when :meth:`CheckpointStore.latest` could resume from
    it; otherwise ``reason`` says why not (damaged, foreign, another job).
    ``version`` comes from the file name; ``job_key``, ``iteration`` and
    ``created`` are None when the file could not be read.
    """

    path: str
    version: int
    valid: bool
    reason: str | None = None
    job_key: str | None = None
    iteration: int | None = None
    created: float | None = None


# -- JSON ----------------------------------------------------------------------------------------

def _canonical(value: Any, where: str) -> str:
    """Canonical JSON text: sorted keys, no spaces, ASCII; NaN/Infinity allowed."""
    return json_text(value, where, "a checkpoint", separators=(",", ":"))


def job_key_for(name: str, params: dict, *, exclude: Iterable[str] = ()) -> str:
    """A stable key for a job: ``"<name>-<sha256 of canonical JSON params>[:20]"``.

    ``exclude`` drops parameters that do not change what a checkpoint means
    (``max_iter``, ``verbose``...), so that, say, a resumed job may run for
    more iterations. Types matter: ``1`` and ``1.0`` give different keys.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    skip = set(exclude)
    kept = {k: v for k, v in params.items() if k not in skip}
    text = _canonical(kept, "params")
    digest = hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:20]
    return f"{name}-{digest}"


# -- preparing and checksumming ------------------------------------------------------------------

@dataclass
class _Prepared:
    """A checkpoint validated and detached from the caller: private arrays, JSON as text."""

    job_key: str
    version: int
    iteration: int
    created: float
    keys: list[str]
    arrays: list[np.ndarray]  # C-contiguous private copies
    orders: list[str]
    texts: dict[str, str]  # JSON text of each _JSON_FIELDS entry


def _check_int(value: Any, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where} must be an integer >= 0, got {value!r}")
    return int(value)


def _prepare(ckpt: Checkpoint) -> _Prepared:
    if not isinstance(ckpt, Checkpoint):
        raise TypeError(f"expected a Checkpoint, got {type(ckpt).__name__}")
    if not isinstance(ckpt.job_key, str) or not ckpt.job_key:
        raise ValueError(f"job_key must be a non-empty string, got {ckpt.job_key!r}")
    version = _check_int(ckpt.version, "version")
    iteration = _check_int(ckpt.iteration, "iteration")
    created = float(ckpt.created)
    if not isinstance(ckpt.model, dict) or not ckpt.model:
        raise ValueError("model must be a non-empty dict of arrays")
    keys, arrays, orders = [], [], []
    for key, value in ckpt.model.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"model keys must be non-empty strings, got {key!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in NUMERIC_KINDS:
            raise TypeError(
                f"model[{key!r}] has dtype {arr.dtype}; checkpoints hold numeric arrays only "
                "(bool, int, uint, float, complex) and never pickle objects"
            )
        keys.append(key)
        orders.append(memory_order(arr))
        arrays.append(np.array(arr, order="C", copy=True))  # private: later in-place changes can't leak in
    for name in ("tuner", "rng", "stream_offsets", "params", "metrics"):
        if not isinstance(getattr(ckpt, name), dict):
            raise TypeError(f"{name} must be a dict, got {type(getattr(ckpt, name)).__name__}")
    for key, offset in ckpt.stream_offsets.items():  # a position, or a small record of them
        for part in (offset.values() if isinstance(offset, dict) else (offset,)):
            if not isinstance(part, str):
                _check_int(part, f"stream_offsets[{key!r}]")
    texts = {name: _canonical(getattr(ckpt, name), name) for name in _JSON_FIELDS}
    return _Prepared(ckpt.job_key, version, iteration, created, keys, arrays, orders, texts)


def _checksum(job_key: str, version: int, iteration: int, created: float, keys: list[str],
              arrays: list[np.ndarray], orders: list[str], texts: dict[str, str]) -> str:
    h = hashlib.sha256()

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    put(f"{FORMAT}/{FORMAT_VERSION}".encode())
    put(job_key.encode("utf-8"))
    put(str(version).encode())
    put(str(iteration).encode())
    put(repr(float(created)).encode())
    for name in _JSON_FIELDS:
        put(name.encode())
        put(texts[name].encode("utf-8"))
    put(str(len(keys)).encode())
    for key, arr, order in zip(keys, arrays, orders):
        put(key.encode("utf-8"))
        put(arr.dtype.str.encode())
        put(order.encode())
        put(json.dumps(list(arr.shape)).encode())
        data = np.ascontiguousarray(arr)
        h.update(data.nbytes.to_bytes(8, "little"))
        if data.nbytes:
            h.update(data.reshape(-1).view(np.uint8))
    return "sha256:" + h.hexdigest()


# -- writing -------------------------------------------------------------------------------------

def _fill_h5(h5: Any, p: _Prepared, checksum: str) -> None:
    """Write the HDF5 content of ``p`` into the open file ``h5``."""
    a = h5.attrs
    a["format"] = FORMAT
    a["format_version"] = FORMAT_VERSION
    a["job_key"] = p.job_key
    a["version"] = np.int64(p.version)
    a["iteration"] = np.int64(p.iteration)
    a["created"] = np.float64(p.created)
    for name in _JSON_FIELDS:
        a[name] = p.texts[name]
    a["model_keys"] = json.dumps(p.keys, ensure_ascii=True)
    group = h5.create_group("model")
    for i, (key, arr, order) in enumerate(zip(p.keys, p.arrays, p.orders)):
        write_array(group, str(i), arr, "checkpoint", order=order, key=key)  # arr is a C-order copy
    a["checksum"] = checksum


def _write_atomic(directory: str, p: _Prepared) -> str:
    """Write ``p`` as ``directory/ckpt-{version:012d}.h5``: temp file, fsync, rename, fsync dir."""
    path = os.path.join(directory, f"ckpt-{p.version:012d}.h5")
    checksum = _checksum(p.job_key, p.version, p.iteration, p.created, p.keys, p.arrays,
                         p.orders, p.texts)
    write_hdf5(path, lambda h5: _fill_h5(h5, p, checksum))
    return path


# -- reading -------------------------------------------------------------------------------------

def _int_attr(attrs: dict, key: str) -> int:
    value = attrs[key]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FormatError(f"attribute {key!r} = {value!r} is not an integer")
    return int(value)


def _read_root(h5) -> dict:
    """Root attributes as python values, after checking format and version (FormatError if not ours)."""
    attrs = root_attributes(h5, FORMAT, FORMAT_VERSION, "checkpoint")
    for key in ("job_key", "version", "iteration", "created", "model_keys", "checksum",
                *_JSON_FIELDS):
        if key not in attrs:
            raise FormatError(f"missing attribute {key!r}")
    return attrs


def _read_file(path: str) -> Checkpoint:
    """The checkpoint in ``path``, fully validated (checksum included); FormatError otherwise."""
    import h5py

    try:
        with open_hdf5(path, "checkpoint") as h5:
            attrs = _read_root(h5)
            job_key = attribute_text(attrs["job_key"], "job_key")
            version = _int_attr(attrs, "version")
            iteration = _int_attr(attrs, "iteration")
            created = attrs["created"]
            if not isinstance(created, (float, np.floating)):
                raise FormatError(f"attribute 'created' = {created!r} is not a float")
            created = float(created)
            texts = {name: attribute_text(attrs[name], name) for name in _JSON_FIELDS}
            keys = json.loads(attribute_text(attrs["model_keys"], "model_keys"))
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise FormatError("attribute 'model_keys' is not a list of strings")
            group = h5.get("model")
            if not isinstance(group, h5py.Group):
                raise FormatError("missing group 'model'")
            if len(group) != len(keys):
                raise FormatError(f"{len(group)} model datasets for {len(keys)} model keys")
            arrays, orders = [], []
            for i, key in enumerate(keys):
                ds = group.get(str(i))
                if not isinstance(ds, h5py.Dataset):
                    raise FormatError(f"missing dataset model/{i} ({key!r})")
                if attribute_text(ds.attrs.get("key", b""), f"model/{i}.key") != key:
                    raise FormatError(f"dataset model/{i} is not {key!r}")
                arr, order = read_array(ds, f"dataset model/{i} ({key!r})", "checkpoint")
                if arr.dtype.kind not in NUMERIC_KINDS:
                    raise FormatError(f"dataset model/{i} ({key!r}) holds {arr.dtype}, not numbers")
                arrays.append(arr)  # in its saved order: the checksum reads C-order bytes
                orders.append(order)
            stored_sum = attribute_text(attrs["checksum"], "checksum")
        expected = _checksum(job_key, version, iteration, created, keys, arrays, orders, texts)
        if stored_sum != expected:
            raise FormatError("checksum mismatch: the file is corrupted")
        fields = {}
        for name in _JSON_FIELDS:
            value = from_json(json.loads(texts[name]))
            if not isinstance(value, dict):
                raise FormatError(f"attribute {name!r} is not a JSON object")
            fields[name] = value
    except FormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise FormatError(f"unreadable ({type(exc).__name__}: {exc})") from None
    return Checkpoint(job_key=job_key, version=version, iteration=iteration, model=dict(zip(keys, arrays)),
                      created=created, **fields)


def _peek_job_key(path: str) -> str | None:
    """The job_key of a file of our format, from its root attributes only; None otherwise."""
    try:
        with open_hdf5(path, "checkpoint") as h5:
            return attribute_text(_read_root(h5)["job_key"], "job_key")
    except Exception:
        return None


# -- the store -----------------------------------------------------------------------------------

class CheckpointStore:
    """Checkpoint files of one job in ``directory``.

    Parameters
    ----------
    directory : path
        Created on the first save if missing.
    keep : int >= 1
        How many of this job's newest checkpoints to keep.
    job_key : str or None
        This job's key (:func:`job_key_for`). :meth:`save` refuses checkpoints
        of another key, and :meth:`latest` / :meth:`load` refuse to resume
        from one (:class:`CheckpointMismatchError`). None accepts any key
        (inspection tools).
    max_pending : int >= 1
        :meth:`save_async` holds at most this many checkpoints (the one being
        written and the ones waiting); beyond, it blocks until the writer
        catches up.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, job_key: str | None = None,
                 *, max_pending: int = 2):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be an integer >= 1, got {max_pending!r}")
        if job_key is not None and (not isinstance(job_key, str) or not job_key):
            raise ValueError(f"job_key must be a non-empty string or None, got {job_key!r}")
        self.directory = os.fspath(directory)
        self.keep = keep
        self.job_key = job_key
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._write_lock = threading.Lock()  # one writer at a time: save() and the thread
        # Job keys of files already read or written here, by path with the file's
        # identity (inode, mtime, size): rotating after every write would otherwise
        # open each kept file again (a few ms of CPU each, taken from the workers
        # on a small host). A removed file's entry goes with it.
        self._known_keys: dict[str, tuple[tuple, str | None]] = {}
        self._directory_lock: _DirectoryLock | None = None  # open_job_store's; released by close()

    # -- saving ----------------------------------------------------------------------------------

    def _check_key(self, ckpt: Checkpoint) -> None:
        if self.job_key is not None and ckpt.job_key != self.job_key:
            raise CheckpointMismatchError(
                f"checkpoint of job {ckpt.job_key!r} cannot be saved in the store of job "
                f"{self.job_key!r}"
            )

    def _write(self, p: _Prepared) -> str:
        with self._write_lock:
            try:
                os.makedirs(self.directory, exist_ok=True)
                path = _write_atomic(self.directory, p)
            except OSError as exc:
                if not exc.errno:
                    raise
                # Say where: "[Errno 28] No space left on device" alone names no disk.
                raise OSError(exc.errno, f"could not write a checkpoint in {self.directory}: "
                                         f"{os.strerror(exc.errno)}") from None
            self._remember_key(path, p.job_key)
            self._rotate(p.job_key, p.version)
            return path

    @staticmethod
    def _identity(path: str) -> tuple | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _remember_key(self, path: str, job_key: str | None) -> None:
        identity = self._identity(path)
        if identity is not None:
            self._known_keys[path] = (identity, job_key)

    def _job_key_of(self, path: str) -> str | None:
        """The file's job key, read once per file version (a rewritten file is read again)."""
        known = self._known_keys.get(path)
        if known is not None and known[0] == self._identity(path):
            return known[1]
        key = _peek_job_key(path)
        self._remember_key(path, key)
        return key

    def save(self, ckpt: Checkpoint) -> str:
        """Write ``ckpt`` now, atomically; return its path. Waits for pending async saves first."""
        if self._closed:
            raise CheckpointError("the checkpoint store is closed")
        self._check_key(ckpt)
        p = _prepare(ckpt)
        self.flush()
        return self._write(p)

    def save_async(self, ckpt: Checkpoint) -> None:
        """Write ``ckpt`` on the background writer thread; return once it is handed over.

        The model arrays are copied before this returns, so the caller may
        change them in place. Blocks while ``max_pending`` checkpoints are
        still held (back-pressure). Validation errors raise here; a write
        error is raised by the next :meth:`save_async`, :meth:`flush` or
        :meth:`close`.
        """
        if self._closed:
            raise CheckpointError("the checkpoint store is closed")
        self._check_key(ckpt)
        p = _prepare(ckpt)
        with self._idle:
            self._raise_error()
            while self._pending >= self.max_pending:
                self._idle.wait()
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="drizzle-checkpoint-writer",
                                                daemon=True)
                self._thread.start()
        self._queue.put(p)

    def _run(self) -> None:
        while True:
            p = self._queue.get()
            if p is None:
                return
            try:
                self._write(p)
            except BaseException as exc:  # noqa: BLE001 - re-raised by flush()
                with self._lock:
                    if self._error is None:
                        self._error = exc
            finally:
                del p
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _raise_error(self) -> None:
        # Called with self._lock held.
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def pending(self) -> int:
        """How many async checkpoints are held (being written or waiting)."""
        with self._lock:
            return self._pending

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every async checkpoint is written; re-raise a writer error.

        Raises TimeoutError if they are not written within ``timeout`` seconds.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(
                    f"{self._pending} checkpoint(s) still being written after {timeout:g} s")
            self._raise_error()

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the writer thread (and release the directory's lock). Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(timeout)
                self._thread = None
            if self._directory_lock is not None:
                self._directory_lock.release()
                self._directory_lock = None

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rotation --------------------------------------------------------------------------------

    def _files(self) -> list[tuple[int, str]]:
        """(version, path) of the files named like checkpoints, newest first."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            m = _NAME.match(name)
            if m:
                path = os.path.join(self.directory, name)
                if os.path.isfile(path):
                    found.append((int(m.group(1)), path))
        found.sort(reverse=True)
        return found

    def _remove_stale_temps(self) -> bool:
        removed = False
        now = time.time()
        for name in os.listdir(self.directory):
            if _TEMP.match(name):
                path = os.path.join(self.directory, name)
                try:
                    if now - os.stat(path).st_mtime > STALE_TEMP_SECONDS:
                        os.unlink(path)
                        removed = True
                except FileNotFoundError:
                    pass
        return removed

    def _rotate(self, job_key: str, version: int) -> None:
        kept = 0
        removed = self._remove_stale_temps()
        for v, path in self._files():
            if v == version:
                kept += 1
                continue
            if self._job_key_of(path) != job_key:
                continue  # another job's, a foreign or an unreadable file: not ours to delete
            if v > version or kept >= self.keep:
                self._known_keys.pop(path, None)
                try:
                    os.unlink(path)
                    removed = True
                except FileNotFoundError:
                    pass
            else:
                kept += 1
        if removed:
            fsync_dir(self.directory)

    # -- reading ---------------------------------------------------------------------------------

    def _mismatch(self, path: str, other: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"checkpoint {path} belongs to job {other!r}, not to this job {self.job_key!r} "
            "(a different algorithm or different parameters); refusing to resume from it. "
            "Use another checkpoint directory, or remove that file to start afresh"
        )

    def load(self, path: str | os.PathLike) -> Checkpoint:
        """The checkpoint in ``path``, validated like :meth:`latest`.

        Raises :class:`CheckpointError` naming the file and the reason when it
        is damaged or foreign, :class:`CheckpointMismatchError` when it
        belongs to another job, FileNotFoundError when it does not exist.
        """
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            ckpt = _read_file(path)
        except FormatError as exc:
            raise CheckpointError(f"invalid checkpoint {path}: {exc}") from None
        if self.job_key is not None and ckpt.job_key != self.job_key:
            raise self._mismatch(path, ckpt.job_key)
        return ckpt

    def latest(self, *, strict: bool = True) -> Checkpoint | None:
        """The newest valid checkpoint of this job, or None if there is none.

        Files are tried newest first. A damaged, truncated, unreadable or
        foreign file is skipped with a :class:`CheckpointWarning` naming it
        and the reason. A valid checkpoint of another job raises
        :class:`CheckpointMismatchError` (``strict=False``: skipped with a
        warning instead).
        """
        for version, path in self._files():
            try:
                ckpt = _read_file(path)
            except FormatError as exc:
                warnings.warn(f"skipping checkpoint {path}: {exc}", CheckpointWarning, stacklevel=2)
                continue
            if ckpt.version != version:
                warnings.warn(f"skipping checkpoint {path}: it holds version {ckpt.version}, "
                              "not the one its name says", CheckpointWarning, stacklevel=2)
                continue
            if self.job_key is not None and ckpt.job_key != self.job_key:
                if strict:
                    raise self._mismatch(path, ckpt.job_key)
                warnings.warn(f"skipping checkpoint {path}: it belongs to job {ckpt.job_key!r}, "
                              f"not {self.job_key!r}", CheckpointWarning, stacklevel=2)
                continue
            return ckpt
        return None

    def list(self) -> list[CheckpointInfo]:
        """Every file named like a checkpoint, newest first, fully validated."""
        out = []
        for version, path in self._files():
            try:
                ckpt = _read_file(path)
            except FormatError as exc:
                out.append(CheckpointInfo(path, version, False, str(exc)))
                continue
            reason = None
            if ckpt.version != version:
                reason = f"holds version {ckpt.version}, not the one its name says"
            elif self.job_key is not None and ckpt.job_key != self.job_key:
                reason = f"belongs to job {ckpt.job_key!r}, not {self.job_key!r}"
            out.append(CheckpointInfo(path, version, reason is None, reason, ckpt.job_key,
                                      ckpt.iteration, ckpt.created))
        return out


# -- one job's directory under a checkpoint root -------------------------------------------------

# A supervisor (``drizzle-ml train``/``stream``) names a file here; each job's
# checkpoint directory is appended to it when opened, so that the supervisor
# restarts from, and reports, this job's checkpoints, not those of another job
# sharing the root.
NOTE_ENV = "DRIZZLE_CHECKPOINT_NOTE"
_LOCK_NAME = ".lock"


class _DirectoryLock:
    """An exclusive ``flock`` on ``<directory>/.lock``, held until released or the process ends.

    The kernel drops the lock when its holder dies (even by SIGKILL), so a
    crashed job never leaves its directory locked; ``flock`` works across
    hosts on NFS (Linux maps it to POSIX locks there).
    """

    def __init__(self, directory: str):
        import fcntl
        import socket

        self._fd: int | None = None
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, _LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise CheckpointInUseError(
                f"checkpoint directory {directory} is in use by another running copy of this job "
                f"({holder}); give each running job its own checkpoint directory") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    __del__ = release  # a store dropped without close() does not keep its directory locked


def job_directory(root: str | os.PathLike, index: int, job_key: str) -> str:
    """``<root>/job-<index>-<hash>``: the directory of the ``index``-th job of a fit, by its key's hash."""
    return os.path.join(os.fspath(root), f"job-{index}-{job_key.rsplit('-', 1)[-1]}")


def _other_jobs(root: str, index: int, mine: str) -> list[str]:
    """Directories under ``root`` of the ``index``-th job of other fits that hold a valid checkpoint."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(root, name)
        if name.startswith(f"job-{index}-") and path != mine and os.path.isdir(path):
            if any(c.valid for c in CheckpointStore(path).list()):
                out.append(path)
    return out


def open_job_store(root: str | os.PathLike, index: int, job_key: str, *,
                   resume: bool) -> tuple[CheckpointStore, Checkpoint | None]:
    """The checkpoint store of one job under ``root``, locked for this process; and where to resume.

    Returns ``(store, checkpoint)``: ``checkpoint`` is this job's newest valid
    checkpoint when ``resume`` (None: start from the beginning). With
    ``resume``, a fit whose first job (``index`` 0) has no checkpoint while
    other fits' first jobs do is refused (:class:`CheckpointMismatchError`):
    the parameters or the data probably changed since. Raises
    :class:`CheckpointInUseError` when another running process holds the
    job's directory. ``store.close()`` releases it.
    """
    root = os.fspath(root)
    if os.path.exists(root) and not os.path.isdir(root):  # else the error names job-<k>-<hash> inside it
        raise CheckpointError(f"checkpoint directory {root} is a file, not a directory")
    directory = job_directory(root, index, job_key)
    created = not os.path.isdir(directory)
    lock = _DirectoryLock(directory)
    store = CheckpointStore(directory, job_key=job_key, max_pending=1)
    store._directory_lock = lock
    try:
        note = os.environ.get(NOTE_ENV)
        if note:
            with open(note, "a") as f:
                f.write(directory + "\n")
        resumed = store.latest() if resume else None
        if resume and resumed is None and index == 0:
            others = _other_jobs(root, index, directory)
            if others:
                raise CheckpointMismatchError(
                    f"cannot resume: {root} holds no checkpoint of this job ({job_key}), only of other jobs "
                    f"({', '.join(os.path.basename(o) for o in others)}: another algorithm, other parameters "
                    "or other data). Use another checkpoint directory, or start without resuming")
    except BaseException:
        store.close()
        if created:  # refused before it began: leave no empty job directory to puzzle over
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, _LOCK_NAME))
                os.rmdir(directory)
        raise
    return store, resumed


@contextlib.contextmanager
def closing_store(store: CheckpointStore | None) -> Iterator[CheckpointStore | None]:
    """Close ``store`` (releasing its job directory) when the block ends.

    A failure to close (the last checkpoint could not be written) is raised
    after a block that succeeded; after a block that failed, the block's own
    error is the one raised.
    """
    if store is None:
        yield None
        return
    try:
        yield store
    except BaseException:
        with contextlib.suppress(Exception):
            store.close(timeout=60.0)
        raise
    store.close(timeout=60.0)


def noted_directories(note: str) -> list[str]:
    """The job directories a supervised job noted in the file ``note`` (oldest first, no repeats)."""
    try:
        with open(note) as f:
            lines = [line.strip() for line in f]
    except OSError:
        return []
    return list(dict.fromkeys(line for line in lines if line))
