"""Straggler detection and rebalancing: the rules without MPI, then real launched clusters
with one worker slowed by ``DRIZZLE_INJECT_DELAY``."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import drizzle_ml
from drizzle_ml import ArrayDataset, Cluster, StragglerWarning
from drizzle_ml.adaptivity import MIN_EXCESS, StragglerDetector, inject_delay, plan_rebalance
from drizzle_ml.executor import stack_rows, take_rows
from drizzle_ml.program import Partition
from drizzle_ml.testing import LeastSquaresGD

RNG = np.random.default_rng(3)
X = RNG.standard_normal((3000, 7))
Y = X @ RNG.standard_normal(7) + 0.1 * RNG.standard_normal(3000)


def reference_gd(iterations: int, rows: int = len(Y), lr: float = 0.1) -> np.ndarray:
    Xs, Ys = X[:rows], Y[:rows]
    coef = np.zeros(7)
    for _ in range(iterations):
        coef = coef - lr * (Xs.T @ (Xs @ coef - Ys)) / rows
    return coef


# -- rules ------------------------------------------------------------------------------------
def test_detector_needs_consecutive_groups_factor_and_real_excess():
    det = StragglerDetector(factor=1.5, groups=3)
    slow = [0.010, 0.030, 0.011]
    assert [det.observe(slow)[0] for _ in range(3)] == [None, None, 1]
    assert det.observe([0.010, 0.011, 0.010])[0] is None  # back to normal: the streak restarts
    assert [det.observe(slow)[0] for _ in range(3)] == [None, None, 1]
    det.observe([0.030, 0.010, 0.010])  # another worker slowest: the streak restarts
    assert det.observe(slow)[0] is None
    tiny = StragglerDetector(factor=1.5, groups=1)  # a large ratio of microseconds is noise
    assert tiny.observe([1e-5, 1e-5 + MIN_EXCESS / 2])[0] is None
    assert tiny.observe([0.01, 0.02])[0] == 1 and tiny.observe([0.02])[0] is None
    with pytest.raises(ValueError, match="straggler_factor"):
        StragglerDetector(factor=1.0)
    with pytest.raises(ValueError, match="straggler_groups"):
        StragglerDetector(groups=0)


def test_plan_moves_excess_rows_to_neighbours_within_limits():
    # worker 1 is 3x slower per row: its balanced share is a fifth of the rows, capped at half its own
    assert plan_rebalance([100, 100, 100], [1.0, 3.0, 1.0], 1) == [(1, 0, 25), (1, 2, 25)]
    assert plan_rebalance([100, 100], [1.0, 1.2], 1) == [(1, 0, 9)]
    # never below a quarter of a balanced share (rows slow for other reasons than their number)
    assert plan_rebalance([150, 50], [1.0, 100.0], 1) == [(1, 0, 25)]
    assert plan_rebalance([175, 25], [1.0, 100.0], 1) == []


@pytest.mark.parametrize("sparse", [False, True])
def test_row_pieces_keep_order(sparse):
    data = sp.csr_matrix(X[:10]) if sparse else X[:10]
    part = Partition(data, Y[:10], np.arange(10.0))
    pieces = [take_rows(part, 0, 3), take_rows(part, 3, 10)]
    Xs, ys, ws = stack_rows(pieces)
    dense = Xs.toarray() if sparse else Xs
    np.testing.assert_array_equal(dense, X[:10])
    np.testing.assert_array_equal(ys, Y[:10])
    np.testing.assert_array_equal(ws, np.arange(10.0))
    assert stack_rows([(X[:2], None, None), (X[2:4], None, None)])[1] is None


def test_inject_delay_parsing():
    program = LeastSquaresGD()
    assert inject_delay(program, 1, "") is program
    assert inject_delay(program, 0, "worker=1,seconds=0.01") is program
    slowed = inject_delay(program, 1, "worker=1, seconds=0.01, after_iteration=5")
    assert slowed.seconds == 0.01 and slowed.after == 5 and slowed.learning_rate == program.learning_rate
    with pytest.raises(ValueError, match="DRIZZLE_INJECT_DELAY"):
        inject_delay(program, 1, "worker=one")


# -- real clusters -----------------------------------------------------------------------------
@pytest.fixture
def slow_worker_1(monkeypatch):
    """Worker 1 of clusters started from here on sleeps 4 ms per iteration after ``after`` iterations."""

    def start(after: int) -> None:
        monkeypatch.setenv("DRIZZLE_INJECT_DELAY", f"worker=1,seconds=0.004,after_iteration={after}")
        _close_default()

    yield start
    monkeypatch.delenv("DRIZZLE_INJECT_DELAY", raising=False)
    _close_default()  # later tests must not inherit the slowed workers


def _close_default():
    from drizzle_ml import cluster as C

    if C._default is not None:
        C._default.close()


def test_injected_straggler_is_reported_the_tuner_shrinks_and_the_model_is_exact(slow_worker_1):
    from drizzle_ml.job_state import JobState

    # From a large group (as a checkpoint of a faster run would restore it), 4 ms iterations
    # make the coordination share small: the tuner shrinks every group, additively.
    slow_worker_1(after=0)
    state = JobState({"coef": np.zeros(7)}, tuner={"size": 40})
    with Cluster(2, timeout=60) as cluster:
        with pytest.warns(StragglerWarning, match="worker 1 on host .* is a straggler") as caught:
            result = cluster.run(LeastSquaresGD(0.1), {"coef": np.zeros(7)}, ArrayDataset(X[:200], Y[:200]),
                                 max_iter=400, state=state, straggler_groups=2)
    warning = next(w.message for w in caught if isinstance(w.message, StragglerWarning))
    assert warning.worker == 1 and warning.host
    history = result.history
    flagged = [g for g in history if g.straggler is not None]
    assert flagged and {g.straggler for g in flagged} == {1} and flagged[0].group <= 3
    trace = [(g.start_iteration, g.group_size, g.tuner) for g in history]
    assert {g.tuner for g in history[:6]} <= {"shrink", "probe"}, trace  # down, one step at a time
    sizes = [g.group_size for g in history]
    assert all(0 <= a - b <= 1 for a, b in zip(sizes[:6], sizes[1:7])), trace
    assert sizes[-1] < 38, trace
    assert all(g.rows == [100, 100] for g in history)  # reported only, no rows moved
    np.testing.assert_allclose(result.model["coef"], reference_gd(400, 200), rtol=1e-10, atol=1e-12)


def test_rebalance_moves_rows_and_keeps_the_model_correct(slow_worker_1):
    slow_worker_1(after=0)
    with Cluster(2, timeout=60) as cluster:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StragglerWarning)
            result = cluster.run(LeastSquaresGD(0.1), {"coef": np.zeros(7)}, ArrayDataset(X, Y),
                                 max_iter=150, group_size=5, rebalance=True, straggler_groups=2)
    rows = [tuple(g.rows) for g in result.history]
    assert rows[0] == (1500, 1500) and all(sum(r) == 3000 for r in rows)
    assert rows[-1][1] < 1500 and rows[-1][1] >= 3000 // 8  # moved off, down to the floor at most
    assert any("rebalance:" in e for g in result.history for e in g.events)
    # The same sums in another split: equal to rounding.
    np.testing.assert_allclose(result.model["coef"], reference_gd(150), rtol=1e-9, atol=1e-12)


def test_estimator_with_rebalance_matches_scikit_learn(slow_worker_1):
    from sklearn.linear_model import LogisticRegression as SkLogistic

    slow_worker_1(after=0)
    yb = (Y > 0).astype(int)
    est = drizzle_ml.LogisticRegression(tol=1e-9, max_iter=200, n_workers=2, rebalance=True,
                                        tuner={"straggler_groups": 1, "max_group": 4})
    with pytest.warns(StragglerWarning):
        est.fit(X, yb)
    sizes = [g["rows"] for g in est.history_]
    assert sizes[0] == [1500, 1500] and sizes[-1][1] < 1500
    sk = SkLogistic(tol=1e-10, max_iter=1000).fit(X, yb)
    np.testing.assert_allclose(est.coef_, sk.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.intercept_, sk.intercept_, rtol=1e-5, atol=1e-6)


def test_estimator_tuner_parameter_is_checked():
    for bad, match in [({"upper": 2.0}, "lower <= upper"), ({"straggler_factor": 1.0}, "straggler_factor"),
                       ({"bogus": 1}, "unknown tuner option"),
                       ("fast", r"The 'tuner' parameter of LinearRegression must be None or an instance of 'dict'\. "
                                r"Got 'fast' instead\.")]:
        with pytest.raises(ValueError, match=match):
            drizzle_ml.LinearRegression(tuner=bad, n_workers=1).fit(X[:20], Y[:20])
    with pytest.raises(ValueError, match="rebalance"):
        drizzle_ml.LinearRegression(rebalance="yes", n_workers=1).fit(X[:20], Y[:20])
