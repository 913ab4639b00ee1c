"""Hashed features: drizzle_ml.FeatureHasher against scikit-learn's, LIBSVM and token lines, ``datasets convert``.

Pure: no MPI process starts here (the training, prediction and stream runs are in test_cli and test_streaming).
"""

import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.feature_extraction import FeatureHasher as SKHasher

from drizzle_ml import FeatureHasher
from drizzle_ml.datasets import convert
from drizzle_ml.hashing import LineHasher

from .conftest import run_cli

VOCAB = [f"w{i}" for i in range(400)] + ["é", "日本語", "a=b", "", " ", "#tag", "7", "007"]


def _same(ours, theirs):
    """The same CSR matrix, stored the same way (values, column order, index dtypes)."""
    assert sp.issparse(ours) and ours.format == "csr" and ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype
    for name in ("indptr", "indices", "data"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def _random_rows(rng, kind, n=300):
    rows = []
    for _ in range(n):
        names = [VOCAB[j] for j in rng.integers(0, len(VOCAB), rng.integers(0, 15))]
        if kind == "string":
            rows.append(names)
            continue
        values = []
        for _ in names:
            r = rng.random()
            values.append(float(rng.normal()) if r < 0.6 else int(rng.integers(-3, 4)) if r < 0.8
                          else 0.0 if r < 0.9 else str(rng.choice(["red", "blue", "x y"])))
        rows.append(dict(zip(names, values)) if kind == "dict" else list(zip(names, values)))
    return rows


@pytest.mark.parametrize("n_bits", [1, 4, 10, 18, 31])
@pytest.mark.parametrize("input_type", ["dict", "pair", "string"])
@pytest.mark.parametrize("alternate_sign", [True, False])
def test_identical_to_scikit_learn(n_bits, input_type, alternate_sign):
    rng = np.random.default_rng(n_bits)
    rows = _random_rows(rng, input_type)
    ours = FeatureHasher(n_bits, input_type=input_type, alternate_sign=alternate_sign).transform(rows)
    theirs = SKHasher(2**n_bits, input_type=input_type, alternate_sign=alternate_sign).transform(rows)
    _same(ours, theirs)


def test_bytes_names_float32_and_the_cache_refill():
    rows = [[(b"abc", np.float32(1.5)), ("abc", True), ("d", np.int64(2))], [(b"\xff\xfe", 3)]]
    _same(FeatureHasher(8, input_type="pair", dtype=np.float32).transform(rows),
          SKHasher(256, input_type="pair", dtype=np.float32).transform(rows))
    hasher = FeatureHasher(20, input_type="string")
    import drizzle_ml.hashing as hashing

    limit, hashing._CACHE_LIMIT = hashing._CACHE_LIMIT, 50  # names forgotten and hashed again
    try:
        rows = [[f"t{i % 70}", f"u{i}"] for i in range(200)]
        for lo in range(0, 200, 30):
            _same(hasher.transform(rows[lo:lo + 30]), SKHasher(2**20, input_type="string").transform(rows[lo:lo + 30]))
    finally:
        hashing._CACHE_LIMIT = limit


def test_deterministic_across_processes_and_pickling():
    """No Python hash(): another interpreter (another PYTHONHASHSEED) and an unpickled copy agree."""
    rows = [{"user=42": 1, "ad": 2.5}, {"query": "shoes", "user=7": 1}]
    here = FeatureHasher(16).transform(rows).toarray()
    code = ("import sys, pickle; from drizzle_ml import FeatureHasher; "
            "sys.stdout.buffer.write(pickle.dumps(FeatureHasher(16).transform(eval(sys.argv[1])).toarray()))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, repr(rows)], capture_output=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
        np.testing.assert_array_equal(pickle.loads(out), here)
    clone = pickle.loads(pickle.dumps(FeatureHasher(16)))
    np.testing.assert_array_equal(clone.transform(rows).toarray(), here)


@pytest.mark.parametrize("value, message", [
    (-3, "n_bits must be an integer between 1 and 31, got -3"),
    (0, "n_bits must be an integer between 1 and 31, got 0"),
    (32, "n_bits must be an integer between 1 and 31, got 32"),
    (2.5, "n_bits must be an integer between 1 and 31, got 2.5"),
    (True, "n_bits must be an integer between 1 and 31, got True"),
])
def test_n_bits_is_checked(value, message):
    with pytest.raises(ValueError) as exc:
        FeatureHasher(value)
    assert str(exc.value) == message


@pytest.mark.parametrize("input_type, raw, message", [
    ("dict", [["a", 1]], "input_type='dict' takes a mapping (feature name -> value) per row; row 0 is list"),
    ("dict", [{"a": None}], "row 0: feature values must be numbers, got NoneType 'None'"),
    ("dict", [{"a": 1}, {"b": b"1.5"}], "row 1: feature values must be numbers, got bytes"),
    ("pair", [[("a", 1)], [5]], "row 1: cannot unpack non-iterable int object"),
    ("pair", [[("a", 1, 2)]], "row 0: too many values to unpack"),
    ("dict", [{5: 1.0}], "feature names must be strings, got int '5'"),
    ("string", [["a", 3]], "feature names must be strings, got int '3'"),
    ("string", [["a", ["b"]]], "feature names must be strings, got list"),
    ("string", ["abc"], "input_type='string' takes an iterable of tokens per row; row 0 is a single string"),
    ("string", [5], "input_type='string' takes an iterable of tokens per row; row 0 is int"),
    ("string", "abc", "raw_X must be an iterable of rows, got a single str"),
    ("dict", 5, "raw_X must be an iterable of rows, got int"),
])
def test_wrong_inputs_get_one_line_errors(input_type, raw, message):
    with pytest.raises((TypeError, ValueError)) as exc:
        FeatureHasher(8, input_type=input_type).transform(raw)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_other_parameters_are_checked():
    with pytest.raises(ValueError, match="input_type must be one of 'dict', 'pair', 'string', got 'text'"):
        FeatureHasher(8, input_type="text")
    with pytest.raises(ValueError, match="alternate_sign must be True or False, got 'yes'"):
        FeatureHasher(8, alternate_sign="yes")
    assert FeatureHasher(8).transform([]).shape == (0, 256)  # scikit-learn raises on an empty input


def _libsvm_lines(rng, n=500, labels=True):
    lines = []
    for _ in range(n):
        idx = rng.choice(5000, size=rng.integers(0, 12), replace=False)
        vals = np.round(rng.normal(size=len(idx)), 4)
        vals[rng.random(len(idx)) < 0.05] = 0.0
        head = [f"{int(rng.integers(0, 2))}"] if labels else []
        lines.append(" ".join(head + [f"{j}:{v}" for j, v in zip(idx, vals)]))
    return lines


def test_libsvm_lines_are_hashed_as_pairs_of_index_strings():
    rng = np.random.default_rng(0)
    lines = _libsvm_lines(rng) + ["", "# a comment", "1 qid:3 7:1.5 007:2 +7:1 # 9:9"]
    errors = []
    X, y, kept = LineHasher(18, "libsvm").hash_lines(lines, lambda i, why: errors.append((i, why)))
    pairs = []
    for line in lines:
        toks = line.split("#")[0].split()
        if toks:
            pairs.append([(str(int(t.split(":")[0])), float(t.split(":")[1])) for t in toks[1:]
                          if not t.startswith("qid:")])
    _same(X, SKHasher(2**18, input_type="pair").transform(pairs))
    assert errors == [] and len(kept) == len(y) == 501 and kept[-1] == 502
    assert X[500].toarray().sum() != 0 and X[500].nnz == 1  # "7", "007", "+7": one feature


def test_token_lines_are_hashed_as_strings():
    lines = ["1 site=news ad=42 the the", "0", "", "1 #tag Café ad=42", "0 a\tb"]
    X, y, kept = LineHasher(20, "tokens").hash_lines(lines, lambda i, why: pytest.fail(why))
    _same(X, SKHasher(2**20, input_type="string").transform([ln.split()[1:] for ln in lines if ln]))
    np.testing.assert_array_equal(y, [1, 0, 1, 0])
    assert kept == [0, 1, 3, 4]
    X2, y2, _ = LineHasher(20, "tokens", has_label=False).hash_lines(["1 a b"], lambda i, why: None)
    assert y2 is None
    _same(X2, SKHasher(2**20, input_type="string").transform([["1", "a", "b"]]))


@pytest.mark.parametrize("line, reason", [
    ("1 x:1", "'x' is not a feature index (an integer)"),
    ("1 1.5:1", "'1.5' is not a feature index (an integer)"),
    ("1 -2:1", "feature index -2 is negative"),
    ("1 3:abc", "'abc' is not a number"),
    ("1 3:nan", "'nan' is not a finite number"),
    ("1 3", "expected index:value, got '3'"),
    ("garbage", "label 'garbage' is not a number"),
    ("3:1 4:1", "the line starts with '3:1', not a label"),
    ("1,2 3:1", "multilabel '1,2' is not supported"),
    ("inf 3:1", "label 'inf' is not a finite number"),
])
def test_malformed_libsvm_lines_are_reported(line, reason):
    seen = []
    X, y, kept = LineHasher(8, "libsvm").hash_lines(["1 1:1", line, "0 2:1"], lambda i, why: seen.append((i, why)))
    assert seen == [(1, reason)] and kept == [0, 2] and X.shape == (2, 256)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_convert_hash_features_matches_scikit_learn_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    lines = _libsvm_lines(rng, 1000)
    src = _write(tmp_path / "d.svm", lines)
    info = convert(src, tmp_path / "d.h5", hash_features=16, chunk_rows=77)
    assert (info["rows"], info["features"], info["sparse"]) == (1000, 2**16, True)
    pairs = [[(str(int(t.split(":")[0])), float(t.split(":")[1])) for t in ln.split()[1:]] for ln in lines]
    expected = SKHasher(2**16, input_type="pair").transform(pairs)
    with h5py.File(tmp_path / "d.h5") as f:
        g = f["X"]
        got = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=tuple(g.attrs["shape"]))
        np.testing.assert_array_equal(f["y"][:], [int(ln.split()[0]) for ln in lines])
        assert f.attrs["hash_bits"] == 16 and f.attrs["format"] == "libsvm" and f.attrs["n_features"] == 2**16
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.data, expected.data)


def test_convert_tokens_with_and_without_labels(tmp_path):
    src = _write(tmp_path / "c.tokens", ["1 site=news ad=42 hour=13", "0 site=shop ad=7 hour=13", "1 the cat sat"])
    r = run_cli("datasets", "convert", src, "-o", str(tmp_path / "c.h5"), "--hash-features", "10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'c.h5'}: 3 rows x 1024 features (sparse, 9 nonzeros), y: 2 classes"
    r = run_cli("datasets", "convert", src, "-o", str(tmp_path / "n.h5"), "--hash-features", "10",
                "--label-column", "none", "--format", "tokens")
    assert r.returncode == 0, r.stderr
    assert "3 rows x 1024 features (sparse, 12 nonzeros), no y" in r.stdout
    with h5py.File(tmp_path / "n.h5") as f:
        g = f["X"]
        got = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=tuple(g.attrs["shape"]))
    lines = (tmp_path / "c.tokens").read_text().splitlines()
    _same(got.astype(np.float64), SKHasher(1024, input_type="string").transform([ln.split() for ln in lines]))


@pytest.mark.parametrize("args, lines, message", [
    (["--hash-features", "-3"], ["1 1:1"], "--hash-features must be an integer between 1 and 31, got -3"),
    (["--hash-features", "32"], ["1 1:1"], "--hash-features must be an integer between 1 and 31, got 32"),
    (["--hash-features", "8"], ["1 1:1", "0 a:1"], "d.svm line 2: 'a' is not a feature index (an integer)"),
    (["--hash-features", "8"], ["1 1:1", "", "0 2.5:1"], "d.svm line 3: '2.5' is not a feature index (an integer)"),
    (["--hash-features", "8"], ["1 1:1", "garbage here"], "d.svm line 2: label 'garbage' is not a number"),
    (["--hash-features", "8"], ["# only a comment"], "d.svm: no data rows"),
    (["--hash-features", "8", "--n-features", "5"], ["1 1:1"],
     "n_features and zero_based do not apply to hashed features (2**hash_features columns)"),
    (["--hash-features", "8", "--format", "csv"], ["1,2"],
     "hash_features (--hash-features) applies to LIBSVM and tokens input, not csv"),
    (["--format", "tokens"], ["1 a b"], "d.svm: tokens input is hashed: give hash_features (--hash-features BITS)"),
    (["--hash-features", "8", "--label-column", "none"], ["1 1:1"],
     "d.svm: LIBSVM lines start with their label; label_column applies to CSV, NPY and tokens"),
])
def test_convert_bad_input_is_one_line(tmp_path, monkeypatch, args, lines, message):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "d.svm", lines)
    r = run_cli("datasets", "convert", "d.svm", "-o", "out.h5", *args)
    assert r.returncode == 2
    assert r.stderr == f"drizzle-ml: error: {message}\n"
    assert not (tmp_path / "out.h5").exists()
