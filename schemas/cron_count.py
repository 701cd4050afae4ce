"""Counting cron firings over any range without enumerating them (the misfire bookkeeping, DESIGN §6.3, §12.7).

On a steady day (no offset change from its midnight to the next) a cron fires at exactly its matching wall
times, all at one offset. So over a range:

* each stretch of steady days contributes (matching dates) x (slots per date); matching dates are read from
  per-year tables keyed by the year's shape (leap year?, weekday of 1 January);
* the days around each offset transition, and the two ends of the range, are walked with ``cron._epochs``,
  the one definition of the DST rules; a walk whose shape (matching days, offsets, transitions relative to its
  first midnight) was seen before is looked up instead;
* after the zone's last explicit transition its yearly rule follows the calendar, so a whole year counts the
  same as any year of the same shape (remembered, at most 14 of them), and 400 years make a whole cycle of shapes.

Work is bounded by the zone's explicit transitions in the range (a few hundred at most), 14 year shapes and at
most 400 year lookups, never by the number of slots. The latest firing is found by walking back from the end
over growing windows.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from schemas import cron, transitions
from schemas.transitions import CYCLE_YEARS, Transitions

DAY_S = 86_400
SHORT_S = 4 * DAY_S  # a range this short is walked
_DAY = timedelta(days=1)
_walks: dict[tuple[object, ...], int] = {}  # walk shape -> firings; shapes repeat (most transitions look alike)
MAX_WALKS = 4096


def count_between(expr: str, after: datetime, until: datetime, zone: ZoneInfo) -> tuple[int, datetime | None]:
    """(number of firings t with after < t <= until, the latest of them)."""
    spec = cron._spec(expr)
    # Firings are whole seconds, so t > after and t <= until hold exactly for the floors.
    a, u = math.floor(cron._aware(after).timestamp()), math.floor(cron._aware(until).timestamp())
    if u <= a:
        return 0, None
    latest = _latest(spec, zone, a, u)
    if latest is None:
        return 0, None
    return _count(spec, zone, a, latest), cron._utc(latest)


def _walk(spec: cron._Spec, zone: ZoneInfo, a: int, u: int) -> list[int]:
    return list(cron._epochs(spec, zone, _dt(a), _dt(u))) if u > a else []


def _dt(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _latest(spec: cron._Spec, zone: ZoneInfo, a: int, u: int) -> int | None:
    """The last firing in (a, u]: windows back from u growing 8-fold, so a dense cron looks at hours only."""
    span = 2 * 3600
    while True:
        lo = max(a, u - span)
        found = _walk(spec, zone, lo, u)
        if found or lo == a:
            return found[-1] if found else None
        span *= 8


def _count(spec: cron._Spec, zone: ZoneInfo, a: int, u: int) -> int:
    found = transitions.of(zone)
    if found is None or u - a <= SHORT_S:
        return len(_walk(spec, zone, a, u))
    first = max(_local(a, zone).year + 1, found.periodic_from)
    last = _local(u, zone).year
    splits = {y: _split(zone, date(y, 1, 1)) for y in (first, last) if first < last}
    if len(splits) < 2 or None in splits.values():  # no whole periodic year (or a transition on 1 January)
        return _stretches(spec, zone, found, a, u)
    start, end = splits[first], splits[last]
    assert start is not None and end is not None
    return (_stretches(spec, zone, found, a, start) + _years(spec, zone, found, first, last)
            + _stretches(spec, zone, found, end, u))


def _years(spec: cron._Spec, zone: ZoneInfo, found: Transitions, first: int, end: int) -> int:
    """Firings in the local years [first, end), all after the zone's last explicit transition: each year's count
    depends only on its shape, and 400 years make a whole cycle of shapes."""
    cycles = (end - first) // CYCLE_YEARS
    total = cycles * sum(_year(spec, zone, found, y) for y in range(first, first + CYCLE_YEARS)) if cycles else 0
    return total + sum(_year(spec, zone, found, y) for y in range(first + cycles * CYCLE_YEARS, end))


def _year(spec: cron._Spec, zone: ZoneInfo, found: Transitions, year: int) -> int:
    key = ("year", spec.text, zone.key, _is_leap(year), date(year, 1, 1).weekday())
    if key not in _walks:
        start, end = _split(zone, date(year, 1, 1)), _split(zone, date(year + 1, 1, 1))
        if start is None or end is None:  # never in tzdb: count this year without remembering it
            return _stretches(spec, zone, found, _epoch_of(zone, year), _epoch_of(zone, year + 1))
        _remember(key, _stretches(spec, zone, found, start, end))
    return _walks[key]


def _epoch_of(zone: ZoneInfo, year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=zone).timestamp()) - 1


def _remember(key: tuple[object, ...], value: int) -> None:
    if len(_walks) >= MAX_WALKS:
        _walks.clear()
    _walks[key] = value


def _local(epoch: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(epoch, zone).date()


def _naive(day: date) -> int:
    return (day.toordinal() - cron._EPOCH_DAY) * DAY_S


def _split(zone: ZoneInfo, day: date) -> int | None:
    """The instant just before ``day``'s midnight when the day is steady (so nothing of earlier days lies after it)."""
    offset = cron._steady_offset(day, zone)
    return None if offset is None else _naive(day) - offset - 1


def _stretches(spec: cron._Spec, zone: ZoneInfo, found: Transitions, a: int, u: int) -> int:
    """Firings in (a, u]: the two ends and each transition's days walked, the steady days between counted."""
    first, last = _local(a, zone), _local(u, zone)
    marks = [(first - _DAY, first + _DAY), (last - _DAY, last + _DAY)]
    for t in found.between(a, u + 3 * DAY_S):
        before, after = _local(t - 1, zone), _local(t, zone)
        marks.append((min(before, after) - _DAY, max(before, after) + _DAY))
    total, done, cursor = 0, first, a  # days before ``done`` and instants up to ``cursor`` are counted
    for lo, hi in _merged(zone, marks):
        if lo > last:
            break
        if lo > done:
            total += matching_days(spec, done, lo) * len(spec.seconds)
            split = _split(zone, lo)  # lo is steady (see _merged)
            assert split is not None
            cursor = split
        stop = u if hi >= last else _split(zone, hi + _DAY)
        assert stop is not None
        total += _walk_counted(spec, zone, found, lo, hi, cursor, stop, interior=cursor != a and stop != u)
        done, cursor = hi + _DAY, stop
    return total


def _merged(zone: ZoneInfo, marks: list[tuple[date, date]]) -> list[tuple[date, date]]:
    """Day intervals to walk, widened until the day before each and the day after each are steady, then merged."""
    widened = []
    for lo, hi in marks:
        while cron._steady_offset(lo, zone) is None:
            lo -= _DAY
        while cron._steady_offset(hi + _DAY, zone) is None:
            hi += _DAY
        widened.append((lo, hi))
    merged: list[tuple[date, date]] = []
    for lo, hi in sorted(widened):
        if merged and lo <= merged[-1][1] + _DAY:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _walk_counted(spec: cron._Spec, zone: ZoneInfo, found: Transitions, lo: date, hi: date, a: int, u: int,
                  interior: bool) -> int:
    """Firings in (a, u] on days lo..hi, by walking; an interior walk is keyed by its shape and remembered."""
    if not interior:
        return len(_walk(spec, zone, a, u))
    base = _naive(lo)
    days = tuple(cron._day_matches(spec, lo + i * _DAY) for i in range((hi - lo).days + 1))
    moves = tuple((t - base, _offset(t, zone)) for t in found.between(a, u + 1))
    key = (spec.text, days, base - a, moves)
    if key not in _walks:
        _remember(key, len(_walk(spec, zone, a, u)))
    return _walks[key]


def _offset(epoch: int, zone: ZoneInfo) -> int:
    offset = datetime.fromtimestamp(epoch, zone).utcoffset()
    return 0 if offset is None else int(offset.total_seconds())


def matching_days(spec: cron._Spec, first: date, end: date) -> int:
    """How many dates in [first, end) the cron's date fields match."""
    if end <= first:
        return 0
    if first.year == end.year:
        return _before(spec, end) - _before(spec, first)
    total = _year_total(spec, first.year) - _before(spec, first) + _before(spec, end)
    years = range(first.year + 1, end.year)
    cycles = len(years) // CYCLE_YEARS  # the Gregorian calendar repeats every 400 years
    if cycles:
        total += cycles * sum(_year_total(spec, y) for y in range(1, CYCLE_YEARS + 1))
    return total + sum(_year_total(spec, y) for y in years[cycles * CYCLE_YEARS:])


def _before(spec: cron._Spec, day: date) -> int:
    """Matching dates of ``day``'s year before ``day``."""
    return _year_table(spec.text, _is_leap(day.year), date(day.year, 1, 1).weekday())[day.timetuple().tm_yday - 1]


def _year_total(spec: cron._Spec, year: int) -> int:
    return _year_table(spec.text, _is_leap(year), date(year, 1, 1).weekday())[-1]


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@lru_cache(maxsize=256)
def _year_table(text: str, leap: bool, weekday: int) -> tuple[int, ...]:
    """Running count of matching dates at each day of a year of this shape (the last entry: the year's total)."""
    year = next(y for y in range(2000, 2028) if _is_leap(y) == leap and date(y, 1, 1).weekday() == weekday)
    spec, day, counts = cron._parse(text), date(year, 1, 1), [0]
    while day.year == year:
        counts.append(counts[-1] + cron._day_matches(spec, day))
        day += _DAY
    return tuple(counts)
