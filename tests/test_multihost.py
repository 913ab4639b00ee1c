"""Beyond one machine: --hosts/--hostfile, the placement line, and real jobs across two namespaced "hosts".

The two hosts come from :mod:`tests.netns` (network, UTS, IPC and mount
namespaces joined by a veth pair); the tests that need them are skipped,
with the reason, where namespaces cannot be made (not root, no ``ip``...).
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from sklearn.datasets import make_classification

from drizzle_ml.launch.hosts import placement_line
from drizzle_ml.worker_job import find_mpiexec

from . import netns
from .test_cli import drizzle, ok
from .test_recovery import kill_at_iteration, ranks

REASON = netns.unavailable()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"two-host namespace harness unavailable: {REASON}")
A, B = netns.HOSTS
FEATURES, ITERATIONS = 50, 200
GD = ["--solver", "gd", "--learning-rate", "0.5", "--tol", "0", "--max-iter", str(ITERATIONS), "--group-size", "10"]
ACROSS = ["--hosts", f"{A}:2,{B}:1"]  # driver and worker 0 on A, worker 1 on B
PLACED = f"placement: rank 0 (driver), rank 1 on {A}; rank 2 on {B}"


# -- the options, without namespaces -------------------------------------------------------------
def test_host_option_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing but a comment\n\n")
    for args, message in [(["--hostfile", str(tmp_path / "none")], f"hostfile not found: {tmp_path / 'none'}"),
                          (["--hostfile", str(empty)], f"hostfile {empty} lists no hosts"),
                          (["--hosts", "a,,b"], "--hosts: empty host name in 'a,,b'"),
                          (["--hosts", "a", "--mpiexec-args", "-f hf"], "--mpiexec-args has -f too")]:
        proc = drizzle("train", *args, timeout=60)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr
    proc = drizzle("train", "--hosts", "a", "--hostfile", str(empty), timeout=60)
    assert proc.returncode == 2 and "not allowed with argument --hosts" in proc.stderr


def test_hosts_under_a_user_started_mpiexec_is_an_error():
    proc = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-m", "drizzle_ml", "train", "--hosts", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "drizzle-ml: error: --hosts chooses hosts for the mpiexec that drizzle-ml starts" in proc.stderr


def test_placement_line():
    assert placement_line({"a": [0, 1, 2], "b": [3, 4]}) == "rank 0 (driver), ranks 1-2 on a; ranks 3-4 on b"
    assert placement_line({"a": [0, 2], "b": [1]}) == "rank 0 (driver), rank 2 on a; rank 1 on b"


def test_hosts_on_one_machine_and_the_placement_line(tmp_path):
    import socket

    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{socket.gethostname()}:3\n")
    proc = ok(drizzle("train", "--workers", "2", "--max-iter", "3", "--solver", "gd", "--hostfile", str(hostfile)))
    assert f"placement: rank 0 (driver), ranks 1-2 on {socket.gethostname()}" in proc.stdout


# -- two hosts ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hosts():
    made = netns.TwoHosts()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def data(hosts):
    """One HDF5 file, copied to a path private to each host (the same path on both)."""
    X, y = make_classification(4000, FEATURES, random_state=3)
    src = hosts.workdir / "src.h5"
    with h5py.File(src, "w") as f:
        f["X"], f["y"] = X, y
    (path,) = {hosts.copy_to(host, src, "data.h5") for host in (A, B)}
    assert not os.path.exists(path)  # only inside the hosts' mount namespaces
    return path


def train_on(hosts, *args, host=A):
    """``drizzle-ml train`` started on ``host`` (its mpiexec and rank 0 run there)."""
    return subprocess.run(hosts.command(host, [sys.executable, "-m", "drizzle_ml", "train", *args], cwd=hosts.workdir),
                          capture_output=True, text=True, timeout=180, env={**os.environ, **hosts.env()})


def saved_arrays(path) -> dict:
    with h5py.File(path) as f:
        return {name: f["fitted"][name][()] for name in f["fitted"] if isinstance(f["fitted"][name], h5py.Dataset)}


def assert_same_arrays(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def logistic(hosts, data):
    """The same logistic fit with 2 workers on host A alone and across A and B: models and the traffic."""
    out = {}
    for where, extra in (("one", []), ("two", ACROSS)):
        model = hosts.workdir / f"logistic-{where}.h5"
        before = hosts.rx_bytes()
        out[where] = ok(train_on(hosts, "--data", data, "--workers", "2", *GD, *extra, "-o", str(model)))
        after = hosts.rx_bytes()
        out[where, "rx"] = {h: after[h] - before[h] for h in after}
        out[where, "model"] = saved_arrays(model)
    return out


@needs_netns
def test_logistic_across_two_hosts_is_bit_identical_and_crosses_the_link(logistic):
    assert_same_arrays(logistic["two", "model"], logistic["one", "model"])
    assert PLACED in logistic["two"].stdout
    assert f"rank 0 (driver), ranks 1-2 on {A}" in logistic["one"].stdout
    # Each iteration worker 1 (on B) sends its gradient partial up the tree and receives the model:
    # at least (features + 1) float64 each way per iteration, on top of MPI's own traffic.
    least = ITERATIONS * (FEATURES + 1) * 8
    assert logistic["two", "rx"][A] >= least and logistic["two", "rx"][B] >= least, logistic["two", "rx"]
    assert max(logistic["one", "rx"].values()) < least / 10  # one host: (almost) nothing on the link


@needs_netns
def test_pca_across_two_hosts_with_a_hostfile_is_bit_identical(hosts, data):
    hostfile = hosts.workdir / "hostfile"
    hostfile.write_text(f"{A}:2\n{B}:1\n")
    models = {}
    for where, extra in (("one", ["--quiet"]), ("two", ["--hostfile", str(hostfile)])):
        model = hosts.workdir / f"pca-{where}.h5"
        before = hosts.rx_bytes()
        proc = ok(train_on(hosts, "--algorithm", "pca", "--n-components", "5", "--data", data, "--workers", "2",
                           *extra, "-o", str(model)))
        rx = hosts.rx_bytes()[A] - before[A]
        models[where] = saved_arrays(model)
        assert ("placement" in proc.stdout) == (where == "two")  # none with --quiet
    assert PLACED in proc.stdout
    assert rx >= FEATURES * FEATURES * 8  # at least worker 1's Gram matrix came over the link
    assert_same_arrays(models["two"], models["one"])


@needs_netns
def test_worker_killed_on_the_second_host_is_recovered(hosts, data, logistic, tmp_path):
    model = hosts.workdir / "logistic-killed.h5"
    ck = hosts.workdir / "ck-killed"
    proc = subprocess.Popen(hosts.command(A, [sys.executable, "-m", "drizzle_ml", "train", "--data", data,
                                              "--workers", "2", *GD, *ACROSS, "--checkpoint-dir", str(ck),
                                              "-o", str(model)], cwd=hosts.workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **hosts.env()})
    victims = []

    def victim() -> int:  # worker 1's Python process, inside host B's namespaces
        victims.append(ranks(data)[2])
        assert victims[0] in hosts.pids_in(B)
        return victims[0]

    lines = kill_at_iteration(proc, 50, victim)
    stderr = "".join(lines)
    assert victims and proc.returncode == 0, stderr
    restarts = [ln for ln in lines if "the MPI job failed" in ln]
    assert len(restarts) == 1 and "restart 1 of 3" in restarts[0] and "with 2 workers" in restarts[0], stderr
    assert PLACED in proc.stdout.read()
    assert_same_arrays(saved_arrays(model), logistic["two", "model"])


# -- bench scale ---------------------------------------------------------------------------------
def test_bench_scale_quick_prints_the_table_and_the_errors(request, tmp_path):
    import json
    import re

    out = tmp_path / "scale.json"
    cmd = [sys.executable, "-m", "drizzle_ml", "bench", "scale", "--quick", "--workers", "2", "--iterations", "40",
           "--pingpongs", "100", "--json", str(out)]
    links, env = ["one host"], None
    if REASON is None:  # across the two namespaced hosts as well, started from host A
        hosts = request.getfixturevalue("hosts")
        cmd, env = hosts.command(A, [*cmd, "--hosts", f"{A},{B}"]), {**os.environ, **hosts.env()}
        links.append("two hosts")
    proc = ok(subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env))
    text = proc.stdout
    for link in links:
        assert re.search(rf"measured {link} +\(.*\): latency +[\d.]+ us, bandwidth +[\d.]+ GB/s", text), text
        assert f"prediction, {link} links (a model, not measured)" in text
    assert "driver cost per group c(W) =" in text and "BSP driver time per worker per iteration d =" in text
    assert re.search(r"reduction r\(W\) = [\d.]+ us \+ [\d.]+ us x rounds\(W\)", text), text
    rows = re.findall(r"^ *(\d+) +(\d+) +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", text, re.M)
    expected = [("4", "2"), ("16", "4"), ("64", "6"), ("256", "8"), ("1024", "10")]
    assert rows == expected * len(links), text
    checks = re.findall(r"^ *(one host|two hosts) +2 +(group=1|group=10|group=100|bsp) +[\d.]+ +[\d.]+ +-?[\d.]+%$",
                        text, re.M)
    assert sorted(checks) == sorted((link, c) for link in links for c in ("group=1", "group=10", "group=100", "bsp"))
    assert re.search(r"relative error: median [\d.]+%, largest [\d.]+%", text)
    report = json.loads(out.read_text())
    assert {(r["workers"], r["rounds"]) for r in report["table"]} == {(int(w), int(r)) for w, r in expected}
    assert all(r["error"] == pytest.approx(r["predicted"] / r["measured"] - 1) for r in report["checks"])
    if len(links) == 2:
        assert report["links"]["two hosts"]["hosts"] == [A, B]
