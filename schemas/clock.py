"""The one module that reads the wall clock or sleeps; everything else is handed ``now``, or a ``Clock``: this
module itself (the real one) or a test's fake."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

from schemas.times import truncate_ms


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


def now() -> datetime:
    """The current instant, aware UTC, at the stored (millisecond) precision."""
    return truncate_ms(datetime.now(UTC))


async def sleep(seconds: float) -> None:
    import asyncio  # here: a command that only reads the clock (``ncl tasks list``'s LEFT) need not load asyncio

    await asyncio.sleep(max(0.0, seconds))


def filesystem_ns() -> int:
    """The real wall clock in ns, to compare with file mtimes (which a fake scheduling clock cannot move)."""
    return time.time_ns()
