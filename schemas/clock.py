"""The one module that reads the wall clock or sleeps; everything else is handed ``now``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from schemas.times import truncate_ms


def now() -> datetime:
    """The current instant, aware UTC, at the stored (millisecond) precision."""
    return truncate_ms(datetime.now(UTC))


async def sleep(seconds: float) -> None:
    await asyncio.sleep(max(0.0, seconds))


def filesystem_ns() -> int:
    """The real wall clock in ns, to compare with file mtimes (which a fake scheduling clock cannot move)."""
    return time.time_ns()
