"""Slurm: ``drizzle-ml train`` in an ``sbatch`` job, ``srun --mpi=pmi2`` direct launch, and ``srun`` without a PMI.

Against a real single-node Slurm started for this module (:mod:`tests.slurm`:
Debian's ``slurmctld``, ``slurmd`` and ``munge`` in a temporary directory);
skipped, with the reason, where those are not installed or we are not root.
The models trained under Slurm must equal, bit for bit, the one a plain
``mpiexec -n 3`` run saves.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from drizzle_ml.worker_job import find_mpiexec

from . import slurm as harness
from .conftest import run_cli
from .test_multihost import assert_same_arrays, saved_arrays

REASON = harness.unavailable()
needs_slurm = pytest.mark.skipif(REASON is not None, reason=f"no private Slurm: {REASON}")
PYTHON = [sys.executable, "-m", "drizzle_ml"]
TRAIN = ["train", "--quiet"]  # the bundled dataset, logistic regression
MESSAGE = ("drizzle-ml: error: srun started 3 tasks but each is an MPI world of 1: launch with srun --mpi=pmi2 "
           "(see docs/cluster.md)")

#: Run inside the sbatch job: the CLI without --workers, and an estimator with n_workers=None.
ESTIMATOR = textwrap.dedent("""
    import sys
    import numpy as np
    import drizzle_ml
    from drizzle_ml.datasets import load_default

    X, y, _ = load_default("classification")
    clf = drizzle_ml.LogisticRegression().fit(X, y)  # the CLI's estimator on the CLI's default data
    print("workers", drizzle_ml.get_cluster().n_workers, flush=True)
    np.save(sys.argv[1], np.concatenate([clf.coef_.ravel(), clf.intercept_]))
""")


@pytest.fixture(scope="module")
def slurm():
    if REASON is not None:
        pytest.skip(f"no private Slurm: {REASON}")
    with harness.Slurm() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The model of a plain ``mpiexec -n 3`` run (2 workers) outside Slurm."""
    where = tmp_path_factory.mktemp("reference")
    env = dict(harness.outside_slurm(), OMP_NUM_THREADS="1")
    proc = subprocess.run([find_mpiexec(), "-n", "3", *PYTHON, *TRAIN, "-o", str(where / "model.h5")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return where


@pytest.fixture(scope="module")
def batch_job(slurm, tmp_path_factory):
    """One ``sbatch -n 3`` job: ``drizzle-ml train`` without --workers, an estimator with n_workers=None,
    and ``drizzle-ml train`` in a one-task step (its mpiexec's own srun step must overlap that one)."""
    where = tmp_path_factory.mktemp("sbatch")
    (where / "fit.py").write_text(ESTIMATOR)
    script = where / "job.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        set -e
        export OMP_NUM_THREADS=1
        {sys.executable} -m drizzle_ml train --quiet -o {where / "model.h5"} --report {where / "report.json"}
        {sys.executable} {where / "fit.py"} {where / "coef.npy"}
        srun -n 1 {sys.executable} -m drizzle_ml train --quiet -o {where / "step.h5"}
    """))
    job = slurm.submit(script, "-n", "3", "-o", str(where / "job.out"), cwd=where)
    fields = slurm.wait_job(job)  # not sbatch --wait: it looks at the job every few seconds only
    output = (where / "job.out").read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), f"job {job}: {fields}\n{output}"
    return job, where, output


@needs_slurm
def test_sbatch_train_uses_the_allocation_and_saves_the_mpiexec_model(slurm, batch_job, reference):
    job, where, output = batch_job
    # --workers defaulted to the allocation's 3 tasks less the driver's.
    assert "with 2 workers" in output
    assert json.loads((where / "report.json").read_text())["workers"] == 2
    # mpiexec (Hydra) started its ranks through srun: a step per mpiexec, and the srun -n 1 and the one in it.
    assert slurm.steps_launched(job) == [f"{job}.{step}" for step in range(4)]
    assert_same_arrays(saved_arrays(where / "model.h5"), saved_arrays(reference / "model.h5"))


@needs_slurm
def test_train_in_a_one_task_srun_step_launches_its_workers(batch_job, reference):
    # Its mpiexec's srun needs the CPUs the step holds: without --overlap it waited for them forever.
    _, where, _ = batch_job
    assert_same_arrays(saved_arrays(where / "step.h5"), saved_arrays(reference / "model.h5"))


@needs_slurm
def test_estimator_in_sbatch_launches_workers_on_the_allocation(batch_job, reference):
    import numpy as np

    _, where, output = batch_job
    assert "workers 2" in output.splitlines()
    model = saved_arrays(reference / "model.h5")
    assert np.array_equal(np.load(where / "coef.npy"), np.concatenate([model["coef_"].ravel(), model["intercept_"]]))


@needs_slurm
def test_srun_pmi2_direct_launch_saves_the_mpiexec_model(slurm, reference, tmp_path):
    proc = slurm.run(["srun", "--mpi=pmi2", "-n", "3", *PYTHON, *TRAIN, "-o", str(tmp_path / "model.h5")],
                     env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "with 2 workers" in proc.stdout
    assert_same_arrays(saved_arrays(tmp_path / "model.h5"), saved_arrays(reference / "model.h5"))


@needs_slurm
def test_srun_without_pmi_is_a_one_line_error_not_a_hang(slurm, tmp_path):
    # Each task is an MPI world of 1; before this check each started a worker job that waited forever.
    proc = slurm.run(["srun", "--mpi=none", "-n", "3", *PYTHON, *TRAIN, "-o", str(tmp_path / "model.h5")],
                     timeout=60, cwd=tmp_path)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("drizzle-ml")]
    assert ours == [MESSAGE] * 3, proc.stderr  # one line from each task
    assert proc.stdout == "" and not (tmp_path / "model.h5").exists()


@needs_slurm
def test_srun_without_pmi_is_an_exception_in_python(slurm, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent("""
        import drizzle_ml
        try:
            drizzle_ml.LogisticRegression(n_workers=2).fit([[0.0], [1.0], [2.0]], [0, 1, 0])
        except drizzle_ml.LaunchError as exc:
            print("LaunchError:", exc)
    """))
    proc = slurm.run(["srun", "--mpi=none", "-n", "2", sys.executable, str(script)], timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = ("LaunchError: srun started 2 tasks but each is an MPI world of 1: launch with srun --mpi=pmi2 "
                "(see docs/cluster.md)")
    assert proc.stdout.splitlines() == [expected] * 2


def test_workers_default_outside_and_inside_an_allocation(monkeypatch):
    # Outside Slurm (or inside a step) --workers is 2; in an allocation, its tasks less the driver's.
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    proc = run_cli("train", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr == ("drizzle-ml: error: the Slurm allocation has 1 task, none left for a worker beside the "
                           "driver: ask for WORKERS+1 tasks (sbatch -n 3) or give --workers\n")
    proc = run_cli("stream", "--source", "file:events.csv", "--classes", "0,1", "--quiet")
    assert proc.returncode == 2 and "the Slurm allocation has 1 task" in proc.stderr
    # An explicit --workers is taken as given (checked, and refused here before any process starts).
    proc = run_cli("train", "--workers", "0")
    assert proc.stderr == "drizzle-ml: error: --workers must be at least 1, got 0\n"



def test_mpiexec_in_a_step_overlaps_it_only_with_slurms_launcher():
    from drizzle_ml.worker_job import hydra_environment

    step = {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}
    assert hydra_environment(dict(step))["HYDRA_LAUNCHER_EXTRA_ARGS"] == "--overlap"
    mine = dict(step, HYDRA_LAUNCHER_EXTRA_ARGS="--cpu-bind=none")
    assert hydra_environment(mine)["HYDRA_LAUNCHER_EXTRA_ARGS"] == "--cpu-bind=none --overlap"
    # Not in a step (a batch script), or another launcher: nothing added; ssh would not know --overlap.
    for env, args in (({"SLURM_JOB_ID": "7"}, []), (dict(step, HYDRA_LAUNCHER="ssh"), []),
                      (dict(step), ["-launcher", "ssh"]), (dict(step), ["-bootstrap", "rsh"])):
        assert "HYDRA_LAUNCHER_EXTRA_ARGS" not in hydra_environment(env, args)


GD = ["--solver", "gd", "--learning-rate", "0.5", "--tol", "0", "--group-size", "10"]


@needs_slurm
def test_requeued_job_resumes_from_its_checkpoints_and_saves_the_uninterrupted_model(slurm, tmp_path):
    import time

    assert run_cli("datasets", "make", "classification", "--rows", "10000", "--features", "10",
                   "-o", str(tmp_path / "data.h5")).returncode == 0
    env = dict(harness.outside_slurm(), OMP_NUM_THREADS="1")
    proc = subprocess.run([find_mpiexec(), "-n", "3", *PYTHON, *TRAIN, "--data", str(tmp_path / "data.h5"), *GD,
                           "--max-iter", "600", "-o", str(tmp_path / "uninterrupted.h5")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The first run trains 200 iterations and then waits to be requeued, so that the requeue cannot
    # come too late on a fast machine; the rerun asks for all 600 (max_iter is not part of a
    # checkpoint's identity), from the checkpoints of the first run.
    script = tmp_path / "train.sbatch"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --ntasks=3
        #SBATCH --requeue
        #SBATCH --open-mode=append
        echo "restart ${{SLURM_RESTART_COUNT:-0}}"
        export OMP_NUM_THREADS=1
        iterations=$([ -z "$SLURM_RESTART_COUNT" ] && echo 200 || echo 600)
        {sys.executable} -m drizzle_ml train --quiet --data data.h5 {' '.join(GD)} --max-iter $iterations \\
            --checkpoint-dir ckpt --resume -o model.h5
        [ -n "$SLURM_RESTART_COUNT" ] || {{ echo "waiting to be requeued"; sleep 300; }}
    """))
    out = tmp_path / "job.out"
    job = slurm.submit(script, "-o", str(out), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not out.exists() or "waiting to be requeued" not in out.read_text():
        assert time.monotonic() < deadline and slurm.job(job).get("JobState") in ("PENDING", "RUNNING"), \
            slurm.job(job)
        time.sleep(0.1)
    requeue = slurm.run(["scontrol", "requeue", str(job)], timeout=30)
    assert requeue.returncode == 0, requeue.stderr
    fields = slurm.wait_job(job)
    output = out.read_text()
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", output
    assert [ln for ln in output.splitlines() if ln.startswith("restart")] == ["restart 0", "restart 1"]
    assert "drizzle-ml: resumed from the checkpoint at iteration 200 in ckpt" in output
    assert_same_arrays(saved_arrays(tmp_path / "model.h5"), saved_arrays(tmp_path / "uninterrupted.h5"))


def test_a_worker_job_that_never_connects_is_an_error_not_a_hang(tmp_path):
    # Found under Slurm (a worker job across two nodes failing in MPI_Init), but not Slurm's: the
    # driver ended its pending Accept by connecting to itself, which waited forever for MPICH's lock.
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nsleep 60\n")
    sleeper.chmod(0o755)
    script = textwrap.dedent("""
        import os, sys
        import drizzle_ml
        for launcher, wait in (("/bin/false", 20), (sys.argv[1], 2)):  # exits at once; never connects
            os.environ["DRIZZLE_MPIEXEC"] = launcher
            try:
                drizzle_ml.Cluster(2, start_timeout=wait)
            except drizzle_ml.WorkerFailedError as exc:
                print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(sleeper)], capture_output=True, text=True, timeout=60,
                          env=harness.outside_slurm())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["the worker job exited before it connected (worker job exit code 1)",
                                        "the worker job did not connect within 2 s (worker job exit code -15)"]
