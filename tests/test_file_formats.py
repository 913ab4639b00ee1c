"""Files written by earlier drizzle-ml versions still load: the committed fixtures in tests/data/formats.

The fixtures were written once by :func:`make_fixtures` (``.venv/bin/python -m
tests.test_file_formats``, which fits with one MPI worker), before the array
codec of checkpoints and model files became one module
(``drizzle_ml/h5files.py``). Never regenerate them to make a test pass: they
are the proof that the formats did not change. The tests need no cluster:

- each file loads, and gives back the values it was written from (the
  checkpoint: :func:`fixture_checkpoint` bit for bit; the models: the
  predictions recorded in their ``extra`` when they were saved);
- written again by today's code, each file has the same content: every
  attribute with its HDF5 type, every dataset with its type, shape, layout and
  bytes, the checkpoint's checksum included.
"""

import json
import os
import sys

import h5py
import numpy as np
import pytest

from drizzle_ml.algorithms.persist import load_model, model_info, save_model
from drizzle_ml.checkpoint import Checkpoint, CheckpointStore

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "formats")
CHECKPOINT = "ckpt-000000000003.h5"
MODELS = ("logistic-strings.h5", "kmeans-array-init.h5", "pca-whiten.h5")


def fixture_checkpoint() -> Checkpoint:
    """The checkpoint in ``CHECKPOINT``: exact values (no random generator), several dtypes and orders."""
    grid = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    return Checkpoint(
        job_key="Fixture-0123456789abcdef0123",
        version=3,
        iteration=30,
        created=1767225600.25,
        model={
            "coef": grid,
            "fortran": np.asfortranarray(grid.T),
            "fortran_int": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
            "half": np.array([1.5, -2.0, 65504.0], dtype=np.float16),
            "single": (np.arange(4, dtype=np.float32) - 1.5) / 3,
            "big_endian": np.arange(3, dtype=">f8") * 0.1,
            "counts": np.arange(5, dtype=np.int64) - 2,
            "bytes": np.arange(250, 256, dtype=np.uint8),
            "mask": np.array([True, False, True]),
            "complex": np.array([1 + 2j, -0.5j]),
            "step": np.array(7, dtype=np.int64),  # 0-d
            "empty": np.empty((0, 4)),
        },
        tuner={"size": 16, "auto": True, "lower": 0.05},
        rng={"seed": 42, "state": [1, 2, 3]},
        stream_offsets={"train": 1024, "files": {"a.csv": 10, "b.csv": 0}},
        params={"C": 1.0, "init": np.arange(3, dtype=np.int64), "scale": np.array([0.5, 2.0]),
                "solver": "lbfgs", "nested": {"ok": None, "pair": (1, 2)}},
        metrics={"loss": 0.25, "grad_norm": float("nan"), "bound": float("inf")},
    )


#: Fitted attributes given to the KMeans fixture by hand, so that its file also holds a numpy
#: scalar (a 0-d dataset of kind "scalar"), Fortran-order arrays, an object array of strings,
#: fixed-length bytes and the python scalars of the ``fitted`` group's attributes.
_EXTRA_FITTED = {
    "fixture_scalar_": np.float32(0.75),
    "fixture_fortran_": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3) / 3),
    "fixture_fortran_int_": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(3, 2)),
    "fixture_names_": np.array(["ä", "b", "long name"], dtype=object),
    "fixture_bytes_": np.array([b"ab", b"c"]),
}
_EXTRA_FITTED.update({f"fixture_{kind}_": value for kind, value in
                      {"int": 3, "float": 0.5, "bool": True, "str": "text", "none": None}.items()})


def _iris():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    return X, np.array(["setosa", "versicolor", "virginica"])[y]


def _models():
    """The fitted estimators of ``MODELS`` and the predictions recorded with them."""
    from drizzle_ml import PCA, KMeans, LogisticRegression

    X, labels = _iris()
    logistic = LogisticRegression(C=0.5, max_iter=100, n_workers=1).fit(X, labels)
    X32 = X.astype(np.float32)
    kmeans = KMeans(n_clusters=3, init=X[[0, 50, 100]], n_workers=1).fit(X32)
    for attr, value in _EXTRA_FITTED.items():  # what the fits do not make: file features all the same
        setattr(kmeans, attr, value)
    pca = PCA(n_components=2, whiten=True, n_workers=1).fit(X)
    return {
        "logistic-strings.h5": (logistic, {"predict": logistic.predict(X).tolist(),
                                           "predict_proba": logistic.predict_proba(X)}),
        "kmeans-array-init.h5": (kmeans, {"predict": kmeans.predict(X32)}),
        "pca-whiten.h5": (pca, {"transform": pca.transform(X)}),
    }


def make_fixtures(directory: str = DATA) -> None:
    """Write the fixtures with the code of the day (done once; see the module's docstring)."""
    os.makedirs(directory, exist_ok=True)
    store = CheckpointStore(directory, job_key=fixture_checkpoint().job_key)
    store.save(fixture_checkpoint())
    store.close()
    for name, (estimator, expected) in _models().items():
        save_model(estimator, os.path.join(directory, name), extra={"expected": expected})


def content(path) -> dict:
    """Everything an HDF5 file holds, by object path: attributes (value and HDF5 type), datasets
    (type, shape, chunks, compression, bytes). Two files with equal contents hold the same format."""
    out = {}

    def kind(dtype):  # numpy's dtype, and for strings HDF5's encoding and length
        return dtype.str, repr(h5py.check_string_dtype(dtype))

    def attrs(obj):
        return {k: (repr(obj.attrs[k]), kind(obj.attrs.get_id(k).dtype)) for k in obj.attrs}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            raw = obj[()]
            data = repr(raw.tolist()) if obj.dtype.kind == "O" else np.asarray(raw).tobytes()
            out[name] = ("dataset", kind(obj.dtype), obj.shape, obj.chunks, obj.compression, data, attrs(obj))
        else:
            out[name] = ("group", attrs(obj))

    with h5py.File(path, "r") as f:
        out["/"] = ("root", attrs(f))
        f.visititems(visit)
    return out


def test_the_fixture_checkpoint_loads_bit_for_bit():
    expected = fixture_checkpoint()
    loaded = CheckpointStore(DATA).load(os.path.join(DATA, CHECKPOINT))
    assert (loaded.job_key, loaded.version, loaded.iteration, loaded.created) == \
        (expected.job_key, expected.version, expected.iteration, expected.created)
    assert list(loaded.model) == list(expected.model)
    for key, want in expected.model.items():
        got = loaded.model[key]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), key
        for flag in ("C_CONTIGUOUS", "F_CONTIGUOUS"):
            assert got.flags[flag] == want.flags[flag], (key, flag)
        assert got.tobytes(order="A") == want.tobytes(order="A"), key
    assert loaded.tuner == expected.tuner and loaded.rng == expected.rng
    assert loaded.stream_offsets == expected.stream_offsets
    params = dict(loaded.params)
    assert params.pop("nested") == {"ok": None, "pair": [1, 2]}  # tuples come back as lists
    for key in ("init", "scale"):
        got, want = params.pop(key), expected.params[key]
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and np.array_equal(got, want), key
    assert params == {"C": 1.0, "solver": "lbfgs"}
    assert loaded.metrics["loss"] == 0.25 and np.isnan(loaded.metrics["grad_norm"])
    assert loaded.metrics["bound"] == float("inf")


def test_the_fixture_checkpoint_is_written_the_same_today(tmp_path):
    path = CheckpointStore(tmp_path).save(fixture_checkpoint())
    assert os.path.basename(path) == CHECKPOINT
    assert content(path) == content(os.path.join(DATA, CHECKPOINT))  # the checksum attribute included


@pytest.mark.parametrize("name", MODELS)
def test_the_fixture_models_load_and_predict_what_they_did(name):
    X, labels = _iris()
    estimator = load_model(os.path.join(DATA, name))
    expected = model_info(os.path.join(DATA, name))["extra"]["expected"]
    if name == "logistic-strings.h5":
        assert estimator.classes_.dtype == np.dtype("<U10") and list(estimator.classes_) == sorted(set(labels))
        assert estimator.predict(X).tolist() == expected["predict"]
        np.testing.assert_allclose(estimator.predict_proba(X), expected["predict_proba"], rtol=1e-12, atol=1e-15)
    elif name == "kmeans-array-init.h5":
        assert estimator.cluster_centers_.dtype == np.float32 and estimator.init.dtype == np.float64
        np.testing.assert_array_equal(estimator.init, X[[0, 50, 100]])
        np.testing.assert_array_equal(estimator.predict(X.astype(np.float32)), expected["predict"])
        for attr, want in _EXTRA_FITTED.items():
            got = getattr(estimator, attr)
            if attr == "fixture_scalar_":  # the code of the day wrote a numpy scalar as a 1-element array
                want = np.array([want])
            assert type(got) is type(want), attr
            if isinstance(want, np.ndarray):
                assert got.dtype == want.dtype and got.flags.f_contiguous == want.flags.f_contiguous, attr
                assert got.tolist() == want.tolist(), attr
                assert all(type(a) is type(b) for a, b in zip(got.ravel(), want.ravel())), attr
            else:
                assert got == want, attr
    else:
        assert estimator.whiten is True and estimator.components_.shape == (2, 4)
        np.testing.assert_allclose(estimator.transform(X), expected["transform"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_the_fixture_models_are_written_the_same_today(name, tmp_path):
    original = os.path.join(DATA, name)
    path = tmp_path / name
    save_model(load_model(original), path, extra=model_info(original)["extra"])
    old, new = content(original), content(path)
    for c in (old, new):  # the version that wrote the file, and the estimator's parameters (below)
        c["/"][1].pop("drizzle_ml_version")
        c["/"][1].pop("params")
    assert new == old
    # Parameters added since keep their defaults; the others are as they were.
    old_params, new_params = (json.loads(h5py.File(p, "r").attrs["params"]) for p in (original, path))
    assert {k: new_params[k] for k in old_params} == old_params
    added = type(load_model(original))().get_params()
    assert {k: v for k, v in new_params.items() if k not in old_params} == {
        k: added[k] for k in new_params if k not in old_params}


def test_numpy_scalars_and_0d_arrays_keep_their_type_and_shape(tmp_path):
    estimator = load_model(os.path.join(DATA, "pca-whiten.h5"))
    estimator.scale_ = np.float32(0.75)
    estimator.steps_ = np.array(3, dtype=np.int16)
    save_model(estimator, tmp_path / "m.h5")
    loaded = load_model(tmp_path / "m.h5")
    assert type(loaded.scale_) is np.float32 and loaded.scale_ == np.float32(0.75)
    assert isinstance(loaded.steps_, np.ndarray) and loaded.steps_.shape == () and loaded.steps_.dtype == np.int16
    assert int(loaded.steps_) == 3


if __name__ == "__main__":
    make_fixtures(sys.argv[1] if len(sys.argv) > 1 else DATA)
