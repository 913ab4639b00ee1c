"""FTRL-proximal with sharded state: partial_fit and streams, per coordinate on the shards.

Real MPI jobs: a sharded partial_fit equals the replicated one (to 1e-10) on
1, 2, 3 and 5 workers, dense and sparse, with one output and multinomial
(3 rows of coefficients per column); a sharded stream learns every
record exactly once, publishes whole versions assembled from every worker's
shard, and equals the replicated stream; a worker killed mid-stream is
replaced and a checkpointed stream resumes on another number of workers
with the same model. The driver's assembly of published shards is checked
without MPI.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_regression

import drizzle_ml as dm
from drizzle_ml.algorithms.online import OnlineFTRL
from drizzle_ml.errors import WorkerRecoveredWarning
from drizzle_ml.sharding import MIN_COORDINATES, bounds
from drizzle_ml.streams.job import Publications

rng = np.random.default_rng(11)
X = rng.normal(size=(300, 37))
Y_BIN = (X[:, :5].sum(axis=1) + 0.5 * rng.normal(size=300) > 0).astype(int)
Y_REG = X[:, :5] @ np.arange(1.0, 6.0) + 0.1 * rng.normal(size=300)
XS = sp.random(300, 37, density=0.15, random_state=2, format="csr")


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# -- partial_fit --------------------------------------------------------------------------------
def _partial_fits(est, data, y, classes=None):
    for lo in range(0, 300, 100):  # three micro-batches
        est.partial_fit(data[lo:lo + 100], y[lo:lo + 100], **({} if classes is None else {"classes": classes}))
    return est


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_sharded_partial_fit_equals_replicated(n_workers):
    makers = {
        "logistic l1": (lambda s: dm.LogisticRegression(penalty="l1", C=0.5, n_workers=n_workers, sharding=s),
                        Y_BIN, [0, 1]),
        "elastic net": (lambda s: dm.ElasticNet(alpha=0.05, l1_ratio=0.5, n_workers=n_workers, sharding=s),
                        Y_REG, None),
    }
    for name, (make, y, classes) in makers.items():
        for data in (X, XS):
            ref = _partial_fits(make("replicated"), data, y, classes)
            est = _partial_fits(make("sharded"), data, y, classes)
            assert est.history_[-1]["reduction"] == "scatter+sharded", name
            assert ref.history_[-1]["reduction"] != "scatter+sharded", name
            _close(est.coef_, ref.coef_)
            _close(est.intercept_, ref.intercept_)
            assert est.n_iter_ == ref.n_iter_ == 3 and est.model_version_ == ref.model_version_ == 3
            assert est.history_[-1]["metrics"]["nonzero"] == ref.history_[-1]["metrics"]["nonzero"], name
            for key in ("z", "q", "z_intercept", "q_intercept"):
                _close(est._online_model_[key], ref._online_model_[key])


# Three classes, from the dense rows and from sparse ones touching 3 of 2,000 columns each (a few percent
# of them per worker and batch, so the workers exchange only those values).
Y_MULTI = X[:, :3].argmax(axis=1)
XW = sp.csr_matrix((rng.normal(size=900), rng.integers(0, 2000, size=900), np.arange(0, 901, 3)), shape=(300, 2000))
XW.sum_duplicates()
Y_WIDE = np.asarray(XW @ rng.normal(size=(2000, 3))).argmax(axis=1)


@pytest.mark.parametrize("n_workers", [1, 2, 3, 5])
def test_sharded_multinomial_partial_fit_equals_replicated(n_workers):
    def make(sharding):
        return dm.LogisticRegression(penalty="l1", C=5.0, n_workers=n_workers, sharding=sharding)

    for data, y, reduction in ((X, Y_MULTI, "scatter+sharded"), (XW, Y_WIDE, "sparse-scatter+sharded")):
        ref = _partial_fits(make("replicated"), data, y, [0, 1, 2])
        est = _partial_fits(make("sharded"), data, y, [0, 1, 2])
        assert est.history_[-1]["reduction"] == reduction and ref.history_[-1]["reduction"].endswith("+replicated")
        assert est.coef_.shape == ref.coef_.shape == (3, data.shape[1])
        _close(est.coef_, ref.coef_)
        _close(est.intercept_, ref.intercept_)
        assert 0 < np.count_nonzero(est.coef_) < est.coef_.size  # L1: some coefficients exactly zero
        assert np.array_equal(est.coef_ == 0, ref.coef_ == 0)
        nonzero = est.history_[-1]["metrics"]["nonzero"]
        assert nonzero == ref.history_[-1]["metrics"]["nonzero"] == np.count_nonzero(est.coef_)
        for key in ("z", "q", "z_intercept", "q_intercept"):
            _close(est._online_model_[key], ref._online_model_[key])


def test_partial_fit_shards_wide_ftrl_models_automatically():
    wide = sp.random(300, MIN_COORDINATES, density=2e-4, random_state=4, format="csr")
    y = np.arange(300) % 2
    # Each worker's rows touch 1% of the columns: the workers exchange only those values.
    est = _partial_fits(dm.LogisticRegression(penalty="l1", C=1.0, n_workers=2), wide, y, [0, 1])
    assert est.history_[-1]["reduction"] == "sparse-scatter+sharded"
    ref = _partial_fits(dm.LogisticRegression(penalty="l1", C=1.0, n_workers=2, sharding="replicated"),
                        wide, y, [0, 1])
    _close(est.coef_, ref.coef_)
    _close(est.intercept_, ref.intercept_)
    dense = dm.Lasso(alpha=0.01, n_workers=2).partial_fit(wide[:20].toarray(), Y_REG[:20])
    assert dense.history_[-1]["reduction"] == "scatter+sharded"
    # A multinomial model shards by its columns too: 2^16 of them, each with 3 classes' state.
    multi = dm.LogisticRegression(penalty="l1", n_workers=2).partial_fit(wide, np.arange(300) % 3, classes=[0, 1, 2])
    assert multi.history_[-1]["reduction"] == "sparse-scatter+sharded" and multi.coef_.shape == (3, MIN_COORDINATES)
    # SGD cannot shard: it stays replicated whatever sharding says.
    sgd = dm.LogisticRegression(n_workers=2, sharding="sharded").partial_fit(wide, y, classes=[0, 1])
    assert sgd.history_[-1]["reduction"] == "allreduce+replicated"


def test_an_ftrl_state_of_the_older_layout_is_upgraded():
    program = OnlineFTRL("binomial", l1=0.1)
    new = program.initial_model(4, 1, coef=[[0.5, 0.0, -1.0, 2.0]], intercept=[0.3])
    old = {k: v for k, v in new.items() if not k.endswith("_intercept")}
    old["z"] = np.column_stack([new["z"], new["z_intercept"]])
    old["q"] = np.column_stack([new["q"] + 1.0, new["q_intercept"] + 2.0])
    up = OnlineFTRL.upgrade(old)
    assert np.array_equal(up["z"], new["z"]) and np.array_equal(up["z_intercept"], new["z_intercept"])
    assert np.array_equal(up["q"], new["q"] + 1.0) and np.array_equal(up["q_intercept"], [2.0])
    assert OnlineFTRL.upgrade(new) is new
    with pytest.raises(ValueError, match=r"not an FTRL state: z has shape \(1, 7\) and q \(1, 7\) for coef "
                                         r"of shape \(1, 4\)"):
        OnlineFTRL.upgrade({**old, "z": np.zeros((1, 7)), "q": np.zeros((1, 7))})


# -- publication of sharded versions (the driver's side, no MPI) -------------------------------
def test_the_driver_assembles_a_version_once_every_shard_arrived():
    model = {"w": np.arange(10.0), "S": np.zeros((2, 10)), "n": np.zeros(1)}
    store = dm.ModelStore(history=100)
    pubs = Publications(None, 7, model, store, shard_keys=("w", "S"), spans=bounds(10, 3))

    def piece(rank, version, worker_model):
        layout = pubs.layouts[rank]
        buf = np.empty(pubs.header + layout.nbytes, dtype=np.uint8)
        buf[: pubs.header].view(np.float64)[:] = (7, version, version, 5.0, 0.0, 0.0)
        layout.pack(worker_model, buf, pubs.header)
        return buf

    def publish(version, ranks):
        whole = {"w": np.arange(10.0) + version, "S": np.full((2, 10), float(version)), "n": np.array([version])}
        for rank in ranks:
            lo, hi = bounds(10, 3)[rank - 1]
            part = {"w": whole["w"][lo:hi], "S": whole["S"][:, lo:hi]}
            if rank == 1:  # the root's piece: its shard and the replicated keys, in the model's order
                part["n"] = whole["n"]
            pubs.receive(rank, piece(rank, version, part))
        return whole

    publish(1, [3, 1])
    assert store.versions() == []  # worker 2's shard of version 1 not yet here
    first = publish(1, [2])
    assert store.versions() == [1] and list(store.get(1).model) == ["w", "S", "n"]
    assert all(np.array_equal(store.get(1).model[k], first[k]) for k in first)
    publish(2, [1, 2])  # worker 3 skipped version 2 (its send slots were busy)
    third = publish(3, [2, 3, 1])
    assert store.versions() == [1, 3] and np.array_equal(store.get(3).model["S"], third["S"])
    assert pubs.pending == {} and pubs.dropped == 1
    publish(2, [3])  # the late piece of a version older than the newest is ignored
    assert store.versions() == [1, 3] and pubs.pending == {}
    for version in range(4, 4 + Publications.MAX_PENDING + 3):  # worker 3 skips many: bounded
        publish(version, [1, 2])
    assert len(pubs.pending) == Publications.MAX_PENDING and store.latest().version == 3
    last = 4 + Publications.MAX_PENDING + 3
    publish(last, [3, 1])  # no worker published the versions after the pending ones
    publish(last, [2])
    assert store.latest().version == last and pubs.pending == {}
    assert pubs.dropped == 1 + (last - 4)  # version 2, and every version from 4 up to the last: a gap


def test_the_driver_counts_the_versions_a_replicated_root_skipped():
    model = {"w": np.zeros(4)}
    store = dm.ModelStore(history=100)
    pubs = Publications(None, 7, model, store, version=10)  # a stream resumed at version 10

    def publish(version):
        buf = np.empty(pubs.header + pubs.layout.nbytes, dtype=np.uint8)
        buf[: pubs.header].view(np.float64)[:] = (7, version, version, 5.0, 0.0, 0.0)
        pubs.layout.pack({"w": np.full(4, float(version))}, buf, pubs.header)
        pubs.receive(1, buf)

    publish(11)
    publish(12)
    assert pubs.dropped == 0
    publish(15)  # the root's send slots were busy for versions 13 and 14: they arrive in order
    assert pubs.dropped == 2 and store.versions() == [11, 12, 15]
    publish(14)  # stale (it cannot come late, but would not count twice)
    assert pubs.dropped == 2 and store.versions() == [11, 12, 15]


# -- streams -------------------------------------------------------------------------------------
def _csv(tmp_path, n=2400, d=30):
    Xr, y = make_regression(n, d, noise=0.5, random_state=1)
    path = tmp_path / "s.csv"
    path.write_text("".join(",".join(repr(float(v)) for v in (*row, t)) + "\n" for row, t in zip(Xr, y)))
    return path


def _stream(path, sharding, n_workers=2, on_group=None, **options):
    est = dm.Lasso(alpha=0.2, n_workers=n_workers, group_size=3, sharding=sharding)
    est.model_store_ = dm.ModelStore(history=1000)
    return dm.stream_fit(est, dm.FileSource(str(path), follow=False, block_size=4096), batch_interval=None,
                         max_batch=50, idle_timeout=1.0, on_group=on_group, **options)


def test_a_sharded_stream_learns_every_record_once_and_publishes_whole_versions(tmp_path):
    path = _csv(tmp_path)
    ref = _stream(path, "replicated")
    est = _stream(path, "sharded")
    assert est.history_[-1]["reduction"] == "scatter+sharded" and ref.history_[-1]["reduction"] != "scatter+sharded"
    assert est.records_seen_ == ref.records_seen_ == 2400
    _close(est.coef_, ref.coef_)
    _close(est.intercept_, ref.intercept_)
    versions = est.model_store_.versions()
    # Every version was visible as made, assembled from both workers' shards: whole and in order.
    assert versions == list(range(versions[0], est.model_version_ + 1))
    for version in versions[:: max(1, len(versions) // 5)]:
        model, twin = est.model_store_.get(version).model, ref.model_store_.get(version).model
        assert model["coef"].shape == (1, 30) and model["z"].shape == (1, 30)
        _close(model["coef"], twin["coef"])
        assert model["stream_records"][0] == twin["stream_records"][0]
    assert est.at_version(versions[3]).predict(np.ones((1, 30))).shape == (1,)


def test_a_sharded_multinomial_stream_publishes_whole_versions(tmp_path):
    rows = np.random.default_rng(5).normal(size=(900, 20))
    path = tmp_path / "s.csv"
    path.write_text("".join(",".join(repr(float(v)) for v in (*row, t)) + "\n"
                            for row, t in zip(rows, rows[:, :3].argmax(axis=1))))

    def stream(sharding):
        est = dm.LogisticRegression(penalty="l1", C=1.0, n_workers=2, group_size=3, sharding=sharding)
        est.model_store_ = dm.ModelStore(history=1000)
        return dm.stream_fit(est, dm.FileSource(str(path), follow=False, block_size=4096), classes=[0, 1, 2],
                             batch_interval=None, max_batch=50, idle_timeout=1.0)

    est, ref = stream("sharded"), stream("replicated")
    assert est.history_[-1]["reduction"] == "scatter+sharded" and est.records_seen_ == ref.records_seen_ == 900
    _close(est.coef_, ref.coef_)
    _close(est.intercept_, ref.intercept_)
    versions = est.model_store_.versions()
    for version in versions[:: max(1, len(versions) // 4)]:  # assembled from both workers' (3, d) shards
        model, twin = est.model_store_.get(version).model, ref.model_store_.get(version).model
        assert model["coef"].shape == model["z"].shape == model["q"].shape == (3, 20)
        for key in ("coef", "z", "q"):
            _close(model[key], twin[key])
    assert est.at_version(versions[-1]).predict(rows[:5]).shape == (5,)


def test_a_hashed_stream_shards_its_wide_ftrl_model_automatically(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.tokens"
    path.write_text("".join(f"{i % 2} site={rng.integers(500)} ad={rng.integers(40)} hour={i % 24}\n"
                            for i in range(1200)))

    def stream(sharding):
        est = dm.LogisticRegression(penalty="l1", C=10.0, n_workers=2, sharding=sharding)
        return dm.stream_fit(est, dm.FileSource(str(path), follow=False), classes=[0, 1], record_format="tokens",
                             hash_features=16, batch_interval=None, max_batch=100, idle_timeout=1.0)

    est, ref = stream("auto"), stream("replicated")
    assert est.history_[-1]["reduction"] == "scatter+sharded" and est.coef_.shape == (1, MIN_COORDINATES)
    assert est.records_seen_ == ref.records_seen_ == 1200
    _close(est.coef_, ref.coef_)
    _close(est.intercept_, ref.intercept_)


def test_a_sharded_stream_recovers_a_killed_worker_to_the_same_model(tmp_path):
    path = _csv(tmp_path)
    reference = _stream(path, "sharded")
    victim = dm.get_cluster(2).workers[1].pid
    killed = []

    def kill_once(group):  # at a group boundary, while the next group runs
        if group.start_iteration >= 6 and not killed:
            killed.append(group.start_iteration)
            os.kill(victim, signal.SIGKILL)

    with pytest.warns(WorkerRecoveredWarning, match=r"Lasso: worker 1 .* died"):
        recovered = _stream(path, "sharded", on_group=kill_once)
    assert killed and recovered.records_seen_ == reference.records_seen_ == 2400
    assert recovered.history_[-1]["reduction"] == "scatter+sharded"
    assert np.array_equal(recovered.coef_, reference.coef_) and recovered.intercept_ == reference.intercept_


def test_a_sharded_stream_checkpoint_resumes_on_another_worker_count(tmp_path):
    path = _csv(tmp_path)

    def interrupted(sharding):
        ckpt = tmp_path / sharding
        _stream(path, sharding, n_workers=3, checkpoint_dir=ckpt, max_batches=12)  # re-sharded over 2 below
        if sharding == "sharded":
            _to_the_older_ftrl_layout(ckpt)  # as an earlier drizzle-ml wrote it: upgraded on resume
        return _stream(path, sharding, n_workers=2, checkpoint_dir=ckpt, resume=True)

    est, ref = interrupted("sharded"), interrupted("replicated")
    assert est.history_[0]["start_iteration"] >= 12 and est.history_[-1]["reduction"] == "scatter+sharded"
    assert est.records_seen_ == ref.records_seen_ == 2400  # every record once across the resume
    _close(est.coef_, ref.coef_)
    _close(est.intercept_, ref.intercept_)


def _to_the_older_ftrl_layout(checkpoint_dir):
    """Rewrite the newest checkpoint's FTRL state as (m, d + 1) z and q, the intercept last."""
    from drizzle_ml.checkpoint import CheckpointStore

    path = max(glob.glob(os.path.join(checkpoint_dir, "**", "ckpt-*.h5"), recursive=True))
    store = CheckpointStore(os.path.dirname(path))
    ckpt = store.latest()
    model = {k: np.array(v) for k, v in ckpt.model.items() if not k.endswith("_intercept")}
    for key in ("z", "q"):
        model[key] = np.column_stack([ckpt.model[key], ckpt.model[key + "_intercept"]])
    os.remove(path)
    store.save(dataclasses.replace(ckpt, model=model))
    assert "z_intercept" not in store.latest().model
