"""Checkpoints, resume and recovery of estimator fits, with real processes and real kills."""

import glob
import os
import shutil
import signal

import numpy as np
import pytest
from sklearn.datasets import make_classification

import drizzle_ml as dm
from drizzle_ml.algorithms.base import WorkerRecoveredWarning
from drizzle_ml.errors import CheckpointMismatchError, CheckpointWarning

X, Y = make_classification(6000, 12, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def gd(max_iter=120, **kw):
    params = dict(solver="gd", learning_rate=0.5, tol=0.0, max_iter=max_iter, n_workers=2, group_size=10)
    return dm.LogisticRegression(**{**params, **kw})


@pytest.fixture(scope="module")
def reference():
    return {n: gd(n).fit(X, Y).coef_ for n in (120, 240)}


def job_dir(directory, job=0):
    """The one directory of the ``job``-th job of a fit under ``directory`` (job-<k>-<hash of its key>)."""
    found = glob.glob(os.path.join(directory, f"job-{job}-*"))
    assert len(found) == 1, found
    return found[0]


def checkpoints(directory, job=0):
    return sorted(n for n in os.listdir(job_dir(directory, job)) if n.startswith("ckpt-"))


@pytest.mark.parametrize("worker,at", [(1, 40), (0, 150)])
def test_killed_worker_is_replaced_and_the_model_is_bit_identical(reference, worker, at):
    victim = dm.get_cluster(2).workers[worker].pid
    est = gd(240, group_size=4)

    def kill_once(group):  # at a group boundary, while the next group is already running
        if group.start_iteration >= at and not killed:
            killed.append(group.start_iteration + group.n_iterations)  # committed when the kill lands
            os.kill(victim, signal.SIGKILL)

    killed: list[int] = []
    est.progress_callback = kill_once
    with pytest.warns(WorkerRecoveredWarning, match=rf"worker {worker} \(pid {victim} on \S+\) died .*"
                      r"Restarting the workers and resuming at iteration (\d+)") as caught:
        est.fit(X, Y)
    resumed_at = int(str(caught[0].message).split("resuming at iteration ")[1].split()[0])
    # Nothing committed is lost; the group in flight may still finish (and commit) before
    # the death is noticed, so the job resumes at the kill point or one group later.
    assert killed[0] <= resumed_at <= killed[0] + 4
    assert np.array_equal(est.coef_, reference[240])
    assert est.n_iter_ == 240 and est.model_version_ == 240


def test_checkpoints_rotate_and_a_finished_job_resumes_to_itself(tmp_path, reference):
    est = gd(checkpoint_dir=tmp_path).fit(X, Y)
    assert checkpoints(tmp_path) == ["ckpt-000000000100.h5", "ckpt-000000000110.h5", "ckpt-000000000120.h5"]
    again = gd(checkpoint_dir=tmp_path).fit(X, Y, resume=True)
    assert np.array_equal(again.coef_, est.coef_) and np.array_equal(est.coef_, reference[120])
    assert again.n_iter_ == 120 and again.history_ == []  # nothing ran


def test_resume_continues_bit_identically(tmp_path, reference):
    gd(120, checkpoint_dir=tmp_path).fit(X, Y)
    longer = gd(240, checkpoint_dir=tmp_path).fit(X, Y, resume=True)
    assert np.array_equal(longer.coef_, reference[240])
    assert longer.n_iter_ == 240 and longer.model_version_ == 240
    assert longer.history_[0]["start_iteration"] == 120


def test_damaged_newest_checkpoint_is_skipped(tmp_path, reference):
    gd(120, checkpoint_dir=tmp_path).fit(X, Y)
    newest = os.path.join(job_dir(tmp_path), "ckpt-000000000120.h5")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(CheckpointWarning, match="ckpt-000000000120.h5"):
        est = gd(240, checkpoint_dir=tmp_path).fit(X, Y, resume=True)
    assert est.history_[0]["start_iteration"] == 110
    assert np.array_equal(est.coef_, reference[240])


def test_empty_directory_starts_fresh_and_foreign_jobs_are_refused(tmp_path, reference):
    est = gd(checkpoint_dir=tmp_path / "new").fit(X, Y, resume=True)
    assert np.array_equal(est.coef_, reference[120]) and est.history_[0]["start_iteration"] == 0
    with pytest.raises(CheckpointMismatchError, match=r"cannot resume: .* holds no checkpoint of this job "
                       r"\(LogisticRegression\.Minimize\.0-\w+\), only of other jobs \(job-0-\w+: another"):
        gd(C=0.5, checkpoint_dir=tmp_path / "new").fit(X, Y, resume=True)
    assert len(os.listdir(tmp_path / "new")) == 1  # the refused job left no directory of its own
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        gd().fit(X, Y, resume=True)


@pytest.mark.parametrize("workers", [1, 3])
def test_elastic_resume_with_another_worker_count(tmp_path, reference, workers):
    gd(120, checkpoint_dir=tmp_path).fit(X, Y)  # 2 workers
    est = gd(240, n_workers=workers, checkpoint_dir=tmp_path).fit(X, Y, resume=True)
    np.testing.assert_allclose(est.coef_, reference[240], rtol=1e-10, atol=1e-14)


def test_multi_job_fit_resumes_every_job(tmp_path):
    km = dm.KMeans(n_clusters=4, random_state=0, n_workers=2, checkpoint_dir=tmp_path).fit(X)
    assert [n[:6] for n in sorted(os.listdir(tmp_path))] == ["job-0-", "job-1-"]  # k-means++, then Lloyd
    shutil.rmtree(job_dir(tmp_path, 1))  # as if the fit died during Lloyd
    again = dm.KMeans(n_clusters=4, random_state=0, n_workers=2, checkpoint_dir=tmp_path).fit(X, resume=True)
    assert np.array_equal(again.cluster_centers_, km.cluster_centers_) and again.inertia_ == km.inertia_


# -- the command line: the supervisor restarts a failed MPI job from its checkpoints ---------------
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import h5py  # noqa: E402

from drizzle_ml.algorithms.persist import load_model  # noqa: E402

from .conftest import ranks  # noqa: E402

TRAIN = ["--solver", "gd", "--learning-rate", "0.1", "--tol", "0", "--group-size", "20"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("recovery") / "data.h5"
    Xb, yb = make_classification(20_000, 20, random_state=1)
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = Xb, yb
    return str(path)


def train_cli(data, *args):
    return subprocess.run([sys.executable, "-m", "drizzle_ml", "train", "--data", data, "--quiet", *TRAIN, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def undisturbed(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("undisturbed")
    models = {}
    for workers, iters in [(2, 400)]:
        path = out / f"m{workers}-{iters}.h5"
        proc = train_cli(data_file, "--workers", str(workers), "--max-iter", str(iters), "-o", str(path))
        assert proc.returncode == 0, proc.stderr
        models[workers, iters] = load_model(path).coef_
    return models


def kill_at_iteration(proc: subprocess.Popen, at: int, victim) -> list[str]:
    """Read ``proc``'s stderr until a progress line reaches iteration ``at``, SIGKILL the pid ``victim()``
    returns, then wait (bounded) for the job to end; return the stderr lines."""
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("iter ") and int(line.split()[1]) >= at:
                os.kill(victim(), signal.SIGKILL)
                break
        lines += proc.stderr.readlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return lines


@pytest.mark.parametrize("victim_rank,seed", [(0, 1), (2, 2)])  # the driver, a worker (a leaf of the tree)
def test_cli_kill_9_at_a_random_time_recovers_bit_identically(data_file, undisturbed, tmp_path, victim_rank, seed):
    kill_at = random.Random(seed).randrange(40, 300)
    model = tmp_path / "m.h5"
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "train", "--data", data_file, "--workers", "2",
                             "--max-iter", "400", *TRAIN, "--checkpoint-dir", str(tmp_path / "ck"), "-o", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = kill_at_iteration(proc, kill_at, lambda: ranks(data_file)[victim_rank])
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    restarts = [ln for ln in lines if "the MPI job failed" in ln]
    assert len(restarts) == 1 and "restart 1 of 3" in restarts[0], stderr
    if "redoing iterations" in restarts[0]:
        first, last = (int(x) for x in restarts[0].split("redoing iterations ")[1].split(" to "))
        assert last - first <= 20  # at most one group
    assert np.array_equal(load_model(model).coef_, undisturbed[2, 400])


def test_cli_resume_after_a_failure_without_restarts(data_file, undisturbed, tmp_path):
    ck = str(tmp_path / "ck")
    first = train_cli(data_file, "--workers", "2", "--max-iter", "200", "--checkpoint-dir", ck)
    assert first.returncode == 0
    proc = train_cli(data_file, "--workers", "2", "--max-iter", "400", "--checkpoint-dir", ck, "--resume",
                     "-o", str(tmp_path / "m.h5"))
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from the checkpoint at iteration 200 in {ck}" in proc.stdout
    assert "done: 400 iterations (resumed at 200) in " in proc.stdout  # its speed: of the 200 it made
    assert np.array_equal(load_model(tmp_path / "m.h5").coef_, undisturbed[2, 400])


# Shrinking by the CLI is in test_cli_shrinks_after_repeated_failures_at_one_size; both directions by the
# estimator API in test_elastic_resume_with_another_worker_count.
@pytest.mark.parametrize("before,after", [(2, 3)])
def test_cli_elastic_resume_grows(data_file, undisturbed, tmp_path, before, after):
    ck = str(tmp_path / "ck")
    assert train_cli(data_file, "--workers", str(before), "--max-iter", "200", "--checkpoint-dir", ck).returncode == 0
    proc = train_cli(data_file, "--workers", str(after), "--max-iter", "400", "--checkpoint-dir", ck, "--resume",
                     "-o", str(tmp_path / "m.h5"))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(load_model(tmp_path / "m.h5").coef_, undisturbed[before, 400], rtol=1e-10)


def test_cli_checkpoint_errors(data_file, tmp_path):
    proc = train_cli(data_file, "--resume")
    assert proc.returncode == 2 and "--resume needs --checkpoint-dir" in proc.stderr
    proc = train_cli(data_file, "--min-workers", "1")
    assert proc.returncode == 2 and "--min-workers needs --checkpoint-dir" in proc.stderr
    proc = train_cli(data_file, "--checkpoint-dir", str(tmp_path / "x"), "--checkpoint-every", "often")
    assert proc.returncode == 2 and "--checkpoint-every: checkpoint_every must be" in proc.stderr
    (tmp_path / "file").write_text("")
    proc = train_cli(data_file, "--workers", "2", "--max-iter", "40", "--checkpoint-dir", str(tmp_path / "file"))
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert errors == [f"drizzle-ml: error: checkpoint directory {tmp_path / 'file'} is a file, not a directory"]
    ck = str(tmp_path / "ck")
    assert train_cli(data_file, "--workers", "2", "--max-iter", "40", "--checkpoint-dir", ck).returncode == 0
    proc = train_cli(data_file, "--workers", "2", "--max-iter", "40", "--checkpoint-dir", ck, "--resume",
                     "--C", "0.5")
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert len(errors) == 1 and "holds no checkpoint of this job" in errors[0]


def test_bench_recovery_reports_and_recovers(tmp_path):
    out = tmp_path / "recovery.json"
    proc = subprocess.run([sys.executable, "-m", "drizzle_ml", "bench", "recovery", "--rows", "4000", "--features",
                           "5", "--iterations", "240", "--repeats", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "kill -> back at the same iteration" in proc.stdout and "per-iteration time x" in proc.stdout
    report = json.loads(out.read_text())
    for group_size in ("10", "100"):
        (round_,) = report["recovery"][group_size]
        assert round_["same_model"] and round_["committed_lost"] == 0 and round_["kill_to_caught_up_s"] > 0
    assert report["checkpoints"][0]["write_s"] > 0


def test_checkpoint_interval_in_groups_or_seconds_and_the_job_parameters(tmp_path):
    from drizzle_ml.checkpoint import CheckpointStore

    gd(120, checkpoint_every=5, checkpoint_dir=tmp_path / "groups").fit(X, Y)
    # groups of 10: every 5th commit (iterations 50, 100) and the last (120); the newest 3 are kept
    assert checkpoints(tmp_path / "groups") == ["ckpt-000000000050.h5", "ckpt-000000000100.h5",
                                                "ckpt-000000000120.h5"]
    gd(120, checkpoint_every="3600s", checkpoint_dir=tmp_path / "seconds").fit(X, Y)
    assert checkpoints(tmp_path / "seconds") == ["ckpt-000000000120.h5"]  # only the last within an hour
    ck = CheckpointStore(job_dir(tmp_path / "groups")).latest()
    assert ck.params["estimator"] == "LogisticRegression" and ck.params["program"] == "Minimize"
    assert ck.params["params"]["solver"] == "gd" and ck.params["params"]["learning_rate"] == 0.5
    assert set(ck.model) == {"w", "x", "g", "p", "S", "Y", "state"} and ck.tuner == {"size": 10}
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match=r"The 'checkpoint_every' parameter of LogisticRegression must be an "
                                             r"int in the range \[1, inf\) or an instance of 'str'"):
            gd(checkpoint_every=bad).fit(X, Y)
    for bad in ("soon", "-1s"):
        with pytest.raises(ValueError, match=r"^checkpoint_every must be an integer >= 1 \(groups\) or seconds "
                                             r"like '30s', got '"):
            gd(checkpoint_every=bad).fit(X, Y)


def test_cli_shrinks_after_repeated_failures_at_one_size(data_file, tmp_path):
    model = tmp_path / "m.h5"
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "train", "--data", data_file, "--workers", "2",
                             "--min-workers", "1", "--max-iter", "300", *TRAIN, "--checkpoint-dir",
                             str(tmp_path / "ck"), "-o", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, kills = [], 0
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("iter ") and kills < 2:
                os.kill(ranks(data_file)[1], signal.SIGKILL)  # two failures in a row at 2 workers
                kills += 1
                for more in proc.stderr:  # wait for the restart before the next kill
                    lines.append(more)
                    if "the MPI job failed" in more:
                        break
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    restarts = [ln for ln in lines if "the MPI job failed" in ln]
    assert len(restarts) == 2
    assert "with 2 workers" in restarts[0] and "with 1 workers" in restarts[1], stderr
    assert load_model(model).n_iter_ == 300


def test_cli_jobs_sharing_a_checkpoint_dir_restart_from_their_own_checkpoints(data_file, undisturbed, tmp_path):
    ck = tmp_path / "shared"
    other = train_cli(data_file, "--workers", "2", "--max-iter", "400", "--C", "0.5", "--checkpoint-dir", str(ck))
    assert other.returncode == 0, other.stderr
    (other_dir,) = ck.iterdir()
    other_files = sorted(p.name for p in other_dir.glob("ckpt-*.h5"))
    assert other_files[-1] == "ckpt-000000000400.h5"
    # A second job in the same directory: its worker is killed early; the restart must come from its own
    # checkpoint, not from the other job's newer one at iteration 400.
    model = tmp_path / "m.h5"
    proc = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "train", "--data", data_file, "--workers", "2",
                             "--max-iter", "400", *TRAIN, "--checkpoint-dir", str(ck), "-o", str(model)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = kill_at_iteration(proc, 60, lambda: ranks(data_file)[2])
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    (restart,) = [ln for ln in lines if "the MPI job failed" in ln]
    resumed_at = int(restart.split("from the checkpoint at iteration ")[1].split(";")[0].split()[0])
    assert 0 < resumed_at < 400, restart  # its own newest durable checkpoint (one write may be in flight)
    assert np.array_equal(load_model(model).coef_, undisturbed[2, 400])
    # Each job kept its own directory; the first job's checkpoints are untouched.
    assert len(list(ck.iterdir())) == 2
    assert sorted(p.name for p in other_dir.glob("ckpt-*.h5")) == other_files


def test_cli_second_running_copy_of_a_job_is_refused_up_front(data_file, undisturbed, tmp_path):
    ck, model = tmp_path / "ck", tmp_path / "m.h5"
    first = subprocess.Popen([sys.executable, "-m", "drizzle_ml", "train", "--data", data_file, "--workers", "2",
                              "--max-iter", "400", *TRAIN, "--checkpoint-dir", str(ck), "-o", str(model)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = None
    try:
        for line in first.stderr:  # the first progress line: its checkpoint directory is open (and locked)
            if line.startswith("iter "):
                driver = ranks(data_file)[0]
                os.kill(driver, signal.SIGSTOP)  # hold it there while the copy starts
                break
        assert driver is not None
        copy = train_cli(data_file, "--workers", "2", "--max-iter", "400", "--checkpoint-dir", str(ck))
    finally:
        if driver is not None:
            os.kill(driver, signal.SIGCONT)
    assert copy.returncode == 2
    errors = [ln for ln in copy.stderr.splitlines() if ln.startswith("drizzle-ml: error:")]
    assert len(errors) == 1 and re.fullmatch(
        rf"drizzle-ml: error: checkpoint directory {re.escape(str(ck))}/job-0-\w+ is in use by another running "
        rf"copy of this job \(pid {driver} on \S+\); give each running job its own checkpoint directory",
        errors[0]), copy.stderr
    first.stderr.read()
    assert first.wait(timeout=120) == 0
    assert np.array_equal(load_model(model).coef_, undisturbed[2, 400])


def test_job_directory_lock_is_dropped_when_its_holder_is_killed(tmp_path):
    from drizzle_ml.checkpoint import open_job_store
    from drizzle_ml.errors import CheckpointInUseError

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from drizzle_ml.checkpoint import open_job_store\n"
        f"store, _ = open_job_store({str(tmp_path)!r}, 0, 'job-abc', resume=False)\n"
        "print('held', flush=True); time.sleep(300)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(CheckpointInUseError, match=rf"in use by another running copy of this job "
                                                       rf"\(pid {holder.pid} on "):
            open_job_store(tmp_path, 0, "job-abc", resume=False)
        other, _ = open_job_store(tmp_path, 0, "job-def", resume=False)  # another job: its own directory
        other.close()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    store, resumed = open_job_store(tmp_path, 0, "job-abc", resume=True)  # the kernel dropped the lock
    assert resumed is None and store.directory == str(tmp_path / "job-0-abc")
    store.close()
    store, _ = open_job_store(tmp_path, 0, "job-abc", resume=False)  # close() released it
    store.close()
