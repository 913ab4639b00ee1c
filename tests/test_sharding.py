"""Sharded model state: coordinates split across workers, reduce-scatter in, all-gather out.

Real MPI jobs: a sharded run equals the replicated run of the same program
(to rounding), for 1, 2, 3 and 5 workers, dense and sparse, and repeats bit
for bit; a model sharded over 3 workers continues over 2.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from drizzle_ml import ArrayDataset, Cluster
from drizzle_ml.errors import WorkerError
from drizzle_ml.sharding import MIN_COORDINATES, assemble, bounds, choose, n_coordinates, split
from drizzle_ml.testing import LeastSquaresGD, ShardedMomentumGD

rng = np.random.default_rng(7)
X = rng.normal(size=(240, 23))
Y = X @ rng.normal(size=23) + 0.1 * rng.normal(size=240)


# -- the pure part ---------------------------------------------------------------------------
def test_bounds_are_contiguous_and_even():
    for n, w in [(23, 1), (23, 2), (23, 5), (3, 5), (1 << 20, 15)]:
        spans = bounds(n, w)
        assert spans[0][0] == 0 and spans[-1][1] == n and len(spans) == w
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        sizes = [hi - lo for lo, hi in spans]
        assert max(sizes) - min(sizes) <= 1


def test_split_and_assemble_round_trip():
    model = {"w": np.arange(10.0), "S": np.arange(30.0).reshape(3, 10), "state": np.array([1.0, 2.0])}
    keys = ("w", "S")
    parts = [split(model, keys, lo, hi) for lo, hi in bounds(10, 3)]
    assert parts[1]["S"].shape == (3, 3) and parts[1]["state"] is model["state"]
    whole = assemble({"state": model["state"]}, [{k: p[k] for k in keys} for p in parts])
    assert all(np.array_equal(whole[k], model[k]) for k in model)


def test_choose():
    big = ShardedMomentumGD.initial_model(MIN_COORDINATES)
    small = ShardedMomentumGD.initial_model(100)
    program = ShardedMomentumGD()
    assert choose(program, big, "auto", 2) == ("w", "m")
    assert choose(program, big, "auto", 1) == ()  # one worker: nothing to split
    assert choose(program, small, "auto", 4) == ()  # too small to gain
    assert choose(program, small, "sharded", 4) == ("w", "m")
    assert choose(program, big, "replicated", 4) == ()
    assert choose(program, big, "sharded", 4, possible=False) == ()  # e.g. BSP or a stream
    with pytest.raises(ValueError, match="LeastSquaresGD cannot shard its model"):
        choose(LeastSquaresGD(), {"coef": np.zeros(3)}, "sharded", 2)
    with pytest.raises(ValueError, match="sharding must be one of"):
        choose(program, small, "yes", 2)
    with pytest.raises(ValueError, match="must share their last axis"):
        n_coordinates({"w": np.zeros(3), "m": np.zeros(4)}, ("w", "m"))


# -- real jobs --------------------------------------------------------------------------------
def _run(cluster, X, y, sharding, max_iter=40, model=None, version=0):
    model = ShardedMomentumGD.initial_model(X.shape[1]) if model is None else model
    return cluster.run(ShardedMomentumGD(0.05), model, ArrayDataset(X, y), max_iter=max_iter, group_size=7,
                       sharding=sharding, version=version)


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_sharded_equals_replicated(n_workers):
    Xs = sp.random(240, 23, density=0.3, random_state=3, format="csr")
    with Cluster(n_workers, timeout=30) as cluster:
        for data in ((X, Y), (Xs, Y)):
            replicated = _run(cluster, *data, "replicated")
            sharded = _run(cluster, *data, "sharded")
            again = _run(cluster, *data, "sharded")
            assert sharded.reduction == "scatter+sharded" and replicated.reduction != sharded.reduction
            for key in ("w", "m", "t"):
                np.testing.assert_allclose(sharded.model[key], replicated.model[key], rtol=1e-10, atol=1e-12)
                assert np.array_equal(again.model[key], sharded.model[key])  # bit for bit
            for name in ("loss", "gnorm", "gmax"):
                np.testing.assert_allclose(sharded.iteration_metrics[name], replicated.iteration_metrics[name],
                                           rtol=1e-10)
            assert sharded.model["w"].shape == (23,) and sharded.version == 40


def test_a_nan_on_one_shard_reaches_every_worker():
    with Cluster(3, timeout=30) as cluster:
        result = cluster.run(ShardedMomentumGD(0.05, nan_at=5), ShardedMomentumGD.initial_model(23),
                             ArrayDataset(X, Y), max_iter=8, group_size=4, sharding="sharded")
    gmax, gnorm = result.iteration_metrics["gmax"], result.iteration_metrics["gnorm"]
    assert np.isfinite(gmax[:5]).all() and np.isnan(gmax[5]) and np.isnan(gnorm[5])


def test_a_model_sharded_over_three_workers_continues_over_two():
    with Cluster(3, timeout=30) as cluster:
        whole = _run(cluster, X, Y, "sharded", max_iter=50)
        first = _run(cluster, X, Y, "sharded", max_iter=20)
    with Cluster(2, timeout=30) as cluster:
        rest = _run(cluster, X, Y, "sharded", max_iter=30, model=dict(first.model), version=first.version)
    assert rest.version == whole.version == 50
    for key in ("w", "m", "t"):
        np.testing.assert_allclose(rest.model[key], whole.model[key], rtol=1e-10, atol=1e-12)


def test_a_partial_that_is_not_the_coordinate_vector_is_refused():
    with Cluster(2, timeout=30) as cluster:
        with pytest.raises(WorkerError, match=r"partial\[0\] must be a float64 vector of its 23 coordinates, "
                                              r"got float32 of shape \(23,\)"):
            cluster.run(ShardedMomentumGD(partial_dtype=np.float32), ShardedMomentumGD.initial_model(23),
                        ArrayDataset(X, Y), max_iter=2, sharding="sharded")
