"""Group size: fixed, or tuned by AIMD on the measured coordination overhead.

Above the upper bound of overhead the group grows multiplicatively (fewer
coordination points amortize the driver's cost); below the lower bound it
shrinks additively (more points to react at: convergence checks, checkpoints,
adaptation). As in TCP's congestion control, this settles near the smallest
group that keeps the overhead within bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO_START = 8


@dataclass
class GroupSizer:
    """Chooses each group's size.

    group_size : int >= 1 (fixed) or ``"auto"`` (AIMD).
    lower, upper : overhead bounds (shares of a group's wall time).
    increase : multiplicative factor above ``upper``; decrease : additive step below ``lower``.
    min_group, max_group : bounds of the tuned size.
    """

    group_size: int | str = "auto"
    lower: float = 0.05
    upper: float = 0.10
    increase: float = 2.0
    decrease: int = 1
    min_group: int = 1
    max_group: int = 1000

    def __post_init__(self) -> None:
        self.size = check_group_size(self.group_size)
        self.auto = self.size is None
        if self.auto:
            self.size = min(max(AUTO_START, self.min_group), self.max_group)

    def state(self) -> dict[str, int]:
        """What a checkpoint keeps of the tuner: the current size."""
        return {"size": int(self.size)}

    def restore(self, state: dict) -> "GroupSizer":
        """Continue from :meth:`state` (a tuned size is kept within the bounds)."""
        if self.auto and "size" in state:
            self.size = min(max(int(state["size"]), self.min_group), self.max_group)
        return self

    def next(self, overhead: float) -> int:
        """Size of the next group given the last group's overhead share."""
        if self.auto:
            if overhead > self.upper:
                self.size = min(self.max_group, max(self.size + 1, int(self.size * self.increase)))
            elif overhead < self.lower:
                self.size = max(self.min_group, self.size - self.decrease)
        return self.size


def check_group_size(group_size: int | str) -> int | None:
    """Validate ``group_size``; None stands for "auto"."""
    if group_size == "auto":
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be 'auto' or an integer >= 1, got {group_size!r}")
    return group_size
