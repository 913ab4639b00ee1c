"""Bounded, CPU-friendly waiting on MPI requests.

MPICH busy-polls inside blocking calls, and on an oversubscribed machine a
spinning rank steals the core its peers need. Every wait in the engine goes
through :func:`poll`: test and yield the CPU for a short budget (cheap when the
answer is near), then sleep with exponential back-off, and always give up at a
deadline.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(Exception):
    """Raised by :func:`poll` when the deadline passes (the engine rewraps it)."""


SPIN_ON_OWN_CORE = 2e-4


@dataclass(frozen=True)
class WaitPolicy:
    """How long and how eagerly to wait.

    timeout : seconds before a wait gives up (every wait has one).
    spin : seconds of busy testing before the first sleep. ``SPIN_ON_OWN_CORE``
        or more means this rank has a core of its own and may spin longer
        where a wait is known to be short.
    max_sleep : ceiling of the exponential back-off, in seconds.
    check_every : seconds between calls of a wait's ``on_idle`` hook
        (liveness checks, abort messages) once it sleeps.
    """

    timeout: float = 60.0
    spin: float = 2e-4
    max_sleep: float = 1e-3
    check_every: float = 0.02

    @classmethod
    def for_ranks(cls, ranks_on_host: int, timeout: float = 60.0) -> WaitPolicy:
        """Spin only when every rank on this host has a core of its own.

        ``DRIZZLE_SPIN_US`` (microseconds) overrides the spin budget.
        """
        cores = os.cpu_count() or 1
        spin = SPIN_ON_OWN_CORE if ranks_on_host <= cores else 1e-5
        if os.environ.get("DRIZZLE_SPIN_US"):
            spin = float(os.environ["DRIZZLE_SPIN_US"]) * 1e-6
        return cls(timeout=timeout, spin=spin)


def timeout_from_env(default: float = 60.0) -> float:
    """``$DRIZZLE_TIMEOUT``, seconds that bound every wait (``default`` where unset or empty).

    The workers read it before any job tells them the driver's limit, and a
    cluster made without ``timeout`` (the estimators', the command line's)
    takes it too. Raises ValueError unless it is a positive finite number.
    """
    text = os.environ.get("DRIZZLE_TIMEOUT", "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"DRIZZLE_TIMEOUT must be positive seconds, got {text!r}")
    return value


def look_twice(probe: Callable[[], T]) -> T:
    """``probe()``, and once more if it found nothing.

    MPICH's probes look for a matching message before they make progress: a
    message that reached this rank since its last MPI call is taken in by the
    first probe but found only by the second (every time, measured right after
    the sender's doorbell ring). With one look, a rank woken by a ring finds
    nothing and sleeps another step.
    """
    found = probe()
    return found if found else probe()


def poll(
    test: Callable[[], T],
    policy: WaitPolicy,
    *,
    on_idle: Callable[[], None] | None = None,
    first_sleep: float = 0.0,
    timeout: float | None = None,
    spin: float | None = None,
    max_sleep: float | None = None,
    sleep: Callable[[float], object] = time.sleep,
    bell: bool = False,
) -> T:
    """Call ``test`` until it returns something truthy, and return that.

    ``first_sleep`` lets a caller that knows roughly when the answer is due
    (the driver waiting for a group) sleep through most of the wait, testing
    only every ``max_sleep`` seconds. ``on_idle`` runs between sleeps, at most every
    ``policy.check_every`` seconds, and may raise to end the wait.
    ``spin`` and ``max_sleep`` override the policy's for this wait.
    ``sleep`` sleeps between tests: a :class:`~drizzle_ml.doorbell.Doorbell`'s
    ends early when a peer rings it after sending. ``bell``: every sender
    rings it (seen to work), so it sleeps at once, ``max_sleep`` between
    looks, and ``test`` should look with :func:`look_twice`. Without it,
    the steps start short and are short again right after a ring, as the
    message that rang may come in steps (a rendezvous).
    Raises :class:`WaitTimeout` after ``timeout`` (default ``policy.timeout``).
    """
    result = test()
    if result:
        return result
    start = time.perf_counter()
    limit = policy.timeout if timeout is None else timeout
    tick = policy.max_sleep if max_sleep is None else max_sleep
    deadline = start + limit
    if first_sleep > 0:
        # Sleep through most of the expected wait, but look every max_sleep:
        # the answer may come early (a job that converged inside its group).
        wake = start + min(first_sleep, limit)
        while (now := time.perf_counter()) < wake:
            sleep(min(tick, wake - now))
            result = test()
            if result:
                return result
    # Yield between tests: on a busy machine the peer we wait for may need this core.
    # A rank that every sender rings does not spin: the ring wakes it.
    budget = 0.0 if bell else policy.spin if spin is None else spin
    spin_until = time.perf_counter() + budget
    while budget > 0:
        result = test()
        if result:
            return result
        if time.perf_counter() >= spin_until:
            break
        os.sched_yield()
    step = tick if bell else 2e-5
    next_check = time.perf_counter()
    while True:
        result = test()
        if result:
            return result
        now = time.perf_counter()
        if now >= deadline:
            raise WaitTimeout(f"no answer after {limit:g} s")
        if on_idle is not None and now >= next_check:
            on_idle()
            next_check = now + policy.check_every
        # Rung: a message came, and the next may follow (a rendezvous in steps).
        # Where every sender rings (bell), the next look finds what rang; a ring
        # it does not explain is stale (its message was taken with an earlier
        # one), and short steps after it would only wake this rank for nothing.
        rung = sleep(min(step, deadline - now))
        step = 2e-5 if rung and not bell else min(step * 2, tick)
