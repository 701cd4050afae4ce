"""Bad input, property-based (issue 7): cron strings. Any text, in any zone, after any instant, is either a
one-line ``CronError`` or a stable normal form whose firings are aware UTC instants, strictly increasing;
anything that is not text is refused, and so is a firing past the end of the calendar.

Derandomized settings and the shared strategies: tests/property_kit.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from property_kit import ZONE, ZONES, cron_texts, json_values, one_line, props

from schemas import cron


@props(300)
@given(expr=cron_texts, zone=st.sampled_from(ZONES),
       after=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_cron_is_a_one_line_error_or_strictly_increasing_aware_utc_firings(expr: str, zone: str,
                                                                           after: datetime) -> None:
    try:
        normal = cron.validate(expr)
    except cron.CronError as exc:
        one_line(str(exc))
        return
    assert cron.validate(normal) == normal  # the normalized text is itself valid and stable
    first = cron.next_after(normal, after, ZoneInfo(zone))
    previous = after
    for _, firing in zip(range(6), cron.firings(normal, after, ZoneInfo(zone)), strict=False):
        assert firing.tzinfo is not None and firing.utcoffset() == timedelta(0)
        assert firing > previous, (normal, zone, after, previous, firing)
        previous = firing
    assert first == next(cron.firings(normal, after, ZoneInfo(zone)))


@props(50)
@given(value=json_values.filter(lambda v: not isinstance(v, str)))
def test_cron_refuses_what_is_not_text(value: Any) -> None:
    with pytest.raises(cron.CronError) as refused:
        cron.validate(value)
    one_line(str(refused.value))


def test_cron_at_the_end_of_the_calendar_is_a_cron_error() -> None:
    """Was an OverflowError from `day + _DAY` past 9999-12-31 (and so a crash of schedule_task and list_tasks)."""
    with pytest.raises(cron.CronError):
        cron.next_after("0 9 * * *", datetime(9999, 12, 31, 12, tzinfo=UTC), ZoneInfo(ZONE))
