"""Log lines that a flood or an exhausted machine would repeat without end (out of file descriptors, disk full,
connections over the cap): at most one line per kind per interval, saying how many were left out meanwhile."""

from __future__ import annotations

import logging
from typing import Any

INTERVAL_S = 60.0


class LogThrottle:
    """One logger's repeated troubles. ``now`` is a monotonic reading (the event loop's ``time()``)."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}  # action -> when it was last logged
        self._left_out: dict[str, int] = {}

    def log(self, level: int, action: str, now: float, message: str, *args: object, exc_info: bool = False,
            **extra: Any) -> bool:
        """Log unless this action was logged less than ``interval_s`` ago; True when it was logged."""
        last = self._last.get(action)
        if last is not None and now - last < self.interval_s:
            self._left_out[action] = self._left_out.get(action, 0) + 1
            return False
        self._last[action] = now
        left_out = self._left_out.pop(action, 0)
        suffix = f" ({left_out} more like it since the last one, not logged)" if left_out else ""
        self.logger.log(level, message + suffix, *args, exc_info=exc_info,
                        extra={"action": action, "left_out": left_out, **extra})
        return True
