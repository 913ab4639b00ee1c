"""Saving and loading fitted estimators (drizzle_ml.algorithms.persist)."""

import inspect
import os
import shutil

import h5py
import numpy as np
import pytest
from sklearn import datasets
from sklearn.preprocessing import StandardScaler

from drizzle_ml import PCA, ElasticNet, KMeans, Lasso, LinearRegression, LogisticRegression, Ridge
from drizzle_ml.algorithms import persist
from drizzle_ml.algorithms.persist import format_info, load_model, model_info, save_model

W = 2  # the machine is shared: two workers at most


def standardized(loader):
    X, y = loader(return_X_y=True)
    return StandardScaler().fit_transform(X), y


BREAST = standardized(datasets.load_breast_cancer)
IRIS = standardized(datasets.load_iris)
WINE = standardized(datasets.load_wine)
DIABETES = datasets.load_diabetes(return_X_y=True)
DIGITS = datasets.load_digits(return_X_y=True)[0][:300]
IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])


def _breast():
    X, y = BREAST
    return LogisticRegression(n_workers=W, max_iter=200).fit(X, y), X


def _iris_strings():  # multinomial, labels in an object array of str
    X, y = IRIS
    labels = IRIS_NAMES[y].astype(object)
    return LogisticRegression(n_workers=W, C=0.5, max_iter=200).fit(X, labels), X


def _wine_float32():  # multinomial, unicode labels, float32 coefficients
    X, y = WINE
    labels = np.array(["barolo", "grignolino", "barbera"])[y]
    X = X.astype(np.float32)
    return LogisticRegression(n_workers=W, max_iter=300, tol=1e-3).fit(X, labels), X


def _linear():
    X, y = DIABETES
    return LinearRegression(n_workers=W).fit(X, y), X


def _ridge_float32_multi():
    X, y = DIABETES
    X = X.astype(np.float32)
    Y = np.column_stack([y, np.sqrt(y)]).astype(np.float32)
    return Ridge(alpha=0.3, n_workers=W).fit(X, Y), X


def _ridge_lbfgs():
    X, y = DIABETES
    return Ridge(alpha=0.1, solver="lbfgs", max_iter=200, n_workers=W).fit(X, y), X


def _lasso():
    X, y = DIABETES
    return Lasso(alpha=0.5, n_workers=W).fit(X, y), X


def _elasticnet_multitarget():
    X, y = DIABETES
    return ElasticNet(alpha=0.3, l1_ratio=0.7, n_workers=W).fit(X, np.column_stack([y, np.sqrt(y)])), X


def _logistic_l1():  # l1_ratio=None is saved as a JSON null
    X, y = BREAST
    return LogisticRegression(penalty="l1", C=0.1, max_iter=1000, n_workers=W).fit(X, y), X


def _pca():
    return PCA(n_components=5, n_workers=W).fit(DIGITS), DIGITS


def _pca_whiten_subspace():
    est = PCA(n_components=4, whiten=True, svd_solver="subspace", random_state=0, max_iter=50,
              n_workers=W)
    return est.fit(DIGITS), DIGITS


def _kmeans():
    return KMeans(n_clusters=4, random_state=0, n_workers=W).fit(DIGITS), DIGITS


def _kmeans_array_init_float32():
    X = DIGITS.astype(np.float32)
    return KMeans(n_clusters=3, init=X[[0, 50, 100]].astype(np.float64), n_workers=W).fit(X), X


CASES = {
    "logistic-binary": _breast,
    "logistic-multinomial-object-str": _iris_strings,
    "logistic-multinomial-float32-str": _wine_float32,
    "linear": _linear,
    "ridge-float32-multitarget": _ridge_float32_multi,
    "ridge-lbfgs": _ridge_lbfgs,
    "lasso": _lasso,
    "elasticnet-multitarget": _elasticnet_multitarget,
    "logistic-l1": _logistic_l1,
    "pca": _pca,
    "pca-whiten-subspace": _pca_whiten_subspace,
    "kmeans": _kmeans,
    "kmeans-array-init-float32": _kmeans_array_init_float32,
}

METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform",
           "inverse_transform")


@pytest.fixture(scope="module")
def fitted():
    """Each case fitted once (the fits start MPI workers): name -> (estimator, X)."""
    return {name: make() for name, make in CASES.items()}


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    """Each fitted case saved once: name -> path."""
    directory = tmp_path_factory.mktemp("models")
    paths = {}
    for name, (est, _) in fitted.items():
        paths[name] = directory / f"{name}.h5"
        save_model(est, paths[name], extra={"data": f"sklearn:{name}", "report": {"score": 0.5}})
    return paths


def assert_same_value(a, b, what):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), what
        assert a.dtype == b.dtype, what
        assert a.shape == b.shape, what
        if a.dtype.kind == "O":
            assert a.tolist() == b.tolist(), what
            assert all(type(x) is type(y) for x, y in zip(a.ravel(), b.ravel())), what
        else:
            assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), what
    else:
        assert type(a) is type(b), what
        assert a == b or (a != a and b != b), what


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_bit_identical(name, fitted, saved):
    est, X = fitted[name]
    loaded = load_model(saved[name])
    assert type(loaded) is type(est)
    params, loaded_params = est.get_params(), loaded.get_params()
    assert params.keys() == loaded_params.keys()
    for key in params:
        assert_same_value(params[key], loaded_params[key], f"parameter {key}")
    assert loaded.history_ == est.history_
    assert loaded.model_version_ == est.model_version_
    assert loaded.n_iter_ == est.n_iter_
    assert not hasattr(loaded, "model_store_")
    for key, value in vars(est).items():
        if key.endswith("_") and key != "model_store_":
            assert_same_value(value, getattr(loaded, key), f"attribute {key}")
    used = 0
    for method in METHODS:
        if not hasattr(est, method):
            continue
        arg = X if method != "inverse_transform" else est.transform(X)
        expected, got = getattr(est, method)(arg), getattr(loaded, method)(arg)
        assert got.dtype == expected.dtype, method
        assert np.array_equal(got, expected), method
        used += 1
    assert used >= 1
    y = None if isinstance(est, (PCA, KMeans)) else est.predict(X)
    if hasattr(est, "score"):
        assert loaded.score(X, y) == est.score(X, y)


def test_string_labels_keep_their_dtype(fitted, saved):
    loaded = load_model(saved["logistic-multinomial-object-str"])
    assert loaded.classes_.dtype == object and list(loaded.classes_) == list(IRIS_NAMES)
    assert loaded.predict(IRIS[0][:3]).dtype == object
    loaded = load_model(saved["logistic-multinomial-float32-str"])
    assert loaded.classes_.dtype.kind == "U" and loaded.coef_.dtype == np.float32


def test_loaded_model_refits(saved):
    loaded = load_model(saved["linear"])
    X, y = DIABETES
    assert loaded.fit(X[:100], y[:100]).coef_.shape == (10,)


def test_model_info(fitted, saved):
    info = model_info(saved["logistic-multinomial-float32-str"])
    est = fitted["logistic-multinomial-float32-str"][0]
    assert info["class"] == "LogisticRegression"
    assert info["format_version"] == persist.FORMAT_VERSION
    assert info["params"] == est.get_params()
    assert info["model_version"] == est.model_version_ and info["n_iter"] == est.n_iter_
    assert info["n_groups"] == len(est.history_) >= 1
    assert info["attributes"]["coef_"] == {"shape": (3, 13), "dtype": "float32"}
    assert info["attributes"]["classes_"] == {"shape": (3,), "dtype": "<U10"}
    assert info["attributes"]["n_features_in_"] == {"value": 13, "type": "int"}
    assert info["extra"] == {"data": "sklearn:logistic-multinomial-float32-str", "report": {"score": 0.5}}
    text = format_info(info)
    assert text.splitlines()[0].endswith("LogisticRegression (drizzle-ml model format 1, saved by drizzle-ml 0.1.0)")
    assert "    coef_: float32 3x13" in text and "    n_features_in_ = 13" in text
    assert "    data = 'sklearn:logistic-multinomial-float32-str'" in text

    info = model_info(saved["kmeans-array-init-float32"])
    assert isinstance(info["params"]["init"], np.ndarray) and info["params"]["init"].shape == (3, 64)
    assert "init = array(3, 64) float64" in format_info(info)


def test_no_extra(fitted, tmp_path):
    path = tmp_path / "m.h5"
    save_model(fitted["linear"][0], path)
    assert model_info(path)["extra"] is None


# -- atomicity -----------------------------------------------------------------------------------

def _fail_midway(monkeypatch):
    calls = []
    real = persist._write_array

    def failing(group, name, value):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(group, name, value)

    monkeypatch.setattr(persist, "_write_array", failing)
    return calls


def test_failed_save_leaves_no_file(fitted, tmp_path, monkeypatch):
    calls = _fail_midway(monkeypatch)
    path = tmp_path / "model.h5"
    with pytest.raises(OSError, match="simulated"):
        save_model(fitted["logistic-binary"][0], path)
    assert len(calls) == 2  # it did fail mid-way, after writing an array
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_previous_file(fitted, tmp_path, monkeypatch):
    path = tmp_path / "model.h5"
    save_model(fitted["linear"][0], path)
    before = path.read_bytes()
    _fail_midway(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        save_model(fitted["logistic-binary"][0], path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.h5"]
    assert type(load_model(path)) is LinearRegression


def test_saved_file_is_an_ordinary_file(saved):
    mode = os.stat(saved["pca"]).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_save_rejects_what_it_cannot_store(fitted, tmp_path):
    est = fitted["kmeans"][0]
    rs = KMeans(n_clusters=2, random_state=np.random.RandomState(0))
    rs.__dict__.update({k: v for k, v in vars(est).items() if k.endswith("_")})
    with pytest.raises(TypeError, match="parameter random_state = RandomState"):
        save_model(rs, tmp_path / "rs.h5")
    with pytest.raises(ValueError, match="cannot save an unfitted PCA"):
        save_model(PCA(), tmp_path / "unfitted.h5")
    with pytest.raises(TypeError, match="cannot save a StandardScaler"):
        save_model(StandardScaler().fit(DIGITS), tmp_path / "scaler.h5")
    with pytest.raises(TypeError, match="extra"):
        save_model(est, tmp_path / "extra.h5", extra={"when": object()})
    assert os.listdir(tmp_path) == []


# -- errors --------------------------------------------------------------------------------------

def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found: .*nothing.h5") as e:
        load_model(tmp_path / "nothing.h5")
    one_line(e)
    with pytest.raises(FileNotFoundError):
        model_info(tmp_path / "nothing.h5")


def test_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not a model\n" * 50)
    with pytest.raises(ValueError, match="is not an HDF5 file") as e:
        load_model(path)
    one_line(e)
    (tmp_path / "empty.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        load_model(tmp_path / "empty.h5")


def test_truncated_file(saved, tmp_path):
    path = tmp_path / "truncated.h5"
    data = saved["logistic-binary"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted") as e:
        load_model(path)
    one_line(e)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        model_info(path)


def test_foreign_hdf5(tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["X"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"not a drizzle-ml model file \(no 'format' attribute") as e:
        load_model(path)
    one_line(e)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="not a drizzle-ml model file \\(format 'something-else'"):
        model_info(path)


def copy_of(saved, name, tmp_path):
    path = tmp_path / f"{name}-copy.h5"
    shutil.copyfile(saved[name], path)
    return path


def test_unknown_class(saved, tmp_path):
    path = copy_of(saved, "pca", tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["class"] = "GaussianProcess"
    with pytest.raises(ValueError, match="unknown estimator class 'GaussianProcess'") as e:
        load_model(path)
    one_line(e)


def test_future_format_version(saved, tmp_path):
    path = copy_of(saved, "pca", tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = persist.FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="format version 2, but this drizzle-ml reads versions 1 to 1") as e:
        load_model(path)
    one_line(e)


def test_missing_attributes(saved, tmp_path):
    path = copy_of(saved, "logistic-binary", tmp_path)
    with h5py.File(path, "a") as f:
        del f.attrs["params"]
    with pytest.raises(ValueError, match="missing attribute 'params'") as e:
        load_model(path)
    one_line(e)
    path = copy_of(saved, "logistic-binary", tmp_path)
    with h5py.File(path, "a") as f:
        del f["fitted/coef_"]
    with pytest.raises(ValueError, match="missing fitted attribute coef_ for LogisticRegression"):
        load_model(path)


def test_corrupted_json(saved, tmp_path):
    path = copy_of(saved, "linear", tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["history"] = "[{not json"
    with pytest.raises(ValueError, match="attribute 'history' is not valid JSON"):
        load_model(path)


@pytest.mark.parametrize("name", ["__class__", "__init__", "_private_", "not_fitted"])
def test_non_fitted_names_are_refused(saved, tmp_path, name):
    path = copy_of(saved, "linear", tmp_path)
    with h5py.File(path, "a") as f:
        f["fitted"].attrs[name] = "1"
    with pytest.raises(ValueError, match="is not a fitted attribute"):
        load_model(path)


def test_array_parameters_must_be_numeric(saved, tmp_path):
    path = copy_of(saved, "linear", tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["params"] = '{"tol": {"__ndarray__": [1], "dtype": "O"}}'
    with pytest.raises(ValueError, match="attribute 'params' is not valid JSON .*not a numeric one"):
        load_model(path)


# -- no pickle -----------------------------------------------------------------------------------

def test_module_never_unpickles():
    source = inspect.getsource(persist)
    for forbidden in ("import pickle", "pickle.load", "allow_pickle=True", "cloudpickle", "np.load("):
        assert forbidden not in source


@pytest.mark.parametrize("dtype", ["vlen-int", "opaque", "reference"])
def test_object_datasets_are_refused(saved, tmp_path, dtype):
    path = copy_of(saved, "linear", tmp_path)
    with h5py.File(path, "a") as f:
        del f["fitted/coef_"]
        if dtype == "vlen-int":
            ds = f["fitted"].create_dataset("coef_", (1,), dtype=h5py.vlen_dtype(np.int64))
            ds[0] = np.arange(3)
        elif dtype == "opaque":  # what a pickled blob would look like
            ds = f["fitted"].create_dataset("coef_", data=np.void(b"\x80\x04\x95pickle-bytes"))
        else:
            ds = f["fitted"].create_dataset("coef_", (1,), dtype=h5py.ref_dtype)
            ds[0] = f.ref
        ds.attrs["dtype"] = "object"
    with pytest.raises(ValueError, match="never unpickle|claims dtype") as e:
        load_model(path)
    one_line(e)


# -- drizzle-ml info -----------------------------------------------------------------------------

def test_cli_info(saved, tmp_path):
    from .conftest import run_cli as drizzle

    proc = drizzle("info", str(saved["pca-whiten-subspace"]))
    assert proc.returncode == 0, proc.stderr
    assert ": PCA (drizzle-ml model format 1" in proc.stdout
    assert "    whiten = True" in proc.stdout and "    components_: float64 4x64" in proc.stdout
    (tmp_path / "notes.txt").write_text("hello")
    proc = drizzle("info", str(tmp_path / "notes.txt"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"drizzle-ml: error: {tmp_path / 'notes.txt'} is not an HDF5 file (no HDF5 "
                                   "signature), so not a drizzle-ml model")
    proc = drizzle("info", str(tmp_path / "missing.h5"))
    assert proc.returncode == 2 and "model file not found" in proc.stderr


def _tampered(tmp_path, replace):
    """A saved binary LogisticRegression whose fitted/coef_ is rewritten by ``replace(group, attrs)``."""
    X, y = BREAST
    path = tmp_path / "m.h5"
    save_model(LogisticRegression(n_workers=W).fit(X[:, :4], y), path)
    with h5py.File(path, "r+") as f:
        group = f["fitted"]
        attrs = dict(group["coef_"].attrs)
        del group["coef_"]
        replace(group, attrs)
    return path


def test_arrays_whose_shapes_do_not_fit_the_model_are_refused(tmp_path):
    def three_d(group, attrs):
        ds = group.create_dataset("coef_", data=np.ones((1, 2, 2)))
        ds.attrs.update(attrs)

    path = _tampered(tmp_path, three_d)
    with pytest.raises(ValueError, match=r"coef_ has shape \(1, 2, 2\), expected \(1, 4\) for LogisticRegression "
                                         r"with n_features_in_ = 4; the model file is corrupted"):
        load_model(path)


def test_compressed_arrays_are_refused_before_they_are_inflated(tmp_path):
    def bomb(group, attrs):  # 20 million zeros: megabytes in memory, kilobytes on disk
        ds = group.create_dataset("coef_", shape=(1, 20_000_000), dtype="f8", compression="gzip", chunks=(1, 1 << 20))
        ds.attrs.update(attrs)

    path = _tampered(tmp_path, bomb)
    assert os.path.getsize(path) < 1 << 20
    with pytest.raises(ValueError, match=r"fitted/coef_ is stored gzip \(20,000,000 elements\); drizzle-ml model "
                                         "files store arrays contiguous and uncompressed"):
        load_model(path)
