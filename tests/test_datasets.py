"""drizzle_ml.datasets and its command line: make, convert and describe dataset files (real files, small data)."""

import argparse
import importlib
import os

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from drizzle_ml.data import HDF5Dataset, read_hdf5_partition
from drizzle_ml.datasets import KINDS, convert, describe, make, make_dataset
from drizzle_ml.launch.datasets import add_datasets_parser, run_datasets


def read(path, x_key="X", y_key="y"):
    with h5py.File(path, "r") as f:
        node = f[x_key]
        if isinstance(node, h5py.Dataset):
            X = node[()]
        else:
            X = sp.csr_matrix((node["data"][()], node["indices"][()], node["indptr"][()]),
                              shape=tuple(node.attrs["shape"]))
        y = f[y_key][()] if y_key in f else None
    return X, y


def leftovers(directory):
    return [p for p in os.listdir(directory) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- make


@pytest.mark.parametrize("kind,options,has_y,y_kind", [
    ("classification", {"n_classes": 3}, True, "i"),
    ("regression", {}, True, "f"),
    ("lowrank", {"rank": 3}, False, None),
    ("blobs", {"centers": 4}, True, "i"),
])
def test_make_each_kind_shapes_dtypes_and_attributes(tmp_path, kind, options, has_y, y_kind):
    path = tmp_path / f"{kind}.h5"
    info = make_dataset(kind, path, 300, 6, random_state=5, **options)
    X, y = read(path)
    assert X.shape == (300, 6) and X.dtype == np.float64 and np.isfinite(X).all()
    with h5py.File(path, "r") as f:
        assert f["X"].chunks is not None
        assert f.attrs["kind"] == kind and f.attrs["seed"] == 5 and f.attrs["rows"] == 300
        for name, value in options.items():
            assert f.attrs[name] == value
    assert info["rows"] == 300 and info["features"] == 6 and not info["sparse"]
    if has_y:
        assert y.shape == (300,) and y.dtype.kind == y_kind
        if y_kind == "i":
            n = options.get("n_classes", options.get("centers"))
            assert set(np.unique(y)) == set(range(n))
            assert info["y"]["classes"] == list(range(n)) and sum(info["y"]["counts"]) == 300
    else:
        assert y is None and info["y"] is None
    ds = HDF5Dataset(path, y_key="y" if has_y else None)
    assert (ds.n_rows, ds.n_features) == (300, 6)


@pytest.mark.parametrize("kind", KINDS)
def test_make_is_determined_by_the_seed_not_the_chunk_size(tmp_path, kind, monkeypatch):
    # small random blocks, so that chunks of 7 and 64 rows cross block boundaries differently
    monkeypatch.setattr(make, "_BLOCK_ROWS", 50)
    make_dataset(kind, tmp_path / "a.h5", 230, 4, random_state=1, chunk_rows=7)
    make_dataset(kind, tmp_path / "b.h5", 230, 4, random_state=1, chunk_rows=64)
    make_dataset(kind, tmp_path / "c.h5", 230, 4, random_state=1)
    make_dataset(kind, tmp_path / "d.h5", 230, 4, random_state=2, chunk_rows=7)
    (Xa, ya), (Xb, yb), (Xc, yc), (Xd, _) = (read(tmp_path / f"{n}.h5") for n in "abcd")
    np.testing.assert_array_equal(Xa, Xb)
    np.testing.assert_array_equal(Xa, Xc)
    if ya is not None:
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(ya, yc)
    assert not np.array_equal(Xa, Xd)
    # different blocks draw different rows
    assert not np.allclose(Xa[:50], Xa[50:100])


def test_make_classification_is_learnable_by_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression

    make_dataset("classification", tmp_path / "c.h5", 2000, 10, random_state=0, n_classes=2)
    X, y = read(tmp_path / "c.h5")
    clf = LogisticRegression(max_iter=500).fit(X[:1500], y[:1500])
    assert clf.score(X[1500:], y[1500:]) > 0.75
    make_dataset("blobs", tmp_path / "b.h5", 600, 3, centers=3)
    X, y = read(tmp_path / "b.h5")
    assert LogisticRegression(max_iter=500).fit(X, y).score(X, y) > 0.9


def test_make_regression_and_lowrank_follow_their_model(tmp_path):
    make_dataset("regression", tmp_path / "r.h5", 500, 5, noise=0.01)
    X, y = read(tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "r") as f:
        coef = f["model/coef"][()]
    np.testing.assert_allclose(np.linalg.lstsq(X, y, rcond=None)[0], coef, atol=0.01)
    make_dataset("lowrank", tmp_path / "l.h5", 2000, 8, rank=2, noise=0.001)
    X, _ = read(tmp_path / "l.h5")
    s = np.linalg.svd(X, compute_uv=False)
    assert s[2] < 0.05 * s[1]  # rank 2 plus small noise


def test_make_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'spiral'"):
        make_dataset("spiral", tmp_path / "x.h5", 10, 2)
    with pytest.raises(ValueError, match="rows must be a positive integer, got 0"):
        make_dataset("blobs", tmp_path / "x.h5", 0, 2)
    for chunk_rows in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"chunk_rows must be a positive integer, got {chunk_rows!r}"):
            make_dataset("blobs", tmp_path / "x.h5", 10, 2, chunk_rows=chunk_rows)
    with pytest.raises(ValueError, match="blobs datasets take no option 'rank'"):
        make_dataset("blobs", tmp_path / "x.h5", 10, 2, rank=2)
    with pytest.raises(ValueError, match="rank=5 exceeds features=3"):
        make_dataset("lowrank", tmp_path / "x.h5", 10, 3, rank=5)
    with pytest.raises(ValueError, match="8 classes need at least 3 informative features"):
        make_dataset("classification", tmp_path / "x.h5", 10, 2, n_classes=8)
    make_dataset("blobs", tmp_path / "x.h5", 10, 2)
    with pytest.raises(FileExistsError, match="x.h5 exists: pass overwrite=True"):
        make_dataset("blobs", tmp_path / "x.h5", 10, 2)
    make_dataset("blobs", tmp_path / "x.h5", 12, 2, overwrite=True)
    assert describe(tmp_path / "x.h5")["rows"] == 12
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- convert: CSV


def table(n=23, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, 3, n)
    return X, y


@pytest.mark.parametrize("label_first", [False, True])
@pytest.mark.parametrize("header", [False, True])
def test_csv_round_trip(tmp_path, label_first, header):
    X, y = table()
    cols = [y[:, None], X] if label_first else [X, y[:, None]]
    names = ["label", "a", "b", "c", "d"] if label_first else ["a", "b", "c", "d", "label"]
    src = tmp_path / "data.csv"
    np.savetxt(src, np.hstack(cols), delimiter=",", fmt="%.17g",
               header=",".join(names) if header else "", comments="")
    kwargs = {"label_column": 0} if label_first else {}
    info = convert(src, tmp_path / "out.h5", **kwargs)
    X2, y2 = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.int64 and X2.dtype == np.float64
    assert info["rows"] == 23 and info["features"] == 4 and info["y"]["classes"] == sorted(set(y))
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f.attrs["format"] == "csv" and f.attrs["source"] == "data.csv"
        assert f.attrs["header"] == header
    if header:  # by name
        convert(src, tmp_path / "named.h5", label_column="label")
        X3, y3 = read(tmp_path / "named.h5")
        np.testing.assert_array_equal(X3, X)
        np.testing.assert_array_equal(y3, y)


def test_csv_tiny_chunks_equal_one_chunk_and_the_engine_reads_it(tmp_path):
    X, y = table(n=50, d=3)
    y = y + 0.5  # float labels
    src = tmp_path / "data.csv"
    np.savetxt(src, np.hstack([X, y[:, None]]), delimiter=";", fmt="%.17g")
    convert(src, tmp_path / "one.h5", delimiter=";")
    convert(src, tmp_path / "tiny.h5", delimiter=";", chunk_rows=3)
    (X1, y1), (X2, y2) = read(tmp_path / "one.h5"), read(tmp_path / "tiny.h5")
    np.testing.assert_array_equal(X1, X)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y1, y)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.float64
    ds = HDF5Dataset(tmp_path / "tiny.h5")
    assert (ds.n_rows, ds.n_features) == (50, 3)
    spec, _ = ds.slices(10, 20)
    part = read_hdf5_partition(spec)
    np.testing.assert_array_equal(part.X, X[10:20])
    np.testing.assert_array_equal(part.y, y[10:20])


def test_csv_no_label_and_blank_lines(tmp_path):
    src = tmp_path / "data.csv"
    src.write_text("1,2\n\n3,4\n5,6\n\n")
    convert(src, tmp_path / "o.h5", label_column=None)
    X, y = read(tmp_path / "o.h5")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert y is None
    assert describe(tmp_path / "o.h5")["y"] is None


@pytest.mark.parametrize("text,kwargs,message", [
    ("a,b,c\n1,2,3\n4,5\n", {}, "data.csv line 3: expected 3 columns, got 2"),
    ("1,2,3\n4,5,6\n7,abc,9\n", {}, "data.csv line 3: 'abc' is not a number"),
    ("1,2,3\n4,nan,6\n", {}, "data.csv line 2: 'nan' is not a finite number"),
    ("1,2,3\n4,5,inf\n", {}, "data.csv line 2: 'inf' is not a finite number"),
    ("1,2,3\n4,,6\n", {}, "data.csv line 2: '' is not a number"),
    ("", {}, "data.csv: no data rows"),
    ("a,b,c\n", {}, "data.csv: no data rows"),
    ("x,y\n1,2\n", {"has_header": False}, "data.csv line 1: 'x' is not a number"),
    ("1,2\n", {"label_column": "target"}, "label column 'target' is given by name but the file has no header"),
    ("a,b\n1,2\n", {"label_column": "target"}, "no column named 'target' (columns: a, b)"),
    ("1,2\n", {"label_column": 5}, "label column 5 is out of range for 2 columns"),
    ("1\n2\n", {}, "data.csv: no feature columns"),
    ("1;2;3\n4;5;6\n", {}, "data.csv: no feature columns (only the label column); the lines hold ';': is that the "
                          "delimiter? (delimiter, --delimiter)"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, text, kwargs, message):
    src = tmp_path / "data.csv"
    src.write_text(text)
    with pytest.raises(ValueError) as exc:
        convert(src, tmp_path / "out.h5", chunk_rows=2, **kwargs)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out.h5").exists() and leftovers(tmp_path) == []


def test_common_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv: no such file"):
        convert(tmp_path / "missing.csv", tmp_path / "o.h5")
    (tmp_path / "data.dat").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"cannot infer the format of .*data.dat from its extension '.dat'"):
        convert(tmp_path / "data.dat", tmp_path / "o.h5")
    with pytest.raises(ValueError, match="unknown format 'orc'"):
        convert(tmp_path / "data.dat", tmp_path / "o.h5", fmt="orc")
    convert(tmp_path / "data.dat", tmp_path / "o.h5", fmt="csv")  # explicit format
    with pytest.raises(FileExistsError, match="o.h5 exists: pass overwrite=True"):
        convert(tmp_path / "data.dat", tmp_path / "o.h5", fmt="csv")
    before = read(tmp_path / "o.h5")[0]
    # a failed conversion with overwrite leaves the old file intact and no temporary file
    (tmp_path / "bad.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="bad.csv line 2"):
        convert(tmp_path / "bad.csv", tmp_path / "o.h5", overwrite=True)
    np.testing.assert_array_equal(read(tmp_path / "o.h5")[0], before)
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="n_features applies to LIBSVM input only"):
        convert(tmp_path / "data.dat", tmp_path / "p.h5", fmt="csv", n_features=3)


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    bom = "\ufeff"
    (tmp_path / "rows.csv").write_text(bom + "1,2,0\n3,4,1\n", encoding="utf-8")
    convert(tmp_path / "rows.csv", tmp_path / "rows.h5")
    X, y = read(tmp_path / "rows.h5")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])  # the first row is data, not a header
    np.testing.assert_array_equal(y, [0, 1])
    (tmp_path / "named.csv").write_text(bom + "a,b,label\n1,2,0\n", encoding="utf-8")
    convert(tmp_path / "named.csv", tmp_path / "named.h5", label_column="label")
    assert describe(tmp_path / "named.h5")["attributes"]["feature_names"] == '["a", "b"]'
    (tmp_path / "rows.svm").write_text(bom + "1 1:2.5\n0 2:1\n", encoding="utf-8")
    convert(tmp_path / "rows.svm", tmp_path / "svm.h5")
    X, y = read(tmp_path / "svm.h5")
    np.testing.assert_array_equal(X.toarray(), [[2.5, 0], [0, 1]])
    np.testing.assert_array_equal(y, [1, 0])


def test_a_fifo_to_convert_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    with pytest.raises(ValueError) as exc:
        convert(fifo, tmp_path / "o.h5")
    assert str(exc.value) == f"{fifo} is not a regular file (a FIFO or a device): give a file to convert"


# --------------------------------------------------------------------------- convert: NPY, NPZ


def test_npy_round_trip_chunks_and_label_column(tmp_path):
    X, _ = table(n=31, d=5)
    np.save(tmp_path / "x.npy", X)
    convert(tmp_path / "x.npy", tmp_path / "a.h5")
    convert(tmp_path / "x.npy", tmp_path / "b.h5", chunk_rows=3)
    for name in "ab":
        X2, y2 = read(tmp_path / f"{name}.h5")
        np.testing.assert_array_equal(X2, X)
        assert y2 is None
    np.save(tmp_path / "f32.npy", X.astype(np.float32))
    convert(tmp_path / "f32.npy", tmp_path / "c.h5", label_column=-1, chunk_rows=4)
    X3, y3 = read(tmp_path / "c.h5")
    assert X3.dtype == np.float32 and y3.dtype == np.float64
    np.testing.assert_array_equal(X3, X[:, :4].astype(np.float32))
    np.testing.assert_array_equal(y3, X[:, 4].astype(np.float32))


def test_npz_round_trip_and_keys(tmp_path):
    X, y = table(n=29, d=3)
    np.savez(tmp_path / "d.npz", X=X, y=y.astype(np.int32))
    np.savez_compressed(tmp_path / "k.npz", feats=np.asfortranarray(X), target=y)
    convert(tmp_path / "d.npz", tmp_path / "a.h5", chunk_rows=4)
    X2, y2 = read(tmp_path / "a.h5")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert y2.dtype == np.int32
    convert(tmp_path / "k.npz", tmp_path / "b.h5", x_key="feats", y_key="target", chunk_rows=5)
    X3, y3 = read(tmp_path / "b.h5", "feats", "target")
    np.testing.assert_array_equal(X3, X)
    np.testing.assert_array_equal(y3, y)
    ds = HDF5Dataset(tmp_path / "b.h5", x_key="feats", y_key="target")
    assert (ds.n_rows, ds.n_features) == (29, 3)


def test_array_errors(tmp_path):
    X, y = table(n=10, d=3)
    np.savez(tmp_path / "d.npz", X=X, labels=y)
    with pytest.raises(ValueError, match=r"d.npz has no array 'y' \(arrays: X, labels\)"):
        convert(tmp_path / "d.npz", tmp_path / "o.h5")
    np.savez(tmp_path / "e.npz", X=X, y=y[:5])
    with pytest.raises(ValueError, match=r"e.npz: 'y' must have shape \(10,\)"):
        convert(tmp_path / "e.npz", tmp_path / "o.h5")
    bad = X.copy()
    bad[7, 1] = np.nan
    np.save(tmp_path / "n.npy", bad)
    with pytest.raises(ValueError, match="n.npy row 7: a value is not a finite number"):
        convert(tmp_path / "n.npy", tmp_path / "o.h5", chunk_rows=3)
    np.save(tmp_path / "v.npy", y)
    with pytest.raises(ValueError, match=r"v.npy: array must be 2-D \(rows, features\), got shape \(10,\)"):
        convert(tmp_path / "v.npy", tmp_path / "o.h5")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="s.npy: array 'array' has non-numeric dtype"):
        convert(tmp_path / "s.npy", tmp_path / "o.h5")
    (tmp_path / "z.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="z.npy: not a readable .npy file"):
        convert(tmp_path / "z.npy", tmp_path / "o.h5")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    with pytest.raises(ValueError, match="empty.npy: no data rows"):
        convert(tmp_path / "empty.npy", tmp_path / "o.h5")
    with pytest.raises(ValueError) as exc:
        convert(tmp_path / "d.npz", tmp_path / "o.h5", fmt="npy")
    assert str(exc.value) == f"{tmp_path / 'd.npz'}: a .npz archive, not a .npy file: give the format npz " \
                             "(--format npz)"
    assert not (tmp_path / "o.h5").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- convert: LIBSVM


def sparse_table(n=40, d=9, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.3, random_state=seed).toarray()
    X[::3, 0] = 1.25
    X = sp.csr_matrix(X)
    y = rng.integers(0, 2, n)
    return X, y


@pytest.mark.parametrize("zero_based", [True, False])
def test_libsvm_round_trip_matches_sklearn(tmp_path, zero_based):
    from sklearn.datasets import dump_svmlight_file, load_svmlight_file

    X, y = sparse_table()
    assert X[:, 0].nnz > 0  # column 0 has values, so "auto" detection is unambiguous
    src = tmp_path / "data.svm"
    dump_svmlight_file(X, y, str(src), zero_based=zero_based)
    ref_X, ref_y = load_svmlight_file(str(src), zero_based="auto")
    for chunk, name in ((None, "one.h5"), (3, "tiny.h5")):
        info = convert(src, tmp_path / name, chunk_rows=chunk)
        X2, y2 = read(tmp_path / name)
        assert X2.shape == ref_X.shape == X.shape
        np.testing.assert_array_equal(X2.indptr, ref_X.indptr)
        np.testing.assert_array_equal(X2.indices, ref_X.indices)
        np.testing.assert_array_equal(X2.data, ref_X.data)
        np.testing.assert_array_equal(y2, ref_y)
        assert info["sparse"] and info["nnz"] == X.nnz
        with h5py.File(tmp_path / name, "r") as f:
            assert bool(f.attrs["zero_based"]) == zero_based
    explicit = convert(src, tmp_path / "explicit.h5", zero_based=zero_based, n_features=12)
    assert explicit["features"] == 12
    ds = HDF5Dataset(tmp_path / "tiny.h5")
    assert (ds.n_rows, ds.n_features) == X.shape
    part = read_hdf5_partition(ds.slices(5, 17)[0])
    np.testing.assert_array_equal(part.X.toarray(), ref_X[5:17].toarray())  # the file holds %.16g values
    np.testing.assert_array_equal(part.y, y[5:17])


def test_libsvm_comments_blank_lines_and_qid(tmp_path):
    src = tmp_path / "d.libsvm"
    src.write_text("# a comment\n1 0:1.5 3:2 # trailing\n\n-1 qid:4 1:-2.5\n0\n")
    convert(src, tmp_path / "o.h5", n_features=5)
    X, y = read(tmp_path / "o.h5")
    np.testing.assert_array_equal(X.toarray(), [[1.5, 0, 0, 2, 0], [0, -2.5, 0, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(y, [1, -1, 0])


@pytest.mark.parametrize("text,kwargs,message", [
    ("1 0:1 2:3\n0 1:abc\n", {}, "data.svm line 2: 'abc' is not a number"),
    ("1 0:1\n0 1:nan\n", {}, "data.svm line 2: 'nan' is not a finite number"),
    ("1 0:1\nfoo 1:2\n", {}, "data.svm line 2: label 'foo' is not a number"),
    ("1 0:1\n0 3:1 2:1\n", {}, "data.svm line 2: feature indices must be increasing, got 2 after 3"),
    ("1 0:1\n0 1 2:1\n", {}, "data.svm line 2: expected index:value, got '1'"),
    ("1 0:1\n0 x:1\n", {}, "data.svm line 2: 'x' is not a feature index"),
    ("1 0:1\n0 5:1\n1 1:1\n", {"n_features": 4},
     "data.svm line 2: feature index 5 needs 6 features, but n_features is 4"),
    ("1 1:1\n0 0:1\n", {"zero_based": False}, "data.svm line 2: feature index 0 in a file read as one-based"),
    ("1,2 0:1\n", {}, "data.svm line 1: multilabel '1,2' is not supported"),
    ("# only a comment\n\n", {}, "data.svm: no data rows"),
])
def test_libsvm_errors_name_the_file_and_line(tmp_path, text, kwargs, message):
    src = tmp_path / "data.svm"
    src.write_text(text)
    with pytest.raises(ValueError) as exc:
        convert(src, tmp_path / "out.h5", **kwargs)
    assert message in str(exc.value)
    assert not (tmp_path / "out.h5").exists() and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- describe and the CLI


def test_describe(tmp_path):
    make_dataset("blobs", tmp_path / "b.h5", 100, 3, random_state=7, centers=2)
    info = describe(tmp_path / "b.h5")
    assert info["rows"] == 100 and info["features"] == 3 and info["sparse"] is False
    assert info["dtype"] == "float64" and info["nnz"] == 300
    assert info["keys"] == ["X", "model", "y"]
    assert info["y"]["classes"] == [0, 1] and sum(info["y"]["counts"]) == 100
    assert info["attributes"]["kind"] == "blobs" and info["attributes"]["seed"] == 7
    assert info["attributes"]["centers"] == 2
    make_dataset("regression", tmp_path / "r.h5", 50, 2)
    y = describe(tmp_path / "r.h5")["y"]
    _, ry = read(tmp_path / "r.h5")
    assert y["dtype"] == "float64" and y["min"] == ry.min() and y["max"] == ry.max()
    assert y["mean"] == pytest.approx(ry.mean())
    with pytest.raises(FileNotFoundError, match="nope.h5: no such file"):
        describe(tmp_path / "nope.h5")
    (tmp_path / "t.h5").write_text("text")
    with pytest.raises(ValueError, match="t.h5: not an HDF5 file"):
        describe(tmp_path / "t.h5")


def test_describe_reports_nan_targets_and_refuses_targets_that_do_not_fit_x(tmp_path):
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["X"], f["y"] = np.ones((3, 2)), [1.0, np.nan, 2.0]
    y = describe(tmp_path / "nan.h5")["y"]
    assert np.isnan(y["min"]) and np.isnan(y["max"]) and np.isnan(y["mean"])
    with h5py.File(tmp_path / "long.h5", "w") as f:
        f["X"], f["y"] = np.ones((3, 2)), np.arange(4)
    with pytest.raises(ValueError) as exc:
        describe(tmp_path / "long.h5")
    assert str(exc.value) == f"{tmp_path / 'long.h5'}: 'y' has 4 rows but 'X' has 3"


def test_files_name_the_public_function_that_made_them(tmp_path):
    make_dataset("blobs", tmp_path / "b.h5", 10, 2)
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    convert(tmp_path / "x.npy", tmp_path / "x.h5")
    for path, attribute, function in ((tmp_path / "b.h5", "generator", make_dataset),
                                      (tmp_path / "x.h5", "converted_by", convert)):
        module, name = describe(path)["attributes"][attribute].rsplit(".", 1)
        assert module == "drizzle_ml.datasets" and getattr(importlib.import_module(module), name) is function


def parser():
    p = argparse.ArgumentParser(prog="drizzle-ml")
    sub = p.add_subparsers(dest="command", required=True)
    add_datasets_parser(sub)
    return p


def test_cli_make_convert_info(tmp_path, capsys):
    out = tmp_path / "c.h5"
    args = parser().parse_args(["datasets", "make", "classification", "--rows", "200", "--features", "4",
                                "--classes", "3", "--seed", "2", "-o", str(out)])
    assert run_datasets(args) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 200 rows x 4 features (dense), y: 3 classes"
    make_dataset("classification", tmp_path / "d.h5", 200, 4, random_state=2, n_classes=3)
    np.testing.assert_array_equal(read(out)[0], read(tmp_path / "d.h5")[0])

    src = tmp_path / "t.csv"
    src.write_text("y,a,b\n1,0.5,2\n0,1.5,3\n")
    args = parser().parse_args(["datasets", "convert", str(src), "-o", str(tmp_path / "t.h5"),
                                "--label-column", "y"])
    run_datasets(args)
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 't.h5'}: 2 rows x 2 features (dense), y: 2 classes"
    args = parser().parse_args(["datasets", "convert", str(src), "-o", str(tmp_path / "u.h5"),
                                "--label-column", "0", "--header", "--format", "csv", "--y-key", "target"])
    run_datasets(args)
    assert read(tmp_path / "u.h5", y_key="target")[1].tolist() == [1, 0]

    run_datasets(parser().parse_args(["datasets", "info", str(out)]))
    text = capsys.readouterr().out
    assert f"{out}: 200 rows x 4 features, dense float64" in text
    assert "3 classes" in text and "kind: classification" in text


def test_cli_errors_are_one_line(tmp_path):
    args = parser().parse_args(["datasets", "make", "blobs", "--rank", "2", "-o", str(tmp_path / "x.h5")])
    with pytest.raises(ValueError, match="--rank applies to lowrank datasets, not blobs"):
        run_datasets(args)
    args = parser().parse_args(["datasets", "convert", str(tmp_path / "no.csv"), "-o", str(tmp_path / "x.h5")])
    with pytest.raises(FileNotFoundError, match="no.csv: no such file"):
        run_datasets(args)
    with pytest.raises(SystemExit):
        parser().parse_args(["datasets", "convert", "a.csv", "-o", "b.h5", "--header", "--no-header"])
