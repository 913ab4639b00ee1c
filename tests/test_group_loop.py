"""The group loop's decisions, apart from MPI: what to send next, how to wait, when a job ends, what a group cost."""

from __future__ import annotations

import pytest

from drizzle_ml import protocol as P
from drizzle_ml.errors import ReplicaMismatchError
from drizzle_ml.group_loop import GroupPlan, SentGroup, Wait, check_replicas, group_metrics, last_metrics


def send(plan: GroupPlan, size: int, at: float = 0.0) -> SentGroup:
    start, size, version = plan.next_group(size)
    group = SentGroup(start, size, version, at, 1e-5)
    plan.sent(group)
    return group


def report(worker: int, start: int, n_done: int, version: int, **timings) -> P.GroupReport:
    return P.GroupReport(job=1, start=start, worker=worker, n_done=n_done, version=version, stopped=False,
                         timings=P.GroupTimings(**timings), metrics={"loss": [3.0, 2.0], "oldest": [1.0]},
                         digest=None)


def test_groups_cover_the_iterations_in_order_and_send_ahead():
    plan = GroupPlan(100, 7, 25, pipeline=True)
    first = send(plan, 10)
    assert (first.start, first.size, first.version) == (100, 10, 7)
    assert plan.more_to_send()  # one more group goes ahead
    second = send(plan, 10)
    assert (second.start, second.version) == (110, 17)
    assert not plan.more_to_send()  # two in flight: the pipeline is full
    plan.in_flight.popleft()
    assert plan.more_to_send() and not plan.more_to_send(stopping=True)
    third = send(plan, 10)
    assert (third.start, third.size, plan.remaining) == (120, 5, 0)  # cut at max_iter
    assert not plan.more_to_send()


def test_without_pipeline_one_group_at_a_time():
    plan = GroupPlan(0, 0, 100, pipeline=False)
    send(plan, 8)
    assert not plan.more_to_send()
    plan.in_flight.popleft()
    assert plan.more_to_send()


def test_when_the_job_ends():
    plan = GroupPlan(0, 0, 20)
    a, b = send(plan, 10), send(plan, 10)
    plan.in_flight.popleft()
    assert not plan.is_last(a, 10, converged=False, stopping=False)
    assert plan.is_last(a, 4, converged=True, stopping=False)  # converged within the group
    assert not plan.is_last(a, 10, converged=False, stopping=True)  # b is still in flight
    plan.in_flight.popleft()
    assert plan.is_last(b, 10, converged=False, stopping=False)  # the last iteration
    assert plan.reached_end(b, 10, False) and not plan.reached_end(a, 10, False)


def test_waits_sleep_through_most_of_an_expected_group():
    plan = GroupPlan(0, 0, 1000, max_sleep=1e-3, now=0.0)
    group = send(plan, 100, at=0.0)
    first = plan.wait(group, now=0.0)
    assert first == Wait(began=0.0, first_sleep=0.0, extra=0.0, max_sleep=None)  # nothing measured yet
    late = GroupPlan(0, 0, 1000, now=2.0)
    assert late.wait(send(late, 100, at=2.5), now=2.5).began == 2.0  # the first group: from the job's start
    done = group_metrics(0, group, [report(0, 0, 100, 100, execution=0.05, compute=0.04)], first, 0.0, 0.06,
                         0.001, {})
    plan.measured(done, done_at=0.06)
    assert plan.per_iteration == pytest.approx(5e-4)
    nxt = send(plan, 100, at=0.01)
    wait = plan.wait(nxt, now=0.07)
    # It began when the previous group ended (0.06); 50 ms expected, 10 ms gone.
    assert wait.began == 0.06 and wait.first_sleep == pytest.approx(0.8 * 0.04)
    assert wait.extra == pytest.approx(0.2) and wait.max_sleep == pytest.approx(0.0025)
    assert plan.wait(nxt, now=0.2).first_sleep == 0.0  # overdue: no sleep
    urgent = GroupPlan(0, 0, 10, urgent=True)
    assert urgent.wait(send(urgent, 5), now=0.0).max_sleep == 1e-3  # versions are due while it runs
    # Reports ring the driver's doorbell: no timed sleep, looks at most every 2 expected groups (<= 20 ms).
    assert plan.wait(nxt, now=0.07, bell=True) == Wait(0.06, 0.0, pytest.approx(0.2), 0.02, bell=True)
    plan.per_iteration = 2e-5
    assert plan.wait(nxt, now=0.07, bell=True).max_sleep == pytest.approx(4e-3)
    assert urgent.wait(urgent.in_flight[0], now=0.0, bell=True).bell is False


def test_a_group_sent_while_the_workers_are_busy_needs_no_ring():
    plan = GroupPlan(0, 0, 1000, now=0.0)
    assert not plan.workers_busy(0.0)  # nothing in flight: the workers may be asleep
    first = send(plan, 100, at=0.0)
    assert not plan.workers_busy(0.0)  # no pace measured yet
    done = group_metrics(0, first, [report(0, 0, 100, 100, execution=0.01)], plan.wait(first, now=0.0), 0.0,
                         0.01, 0.001, {})
    plan.in_flight.popleft()
    plan.measured(done, done_at=0.5)
    send(plan, 100, at=0.5)
    assert not plan.workers_busy(0.5)  # the first group's pace holds the workers' set-up
    plan.in_flight.popleft()
    plan.measured(done, done_at=1.0)  # 100 us an iteration; the last group ended at t = 1 s
    send(plan, 100, at=0.5)  # in flight: expected to end at 1.01 s
    assert plan.workers_busy(1.0004)  # 9.6 ms of 10 left
    assert plan.workers_busy(1.0049) and not plan.workers_busy(1.0051)  # half of it must be left
    plan.in_flight.popleft()
    send(plan, 15, at=1.0)  # 1.5 ms expected: 1 ms must be left
    assert plan.workers_busy(1.0004) and not plan.workers_busy(1.0006)
    send(plan, 15, at=1.0)  # two groups in flight run back to back: 3 ms
    assert plan.workers_busy(1.0014) and not plan.workers_busy(1.0016)
    late = group_metrics(2, first, [report(0, 0, 100, 100, execution=0.01)],
                         Wait(2.0, 0.0, 0.0, None), 2.0, 2.012, 0.001, {})
    plan.measured(late, done_at=2.012)  # seen 2 ms after the workers ended it, at 2.010
    # The two groups in flight (3 ms) run from 2.010, not from when the driver saw the last one end.
    assert plan.workers_busy(2.0114) and not plan.workers_busy(2.0116)
    urgent = GroupPlan(0, 0, 1000, urgent=True, now=0.0)  # a stream: its pace is the records'
    urgent.per_iteration, urgent.measured_groups = 1e-4, 2
    send(urgent, 100)
    assert not urgent.workers_busy(0.0)


def test_group_metrics_take_the_slowest_worker_per_phase():
    group = SentGroup(40, 10, 40, sent_at=1.0, schedule=2e-4)
    reports = [report(1, 40, 10, 50, compute=0.3, reduce=0.01, execution=0.5, rows=5),
               report(0, 40, 10, 50, compute=0.2, reduce=0.05, update=0.02, execution=0.4, startup=0.1, rows=6)]
    wait = Wait(began=1.0, first_sleep=0.0, extra=0.0, max_sleep=None)
    m = group_metrics(3, group, reports, wait, waited_from=1.1, done_at=1.7, driver_cpu=0.01,
                      metrics=last_metrics(reports[1]))
    assert (m.group, m.start_iteration, m.group_size, m.n_iterations, m.version) == (3, 40, 10, 10, 50)
    assert (m.compute, m.reduce, m.update, m.execution) == (0.3, 0.05, 0.02, 0.5)
    assert m.wall == pytest.approx(0.7)  # from its start, less the quickest worker's startup (none)
    reports[0].timings.startup = 0.05
    assert group_metrics(3, group, reports, wait, 1.1, 1.7, 0.01, {}).wall == pytest.approx(0.65)
    assert m.wait == pytest.approx(0.6) and m.coordination == pytest.approx(0.2)
    assert m.metrics == {"loss": 2.0}  # the last iteration's values, without arrival stamps


def test_replicas_must_agree():
    root = report(0, 0, 5, 5)
    root.digest = 11
    same, other = report(1, 0, 5, 5), report(2, 0, 5, 5)
    same.digest, other.digest = 11, 12
    check_replicas([root, same], root)
    with pytest.raises(ReplicaMismatchError, match="worker 2's model replica differs from worker 0's at version 5"):
        check_replicas([root, same, other], root)
