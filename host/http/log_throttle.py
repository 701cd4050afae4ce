"""Log lines that a flood or an exhausted machine would repeat without end (out of file descriptors, disk full,
connections over the cap, a session's refused model calls): at most ``lines`` lines (one unless told) per kind per
interval, the next one saying how many were left out meanwhile."""

from __future__ import annotations

import logging
from typing import Any

INTERVAL_S = 60.0


class LogThrottle:
    """One logger's repeated troubles. ``now`` is a monotonic reading (the event loop's ``time()``)."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S, lines: int = 1) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.lines = lines
        self._intervals: dict[str, tuple[float, int]] = {}  # action -> (when its interval began, lines logged in it)
        self._left_out: dict[str, int] = {}

    def log(self, level: int, action: str, now: float, message: str, *args: object, exc_info: bool = False,
            **extra: Any) -> bool:
        """Log unless this action's interval (begun by the first line logged after the last one ran out) already
        holds ``lines`` lines; True when it was logged."""
        began, count = self._intervals.get(action, (now, 0))
        if now - began >= self.interval_s:
            began, count = now, 0
        if count >= self.lines:
            self._left_out[action] = self._left_out.get(action, 0) + 1
            return False
        self._intervals[action] = (began, count + 1)
        left_out = self._left_out.pop(action, 0)
        suffix = f" ({left_out} more like it since the last one, not logged)" if left_out else ""
        self.logger.log(level, message + suffix, *args, exc_info=exc_info,
                        extra={"action": action, "left_out": left_out, **extra})
        return True
