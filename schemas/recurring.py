"""A session task's recurrence: a cron expression (DESIGN §6.5) or an interval (``every 90m``, DESIGN §13.2).

The scheduling rules (first run, clone, misfire, minimum interval, next runs) ask this module and never which kind
a recurrence is; only a zone change treats them differently (``follows_zone``). Project scheduled tasks stay
cron-only and use :mod:`schemas.cron` directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from schemas import cron, interval
from schemas.cron import CronError as CronError

_HINT = "or an interval: 'every 90m', 'every 1h30m'"


def validate(expr: str) -> str:
    """The canonical text of a cron expression or an interval, or CronError saying what is wrong in one line."""
    if interval.is_interval(expr):
        return interval.validate(expr)
    if isinstance(expr, str) and expr.strip().isdigit():  # Pynchy's milliseconds typed as a recurrence
        raise CronError(f"recurrence {expr.strip()[:40]!r} is a bare number; an interval is written 'every 1h' "
                        "(units d, h, m, s), or given in milliseconds as interval_ms (--interval-ms)")
    try:
        return cron.validate(expr)
    except CronError as exc:
        message = str(exc)
        raise CronError(f"{message}, {_HINT}" if message.endswith(cron._FORM) else message) from None


def follows_zone(expr: str) -> bool:
    """A cron is wall time in TZ (re-planned when TZ changes); an interval is elapsed time and keeps its instants."""
    return not interval.is_interval(expr)


def next_after(expr: str, after: datetime, zone: ZoneInfo) -> datetime:
    """The first slot strictly after ``after`` (for an interval: ``after`` is a grid slot, the next is one step on)."""
    return interval.next_after(expr, after) if interval.is_interval(expr) else cron.next_after(expr, after, zone)


def firings(expr: str, after: datetime, zone: ZoneInfo) -> Iterator[datetime]:
    return interval.firings(expr, after) if interval.is_interval(expr) else cron.firings(expr, after, zone)


def count_between(expr: str, after: datetime, until: datetime, zone: ZoneInfo) -> tuple[int, datetime | None]:
    """(number of slots t with after < t <= until, the latest of them), in bounded work."""
    if interval.is_interval(expr):
        return interval.count_between(expr, after, until)
    return cron.count_between(expr, after, until, zone)


def min_gap_violation(expr: str, zone: ZoneInfo, start: datetime, min_gap_s: float,
                      span: timedelta) -> tuple[datetime, datetime] | None:
    if interval.is_interval(expr):
        return interval.min_gap_violation(expr, start, min_gap_s, span)
    return cron.min_gap_violation(expr, zone, start, min_gap_s, span)
