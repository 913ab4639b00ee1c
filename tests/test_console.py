"""What a script's user sees: its own output on stdout, Hydra's notices only after a failure, on stderr."""

import subprocess
import sys
import textwrap

from drizzle_ml.hydra import is_hydra_notice


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
    for line in ("loss 0.25\n", "== results ==\n", "= total: 3\n", "mpiexec says hello\n", "[1] 2\n"):
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


def test_the_cli_keeps_hydra_off_stdout_and_shows_it_on_stderr_after_a_failure(tmp_path):
    import os
    import signal

    import h5py
    from sklearn.datasets import make_classification

    from .conftest import ranks

    X, y = make_classification(20_000, 20, random_state=1)
    data = str(tmp_path / "killme.h5")
    with h5py.File(data, "w") as f:
        f["X"], f["y"] = X, y
    command = [sys.executable, "-m", "drizzle_ml", "train", "--data", data, "--workers", "2", "--solver", "gd",
               "--learning-rate", "0.1", "--tol", "0", "--group-size", "20"]
    clean = subprocess.run([*command, "--max-iter", "40"], capture_output=True, text=True, timeout=180)
    assert clean.returncode == 0, clean.stderr
    assert not any(is_hydra_notice(ln) for ln in (clean.stdout + clean.stderr).splitlines())
    assert clean.stdout.splitlines()[1].startswith("drizzle-ml: placement:")

    proc = subprocess.Popen([*command, "--max-iter", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if line.startswith("iter "):
                os.kill(ranks(data)[2], signal.SIGKILL)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 9
    assert not any(is_hydra_notice(ln) for ln in out.splitlines()), out
    notices = [ln for ln in err.splitlines() if is_hydra_notice(ln)]
    assert any("EXIT CODE: 9" in ln for ln in notices), err
    assert err.splitlines()[-1] == ("drizzle-ml: error: the MPI job failed (exit code 9); with --checkpoint-dir it "
                                    "would be restarted from its newest checkpoint")


def test_a_progress_bar_passes_through_at_once_and_hydra_lines_are_held(monkeypatch):
    import io
    import threading
    from collections import deque

    from drizzle_ml.hydra import OutputFilter, show_notices

    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        w = sys.stderr.buffer
        w.write(b"loss 1\\n\\r[#   ] iter 10"); w.flush()
        sys.stdin.readline()  # the parent has seen the bar before anything more is written
        w.write(b"\\r[### ] iter 30\\n\\n[mpiexec@vm] Exit codes: [vm] 0,0\\n[vm2] 0\\n\\ndone\\n[1] 2\\n"); w.flush()
    """)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    shown, notices = io.StringIO(), deque()
    monkeypatch.setattr(sys, "stderr", shown)
    seen = []
    pump = threading.Thread(target=OutputFilter("stderr", notices, on_line=seen.append).pump, args=(child.stderr,))
    pump.start()
    for _ in range(600):  # bounded: the bar arrives without a newline after it
        if "iter 10" in shown.getvalue():
            break
        pump.join(timeout=0.05)
    assert shown.getvalue() == "loss 1\n\r[#   ] iter 10"
    child.stdin.write(b"go\n")
    child.stdin.flush()
    pump.join(timeout=60)
    assert child.wait(timeout=60) == 0
    # The exit codes of a second host go on a line of their own; a rank's "[1] 2" is the rank's.
    assert shown.getvalue() == "loss 1\n\r[#   ] iter 10\r[### ] iter 30\n\ndone\n[1] 2\n"
    assert list(notices) == ["[mpiexec@vm] Exit codes: [vm] 0,0\n", "[vm2] 0\n"]
    show_notices(notices)
    assert shown.getvalue().endswith("[1] 2\n[mpiexec@vm] Exit codes: [vm] 0,0\n[vm2] 0\n") and not notices
