"""The engine in launched mode: real worker processes started by Cluster(n_workers)."""

import os
import signal
import time

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

import drizzle_ml
from drizzle_ml import ArrayDataset, Cluster, HDF5Dataset, ModelStore, WorkerError, WorkerFailedError
from drizzle_ml import protocol as P
from drizzle_ml.testing import Counter, LeastSquaresGD, TreeSum

from .conftest import run_mpi, wait_cluster_gone

RNG = np.random.default_rng(0)
X = RNG.standard_normal((103, 7))
Y = X @ RNG.standard_normal(7) + 0.1 * RNG.standard_normal(103)


def tree_sum(cluster, dataset, group_size=1, scheduling="group"):
    model = {"sums": np.zeros(dataset.X.shape[1] if hasattr(dataset, "X") else 7), "rows": np.zeros(1)}
    return cluster.run(TreeSum(), model, dataset, max_iter=3, group_size=group_size, scheduling=scheduling)


@pytest.mark.parametrize("n_workers", [1, 3, 4])
def test_tree_reduce_equals_numpy_sum(n_workers):
    with Cluster(n_workers, timeout=30, fanout=2) as cluster:
        result = tree_sum(cluster, ArrayDataset(X))
        np.testing.assert_allclose(result.model["sums"], X.sum(axis=0), rtol=1e-12)
        assert result.model["rows"][0] == X.shape[0]
        assert result.converged and result.n_iter == 1
        # the same job twice on the same cluster: bit-identical
        model = lambda: {"coef": np.zeros(7)}
        a = cluster.run(LeastSquaresGD(), model(), ArrayDataset(X, Y), max_iter=40, group_size=7)
        b = cluster.run(LeastSquaresGD(), model(), ArrayDataset(X, Y), max_iter=40, group_size=7)
        assert np.array_equal(a.model["coef"], b.model["coef"])


def test_workers_ring_the_driver_and_jobs_run_without_doorbells(cluster2, monkeypatch):
    lr, iters = 0.1, 30
    model = lambda: {"coef": np.zeros(7)}
    rung = cluster2.run(LeastSquaresGD(lr), model(), ArrayDataset(X, Y), max_iter=iters, group_size=5)
    cluster2.doorbell.sleep(0)  # clear rings that came while the driver was not sleeping
    assert cluster2.doorbell.port > 0 and cluster2.doorbell.rings > 0  # every report rings the driver
    assert cluster2.rings_reliable()  # so the driver sleeps until a ring
    monkeypatch.setenv("DRIZZLE_DOORBELL", "0")  # read by the driver and the worker job it starts
    with Cluster(3, timeout=30) as quiet:
        assert quiet.doorbell.port == 0
        for scheduling in ("group", "bsp"):
            plain = quiet.run(LeastSquaresGD(lr), model(), ArrayDataset(X, Y), max_iter=iters, group_size=5,
                              scheduling=scheduling)
            np.testing.assert_allclose(plain.model["coef"], rung.model["coef"], rtol=1e-12)
        assert quiet.doorbell.rings == 0 and not quiet.rings_reliable()  # it keeps looking in short steps


_RING_AFTER_SEND_JOB = """
from mpi4py import MPI
from drizzle_ml.doorbell import Doorbell
from drizzle_ml.waiting import look_twice

comm = MPI.COMM_WORLD
bell = Doorbell()
port = comm.bcast(bell.port, root=0)
found = 0
for i in range(50):
    if comm.Get_rank() == 1:
        request = comm.isend(b"report" * 800, dest=0, tag=2)
        bell.ring(("127.0.0.1", port))
        comm.recv(source=0, tag=3)
        request.wait()
    else:
        assert bell.sleep(30.0), "no ring"
        if look_twice(lambda: comm.Iprobe(source=1, tag=2)):  # what the driver does when rung
            found += 1
        assert comm.recv(source=1, tag=2) == b"report" * 800
        comm.send(None, dest=1, tag=3)
if comm.Get_rank() == 0:
    print("found", found)
"""


def test_a_rank_rung_after_a_send_finds_the_message_at_its_first_look(tmp_path):
    # MPICH's first probe after the message came makes progress but reports nothing: the driver
    # woken by a report's ring must find it at that look, not after sleeping another step.
    code, out, err = run_mpi(2, _RING_AFTER_SEND_JOB, tmp_path, env={"DRIZZLE_NO_SERVE": "1"})
    assert code == 0, err
    assert "found 50" in out


def test_tree_reduce_two_workers_dense_sparse_and_bsp(cluster2):
    dense = tree_sum(cluster2, ArrayDataset(X))
    np.testing.assert_allclose(dense.model["sums"], X.sum(axis=0), rtol=1e-12)
    csr = sp.random(50, 7, density=0.3, random_state=1, format="csr")
    sparse = tree_sum(cluster2, ArrayDataset(csr))
    np.testing.assert_allclose(sparse.model["sums"], np.asarray(csr.sum(axis=0)).ravel(), rtol=1e-12)
    bsp = tree_sum(cluster2, ArrayDataset(X), scheduling="bsp")
    np.testing.assert_allclose(bsp.model["sums"], X.sum(axis=0), rtol=1e-12)


def test_gradient_descent_matches_numpy_reference(cluster2):
    lr, iters = 0.1, 60
    coef = np.zeros(7)
    for _ in range(iters):
        coef = coef - lr * (X.T @ (X @ coef - Y)) / len(Y)
    for group_size in (1, 10, "auto"):
        result = cluster2.run(LeastSquaresGD(lr), {"coef": np.zeros(7)}, ArrayDataset(X, Y),
                              max_iter=iters, group_size=group_size)
        np.testing.assert_allclose(result.model["coef"], coef, rtol=1e-10)
        assert result.n_iter == iters and result.version == iters


def test_versions_advance_by_one_per_iteration(cluster2):
    store = ModelStore(history=100)
    result = cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X),
                          max_iter=23, group_size=5, store=store)
    assert result.version == 23 and result.model["x"][0] == 23
    assert store.versions() == [0, 5, 10, 15, 20, 23]  # commits at group boundaries
    for v in store.versions():
        assert store.get(v).model["x"][0] == v
        assert store.get(v).iteration == v
    assert [g.n_iterations for g in result.history] == [5, 5, 5, 5, 3]
    assert result.iteration_metrics["rows"] == [float(len(X))] * 23
    # a job continuing from version 23 names it, and the store goes on from there
    more = cluster2.run(Counter(), dict(result.model), ArrayDataset(X), max_iter=4, group_size=3,
                        store=store, version=23, start_iteration=23)
    assert more.version == 27 and store.latest().version == 27


def test_early_stop_inside_a_group_and_cluster_reuse(cluster2):
    result = cluster2.run(Counter(stop_at=7), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X),
                          max_iter=100, group_size=5)
    assert result.converged
    assert result.n_iter == 8 and result.version == 8  # iterations 0..7
    assert [g.n_iterations for g in result.history] == [5, 3]
    # groups sent ahead for the stopped job are discarded; the next job is unaffected
    again = cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X),
                         max_iter=6, group_size=4)
    assert again.version == 6 and not again.converged


def test_history_metrics_are_consistent(cluster2):
    result = cluster2.run(LeastSquaresGD(), {"coef": np.zeros(7)}, ArrayDataset(X, Y), max_iter=30,
                          group_size=10)
    assert len(result.history) == 3
    for g in result.history:
        assert g.wall > 0 and g.compute > 0 and g.execution > 0
        assert g.compute <= g.execution + 1e-9
        assert 0.0 <= g.overhead <= 1.0
        assert g.coordination == pytest.approx(max(g.wall - g.execution, 0.0))
        assert "loss" in g.metrics
    losses = result.iteration_metrics["loss"]
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_program_error_on_a_worker_is_raised_and_cluster_survives(cluster2):
    with pytest.raises(WorkerError, match=r"worker 1 failed: ValueError: injected failure at iteration 3") as info:
        cluster2.run(Counter(fail_at=3, fail_worker=1), {"x": np.zeros(1), "seen": np.zeros(1)},
                     ArrayDataset(X), max_iter=10, group_size=4)
    assert info.value.worker == 1 and "Traceback" in info.value.remote_traceback
    ok = cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=5)
    assert ok.version == 5


def test_version_mismatch_is_an_error(cluster2):
    dataset_id = cluster2.load(ArrayDataset(X))
    job = cluster2.new_job()
    model = {"x": np.zeros(1), "seen": np.zeros(1)}
    from mpi4py import MPI

    cluster2.broadcast(P.StartJob(job, MPI.pickle.dumps(Counter()), dataset_id, model, 0, cluster2.fanout, "group"))
    cluster2.broadcast(P.RunGroup(job, 0, 2, version=5))
    with pytest.raises(WorkerError, match="VersionMismatchError: .*starts from model version 5.*holds version 0"):
        cluster2.collect(lambda m: isinstance(m, P.GroupReport) and m.job == job, 2, "mismatched group")


def test_hdf5_partitions_are_read_by_workers(cluster2, tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["X"] = X
        f["y"] = Y
        g = f.create_group("Xs")
        csr = sp.csr_matrix(X * (np.abs(X) > 1))
        g["data"], g["indices"], g["indptr"] = csr.data, csr.indices, csr.indptr
        g.attrs["shape"] = csr.shape
    dense = tree_sum(cluster2, HDF5Dataset(path))
    np.testing.assert_allclose(dense.model["sums"], X.sum(axis=0), rtol=1e-12)
    sparse = tree_sum(cluster2, HDF5Dataset(path, x_key="Xs", y_key=None))
    np.testing.assert_allclose(sparse.model["sums"], np.asarray(csr.sum(axis=0)).ravel(), rtol=1e-12)


def test_hdf5_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="HDF5 file not found"):
        HDF5Dataset(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(OSError, match="cannot read HDF5 file"):
        HDF5Dataset(bad)
    path = tmp_path / "keys.h5"
    with h5py.File(path, "w") as f:
        f["X"] = X
        f["y"] = Y[:10]
    with pytest.raises(KeyError, match="no dataset 'features'"):
        HDF5Dataset(path, x_key="features")
    with pytest.raises(ValueError, match="'y' has 10 rows but 'X' has 103"):
        HDF5Dataset(path)


def test_hdf5_nan_is_reported_by_the_worker(cluster2, tmp_path):
    path = tmp_path / "nan.h5"
    data = X.copy()
    data[80, 2] = np.nan  # in worker 1's rows
    with h5py.File(path, "w") as f:
        f["X"] = data
    with pytest.raises(WorkerError, match=r"worker 1 failed: ValueError: .*rows 52:103 contain NaN"):
        cluster2.load(HDF5Dataset(path, y_key=None))


def test_fewer_rows_than_workers(cluster2):
    with pytest.raises(ValueError, match="2 rows, fewer than the 2 workers|1 rows, fewer than the 2 workers"):
        cluster2.load(ArrayDataset(X[:1]))


def test_bad_job_arguments(cluster2):
    with pytest.raises(ValueError, match="scheduling"):
        cluster2.run(Counter(), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=3, scheduling="spark")
    with pytest.raises(ValueError, match="max_iter"):
        cluster2.run(Counter(), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=0)
    with pytest.raises(ValueError, match="group_size"):
        cluster2.run(Counter(), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=3, group_size=0)


def test_killed_worker_gives_a_clear_error_and_no_orphans():
    cluster = Cluster(2, timeout=20)
    assert all(os.path.exists(f"/proc/{h.pid}") for h in cluster.workers)
    t0 = time.monotonic()
    with pytest.raises(WorkerFailedError, match=r"worker 1 \(pid \d+ on \S+\) died \(killed by SIGKILL\)") as info:
        cluster.run(Counter(kill_at=4, kill_worker=1), {"x": np.zeros(1), "seen": np.zeros(1)},
                    ArrayDataset(X), max_iter=50, group_size=3)
    assert time.monotonic() - t0 < 20
    assert info.value.worker == 1
    assert cluster.closed
    with pytest.raises(drizzle_ml.ClusterClosedError, match="closed after a failure"):
        cluster.load(ArrayDataset(X))
    assert wait_cluster_gone(cluster) == []
    mpiexec = cluster._job.process  # its output pipes are closed, not left to the garbage collector
    assert mpiexec.stdout.closed and mpiexec.stderr.closed
    # the driver process is healthy: a new cluster works
    with Cluster(2, timeout=20) as fresh:
        assert fresh.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=3).version == 3
    assert fresh._job.process.stdout.closed and fresh._job.process.stderr.closed


def test_hung_worker_times_out_naming_it():
    cluster = Cluster(2, timeout=3)
    pid = cluster.workers[1].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(drizzle_ml.WorkerTimeoutError, match="no answer from worker 1"):
            cluster.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=5)
        assert time.monotonic() - t0 < 30
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert cluster.closed
    assert wait_cluster_gone(cluster) == []


def test_program_error_in_bsp_mode_is_raised_and_cluster_survives(cluster2):
    with pytest.raises(WorkerError, match=r"worker 0 failed: ValueError: injected failure at iteration 2"):
        cluster2.run(Counter(fail_at=2, fail_worker=0), {"x": np.zeros(1), "seen": np.zeros(1)},
                     ArrayDataset(X), max_iter=10, scheduling="bsp")
    assert cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=4).version == 4


def test_program_workers_cannot_import_is_a_worker_error(cluster2, tmp_path, monkeypatch):
    # A module only the driver can import (the workers started before it existed).
    (tmp_path / "driver_only_program.py").write_text(
        "from drizzle_ml.testing import Counter\nclass DriverOnly(Counter):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from driver_only_program import DriverOnly

    with pytest.raises(WorkerError, match="cannot unpickle the program .*module the workers can import"):
        cluster2.run(DriverOnly(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=3)
    assert cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=2).version == 2


class _FailingUpdate(Counter):
    def update(self, model, total, iteration):
        raise ArithmeticError("update failed on the driver")


def test_driver_side_error_in_bsp_aborts_the_job(cluster2):
    with pytest.raises(ArithmeticError, match="update failed"):
        cluster2.run(_FailingUpdate(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X),
                     max_iter=5, scheduling="bsp")
    assert cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=3).version == 3


@pytest.mark.parametrize("extra", [-1, 3])
@pytest.mark.parametrize("reduction", ["auto", "tree"])
def test_partials_of_different_structure_are_an_error_before_any_reduction(cluster2, extra, reduction,
                                                                           monkeypatch):
    from drizzle_ml.testing import UnevenPartial

    monkeypatch.setattr(cluster2, "reduction", reduction)
    # Every worker finds it; whichever report the driver reads first names worker 1 as the odd one.
    with pytest.raises(WorkerError, match=r"worker [01] failed: ValueError: worker 1's partial differs in "
                                          r"structure from worker 0's: partials must have the same structure"):
        cluster2.run(UnevenPartial(extra), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=5, group_size=2)
    assert cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=3).version == 3


def test_partials_of_different_structure_in_bsp_mode(cluster2):
    from drizzle_ml.testing import UnevenPartial

    with pytest.raises(ValueError, match="worker 1's partial differs in structure from worker 0's"):
        cluster2.run(UnevenPartial(1), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=5, scheduling="bsp")
    assert cluster2.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=3,
                        scheduling="bsp").version == 3
