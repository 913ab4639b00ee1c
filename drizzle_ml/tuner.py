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

The size is also capped: by ``max_group``, by the iterations the job has
left and by ``react_within`` seconds: a group's expected duration
(``k * seconds per iteration``) stays within what the user needs to react to,
the checkpoint interval in seconds or a stream's batch interval. And it has a
floor in seconds, ``min_group_seconds``, which streams get by default:
there the workers' waiting for records hides the coordination, so the
overhead alone would shrink groups to one micro-batch, and a group boundary a
millisecond costs the driver CPU that the workers need on a small machine.

The settings (:class:`TunerSettings`) are fixed when a job starts: the
estimator gives the user's options, :meth:`TunerSettings.for_job` adds the
job's time limits, and :class:`GroupSizer` applies the rule under them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

AUTO_START = 8
STREAM_GROUP_SECONDS = 1.0
# A tuned stream group lasts at least this long: the workers' waiting for
# records hides the coordination, so the overhead alone would shrink groups to
# one micro-batch, and the driver's work at a group boundary, up to a thousand
# times a second, takes CPU the workers need and raises the latency.
STREAM_MIN_GROUP_SECONDS = 0.01

#: Keys of the ``tuner`` dict that estimators accept (see :func:`tuner_options`).
SIZER_KEYS = ("lower", "upper", "increase", "decrease", "min_group", "max_group", "hold", "max_hold")


@dataclass(frozen=True)
class TunerSettings:
    """How a job's group size is chosen; fixed for the job (see the module docstring).

    group_size : int >= 1 (fixed) or ``"auto"`` (tuned).
    lower, upper : overhead bounds (shares of a group's wall time), 0 <= lower <= upper < 1.
    increase : multiplicative growth factor (> 1) above ``upper``.
    decrease : additive step (>= 1) of shrinks and probes.
    min_group, max_group : bounds of the tuned size.
    hold : groups to stay at the smallest adequate size after a failed probe
        (doubling per consecutive failure, at most ``max_hold``).
    react_within : seconds or None; a group should not take longer (the
        checkpoint interval in seconds or a stream's batch interval).
    min_group_seconds : seconds or None; a group should not be shorter (streams);
        ``react_within`` wins where they conflict.
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

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        check_sizer_options(self)

    @property
    def auto(self) -> bool:
        return self.group_size == "auto"

    def for_job(self, *, streaming: bool = False, react_within: float | None = None,
                checkpoint_seconds: float | None = None) -> TunerSettings:
        """These settings with one job's time limits.

        A group ends within ``react_within`` seconds and the checkpoint
        interval (the tighter limit wins, this one's own too). A stream's
        groups last at most :data:`STREAM_GROUP_SECONDS` (its checkpoints,
        offsets and a stop come at group boundaries) and, unless set here, at
        least :data:`STREAM_MIN_GROUP_SECONDS`.
        """
        limits = [t for t in (self.react_within, react_within, checkpoint_seconds) if t is not None]
        floor = self.min_group_seconds
        if streaming:
            limits.append(STREAM_GROUP_SECONDS)
            floor = STREAM_MIN_GROUP_SECONDS if floor is None else floor
        return replace(self, react_within=min(limits) if limits else None, min_group_seconds=floor)


class Move(Enum):
    """What the tuner decided at a group boundary (its value is shown as ``GroupMetrics.tuner``)."""

    START = "start"
    FIXED = "fixed"
    GROW = "grow"
    SHRINK = "shrink"
    PROBE = "probe"
    HOLD = "hold"
    BACK = "back"  # a probe overshot
    KEEP = "keep"  # at a bound already
    CAP = "cap"
    FLOOR = "floor"


class GroupSizer:
    """Chooses each group's size under fixed :class:`TunerSettings`.

    ``GroupSizer(group_size, **options)`` builds the settings from the same
    names; ``state`` (see :meth:`state`) continues a tuner a checkpoint kept.
    After each :meth:`next`, ``reason`` says what was decided: ``fixed``,
    ``grow``, ``shrink``, ``probe``, ``hold``, ``back`` (a probe overshot),
    ``keep``, ``cap`` or ``floor``.
    """

    def __init__(self, group_size: int | str | TunerSettings = "auto", *, state: dict | None = None,
                 **options: Any) -> None:
        self.settings = (group_size if isinstance(group_size, TunerSettings)
                         else TunerSettings(group_size, **options))
        if isinstance(group_size, TunerSettings) and options:
            raise TypeError("GroupSizer takes settings or options, not both")
        self.auto = self.settings.auto
        self.good: int | None = None  # smallest recent size measured within the bound
        self.floor: int | None = None  # largest recent size measured above it
        self.holding = 0  # groups left to hold at ``good``
        self.failures = 0  # failed probes in a row at the same floor
        self.move = Move.START if self.auto else Move.FIXED
        self.size = self._bounded(AUTO_START) if self.auto else int(self.settings.group_size)
        if state:
            self._restore(state)

    def __repr__(self) -> str:
        return f"GroupSizer({self.settings!r}, size={self.size})"

    @property
    def reason(self) -> str:
        return self.move.value

    # -- checkpointed state --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the tuner: the current size (and, tuned, what it learnt)."""
        if not self.auto:
            return {"size": int(self.size)}
        return {"size": int(self.size), "good": self.good, "floor": self.floor, "holding": self.holding,
                "failures": self.failures}

    def _restore(self, state: dict) -> None:
        """Continue from :meth:`state` (a tuned size is kept within the bounds; a fixed one stays)."""
        if self.auto and "size" in state:
            self.size = self._bounded(int(state["size"]))
            for key in ("good", "floor"):
                value = state.get(key)
                setattr(self, key, None if value is None else int(value))
            self.holding = int(state.get("holding", 0))
            self.failures = int(state.get("failures", 0))

    # -- the rule -------------------------------------------------------------------------
    def limit(self, per_iteration: float = 0.0, remaining: int | None = None) -> int:
        """The largest size allowed now: ``max_group``, the ``remaining`` iterations and ``react_within``."""
        s = self.settings
        top = s.max_group if remaining is None else min(s.max_group, max(int(remaining), 1))
        if s.react_within is not None and per_iteration > 0:
            top = min(top, int(s.react_within / per_iteration))
        return max(top, s.min_group)

    def smallest(self, per_iteration: float = 0.0) -> int:
        """The smallest size allowed now: ``min_group`` and ``min_group_seconds``."""
        s = self.settings
        if s.min_group_seconds is not None and per_iteration > 0:
            return max(s.min_group, math.ceil(s.min_group_seconds / per_iteration))
        return s.min_group

    def _bounded(self, size: int, per_iteration: float = 0.0) -> int:
        return min(max(int(size), self.smallest(per_iteration)), self.limit(per_iteration))

    def next(self, overhead: float, measured: int | None = None, per_iteration: float = 0.0,
             remaining: int | None = None) -> int:
        """Size of the next group given the overhead share of the last measured group.

        ``measured`` is that group's size (default: the current size; with
        send-ahead the measured group may be older than the last decision).
        ``per_iteration`` (seconds) applies ``react_within``; ``remaining``
        (iterations the job has left) caps the size.
        """
        if not self.auto:
            return self.size
        s = self.settings
        k = self.size if measured is None else int(measured)
        if overhead > s.upper:
            if self.good is not None and k < self.good:
                # A probe below a size known to meet the bound overshot: go back and hold.
                self.failures = self.failures + 1 if self.floor == k else 1
                self.floor = k
                self.holding = min(s.hold * 2 ** (self.failures - 1), s.max_hold)
                size, self.move = self.good, Move.BACK
            elif self.move is Move.GROW and k < self.size:
                size = self.size  # the last growth is still to be measured (send-ahead)
            else:
                self.good, self.floor, self.holding, self.failures = None, k, 0, 0
                base = max(k, self.size)
                size, self.move = max(base + 1, math.ceil(base * s.increase)), Move.GROW
        else:
            if self.floor is not None and k <= self.floor:
                self.floor, self.failures = None, 0  # the remembered floor is stale
            if self.good is None or k < self.good:
                self.good = k
            if overhead < s.lower:
                self.holding = 0
                size, self.move = min(k, self.size) - s.decrease, Move.SHRINK
            elif self.holding > 0:
                self.holding -= 1
                size, self.move = self.good, Move.HOLD
            elif self.move is Move.PROBE and k > self.size:
                size = self.size  # the last probe is still to be measured (send-ahead)
            else:
                size, self.move = k - s.decrease, Move.PROBE
        floored = max(int(size), self.smallest(per_iteration))
        bounded = min(floored, self.limit(per_iteration, remaining))
        if bounded == k and self.move in (Move.GROW, Move.SHRINK, Move.PROBE):
            self.move = Move.KEEP
        elif bounded < floored:
            self.move = Move.CAP
        elif bounded > size:
            self.move = Move.FLOOR
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


def check_sizer_options(s: TunerSettings) -> None:
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
