"""What ``drizzle-ml train`` shows: a progress line (or bar) per group, and the final report."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np


class Progress:
    """Per-group progress on stderr: a line per group, or one bar redrawn in place on a terminal.

    Each update shows the iteration, the loss, the group size, iterations per
    second and the coordination share of the group's time.
    """

    def __init__(self, max_iter: int | None, quiet: bool = False, stream: TextIO | None = None):
        self.max_iter, self.quiet = max_iter, quiet
        self.stream = stream or sys.stderr
        # Under mpiexec our stderr is a pipe even on a terminal; the launcher says whether it was one.
        self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty()) or (
            stream is None and os.environ.get("DRIZZLE_TTY") == "1")
        self.t0 = time.perf_counter()
        self.trace: list[dict[str, float]] = []  # time, iteration, loss, group size
        self._drawn = False

    def on_group(self, g: Any) -> None:
        iteration = g.start_iteration + g.n_iterations
        loss = g.metrics.get("loss")
        self.trace.append({"time": time.perf_counter() - self.t0, "iteration": iteration,
                           "loss": float("nan") if loss is None else float(loss), "group_size": g.group_size})
        if self.quiet:
            return
        rate = g.n_iterations / g.wall if g.wall > 0 else float("inf")
        share = 100 * g.coordination / g.wall if g.wall > 0 else 0.0
        loss_text = f"loss {loss:.6g}  " if loss is not None else ""
        line = (f"iter {iteration:>6}  {loss_text}group {g.group_size:>4}  {rate:,.0f} it/s  "
                f"coordination {share:4.1f}%{g.notes()}")
        if self.tty and self.max_iter:
            done = min(iteration / self.max_iter, 1.0)
            bar = "#" * int(30 * done) + "-" * (30 - int(30 * done))
            self.stream.write(f"\r[{bar}] {line}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


@dataclass
class TrainingReport:
    """The end-of-training figures; ``--report`` writes them as JSON."""

    algorithm: str
    data: str
    workers: int
    group_size: Any
    scheduling: str
    iterations: int
    groups: int
    model_version: int
    converged: bool
    # Why it did not converge, when the fit said (the L-BFGS/GD line search found no lower loss):
    stopped_because: str | None
    final_loss: float | None
    wall_seconds: float
    time_split: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    model_path: str | None = None

    @classmethod
    def build(cls, args: Any, estimator: Any, data: str, workers: int, startup: float, fit_wall: float,
              converged: bool, stopped_because: str | None = None) -> TrainingReport:
        history = list(estimator.history_)
        # The parts add up to the wall time: each group's wall is its coordination
        # plus the slowest worker's compute plus the rest (tree reduce, broadcast,
        # update, waiting on peers); load is everything outside the groups
        # (cluster start, partitions read, job set-up, driver-side checks).
        coordination = sum(g["coordination"] for g in history)
        compute = sum(min(g["compute"], max(g["wall"] - g["coordination"], 0.0)) for g in history)
        in_groups = sum(g["wall"] for g in history)
        split = {
            "load": startup + max(fit_wall - in_groups, 0.0),
            "compute": compute,
            "reduce": max(in_groups - compute - coordination, 0.0),
            "coordination": coordination,
        }
        loss = history[-1]["metrics"].get("loss") if history else None
        return cls(
            algorithm=args.algorithm, data=data, workers=workers, group_size=args.group_size,
            scheduling=args.scheduling, iterations=int(estimator.n_iter_), groups=len(history),
            model_version=int(estimator.model_version_), converged=converged,
            stopped_because=None if converged else stopped_because,
            final_loss=None if loss is None else float(loss), wall_seconds=startup + fit_wall,
            time_split=split, history=history,
        )

    def add_score(self, estimator: Any, X: Any, y: Any) -> None:
        """Training figures that need the data: read in chunks from a file, never all at once."""
        if hasattr(estimator, "inertia_"):
            self.metrics["inertia"] = float(estimator.inertia_)
        if hasattr(estimator, "explained_variance_ratio_"):
            self.metrics["explained_variance_ratio"] = float(np.sum(estimator.explained_variance_ratio_))
        if not hasattr(estimator, "coef_"):
            return
        name = "accuracy" if hasattr(estimator, "classes_") else "r2"
        if y is not None:
            self.metrics[f"training_{name}"] = float(estimator.score(X, y))
            return
        from .data_files import iter_rows

        if name == "accuracy":
            right = count = 0
            for Xc, yc in iter_rows(X, with_targets=True):
                right += int(np.sum(estimator.predict(Xc) == yc))
                count += len(yc)
            self.metrics["training_accuracy"] = right / max(count, 1)
        else:
            ss_res, y_sum, y_sq, count = 0.0, 0.0, 0.0, 0  # per target: a 2-D y has several
            for Xc, yc in iter_rows(X, with_targets=True):
                yc = yc.astype(np.float64)
                ss_res = ss_res + np.sum((estimator.predict(Xc) - yc) ** 2, axis=0)
                y_sum, y_sq, count = y_sum + np.sum(yc, axis=0), y_sq + np.sum(yc * yc, axis=0), count + len(yc)
            ss_tot = y_sq - y_sum * y_sum / max(count, 1)
            r2 = 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan)  # as scikit-learn's score: the targets' mean
            self.metrics["training_r2"] = float(np.mean(r2))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        ran = sum(g["n_iterations"] for g in self.history)  # a resumed fit ran only those after its checkpoint
        resumed = f" (resumed at {self.iterations - ran})" if ran < self.iterations else ""
        it_s = ran / self.wall_seconds if self.wall_seconds > 0 else float("inf")
        lines = [
            f"done: {self.iterations} iterations{resumed} in {self.groups} groups, {self.wall_seconds:.3f} s "
            f"({it_s:,.0f} it/s), model version {self.model_version}"
            + ("" if self.converged else f" (did not converge: {self.stopped_because})" if self.stopped_because
               else " (did not converge: raise --max-iter or --tol)"),
        ]
        figures = ([f"loss {self.final_loss:.6g}"] if self.final_loss is not None else []) + [
            f"{k.replace('_', ' ')} {v:.4f}" for k, v in self.metrics.items()
        ]
        if figures:
            lines.append("  " + ", ".join(figures))
        split = self.time_split
        total = sum(split.values()) or 1.0
        lines.append("  time: " + ", ".join(f"{k} {v:.3f} s ({100 * v / total:.0f}%)" for k, v in split.items()))
        if self.model_path:
            lines.append(f"  model saved to {self.model_path}")
        return "\n".join(lines)

    def write_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.as_dict(), f, indent=2, default=float)

    def plot(self, path: str) -> None:
        """Loss and group size against time, one above the other, to a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        elapsed = np.cumsum([g["wall"] for g in self.history])
        loss = [g["metrics"].get("loss", np.nan) for g in self.history]
        sizes = [g["group_size"] for g in self.history]
        fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 5))
        top.plot(elapsed, loss, marker=".")
        top.set_ylabel("loss")
        top.set_title(f"{self.algorithm} on {self.data}, {self.workers} workers")
        bottom.step(elapsed, sizes, where="post")
        bottom.set_ylabel("group size")
        bottom.set_xlabel("time in groups (s)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
