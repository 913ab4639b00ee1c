"""Checkpoints, resume and recovery of estimator fits, with real processes and real kills."""

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


def checkpoints(directory, job=0):
    return sorted(os.listdir(os.path.join(directory, f"job-{job}")))


@pytest.mark.parametrize("worker,at", [(1, 40), (0, 150)])
def test_killed_worker_is_replaced_and_the_model_is_bit_identical(reference, worker, at):
    victim = dm.get_cluster(2).workers[worker].pid
    est = gd(240, group_size=4)

    def kill_once(group):  # at a group boundary, while the next group is already running
        if group.start_iteration >= at and not killed:
            killed.append(victim)
            os.kill(victim, signal.SIGKILL)

    killed: list[int] = []
    est.progress_callback = kill_once
    with pytest.warns(WorkerRecoveredWarning, match=rf"worker {worker} \(pid {victim} on \S+\) died .*"
                      r"Restarting the workers and resuming at iteration (\d+)") as caught:
        est.fit(X, Y)
    resumed_at = int(str(caught[0].message).split("resuming at iteration ")[1].split()[0])
    assert at <= resumed_at <= at + 2 * 4  # at most the group in flight is redone
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
    newest = os.path.join(tmp_path, "job-0", "ckpt-000000000120.h5")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(CheckpointWarning, match="ckpt-000000000120.h5"):
        est = gd(240, checkpoint_dir=tmp_path).fit(X, Y, resume=True)
    assert est.history_[0]["start_iteration"] == 110
    assert np.array_equal(est.coef_, reference[240])


def test_empty_directory_starts_fresh_and_foreign_jobs_are_refused(tmp_path, reference):
    est = gd(checkpoint_dir=tmp_path / "new").fit(X, Y, resume=True)
    assert np.array_equal(est.coef_, reference[120]) and est.history_[0]["start_iteration"] == 0
    with pytest.raises(CheckpointMismatchError, match="belongs to job"):
        gd(C=0.5, checkpoint_dir=tmp_path / "new").fit(X, Y, resume=True)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        gd().fit(X, Y, resume=True)


@pytest.mark.parametrize("workers", [1, 3])
def test_elastic_resume_with_another_worker_count(tmp_path, reference, workers):
    gd(120, checkpoint_dir=tmp_path).fit(X, Y)  # 2 workers
    est = gd(240, n_workers=workers, checkpoint_dir=tmp_path).fit(X, Y, resume=True)
    np.testing.assert_allclose(est.coef_, reference[240], rtol=1e-10, atol=1e-14)


def test_multi_job_fit_resumes_every_job(tmp_path):
    km = dm.KMeans(n_clusters=4, random_state=0, n_workers=2, checkpoint_dir=tmp_path).fit(X)
    assert sorted(os.listdir(tmp_path)) == ["job-0", "job-1"]  # k-means++, then Lloyd
    shutil.rmtree(tmp_path / "job-1")  # as if the fit died during Lloyd
    again = dm.KMeans(n_clusters=4, random_state=0, n_workers=2, checkpoint_dir=tmp_path).fit(X, resume=True)
    assert np.array_equal(again.cluster_centers_, km.cluster_centers_) and again.inertia_ == km.inertia_
