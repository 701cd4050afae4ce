"""Interval recurrences (issue 16.1, DESIGN §13.2): ``every 90m``, ``every 2h``, ``every 1d``, ``every 1h30m``.

An interval is elapsed time: slots are the first run plus whole multiples of it, in UTC arithmetic, so DST never
moves them (unlike a fixed-time cron). The grid is anchored at the occurrence a slot is asked after, which is always
a grid slot (the scheduled time of an occurrence), so ``next_after`` of a slot is the next slot.

One canonical text is stored in ``messages_in.recurrence``: ``every`` and the length in days, hours, minutes and
seconds, largest first, zero parts left out (``every 90m`` is stored ``every 1h30m``, Pynchy's ``3600000`` ms
``every 1h``): a ``sqlite3`` reader tells an interval by ``recurrence LIKE 'every %'``.

Errors are :class:`IntervalError`, a :class:`cron.CronError`, so every caller that ends or refuses a series on a
bad cron does the same for an interval.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

from schemas.cron import CronError

PREFIX = "every "
UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
MAX_S = 366 * 86_400  # longer waits are a calendar's job: a cron such as '0 9 1 1 *'
FORM = ("write 'every N' with units d, h, m, s, largest first (e.g. 'every 90m', 'every 2h', 'every 1h30m', "
        "'every 1d'), or a 5-field cron such as '0 9 * * *'")
_PART = re.compile(r"([0-9]{1,9})([dhms])", re.ASCII)
_LAST = datetime.max.replace(year=9999, month=12, day=30)


class IntervalError(CronError):
    """An interval that cannot be scheduled; the message is one line and says what is valid."""


def is_interval(expr: str) -> bool:
    """True for a recurrence written as an interval (valid or not): it is checked as one, never as a cron."""
    return isinstance(expr, str) and expr.strip().lower().startswith("every")


def seconds(expr: str) -> int:
    """The interval's length in seconds, or IntervalError saying what is wrong."""
    text = " ".join(expr.lower().split())
    body = text.removeprefix("every").replace(" ", "")
    if not body:
        raise IntervalError(f"interval {text[:40]!r} has no length; {FORM}")
    parts = _PART.findall(body)
    if "".join(n + u for n, u in parts) != body:
        raise IntervalError(f"interval {text[:40]!r} is not valid; {FORM}")
    units = [u for _, u in parts]
    order = [u for u, _ in UNITS]
    if len(set(units)) != len(units) or units != sorted(units, key=order.index):
        raise IntervalError(f"interval {text[:40]!r} repeats or reorders its units; {FORM}")
    total = sum(int(n) * dict(UNITS)[u] for n, u in parts)
    return _bounded(total, repr(text[:40]))


def _bounded(total: int, named: str) -> int:
    if total <= 0:
        raise IntervalError(f"interval {named} is zero; it must be at least 1 s (e.g. 'every 90m')")
    if total > MAX_S:
        raise IntervalError(f"interval {named} is longer than {MAX_S // 86_400} days; use a cron for yearly runs")
    return total


def text(total: int) -> str:
    """The canonical text of an interval of ``total`` seconds: ``every 1h30m``."""
    parts = []
    for unit, size in UNITS:
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return PREFIX + "".join(parts)


def validate(expr: str) -> str:
    """The canonical text of an interval, or IntervalError."""
    return text(seconds(expr))


def from_ms(ms: object) -> str:
    """Pynchy's form, milliseconds (``3600000`` = every hour), as the canonical text; whole seconds only."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        if not (isinstance(ms, str) and ms.strip().isdigit()):
            raise IntervalError(f"interval_ms must be a whole number of milliseconds, not {str(ms)[:40]!r}")
        ms = int(ms)
    if ms <= 0:
        raise IntervalError(f"interval_ms must be at least 1000 (1 s), not {ms}")
    whole, rest = divmod(ms, 1000)
    if rest:
        raise IntervalError(f"interval_ms {ms} is not a whole number of seconds (e.g. 3600000 = every hour)")
    return text(_bounded(whole, f"of {ms} ms"))


def next_after(expr: str, after: datetime) -> datetime:
    """The slot one interval after ``after`` (a slot of the grid); IntervalError past the calendar's end."""
    step = timedelta(seconds=seconds(expr))
    if after >= _LAST.replace(tzinfo=after.tzinfo) - step:
        raise IntervalError(f"interval {expr!r} has no slot before the end of the calendar (year 9999)")
    return after + step


def firings(expr: str, after: datetime) -> Iterator[datetime]:
    """The slots after ``after`` (endless, up to the calendar's end)."""
    while True:
        try:
            after = next_after(expr, after)
        except IntervalError:
            return
        yield after


def count_between(expr: str, after: datetime, until: datetime) -> tuple[int, datetime | None]:
    """(number of slots t with after < t <= until, the latest of them), in closed form."""
    step = timedelta(seconds=seconds(expr))
    if until <= after:
        return 0, None
    count = (until - after) // step
    return count, (after + count * step) if count else None


def min_gap_violation(expr: str, start: datetime, min_gap_s: float,
                      span: timedelta) -> tuple[datetime, datetime] | None:
    """The first two slots after ``start`` when the interval is shorter than ``min_gap_s`` (and both fit in
    ``span``), else None: every gap is the interval itself."""
    step = timedelta(seconds=seconds(expr))
    if step.total_seconds() >= min_gap_s or 2 * step > span:
        return None
    return start + step, start + 2 * step
