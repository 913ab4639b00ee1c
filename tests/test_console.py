"""What a script's user sees: its own output on stdout, Hydra's notices only after a failure, on stderr."""

import subprocess
import sys
import textwrap

from drizzle_ml.cluster import is_hydra_notice


def _run(tmp_path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                          cwd=str(tmp_path))


def test_a_script_that_fits_prints_only_its_own_output(tmp_path):
    proc = _run(tmp_path, """
        import numpy as np
        import drizzle_ml
        X = np.random.default_rng(0).standard_normal((200, 3))
        model = drizzle_ml.LinearRegression(n_workers=2).fit(X, X @ [1.0, 2.0, 3.0])
        print("coef", np.round(model.coef_, 6).tolist())
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "coef [1.0, 2.0, 3.0]\n"
    assert not any(is_hydra_notice(line) for line in proc.stderr.splitlines()), proc.stderr


def test_hydra_notices_of_a_dead_worker_are_shown_on_stderr(tmp_path):
    proc = _run(tmp_path, """
        import numpy as np
        import drizzle_ml
        from drizzle_ml.errors import WorkerFailedError
        from drizzle_ml.testing import Counter
        with drizzle_ml.Cluster(2, timeout=30) as cluster:
            try:
                cluster.run(Counter(kill_at=2, kill_worker=1), {"x": np.zeros(1), "seen": np.zeros(1)},
                            drizzle_ml.ArrayDataset(np.ones((10, 2))), max_iter=10, group_size=1)
            except WorkerFailedError as exc:
                print("failed:", exc.worker)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "failed: 1\n"
    notices = [line for line in proc.stderr.splitlines() if is_hydra_notice(line)]
    assert any("Exit codes" in line for line in notices), proc.stderr
    assert any("EXIT CODE: 9" in line for line in notices), proc.stderr


def test_hydra_notices_are_told_from_workers_output():
    for line in ("[mpiexec@node7] Exit codes: [node7] 0,0\n", "=" * 83 + "\n",
                 "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n", "=   EXIT CODE: 9\n",
                 "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n",
                 "[proxy:0@node7] HYD_pmcd_pmip_control_cmd_cb: assert failed\n"):
        assert is_hydra_notice(line), line
    for line in ("loss 0.25\n", "== results ==\n", "= total: 3\n", "mpiexec says hello\n"):
        assert not is_hydra_notice(line), line


def test_a_killed_driver_takes_its_launched_workers_down(tmp_path):
    import time

    from .conftest import worker_processes

    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import drizzle_ml
        from drizzle_ml.testing import LeastSquaresGD
        X = np.random.default_rng(0).standard_normal((20000, 10))
        with drizzle_ml.Cluster(2, timeout=600) as cluster:
            print("started", flush=True)
            cluster.run(LeastSquaresGD(0.01), {"coef": np.zeros(10)}, drizzle_ml.ArrayDataset(X, X[:, 0]),
                        max_iter=10_000_000, group_size=100)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)  # the job is running
        marker = f"--driver-pid {proc.pid}"
        assert len(worker_processes(marker)) >= 3, worker_processes(marker)  # mpiexec and 2 workers
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 15
    while worker_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert worker_processes(marker) == []
