"""``drizzle-ml bench report`` in its smallest mode: sections present, PNGs valid."""

import importlib.util
import io
import os
import re

import pytest

from drizzle_ml.launch import bench_report
from drizzle_ml.launch.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the report needs matplotlib ([plot])")
def test_smoke_report_has_every_section_and_valid_pngs(tmp_path):
    import matplotlib.image

    path = bench_report.make_report(str(tmp_path), "smoke")
    text = open(path).read()
    for heading in ("## Coordination: per-iteration time vs group size", "## Tuner: group size over time",
                    "## Estimators: loss against time", "## Recovery", "## Streaming"):
        assert heading in text
    assert "| bsp |" in text and "| hand-written mpi4py loop |" in text
    assert "| CPU stolen by the host |" in text
    assert "straggler reported: worker 1 on host" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert {"coordination_group_size.png", "tuner_straggler.png"} <= set(images) and len(images) >= 5
    for name in images:
        with open(os.path.join(tmp_path, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC, name
        assert matplotlib.image.imread(os.path.join(tmp_path, name)).shape[0] > 100


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli_main(["bench", "report", "-o", str(tmp_path)]) == 2
    assert "pip install 'drizzle-ml[plot]'" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_a_failing_section_is_reported_and_the_others_kept(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    for name in ("coordination_section", "estimators_section", "recovery_section", "streaming_section"):
        monkeypatch.setattr(bench_report, name, lambda *a, name=name: f"## {name}\n\nfine\n")

    def tuner_fails(*a):
        raise ValueError("the tuner section broke")

    monkeypatch.setattr(bench_report, "tuner_section", tuner_fails)
    with pytest.raises(bench_report.ReportError, match="these benchmarks failed: tuner and stragglers"):
        bench_report.make_report(str(tmp_path), "smoke", log=io.StringIO())
    text = (tmp_path / "report.md").read_text()
    assert "ValueError: the tuner section broke" in text and "## streaming_section" in text


def test_bench_commands_past_their_timeout_are_stopped_with_their_children():
    from drizzle_ml.launch.bench_coordination import run_bounded

    from .conftest import worker_processes

    with pytest.raises(RuntimeError, match="did not finish within 0.5 s; stopped"):
        run_bounded(["sh", "-c", "sleep 31.4159 & sleep 31.4159; wait"], dict(os.environ), timeout=0.5)
    assert worker_processes("sleep 31.4159") == []


def test_streaming_bench_reads_the_cpu_time_stolen_by_the_host(tmp_path):
    from drizzle_ml.launch.bench_streaming import cpu_times, steal_share

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3\n")
    before = cpu_times(str(stat))
    assert before == (35.0, 1000.0)
    stat.write_text("cpu  200 0 60 1500 10 0 5 225 7 0\n")
    assert steal_share(before, cpu_times(str(stat))) == pytest.approx(190 / 1000)
    stat.write_text("intr 5\n")
    assert cpu_times(str(stat)) is None and cpu_times(str(tmp_path / "missing")) is None
    assert steal_share(before, None) != steal_share(before, None)  # NaN: unknown, shown as n/a


def test_streaming_bench_shows_the_quietest_of_repeated_latency_runs():
    from drizzle_ml.launch.bench_streaming import quietest, runs_lines, table

    noisy = {"latency_p50": 0.006, "latency_p99": 0.048, "steal": 0.21, "rate": 9e4}
    quiet = {"latency_p50": 0.003, "latency_p99": 0.0062, "steal": 0.005, "rate": 9e4}
    unknown = {"latency_p50": 0.001, "latency_p99": 0.001, "steal": float("nan"), "rate": 9e4}
    assert quietest([noisy, quiet, unknown]) is quiet
    assert quietest([unknown, noisy]) is noisy  # an unknown share counts as the most
    # Equally quiet runs (within a percentage point): the median p99, not the first (a session's first
    # run often has a tail of its own); of two, the higher.
    pairs = ((0.0098, 0.0), (0.0034, 0.004), (0.0042, 0.0))  # (p99, stolen share)
    tails = [dict(quiet, latency_p99=p99, steal=steal) for p99, steal in pairs]
    assert quietest(tails + [noisy])["latency_p99"] == 0.0042
    assert quietest(tails[1:])["latency_p99"] == 0.0042
    runs = {"rate": 1e5, "latency_runs": {"10": [noisy, quiet], "auto": [unknown]},
            "latency": {"10": quiet, "auto": unknown}, "h5": quiet, "csv": quiet}
    assert runs_lines(runs) == ["- group size 10, p99 of each run: 48.0 ms (21% stolen), 6.2 ms (0% stolen)"]
    assert "| file at 100,000 rec/s, group size 10 | 90,000 | 3.0 ms | 6.2 ms | 0% |" in table(runs)
    assert "| file at 100,000 rec/s, group size auto | 90,000 | 1.0 ms | 1.0 ms | n/a |" in table(runs)


def test_streaming_bench_rejects_a_repeat_below_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "streaming", "--repeat", "0"])
    assert exit_info.value.code == 2
    assert "argument --repeat: must be a positive integer, got '0'" in capsys.readouterr().err
