"""Pre-scheduled reductions (drizzle_ml.collectives) and the replicated update.

The sums go through real MPI collectives under ``mpiexec -n W`` and are
compared with numpy's; the engine tests run real worker jobs.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from drizzle_ml import ArrayDataset, Cluster
from drizzle_ml.errors import ReplicaMismatchError
from drizzle_ml.layout import Layout
from drizzle_ml.testing import Counter, DivergentReplica, LeastSquaresGD, MergeMax, TreeSum

from .conftest import run_mpi

RNG = np.random.default_rng(7)
X = RNG.standard_normal((103, 7))
Y = X @ RNG.standard_normal(7) + 0.1 * RNG.standard_normal(103)


def test_layout_by_dtype_makes_one_run_per_dtype_and_round_trips():
    value = {"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2)), "c": np.int64(5),
             "d": (np.float32(2.5), np.zeros(1))}
    layout = Layout(value, by_dtype=True)
    assert [(dt.str, count) for dt, _, count in layout.runs] == [("<f4", 4), ("<f8", 5), ("<i8", 1)]
    assert all(offset % 8 == 0 for _, offset, _ in layout.runs)
    buf = layout.new_buffer()
    layout.pack(value, buf)
    back = layout.unpack(buf, reused=False)
    assert back["a"].tolist() == [0, 1, 2] and back["b"].tolist() == [[1, 1], [1, 1]]
    assert back["c"] == 5 and back["d"][0] == np.float32(2.5) and back["d"][1].tolist() == [0.0]
    # The same value from one typed array per run (a reduction's total): slices, not byte views.
    runs = [buf[off: off + count * dt.itemsize].view(dt).copy() for dt, off, count in layout.runs]
    fresh = layout.from_runs(runs)
    assert fresh["b"].shape == (2, 2) and fresh["b"].tolist() == [[1, 1], [1, 1]]
    assert isinstance(fresh["c"], np.int64) and fresh["c"] == 5 and fresh["d"][0] == np.float32(2.5)
    assert np.shares_memory(fresh["a"], runs[0]) and not np.shares_memory(fresh["b"], buf)
    odd = {"empty": np.zeros(0), "zero_d": np.array(3.0), "m": np.arange(6.0).reshape(2, 3), "n": 4.0}
    odd_layout = Layout(odd, by_dtype=True)
    odd_buf = odd_layout.new_buffer()
    odd_layout.pack(odd, odd_buf)
    back = odd_layout.from_runs([odd_buf.view(np.float64).copy()])
    assert back["empty"].shape == (0,) and back["zero_d"].shape == () and back["zero_d"] == 3.0
    assert back["m"].tolist() == [[0, 1, 2], [3, 4, 5]] and back["n"] == 4.0
    with pytest.raises(ValueError, match="value is missing key 'b' of the job's layout"):
        layout.pack({"a": value["a"], "x": 1, "c": 1, "d": value["d"]}, buf)
    with pytest.raises(ValueError, match="value structure differs from the job's layout"):
        layout.pack({**value, "d": (1.0,)}, buf)


_SUMS_JOB = """
import functools
import numpy as np
import scipy.sparse as sp
from mpi4py import MPI
from drizzle_ml.collectives import AllreduceReduction, GatherReduction, plan_reduction
from drizzle_ml.layout import Layout
from drizzle_ml.program import Program
from drizzle_ml.testing import MergeMax

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()

def partial(it):
    rng = np.random.default_rng(100 * rank + it)
    csr = sp.random(40, 6, density=0.3, random_state=rank + it, format="csr")
    return {"dense64": rng.standard_normal((5, 3)),
            "csr64": np.asarray(csr.T @ rng.standard_normal(40)).ravel(),
            "dense32": rng.standard_normal(4).astype(np.float32),
            "csr32": np.asarray(csr.astype(np.float32).sum(axis=0)).ravel(),
            "count": np.array([csr.nnz], dtype=np.int64)}

def sequential(parts):
    return {k: functools.reduce(lambda a, b: a + b, [p[k] for p in parts]) for k in parts[0]}

layout = Layout(partial(0), by_dtype=True)
gather = GatherReduction(comm, layout, None)
allreduce = AllreduceReduction(comm, layout)
chosen = plan_reduction(comm, Program(), layout)
chosen.free()
assert chosen.kind == "gather", chosen.kind
maxima = GatherReduction(comm, Layout(np.zeros(9)), np.maximum)
for it in range(3):  # the same persistent requests, started again each iteration
    mine = partial(it)
    everyone = comm.allgather(mine)
    expected = sequential(everyone)
    gather.start(mine)
    gather.collectives[0].request.Wait()
    total = gather.total()
    for key in expected:  # worker order, as the BSP driver adds: bit for bit
        assert not np.shares_memory(total[key], gather.gathered), key  # fresh: an update may keep it
        assert total[key].dtype == expected[key].dtype, key
        assert np.array_equal(total[key], expected[key]), key
    allreduce.start(mine)
    for c in allreduce.collectives:
        c.request.Wait()
    summed = allreduce.total()
    for key in expected:
        assert not np.shares_memory(summed[key], allreduce.result), key
        rtol = 1e-5 if expected[key].dtype == np.float32 else 1e-12
        np.testing.assert_allclose(summed[key], expected[key], rtol=rtol, atol=1e-6)
    # every rank holds the same bits
    assert len({bytes(allreduce.result)} | set(comm.allgather(bytes(allreduce.result)))) == 1
    values = MergeMax.values(rank, it, 9)
    maxima.start(values)
    maxima.collectives[0].request.Wait()
    assert np.array_equal(maxima.total(), np.maximum.reduce(comm.allgather(values)))
for r in (gather, allreduce, maxima):
    r.free()
if rank == 0:
    print("sums OK", size)
"""


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_collective_sums_equal_numpys_dense_csr_float32_float64(n, tmp_path):
    code, out, err = run_mpi(n, _SUMS_JOB, tmp_path, env={"DRIZZLE_NO_SERVE": "1"})
    assert code == 0, err
    assert f"sums OK {n}" in out


_SHARDED_JOB = """
import numpy as np
from mpi4py import MPI
from drizzle_ml.collectives import ScatterReduction, ShardGather, SparseExchange, SparseShardPull
from drizzle_ml.program import Program
from drizzle_ml.sharding import Shard, bounds

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n, m = 11, 3  # shards of uneven sizes; m values (rows) per coordinate

def wait(test, what=""):
    while not test():
        pass

class Summed(Program):
    sharded_partial = "g"

spans = bounds(n, size)
lo, hi = spans[rank]
start = np.arange(m * n, dtype=np.float64).reshape(m, n)
shard = Shard(("w", "v", "u"), lo, hi, n, tuple(b - a for a, b in spans),
              {"w": start, "v": start[:1], "u": start[2], "bad": np.arange(n)})

def partial(k, touched=None):
    g = np.random.default_rng(10 * rank + k).standard_normal((n, k))  # coordinate-major: row j is coordinate j
    if touched is not None:
        g[np.setdiff1d(np.arange(n), touched)] = 0.0
    return {"g": g.reshape(-1), "c": np.array([1.0 + rank])}

touched = np.flatnonzero(np.random.default_rng(rank).random(n) < 0.4).astype(np.int64)
plan = SparseExchange(comm, shard, touched, wait)
for k in (1, m):
    for sparse in (False, True):
        reduction = ScatterReduction(comm, Summed(), partial(k), shard, plan if sparse else None)
        assert reduction.kind == ("sparse-scatter" if sparse else "scatter")
        for it in range(2):  # the same collectives, started again
            mine = partial(k, touched if sparse else None)
            everyone = comm.allgather(mine["g"])
            reduction.start(mine)
            wait(reduction.test)
            total = reduction.total()
            expected = sum(everyone[1:], everyone[0])[k * lo: k * hi]  # this worker's coordinates, k values each
            assert total["g"].shape == (k * (hi - lo),) and total["c"][0] == size * (size + 1) / 2
            if sparse:  # the owner adds the values up in source order: the sequential sum, bit for bit
                assert np.array_equal(total["g"], expected), (k, sparse)
            else:
                np.testing.assert_allclose(total["g"], expected, rtol=1e-13, atol=1e-13)
        reduction.free()

keys = ("w", "v", "u")  # (m, n), (1, n) and (n,)
for gather in (ShardGather(comm, shard, keys), SparseShardPull(comm, shard, keys, plan)):
    for it in (1, 2):
        new = start * 10 * it + it
        gather.start({"w": new[:, lo:hi].copy(), "v": new[:1, lo:hi].copy(), "u": new[2, lo:hi].copy()})
        wait(gather.test)
        gather.finish()
        view = gather.view(dict.fromkeys(keys))
        w, v, u = view["w"], view["v"], view["u"]
        assert w.shape == (m, n) and v.shape == (1, n) and u.shape == (n,) and w.T.flags.c_contiguous
        assert v.flags.c_contiguous and u.flags.c_contiguous  # one row: read as it always was
        if isinstance(gather, ShardGather):  # the whole key, on every worker
            assert np.array_equal(w, new) and np.array_equal(v, new[:1]) and np.array_equal(u, new[2])
        else:  # the coordinates this worker touches are new, the others as they started
            stale = np.setdiff1d(np.arange(n), touched)
            for got, now, before in ((w, new, start), (v, new[:1], start[:1]), (u, new[2], start[2])):
                assert np.array_equal(got[..., touched], now[..., touched])
                assert np.array_equal(got[..., stale], before[..., stale])
    gather.free()

for make in (lambda: ShardGather(comm, shard, ("bad",)), lambda: SparseShardPull(comm, shard, ("bad",), plan)):
    try:
        make()
    except ValueError as exc:
        assert str(exc) == ("sharded key 'bad', which local reads, must be float64 rows of its coordinates, "
                            "got int64 of shape (11,)"), str(exc)
    else:
        raise AssertionError("an integer key was accepted")

try:
    ScatterReduction(comm, Summed(), {"g": np.zeros(2 * n + 1)}, shard)
except ValueError as exc:
    assert str(exc) == ("a sharded program's partial['g'] must hold k values for each of its 11 coordinates "
                        "(a float64 vector of length k * 11, coordinate-major), got length 23"), str(exc)
else:
    raise AssertionError("a partial of 2 n + 1 values was accepted")
if rank == 0:
    print("sharded OK", size)
"""


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_sharded_exchanges_move_k_values_per_coordinate(n, tmp_path):
    # Reduce-scatter and its sparse all-to-all with 1 and 3 values per coordinate; the all-gather and
    # the sparse pull of a (3, n) key, kept coordinate-major, beside (1, n) and (n,) ones; a partial of
    # the wrong length and a key of the wrong dtype.
    code, out, err = run_mpi(n, _SHARDED_JOB, tmp_path, env={"DRIZZLE_NO_SERVE": "1"})
    assert code == 0, err
    assert f"sharded OK {n}" in out


@pytest.fixture(scope="module")
def cluster3():
    with Cluster(3, timeout=30) as cluster:
        yield cluster


def test_group_and_bsp_are_bit_identical_and_repeatable(cluster3):
    model = lambda: {"coef": np.zeros(7)}
    runs = [cluster3.run(LeastSquaresGD(0.1), model(), ArrayDataset(X, Y), max_iter=30, group_size=k,
                         scheduling=s) for k, s in ((7, "group"), (7, "group"), (1, "bsp"), ("auto", "group"))]
    assert runs[0].reduction == "gather+replicated" and runs[2].reduction == "bsp"
    for other in runs[1:]:
        assert np.array_equal(other.model["coef"], runs[0].model["coef"])
    csr = sp.random(60, 7, density=0.4, random_state=3, format="csr", dtype=np.float32)
    group = cluster3.run(TreeSum(), {"sums": np.zeros(7), "rows": np.zeros(1)}, ArrayDataset(csr), max_iter=2)
    bsp = cluster3.run(TreeSum(), {"sums": np.zeros(7), "rows": np.zeros(1)}, ArrayDataset(csr), max_iter=2,
                       scheduling="bsp")
    assert np.array_equal(group.model["sums"], bsp.model["sums"])
    np.testing.assert_allclose(group.model["sums"], np.asarray(csr.sum(axis=0), dtype=np.float64).ravel(),
                               rtol=1e-6)


def test_large_summed_partials_go_through_allreduce(cluster3):
    wide = RNG.standard_normal((40, 3000))  # 24 KB a partial: 3 workers gather more than 64 KB
    model = lambda: {"sums": np.zeros(3000), "rows": np.zeros(1)}
    a = cluster3.run(TreeSum(), model(), ArrayDataset(wide), max_iter=2)
    b = cluster3.run(TreeSum(), model(), ArrayDataset(wide), max_iter=2)
    assert a.reduction == "allreduce+replicated"
    np.testing.assert_allclose(a.model["sums"], wide.sum(axis=0), rtol=1e-12)
    assert a.model["rows"][0] == 40
    assert np.array_equal(a.model["sums"], b.model["sums"])


@pytest.mark.parametrize("size,reduction", [(9, "gather+replicated"), (3000, "tree+broadcast")])
def test_non_sum_combines_are_gathered_when_small_and_use_the_tree_when_large(cluster3, size, reduction):
    result = cluster3.run(MergeMax(size), {"m": np.zeros(size), "it": np.zeros(1)}, ArrayDataset(X),
                          max_iter=4, group_size=2)
    assert result.reduction == reduction
    expected = np.maximum.reduce([MergeMax.values(w, 3, size) for w in range(3)])
    assert np.array_equal(result.model["m"], expected)


def test_digest_check_names_the_worker_whose_replica_diverged(cluster3):
    with pytest.raises(ReplicaMismatchError,
                       match=r"worker 2's model replica differs from worker 0's at version 4 \(iteration 4\)"):
        cluster3.run(DivergentReplica(2), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=12, group_size=4)
    # the job was aborted; the cluster goes on
    assert cluster3.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X), max_iter=3).version == 3


def test_root_update_with_a_broadcast_gives_the_replicated_result(cluster3, monkeypatch):
    model = lambda: {"coef": np.zeros(7)}
    replicated = cluster3.run(LeastSquaresGD(0.1), model(), ArrayDataset(X, Y), max_iter=25, group_size=6)
    monkeypatch.setattr(cluster3, "replicated_updates", False)  # what mixed platforms get
    broadcast = cluster3.run(LeastSquaresGD(0.1), model(), ArrayDataset(X, Y), max_iter=25, group_size=6)
    assert broadcast.reduction == "gather+broadcast"
    assert np.array_equal(broadcast.model["coef"], replicated.model["coef"])
    # only the root updates: a program whose replicas would drift runs to the end
    assert cluster3.run(DivergentReplica(1), {"x": np.zeros(1)}, ArrayDataset(X), max_iter=8).version == 8
    stop = cluster3.run(Counter(stop_at=5), {"x": np.zeros(1), "seen": np.zeros(1)}, ArrayDataset(X),
                        max_iter=20, group_size=8)
    assert stop.converged and stop.n_iter == 6


def test_update_placement_is_configured_by_the_environment(monkeypatch):
    from drizzle_ml.cluster import _reduction_choice, _replicate_updates
    from drizzle_ml.protocol import Hello

    same = [Hello(0, 1, "a", 0, "x86|numpy 2"), Hello(1, 2, "b", 0, "x86|numpy 2")]
    mixed = [Hello(0, 1, "a", 0, "x86|numpy 2"), Hello(1, 2, "b", 0, "aarch64|numpy 2")]
    assert _replicate_updates(same) and not _replicate_updates(mixed)
    monkeypatch.setenv("DRIZZLE_UPDATE", "root")
    assert not _replicate_updates(same)
    monkeypatch.setenv("DRIZZLE_UPDATE", "everywhere")
    with pytest.raises(ValueError, match="DRIZZLE_UPDATE must be auto, replicated or root, got 'everywhere'"):
        _replicate_updates(same)
    monkeypatch.setenv("DRIZZLE_REDUCTION", "ring")
    with pytest.raises(ValueError, match="DRIZZLE_REDUCTION must be auto or tree, got 'ring'"):
        _reduction_choice()


def test_model_digest_sees_any_change_of_a_small_model_and_samples_a_large_one():
    from drizzle_ml.executor import DIGEST_FULL_BYTES, model_digest

    small = {"w": np.arange(5.0), "state": np.zeros(3)}
    base = model_digest(small)
    assert model_digest({"w": np.arange(5.0), "state": np.zeros(3)}) == base
    changed = {"w": np.arange(5.0), "state": np.zeros(3)}
    changed["w"][4] = np.nextafter(4.0, 5.0)  # one bit
    assert model_digest(changed) != base
    assert model_digest({"w": np.arange(5.0, dtype=np.float32), "state": np.zeros(3)}) != base
    assert model_digest({"v": np.arange(5.0), "state": np.zeros(3)}) != base
    big = np.zeros(2 * DIGEST_FULL_BYTES // 8)  # sampled every second element
    first = model_digest({"w": big})
    big[2] = 1.0
    assert model_digest({"w": big}) != first
