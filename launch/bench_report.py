"""``drizzle-ml bench report -o DIR``: the project's benchmarks in one run, as DIR/report.md with PNG plots.

Sections, each measured side by side in this one run (read the ratios, not
the absolute times):

1. **Coordination**: per-iteration time against the group size, with the
   ``bsp`` baseline and the plain mpi4py ``Allreduce`` loop as references
   (``drizzle-ml bench coordination``; the Drizzle paper's group-size figure).
2. **Tuner and stragglers**: the ``"auto"`` group size over time in a job
   whose worker 1 is slowed half-way (``DRIZZLE_INJECT_DELAY``), with the
   straggler report.
3. **Estimators against scikit-learn**: loss against time per estimator, with
   scikit-learn's fit time and final loss as references; and, from a source
   checkout, ``bench/algorithms.py``'s table against plain mpi4py loops.
4. **Recovery**: ``drizzle-ml bench recovery``'s figures.
5. **Streaming**: ``drizzle_ml.launch.bench_streaming.report_section`` when
   it is installed.

``--quick`` (the default) picks sizes that finish in a few minutes on two
cores; ``--full`` larger ones; ``--smoke`` the smallest, for tests. Needs
matplotlib (``pip install 'drizzle-ml[plot]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .bench_coordination import run_bounded

# Sizes per mode: rows per worker and iterations (coordination); rows (estimators); recovery rows/iterations.
MODES = {
    "smoke": dict(coord_rows=200, coord_iters=100, group_sizes="1,10", est_rows=1000, straggler_iters=200,
                  recovery=None, algorithms=None),
    "quick": dict(coord_rows=2000, coord_iters=1000, group_sizes="1,2,5,10,20,50,100,200", est_rows=20000,
                  straggler_iters=1500, recovery=["--rows", "20000", "--features", "20", "--iterations", "400",
                                                  "--repeats", "1"],
                  algorithms=["--rows", "40000", "--features", "20", "--iterations", "20", "--repeats", "1"]),
    "full": dict(coord_rows=2000, coord_iters=2000, group_sizes="1,2,5,10,20,50,100,200,500", est_rows=200000,
                 straggler_iters=3000, recovery=["--repeats", "3"], algorithms=["--repeats", "3"]),
}
TIMEOUT = 1800


class ReportError(RuntimeError):
    """The report cannot be made (matplotlib missing, a benchmark failed)."""


def _pyplot():
    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError("the benchmark report draws plots with matplotlib: pip install 'drizzle-ml[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


def _bench_subprocess(cmd: list[str], json_path: str) -> tuple[str, dict]:
    """Run a benchmark command that prints a table and writes ``--json``; return both."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        out = run_bounded([*cmd, "--json", json_path], env, TIMEOUT)
    except RuntimeError as exc:
        raise ReportError(str(exc)) from None
    if out.returncode != 0:
        raise ReportError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    with open(json_path) as f:
        return out.stdout.strip(), json.load(f)


def _code(text: str) -> str:
    lines = [ln for ln in text.splitlines() if not ln.startswith("[mpiexec@")]
    return "```\n" + "\n".join(lines) + "\n```\n"


# -- 1. coordination ---------------------------------------------------------------------------
def coordination_section(out_dir: str, mode: dict, tmp: str) -> str:
    plt = _pyplot()
    cmd = [sys.executable, "-m", "drizzle_ml.launch.bench_coordination", "coordination",
           "--rows", str(mode["coord_rows"]), "--iterations", str(mode["coord_iters"]),
           "--group-sizes", mode["group_sizes"], "--repeats", "1"]
    text, data = _bench_subprocess(cmd, os.path.join(tmp, "coordination.json"))
    results = data["engine"]["results"]
    plain = data["hand"]["per_iter"]
    fixed = sorted((int(name.split("=")[1]), r["per_iter"]) for name, r in results.items()
                   if name.startswith("group=") and name != "group=auto")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([k for k, _ in fixed], [1e6 * t for _, t in fixed], marker="o", label="drizzle-ml, fixed group size")
    ax.axhline(1e6 * results["bsp"]["per_iter"], color="tab:red", ls="--", label="bsp (driver every iteration)")
    ax.axhline(1e6 * plain, color="tab:green", ls=":", label="hand-written mpi4py loop")
    auto = results["group=auto"]
    ax.axhline(1e6 * auto["per_iter"], color="tab:purple", ls="-.", lw=1,
               label=f"auto (largest group {auto['max_group_size']})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("group size (iterations per coordination round)")
    ax.set_ylabel("time per iteration (us)")
    ax.set_title("Per-iteration time vs group size, 2 workers")
    ax.legend(fontsize=8)
    png = _save(fig, out_dir, "coordination_group_size.png")
    rows = "\n".join(f"| {k} | {1e6 * t:.1f} | {t / plain:.2f} |" for k, t in fixed)
    return (
        "## Coordination: per-iteration time vs group size\n\n"
        f"![per-iteration time vs group size]({png})\n\n"
        "| group size | us/iteration | x hand loop |\n|---:|---:|---:|\n" + rows + "\n"
        f"| bsp | {1e6 * results['bsp']['per_iter']:.1f} | {results['bsp']['per_iter'] / plain:.2f} |\n"
        f"| auto | {1e6 * auto['per_iter']:.1f} | {auto['per_iter'] / plain:.2f} |\n"
        f"| hand-written mpi4py loop | {1e6 * plain:.1f} | 1.00 |\n\n"
        "`drizzle-ml bench coordination` output:\n\n" + _code(text)
    )


# -- 2. tuner with an injected straggler ---------------------------------------------------------
def tuner_section(out_dir: str, mode: dict) -> str:
    from drizzle_ml import ArrayDataset, Cluster, StragglerWarning
    from drizzle_ml.testing import LeastSquaresGD

    plt = _pyplot()
    iterations = mode["straggler_iters"]
    after = iterations // 3
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 10))
    y = X @ rng.standard_normal(10)
    spec = f"worker=1,seconds=0.002,after_iteration={after}"
    old = os.environ.get("DRIZZLE_INJECT_DELAY")
    os.environ["DRIZZLE_INJECT_DELAY"] = spec  # only the cluster started here inherits it
    try:
        with Cluster(2, timeout=120) as cluster, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StragglerWarning)
            result = cluster.run(LeastSquaresGD(0.05), {"coef": np.zeros(10)}, ArrayDataset(X, y),
                                 max_iter=iterations)
    finally:
        if old is None:
            del os.environ["DRIZZLE_INJECT_DELAY"]
        else:
            os.environ["DRIZZLE_INJECT_DELAY"] = old
    history = result.history
    ends = np.cumsum([g.wall for g in history])
    starts = ends - [g.wall for g in history]
    slow_from = next((s for s, g in zip(starts, history) if g.start_iteration + g.group_size > after), None)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
    top.step(starts, [g.group_size for g in history], where="post")
    top.set_ylabel("group size")
    top.set_yscale("log")
    top.set_title("auto group size with worker 1 slowed (2 ms per iteration)")
    bottom.plot(ends, [100 * g.coordination / g.wall if g.wall > 0 else 0 for g in history], ".", ms=3)
    bottom.axhspan(5, 10, color="tab:green", alpha=0.15, label="target band 5-10 %")
    bottom.set_ylabel("coordination %")
    bottom.set_xlabel("time in groups (s)")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        if slow_from is not None:
            ax.axvline(slow_from, color="tab:red", ls="--")
    png = _save(fig, out_dir, "tuner_straggler.png")
    warned = [str(w.message) for w in caught if issubclass(w.category, StragglerWarning)]
    before = [g.group_size for g in history if g.start_iteration + g.group_size <= after]
    later = [g.group_size for g in history if g.start_iteration > after]
    decisions: dict[str, int] = {}
    for g in history:
        decisions[g.tuner] = decisions.get(g.tuner, 0) + 1
    return (
        "## Tuner: group size over time with an injected straggler\n\n"
        f"![group size over time]({png})\n\n"
        f"Least squares by gradient descent, 400 rows x 10 features, 2 workers, {iterations} iterations; "
        f"`DRIZZLE_INJECT_DELAY={spec}` (red line: the delay starts).\n\n"
        f"- group size before the delay: median {np.median(before) if before else float('nan'):.0f}, "
        f"largest {max(before) if before else 0}; in the last 10 groups: {later[-10:]}\n"
        f"- tuner decisions: {', '.join(f'{k} {v}' for k, v in sorted(decisions.items()))}\n"
        f"- straggler reported: {warned[0] if warned else 'no'}\n"
    )


# -- 3. estimators against scikit-learn --------------------------------------------------------------
def _estimators(rows: int):
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression as SkLogistic
    from sklearn.linear_model import Ridge as SkRidge

    import drizzle_ml as dm

    X, y = make_classification(n_samples=rows, n_features=20, random_state=0)
    yr = X @ np.random.default_rng(1).standard_normal(20)

    def logistic_loss(coef, intercept):
        z = X @ coef.ravel() + intercept[0]
        return float(np.mean(np.logaddexp(0, z) - y * z) + (coef.ravel() @ coef.ravel()) / (2 * len(y)))

    return [
        ("LogisticRegression (lbfgs)", dm.LogisticRegression(max_iter=200, tol=1e-8, n_workers=2),
         SkLogistic(tol=1e-8, max_iter=1000), (X, y), lambda m: logistic_loss(m.coef_, m.intercept_)),
        ("Ridge (lbfgs)", dm.Ridge(alpha=1.0, solver="lbfgs", max_iter=200, tol=1e-8, n_workers=2),
         SkRidge(alpha=1.0), (X, yr), None),
        ("KMeans (k=8)", dm.KMeans(n_clusters=8, n_init=1, max_iter=100, random_state=0, n_workers=2),
         SkKMeans(n_clusters=8, n_init=1, max_iter=100, random_state=0), (X,), lambda m: float(m.inertia_)),
    ]


def estimators_section(out_dir: str, mode: dict) -> str:
    import drizzle_ml as dm

    plt = _pyplot()
    dm.get_cluster(2)  # started before the clock runs: fits are timed on a running cluster
    lines = ["## Estimators: loss against time, with scikit-learn\n"]
    table = ["| estimator | drizzle-ml fit (s) | scikit-learn fit (s) | ratio | final loss drizzle-ml "
             "| scikit-learn |", "|---|---:|---:|---:|---:|---:|"]
    for name, ours, theirs, data, sk_loss in _estimators(mode["est_rows"]):
        trace: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        ours.progress_callback = lambda g, t0=t0: trace.append((time.perf_counter() - t0,
                                                                g.metrics.get("loss", np.nan)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours.fit(*data)
            ours_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            theirs.fit(*data)
            theirs_s = time.perf_counter() - t1
        final_ours = trace[-1][1] if trace else float("nan")
        final_theirs = sk_loss(theirs) if sk_loss is not None else float("nan")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([t for t, _ in trace], [v for _, v in trace], marker=".", label="drizzle-ml (per group)")
        if np.isfinite(final_theirs):
            ax.axhline(final_theirs, color="tab:orange", ls="--", label="scikit-learn final loss")
        ax.axvline(theirs_s, color="tab:gray", ls=":", label=f"scikit-learn fit time {theirs_s:.2f} s")
        ax.set_xlabel("time since fit start (s)")
        ax.set_ylabel("loss")
        ax.set_title(name)
        ax.legend(fontsize=8)
        slug = name.split()[0].lower()
        png = _save(fig, out_dir, f"loss_{slug}.png")
        lines.append(f"![{name}]({png})\n")
        sk_text = f"{final_theirs:.6g}" if np.isfinite(final_theirs) else "(another scale)"
        table.append(f"| {name} | {ours_s:.3f} | {theirs_s:.3f} | {ours_s / theirs_s:.1f} | {final_ours:.6g} "
                     f"| {sk_text} |")
    lines.append(f"{mode['est_rows']} rows x 20 features (`make_classification`), 2 workers; drizzle-ml's "
                 "time includes its job start on a running cluster and the data's first load.\n")
    lines.append("\n".join(table) + "\n")
    script = Path(__file__).resolve().parents[1] / "bench" / "algorithms.py"
    if mode["algorithms"] is not None and script.exists():
        with tempfile.TemporaryDirectory() as tmp:
            text, _ = _bench_subprocess([sys.executable, str(script), *mode["algorithms"]],
                                        os.path.join(tmp, "algorithms.json"))
        lines.append("`bench/algorithms.py` (against scikit-learn and plain mpi4py loops):\n\n" + _code(text))
    elif mode["algorithms"] is not None:
        lines.append("`bench/algorithms.py` needs a source checkout; not run.\n")
    return "\n".join(lines)


# -- 4. recovery, 5. streaming -----------------------------------------------------------------------
def recovery_section(mode: dict, tmp: str) -> str:
    if mode["recovery"] is None:
        return "## Recovery\n\nNot run in this mode (`--smoke`); run `drizzle-ml bench report --quick`.\n"
    text, _ = _bench_subprocess([sys.executable, "-m", "drizzle_ml.launch.cli", "bench", "recovery",
                                 *mode["recovery"]], os.path.join(tmp, "recovery.json"))
    return "## Recovery\n\n`drizzle-ml bench recovery`:\n\n" + _code(text)


def streaming_section(out_dir: str, size: str) -> str:
    from .bench_streaming import report_section

    return report_section(out_dir, size)


def make_report(out_dir: str, mode_name: str = "quick", log: Any = None) -> str:
    """Run the benchmarks and write ``out_dir/report.md`` and its PNGs; return the report's path.

    A benchmark that fails gets its error in its section; the report is still
    written, then :class:`ReportError` says which failed.
    """
    if mode_name not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode_name!r}")
    _pyplot()  # fail before running anything
    mode = MODES[mode_name]
    os.makedirs(out_dir, exist_ok=True)
    log = log or sys.stderr
    t0 = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory() as tmp:
        steps = [("coordination", lambda: coordination_section(out_dir, mode, tmp)),
                 ("tuner and stragglers", lambda: tuner_section(out_dir, mode)),
                 ("estimators", lambda: estimators_section(out_dir, mode)),
                 ("recovery", lambda: recovery_section(mode, tmp)),
                 ("streaming", lambda: streaming_section(out_dir, mode_name))]
        failed = []
        for name, step in steps:
            print(f"bench report: {name} ...", file=log, flush=True)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    sections.append(step())
            except Exception as exc:  # one failed benchmark must not lose the others' figures
                failed.append(name)
                why = str(exc) if isinstance(exc, ReportError) else f"{type(exc).__name__}: {exc}"
                print(f"bench report: {name} failed: {why}", file=log, flush=True)
                sections.append(f"## {name.capitalize()}\n\nThis benchmark failed:\n\n" + _code(why))
    head = (f"# drizzle-ml benchmark report\n\nGenerated by `drizzle-ml bench report --{mode_name}` in "
            f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores "
            f"({time.strftime('%Y-%m-%d %H:%M')}). Every figure is measured side by side in this one run; "
            "read the ratios, not the absolute times.\n")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join([head, *sections]))
    if failed:
        raise ReportError(f"{path} written, but these benchmarks failed: {', '.join(failed)}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="directory for report.md and its PNGs")
    size = parser.add_mutually_exclusive_group()
    for name in MODES:
        size.add_argument(f"--{name}", dest="mode", action="store_const", const=name,
                          help={"smoke": "smallest sizes (tests)", "quick": "a few minutes on 2 cores (default)",
                                "full": "the benchmarks' own default sizes"}[name])
    parser.set_defaults(mode="quick")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="drizzle-ml bench report", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The report, with parsed options."""
    try:
        path = make_report(args.output, args.mode)
    except ReportError as exc:
        print(f"drizzle-ml: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
