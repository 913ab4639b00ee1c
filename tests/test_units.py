"""Engine parts that need no MPI job: layout, tree, store, partitioning (the tuner: test_tuner.py)."""

import pickle
import socket

import numpy as np
import pytest

from drizzle_ml.data import row_bounds
from drizzle_ml.doorbell import Doorbell, bell_address
from drizzle_ml.layout import Layout
from drizzle_ml.store import ModelStore
from drizzle_ml.tree import ReduceTree
from drizzle_ml.tuner import check_group_size


def test_layout_round_trip_mixed_dtypes_and_nesting():
    value = {"a": np.arange(5.0), "b": (np.ones((2, 3), np.float32), 2.5, np.int64(7)), "c": [np.zeros(0)]}
    layout = Layout(value)
    buf = layout.new_buffer()
    layout.pack(value, buf)
    out = layout.unpack(buf)
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["b"][0].dtype == np.float32 and out["b"][0].shape == (2, 3)
    assert out["b"][1] == 2.5 and out["b"][2] == 7
    assert isinstance(out["c"], list) and out["c"][0].shape == (0,)
    assert pickle.loads(pickle.dumps(layout)) == layout


def test_layout_rejects_changed_shapes_and_objects():
    layout = Layout((np.zeros(3), np.zeros(2)))
    with pytest.raises(ValueError, match="shape"):
        layout.pack((np.zeros(4), np.zeros(2)), layout.new_buffer())
    with pytest.raises(ValueError, match="structure"):
        layout.pack((np.zeros(3),), layout.new_buffer())
    with pytest.raises(TypeError, match="cannot pack"):
        Layout({"a": "text"})


@pytest.mark.parametrize("workers,fanout", [(1, 2), (2, 2), (5, 2), (7, 3), (16, 4)])
def test_tree_parents_and_children_agree(workers, fanout):
    tree = ReduceTree(workers, fanout)
    seen = set()
    for w in range(workers):
        for c in tree.children(w):
            assert tree.parent(c) == w
            seen.add(c)
    assert seen == set(range(1, workers))
    assert tree.parent(0) is None
    # depth: longest chain of parents
    longest = 0
    for w in range(workers):
        d = 0
        while tree.parent(w) is not None:
            w, d = tree.parent(w), d + 1
        longest = max(longest, d)
    assert tree.depth == longest


def test_tree_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_workers"):
        ReduceTree(0)
    with pytest.raises(ValueError, match="fanout"):
        ReduceTree(3, 0)


def test_store_versions_history_and_readonly():
    store = ModelStore(history=3)
    with pytest.raises(LookupError, match="no model version"):
        store.latest()
    for v in range(5):
        store.commit(v, {"w": np.full(2, float(v))}, iteration=v)
    assert store.versions() == [2, 3, 4]
    assert store.latest().version == 4
    np.testing.assert_array_equal(store.get(3).model["w"], [3.0, 3.0])
    with pytest.raises(LookupError, match="kept: 2..4"):
        store.get(0)
    with pytest.raises(ValueError, match="not newer"):
        store.commit(4, {"w": np.zeros(2)}, iteration=4)
    with pytest.raises(ValueError, match="read-only"):
        store.latest().model["w"][0] = 1.0


def test_store_keeps_wide_models_within_its_byte_budget():
    store = ModelStore(history=16, max_bytes=3 * 800)  # three versions of 100 doubles
    for v in range(6):
        store.commit(v, {"w": np.full(100, float(v))}, iteration=v)
    assert store.versions() == [3, 4, 5]
    # The newest version and the newest durable one stay, whatever their size.
    tiny = ModelStore(max_bytes=0)
    tiny.commit(0, {"w": np.zeros(10)}, 0)
    tiny.publish(1, {"w": np.ones(10)}, 1)
    assert tiny.versions() == [0, 1]
    with pytest.raises(ValueError, match="max_bytes must be >= 0, got -1"):
        ModelStore(max_bytes=-1)


def test_store_wait_for_times_out():
    store = ModelStore()
    store.commit(0, {"w": np.zeros(1)}, 0)
    with pytest.raises(TimeoutError, match="version 5"):
        store.wait_for(5, timeout=0.05)
    assert store.wait_for(0, timeout=0.05).version == 0


def test_row_bounds_balanced_and_checked():
    np.testing.assert_array_equal(row_bounds(10, 3), [0, 4, 7, 10])
    np.testing.assert_array_equal(row_bounds(3, 3), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="fewer than the 4 workers"):
        row_bounds(3, 4)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "big", True])
def test_group_size_validation(bad):
    with pytest.raises(ValueError, match="group_size"):
        check_group_size(bad)


def test_layout_unpack_reuses_views_and_sees_new_data():
    layout = Layout({"a": np.zeros(3), "s": 1.0})
    buf = layout.new_buffer()
    layout.pack({"a": np.arange(3.0), "s": 2.0}, buf)
    first = layout.unpack(buf)
    assert first["s"] == 2.0
    layout.pack({"a": np.full(3, 7.0), "s": 9.0}, buf)
    second = layout.unpack(buf)
    assert second["a"] is first["a"]  # same view, no new allocation
    np.testing.assert_array_equal(second["a"], [7.0, 7.0, 7.0])
    assert second["s"] == 9.0 and first["s"] == 2.0  # scalars are read afresh
    other = layout.new_buffer()
    layout.pack({"a": np.ones(3), "s": 0.0}, other)
    np.testing.assert_array_equal(layout.unpack(other)["a"], np.ones(3))


def test_dataset_fingerprint_sees_every_change():
    import scipy.sparse as sp

    from drizzle_ml.data import ArrayDataset

    rng = np.random.default_rng(0)
    X = rng.standard_normal((5000, 17))  # 85,000 words: several hash chunks and a partial one
    base = ArrayDataset(X).dataset_id
    assert ArrayDataset(X.copy()).dataset_id == base
    changed = X.copy()
    changed[4321, 3] = np.nextafter(changed[4321, 3], 1.0)  # one bit of one value
    swapped = X.copy()
    swapped[[0, 4999]] = swapped[[4999, 0]]
    # Sign flips change a word's top bit only; an even number of them in one chunk
    # cancelled in a plain multiply-and-add hash (-X hashed like X).
    two_signs = X.copy()
    two_signs[0, 0] *= -1
    two_signs[5, 3] *= -1
    others = [changed, swapped, X.astype(np.float32), X[:-1], X.reshape(17, 5000), -X, two_signs]
    ids = {base} | {ArrayDataset(a).dataset_id for a in others}
    assert len(ids) == 1 + len(others)
    tail = np.arange(13, dtype=np.int8)  # bytes beyond the last whole word count too
    assert ArrayDataset(tail).dataset_id != ArrayDataset(tail + (np.arange(13) == 12)).dataset_id
    assert ArrayDataset(X, np.zeros(5000)).dataset_id != ArrayDataset(X, np.ones(5000)).dataset_id
    assert ArrayDataset(sp.csr_matrix(X)).dataset_id != base


def test_a_speculative_dataset_id_is_confirmed_or_corrected_in_the_background():
    from drizzle_ml.data import ArrayDataset

    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, 11))
    y1, y2 = np.zeros(3000), np.arange(3000.0)
    first = ArrayDataset(X, y1)
    again = ArrayDataset(X, y2, speculate=True)  # the same object: X's earlier digest, new y on top
    assert again.speculative and again.dataset_id == ArrayDataset(X.copy(), y2).dataset_id
    assert again.confirm() and not again.speculative and again.confirm()
    assert not ArrayDataset(X.copy(), y1, speculate=True).speculative  # another object: hashed now
    X[1234, 5] += 1.0  # in place: the object and its buffer are the same
    checks = []
    stale = ArrayDataset(X, y1, speculate=True)
    stale.add_check(lambda ds: checks.append(ds.dataset_id))
    assert stale.speculative and stale.dataset_id == first.dataset_id  # taken for now...
    assert stale.confirm() is False  # ...and found out
    assert stale.dataset_id == ArrayDataset(X.copy(), y1).dataset_id != first.dataset_id
    assert checks == [first.dataset_id, stale.dataset_id]  # the checks ran again on the new content
    # The confirmed digest is remembered: the next refit speculates with the new content's id.
    assert ArrayDataset(X, y1, speculate=True).dataset_id == stale.dataset_id


def test_store_pickles_with_its_versions():
    store = ModelStore(history=2)
    for v in (1, 2, 3):
        store.commit(v, {"w": np.full(2, v)}, v)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.versions() == [2, 3] and copy.latest().model["w"][0] == 3
    copy.commit(4, {"w": np.zeros(2)}, 4)  # the copy has a working lock
    assert copy.versions() == [3, 4]


def test_atomic_output_replaces_whole_files_or_nothing(tmp_path):
    import os

    from drizzle_ml.files import atomic_output

    target = tmp_path / "out.bin"
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_output(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("half-way")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        with atomic_output(target, overwrite=False):
            pass
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_output(tmp_path / "no" / "x.bin"):
            pass


def test_supervisor_bounds_a_graceful_stop_and_kills_what_ignores_signals():
    import os
    import signal as sig
    import sys as _sys
    import threading as _threading
    import time as _time

    from drizzle_ml.launch.supervisor import run_supervised

    # A job that ignores the graceful signal and SIGTERM: the graceful wait
    # runs out, SIGTERM is forwarded, and after the grace period it is killed.
    stubborn = [_sys.executable, "-c", "import signal, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    timer = _threading.Timer(0.5, lambda: os.kill(os.getpid(), sig.SIGTERM))
    timer.start()
    t0 = _time.monotonic()
    code = run_supervised(stubborn, grace=0.5, graceful=sig.SIGUSR1, graceful_wait=0.5)
    assert code == 128 + sig.SIGTERM and _time.monotonic() - t0 < 10


def test_program_modules_do_not_import_scikit_learn():
    # Workers unpickle programs; importing scikit-learn (and scipy.stats) would add seconds to every start.
    import subprocess
    import sys

    code = ("import sys, pickle\n"
            "from drizzle_ml.algorithms import kmeans_programs, pca_programs, normal_equations, optim, online\n"
            "import drizzle_ml.worker\n"
            "pickle.loads(pickle.dumps(kmeans_programs.Lloyd(0.0, 10)))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    code = "import sys, drizzle_ml.algorithms.kmeans; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True"  # the check above can see scikit-learn when it is imported


def test_hdf5_files_are_recognised_after_a_user_block_and_checked_for_format(tmp_path):
    import h5py

    from drizzle_ml.h5files import has_hdf5_signature, open_hdf5, root_attributes

    path = str(tmp_path / "ub.h5")
    with h5py.File(path, "w", userblock_size=1024) as h5:  # the superblock starts at byte 1024
        h5.attrs["format"], h5.attrs["format_version"] = "drizzle-ml-model", 2
    assert has_hdf5_signature(path)
    with open_hdf5(path, "model") as h5:
        with pytest.raises(ValueError, match=r"model file format version 2, but this drizzle-ml reads versions "
                                             r"1 to 1 \(upgrade"):
            root_attributes(h5, "drizzle-ml-model", 1, "model file")
        assert root_attributes(h5, "drizzle-ml-model", 2, "model file")["format"] == "drizzle-ml-model"
        with pytest.raises(ValueError, match=r"not a drizzle-ml checkpoint \(format 'drizzle-ml-model'"):
            root_attributes(h5, "drizzle-ml-checkpoint", 1, "checkpoint")
    (tmp_path / "text.h5").write_bytes(b"x" * 4000)
    assert not has_hdf5_signature(str(tmp_path / "text.h5"))
    with pytest.raises(ValueError, match="not an HDF5 file .*so not a drizzle-ml model$"):
        open_hdf5(str(tmp_path / "text.h5"), "model")
    data = open(path, "rb").read()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="^a truncated or corrupted HDF5 file"):
        open_hdf5(str(tmp_path / "cut.h5"), "model")


def test_supervisor_keeps_draining_stderr_when_the_line_callback_fails(capfd):
    import sys

    from drizzle_ml.launch.supervisor import run_supervised

    def broken(line):
        raise RuntimeError("callback bug")

    # 500 kB of stderr: more than a pipe holds, so a pump that stopped would block the child (until `timeout`).
    code = run_supervised(["timeout", "30", sys.executable, "-c",
                           "import sys\nfor _ in range(5000): sys.stderr.write('x' * 99 + '\\n')"],
                          on_stderr_line=broken)
    assert code == 0
    assert capfd.readouterr().err.count("x" * 99) == 5000


def test_unpacking_a_buffer_used_once_keeps_nothing_of_it():
    # The driver receives each published model version into a new buffer: the layout must
    # not keep those buffers alive (it caches views only for the engine's reused ring buffers).
    import gc
    import weakref

    layout = Layout({"w": np.zeros(3), "n": 1.0})
    sent = layout.new_buffer()
    layout.pack({"w": np.arange(3.0), "n": 2.0}, sent)
    buf = sent.copy()  # as received
    gone = weakref.ref(buf)
    value = layout.unpack(buf, reused=False)
    assert value["w"].tolist() == [0.0, 1.0, 2.0] and value["n"] == 2.0
    del buf, value
    gc.collect()
    assert gone() is None
    kept = layout.new_buffer()
    assert layout.unpack(kept)["w"] is layout.unpack(kept)["w"]  # reused buffers keep their views


def test_a_doorbell_ends_a_sleep_when_rung_and_clears_its_rings():
    bell, ringer = Doorbell(), Doorbell()
    try:
        assert bell.port > 0
        assert bell.sleep(0.001) is False  # not rung: the whole step is slept
        for _ in range(3):
            ringer.ring(("127.0.0.1", bell.port))
        assert bell.sleep(60.0) is True  # rung before it slept: returns at once, not after a minute
        assert bell.rings == 3  # all three rings cleared by one wake
        assert bell.sleep(0.001) is False
        ringer.ring(None)  # a rank without a doorbell: nothing to ring
        gone = Doorbell()
        port = gone.port
        gone.close()
        ringer.ring(("127.0.0.1", port))  # nobody listens there any more: a ring is only a hint
        assert gone.sleep(0.001) is False  # a closed doorbell still sleeps, like one that is off
    finally:
        bell.close()
        ringer.close()


def test_doorbells_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DRIZZLE_DOORBELL", "0")
    off = Doorbell()
    assert off.port == 0 and off.sleep(0.001) is False
    off.ring(("127.0.0.1", 9))  # rings nobody


def test_bell_addresses_are_loopback_here_and_none_when_unknown():
    assert bell_address(socket.gethostname(), 4321) == ("127.0.0.1", 4321)
    assert bell_address(socket.gethostname(), 0) is None  # that rank has no doorbell
    assert bell_address("no-such-host.invalid", 4321) is None


def test_greedy_kmeans_plusplus_seeds_as_well_as_scikit_learns():
    from sklearn.cluster import kmeans_plusplus
    from sklearn.datasets import make_blobs

    from drizzle_ml.algorithms.online import greedy_kmeans_plusplus

    X, _ = make_blobs(2000, centers=6, random_state=3)

    def inertia(centers):
        return ((X[:, None, :] - centers[None]) ** 2).sum(-1).min(axis=1).sum()

    ours = np.median([inertia(greedy_kmeans_plusplus(X, 6, seed)) for seed in range(9)])
    theirs = np.median([inertia(kmeans_plusplus(X, 6, random_state=seed)[0]) for seed in range(9)])
    assert ours <= 1.2 * theirs
    assert np.array_equal(greedy_kmeans_plusplus(X, 6, 4), greedy_kmeans_plusplus(X, 6, 4))  # seeded
    assert np.array_equal(greedy_kmeans_plusplus(np.ones((5, 2)), 3, 0), np.ones((3, 2)))  # one distinct row


def test_poll_trusting_a_doorbell_sleeps_long_even_after_a_stale_ring():
    from drizzle_ml.waiting import WaitPolicy, poll

    slept, rings, answers = [], iter([False, True, False, False]), iter([0, 0, 0, 0, 0, 1])
    looks = []

    def sleep(seconds):
        slept.append(seconds)
        return next(rings)

    def test():
        looks.append(len(slept))
        return next(answers)

    policy = WaitPolicy(timeout=5.0, spin=0.001, max_sleep=0.01)
    assert poll(test, policy, sleep=sleep, bell=True) == 1
    # No spinning (a ring wakes it): asleep after two looks. A ring whose message the next look
    # does not find was stale: the steps stay long.
    assert looks == [0, 0, 1, 2, 3, 4]
    assert slept == [0.01, 0.01, 0.01, 0.01]
    slept.clear()
    rings, answers = iter([False, True, False, False]), iter([0, 0, 0, 0, 0, 1])
    poll(lambda: next(answers), WaitPolicy(timeout=5.0, spin=0.0, max_sleep=0.01), sleep=sleep)
    # Without the bell: back-off from short steps, short again after a ring (a message may come in steps).
    assert slept == pytest.approx([2e-5, 4e-5, 2e-5, 4e-5])


def test_look_twice_looks_again_only_after_finding_nothing():
    from drizzle_ml.waiting import look_twice

    calls = []

    def probe(results):
        it = iter(results)
        return lambda: calls.append(1) or next(it)

    assert look_twice(probe(["message"])) == "message" and len(calls) == 1
    calls.clear()
    assert look_twice(probe([None, "message"])) == "message" and len(calls) == 2
    calls.clear()
    assert look_twice(probe([None, None, "message"])) is None and len(calls) == 2


def test_an_ended_job_names_the_worker_its_watcher_saw_die_first_even_when_late():
    import subprocess
    import threading

    from drizzle_ml.protocol import Hello
    from drizzle_ml.worker_job import LaunchedJob

    job = LaunchedJob()
    job.process = subprocess.Popen(["true"])
    job.process.wait()
    workers = [Hello(0, 101, "h"), Hello(1, 102, "h"), Hello(2, 103, "h")]
    # Hydra's notice names a victim of its clean-up (worker 2); the watcher saw worker 1 die first,
    # but on a busy host it notes that only after the driver asks.
    job.output_tail.append("= PID 103 RUNNING AT h\n= EXIT CODE: 9\n")
    job._watching = True
    threading.Timer(0.2, job.deaths.append, args=(1,)).start()
    message, worker = job.death(workers)
    assert worker == 1 and message.startswith("worker 1 (pid 102 on h) died"), message


def test_a_large_report_leaves_its_large_arrays_out_of_its_pickle():
    from drizzle_ml import protocol as P

    big = np.arange(P.OUT_OF_BAND_MIN_BYTES // 8 * 3, dtype=np.float64).reshape(3, -1)
    big.flags.writeable = False  # lent: read-only until the driver has it
    small = np.arange(5.0)
    report = P.GroupReport(job=1, start=0, worker=0, n_done=5, version=5, stopped=False,
                           timings=P.GroupTimings(), model={"S": big, "w": small}, metrics={})
    pickled, arrays = P.split_out_of_band(report)
    assert len(arrays) == 1 and arrays[0].nbytes == big.nbytes and len(pickled) < 4096
    assert np.shares_memory(np.frombuffer(arrays[0], dtype=np.float64), big)  # sent from the model's memory
    received = [np.empty(a.nbytes, dtype=np.uint8) for a in arrays]
    for into, raw in zip(received, arrays):
        into[:] = np.frombuffer(raw, dtype=np.uint8)
    back = P.join_out_of_band(pickled, received)
    assert np.array_equal(back.model["S"], big) and back.model["S"].shape == (3, big.shape[1])
    assert np.shares_memory(back.model["S"], received[0])  # no copy on the driver either
    assert np.array_equal(back.model["w"], small) and back.version == 5


def test_metric_columns_keep_iteration_order_and_metrics_some_iterations_lack():
    from drizzle_ml.metrics import metric_columns

    steps = [{"loss": np.float64(0.5), "converged": False}, {"loss": 0.25, "converged": True}]
    assert metric_columns(steps) == {"loss": [0.5, 0.25], "converged": [0.0, 1.0]}
    assert all(type(v) is float for column in metric_columns(steps).values() for v in column)
    # A line search reports its step only on some iterations: that metric's list is shorter.
    mixed = [{"loss": 3.0}, {"loss": 2.0, "step": 0.5}, {"step": 0.25, "loss": 1.0}]
    assert metric_columns(mixed) == {"loss": [3.0, 2.0, 1.0], "step": [0.5, 0.25]}
    assert metric_columns([]) == {}
