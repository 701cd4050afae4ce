"""Cron expressions: strict 5-field validation and firing times in a local zone (DESIGN §6.5).

croniter expands the fields into value sets; the firing instants are computed here over local
wall-clock days, because croniter's own iteration across DST transitions is unreliable. Two rules:

* a fixed-time job (hour field neither ``*`` nor a step) runs once per local date: a repeated
  (fall-back) wall time fires at its first occurrence, a wall time inside a spring-forward gap at
  the gap's end, and slots that land on one instant fire once;
* an hourly or step job follows elapsed time: every instant whose local wall time matches fires,
  so a repeated hour fires twice and a gap has no slots.

Day-of-month and day-of-week combine as croniter's default does: when both fields are restricted a
day matching either fires (the classic cron OR), otherwise both must match. A step such as ``*/2``
counts as restricted (Vixie cron would AND it); ``*`` anywhere in a list makes the field unrestricted.
``@annually`` and ``@midnight`` are accepted as the usual synonyms of ``@yearly`` and ``@daily``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from schemas import transitions
from schemas.times import localize


class CronError(ValueError):
    """A cron expression that cannot be scheduled; the message is one line and says what is valid."""


ALIASES: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_FORM = "use 5 fields 'minute hour day-of-month month day-of-week' (e.g. '0 9 * * 1-5') or @hourly, @daily, @weekly, "
_FORM += "@monthly, @yearly"
_SYNTAX = "numbers, *, ranges a-b, lists a,b and steps */n or a-b/n (L, W, #, ?, H and R are not supported)"
_ITEM = re.compile(r"(?:\*|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?", re.ASCII)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 exists, in leap years
_DAY = timedelta(days=1)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
# Feb 29 skips 2100, so a valid expression can wait 8 years; past this something is wrong.
_MAX_IDLE_DAYS = 11 * 366


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    top: int  # highest value accepted: day-of-week takes 7 as another Sunday
    names: tuple[str, ...] = ()

    def hint(self) -> str:
        names = f" or names {self.names[0]}-{self.names[-1]}" if self.names else ""
        return f"valid: {self.low}-{self.top}{names}"


_FIELDS = (
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day-of-month", 1, 31, 31),
    _Field("month", 1, 12, 12, _MONTHS),
    _Field("day-of-week", 0, 6, 7, _WEEKDAYS),
)


@dataclass(frozen=True)
class _Spec:
    text: str  # the normalized expression
    seconds: tuple[int, ...]  # the matching wall-clock times of a day, in seconds after midnight
    months: frozenset[int]
    doms: frozenset[int] | None  # None: unrestricted
    dows: frozenset[int] | None  # 0 = Sunday; None: unrestricted
    fixed: bool


def validate(expr: str) -> str:
    """The normalized expression (lower case, single spaces), or CronError saying what is wrong."""
    return _spec(expr).text


def is_fixed_time(expr: str) -> bool:
    """True when the hour field is neither ``*`` nor a step: the job runs once per local date."""
    return _spec(expr).fixed


def next_after(expr: str, after: datetime, zone: ZoneInfo) -> datetime:
    """The first firing strictly after ``after``, as aware UTC."""
    return next(firings(expr, after, zone))


def firings(expr: str, after: datetime, zone: ZoneInfo) -> Iterator[datetime]:
    """Successive firings strictly after ``after``, as aware UTC (endless)."""
    spec = _spec(expr)
    return (_utc(t) for t in _epochs(spec, zone, _aware(after)))


def slots_between(expr: str, after: datetime, until: datetime, zone: ZoneInfo) -> list[datetime]:
    """Every firing t with after < t <= until. Each slot is materialized: for long ranges prefer count_between."""
    spec = _spec(expr)
    return [_utc(t) for t in _epochs(spec, zone, _aware(after), _aware(until))]


def count_between(expr: str, after: datetime, until: datetime, zone: ZoneInfo) -> tuple[int, datetime | None]:
    """(number of firings t with after < t <= until, the latest of them), in bounded work however long the range
    (schemas/cron_count.py; imported here, not at the top, because it builds on this module)."""
    from schemas import cron_count

    return cron_count.count_between(expr, after, until, zone)


def min_gap_violation(
    expr: str, zone: ZoneInfo, start: datetime, min_gap_s: float, span: timedelta
) -> tuple[datetime, datetime] | None:
    """The first two consecutive firings in (start, start + span] less than ``min_gap_s`` apart, or None.

    On steady days (no offset change) the gaps are the day's own and the wrap to the next matching day; when
    those are wide enough only the days around offset transitions can hold a short gap, and only they are
    walked. Otherwise the walk stops at the first violation or after span / min_gap_s firings.
    """
    spec = _spec(expr)
    if min_gap_s <= 0:  # firings strictly increase, so no gap is below zero
        return None
    end = _aware(start) + span
    moves = transitions.of(zone)
    windows = [(start, end)]
    if moves is not None and _steady_gap(spec) >= min_gap_s:  # then min_gap_s <= 1 day: a pair is within a window
        around = moves.between(int(start.timestamp()) - 3 * 86400, int(end.timestamp()) + 3 * 86400)
        windows = [(max(start, _utc(t - 3 * 86400)), min(end, _utc(t + 3 * 86400))) for t in around]
    for lo, hi in windows:
        previous: int | None = None
        for t in _epochs(spec, zone, lo, hi):
            if previous is not None and t - previous < min_gap_s:
                return _utc(previous), _utc(t)
            previous = t
    return None


def _steady_gap(spec: _Spec) -> int:
    """The shortest gap between firings on steady days: within a day, or from a day's last to the next's first."""
    inner = [b - a for a, b in zip(spec.seconds, spec.seconds[1:], strict=False)]
    return min([*inner, 86400 - spec.seconds[-1] + spec.seconds[0]])


def _spec(expr: str) -> _Spec:
    if not isinstance(expr, str):
        raise CronError(f"cron expression must be text, not {type(expr).__name__}; {_FORM}")
    return _parse(" ".join(expr.lower().split()))


@lru_cache(maxsize=512)
def _parse(text: str) -> _Spec:
    fields = ALIASES.get(text, text).split()
    if text.startswith("@") and text not in ALIASES:
        raise CronError(f"unknown cron alias {text[:40]!r}; {_FORM}")
    if len(fields) != len(_FIELDS):
        extra = " (seconds and years are not supported)" if len(fields) in (6, 7) else ""
        count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
        raise CronError(f"cron {text[:80]!r} has {count}{extra}; {_FORM}")
    for field, value in zip(_FIELDS, fields, strict=True):
        for item in value.split(","):
            _check_item(field, item)
    from croniter import CroniterError, croniter  # imported here: a command that parses no cron goes without (~15 ms)

    try:
        expanded = croniter.expand(" ".join(fields))[0]
    except CroniterError as exc:  # a backstop: the grammar above should have refused it already
        reason = " ".join(str(exc).split())[:120]
        raise CronError(f"cron {text!r} is not valid ({reason}); {_FORM}") from None
    minutes, hours, doms, months, dows = (_values(field, raw) for field, raw in zip(_FIELDS, expanded, strict=True))
    spec = _Spec(
        text=text,
        seconds=tuple(h * 3600 + m * 60 for h in sorted(hours) for m in sorted(minutes)),
        months=frozenset(months),
        doms=None if "*" in expanded[2] else frozenset(doms),
        dows=None if "*" in expanded[4] else frozenset(dows),
        fixed=fields[1] != "*" and "/" not in fields[1],
    )
    # Only a day-of-month list under an unrestricted weekday can miss every month it names.
    if spec.doms is not None and spec.dows is None and not _some_day_exists(spec.months, spec.doms):
        raise CronError(
            f"cron {text!r} never fires: day-of-month {fields[2]!r} never occurs in month {fields[3]!r}; "
            "February has at most 29 days, April, June, September and November 30"
        )
    return spec


def _some_day_exists(months: frozenset[int], days: frozenset[int]) -> bool:
    return any(day <= _MONTH_DAYS[month - 1] for month in months for day in days)


def _check_item(field: _Field, item: str) -> None:
    match = _ITEM.fullmatch(item)
    if match is None:
        raise CronError(f"{field.name} field has {item[:40]!r}; use {_SYNTAX}")
    first, last, step = match.groups()
    if first is not None and last is not None:
        low, high = _value(field, first), _value(field, last)
        # croniter reads an equal range as the whole field and a reversed one as wrapping around.
        if low == high:
            raise CronError(f"{field.name} range {item!r} is a single value; write {first!r} alone")
        if low > high:
            split = f" (wrap around as {low}-{field.high},{field.low}-{high})" if low <= field.high else ""
            raise CronError(f"{field.name} range {item!r} runs backwards; ranges go low-high{split}")
    elif first is not None:
        _value(field, first)
    if step is not None and not 1 <= int(step) <= field.high - field.low:
        raise CronError(f"{field.name} step /{step} is out of range; valid steps: 1-{field.high - field.low}")


def _value(field: _Field, token: str) -> int:
    if token.isdigit() and field.low <= int(token) <= field.top:
        return int(token)
    if token in field.names:
        return field.names.index(token) + field.low
    unsupported = "" if token.isdigit() else " (L, W, #, ?, H and R are not supported)"
    raise CronError(f"{field.name} value {token[:40]!r} is not valid; {field.hint()}{unsupported}")


def _values(field: _Field, raw: Sequence[int | str]) -> list[int]:
    # croniter keeps '*' inside a list ('*,5' -> ['*', 5]): the field is unrestricted then.
    return list(range(field.low, field.high + 1)) if "*" in raw else [int(v) for v in raw]


def _aware(instant: datetime) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"cron times need an aware datetime, got naive {instant.isoformat()}")
    return instant


def _utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _epochs(spec: _Spec, zone: ZoneInfo, after: datetime, until: datetime | None = None) -> Iterator[int]:
    """Firing instants (epoch seconds, strictly increasing) in (after, until], day by local day."""
    after_s = after.timestamp()
    until_s = math.inf if until is None else until.timestamp()
    # The day before, because a fall-back at midnight repeats part of the previous local date.
    day = after.astimezone(zone).date() - _DAY
    previous, idle = after_s, 0
    while (day.toordinal() - _EPOCH_DAY - 2) * 86400 <= until_s:
        if day >= _LAST_DAY:  # datetime ends at 9999-12-31: say so, never an OverflowError
            if until is not None:  # a bounded walk just stops there
                return
            raise CronError(f"cron {spec.text!r} has no firing before the end of the calendar (year 9999)")
        if _day_matches(spec, day):
            for t in _day_epochs(spec, day, zone):
                if t > until_s:
                    return
                if t > previous:  # a gap's end can collect slots of two dates: fire it once
                    previous, idle = t, 0
                    yield t
        idle += 1
        if idle > _MAX_IDLE_DAYS:
            raise CronError(f"cron {spec.text!r} does not fire within {_MAX_IDLE_DAYS // 366} years; {_FORM}")
        day += _DAY


_LAST_DAY = date.max - 2 * _DAY


def _day_matches(spec: _Spec, day: date) -> bool:
    if day.month not in spec.months:
        return False
    dom = spec.doms is None or day.day in spec.doms
    dow = spec.dows is None or day.isoweekday() % 7 in spec.dows
    return (dom or dow) if spec.doms is not None and spec.dows is not None else (dom and dow)


def _day_epochs(spec: _Spec, day: date, zone: ZoneInfo) -> list[int]:
    offset = _steady_offset(day, zone)
    if offset is not None:
        base = (day.toordinal() - _EPOCH_DAY) * 86400 - offset
        return [base + s for s in spec.seconds]
    midnight = datetime(day.year, day.month, day.day)
    walls = [midnight + timedelta(seconds=s) for s in spec.seconds]
    if spec.fixed:
        return sorted({int(localize(wall, zone).timestamp()) for wall in walls})
    return sorted({t for wall in walls for t in _occurrences(wall, zone)})


@lru_cache(maxsize=4096)  # a sweep asks it of the same few days for every session's series (4 offsets a day)
def _steady_offset(day: date, zone: ZoneInfo) -> int | None:
    """The day's UTC offset in seconds when it has no transition, else None.

    tzdb (since 1900) has no two transitions within two days of each other, so one offset at both
    midnights, under both folds, means no transition in between.
    """
    midnights = (datetime(d.year, d.month, d.day, tzinfo=zone) for d in (day, day + _DAY))
    offsets = {m.replace(fold=fold).utcoffset() for m in midnights for fold in (0, 1)}
    if len(offsets) != 1:
        return None
    (offset,) = offsets
    return None if offset is None else int(offset.total_seconds())


def _occurrences(wall: datetime, zone: ZoneInfo) -> list[int]:
    """The instants showing ``wall`` in ``zone``: two in a repeated hour, none in a gap."""
    found = []
    for fold in (0, 1):
        t = int(wall.replace(tzinfo=zone, fold=fold).timestamp())
        if datetime.fromtimestamp(t, zone).replace(tzinfo=None) == wall:
            found.append(t)
    return found
