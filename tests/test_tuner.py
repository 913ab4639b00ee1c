"""The group-size tuner on synthetic timing traces (no MPI).

Coordination costs ``c`` seconds per group and execution ``e`` per iteration,
so a group of ``k`` iterations has overhead ``c / (c + k e)``; the smallest
size meeting the upper bound is the smallest ``k >= c (1 - u) / (u e)``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import FrozenInstanceError, replace

import pytest

from drizzle_ml.tuner import (
    STREAM_GROUP_SECONDS,
    STREAM_MIN_GROUP_SECONDS,
    GroupSizer,
    TunerSettings,
    check_group_size,
    tuner_options,
)


def overhead(k: int, c: float, e: float) -> float:
    return c / (c + k * e)


def smallest_meeting(c: float, e: float, upper: float = 0.10) -> int:
    k = max(1, math.ceil(c * (1 - upper) / (upper * e)) - 1)
    while overhead(k, c, e) > upper:
        k += 1
    return k


def simulate(sizer: GroupSizer, trace, send_ahead: bool = True) -> list[int]:
    """Sizes of the measured groups; with send-ahead a decision applies one group later, as in the scheduler."""
    sent = deque([sizer.size, sizer.size] if send_ahead else [sizer.size])
    measured = []
    for c, e in trace:
        k = sent.popleft()
        measured.append(k)
        sent.append(sizer.next(overhead(k, c, e), measured=k))
    return measured


@pytest.mark.parametrize("send_ahead", [False, True])
@pytest.mark.parametrize("c,e", [(1e-3, 1e-4), (2e-3, 5e-5), (5e-4, 2e-3), (1e-3, 2e-5)])
def test_converges_to_the_smallest_size_meeting_the_bound(c, e, send_ahead):
    best = smallest_meeting(c, e)
    sizer = GroupSizer("auto", max_group=10_000)
    sizes = simulate(sizer, [(c, e)] * 600, send_ahead)
    tail = sizes[-150:]
    # Documented tolerance: k* apart from a probe one step below per hold period.
    assert set(tail) <= {max(best - 1, 1), best}, (best, sorted(set(tail)))
    assert tail.count(best) >= 0.85 * len(tail)
    # The overhead at the settled size meets the bound; one step below it does not.
    assert overhead(best, c, e) <= 0.10 and (best == 1 or overhead(best - 1, c, e) > 0.10)


def test_plain_dead_band_would_stop_above_the_smallest_size():
    # What the probing is for: growth lands in the band above k*, and a dead band would stay there.
    c, e = 1e-3, 1e-4  # k* = 90; doubling from 8 lands on 128, in the band (overhead 7.2 %)
    assert 0.05 <= overhead(128, c, e) <= 0.10 and smallest_meeting(c, e) == 90
    sizes = simulate(GroupSizer("auto"), [(c, e)] * 300, send_ahead=False)
    assert 128 in sizes and sizes[-1] in (89, 90)


def test_multiplicative_growth_from_one_reaches_the_band_in_log_groups():
    c, e = 1e-2, 1e-6  # k* ~ 90000: far away
    best = smallest_meeting(c, e, 0.10)
    sizer = GroupSizer("auto", min_group=1, max_group=1_000_000)
    sizer.size = 1
    sizes = simulate(sizer, [(c, e)] * 60, send_ahead=False)
    first = next(i for i, k in enumerate(sizes) if k >= best)
    assert first <= math.ceil(math.log2(best)) + 1
    assert all(b == 2 * a for a, b in zip(sizes[:first - 1], sizes[1:first]))
    # With send-ahead every doubling takes at most two groups.
    sizer = GroupSizer("auto", max_group=1_000_000)
    sizer.size = 1
    sizes = simulate(sizer, [(c, e)] * 60, send_ahead=True)
    assert next(i for i, k in enumerate(sizes) if k >= best) <= 2 * (math.ceil(math.log2(best)) + 1)


def test_shrinks_additively_and_slowly():
    sizer = GroupSizer("auto", decrease=2)
    sizer.size = 200
    decisions = [sizer.next(0.01) for _ in range(10)]
    assert decisions == list(range(198, 178, -2))
    assert {sizer.reason} == {"shrink"}


def test_reacts_within_a_few_groups_when_conditions_change():
    c, e = 1e-3, 1e-4
    sizer = GroupSizer("auto", max_group=10_000)
    sizes = simulate(sizer, [(c, e)] * 300)
    assert sizes[-1] in (89, 90)
    # A larger model (or a slower cluster after a restart): coordination 4x dearer.
    sizes = simulate(sizer, [(4 * c, e)] * 60)
    assert max(sizes[:4]) > 90  # grew within a few groups
    best = smallest_meeting(4 * c, e)
    assert min(k for k in sizes[:8]) >= 89 and max(sizes[-20:]) <= best + 1 and max(sizes) < 2 * best + 2
    # A slower worker: execution per iteration 3x longer, the overhead falls below the band.
    sizes = simulate(sizer, [(4 * c, 3 * e)] * 400)
    assert sizes[3] < sizes[0]  # shrinking within a few groups
    assert sizes[-1] in (smallest_meeting(4 * c, 3 * e) - 1, smallest_meeting(4 * c, 3 * e))


def test_respects_min_max_cap_and_react_within():
    sizer = GroupSizer("auto", min_group=4, max_group=50)
    assert [sizer.next(0.9) for _ in range(5)] == [16, 32, 50, 50, 50]
    assert sizer.reason == "keep"
    assert min(sizer.next(0.0) for _ in range(100)) == 4
    assert sizer.next(0.9, remaining=7) == 7 and sizer.reason == "cap"  # iterations the job has left
    # e.g. checkpoints every 0.5 s at 20 ms per iteration: 25 iterations
    capped = GroupSizer(replace(sizer.settings, react_within=0.5), state=sizer.state())
    assert capped.next(0.9, measured=40, per_iteration=0.02) == 25 and capped.reason == "cap"
    fixed = GroupSizer(10)
    assert [fixed.next(0.9), fixed.next(0.0)] == [10, 10] and fixed.reason == "fixed"


def test_a_floor_in_seconds_stops_shrinking_and_gives_way_to_the_cap():
    sizer = GroupSizer("auto", min_group_seconds=0.01)  # what the scheduler sets for streams
    sizes = [sizer.next(0.0, per_iteration=0.001) for _ in range(10)]  # no overhead: shrink...
    assert sizes[0] == 10 and sizer.reason == "keep" and min(sizes) == 10  # ...down to 10 ms of groups
    assert sizer.next(0.0, measured=10, per_iteration=0.004) == 9  # slower iterations: 3 are 10 ms
    assert sizer.next(0.0, measured=3, per_iteration=0.004) == 3 and sizer.reason == "keep"
    assert sizer.next(0.0, measured=2, per_iteration=0.004) == 3 and sizer.reason == "floor"
    capped = GroupSizer(replace(sizer.settings, react_within=0.005), state=sizer.state())
    assert capped.next(0.0, measured=3, per_iteration=0.001) == 5 and capped.reason == "cap"  # the cap wins
    assert GroupSizer(4, min_group_seconds=1.0).next(0.0, per_iteration=0.001) == 4  # a fixed size stays
    with pytest.raises(ValueError, match="min_group_seconds must be None or seconds > 0, got 0"):
        GroupSizer("auto", min_group_seconds=0)


def test_probe_backoff_holds_longer_after_repeated_failures():
    sizer = GroupSizer("auto", hold=2, max_hold=8)
    c, e = 1e-3, 1e-4
    sizes = simulate(sizer, [(c, e)] * 400, send_ahead=False)
    probes = [i for i, k in enumerate(sizes[200:]) if k == 89]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps and max(gaps) == 8 + 2  # held max_hold groups, then the probe and the step back


def test_state_restore_round_trip():
    sizer = GroupSizer("auto")
    simulate(sizer, [(1e-3, 1e-4)] * 300, send_ahead=False)
    state = sizer.state()
    assert state["size"] == sizer.size and state["good"] == 90
    other = GroupSizer("auto", state=state)
    assert other.state() == state
    # Both continue identically.
    assert simulate(other, [(1e-3, 1e-4)] * 50, False) == simulate(sizer, [(1e-3, 1e-4)] * 50, False)
    # A restored size is kept within the (possibly new) bounds; a fixed sizer ignores it.
    assert GroupSizer("auto", max_group=20, state=state).size == 20
    assert GroupSizer(10, state=state).state() == {"size": 10}
    assert GroupSizer("auto", state={"size": 5}).state()["good"] is None  # older checkpoints


@pytest.mark.parametrize("bad,match", [
    (dict(lower=0.2, upper=0.1), "lower <= upper"), (dict(upper=1.0), "upper < 1"),
    (dict(increase=1.0), "increase"), (dict(decrease=0), "decrease"), (dict(min_group=5, max_group=4), "min_group"),
    (dict(hold=1.5), "hold"), (dict(react_within=0), "react_within"),
])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        GroupSizer("auto", **bad)


def test_settings_are_fixed_and_a_job_adds_its_time_limits():
    settings = TunerSettings("auto", upper=0.2)
    with pytest.raises(FrozenInstanceError):
        settings.upper = 0.3
    with pytest.raises(TypeError, match="settings or options, not both"):
        GroupSizer(settings, upper=0.3)
    assert settings.for_job() == settings
    # The tighter time limit wins: a reaction time, the checkpoint interval in seconds.
    job = settings.for_job(react_within=3.0, checkpoint_seconds=2.0)
    assert (job.react_within, job.min_group_seconds, job.upper) == (2.0, None, 0.2)
    assert job.for_job(react_within=5.0) == job
    # A stream's groups last at least STREAM_MIN_GROUP_SECONDS and at most STREAM_GROUP_SECONDS.
    stream = settings.for_job(streaming=True)
    assert (stream.react_within, stream.min_group_seconds) == (STREAM_GROUP_SECONDS, STREAM_MIN_GROUP_SECONDS)
    assert settings.for_job(streaming=True, react_within=0.1, checkpoint_seconds=5.0).react_within == 0.1
    assert TunerSettings(min_group_seconds=0.5).for_job(streaming=True).min_group_seconds == 0.5


def test_tuner_options():
    assert tuner_options(None) == {} and tuner_options({"upper": 0.2}) == {"upper": 0.2}
    with pytest.raises(ValueError, match="unknown tuner option"):
        tuner_options({"uper": 0.2})
    with pytest.raises(ValueError, match="must be None or a dict"):
        tuner_options(0.2)
    with pytest.raises(ValueError, match="group_size"):
        check_group_size(0)
