"""Estimators fitted on an HDF5Dataset (each worker reads its rows) equal fits on the same arrays."""

import h5py
import numpy as np
import pytest
from sklearn import datasets
from sklearn.preprocessing import StandardScaler

from drizzle_ml import PCA, HDF5Dataset, KMeans, LinearRegression, LogisticRegression, Ridge, WorkerError


def write(path, X, y=None, **extra):
    with h5py.File(path, "w") as f:
        f["X"] = X
        if y is not None:
            f["y"] = y
        for key, value in extra.items():
            f[key] = value
    return path


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    X, y = datasets.load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    labels = np.array(["barolo", "grignolino", "barbera"])[y].astype("S")  # bytes labels, as HDF5 keeps them
    path = write(tmp_path_factory.mktemp("h5") / "wine.h5", X, y, names=labels)
    return path, X, y, labels


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticRegression(n_workers=2),
        lambda: LogisticRegression(solver="gd", max_iter=300, n_workers=2),
        lambda: PCA(n_components=4, n_workers=2),
        lambda: PCA(n_components=4, svd_solver="subspace", random_state=0, n_workers=2),
        lambda: KMeans(n_clusters=3, random_state=0, n_workers=2),
    ],
)
def test_hdf5_fit_equals_array_fit(wine, make):
    path, X, y, _ = wine
    from_file = make().fit(HDF5Dataset(path))
    from_arrays = make().fit(X, y)
    for name in ("coef_", "intercept_", "components_", "explained_variance_", "cluster_centers_", "inertia_"):
        if hasattr(from_arrays, name):
            assert np.array_equal(getattr(from_file, name), getattr(from_arrays, name)), name
    assert from_file.n_features_in_ == X.shape[1]
    assert from_file.n_iter_ == from_arrays.n_iter_


def test_hdf5_string_labels_and_regression(wine, tmp_path):
    path, X, y, labels = wine
    clf = LogisticRegression(n_workers=2).fit(HDF5Dataset(path, y_key="names"))
    names = labels.astype(str)
    assert list(clf.classes_) == sorted(set(names))
    ref = LogisticRegression(n_workers=2).fit(X, names)
    assert np.array_equal(clf.coef_, ref.coef_)
    Xd, yd = datasets.load_diabetes(return_X_y=True)
    reg_path = write(tmp_path / "diabetes.h5", Xd, yd)
    for make in (lambda: LinearRegression(n_workers=2), lambda: Ridge(alpha=0.5, solver="lbfgs", n_workers=2)):
        a, b = make().fit(HDF5Dataset(reg_path)), make().fit(Xd, yd)
        assert np.array_equal(a.coef_, b.coef_) and a.intercept_ == b.intercept_


def test_hdf5_bad_data_is_a_clear_error(tmp_path):
    X = np.arange(40, dtype=float).reshape(20, 2)
    bad = X.copy()
    bad[13, 1] = np.nan
    with pytest.raises(WorkerError, match=r"nan\.h5: 'X' rows 10:20 contain NaN or infinity"):
        PCA(n_workers=2).fit(HDF5Dataset(write(tmp_path / "nan.h5", bad), y_key=None))
    y_bad = np.linspace(0, 1, 20)
    y_bad[3] = np.inf
    with pytest.raises(WorkerError, match=r"'y' rows 0:10 contain NaN or infinity"):
        LinearRegression(n_workers=2).fit(HDF5Dataset(write(tmp_path / "yinf.h5", X, y_bad)))
    with pytest.raises(ValueError, match="Unknown label type"):
        LogisticRegression(n_workers=2).fit(HDF5Dataset(write(tmp_path / "cont.h5", X, np.linspace(0, 1, 20))))
    with pytest.raises(ValueError, match="y comes from the HDF5 dataset's y_key"):
        LogisticRegression(n_workers=2).fit(HDF5Dataset(tmp_path / "cont.h5"), np.zeros(20))
    with pytest.raises(ValueError, match="needs targets"):
        Ridge(n_workers=2).fit(HDF5Dataset(tmp_path / "cont.h5", y_key=None))
    with pytest.raises(KeyError, match="has no dataset 'features'"):
        HDF5Dataset(tmp_path / "cont.h5", x_key="features")
    with pytest.raises(ValueError, match="'y' has 19 rows but 'X' has 20"):
        HDF5Dataset(write(tmp_path / "short.h5", X, np.zeros(19)))
    with pytest.raises(ValueError, match="got 1 sample, fewer than the 2 workers"):
        KMeans(n_clusters=1, n_workers=2).fit(HDF5Dataset(write(tmp_path / "one.h5", X[:1]), y_key=None))
