"""Group size: fixed, or tuned by AIMD on the measured coordination overhead.

The tuner watches each group's overhead, ``coordination / wall``: the share of
the group's time the workers were not executing it (driver scheduling and
serialization, waiting for the driver, report handling). It looks for the
*smallest* group whose overhead is at most ``upper``: small groups give the
driver more points to react at (convergence, checkpoints, stream batches,
stragglers, adaptation), large ones amortize coordination.

The rule, applied at every group boundary to the group just measured (size
``k``, overhead ``o``):

- ``o > upper``: too small. If ``k`` was a probe below the smallest size known
  to meet the bound (``good``), the probe overshot: remember ``k`` as the
  ``floor``, go back to ``good`` and **hold** there for ``hold`` groups before
  probing again (the hold doubles after each failed probe at the same floor,
  up to ``max_hold``, so a settled job spends at most ~1/hold of its groups
  probing). Otherwise conditions got worse or we are still growing:
  **grow multiplicatively** (``k * increase``) and forget ``good``.
- ``o < lower``: clearly too large. **Shrink additively** (``k - decrease``)
  every group, and forget a stale ``floor``/hold (things improved).
- ``lower <= o <= upper`` (the band): ``k`` meets the bound; it becomes
  ``good`` if smaller. While holding, stay; otherwise probe one step down.

Plain AIMD with a dead band stops wherever growth lands in the band, up to
about ``increase`` times the smallest adequate size; probing down within the
band and holding just above a failed probe makes it settle at the smallest
size ``k*`` meeting ``upper``. With send-ahead a decision applies one group
later, so the tuner waits for a grown (or probed) size to be measured before
growing (or probing) again; decisions start from the current size, never
from an older measured one. Tolerance, in steady conditions: the size is
``k*`` except one probe group at ``k* - decrease`` per hold period (and noise
in the measured overhead can move ``k*`` by a step). From ``k = 1`` under high
overhead the band is reached in O(log k*) groups; a change of conditions
shows in the next group's decision.

The size is also capped: by ``max_group``, by ``cap`` (iterations the job has
left) and by ``react_within`` seconds: a group's expected duration
(``k * seconds per iteration``) stays within what the user needs to react to,
the checkpoint interval in seconds or a stream's batch interval. And it has a
floor in seconds, ``min_group_seconds``, which the scheduler sets for streams:
there the workers' waiting for records hides the coordination, so the
overhead alone would shrink groups to one micro-batch, and a group boundary a
millisecond costs the driver CPU that the workers need on a small machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

AUTO_START = 8

#: Keys of the ``tuner`` dict that estimators accept (see :func:`tuner_options`).
SIZER_KEYS = ("lower", "upper", "increase", "decrease", "min_group", "max_group", "hold", "max_hold")


@dataclass
class GroupSizer:
    """Chooses each group's size.

    group_size : int >= 1 (fixed) or ``"auto"`` (tuned, see the module docstring).
    lower, upper : overhead bounds (shares of a group's wall time), 0 <= lower <= upper < 1.
    increase : multiplicative growth factor (> 1) above ``upper``.
    decrease : additive step (>= 1) of shrinks and probes.
    min_group, max_group : bounds of the tuned size.
    hold : groups to stay at the smallest adequate size after a failed probe
        (doubling per consecutive failure, at most ``max_hold``).
    react_within : seconds or None; a group should not take longer (set by the
        scheduler from the checkpoint interval in seconds or a stream's batch interval).
    min_group_seconds : seconds or None; a group should not be shorter (set by
        the scheduler for streams); ``react_within`` wins where they conflict.

    After each :meth:`next`, ``reason`` says what was decided: ``fixed``,
    ``grow``, ``shrink``, ``probe``, ``hold``, ``back`` (a probe overshot),
    ``keep``, ``cap`` or ``floor``.
    """

    group_size: int | str = "auto"
    lower: float = 0.05
    upper: float = 0.10
    increase: float = 2.0
    decrease: int = 1
    min_group: int = 1
    max_group: int = 1000
    hold: int = 8
    max_hold: int = 64
    react_within: float | None = None
    min_group_seconds: float | None = None
    cap: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.size = check_group_size(self.group_size)
        self.auto = self.size is None
        check_sizer_options(self)
        self.good: int | None = None  # smallest recent size measured within the bound
        self.floor: int | None = None  # largest recent size measured above it
        self.holding = 0  # groups left to hold at ``good``
        self.failures = 0  # failed probes in a row at the same floor
        self.reason = "fixed" if not self.auto else "start"
        if self.auto:
            self.size = self._bounded(AUTO_START)

    # -- checkpointed state --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the tuner: the current size (and, tuned, what it learnt)."""
        if not self.auto:
            return {"size": int(self.size)}
        return {"size": int(self.size), "good": self.good, "floor": self.floor, "holding": self.holding,
                "failures": self.failures}

    def restore(self, state: dict) -> GroupSizer:
        """Continue from :meth:`state` (a tuned size is kept within the bounds)."""
        if self.auto and "size" in state:
            self.size = self._bounded(int(state["size"]))
            for key in ("good", "floor"):
                value = state.get(key)
                setattr(self, key, None if value is None else int(value))
            self.holding = int(state.get("holding", 0))
            self.failures = int(state.get("failures", 0))
        return self

    # -- the rule -------------------------------------------------------------------------
    def limit(self, per_iteration: float = 0.0) -> int:
        """The largest size allowed now: ``max_group``, ``cap`` and ``react_within``."""
        top = self.max_group if self.cap is None else min(self.max_group, self.cap)
        if self.react_within is not None and per_iteration > 0:
            top = min(top, int(self.react_within / per_iteration))
        return max(top, self.min_group)

    def smallest(self, per_iteration: float = 0.0) -> int:
        """The smallest size allowed now: ``min_group`` and ``min_group_seconds``."""
        if self.min_group_seconds is not None and per_iteration > 0:
            return max(self.min_group, math.ceil(self.min_group_seconds / per_iteration))
        return self.min_group

    def _bounded(self, size: int, per_iteration: float = 0.0) -> int:
        return min(max(int(size), self.smallest(per_iteration)), self.limit(per_iteration))

    def next(self, overhead: float, measured: int | None = None, per_iteration: float = 0.0) -> int:
        """Size of the next group given the overhead share of the last measured group.

        ``measured`` is that group's size (default: the current size; with
        send-ahead the measured group may be older than the last decision).
        ``per_iteration`` (seconds) applies ``react_within``.
        """
        if not self.auto:
            return self.size
        k = self.size if measured is None else int(measured)
        if overhead > self.upper:
            if self.good is not None and k < self.good:
                # A probe below a size known to meet the bound overshot: go back and hold.
                self.failures = self.failures + 1 if self.floor == k else 1
                self.floor = k
                self.holding = min(self.hold * 2 ** (self.failures - 1), self.max_hold)
                size, self.reason = self.good, "back"
            elif self.reason == "grow" and k < self.size:
                size = self.size  # the last growth is still to be measured (send-ahead)
            else:
                self.good, self.floor, self.holding, self.failures = None, k, 0, 0
                base = max(k, self.size)
                size, self.reason = max(base + 1, math.ceil(base * self.increase)), "grow"
        else:
            if self.floor is not None and k <= self.floor:
                self.floor, self.failures = None, 0  # the remembered floor is stale
            if self.good is None or k < self.good:
                self.good = k
            if overhead < self.lower:
                self.holding = 0
                size, self.reason = min(k, self.size) - self.decrease, "shrink"
            elif self.holding > 0:
                self.holding -= 1
                size, self.reason = self.good, "hold"
            elif self.reason == "probe" and k > self.size:
                size = self.size  # the last probe is still to be measured (send-ahead)
            else:
                size, self.reason = k - self.decrease, "probe"
        floored = max(int(size), self.smallest(per_iteration))
        bounded = min(floored, self.limit(per_iteration))
        if bounded == k and self.reason in ("grow", "shrink", "probe"):
            self.reason = "keep"  # at a bound already
        elif bounded < floored:
            self.reason = "cap"
        elif bounded > size:
            self.reason = "floor"
        self.size = bounded
        return self.size


def check_group_size(group_size: int | str) -> int | None:
    """Validate ``group_size``; None stands for "auto"."""
    if group_size == "auto":
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be 'auto' or an integer >= 1, got {group_size!r}")
    return group_size


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sizer_options(s: GroupSizer) -> None:
    """Clear ValueErrors for inconsistent tuner bounds."""
    if not (0.0 <= s.lower <= s.upper < 1.0):
        raise ValueError(f"tuner bounds need 0 <= lower <= upper < 1, got lower={s.lower!r}, upper={s.upper!r}")
    if not s.increase > 1.0:
        raise ValueError(f"tuner increase must be > 1, got {s.increase!r}")
    for name in ("decrease", "min_group", "max_group", "hold", "max_hold"):
        if not _is_int(getattr(s, name)) or getattr(s, name) < 1:
            raise ValueError(f"tuner {name} must be an integer >= 1, got {getattr(s, name)!r}")
    if s.min_group > s.max_group:
        raise ValueError(f"tuner min_group ({s.min_group}) is larger than max_group ({s.max_group})")
    for name in ("react_within", "min_group_seconds"):
        if getattr(s, name) is not None and not getattr(s, name) > 0:
            raise ValueError(f"{name} must be None or seconds > 0, got {getattr(s, name)!r}")


def tuner_options(tuner: dict | None, keys: tuple[str, ...] = SIZER_KEYS) -> dict[str, Any]:
    """The estimators' ``tuner`` parameter: None or a dict of known keys, checked."""
    if tuner is None:
        return {}
    if not isinstance(tuner, dict):
        raise ValueError(f"tuner must be None or a dict, got {type(tuner).__name__}")
    unknown = sorted(set(tuner) - set(keys))
    if unknown:
        raise ValueError(f"unknown tuner option(s) {unknown}; known: {list(keys)}")
    return dict(tuner)
