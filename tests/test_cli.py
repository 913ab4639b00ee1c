"""The drizzle-ml command: it builds and supervises mpiexec itself."""

import json
import subprocess
import sys


def drizzle(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "drizzle_ml", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_train_runs_the_bundled_dataset_with_one_worker():
    proc = drizzle("train", "--workers", "1", "--solver", "gd", "--learning-rate", "0.5", "--max-iter", "30",
                   "--group-size", "10", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "with 1 workers" in proc.stdout
    assert "done: 30 iterations in 3 groups" in proc.stdout
    assert "training accuracy 0.9" in proc.stdout
    assert "iter " not in proc.stderr  # --quiet: no progress lines


def test_train_progress_lines_and_bsp():
    proc = drizzle("train", "--workers", "2", "--solver", "gd", "--max-iter", "20", "--scheduling", "bsp")
    assert proc.returncode == 0, proc.stderr
    assert "with 2 workers" in proc.stdout and "scheduling bsp" in proc.stdout
    assert proc.stderr.count("iter ") == 20  # one progress line per (one-iteration) group


def test_cli_errors_are_one_line():
    proc = drizzle("train", "--workers", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "drizzle-ml: error: --workers must be at least 1, got 0"
    proc = drizzle("train", "--learning-rate", "0.1")
    assert proc.returncode == 2 and "--learning-rate is the step of --solver gd" in proc.stderr
    proc = drizzle("train", "--group-size", "zero")
    assert proc.returncode == 2 and "must be 'auto' or a positive integer" in proc.stderr


def test_bench_coordination_prints_ratios(tmp_path):
    out = tmp_path / "bench.json"
    proc = drizzle("bench", "coordination", "--rows", "50", "--features", "3", "--iterations", "40", "--repeats", "2",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "plain mpi4py Allreduce loop (limit)" in proc.stdout
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
