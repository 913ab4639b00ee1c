"""CheckpointStore: real files in tmp_path, no cluster."""

import ast
import errno
import os
import re
import threading
import time
import warnings

import h5py
import numpy as np
import pytest

import drizzle_ml
from drizzle_ml import checkpoint as C
from drizzle_ml.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointStore,
    CheckpointWarning,
    job_key_for,
)

KEY = job_key_for("LogisticRegression", {"C": 1.0, "solver": "lbfgs", "tol": 1e-6})


def model(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "coef": rng.standard_normal((3, 4)),
        "intercept": rng.standard_normal(3).astype(np.float32),
        "lbfgs_s": rng.standard_normal((5, 12)),
        "lbfgs_k": np.array(7, dtype=np.int64),  # 0-d
        "empty": np.empty((0, 4)),
        "counts": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "fortran": np.asfortranarray(rng.standard_normal((2, 3))),
    }


def ckpt(version, key=KEY, m=None, **kw):
    fields = dict(tuner={"size": 16, "auto": True, "lower": 0.05}, rng={"seed": 42, "state": [1, 2, 3]},
                  stream_offsets={"train": 1024}, params={"C": 1.0, "solver": "lbfgs"},
                  metrics={"loss": 0.25, "grad_norm": float("nan")})
    fields.update(kw)
    return Checkpoint(key, version, version * 10, model(version) if m is None else m, **fields)


def names(directory):
    return sorted(os.listdir(directory))


def same_arrays(a, b):
    assert list(a) == list(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes(order="A") == y.tobytes(order="A"), k
        assert x.flags.f_contiguous == y.flags.f_contiguous, k


def test_exports_and_engine_only():
    assert issubclass(CheckpointMismatchError, CheckpointError)
    assert issubclass(CheckpointError, drizzle_ml.DrizzleError)
    assert issubclass(CheckpointWarning, UserWarning)
    for name in ("CheckpointError", "CheckpointMismatchError", "CheckpointWarning"):
        assert name in drizzle_ml.__all__
    tree = ast.parse(open(C.__file__).read())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not [m for m in imported if "algorithms" in m]


def test_job_key_stable_and_distinct():
    a = job_key_for("KMeans", {"k": 3, "init": np.arange(3), "tol": 1e-4})
    assert a == job_key_for("KMeans", {"tol": 1e-4, "init": np.arange(3), "k": 3})  # order-free
    assert a.startswith("KMeans-")
    assert a != job_key_for("KMeans", {"k": 4, "init": np.arange(3), "tol": 1e-4})
    assert a != job_key_for("PCA", {"k": 3, "init": np.arange(3), "tol": 1e-4})
    assert job_key_for("X", {"a": 1, "max_iter": 5}, exclude=["max_iter"]) == \
        job_key_for("X", {"a": 1, "max_iter": 500}, exclude=["max_iter"])
    with pytest.raises(TypeError, match="cannot be stored"):
        job_key_for("X", {"rng": np.random.RandomState(0)})


def test_round_trip_bit_identical(tmp_path):
    store = CheckpointStore(tmp_path, job_key=KEY)
    original = ckpt(7)
    path = store.save(original)
    assert os.path.basename(path) == "ckpt-000000000007.h5"
    for loaded in (store.latest(), store.load(path)):
        same_arrays(original.model, loaded.model)
        assert (loaded.job_key, loaded.version, loaded.iteration) == (KEY, 7, 70)
        assert loaded.tuner == original.tuner and loaded.rng == original.rng
        assert loaded.stream_offsets == {"train": 1024} and loaded.params == original.params
        assert loaded.metrics["loss"] == 0.25 and np.isnan(loaded.metrics["grad_norm"])
        assert loaded.created == original.created
    info = store.list()
    assert [(i.version, i.valid, i.iteration) for i in info] == [(7, True, 70)]


def test_more_dtypes_round_trip(tmp_path):
    m = {"f16": np.float16([1.5, -2]), "u8": np.arange(4, dtype=np.uint8), "c": np.array([1 + 2j]),
         "be": np.arange(3, dtype=">f8"), "i0": np.array(3, dtype=np.int32), "e": np.empty(0, np.float32)}
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1, m=m, rng={}, stream_offsets={}))
    same_arrays(m, store.latest().model)


def test_refuses_objects_and_non_json(tmp_path):
    store = CheckpointStore(tmp_path, job_key=KEY)
    with pytest.raises(TypeError, match="object"):
        store.save(ckpt(1, m={"x": np.array([object()], dtype=object)}))
    with pytest.raises(TypeError, match="numeric"):
        store.save(ckpt(1, m={"x": np.array(["a"])}))
    with pytest.raises(TypeError, match="rng"):
        store.save(ckpt(1, rng={"state": np.random.default_rng(0)}))
    with pytest.raises(TypeError, match="non-string key"):
        store.save(ckpt(1, tuner={1: 2}))
    with pytest.raises(CheckpointMismatchError):
        store.save(ckpt(1, key="other-job"))
    assert names(tmp_path) == []


def test_keep_rotation(tmp_path):
    store = CheckpointStore(tmp_path, keep=2, job_key=KEY)
    for v in (1, 3, 5, 8):
        store.save(ckpt(v))
    assert names(tmp_path) == ["ckpt-000000000005.h5", "ckpt-000000000008.h5"]
    assert store.latest().version == 8


def test_rotation_spares_foreign_files_and_supersedes_newer_stale(tmp_path):
    other = CheckpointStore(tmp_path, keep=1, job_key="other-job")
    other.save(ckpt(2, key="other-job"))
    (tmp_path / "ckpt-000000000001.h5").write_text("not mine")
    store = CheckpointStore(tmp_path, keep=1, job_key=KEY)
    store.save(ckpt(9))
    store.save(ckpt(4))  # a run resumed from an older point: 9 is stale, superseded
    assert names(tmp_path) == ["ckpt-000000000001.h5", "ckpt-000000000002.h5", "ckpt-000000000004.h5"]


def test_atomic_crash_leaves_no_trace(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    before = (tmp_path / "ckpt-000000000001.h5").read_bytes()
    seen = []

    def crash(h5, p, checksum):  # fails half-way through the file's contents
        seen.append(p.version)
        h5.attrs["format"] = C.FORMAT
        raise OSError("disk on fire")

    monkeypatch.setattr(C, "_fill_h5", crash)
    with pytest.raises(OSError, match="disk on fire"):
        store.save(ckpt(2))
    assert seen == [2]
    assert names(tmp_path) == ["ckpt-000000000001.h5"]  # no target, no temp
    assert (tmp_path / "ckpt-000000000001.h5").read_bytes() == before
    monkeypatch.undo()
    assert store.latest().version == 1


def test_a_full_disk_is_a_clean_oserror_and_the_last_checkpoint_stays(tmp_path):
    import subprocess

    directory = tmp_path / "small"
    directory.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip() or mount.returncode}")
    try:
        store = CheckpointStore(directory, job_key=KEY)
        store.save(ckpt(1))
        before = (directory / "ckpt-000000000001.h5").read_bytes()
        big = Checkpoint(KEY, 2, 20, {"w": np.ones(20_000)})  # 160 KB: more than the disk has
        with pytest.raises(OSError) as caught:
            store.save(big)
        assert caught.value.errno == errno.ENOSPC
        assert str(caught.value) == f"[Errno 28] could not write a checkpoint in {directory}: No space left on device"
        assert names(directory) == ["ckpt-000000000001.h5"]
        assert (directory / "ckpt-000000000001.h5").read_bytes() == before
        assert store.latest().version == 1
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def test_truncated_file_skipped_with_warning(tmp_path):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    path = store.save(ckpt(2))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.warns(CheckpointWarning, match=r"ckpt-000000000002\.h5") as rec:
        got = store.latest()
    assert got.version == 1
    same_arrays(got.model, model(1))
    assert len(rec) == 1
    info = store.list()
    assert [(i.version, i.valid) for i in info] == [(2, False), (1, True)] and info[0].reason
    with pytest.raises(CheckpointError, match="ckpt-000000000002"):
        store.load(path)


def flip_bit_in(path, key, index=0):
    with h5py.File(path, "r") as h5:
        keys = list(h5["model"])
        ds = next(h5["model"][n] for n in keys if h5["model"][n].attrs["key"] == key)
        offset = ds.id.get_offset() + index * ds.dtype.itemsize
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("key", ["coef", "intercept", "counts"])
def test_flipped_bit_detected_by_checksum(tmp_path, key):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    path = store.save(ckpt(2))
    flip_bit_in(path, key, index=1)
    with h5py.File(path, "r") as h5:  # still a perfectly readable HDF5 file
        assert h5.attrs["version"] == 2
    with pytest.warns(CheckpointWarning, match=r"ckpt-000000000002\.h5.*checksum mismatch"):
        assert store.latest().version == 1


def test_flipped_json_attribute_detected(tmp_path):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    path = store.save(ckpt(2))
    with h5py.File(path, "r+") as h5:
        h5.attrs["stream_offsets"] = '{"train":1025}'
    with pytest.warns(CheckpointWarning, match="checksum mismatch"):
        assert store.latest().version == 1


@pytest.mark.parametrize("attr, value, reason", [
    ("dtype", "<i8", "dataset model/0 ('coef') stores float64 but claims dtype <i8"),
    ("dtype", "<U3", "dataset model/0 ('coef') stores float64 but claims dtype <U3"),
    ("order", "K", "dataset model/0 ('coef') claims order 'K', not 'C' or 'F'"),
])
def test_a_dataset_that_claims_another_dtype_or_order_is_skipped(tmp_path, attr, value, reason):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    path = store.save(ckpt(2))
    with h5py.File(path, "r+") as h5:
        h5["model/0"].attrs[attr] = value
    with pytest.warns(CheckpointWarning, match=r"ckpt-000000000002\.h5: " + re.escape(reason)):
        assert store.latest().version == 1


def test_foreign_and_text_files_skipped(tmp_path):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    with h5py.File(tmp_path / "ckpt-000000000003.h5", "w") as h5:
        h5["x"] = np.arange(3)
    (tmp_path / "ckpt-000000000002.h5").write_text("hello, I am text\n")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(CheckpointWarning) as rec:
        assert store.latest().version == 1
    messages = [str(w.message) for w in rec]
    assert len(messages) == 2
    assert "ckpt-000000000003.h5" in messages[0] and "not a drizzle-ml checkpoint" in messages[0]
    assert "ckpt-000000000002.h5" in messages[1] and "not an HDF5 file" in messages[1]


def test_other_job_refused(tmp_path):
    other = job_key_for("KMeans", {"n_clusters": 3})
    CheckpointStore(tmp_path, job_key=other).save(ckpt(5, key=other))
    store = CheckpointStore(tmp_path, job_key=KEY)
    with pytest.raises(CheckpointMismatchError) as err:
        store.latest()
    assert other in str(err.value) and KEY in str(err.value)
    assert "ckpt-000000000005.h5" in str(err.value)
    with pytest.raises(CheckpointMismatchError):
        store.load(tmp_path / "ckpt-000000000005.h5")
    with pytest.warns(CheckpointWarning, match="belongs to job"):
        assert store.latest(strict=False) is None
    assert CheckpointStore(tmp_path).latest().job_key == other  # job_key=None reads any job
    assert store.list()[0].valid is False


def test_empty_and_missing_directory(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CheckpointStore(tmp_path, job_key=KEY).latest() is None
        assert CheckpointStore(tmp_path / "absent", job_key=KEY).latest() is None
        assert CheckpointStore(tmp_path / "absent", job_key=KEY).list() == []
    store = CheckpointStore(tmp_path / "made" / "here", job_key=KEY)
    store.save(ckpt(0))
    assert store.latest().version == 0


def test_a_checkpoint_directory_that_is_a_file_is_named(tmp_path):
    (tmp_path / "ck").write_text("not a directory")
    with pytest.raises(CheckpointError, match=rf"^checkpoint directory {re.escape(str(tmp_path / 'ck'))} is a file, "
                                              r"not a directory$"):
        C.open_job_store(tmp_path / "ck", 0, KEY, resume=True)


def slow_writes(monkeypatch, store, delay):
    """Slow down the writer; record how many checkpoints the store held at each write."""
    held = []
    real = C._fill_h5

    def slow(path, p, checksum):
        held.append(store.pending())
        time.sleep(delay)
        real(path, p, checksum)

    monkeypatch.setattr(C, "_fill_h5", slow)
    return held


def test_save_async_back_pressure(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=20, job_key=KEY, max_pending=2)
    held = slow_writes(monkeypatch, store, 0.03)
    t0 = time.perf_counter()
    peak = 0
    for v in range(1, 11):
        store.save_async(ckpt(v))
        peak = max(peak, store.pending())
    handed = time.perf_counter() - t0
    assert peak <= 2 and max(held) <= 2
    assert handed >= 7 * 0.03  # save_async waited for the slow writer instead of queueing
    store.flush(timeout=10)
    assert store.pending() == 0
    assert len(held) == 10
    infos = store.list()
    assert [i.version for i in infos] == list(range(10, 0, -1)) and all(i.valid for i in infos)
    same_arrays(store.latest().model, model(10))
    store.close()
    with pytest.raises(CheckpointError, match="closed"):
        store.save_async(ckpt(11))


def test_save_async_error_surfaces_on_flush(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save_async(ckpt(1))
    store.flush(timeout=10)

    def boom(path, p, checksum):
        raise OSError("no space left on device")

    monkeypatch.setattr(C, "_fill_h5", boom)
    store.save_async(ckpt(2))
    with pytest.raises(OSError, match="no space left"):
        store.flush(timeout=10)
    store.flush(timeout=10)  # raised once
    monkeypatch.undo()
    assert names(tmp_path) == ["ckpt-000000000001.h5"]
    store.save_async(ckpt(3))
    store.close()
    assert store.latest().version == 3


def test_flush_timeout(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, job_key=KEY)
    gate = threading.Event()
    real = C._fill_h5
    monkeypatch.setattr(C, "_fill_h5", lambda *a: (gate.wait(10), real(*a)))
    store.save_async(ckpt(1))
    with pytest.raises(TimeoutError):
        store.flush(timeout=0.05)
    gate.set()
    store.close(timeout=10)
    assert store.latest().version == 1


def test_save_async_copies_arrays(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, job_key=KEY)
    gate = threading.Event()
    real = C._fill_h5
    monkeypatch.setattr(C, "_fill_h5", lambda *a: (gate.wait(10), real(*a)))
    m = model(3)
    expected = {k: v.copy(order="K") for k, v in m.items()}
    frozen = drizzle_ml.store.freeze({"coef": m["coef"]})["coef"]  # read-only view of a writable base
    m["frozen_view"] = frozen
    expected["frozen_view"] = frozen.copy()
    c = ckpt(3, m=m)
    store.save_async(c)
    m["coef"] += 1.0  # in place, also changes the frozen view's base
    m["counts"][:] = -1
    c.tuner["size"] = 999
    gate.set()
    store.close(timeout=10)
    got = store.latest()
    same_arrays(expected, got.model)
    assert got.tuner["size"] == 16


def test_sync_save_waits_for_async(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=1, job_key=KEY)
    slow_writes(monkeypatch, store, 0.05)
    store.save_async(ckpt(1))
    store.save(ckpt(2))  # ordered after the pending write: 1 rotated away, 2 stays
    assert names(tmp_path) == ["ckpt-000000000002.h5"]
    store.close()


def test_stale_temp_files_removed(tmp_path):
    old = tmp_path / ".ckpt-000000000004.h5.abc123.tmp"
    fresh = tmp_path / ".ckpt-000000000005.h5.def456.tmp"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * C.STALE_TEMP_SECONDS,) * 2)
    store = CheckpointStore(tmp_path, job_key=KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.latest() is None and store.list() == []  # temp files are not checkpoints
    store.save(ckpt(6))
    assert names(tmp_path) == [fresh.name, "ckpt-000000000006.h5"]  # a live writer's may be fresh


def test_killed_writer_leaves_previous_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys

    store = CheckpointStore(tmp_path, job_key=KEY)
    store.save(ckpt(1))
    script = f"""
import io, time, h5py, numpy as np
from drizzle_ml import checkpoint as C
from drizzle_ml.files import atomic_output
def slow(path, fill):
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        fill(h5)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer()[:100])  # a half-written file...
        f.flush()
        print("writing", flush=True)
        time.sleep(60)                     # ...when the process is killed
C.write_hdf5 = slow
store = C.CheckpointStore({str(tmp_path)!r}, job_key={KEY!r})
store.save(C.Checkpoint({KEY!r}, 2, 20, {{"w": np.arange(1000.0)}}))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    left = names(tmp_path)
    assert "ckpt-000000000002.h5" not in left and len(left) == 2  # checkpoint 1 and a temp file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = store.latest()
    assert got.version == 1
    same_arrays(got.model, model(1))


def test_rotation_reads_each_kept_file_once_and_forgets_removed_ones(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2, job_key=KEY)
    peeks = []
    real = C._peek_job_key
    monkeypatch.setattr(C, "_peek_job_key", lambda path: peeks.append(path) or real(path))
    for v in range(1, 30):
        store.save(ckpt(v))
    assert peeks == []  # every file was written by this store: its key is known
    assert sorted(store._known_keys) == sorted(str(p) for p in tmp_path.glob("ckpt-*.h5"))  # no growth
    (tmp_path / "ckpt-000000000028.h5").write_bytes((tmp_path / "ckpt-000000000028.h5").read_bytes())  # rewritten
    store.save(ckpt(30))
    assert [os.path.basename(p) for p in peeks] == ["ckpt-000000000028.h5"]
