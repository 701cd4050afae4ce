"""The one stored time format and the parsers at its edges.

Every instant in a DB is UTC text ``YYYY-MM-DDTHH:MM:SS.fffZ``: fixed width, so text order is time
order. Inside the code instants are aware UTC datetimes; text exists only at the DB and CLI edges.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

_STORED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")  # ASCII digits only
# The SQLite GLOB twin of _STORED, used in CHECK constraints so no other text can be written.
STORED_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z"


def stored_instant(column: str, nullable: bool = False) -> str:
    """A DDL column of stored instants: TEXT CHECKed against ``STORED_GLOB``."""
    check = f"{column} GLOB '{STORED_GLOB}'"
    if nullable:
        return f"{column} TEXT CHECK ({column} IS NULL OR {check})"
    return f"{column} TEXT NOT NULL CHECK ({check})"

# The span a time given from outside (a person, an agent, a runner's request) may fall in. Before 1970 nothing
# can be due for the first time, and a series from year 1 would make every sweep reckon two thousand years of
# slots; past 9999 there is no stored text.
FIRST = datetime(1970, 1, 1, tzinfo=UTC)
_SPAN = "give a time from 1970-01-01 to 9999-12-31"
_LONG_YEAR = re.compile(r"[+-]?[0-9]{5,}-")


class TimeFormatError(ValueError):
    """A time text that is not acceptable where it was given."""


def to_text(instant: datetime) -> str:
    """Aware datetime -> stored UTC text. Naive datetimes are a programming error."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise TimeFormatError(f"refusing to store naive datetime {instant.isoformat()}")
    utc = instant.astimezone(UTC)
    # Not strftime("%Y"): it writes year 5 as "5", and the fixed width is what makes text order time order.
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}."
            f"{utc.microsecond // 1000:03d}Z")


def from_text(text: str) -> datetime:
    """Stored UTC text -> aware UTC datetime; anything else is rejected."""
    if not isinstance(text, str) or not _STORED.fullmatch(text):
        raise TimeFormatError(f"not a stored UTC time (YYYY-MM-DDTHH:MM:SS.fffZ): {text!r}")
    try:  # the format is checked above: fromisoformat reads it 50x faster than strptime (a clone parses ~6)
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimeFormatError(f"not a valid time: {text!r}") from exc


def accept_text(text: str) -> datetime:
    """Stored-format text given from outside (a runner's request) -> aware UTC; refused before 1970."""
    return _in_span(from_text(text), text)


def _in_span(instant: datetime, text: str) -> datetime:
    if instant < FIRST:
        raise TimeFormatError(f"time {text!r} is before 1970-01-01T00:00:00Z; {_SPAN}")
    return instant


def truncate_ms(instant: datetime) -> datetime:
    """Drop sub-millisecond precision, so a datetime equals its stored round trip."""
    return instant - timedelta(microseconds=instant.microsecond % 1000)


def localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """Wall-clock time in ``zone`` -> aware UTC.

    A repeated (fall-back) wall time means its first occurrence; a wall time inside a
    spring-forward gap does not exist and moves to the first valid instant after it, the gap's end.
    """
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # In a gap, fold=1 lands before the transition and fold=0 after it: bisect to the transition.
    lo = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(first.timestamp()) + 1
    before = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def parse_user_time(text: str, zone: ZoneInfo) -> datetime:
    """A time typed by a person or an agent -> aware UTC, from 1970 to the end of 9999.

    Accepts ISO 8601 with ``Z`` or an offset (taken as given) or without one (wall time in ``zone``).
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        raise TimeFormatError("empty time; use ISO 8601 such as 2026-06-11T09:00:00")
    if _LONG_YEAR.match(raw):
        raise TimeFormatError(f"time {raw!r} is after 9999-12-31; {_SPAN}")
    try:
        parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in "zZ" else raw)
    except ValueError:
        raise TimeFormatError(
            f"cannot read time {raw!r}; use ISO 8601 such as 2026-06-11T09:00:00 "
            "(local to TZ) or 2026-06-11T13:00:00Z"
        ) from None
    try:
        instant = localize(parsed, zone) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (OverflowError, ValueError):  # within a day of year 1 or 9999: no UTC instant to store
        edge = "before 1970-01-01" if parsed.year < FIRST.year else "after 9999-12-31T23:59:59.999Z"
        raise TimeFormatError(f"time {raw!r} is {edge}; {_SPAN}") from None
    return _in_span(instant, raw)
