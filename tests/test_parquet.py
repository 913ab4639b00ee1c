"""Parquet data: train, predict and stream from Parquet files (each worker reads its own row groups),
convert to and from Parquet, one-line errors, and a clear message where pyarrow is missing."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from sklearn import linear_model as sk
from sklearn.datasets import make_classification, make_regression

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import drizzle_ml as dm  # noqa: E402
from drizzle_ml.algorithms.persist import model_info, save_model  # noqa: E402
from drizzle_ml.streams import Batching, RecordFormat, StreamReader  # noqa: E402

from .conftest import run_cli  # noqa: E402

MISSING = "drizzle-ml: error: reading Parquet needs pyarrow: pip install 'drizzle-ml[parquet]'"
NO_PYARROW = """import sys


class NoPyarrow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pyarrow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NoPyarrow())
"""


def drizzle(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "drizzle_ml", *args], capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else {**os.environ, **env})


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def table(X, y=None, **extra):
    columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
    columns.update(extra)
    if y is not None:
        columns["y"] = y
    return pa.table(columns)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A file with numeric features, a string column, an int and a bool column, and a target y."""
    X, y = make_regression(500, 4, noise=0.5, random_state=0)
    n = len(y)
    code = np.arange(n) % 7
    flag = np.arange(n) % 3 == 0
    path = tmp_path_factory.mktemp("pq") / "reg.parquet"
    pq.write_table(table(X, y, city=np.array(["a", "b"])[np.arange(n) % 2], code=code, flag=flag), path,
                   row_group_size=60)
    return str(path), np.column_stack([X, code, flag]).astype(np.float64), y


@pytest.fixture(scope="module")
def several_files(tmp_path_factory):
    """A directory of three files of several row groups each (sizes chosen so that workers' rows
    start and end inside files and inside row groups), plus files that are not the dataset's."""
    X, y = make_classification(301, 5, n_informative=3, random_state=2)
    directory = tmp_path_factory.mktemp("pq") / "parts"
    directory.mkdir()
    for k, (lo, hi, group) in enumerate([(0, 97, 20), (97, 230, 45), (230, 301, 16)]):
        pq.write_table(table(X[lo:hi], y[lo:hi]), directory / f"part-{k}.parquet", row_group_size=group)
    (directory / "_SUCCESS").write_text("")
    (directory / ".part-3.parquet").write_bytes(b"half written")
    (directory / "README.txt").write_text("not data")
    return str(directory), X, y


# -- train and predict -------------------------------------------------------------------------
def test_train_predict_linear_matches_sklearn(regression, tmp_path):
    path, X, y = regression
    model, out = tmp_path / "m.h5", tmp_path / "pred.npy"
    proc = ok(drizzle("train", "--algorithm", "linear", "--data", path, "--workers", "2", "-o", str(model),
                      "--quiet"))
    assert f"linear on {path} (500 x 6, Parquet) with 2 workers" in proc.stdout  # 'city' is no feature
    ok(run_cli("predict", "--model", str(model), "--data", path, "-o", str(out)))
    ref = sk.LinearRegression().fit(X, y)
    np.testing.assert_allclose(np.load(out), ref.predict(X), rtol=1e-8, atol=1e-8)
    info = model_info(model)["extra"]
    assert info["features"] == ["x0", "x1", "x2", "x3", "code", "flag"] and info["target"] == "y"


def test_train_predict_logistic_with_chosen_columns(regression, tmp_path):
    path, X, y = regression
    labels = (y > np.median(y)).astype(int)
    data = tmp_path / "cls.parquet"
    pq.write_table(pq.read_table(path).append_column("label", pa.array(labels)), data, row_group_size=70)
    model, out = tmp_path / "m.h5", tmp_path / "pred.csv"
    ok(drizzle("train", "--algorithm", "logistic", "--data", str(data), "--features", "x0,x2,code",
               "--target", "label", "--tol", "1e-8", "--workers", "2", "-o", str(model), "--quiet"))
    # predict takes the model's columns by default; naming them gives the same
    ok(run_cli("predict", "--model", str(model), "--data", str(data), "-o", str(out)))
    ok(run_cli("predict", "--model", str(model), "--data", str(data), "--features", "x0,x2,code",
               "-o", str(tmp_path / "again.csv")))
    pred = np.loadtxt(out, delimiter=",")
    assert np.array_equal(pred, np.loadtxt(tmp_path / "again.csv", delimiter=","))
    Xc = X[:, [0, 2, 4]]
    ref = sk.LogisticRegression(tol=1e-10, max_iter=10_000).fit(Xc, labels)
    assert np.mean(pred == ref.predict(Xc)) >= 0.995
    proc = run_cli("predict", "--model", str(model), "--data", str(data), "--features", "x0,x1",
                   "-o", str(tmp_path / "p.npy"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"drizzle-ml: error: {data} has 2 features (x0, x1), but the model was trained "
                                   "on 3 (choose them with --features)")


def test_read_plan_covers_every_row_once(several_files):
    path, X, y = several_files
    ds = dm.ParquetDataset(path)
    assert [os.path.basename(f) for f in ds.files] == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert ds.n_rows == 301 and ds.features == [f"x{j}" for j in range(5)] and ds.target == "y"
    for workers in (2, 3):
        bounds = dm.data.row_bounds(ds.n_rows, workers)
        taken = 0
        for w in range(workers):
            spec, _ = ds.slices(int(bounds[w]), int(bounds[w + 1]))
            assert sum(take for *_, take in spec["pieces"]) == bounds[w + 1] - bounds[w]
            taken += len(spec["pieces"])
        assert taken < len(ds.row_groups) + workers  # only overlapping row groups: a group split at most once


def test_default_columns(tmp_path):
    import json

    t = pa.table({"a": [1.0, 2.0], "n": [1, 2], "b": [True, False], "s": ["u", "v"], "__index_level_0__": [5, 7],
                  "y": [0, 1]})
    t = t.replace_schema_metadata({b"pandas": json.dumps({"index_columns": ["__index_level_0__"]}).encode()})
    pq.write_table(t, tmp_path / "d.parquet")
    ds = dm.ParquetDataset(tmp_path / "d.parquet")  # numbers and booleans; not text, pandas' index, the target
    assert ds.features == ["a", "n", "b"] and ds.target == "y" and ds.y_dtype == np.int64
    assert dm.ParquetDataset(tmp_path / "d.parquet", target="n").features == ["a", "b", "y"]
    assert dm.ParquetDataset(tmp_path / "d.parquet", target=None).features == ["a", "n", "b", "y"]
    assert dm.ParquetDataset(tmp_path / "d.parquet", features=["y", "a"], target=None).features == ["y", "a"]
    pq.write_table(t.drop_columns(["y"]), tmp_path / "noy.parquet")
    assert dm.ParquetDataset(tmp_path / "noy.parquet").target is None  # auto: no column y, no target


@pytest.mark.parametrize("workers", [2, 3])
def test_directory_fit_equals_array_fit(several_files, workers):
    path, X, y = several_files
    ds = dm.ParquetDataset(path)
    for make in (lambda: dm.Ridge(alpha=0.5, n_workers=workers), lambda: dm.LogisticRegression(n_workers=workers)):
        a, b = make().fit(ds), make().fit(X, y)
        assert np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_)
    pca_file, pca_arrays = (dm.PCA(n_components=2, n_workers=workers).fit(d) for d in (ds.with_target(None), X))
    assert np.array_equal(pca_file.components_, pca_arrays.components_)
    np.testing.assert_allclose(dm.Ridge(alpha=0.5, n_workers=workers).fit(ds).coef_,
                               sk.Ridge(alpha=0.5).fit(X, y).coef_, rtol=1e-8, atol=1e-10)


def test_nulls_without_statistics_are_found_by_the_worker(tmp_path):
    X = np.arange(40, dtype=float).reshape(20, 2)
    x1 = pa.array([None if i == 13 else v for i, v in enumerate(X[:, 1])], type=pa.float64())
    pq.write_table(pa.table({"x0": X[:, 0], "x1": x1}), tmp_path / "n.parquet", row_group_size=8,
                   write_statistics=False)
    with pytest.raises(dm.WorkerError, match=r"n\.parquet: column 'x1' has 1 null value \(row group 1\)"):
        dm.PCA(n_workers=2).fit(dm.ParquetDataset(tmp_path / "n.parquet", target=None))


# -- one-line errors ---------------------------------------------------------------------------
def bad_files(tmp_path):
    X = np.arange(40, dtype=float).reshape(20, 2)
    y = np.arange(20) % 2
    pq.write_table(table(X, y, name=["n"] * 20), tmp_path / "str.parquet")
    x1 = pa.array([None if i in (3, 11) else v for i, v in enumerate(X[:, 1])])
    pq.write_table(pa.table({"x0": X[:, 0], "x1": x1, "y": y}), tmp_path / "nulls.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    pq.write_table(table(X[:0], y[:0]), tmp_path / "norows.parquet")
    (tmp_path / "fake.parquet").write_text("x0,x1,y\n1,2,0\n")
    (tmp_path / "mixed").mkdir()
    pq.write_table(table(X, y), tmp_path / "mixed" / "a.parquet")
    pq.write_table(table(X.astype(np.float32), y), tmp_path / "mixed" / "b.parquet")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "data.csv").write_text("1,2\n")
    return tmp_path


@pytest.mark.parametrize("data,extra,message", [
    ("str.parquet", ["--features", "x0,name"],
     "{d}/str.parquet: feature column 'name' has type string, not a number (int, float or bool); "
     "leave it out of the features"),
    ("nulls.parquet", [], "{d}/nulls.parquet: column 'x1' has 2 null values; drizzle-ml needs every value "
                          "(drop or fill the missing ones first)"),
    ("str.parquet", ["--target", "label"],
     "{d}/str.parquet has no target column 'label' (columns: x0 (double), x1 (double), name (string), y (int64))"),
    ("str.parquet", ["--features", "x0,x9"],
     "{d}/str.parquet has no column 'x9' (columns: x0 (double), x1 (double), name (string), y (int64))"),
    ("empty.parquet", [], "{d}/empty.parquet: an empty file (0 bytes), not a Parquet file"),
    ("norows.parquet", [], "{d}/norows.parquet has no rows"),
    ("fake.parquet", [], "{d}/fake.parquet: not a Parquet file, or a damaged one (Parquet magic bytes not found "
                         "in footer. Either the file is corrupted or this is not a parquet file.)"),
    ("mixed", [], "{d}/mixed/b.parquet has another schema than a.parquet in the same directory: "
                  "column 'x0' is float here, double there"),
    ("nothing", [], "{d}/nothing holds no Parquet files (names ending in .parquet or .pq)"),
    ("str.parquet", ["--x-key", "X"], "--x-key and --y-key name HDF5 datasets; {d}/str.parquet is Parquet "
                                      "(choose its columns with --features and --target)"),
])
def test_bad_parquet_is_a_one_line_error(tmp_path, data, extra, message):
    d = bad_files(tmp_path)
    proc = run_cli("train", "--algorithm", "linear", "--data", str(d / data), *extra)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "drizzle-ml: error: " + message.format(d=d)


def test_outputs_never_overwrite_parquet_input(several_files, tmp_path):
    path, _, _ = several_files
    file = tmp_path / "one.parquet"
    pq.write_table(table(np.ones((4, 2)), np.arange(4) % 2), file)
    proc = run_cli("train", "--data", str(file), "-o", str(file))
    assert proc.stderr.strip() == (f"drizzle-ml: error: -o/--output {file} is the input --data {file}: refusing "
                                   "to overwrite it; write the output elsewhere")
    inside = os.path.join(path, "model.h5")
    proc = run_cli("train", "--data", path, "-o", inside)
    assert proc.stderr.strip() == (f"drizzle-ml: error: -o/--output {inside} is inside --data {path}, whose files "
                                   "are read as input; write the output elsewhere")
    proc = run_cli("datasets", "convert", path, "-o", os.path.join(path, "all.h5"))
    assert proc.returncode == 2 and "is inside directory" in proc.stderr
    assert not os.path.exists(inside)


def test_missing_pyarrow_is_a_one_line_error_and_the_first_command_still_works(regression, tmp_path):
    path, _, _ = regression
    # Every process of the job (the launcher, mpiexec's ranks) starts with pyarrow unimportable, as if not
    # installed: `import pyarrow` raises ModuleNotFoundError and sys.modules never holds it (scikit-learn
    # takes any 'pyarrow' entry there for the module).
    (tmp_path / "sitecustomize.py").write_text(NO_PYARROW)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    check = drizzle("datasets", "convert", path, "-o", str(tmp_path / "o.h5"), env=env)
    assert check.returncode == 2 and check.stderr.strip() == MISSING
    model = dm.LinearRegression()  # a saved model, made without a cluster
    model.coef_, model.intercept_, model.n_features_in_ = np.ones(6), 0.0, 6
    model.model_version_, model.n_iter_, model.history_ = 1, 1, []
    save_model(model, tmp_path / "m.h5")
    for command in (["train", "--data", path], ["stream", "--algorithm", "linear", "--source", f"parquet:{tmp_path}"],
                    ["predict", "--model", str(tmp_path / "m.h5"), "--data", path, "-o", str(tmp_path / "p.npy")]):
        proc = drizzle(*command, env=env)
        assert proc.returncode == 2 and proc.stderr.strip() == MISSING, proc.stderr
    readme = ok(drizzle("train", "--workers", "2", env=env))  # the README's first command, as it is
    assert "logistic on breast_cancer" in readme.stdout and "training accuracy" in readme.stdout


# -- stream ------------------------------------------------------------------------------------
def stream_rows(source, fmt, partitions, n_partitions, offsets=None, max_batches=None):
    """Rows read by one reader of ``partitions`` (target last), and its offsets at the end."""
    reader = StreamReader(source, fmt, Batching(17, None), partitions, n_partitions, offsets or {}, 0)
    rows, bad, batches = [], 0, 0
    while max_batches is None or batches < max_batches:
        batch = reader.next_batch(lambda test, _: test())
        batches += 1
        if batch.n_rows:
            rows.append(np.column_stack([batch.X, batch.y]) if batch.y is not None else batch.X)
        bad += batch.n_bad
        if batch.idle:
            break
    offsets = reader.offsets()
    reader.close()
    return (np.concatenate(rows) if rows else np.empty((0, fmt.width))), bad, offsets


def test_parquet_source_reads_every_row_once_across_restarts(several_files, tmp_path):
    path, X, y = several_files
    source = dm.ParquetSource(path, follow=False).resolved(has_target=True)
    assert source.features == [f"x{j}" for j in range(5)] and source.target == "y"
    fmt = RecordFormat(n_features=5, has_target=True)
    expect = np.column_stack([X, y])
    got = []
    for p in range(2):
        first, _, offsets = stream_rows(source, fmt, [p], 2, max_batches=3)
        assert set(offsets[f"p{p}"]) == {"file", "pos"}
        rest, bad, _ = stream_rows(source, fmt, [p], 2, offsets=offsets)  # a restart from the offsets
        assert bad == 0
        got += [first, rest]
    rows = np.concatenate(got)
    assert rows.shape == expect.shape
    assert np.array_equal(rows[np.lexsort(rows.T)], expect[np.lexsort(expect.T)])


def test_parquet_source_skips_or_fails_bad_files_and_rows(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    x1 = pa.array([1.0, None, 3.0])
    pq.write_table(pa.table({"x0": [1.0, 2.0, 3.0], "x1": x1, "y": [1.0, 2.0, 3.0]}), d / "a.parquet")
    pq.write_table(pa.table({"x0": ["a"], "x1": [1.0], "y": [1.0]}), d / "b.parquet")
    source = dm.ParquetSource(str(d), follow=False, features=["x0", "x1"])
    rows, bad, _ = stream_rows(source.resolved(True), RecordFormat(n_features=2, has_target=True), [0], 1)
    assert rows.tolist() == [[1, 1, 1], [3, 3, 3]] and bad == 2  # one null row, one file of strings
    _, bad, _ = stream_rows(source.resolved(True), RecordFormat(n_features=2, has_target=True), [0], 1,
                            offsets={"p0": {"file": "b.parquet", "pos": 1}})
    assert bad == 0  # resumed past the bad file: not counted twice
    with pytest.raises(dm.StreamError, match=r"malformed record at .*b\.parquet: column 'x0' has type string, "
                                             r"not a number \(on_error='fail'\)"):
        stream_rows(source.resolved(True), RecordFormat(n_features=2, has_target=True, on_error="fail"), [0], 1,
                    offsets={"p0": {"file": "a.parquet", "pos": 3}})


def test_stream_command_from_a_parquet_directory_resumes_exactly_once(several_files, tmp_path):
    path, X, y = several_files
    ckpt, model = tmp_path / "ckpt", tmp_path / "s.h5"
    common = ["stream", "--algorithm", "linear", "--source", f"parquet:{path}", "--no-follow", "--workers", "2",
              "--max-batch", "40", "--batch-interval", "none", "--idle-timeout", "2", "--checkpoint-dir", str(ckpt),
              "--quiet"]
    first = ok(drizzle(*common, "--max-batches", "2"))
    assert "160 records in 2 micro-batches" in first.stdout
    ok(drizzle(*common, "--resume", "-o", str(model)))
    extra = model_info(model)["extra"]
    assert extra["records"] == len(y) and extra["source"] == f"parquet:{path}"
    assert extra["features"] == [f"x{j}" for j in range(5)] and extra["target"] == "y"
    ok(run_cli("predict", "--model", str(model), "--data", path, "-o", str(tmp_path / "p.npy")))
    assert np.load(tmp_path / "p.npy").shape == (len(y),)


# -- convert -----------------------------------------------------------------------------------
def test_convert_round_trips(several_files, tmp_path):
    path, X, y = several_files
    h5 = tmp_path / "all.h5"
    ok(run_cli("datasets", "convert", path, "-o", str(h5)))
    with h5py.File(h5) as f:
        assert np.array_equal(f["X"][:], X) and np.array_equal(f["y"][:], y)
    back = tmp_path / "back.parquet"
    out = ok(run_cli("datasets", "convert", str(h5), "-o", str(back), "--chunk-rows", "100")).stdout
    assert out.strip() == f"wrote {back}: 301 rows x 5 features (Parquet, 4 row groups), target column 'y'"
    again = pq.read_table(back)
    assert again.schema.names == [f"x{j}" for j in range(5)] + ["y"]  # the Parquet names survive HDF5
    assert np.array_equal(np.column_stack([again[c].to_numpy() for c in again.schema.names[:5]]), X)
    assert pq.ParquetFile(back).metadata.num_row_groups == 4
    info = ok(run_cli("datasets", "info", path)).stdout.splitlines()
    assert info[0] == f"{path}: 301 rows x 6 columns, Parquet, 13 row groups in 3 files"
    assert info[2:] == ["  default features: x0, x1, x2, x3, x4", "  default target: y"]
    csv = tmp_path / "t.csv"
    csv.write_text("height,weight,label\n1.5,60,0\n1.8,80,1\n")
    ok(run_cli("datasets", "convert", str(csv), "-o", str(tmp_path / "t.parquet")))
    t = pq.read_table(tmp_path / "t.parquet")
    assert t.schema.names == ["height", "weight", "y"] and t["y"].to_pylist() == [0, 1]
    # A feature named like the target column: the error names the CSV, not a scratch file.
    clash = tmp_path / "clash.csv"
    clash.write_text("y,weight,label\n1.5,60,0\n1.8,80,1\n")
    proc = run_cli("datasets", "convert", str(clash), "-o", str(tmp_path / "clash.parquet"))
    assert proc.returncode != 0 and proc.stderr.strip() == (
        f"drizzle-ml: error: {clash}: a feature column is named 'y', the name the target column takes; "
        "give the target another name (y_key, --y-key)")
    ok(run_cli("datasets", "convert", str(clash), "-o", str(tmp_path / "clash.parquet"), "--y-key", "label"))
    assert pq.read_table(tmp_path / "clash.parquet").schema.names == ["y", "weight", "label"]
    # Parquet columns by name into HDF5, strings as labels
    labelled = tmp_path / "labels.parquet"
    pq.write_table(table(X[:6], None, kind=["a", "b", "c"] * 2), labelled)
    ok(run_cli("datasets", "convert", str(labelled), "-o", str(tmp_path / "l.h5"), "--features", "x1,x3",
               "--label-column", "kind"))
    with h5py.File(tmp_path / "l.h5") as f:
        assert np.array_equal(f["X"][:], X[:6, [1, 3]]) and f["y"].asstr()[:].tolist() == ["a", "b", "c"] * 2


def test_hdf5_that_parquet_cannot_hold_is_a_one_line_error(tmp_path):
    (tmp_path / "text.h5").write_text("not HDF5\n")
    with h5py.File(tmp_path / "whole.h5", "w") as f:
        f["X"] = np.ones((40, 2))
    (tmp_path / "cut.h5").write_bytes((tmp_path / "whole.h5").read_bytes()[:1000])
    with h5py.File(tmp_path / "complex.h5", "w") as f:
        f["X"] = np.ones((3, 2)) + 1j
    with h5py.File(tmp_path / "ycomplex.h5", "w") as f:
        f["X"], f["y"] = np.ones((3, 2)), np.ones(3) + 1j
    for name, message in [
        ("text.h5", "{path}: not an HDF5 file"),
        ("cut.h5", "cannot read {path}: Unable to synchronously open file (truncated file: eof = 1000"),
        ("complex.h5", "{path}: array 'X' has non-numeric dtype complex128"),
        ("ycomplex.h5", "{path}: 'y' has dtype complex128; targets must be numbers or text labels"),
    ]:
        path = tmp_path / name
        proc = run_cli("datasets", "convert", str(path), "-o", str(tmp_path / "out.parquet"))
        assert proc.returncode == 2 and proc.stderr.startswith(f"drizzle-ml: error: {message.format(path=path)}")
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "out.parquet").exists()
