"""The drizzle-ml command: train (both launch paths), predict, info, datasets, errors, signals."""

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import linear_model as sk
from sklearn.datasets import dump_svmlight_file, load_svmlight_file, make_classification

from drizzle_ml.worker_job import find_mpiexec

from .conftest import run_cli, worker_processes


def drizzle(*args, timeout=300, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "drizzle_ml", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=None if env is None else {**os.environ, **env})


def ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def write_h5(path, X, y=None):
    with h5py.File(path, "w") as f:
        f["X"] = X
        if y is not None:
            f["y"] = y
    return str(path)


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    X, y = make_classification(600, 8, n_informative=4, flip_y=0.1, random_state=0)
    return write_h5(tmp_path_factory.mktemp("cli") / "cls.h5", X, y), X, y


def test_train_bundled_dataset_one_worker_quiet_and_gd():
    proc = ok(drizzle("train", "--workers", "1", "--solver", "gd", "--learning-rate", "0.5", "--max-iter", "30",
                      "--group-size", "10", "--quiet"))
    assert "logistic on breast_cancer (569 x 30, standardized) with 1 workers" in proc.stdout
    assert "done: 30 iterations in 3 groups" in proc.stdout
    assert "training accuracy 0.9" in proc.stdout
    assert "iter " not in proc.stderr  # --quiet: no progress lines


def test_a_fit_stopped_by_the_line_search_says_so_not_to_raise_max_iter(tmp_path):
    X, y = make_classification(2000, 5, n_informative=3, class_sep=3.0, flip_y=0, random_state=0)  # separable
    path = write_h5(tmp_path / "sep.h5", X, y)
    proc = ok(drizzle("train", "--data", path, "--workers", "1", "--solver", "gd", "--tol", "0",
                      "--max-iter", "5000", "--quiet"))
    done = next(ln for ln in proc.stdout.splitlines() if ln.startswith("done: "))
    assert done.endswith("(did not converge: the line search found no step that lowers the loss (the gradient "
                         "is at the limit of floating-point precision))"), done
    assert "done: 5000 iterations" not in done


def test_train_progress_lines_and_bsp():
    proc = ok(drizzle("train", "--workers", "2", "--solver", "gd", "--max-iter", "20", "--scheduling", "bsp"))
    assert "with 2 workers" in proc.stdout and "scheduling bsp" in proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("iter ")]
    assert len(lines) == 20  # one line per (one-iteration) group
    assert "loss" in lines[-1] and "group    1" in lines[-1] and "it/s" in lines[-1] and "coordination" in lines[-1]


@pytest.mark.parametrize("workers", [1, 2])
def test_train_on_hdf5_save_predict_matches_sklearn(classification, tmp_path, workers):
    path, X, y = classification
    model, report, out = tmp_path / "m.h5", tmp_path / "r.json", tmp_path / "pred.npy"
    proc = ok(drizzle("train", "--algorithm", "logistic", "--data", path, "--workers", str(workers),
                      "--tol", "1e-8", "-o", str(model), "--report", str(report), "--quiet"))
    assert f"with {workers} workers" in proc.stdout and f"model saved to {model}" in proc.stdout
    rep = json.loads(report.read_text())
    assert rep["workers"] == workers and rep["converged"] and rep["iterations"] == rep["model_version"]
    assert set(rep["time_split"]) == {"load", "compute", "reduce", "coordination"}
    assert sum(rep["time_split"].values()) == pytest.approx(rep["wall_seconds"], rel=1e-6)
    ok(run_cli("predict", "--model", str(model), "--data", path, "-o", str(out)))
    pred = np.load(out)
    ref = sk.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y).predict(X)
    assert np.mean(pred == ref) >= 0.995
    assert rep["metrics"]["training_accuracy"] == pytest.approx(np.mean(pred == y))
    info = ok(run_cli("info", str(model))).stdout
    assert "LogisticRegression" in info and f"model version {rep['model_version']}" in info


def test_user_launched_mpiexec_runs_the_same_job(classification, tmp_path):
    path, X, y = classification
    model = tmp_path / "m.h5"
    proc = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, "-m", "drizzle_ml", "train", "--algorithm",
                           "pca", "--n-components", "3", "--data", path, "-o", str(model), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "with 2 workers" in proc.stdout and "explained variance ratio" in proc.stdout
    from sklearn.decomposition import PCA

    from drizzle_ml.algorithms.persist import load_model

    ours, ref = load_model(model), PCA(3, svd_solver="covariance_eigh").fit(X)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(ref.components_), atol=1e-8)


def test_csv_and_libsvm_round_trips_through_hdf5(tmp_path):
    X, y = make_classification(300, 6, n_informative=3, random_state=1)
    csv = tmp_path / "data.csv"
    np.savetxt(csv, np.column_stack([X, y]), delimiter=",", header="a,b,c,d,e,f,label", comments="")
    ok(run_cli("datasets", "convert", str(csv), "-o", str(tmp_path / "csv.h5")))
    ok(drizzle("train", "--algorithm", "logistic", "--data", str(tmp_path / "csv.h5"), "--workers", "2",
               "--tol", "1e-8", "-o", str(tmp_path / "csv_model.h5"), "--quiet"))
    ok(run_cli("predict", "--model", str(tmp_path / "csv_model.h5"), "--data", str(tmp_path / "csv.h5"),
               "-o", str(tmp_path / "csv_pred.csv")))
    pred = np.loadtxt(tmp_path / "csv_pred.csv", delimiter=",")
    ref = sk.LogisticRegression(tol=1e-10, max_iter=10_000).fit(X, y).predict(X)
    assert np.mean(pred == ref) >= 0.995

    Xs = X * (np.abs(X) > 0.7)  # sparse-ish, stored as CSR
    svm = tmp_path / "data.svm"
    dump_svmlight_file(Xs, y, str(svm), zero_based=False)
    ok(run_cli("datasets", "convert", str(svm), "-o", str(tmp_path / "svm.h5")))
    ok(drizzle("train", "--algorithm", "ridge", "--alpha", "2.0", "--data", str(tmp_path / "svm.h5"),
               "--workers", "2", "-o", str(tmp_path / "ridge.h5"), "--quiet"))
    ok(run_cli("predict", "--model", str(tmp_path / "ridge.h5"), "--data", str(tmp_path / "svm.h5"),
               "-o", str(tmp_path / "ridge_pred.h5")))
    with h5py.File(tmp_path / "ridge_pred.h5") as f:
        pred = f["y_pred"][:]
    Xl, yl = load_svmlight_file(str(svm), zero_based=False)
    dense = Xl.toarray()  # scikit-learn's sparse Ridge is iterative; its dense solve is exact
    np.testing.assert_allclose(pred, sk.Ridge(alpha=2.0).fit(dense, yl).predict(dense), rtol=1e-8, atol=1e-10)


def test_kmeans_and_linear_from_made_datasets(tmp_path):
    ok(run_cli("datasets", "make", "blobs", "--rows", "900", "--features", "4", "--centers", "3",
               "-o", str(tmp_path / "blobs.h5")))
    proc = ok(drizzle("train", "--algorithm", "kmeans", "--n-clusters", "3", "--seed", "0", "--data",
                      str(tmp_path / "blobs.h5"), "--workers", "2", "-o", str(tmp_path / "km.h5"), "--quiet"))
    assert "inertia" in proc.stdout
    ok(run_cli("datasets", "make", "regression", "--rows", "500", "--features", "5", "-o", str(tmp_path / "reg.h5")))
    proc = ok(drizzle("train", "--algorithm", "linear", "--data", str(tmp_path / "reg.h5"), "--workers", "2",
                      "--quiet"))
    r2 = float(proc.stdout.split("training r2 ")[1].split()[0])
    assert 0.9 < r2 <= 1.0


def test_training_r2_of_several_targets_is_their_mean_as_in_scikit_learn(tmp_path):
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    Y = np.column_stack([X @ [1.0, 2.0, 0.0], (X[:, 0] > 0).astype(int)]) + rng.normal(scale=0.5, size=(200, 2))
    data = write_h5(tmp_path / "two.h5", X, Y)
    ok(drizzle("train", "--algorithm", "linear", "--data", data, "--workers", "2", "-o", str(tmp_path / "m.h5"),
               "--report", str(tmp_path / "r.json"), "--quiet"))
    from drizzle_ml.algorithms.persist import load_model

    expected = r2_score(Y, load_model(str(tmp_path / "m.h5")).predict(X))
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["training_r2"] == pytest.approx(expected)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot_is_written(tmp_path):
    ok(drizzle("train", "--workers", "1", "--plot", str(tmp_path / "p.png"), "--quiet"))
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("matplotlib") is not None:
        pytest.skip("matplotlib is installed")
    proc = drizzle("train", "--plot", str(tmp_path / "p.png"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "drizzle-ml: error: --plot needs matplotlib: pip install 'drizzle-ml[plot]'"


def bad_files(tmp_path):
    X = np.arange(40, dtype=float).reshape(20, 2)
    nan = X.copy()
    nan[15, 0] = np.nan
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file at all")
    return {
        "missing": str(tmp_path / "nope.h5"),
        "garbage": str(tmp_path / "garbage.h5"),
        "nan": write_h5(tmp_path / "nan.h5", nan, np.arange(20) % 2),
        "short_y": write_h5(tmp_path / "short.h5", X, np.arange(19) % 2),
        "continuous": write_h5(tmp_path / "cont.h5", X, np.linspace(0, 1, 20)),
        "tiny": write_h5(tmp_path / "tiny.h5", X[:2], np.array([0, 1])),
        "ok": write_h5(tmp_path / "ok.h5", X, np.arange(20) % 2),
    }


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_drizzle_timeout_is_refused_before_any_rank_starts(value):
    proc = drizzle("train", "--workers", "2", env={"DRIZZLE_TIMEOUT": value})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"drizzle-ml: error: DRIZZLE_TIMEOUT must be positive seconds, got {value!r}"


def test_drizzle_timeout_bounds_the_waits_of_a_cluster_made_without_one():
    # As the estimators' and the command line's clusters are made: no timeout given.
    code = """
import os, signal, time, numpy as np, drizzle_ml
from drizzle_ml.testing import Counter
with drizzle_ml.Cluster(2) as cluster:
    print(cluster.timeout)
    os.kill(cluster.workers[1].pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        cluster.run(Counter(), {"x": np.zeros(1), "seen": np.zeros(1)},
                    drizzle_ml.ArrayDataset(np.ones((10, 2))), max_iter=3)
    except drizzle_ml.WorkerTimeoutError as exc:
        print(round(time.monotonic() - t0), exc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DRIZZLE_TIMEOUT": "2.5"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "2.5" and re.match(r"[23] timed out after 2.5 s waiting for ", lines[1]), proc.stdout


@pytest.mark.parametrize(
    "case,extra,message",
    [
        ("missing", [], "data file not found: {missing}"),
        ("garbage", [], "cannot read HDF5 file"),
        ("ok", ["--x-key", "features"], "has no dataset 'features'"),
        ("short_y", [], "'y' has 19 rows but 'X' has 20"),
        ("nan", [], "'X' rows 10:20 contain NaN or infinity"),
        ("continuous", [], "Unknown label type"),
        ("tiny", ["--workers", "3"],
         "{tiny} has 2 rows, fewer than the 3 workers; every worker needs at least one row"),
        ("ok", ["--alpha", "1"],
         "--alpha does not apply to --algorithm logistic (it applies to ridge, lasso, elasticnet)"),
        ("ok", ["--workers", "0"], "--workers must be at least 1, got 0"),
        ("ok", ["--algorithm", "pca", "--y-key", "y"],
         "--y-key does not apply to --algorithm pca, which has no targets "
         "(it applies to logistic, linear, ridge, lasso, elasticnet)"),
        ("ok", ["--C", "-1"], "The 'C' parameter of LogisticRegression must be a float in the range (0.0, inf]. "
                              "Got -1.0 instead."),
        ("ok", ["--algorithm", "kmeans", "--n-clusters", "0"],
         "The 'n_clusters' parameter of KMeans must be an int in the range [1, inf). Got 0 instead."),
    ],
)
def test_train_errors_are_one_line(tmp_path, case, extra, message):
    files = bad_files(tmp_path)
    proc = drizzle("train", "--data", files[case], "--workers", "2", *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert len(errors) == 1 and message.format(**files) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "BAD TERMINATION" not in proc.stdout + proc.stderr
    if case == "ok":  # refused before any process started: no "with 2 workers" line
        assert "drizzle-ml: logistic on" not in proc.stdout and "placement" not in proc.stdout


def test_other_command_errors(tmp_path):
    files = bad_files(tmp_path)
    (tmp_path / "ok.csv").write_text("1,2\n")
    proc = drizzle("train", "--data", str(tmp_path / "ok.csv"))
    assert proc.returncode == 2 and "convert it first with 'drizzle-ml datasets convert" in proc.stderr
    proc = drizzle("train", "--workers", "1", env={"DRIZZLE_MPIEXEC": "/no/such/mpiexec"})
    assert proc.returncode == 2
    assert "mpiexec not found: DRIZZLE_MPIEXEC=/no/such/mpiexec is not an executable" in proc.stderr
    proc = drizzle("train", "--learning-rate", "0.1")
    assert proc.returncode == 2 and "--learning-rate is the step of --solver gd" in proc.stderr
    proc = drizzle("train", "--group-size", "zero")
    assert proc.returncode == 2 and "must be 'auto' or a positive integer" in proc.stderr
    proc = run_cli("predict", "--model", files["garbage"], "--data", files["ok"], "-o", str(tmp_path / "p.npy"))
    assert proc.returncode == 2 and proc.stderr.startswith("drizzle-ml: error:")
    proc = run_cli("info", str(tmp_path / "none.h5"))
    assert proc.returncode == 2 and proc.stderr.startswith("drizzle-ml: error:")
    proc = run_cli("datasets", "convert", str(tmp_path / "none.csv"), "-o", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and proc.stderr.startswith("drizzle-ml: error:") and "none.csv" in proc.stderr


def test_ctrl_c_stops_every_rank(tmp_path):
    X, y = make_classification(20_000, 20, random_state=0)
    path = write_h5(tmp_path / "big.h5", X, y)
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "train", "--data", path, "--workers", "2",
                             "--solver", "gd", "--learning-rate", "0.1", "--tol", "0", "--max-iter", "1000000",
                             "--group-size", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # wait until it trains
            if line.startswith("iter "):
                break
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in rest  # every rank stops quietly
    deadline = time.monotonic() + 15
    while worker_processes(path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_processes(path) == []


def test_bench_coordination_prints_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = ok(drizzle("bench", "coordination", "--rows", "50", "--features", "3", "--iterations", "40",
                      "--repeats", "2", "--workers", "3", "--json", str(out)))
    assert ("coordination benchmark: logistic GD, 50 rows x 3 features per worker, 40 iterations, 3 workers"
            in proc.stdout)
    assert "hand-written mpi4py loop (the limit)" in proc.stdout
    assert "program loop (Program + Layout, Allreduce)" in proc.stdout
    assert "cost model (extrapolated" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["ratios"]) == {"group=1", "group=10", "group=100", "group=auto", "bsp"}
    assert len(report["repeats"]["engine"]) == 2
    for name, (low, high) in report["ratio_ranges"].items():
        assert low <= report["ratios"][name] <= high
    # every configuration computes the same model as the plain loop, in every repeat
    for plain, engine in zip(report["repeats"]["plain"], report["repeats"]["engine"]):
        for result in engine["results"].values():
            assert result["coef"] == plain["coef"]
    # and the hand-written loop, the same arithmetic without the program, agrees to rounding
    for hand, plain in zip(report["repeats"]["hand"], report["repeats"]["plain"]):
        np.testing.assert_allclose(hand["coef"], plain["coef"], rtol=1e-12, atol=1e-14)


def test_mpiexec_args_pass_through():
    import socket

    proc = ok(drizzle("train", "--workers", "1", "--quiet", f"--mpiexec-args=-hosts {socket.gethostname()}"))
    assert "done:" in proc.stdout


def test_an_unclosed_quote_in_mpiexec_args_is_one_line(tmp_path):
    for command in (["train"], ["stream", "--source", f"file:{tmp_path / 's.csv'}", "--algorithm", "pca"]):
        proc = run_cli(*command, "--mpiexec-args=-hosts 'a")
        assert (proc.returncode, proc.stderr) == (2, "drizzle-ml: error: --mpiexec-args \"-hosts 'a\": "
                                                     "No closing quotation\n")


def test_progress_bar_on_a_terminal_and_lines_otherwise():
    import io

    from drizzle_ml.launch.report import Progress
    from drizzle_ml.metrics import GroupMetrics

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    group = GroupMetrics(group=0, start_iteration=0, n_iterations=25, metrics={"loss": 0.5}, wall=0.5,
                         coordination=0.05, group_size=25, version=25, tuner="fixed")
    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        progress = Progress(max_iter=100, stream=stream)
        progress.on_group(group)
        progress.close()
    assert tty.getvalue().startswith("\r[#######-----------------------] iter     25  loss 0.5  group   25")
    assert tty.getvalue().endswith("\x1b[K\n")
    assert pipe.getvalue() == "iter     25  loss 0.5  group   25  50 it/s  coordination 10.0%\n"
    group.tuner, group.straggler, group.events = "grow", 1, ["rebalance: 3 rows worker 1 -> 0"]
    lines = io.StringIO()
    Progress(max_iter=100, stream=lines).on_group(group)
    assert lines.getvalue().endswith(
        "coordination 10.0%  tuner grow  straggler worker 1  rebalance: 3 rows worker 1 -> 0\n")
    quiet = io.StringIO()
    progress = Progress(max_iter=100, quiet=True, stream=quiet)
    progress.on_group(group)
    assert quiet.getvalue() == "" and progress.trace[0]["iteration"] == 25


def test_launcher_options_are_not_abbreviated_and_empty_job_directories_hold_no_checkpoint(tmp_path):
    # The launcher strips --hosts/--hostfile/--workers from the ranks' argv by full name,
    # so an abbreviation would reach the ranks; argparse must refuse it instead.
    proc = run_cli("train", "--hostf", str(tmp_path / "hosts"))
    assert proc.returncode == 2 and "unrecognized arguments: --hostf" in proc.stderr
    from drizzle_ml.launch.cli import _newest_checkpoint

    (tmp_path / "ck" / "job-0-abc").mkdir(parents=True)
    assert _newest_checkpoint([str(tmp_path / "ck" / "job-0-abc"), str(tmp_path / "missing")]) is None


def test_bench_scale_sizes_must_be_positive():
    for option in ("--rows", "--features", "--iterations", "--pingpongs"):
        proc = run_cli("bench", "scale", option, "0")
        assert proc.returncode == 2 and f"argument {option}: must be a positive integer, got '0'" in proc.stderr


@pytest.fixture(scope="module")
def _linked_sources(tmp_path_factory):
    """d.h5, a model m.h5 trained on it by the CLI, and s.csv: made once, copied into each test."""
    d = tmp_path_factory.mktemp("linked")
    X, y = make_classification(60, 4, random_state=0)
    data = write_h5(d / "d.h5", X, y)
    ok(drizzle("train", "--data", data, "--workers", "1", "-o", str(d / "m.h5"), "--quiet"))
    np.savetxt(d / "s.csv", np.column_stack([X, y]), delimiter=",")
    return d


@pytest.fixture
def linked_data(tmp_path, _linked_sources):
    """d.h5 with a hard link and a symlink to it, a trained model m.h5 and a CSV stream file."""
    for name in ("d.h5", "m.h5", "s.csv"):
        shutil.copyfile(_linked_sources / name, tmp_path / name)
    os.link(tmp_path / "d.h5", tmp_path / "hard.h5")
    os.symlink(tmp_path / "d.h5", tmp_path / "sym.h5")
    (tmp_path / "watched").mkdir()
    return tmp_path


def _refused(proc, message):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr


@pytest.mark.parametrize("output", ["d.h5", "hard.h5", "sym.h5"])
def test_outputs_that_are_inputs_are_refused_before_any_work(linked_data, output):
    d = linked_data
    before = (d / "d.h5").read_bytes()
    target = str(d / output)
    for option in ("-o", "--report", "--plot"):  # refused before any worker starts: in this process
        _refused(run_cli("train", "--data", str(d / "d.h5"), "--workers", "1", option, target),
                 f"is the input --data {d / 'd.h5'}: refusing to overwrite it")
    _refused(run_cli("predict", "--model", str(d / "m.h5"), "--data", str(d / "d.h5"), "-o", target),
             f"-o/--output {target} is the input --data {d / 'd.h5'}: refusing to overwrite it")
    assert (d / "d.h5").read_bytes() == before


def test_predict_stream_and_convert_refuse_to_overwrite_their_inputs(linked_data):
    d = linked_data
    model, csv = str(d / "m.h5"), str(d / "s.csv")
    before = {p: (d / p).read_bytes() for p in ("m.h5", "s.csv")}
    _refused(run_cli("predict", "--model", model, "--data", str(d / "d.h5"), "-o", model),
             f"-o/--output {model} is the input --model {model}")
    _refused(drizzle("stream", "--algorithm", "logistic", "--classes", "0,1", "--source", f"file:{csv}",
                     "--no-follow", "--workers", "1", "-o", csv),
             f"-o/--output {csv} is the input --source {csv}")
    _refused(drizzle("stream", "--algorithm", "logistic", "--classes", "0,1", "--source", f"dir:{d / 'watched'}",
                     "--workers", "1", "-o", str(d / "watched" / "model.h5")),
             "is inside --source")
    _refused(run_cli("datasets", "convert", csv, "-o", csv, "--overwrite"),
             f"-o/--output {csv} is the input file {csv}")
    _refused(drizzle("train", "--data", str(d / "d.h5"), "--workers", "1", "-o", str(d / "x.h5"),
                     "--report", str(d / "x.h5")),
             "-o/--output and --report are the same file")
    assert {p: (d / p).read_bytes() for p in ("m.h5", "s.csv")} == before
    assert not (d / "x.h5").exists() and not list((d / "watched").iterdir())


@contextlib.contextmanager
def tmpfs(path, options):
    """A small tmpfs at ``path`` (root, and a machine that allows mounting); the test is skipped otherwise."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_unwritable_outputs_are_refused_before_training(linked_data):
    d = linked_data
    data = str(d / "d.h5")
    _refused(run_cli("train", "--data", data, "--workers", "1", "-o", str(d / "no" / "m.h5")),
             f"-o/--output {d / 'no' / 'm.h5'}: directory {d / 'no'} does not exist")
    _refused(run_cli("train", "--data", data, "--workers", "1", "--report", str(d / "watched")),
             f"--report {d / 'watched'} is a directory, not a file")
    _refused(run_cli("predict", "--model", str(d / "m.h5"), "--data", data, "-o", str(d / "no" / "p.npy")),
             f"-o/--output {d / 'no' / 'p.npy'}: directory {d / 'no'} does not exist")
    with tmpfs(d / "ro", "ro,size=64k") as ro:
        _refused(drizzle("train", "--data", data, "--workers", "1", "-o", str(ro / "m.h5")),
                 f"-o/--output {ro / 'm.h5'}: cannot write in {ro} (Read-only file system)")


def test_a_full_disk_at_the_end_keeps_the_model_elsewhere_and_says_where(linked_data):
    d = linked_data
    with tmpfs(d / "full", "size=16k") as full:
        (full / "fill").write_bytes(b"\0" * 12288)  # what is left holds an empty file, not a model
        proc = drizzle("train", "--data", str(d / "d.h5"), "--workers", "1", "-o", str(full / "m.h5"),
                       "--report", str(d / "r.json"), "--quiet", env={"TMPDIR": str(d)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert len(errors) == 1 and f"could not write the model {full / 'm.h5'} (No space left on device); " \
                                  "it was saved to " in errors[0], proc.stderr
    kept = errors[0].rsplit("it was saved to ", 1)[1].removesuffix(" instead")
    assert os.path.dirname(kept) == str(d) and "Traceback" not in proc.stderr
    # the report was written, and names where the model really is
    assert json.loads((d / "r.json").read_text())["model_path"] == kept
    from drizzle_ml.algorithms.persist import load_model

    same = load_model(str(d / "m.h5"))  # the fixture's model, trained the same way
    with h5py.File(d / "d.h5") as f:
        X = f["X"][:]
    np.testing.assert_array_equal(load_model(kept).predict(X), same.predict(X))


def test_a_full_disk_under_the_checkpoints_is_one_error_not_a_restart(linked_data):
    d = linked_data
    with tmpfs(d / "full", "size=48k") as full:
        (full / "fill").write_bytes(b"\0" * 45056)
        proc = drizzle("train", "--data", str(d / "d.h5"), "--workers", "1", "--max-iter", "200",
                       "--checkpoint-dir", str(full / "ck"), "--quiet")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert len(errors) == 1 and f"could not write a checkpoint in {full / 'ck'}" in errors[0] \
        and errors[0].endswith("No space left on device"), proc.stderr
    assert "restart" not in proc.stderr and "Traceback" not in proc.stderr and "BAD TERMINATION" not in proc.stdout


def _start_long_training(tmp_path):
    """A training that would run for minutes, and the marker that finds its processes."""
    from .conftest import worker_processes

    X, y = make_classification(20000, 10, random_state=0)
    data = write_h5(tmp_path / "long.h5", X, y)
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "train", "--data", data, "--workers", "2",
                             "--solver", "gd", "--learning-rate", "0.1", "--max-iter", "10000000", "--tol", "0",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(worker_processes(data)) < 5 and time.monotonic() < deadline:  # launcher, mpiexec, 3 ranks
        time.sleep(0.2)
    assert len(worker_processes(data)) >= 5, worker_processes(data)
    return proc, data


def _gone(marker, timeout=15.0):
    from .conftest import worker_processes

    deadline = time.monotonic() + timeout
    while worker_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    return worker_processes(marker)


def test_killing_the_launcher_takes_the_whole_job_down(tmp_path):
    proc, data = _start_long_training(tmp_path)
    proc.kill()  # SIGKILL: the launcher can do nothing about it
    proc.wait(10)
    assert _gone(data) == []


def test_a_hang_up_stops_the_job_as_sigterm_does(tmp_path):
    proc, data = _start_long_training(tmp_path)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(30) == 128 + signal.SIGHUP
    assert _gone(data) == []


def test_a_fifo_as_data_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "data.h5"
    os.mkfifo(fifo)
    _refused(drizzle("train", "--data", str(fifo), "--workers", "1", timeout=60),
             f"{fifo} is not a regular file (a directory, a FIFO or a device): give an HDF5 file")
    _refused(run_cli("predict", "--model", str(fifo), "--data", str(fifo), "-o", str(tmp_path / "p.npy")),
             f"{fifo} is not a regular file (a directory, a FIFO or a device), so not a drizzle-ml model")


def test_more_workers_than_rows_is_refused_before_any_process_starts(linked_data):
    proc = drizzle("train", "--data", str(linked_data / "d.h5"), "--workers", "1000")
    _refused(proc, f"{linked_data / 'd.h5'} has 60 rows, fewer than the 1000 workers")


def test_info_into_a_closed_pipe_is_quiet(linked_data):
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "info", str(linked_data / "m.h5")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader left, as `| head` does
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0 and err == ""


def test_warnings_from_the_fit_are_shown(linked_data, tmp_path):
    d = linked_data
    checkpoints = tmp_path / "ck"
    ok(drizzle("train", "--data", str(d / "d.h5"), "--workers", "1", "--checkpoint-dir", str(checkpoints),
               "--max-iter", "20", "--quiet"))
    files = sorted(checkpoints.rglob("ckpt-*.h5"))
    assert files
    files[-1].write_bytes(files[-1].read_bytes()[:200])  # the newest checkpoint, truncated
    proc = ok(drizzle("train", "--data", str(d / "d.h5"), "--workers", "1", "--checkpoint-dir", str(checkpoints),
                      "--max-iter", "20", "--resume", "--quiet"))
    warnings_shown = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: warning: CheckpointWarning:")]
    assert warnings_shown and files[-1].name in warnings_shown[0], proc.stderr


@pytest.mark.parametrize("dtype", [np.int8, bool])
def test_integer_and_boolean_x_train_as_in_python(tmp_path, dtype):
    import drizzle_ml

    rng = np.random.default_rng(0)
    X = rng.integers(-5, 5, (120, 4)).astype(np.int8)
    X = (X > 0) if dtype is bool else X
    y = (X[:, 0] > 0).astype(int) ^ (X[:, 1] > 1).astype(int)
    data = write_h5(tmp_path / "d.h5", X, y)
    ok(drizzle("train", "--data", data, "--workers", "2", "-o", str(tmp_path / "m.h5"), "--quiet"))
    from drizzle_ml.algorithms.persist import load_model

    cli = load_model(str(tmp_path / "m.h5"))
    api = drizzle_ml.LogisticRegression(n_workers=2).fit(X, y)
    np.testing.assert_allclose(cli.coef_, api.coef_, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(cli.predict(X), api.predict(X))


def test_x_without_columns_is_one_line(tmp_path):
    data = write_h5(tmp_path / "z.h5", np.zeros((30, 0)), np.arange(30) % 2)
    _refused(drizzle("train", "--data", data, "--workers", "1"), f"{data}: 'X' has 0 columns")


def test_targets_and_csr_shapes_that_cannot_be_read_are_one_line_before_any_process_starts(tmp_path, linked_data):
    X = np.ones((20, 2))
    files = {name: tmp_path / f"{name}.h5" for name in ("group", "scalar", "complex", "csr")}
    with h5py.File(files["group"], "w") as f:
        f["X"] = X
        f.create_group("y")
    write_h5(files["scalar"], X, np.float64(1))
    write_h5(files["complex"], X, np.arange(20) + 1j)
    with h5py.File(files["csr"], "w") as f:
        group = f.create_group("X")
        group["data"], group["indices"], group["indptr"] = np.ones(20), np.zeros(20, np.int32), np.arange(21)
        group.attrs["shape"] = [20]
        f["y"] = np.arange(20) % 2
    messages = {
        "group": "'y' is a group, not a dataset of targets",
        "scalar": "'y' is a single value (shape ()), not a target for each of the 20 rows of 'X'",
        "complex": "'y' has dtype complex128; targets must be numbers or text labels",
        "csr": "group 'X' has the shape attribute [20]; a CSR matrix's shape is two non-negative integers "
               "(rows, columns)",
    }
    for name, path in files.items():
        expected = f"drizzle-ml: error: {path}: {messages[name]}\n"
        for proc in (run_cli("train", "--data", str(path), "--workers", "1"), run_cli("datasets", "info", str(path))):
            assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", expected)
    proc = run_cli("predict", "--model", str(linked_data / "m.h5"), "--data", str(files["csr"]), "-o",
                   str(tmp_path / "p.npy"))
    assert (proc.returncode, proc.stderr) == (2, f"drizzle-ml: error: {files['csr']}: {messages['csr']}\n")


def test_an_mpiexec_that_runs_nothing_is_an_error_not_success():
    proc = drizzle("train", "--workers", "1", env={"DRIZZLE_MPIEXEC": "/bin/true"})
    _refused(proc, "/bin/true exited 0, but the job never ran")


def _csr_file(path, indptr_shift=0, bad_index=None, n_cols=4):
    X = sp.random(60, n_cols, density=0.4, random_state=0, format="csr")
    indptr, indices = X.indptr.copy(), X.indices.copy()
    indptr[10] += indptr_shift  # no longer rising: rows would overlap
    if bad_index is not None:
        indices[3] = bad_index
    with h5py.File(path, "w") as f:
        group = f.create_group("X")
        group["data"], group["indices"], group["indptr"] = X.data, indices, indptr
        group.attrs["shape"] = X.shape
        f["y"] = np.arange(60) % 2
    return str(path)


def test_damaged_csr_files_are_one_line_errors_not_crashes(tmp_path, linked_data):
    pointer = _csr_file(tmp_path / "ptr.h5", indptr_shift=50)
    columns = _csr_file(tmp_path / "cols.h5", bad_index=99)
    for data, message in ((pointer, "have an invalid CSR row pointer"), (columns, "have column indices outside 0..3")):
        proc = drizzle("train", "--data", data, "--workers", "2")
        _refused(proc, message)
        assert "BAD TERMINATION" not in proc.stdout + proc.stderr  # no worker died
        _refused(run_cli("predict", "--model", str(linked_data / "m.h5"), "--data", data, "-o",
                         str(tmp_path / "p.npy")), message)


def test_predict_on_data_with_infinity_is_one_line(tmp_path, linked_data):
    X = np.ones((10, 4))
    X[3, 1] = np.inf
    data = write_h5(tmp_path / "inf.h5", X)
    _refused(run_cli("predict", "--model", str(linked_data / "m.h5"), "--data", data, "-o", str(tmp_path / "p.h5")),
             f"{data}: Input X contains infinity")


@pytest.fixture(scope="module")
def hashed_libsvm(tmp_path_factory):
    """A LIBSVM file of 400 rows over 3,000 raw features, and scikit-learn's hashing of it into 2**10 columns."""
    from sklearn.feature_extraction import FeatureHasher

    rng = np.random.default_rng(3)
    X = sp.random(400, 3000, density=0.004, format="csr", random_state=4, data_rvs=lambda n: rng.exponential(size=n))
    w = rng.normal(size=3000)
    y = (X @ w + 0.3 * rng.normal(size=400) > 0).astype(int)
    path = tmp_path_factory.mktemp("hashed") / "clicks.svm"
    dump_svmlight_file(X, y, str(path), zero_based=False)
    pairs = [[(t.split(":")[0], float(t.split(":")[1])) for t in line.split()[1:]]
             for line in path.read_text().splitlines()]
    return path, FeatureHasher(2**10, input_type="pair").transform(pairs), y


def test_train_and_predict_on_hashed_libsvm_match_scikit_learn_hashing(hashed_libsvm, tmp_path):
    import drizzle_ml

    svm, Xh, y = hashed_libsvm
    ref = drizzle_ml.LogisticRegression(tol=1e-8, n_workers=2).fit(Xh, y)
    direct, converted = tmp_path / "direct.h5", tmp_path / "converted.h5"
    proc = ok(drizzle("train", "--data", str(svm), "--hash-features", "10", "--workers", "2", "--tol", "1e-8",
                      "-o", str(direct), "--quiet"))
    assert f"logistic on {svm} (400 x 1024, sparse, hashed into 2**10 columns) with 2 workers" in proc.stdout
    assert sorted(os.listdir(svm.parent)) == ["clicks.svm"]  # the hashed copy is gone
    ok(run_cli("datasets", "convert", str(svm), "-o", str(tmp_path / "h.h5"), "--hash-features", "10"))
    ok(drizzle("train", "--data", str(tmp_path / "h.h5"), "--workers", "2", "--tol", "1e-8", "-o", str(converted),
               "--quiet"))
    from drizzle_ml.algorithms.persist import load_model, model_info

    for model in (direct, converted):
        ours = load_model(model)
        np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-6, atol=1e-8)
        assert model_info(model)["extra"]["hashing"] == {"n_bits": 10, "format": "libsvm", "alternate_sign": True,
                                                        "label": True}
        out = tmp_path / f"pred-{model.stem}.npy"  # the raw LIBSVM file: predict hashes it as training did
        proc = ok(run_cli("predict", "--model", str(model), "--data", str(svm), "-o", str(out)))
        assert proc.stdout.startswith(f"wrote {out}: y_pred for 400 rows")
        np.testing.assert_array_equal(np.load(out), ours.predict(Xh))
        assert np.mean(np.load(out) == ref.predict(Xh)) >= 0.995


def test_lasso_and_elasticnet_train_on_hashed_libsvm(hashed_libsvm, tmp_path):
    import drizzle_ml
    from drizzle_ml.algorithms.persist import load_model

    svm, Xh, y = hashed_libsvm
    for algorithm, est in (("lasso", drizzle_ml.Lasso(alpha=0.01, tol=1e-8, n_workers=2)),
                           ("elasticnet", drizzle_ml.ElasticNet(alpha=0.01, l1_ratio=0.5, tol=1e-8, n_workers=2))):
        model, out = tmp_path / f"{algorithm}.h5", tmp_path / f"{algorithm}.npy"
        proc = ok(drizzle("train", "--algorithm", algorithm, "--alpha", "0.01", "--data", str(svm), "--hash-features",
                          "10", "--workers", "2", "--tol", "1e-8", "-o", str(model), "--quiet"))
        assert f"{algorithm} on {svm} (400 x 1024, sparse, hashed into 2**10 columns) with 2 workers" in proc.stdout
        ours, ref = load_model(model), est.fit(Xh, y.astype(float))
        assert np.count_nonzero(ours.coef_) < Xh.shape[1] and np.array_equal(ours.coef_ == 0, ref.coef_ == 0)
        np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
        ok(run_cli("predict", "--model", str(model), "--data", str(svm), "-o", str(out)))
        np.testing.assert_allclose(np.load(out), ours.predict(Xh), rtol=1e-12)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS")
def test_a_hashed_model_too_wide_for_memory_is_one_line(tmp_path):
    import resource

    svm = tmp_path / "tiny.svm"
    svm.write_text("1 1:1\n0 2:1\n")

    def limit():  # 6 GB of address space: 2**31 coefficients (16 GiB a vector) cannot be allocated
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    proc = subprocess.run([sys.executable, "-m", "drizzle_ml", "train", "--data", str(svm), "--hash-features", "31",
                           "--workers", "1", "-o", str(tmp_path / "m.h5"), "--quiet"], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == ["drizzle-ml: error: out of memory: Unable to allocate 16.0 GiB for an array "
                                        "with shape (2147483649,) and data type float64"], proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["tiny.svm"]  # the hashed copy is gone, no model written


def test_hashed_training_errors_are_one_line(hashed_libsvm, tmp_path):
    svm, _, _ = hashed_libsvm
    bad = tmp_path / "bad.svm"
    bad.write_text("1 1:0.5 2:1\n0 3:1\n1 x:1\n")
    cases = [
        (["train", "--data", str(svm), "--hash-features", "-3"], "--hash-features must be an integer between 1 and "
                                                                  "31, got -3"),
        (["train", "--data", str(svm), "--hash-features", "40"], "--hash-features must be an integer between 1 and "
                                                                  "31, got 40"),
        (["train", "--data", str(svm), "--hash-features", "8", "--algorithm", "pca"],
         "--hash-features does not apply to --algorithm pca (it applies to logistic, linear, ridge, lasso, "
         "elasticnet, kmeans)"),
        (["train", "--hash-features", "8"], "--hash-features hashes the features of --data, a LIBSVM or tokens "
                                            "file: give --data"),
        (["train", "--data", str(tmp_path / "x.h5"), "--hash-features", "8"],
         f"--hash-features reads LIBSVM or token lines; {tmp_path / 'x.h5'} is HDF5 (columns of numbers already)"),
        (["train", "--data", str(tmp_path / "x.dat"), "--hash-features", "8"], f"data file not found: "
                                                                               f"{tmp_path / 'x.dat'}"),
        (["train", "--data", str(bad), "--hash-features", "8", "--workers", "1"],
         f"{bad} line 3: 'x' is not a feature index (an integer)"),
    ]
    for args, message in cases:
        # Refused before any worker starts: in this process, but for the last (its workers read the file).
        proc = drizzle(*args) if "--workers" in args else run_cli(*args)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"drizzle-ml: error: {message}", \
            proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.svm"]
    model = tmp_path / "m.h5"
    ok(drizzle("train", "--data", str(svm), "--hash-features", "6", "--workers", "1", "-o", str(model), "--quiet"))
    proc = run_cli("predict", "--model", str(model), "--data", str(svm), "--hash-features", "8", "-o",
                   str(tmp_path / "p.npy"))
    assert proc.returncode == 2 and proc.stderr == (
        "drizzle-ml: error: the model was trained on libsvm hashed into 2**6 columns, not libsvm into 2**8: leave "
        "out --hash-features and --data-format, predict hashes as the training did\n")
    proc = run_cli("predict", "--model", str(model), "--data", str(bad), "-o", str(tmp_path / "p.npy"))
    assert proc.returncode == 2 and proc.stderr == f"drizzle-ml: error: {bad} line 3: 'x' is not a feature index " \
                                                   "(an integer)\n"
