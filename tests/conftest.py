import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from drizzle_ml.worker_job import find_mpiexec

TIMEOUT = 120


def worker_processes(marker: str) -> list[str]:
    """Command lines of live processes whose arguments contain ``marker``."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if marker in ln and "ps -eo" not in ln and " Z" not in ln]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def rank_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    except OSError:
        return None
    return int(env[b"PMI_RANK"]) if b"PMI_RANK" in env else None


def ranks(marker: str) -> dict[int, int]:
    """rank -> pid of the MPI processes whose command line contains ``marker``."""
    out = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "drizzle_ml" in cmdline:
            rank = rank_of(pid)
            if rank is not None:
                out[rank] = pid
    return out


def wait_cluster_gone(cluster, timeout: float = 10.0) -> list[int]:
    """Wait until a launched cluster's mpiexec and workers are gone; return survivors."""
    import time

    pids = [h.pid for h in cluster.workers] + [cluster._job.pid]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def run_mpi(n: int, script: str, tmp_path, timeout: float = TIMEOUT, env=None):
    """Run ``script`` under ``mpiexec -n n``; return (returncode, stdout, stderr)."""
    path = tmp_path / f"job_{n}.py"
    path.write_text(textwrap.dedent(script))
    full_env = dict(os.environ, DRIZZLE_TIMEOUT="30", OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([find_mpiexec(), "-n", str(n), sys.executable, str(path)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=str(tmp_path))
    return proc.returncode, proc.stdout, proc.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``drizzle-ml ARGS`` in this process, for commands that start no MPI job (datasets, predict, info).

    The same ``main`` as the console script, without a Python start-up (seconds with scikit-learn).
    """
    from drizzle_ml.launch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def last_json(stdout: str):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line in output:\n{stdout}"
    return json.loads(lines[-1])


@pytest.fixture(scope="session")
def cluster2():
    import drizzle_ml

    with drizzle_ml.Cluster(2, timeout=30) as cluster:
        yield cluster


# Test modules whose tests start no MPI process, and those with the slowest tests.
PURE_MODULES = {"test_architecture", "test_bench_scale", "test_checkpoint", "test_datasets", "test_file_formats",
                "test_group_loop", "test_hashing", "test_tuner", "test_units"}
SLOW_MODULES = {"test_bench_report", "test_multihost", "test_recovery", "test_slurm"}


def pytest_collection_modifyitems(config, items):
    """Mark by module: ``mpi`` unless the module is pure, ``slow`` for the slowest ones."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module not in PURE_MODULES:
            item.add_marker(pytest.mark.mpi)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
