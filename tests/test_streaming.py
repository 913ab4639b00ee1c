"""Streaming: sources and offsets, online programs, partial_fit, stream jobs, the CLI, exactly-once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import h5py
import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs, make_classification, make_regression
from sklearn.decomposition import PCA as SkPCA
from sklearn.linear_model import LogisticRegression as SkLogistic

import drizzle_ml as dm
from drizzle_ml.algorithms.online import OnlineLinear, OnlineMoments, StreamingKMeans
from drizzle_ml.algorithms.persist import load_model, model_info
from drizzle_ml.program import Partition
from drizzle_ml.scheduler import run_job
from drizzle_ml.streams import Batching, RecordFormat, StreamError, StreamReader, StreamSpec, peek_n_features
from drizzle_ml.streams.file import _TextFileReader
from drizzle_ml.streams.tcp import _TCPReader
from drizzle_ml.testing import StreamSum
from drizzle_ml.tuner import TunerSettings

from .test_recovery import ranks


def write_csv(path, X, y=None, extra: dict[int, str] | None = None):
    with open(path, "w") as f:
        for i, row in enumerate(X):
            fields = [repr(float(v)) for v in row] + ([] if y is None else [repr(float(y[i]))])
            f.write(",".join(fields) + "\n")
            if extra and i in extra:
                f.write(extra[i] + "\n")


def read_all(source, fmt, n_partitions, max_batch=7, offsets=None):
    """Every partition read to the end by its own reader: rows, malformed count, offsets."""
    rows, bad, ends = [], 0, {}
    for p in range(n_partitions):
        reader = StreamReader(source, fmt, Batching(max_batch, None), [p], n_partitions, offsets or {}, p)
        while True:
            batch = reader.next_batch(lambda test, _: test())
            if batch.n_rows:
                rows.append(np.column_stack([batch.X, batch.y]) if batch.y is not None else batch.X)
            bad += batch.n_bad
            if batch.idle:
                break
        ends.update(reader.offsets())
        reader.close()
    return (np.concatenate(rows) if rows else np.empty((0, fmt.width))), bad, ends


def same_rows(a, b):
    return np.array_equal(a[np.lexsort(a.T)], b[np.lexsort(b.T)])


# -- sources --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_partitions,block", [(1, 1 << 16), (3, 256), (2, 97)])
def test_file_partitions_read_every_line_exactly_once(tmp_path, n_partitions, block):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3))
    path = tmp_path / "s.csv"
    write_csv(path, X)
    fmt = RecordFormat("csv", 3)
    rows, bad, _ = read_all(dm.FileSource(str(path), follow=False, block_size=block), fmt, n_partitions)
    assert bad == 0 and rows.shape == X.shape and same_rows(rows, X)


def test_file_offsets_resume_where_they_left_off_and_partial_lines_wait(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("1,2\n3,4\n5,")  # a writer in the middle of its third line
    fmt = RecordFormat("csv", 2)
    reader = StreamReader(dm.FileSource(str(path), follow=True), fmt, Batching(10, 0.001), [0], 1, {}, 0)
    first = reader.next_batch(lambda test, _: time.sleep(0.002) or test())
    assert first.X.tolist() == [[1, 2], [3, 4]] and reader.offsets() == {"p0": 8}
    reader.close()
    with open(path, "a") as f:
        f.write("6\n7,8\n")
    rows, _, ends = read_all(dm.FileSource(str(path), follow=False), fmt, 1, offsets={"p0": 8})
    assert rows.tolist() == [[5, 6], [7, 8]] and ends == {"p0": os.path.getsize(path)}


@pytest.mark.parametrize("n_partitions,block", [(1, None), (2, 8)])
def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path, n_partitions, block):
    path = tmp_path / "s.csv"
    path.write_bytes(b"\xef\xbb\xbf1,2\n3,4\n5,6\n")  # as an editor that saves "UTF-8 with BOM" writes it
    rows, bad, ends = read_all(dm.FileSource(str(path), follow=False, block_size=block), RecordFormat("csv", 2),
                               n_partitions)
    assert bad == 0 and same_rows(rows, np.array([[1.0, 2], [3, 4], [5, 6]]))
    assert max(ends.values()) == os.path.getsize(path)
    assert peek_n_features(dm.FileSource(str(path)), RecordFormat("csv", None)) == 2


def test_a_utf16_stream_file_is_named_as_such(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("1,2\n3,4\n", encoding="utf-16")  # as some spreadsheet programs save "Unicode text"
    with pytest.raises(StreamError, match="s.csv is UTF-16 text: records must be UTF-8 \\(or ASCII\\) lines$"):
        peek_n_features(dm.FileSource(str(path)), RecordFormat("csv", None))


def test_malformed_records_are_skipped_and_counted_or_fail_with_the_offset(tmp_path):
    X = np.arange(20.0).reshape(10, 2)
    path = tmp_path / "s.csv"
    write_csv(path, X, extra={2: "not,a number", 5: "1,2,3", 7: "nan,1"})
    rows, bad, _ = read_all(dm.FileSource(str(path), follow=False), RecordFormat("csv", 2), 1)
    assert bad == 3 and np.array_equal(rows, X)
    offset = path.read_bytes().index(b"not,a number")
    with pytest.raises(StreamError, match=f"malformed record at .*s.csv byte offset {offset}.*on_error='fail'"):
        read_all(dm.FileSource(str(path), follow=False), RecordFormat("csv", 2, on_error="fail"), 1)
    # unknown labels of a classifier are malformed too
    labelled = tmp_path / "l.csv"
    labelled.write_text("1,0\n2,1\n3,7\n")
    rows, bad, _ = read_all(dm.FileSource(str(labelled), follow=False),
                            RecordFormat("csv", 1, has_target=True, classes=[0, 1]), 1)
    assert bad == 1 and rows.tolist() == [[1, 0], [2, 1]]


def test_json_records_nested_too_deep_or_too_large_or_with_a_string_x_are_malformed(tmp_path):
    path = tmp_path / "s.jsonl"
    garbage = ["[" * 100_000, "[1, " + "9" * 400 + ", 0]", '{"x": "12", "y": 0}']
    path.write_text("".join(line + "\n" for line in ['{"x": [1, 2], "y": 0}', *garbage, "[3, 4, 1]"]))
    rows, bad, _ = read_all(dm.FileSource(str(path), follow=False), RecordFormat("json", 2, has_target=True), 1)
    assert bad == 3 and rows.tolist() == [[1, 2, 0], [3, 4, 1]]
    for line in garbage:
        path.write_text(line + "\n")
        with pytest.raises(StreamError, match="malformed record at .*s.jsonl byte offset 0: .*on_error='fail'"):
            read_all(dm.FileSource(str(path), follow=False),
                     RecordFormat("json", 2, has_target=True, on_error="fail"), 1)


def test_a_record_longer_than_the_read_chunk_is_an_error_not_a_stall(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("1,2\n" + "3," * 100)  # a writer that never ends its line
    reader = _TextFileReader(str(path), RecordFormat("csv", 2), 0, follow=True, chunk_bytes=64)
    assert reader.read(10).rows.tolist() == [[1, 2]]
    with pytest.raises(StreamError, match="long.csv byte offset 4: a record longer than 64 bytes"):
        reader.read(10)
    reader.close()


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_followed_file_replaced_or_removed_is_an_error_once_its_lines_are_read(tmp_path, change):
    path = tmp_path / "s.csv"
    path.write_text("1,2\n")
    reader = _TextFileReader(str(path), RecordFormat("csv", 2), 0, follow=True)
    assert reader.read(10).rows.tolist() == [[1, 2]]
    with open(path, "a") as f:
        f.write("3,4\n")  # still read: it is in the file the reader holds
    if change == "replaced":  # as an atomic rename of a new file over it
        (tmp_path / "new.csv").write_text("5,6\n7,8\n9,10\n")
        os.rename(tmp_path / "new.csv", path)
    else:
        path.unlink()
    assert reader.read(10).rows.tolist() == [[3, 4]]
    with pytest.raises(StreamError, match=f"s.csv was {change} while followed \\(consumed up to byte offset 8\\): "
                                          "a stream file must only grow in place"):
        reader.read(10)
    reader.close()


def test_json_lines_and_directory_source(tmp_path):
    (tmp_path / "d").mkdir()
    records = [{"x": [i, i + 1], "y": i % 2} for i in range(30)]
    for k in range(3):
        with open(tmp_path / "d" / f"part-{k}.jsonl", "w") as f:
            for r in records[k * 10:(k + 1) * 10]:
                f.write(json.dumps(r) + "\n")
    (tmp_path / "d" / "part-9.jsonl.tmp").write_text('{"x": [0, 0], "y": 0}\n')  # still being written
    fmt = RecordFormat("json", 2, has_target=True)
    rows, bad, ends = read_all(dm.DirectorySource(str(tmp_path / "d"), follow=False), fmt, 2)
    expect = np.array([[*r["x"], r["y"]] for r in records], dtype=float)
    assert bad == 0 and same_rows(rows, expect)
    assert all(set(v) == {"file", "pos"} for v in ends.values())
    assert peek_n_features(dm.DirectorySource(str(tmp_path / "d")), fmt) == 2


def test_a_subdirectory_a_fifo_or_a_dangling_link_in_a_stream_directory_is_no_file_of_it(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.csv").write_text("1,2\n")
    (d / "b.csv").mkdir()  # as a Spark job's output directory
    os.mkfifo(d / "c.csv")  # opening it would block the reader
    (d / "e.csv").symlink_to(tmp_path / "gone.csv")
    (d / "f.csv").write_text("3,4\n")
    rows, bad, ends = read_all(dm.DirectorySource(str(d), follow=False), RecordFormat("csv", 2), 1)
    assert bad == 0 and rows.tolist() == [[1, 2], [3, 4]] and ends == {"p0": {"file": "f.csv", "pos": 4}}
    assert peek_n_features(dm.DirectorySource(str(d)), RecordFormat("csv", None)) == 2


def test_an_iterable_item_beyond_a_floats_range_is_malformed():
    items = [([1, 2], 0), ([10**400, 2], 1), ([1, 2], 10**400), ([3, 4], 1)]
    rows, bad, _ = read_all(dm.IterableSource(items), RecordFormat("csv", 2, has_target=True), 1)
    assert bad == 2 and rows.tolist() == [[1, 2, 0], [3, 4, 1]]
    with pytest.raises(StreamError, match="malformed record at item 1: int too large to convert to float"):
        read_all(dm.IterableSource(items), RecordFormat("csv", 2, has_target=True, on_error="fail"), 1)


def test_tcp_source_sends_its_offset_and_reads_lines(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    hello = []

    def serve():
        conn, _ = server.accept()
        hello.append(conn.makefile("rb").readline().decode())
        conn.sendall(b"".join(b"%d,%d\n" % (i, 2 * i) for i in range(5, 50)))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    rows, bad, ends = read_all(dm.TCPSource("127.0.0.1", port), RecordFormat("csv", 2), 1,
                               offsets={"p0": 5})
    thread.join(5)
    server.close()
    assert hello == ["DRIZZLE partition=0 partitions=1 offset=5\n"]
    assert rows[:, 0].tolist() == list(range(5, 50)) and ends == {"p0": 50}
    with pytest.raises(StreamError, match="cannot connect to tcp:127.0.0.1"):
        _TCPReader(dm.TCPSource("127.0.0.1", port), RecordFormat("csv", 2), 0, 1, 0, connect_timeout=0.2)


def test_hdf5_source_reads_a_growing_dataset(tmp_path):
    path = tmp_path / "g.h5"
    with h5py.File(path, "w", libver="latest") as h5:
        h5.create_dataset("X", data=np.arange(30.0).reshape(10, 3), maxshape=(None, 3), chunks=(4, 3))
    source = dm.HDF5Source(str(path), "X", follow=False, block_rows=4)
    fmt = RecordFormat("csv", 2, has_target=True)
    rows, _, ends = read_all(source, fmt, 2)
    assert same_rows(rows, np.arange(30.0).reshape(10, 3)) and sum(ends.values()) >= 10
    with h5py.File(path, "a") as h5:
        h5["X"].resize((14, 3))
        h5["X"][10:] = np.arange(30.0, 42.0).reshape(4, 3)
    rows, _, _ = read_all(source, fmt, 2, offsets=ends)
    assert same_rows(rows, np.arange(30.0, 42.0).reshape(4, 3))


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="tcp source must look like tcp:HOST:PORT"):
        dm.parse_source("tcp:nohost")
    with pytest.raises(ValueError, match="unknown source kind 'ftp'"):
        dm.parse_source("ftp:x")
    with pytest.raises(StreamError, match="does not exist"):
        dm.parse_source(f"file:{tmp_path}/missing.csv").open(RecordFormat(), 0, 1, 0)
    (tmp_path / "f.csv").write_text("1,2\n")
    for source, message in [(f"file:{tmp_path}", f"stream file {tmp_path} is not a file$"),
                            (f"h5:{tmp_path}#X", f"stream file {tmp_path} is not a file$"),
                            (f"dir:{tmp_path}/f.csv", f"stream directory {tmp_path}/f.csv is not a directory$")]:
        with pytest.raises(StreamError, match=message):
            dm.parse_source(source).open(RecordFormat(), 0, 1, 0)
        if not source.startswith("h5:"):
            with pytest.raises(StreamError, match=message):
                peek_n_features(dm.parse_source(source), RecordFormat())
    with pytest.raises(TypeError, match="use list"):
        dm.IterableSource(x for x in range(3))
    with pytest.raises(StreamError, match="cannot be read ahead"):
        peek_n_features(dm.TCPSource("127.0.0.1", 1), RecordFormat())


def test_bad_stream_sizes_classes_and_missing_sources_are_refused_before_any_work(tmp_path):
    from .conftest import run_cli

    path = tmp_path / "s.csv"
    path.write_text("1,2,0\n")
    for kwargs, message in [({"n_features": 0}, "n_features must be a positive integer or None, got 0"),
                            ({"max_batches": 0}, "max_batches must be a positive integer or None, got 0"),
                            ({"classes": [0, np.nan]}, "classes must be finite numbers, got [0.0, nan]")]:
        with pytest.raises(ValueError) as exc:
            dm.stream_fit(dm.LogisticRegression(n_workers=1), dm.FileSource(str(path), follow=False),
                          **{"classes": [0, 1], **kwargs})
        assert str(exc.value) == message
    for source, name in [(dm.FileSource(str(tmp_path / "none.csv")), "file"),
                         (dm.DirectorySource(str(tmp_path / "none")), "directory")]:
        with pytest.raises(StreamError) as exc:
            peek_n_features(source, RecordFormat())
        assert str(exc.value) == f"stream {name} {source.path} does not exist"
    for extra, message in [(["--classes", "0,nan"], "--classes must be numbers separated by commas, got '0,nan'"),
                           (["--classes", "a,b"], "--classes must be numbers separated by commas, got 'a,b'"),
                           (["--classes", "0,1", "--n-features", "0"], "--n-features must be at least 1, got 0"),
                           (["--classes", "0,1", "--max-batches", "0"], "--max-batches must be at least 1, got 0")]:
        proc = run_cli("stream", "--source", f"file:{path}", "--algorithm", "logistic", *extra)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"drizzle-ml: error: {message}\n")


# -- online programs ------------------------------------------------------------------------------
def test_online_linear_step_is_the_documented_sgd_step():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 4)), (rng.random(50) > 0.5).astype(float)
    program = OnlineLinear("binomial", penalty=2.0, eta0=0.7, power_t=0.5)
    model = OnlineLinear.initial_model(4, 1, coef=rng.standard_normal(4), intercept=[0.3], n_seen=50,
                                       steps=3, sq_norm=4.0)
    new, metrics = program.update(model, program.local(model, Partition(X, y)), 0)
    n_seen = 100.0
    sq = (4.0 * 50 + (X * X).sum()) / n_seen
    p = 1 / (1 + np.exp(-(X @ model["coef"][0] + 0.3)))
    grad = (p - y) @ X / 50 + 2.0 / n_seen * model["coef"][0]
    eta = 0.7 / ((0.25 * (sq + 1) + 2.0 / n_seen) * 4 ** 0.5)
    assert np.allclose(new["coef"][0], model["coef"][0] - eta * grad, rtol=1e-12)
    assert np.isclose(new["intercept"][0], 0.3 - eta * (p - y).mean(), rtol=1e-12)
    assert new["steps"][0] == 4 and new["n_seen"][0] == n_seen and np.isclose(metrics["step"], eta)
    empty, _ = program.update(new, program.local(new, Partition(np.empty((0, 4)), np.empty(0))), 1)
    assert np.array_equal(empty["coef"], new["coef"])  # a quiet micro-batch changes nothing


def test_online_moments_are_exact_and_kmeans_moves_by_weighted_means():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3)) + 5
    program, model = OnlineMoments(), OnlineMoments.initial_model(3)
    for lo, hi in [(0, 1), (1, 3), (3, 3), (3, 40)]:
        model, _ = program.update(model, program.local(model, Partition(X[lo:hi])), 0)
    assert np.allclose(model["scatter"] / 39, np.cov(X.T), rtol=1e-12) and np.allclose(model["mean"], X.mean(0))
    km = StreamingKMeans(2, decay=0.5)
    model = StreamingKMeans.initial_model(2, 1, centers=[[0.0], [10.0]], weights=[4.0, 2.0])
    rows = np.array([[1.0], [3.0], [11.0]])
    new, _ = km.update(model, km.local(model, Partition(rows)), 0)
    assert np.allclose(new["centers"].ravel(), [(2 * 0 + 4) / 4, (1 * 10 + 11) / 2])
    assert np.allclose(new["weights"], [4.0, 2.0])


# -- partial_fit ----------------------------------------------------------------------------------
def test_logistic_partial_fit_approaches_sklearn_and_checks_its_input():
    X, y = make_classification(3000, 8, random_state=0)
    est = dm.LogisticRegression(n_workers=2)
    for _ in range(3):
        for lo in range(0, 3000, 300):
            est.partial_fit(X[lo:lo + 300], y[lo:lo + 300], classes=[0, 1])
    assert est.score(X, y) >= SkLogistic().fit(X, y).score(X, y) - 0.02
    assert est.model_version_ == 30 and est.at_version().model_version_ == 30
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        dm.LogisticRegression(n_workers=2).partial_fit(X, y)
    with pytest.raises(ValueError, match=r"y has labels not in classes \[0, 1\]: \[5\]"):
        est.partial_fit(X[:3], [0, 1, 5])
    with pytest.raises(ValueError, match="X has 7 features"):
        est.partial_fit(X[:, :7], y)


def test_pca_partial_fit_equals_pca_of_all_rows_with_tiny_batches():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    est = dm.PCA(n_components=3, n_workers=2)
    start = 0
    for size in (5, 1, 2, 90, 0, 202):  # later batches smaller than n_components
        if size:
            est.partial_fit(X[start:start + size])
        start += size
    sk = SkPCA(3).fit(X)
    assert np.max(subspace_angles(est.components_.T, sk.components_.T)) < 1e-8
    assert np.allclose(est.explained_variance_, sk.explained_variance_, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 samples"):
        dm.PCA(n_workers=2).partial_fit(X[:1])


def test_kmeans_and_linear_partial_fit():
    Xb, _ = make_blobs(3000, 4, centers=4, random_state=0)
    km = dm.KMeans(4, n_workers=2, random_state=0)
    with pytest.raises(ValueError, match="should be >= n_clusters=4 on the first call"):
        km.partial_fit(Xb[:3])
    for lo in range(0, 3000, 300):
        km.partial_fit(Xb[lo:lo + 300])
    assert -km.score(Xb) <= 1.05 * SkKMeans(4, n_init=10, random_state=0).fit(Xb).inertia_
    Xr, yr = make_regression(2000, 6, noise=1.0, random_state=0)
    lin = dm.Ridge(alpha=1.0, n_workers=2)
    for _ in range(3):
        for lo in range(0, 2000, 200):
            lin.partial_fit(Xr[lo:lo + 200], yr[lo:lo + 200])
    assert lin.score(Xr, yr) > 0.99


# -- stream jobs ------------------------------------------------------------------------------------
def test_stream_job_learns_every_record_once_and_publishes_before_the_group_ends(tmp_path, cluster2):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 1000, size=(3000, 4)).astype(float)
    path = tmp_path / "s.csv"
    write_csv(path, X, extra={10: "garbage"})
    spec = StreamSpec(dm.FileSource(str(path), follow=False, block_size=4096), RecordFormat("csv", 3, True),
                      Batching(max_batch=50, interval=None), n_partitions=2)
    store = dm.ModelStore(history=1000)
    result = run_job(cluster2, StreamSum(), StreamSum.initial_model(3), "", max_iter=10**6, stream=spec,
                     store=store, group_size=8)
    assert np.array_equal(result.model["sums"], X[:, :3].sum(0)) and result.model["ysum"][0] == X[:, 3].sum()
    assert result.model["stream_records"][0] == 3000
    assert sum(result.iteration_metrics["malformed"]) == 1
    versions = store.versions()
    # every version was visible (published as made); only group boundaries are durable
    assert versions == list(range(versions[0], result.version + 1))
    assert all(g.metrics["unpublished"] == 0 for g in result.history)
    durable = [v for v in versions if store.get(v).durable]
    assert len(durable) < len(versions) / 2 and store.latest(durable=True).version == result.version
    assert set(result.offsets) == {"p0", "p1"}
    # Tuned (a stream's groups have a floor in seconds: tests/test_tuner.py), the sums are the same.
    tuned = run_job(cluster2, StreamSum(), StreamSum.initial_model(3), "", max_iter=10**6, stream=spec,
                    tuner=TunerSettings("auto"))
    assert np.array_equal(tuned.model["sums"], result.model["sums"])


def test_a_stream_keeps_its_newest_groups_and_counts_them_all(tmp_path, cluster2, monkeypatch):
    # A stream runs as long as its source: the driver keeps the newest groups, iterations and versions.
    from drizzle_ml.metrics import STREAM_KEEP

    for key, n in (("groups", 3), ("iterations", 5), ("versions", 4)):
        monkeypatch.setitem(STREAM_KEEP, key, n)
    X = np.random.default_rng(1).integers(0, 1000, size=(3000, 4)).astype(float)
    path = tmp_path / "s.csv"
    write_csv(path, X, extra={10: "garbage", 2990: "1,2"})  # one malformed record early, one late
    spec = StreamSpec(dm.FileSource(str(path), follow=False, block_size=4096), RecordFormat("csv", 3, True),
                      Batching(max_batch=50, interval=None), n_partitions=2)
    result = run_job(cluster2, StreamSum(), StreamSum.initial_model(3), "", max_iter=10**6, stream=spec,
                     group_size=8)
    n_groups = int(result.totals["groups"])
    assert n_groups > 3 and [g.group for g in result.history] == [n_groups - 3, n_groups - 2, n_groups - 1]
    assert all(len(values) == 5 for values in result.iteration_metrics.values())
    assert len(result.latencies) == 4
    assert result.totals["records"] == 3000 and result.totals["malformed"] == 2
    summary = result.summary()
    assert summary["n_groups"] == n_groups and summary["wall"] > sum(g.wall for g in result.history)
    est = dm.stream_fit(dm.LinearRegression(n_workers=2, group_size=8),
                        dm.FileSource(str(path), follow=False, block_size=4096), max_batch=50, batch_interval=None)
    assert len(est.history_) == 3 and len(est.stream_stats_["latencies"]) == 4
    assert est.records_seen_ == est.stream_stats_["records"] == 3000 and est.malformed_ == 2


def test_a_stream_freezes_the_older_objects_out_of_collections_until_it_ends(tmp_path, cluster2):
    import gc

    X = np.random.default_rng(2).standard_normal((400, 3))
    path = tmp_path / "s.csv"
    write_csv(path, X)
    assert gc.get_freeze_count() == 0
    frozen = []
    est = dm.stream_fit(dm.LinearRegression(n_workers=2, group_size=2), dm.FileSource(str(path), follow=False),
                        max_batch=50, batch_interval=None, on_group=lambda g: frozen.append(gc.get_freeze_count()))
    assert est.records_seen_ == 400 and frozen and min(frozen) > 1000  # the modules, the cluster, the data
    assert gc.get_freeze_count() == 0  # given back at the end
    batch = []
    cluster2.run(StreamSum(), StreamSum.initial_model(3), dm.ArrayDataset(X), max_iter=4, group_size=2,
                 on_group=lambda g: batch.append(gc.get_freeze_count()))
    assert batch == [0, 0]  # a batch job has no versions due while it runs: nothing frozen


def test_stream_fit_from_an_iterable_and_stop(cluster2):
    X, y = make_classification(2000, 5, random_state=1)
    est = dm.LogisticRegression(n_workers=2)
    dm.stream_fit(est, dm.IterableSource(list(zip(X, y))), classes=[0, 1], max_batch=100, batch_interval=None)
    assert est.records_seen_ == 2000 and est.score(X, y) > 0.8
    calls = []
    est2 = dm.LinearRegression(n_workers=2, group_size=2)
    dm.stream_fit(est2, dm.IterableSource(list(zip(X, y))), max_batch=10, batch_interval=None,
                  stop=lambda: calls.append(1) or len(calls) >= 2)
    assert 0 < est2.records_seen_ < 2000 and est2.n_iter_ <= 8
    # Size-only batches wait for records up to idle_timeout: it must end before the workers' timeout.
    with pytest.raises(ValueError, match=r"idle_timeout=1000 s with batch_interval=None must be shorter than "
                                         r"the cluster's timeout \([0-9.]+ s, DRIZZLE_TIMEOUT\)"):
        dm.stream_fit(dm.LinearRegression(n_workers=2), dm.FileSource(os.devnull), n_features=1,
                      batch_interval=None, idle_timeout=1000)


def test_versions_a_slow_driver_missed_are_counted_and_training_never_waits(tmp_path, cluster2):
    # A model too large for MPI's eager sends (2**15 coefficients): each publication waits for the
    # driver to receive it. While the driver sits in on_group, the root fills its send slots and
    # skips the versions after them; the stream goes on, and the skipped versions are counted.
    rng = np.random.default_rng(5)
    path = tmp_path / "s.svm"
    path.write_text("".join(f"{rng.normal():.4f} " + " ".join(f"{j}:1" for j in rng.choice(5000, 6, replace=False))
                            + "\n" for _ in range(2400)))

    def fit(on_group):
        est = dm.LinearRegression(n_workers=2, group_size=40)
        est.model_store_ = dm.ModelStore(history=1000)  # keeps every version readers could see
        dm.stream_fit(est, dm.FileSource(str(path), follow=False), record_format="libsvm", hash_features=15,
                      max_batch=10, batch_interval=None, on_group=on_group)
        return est

    slept = []
    slow = fit(lambda g: slept or slept.append(time.sleep(1.0)))
    quick = fit(None)
    per_group = [g["metrics"]["unpublished"] for g in slow.history_]
    assert slow.stream_stats_["unpublished"] == sum(per_group) > 0, per_group
    assert np.array_equal(slow.coef_, quick.coef_) and slow.records_seen_ == quick.records_seen_ == 2400
    # What readers could see: every version but the unpublished ones, and group ends committed anyway.
    made = slow.n_iter_
    visible = [v for v in slow.model_store_.versions() if v > 0]
    assert made - slow.stream_stats_["unpublished"] <= len(visible) <= made - sum(per_group) + len(per_group)


# -- the command line, serving, exactly-once ------------------------------------------------------
def drizzle(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "drizzle_ml", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_stream_errors():
    for args, message in [
        (["--source", "x"], "source must look like"),
        (["--source", "file:/x", "--algorithm", "logistic"], "needs --classes"),
        (["--source", "file:/x", "--algorithm", "pca", "--C", "1"], "--C does not apply to --algorithm pca"),
        (["--source", "file:/x", "--algorithm", "pca", "--serve", "nope"], "--serve must look like HOST:PORT"),
    ]:
        proc = drizzle("stream", *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_resumed_stream_says_where_it_began_and_its_rate_is_this_runs(tmp_path):
    X, y = make_regression(300, 2, random_state=0)
    path = tmp_path / "s.csv"
    write_csv(path, X[:200], y[:200])
    args = ["stream", "--source", f"file:{path}", "--algorithm", "linear", "--workers", "2", "--no-follow",
            "--quiet", "--checkpoint-dir", str(tmp_path / "ck"), "-o", str(tmp_path / "m.h5")]
    first = drizzle(*args)
    assert first.returncode == 0 and "drizzle-ml: 200 records in " in first.stdout, first.stderr
    write_csv(tmp_path / "more.csv", X[200:], y[200:])
    with open(path, "a") as f:
        f.write((tmp_path / "more.csv").read_text())
    again = drizzle(*args, "--resume")
    assert again.returncode == 0 and "drizzle-ml: 300 records (resumed at 200) in " in again.stdout, again.stderr
    assert model_info(tmp_path / "m.h5")["extra"]["records"] == 300


def test_one_odd_first_line_does_not_fix_the_record_format(tmp_path):
    X, y = make_classification(300, 3, n_informative=2, n_redundant=0, random_state=0)
    path = tmp_path / "s.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d,e\n")  # a header with one field too many
    with open(path, "a") as f:
        for row, label in zip(X, y):
            f.write(",".join(repr(float(v)) for v in row) + f",{int(label)}\n")
    assert peek_n_features(dm.FileSource(str(path)), RecordFormat("csv", None, True)) == 3
    proc = drizzle("stream", "--algorithm", "logistic", "--classes", "0,1", "--source", f"file:{path}",
                   "--no-follow", "--workers", "1", "-o", str(tmp_path / "m.h5"))
    assert proc.returncode == 0, proc.stderr
    assert "300 records in" in proc.stdout and "1 malformed skipped" in proc.stdout, proc.stdout
    assert load_model(str(tmp_path / "m.h5")).score(X, y) > 0.8


def test_a_stream_that_learnt_nothing_fails_and_saves_no_model(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_text("x,y\n" * 20)
    proc = drizzle("stream", "--algorithm", "logistic", "--classes", "0,1", "--source", f"file:{path}",
                   "--no-follow", "--workers", "1", "--n-features", "1", "-o", str(tmp_path / "m.h5"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert errors == ["drizzle-ml: error: the stream gave no valid record (20 malformed skipped): nothing was "
                      "learnt; no model saved"], proc.stderr
    assert not (tmp_path / "m.h5").exists()


def test_cli_stream_serves_predictions_while_training_and_stops_on_a_signal(tmp_path):
    path = tmp_path / "live.csv"
    path.write_text("")
    port = socket.create_server(("127.0.0.1", 0))
    address = port.getsockname()
    port.close()
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "stream", "--algorithm", "linear",
                             "--source", f"file:{path}", "--n-features", "2", "--serve", f"{address[0]}:{address[1]}",
                             "--batch-interval", "0.005", "--max-batch", "50", "-o", str(tmp_path / "m.h5")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rng = np.random.default_rng(0)
        answers, errors = [], []
        deadline = time.time() + 60
        with open(path, "a") as f:
            written = 0
            while time.time() < deadline and (len(answers) < 3 or written < 4000):
                written += 200
                X = rng.standard_normal((200, 2))
                for row, t in zip(X, X @ [2.0, -1.0] + 0.5):
                    f.write(f"{row[0]},{row[1]},{t}\n")
                f.flush()
                time.sleep(0.1)
                try:
                    req = urllib.request.Request(f"http://{address[0]}:{address[1]}/predict",
                                                 data=json.dumps({"X": [[1.0, 1.0]]}).encode(), method="POST")
                    answers.append(json.loads(urllib.request.urlopen(req, timeout=5).read()))
                except urllib.error.HTTPError as exc:
                    errors.append(exc.read().decode())
                except (OSError, ValueError):
                    continue
        info = json.loads(urllib.request.urlopen(f"http://{address[0]}:{address[1]}/model", timeout=5).read())
        bad = []
        for body in ({"X": [[1.0, 1.0]], "durable": "false"}, [1, 2]):  # a string is not a boolean
            req = urllib.request.Request(f"http://{address[0]}:{address[1]}/predict",
                                         data=json.dumps(body).encode(), method="POST")
            try:
                urllib.request.urlopen(req, timeout=5)
            except urllib.error.HTTPError as exc:
                bad.append((exc.code, json.loads(exc.read())["error"]))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert len(answers) >= 3 and answers[-1]["version"] >= answers[0]["version"], errors[-3:]
    assert info["version"] >= info["durable_version"] >= 0
    assert bad == [(400, "TypeError: 'durable' must be true or false, got 'false'"),
                   (400, "TypeError: the request body must be a JSON object")]
    assert "stopping at the next group boundary" in err and "model saved" in out
    assert abs(load_model(tmp_path / "m.h5").predict([[1.0, 1.0]])[0] - 1.5) < 0.3


def test_cli_stream_exactly_once_with_repeated_worker_kills(tmp_path):
    X, y = make_regression(4000, 5, noise=0.5, random_state=0)
    content = "".join(",".join(repr(float(v)) for v in (*row, t)) + "\n" for row, t in zip(X, y))
    common = ["--algorithm", "linear", "--workers", "2", "--batch-interval", "none", "--max-batch", "40",
              "--idle-timeout", "2", "--group-size", "5"]
    full = tmp_path / "full.csv"
    full.write_text(content)
    ref = drizzle("stream", "--source", f"file:{full}", *common, "-o", str(tmp_path / "ref.h5"))
    assert ref.returncode == 0, ref.stderr
    live = tmp_path / "live.csv"
    live.write_text("")

    def produce():  # the stream arrives while workers are killed
        with open(live, "a") as f:
            for lo in range(0, len(content), len(content) // 40):
                f.write(content[lo:lo + len(content) // 40])
                f.flush()
                time.sleep(0.15)

    producer = threading.Thread(target=produce)
    producer.start()
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "stream", "--source", f"file:{live}", *common,
                             "--checkpoint-dir", str(tmp_path / "ck"), "--max-restarts", "6",
                             "-o", str(tmp_path / "m.h5")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    kills = 0
    try:
        for pause in (1.5, 2.5):
            time.sleep(pause)
            deadline = time.monotonic() + 60  # a restarted job's ranks take a moment (more on a busy host)
            while time.monotonic() < deadline:
                victim = ranks(str(live)).get(1 + kills % 2)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.1)
        out, err = proc.communicate(timeout=240)
    finally:
        producer.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert kills == 2 and err.count("the MPI job failed") >= 1, err
    assert np.array_equal(load_model(tmp_path / "m.h5").coef_, load_model(tmp_path / "ref.h5").coef_)
    assert model_info(tmp_path / "m.h5")["extra"]["records"] == 4000


def test_online_parameters_are_checked_and_partial_fit_continues_a_fit():
    X, y = make_regression(200, 3, random_state=0)
    for est, message in [(dm.Ridge(eta0=0, n_workers=2),
                          r"The 'eta0' parameter of Ridge must be a float in the range \(0\.0, inf\)\. Got 0"),
                         (dm.LinearRegression(power_t=-1, n_workers=2),
                          r"The 'power_t' parameter of LinearRegression must be a float in the range \[0\.0, inf\)"),
                         (dm.KMeans(2, decay=1.5, n_workers=2),
                          r"The 'decay' parameter of KMeans must be a float in the range \(0\.0, 1\.0\]\. Got 1\.5"),
                         (dm.KMeans(2, half_life=0, n_workers=2),
                          r"The 'half_life' parameter of KMeans must be None or a float in the range \(0\.0, inf\)")]:
        with pytest.raises(ValueError, match=message):
            est.partial_fit(X, y)
    with pytest.raises(ValueError, match="a streaming LogisticRegression needs classes"):
        dm.stream_fit(dm.LogisticRegression(n_workers=2), dm.IterableSource([[1.0, 0.0]]))
    Xb, _ = make_blobs(600, 2, centers=3, random_state=0)
    km = dm.KMeans(3, random_state=0, n_workers=2).fit(Xb)
    fitted = km.cluster_centers_.copy()
    km.partial_fit(Xb[:30])  # 30 rows against the 600 the centers were fitted on: they barely move
    assert np.abs(km.cluster_centers_ - fitted).max() < 0.2 and km.model_version_ > 0


def test_checkpoints_keep_structured_stream_offsets(tmp_path):
    from drizzle_ml.checkpoint import Checkpoint, CheckpointStore

    store = CheckpointStore(tmp_path, job_key="stream-test")
    offsets = {"p0": {"file": "part-3.csv", "pos": 120}, "p1": 4096}
    store.save(Checkpoint(job_key="stream-test", version=5, iteration=5, model={"w": np.zeros(2)},
                          stream_offsets=offsets))
    assert store.latest().stream_offsets == offsets
    with pytest.raises(ValueError, match=r"stream_offsets\['p0'\] must be an integer >= 0"):
        store.save(Checkpoint(job_key="stream-test", version=6, iteration=6, model={"w": np.zeros(2)},
                              stream_offsets={"p0": {"pos": 1.5}}))


def test_stream_checks_its_recovery_options_like_train(tmp_path):
    from .conftest import run_cli

    source = ["--source", f"file:{tmp_path / 'none.csv'}", "--algorithm", "linear", "--workers", "2"]
    for extra, message in [(["--max-restarts", "-1"], "--max-restarts must be at least 0, got -1"),
                           (["--min-workers", "3", "--checkpoint-dir", str(tmp_path / "ck")],
                            "--min-workers must be between 1 and --workers (2), got 3"),
                           (["--min-workers", "1"], "--min-workers needs --checkpoint-dir"),
                           (["--checkpoint-every", "often"], "--checkpoint-every: checkpoint_every must be"),
                           (["--resume"], "--resume needs --checkpoint-dir")]:
        proc = run_cli("stream", *source, *extra)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_csv_lines_with_wrong_field_counts_never_shift_into_rows():
    from drizzle_ml.streams import RecordFormat

    # 3 fields + 1 field = two lines of 2: the counts must be checked per line, not in total.
    fmt = RecordFormat("csv", n_features=1, has_target=True)
    rows, bad = fmt.parse_text(b"1,2,3\n4\n5,6\n", lambda i: f"line {i}")
    assert rows.tolist() == [[5.0, 6.0]] and bad == 2
    # Errors name the line of the record, also after a blank line.
    fmt = RecordFormat("csv", n_features=1, has_target=True, on_error="fail")
    with pytest.raises(dm.StreamError, match="malformed record at line 2: NaN"):
        fmt.parse_text(b"1,2\n\n3,nan\n", lambda i: f"line {i}")


def test_a_blank_csv_field_is_malformed_not_minus_one(tmp_path):
    # A trailing comma before CRLF leaves a field of "\r"; NumPy's parser reads such a field as -1.
    path = tmp_path / "crlf.csv"
    path.write_bytes(b"1,2,0\r\n3,4,\r\n5, ,1\r\n6,7,1 \r\n")
    rows, bad, _ = read_all(dm.FileSource(str(path), follow=False), RecordFormat("csv", 2, has_target=True), 1)
    assert bad == 2 and rows.tolist() == [[1, 2, 0], [6, 7, 1]]
    with pytest.raises(StreamError, match="malformed record at .*crlf.csv byte offset 7: could not convert"):
        read_all(dm.FileSource(str(path), follow=False),
                 RecordFormat("csv", 2, has_target=True, on_error="fail"), 1)


def test_hdf5_source_errors_close_the_file(tmp_path):
    from drizzle_ml.streams import RecordFormat

    path = tmp_path / "grow.h5"
    with h5py.File(path, "w") as f:
        f["X"] = np.zeros((4, 3))
        f["flat"] = np.zeros(4)
        f["words"] = np.array([[b"a", b"b", b"c", b"d", b"e"]])
        f.create_group("g")
    for key, message in [("nope", "has no dataset 'nope'"), ("flat", "must be 2-D"),
                         ("X", "has 3 columns, expected 5"), ("g", "has no dataset 'g'"),
                         ("words", "grow.h5#words must hold numbers, got dtype \\|S1")]:
        with pytest.raises(dm.StreamError, match=message) as raised:
            dm.HDF5Source(str(path), key).open(RecordFormat(n_features=4, has_target=True), 0, 1, None)
        # The traceback still holds the half-made reader: its file must be closed all the same.
        assert raised.traceback and len(h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)) == 0


def test_a_quiet_directory_is_listed_every_few_milliseconds_not_every_poll(tmp_path, monkeypatch):
    import drizzle_ml.streams.directory as S

    listings = []
    real = os.scandir
    monkeypatch.setattr(S.os, "scandir", lambda p: listings.append(p) or real(p))
    reader = dm.DirectorySource(str(tmp_path)).open(RecordFormat(n_features=1, has_target=True), 0, 1, None)
    end = time.monotonic() + 0.05
    polls = 0
    while time.monotonic() < end:
        assert reader.read(10) is None
        polls += 1
    assert polls > 100 and 1 <= len(listings) <= 0.05 / reader.LISTING_INTERVAL + 2
    (tmp_path / "a.csv").write_text("1,2\n")
    time.sleep(reader.LISTING_INTERVAL)
    assert reader.read(10).rows.tolist() == [[1.0, 2.0]]
    reader.close()


def test_the_format_of_a_directory_of_many_files_is_told_by_its_first_ones(tmp_path, monkeypatch):
    import builtins

    for k in range(50):
        (tmp_path / f"part-{k:03d}.csv").write_text("".join(f"{i},{k},1\n" for i in range(100)))
    opened = []
    real = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **kw: opened.append(path) or real(path, *a, **kw))
    assert peek_n_features(dm.DirectorySource(str(tmp_path)), RecordFormat("csv", None, has_target=True)) == 2
    assert len(opened) == 10  # 1000 records tell; not every file of the directory is read


def test_the_online_learning_contract_is_declared():
    from sklearn.linear_model import SGDRegressor

    from drizzle_ml.algorithms import OnlineLearner
    from drizzle_ml.algorithms.registry import ENTRIES

    for entry in ENTRIES:
        cls = entry.load()
        assert issubclass(cls, OnlineLearner), cls
        assert cls.learns_from_targets == entry.supervised
        assert cls.needs_classes == (entry.class_name == "LogisticRegression")
    with pytest.raises(TypeError, match=r"^SGDRegressor cannot learn from a stream \(it is no "
                                        r"drizzle_ml\.algorithms\.OnlineLearner\)$"):
        dm.stream_fit(SGDRegressor(), dm.IterableSource([[1.0, 0.0]]))

    class Incomplete(OnlineLearner):  # an online learner must say how a model becomes its attributes
        def online_setup(self, n_features, classes=None):
            raise AssertionError("not reached")

    with pytest.raises(TypeError, match="abstract method"):
        Incomplete()


def test_a_launched_stream_replaces_a_dead_worker_and_counts_every_record_once(tmp_path):
    from drizzle_ml.errors import WorkerRecoveredWarning

    X, y = make_regression(3000, 4, noise=0.5, random_state=1)
    path = tmp_path / "s.csv"
    path.write_text("".join(",".join(repr(float(v)) for v in (*row, t)) + "\n" for row, t in zip(X, y)))
    options = dict(batch_interval=None, max_batch=50, idle_timeout=1.0)

    def stream(on_group=None):
        est = dm.LinearRegression(n_workers=2, group_size=3)
        return dm.stream_fit(est, dm.FileSource(str(path), follow=False, block_size=4096), on_group=on_group,
                             **options)

    reference = stream()
    victim = dm.get_cluster(2).workers[1].pid
    killed = []

    def kill_once(group):  # at a group boundary, while the next group runs
        if group.start_iteration >= 6 and not killed:
            killed.append(group.start_iteration + group.n_iterations)
            os.kill(victim, signal.SIGKILL)

    with pytest.warns(WorkerRecoveredWarning, match=r"LinearRegression: worker 1 .* died .*Restarting the workers "
                                                    r"and resuming at iteration \d+"):
        recovered = stream(kill_once)
    assert killed and recovered.records_seen_ == reference.records_seen_ == 3000
    assert np.array_equal(recovered.coef_, reference.coef_) and recovered.intercept_ == reference.intercept_


# -- hashed records (LIBSVM, tokens) ------------------------------------------------------------------
def _hashed_stream_file(path, n=600):
    """LIBSVM lines with a few malformed ones; returns (valid lines, malformed count)."""
    rng = np.random.default_rng(5)
    lines, bad = [], 0
    for i in range(n):
        idx = rng.choice(2000, size=rng.integers(1, 9), replace=False)
        lines.append(f"{i % 2} " + " ".join(f"{j}:{rng.normal():.4f}" for j in idx))
    text = list(lines)
    for at, junk in ((17, "garbage"), (250, "1 x:1"), (400, "0 3:nan"), (590, "1 4:1 5")):
        text.insert(at, junk)
        bad += 1
    path.write_text("\n".join(text) + "\n")
    return lines, bad


def _sklearn_hashed(lines, n_bits):
    from sklearn.feature_extraction import FeatureHasher

    pairs = [[(t.split(":")[0], float(t.split(":")[1])) for t in ln.split()[1:]] for ln in lines]
    return FeatureHasher(2**n_bits, input_type="pair").transform(pairs), np.array([float(ln[0]) for ln in lines])


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_hashed_libsvm_records_are_hashed_by_each_worker_identically(tmp_path, n_workers):
    path = tmp_path / "s.svm"
    lines, n_bad = _hashed_stream_file(path)
    Xh, y = _sklearn_hashed(lines, 12)
    expected = np.column_stack([Xh.toarray(), y])
    fmt = RecordFormat("libsvm", None, has_target=True, classes=[0, 1], hash_bits=12)
    rows, bad = [], 0
    for w in range(n_workers):  # each worker reads its own partitions (3 per worker, small blocks)
        parts = [p for p in range(3 * n_workers) if p % n_workers == w]
        reader = StreamReader(dm.FileSource(str(path), follow=False, block_size=512), fmt, Batching(50, None),
                              parts, 3 * n_workers, {}, w)
        while True:
            batch = reader.next_batch(lambda test, _: test())
            if batch.n_rows:
                assert batch.X.format == "csr" and batch.X.shape[1] == 4096
                rows.append(np.column_stack([batch.X.toarray(), batch.y]))
            bad += batch.n_bad
            if batch.idle:
                break
        reader.close()
    assert bad == n_bad and same_rows(np.concatenate(rows), expected)


def test_hashed_records_follow_on_error_and_classes(tmp_path):
    path = tmp_path / "s.tokens"
    path.write_text("1 site=a ad=1\n0 site=b\n7 site=c\n1 #tag\nnot-a-label x\n")
    fmt = RecordFormat("tokens", None, has_target=True, classes=[0, 1], hash_bits=8)
    reader = StreamReader(dm.FileSource(str(path), follow=False), fmt, Batching(100, None), [0], 1, {}, 0)
    batch = reader.next_batch(lambda test, _: test())
    reader.close()
    from sklearn.feature_extraction import FeatureHasher

    ref = FeatureHasher(256, input_type="string").transform([["site=a", "ad=1"], ["site=b"], ["#tag"]])
    assert batch.n_bad == 2 and batch.y.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(batch.X.toarray(), ref.toarray())
    offset = path.read_bytes().index(b"7 site=c")
    fail = RecordFormat("tokens", None, has_target=True, classes=[0, 1], hash_bits=8, on_error="fail")
    with pytest.raises(StreamError, match=f"malformed record at .*s.tokens byte offset {offset}: a label not among "
                                          r"the known classes \[0.0, 1.0\]: '7 site=c' \(on_error='fail'\)"):
        read_all(dm.FileSource(str(path), follow=False), fail, 1)
    fail = RecordFormat("libsvm", None, has_target=True, hash_bits=8, on_error="fail")
    path.write_text("1 3:1\n1 x:2\n")
    with pytest.raises(StreamError, match="byte offset 6: 'x' is not a feature index \\(an integer\\): '1 x:2'"):
        read_all(dm.FileSource(str(path), follow=False), fail, 1)
    for kwargs, message in [({"kind": "libsvm"}, "libsvm and tokens records are hashed: give hash_bits"),
                            ({"kind": "csv", "hash_bits": 8}, "give hash_bits with them, and only with them"),
                            ({"kind": "tokens", "hash_bits": 40}, "hash_bits must be an integer between 1 and 31"),
                            ({"kind": "tokens", "hash_bits": 4, "n_features": 3}, "hashed records have 2\\*\\*4")]:
        with pytest.raises(ValueError, match=message):
            RecordFormat(**kwargs)


def test_cli_stream_hashes_on_the_workers_the_same_for_1_2_and_3_workers(tmp_path):
    path = tmp_path / "s.svm"
    lines, n_bad = _hashed_stream_file(path)
    Xh, y = _sklearn_hashed(lines, 10)
    # One micro-batch of every record (size-only cuts larger than the file): one SGD step on all of them.
    program = OnlineLinear("binomial", penalty=1.0, classes=np.array([0.0, 1.0]))
    model = OnlineLinear.initial_model(1024, 1)
    step, _ = program.update(model, program.local(model, Partition(X=Xh, y=y)), 0)
    coefs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"m{workers}.h5"
        proc = drizzle("stream", "--algorithm", "logistic", "--classes", "0,1", "--source", f"file:{path}",
                       "--format", "libsvm", "--hash-features", "10", "--no-follow", "--workers", str(workers),
                       "--max-batch", "100000", "--batch-interval", "none", "-o", str(out), "--quiet")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{len(lines)} records in" in proc.stdout and f"{n_bad} malformed skipped" in proc.stdout
        est = load_model(str(out))
        assert est.coef_.shape == (1, 1024)
        assert model_info(str(out))["extra"]["hashing"] == {"n_bits": 10, "format": "libsvm", "alternate_sign": True,
                                                           "label": True}
        coefs.append(np.concatenate([est.coef_.ravel(), est.intercept_]))
    expected = np.concatenate([step["coef"].ravel(), step["intercept"]])
    for coef in coefs:
        np.testing.assert_allclose(coef, expected, rtol=1e-10, atol=1e-14)
    for args, message in [
        (["--format", "libsvm"], "--format libsvm records are hashed: give --hash-features BITS"),
        (["--format", "csv", "--hash-features", "8"],
         "--hash-features hashes libsvm or tokens records, not csv (--format)"),
        (["--format", "tokens", "--hash-features", "-3"], "--hash-features must be an integer between 1 and 31, "
                                                          "got -3"),
        (["--format", "tokens", "--hash-features", "8", "--n-features", "5"],
         "--n-features does not apply to hashed records: they have 2**8 features"),
    ]:
        proc = drizzle("stream", "--classes", "0,1", "--source", f"file:{path}", *args)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"drizzle-ml: error: {message}"
