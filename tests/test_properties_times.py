"""Bad input, property-based (issue 7): timestamps. A time a person types is a one-line ``TimeFormatError`` or
an aware UTC instant that round-trips through the stored text; stored text is read back exactly or refused;
the calendar's ends, non-ASCII digits and short years are refused or written fixed-width, and a bad time in a
request never wedges the session.

Derandomized settings and the shared strategies: tests/property_kit.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit import World
from property_kit import T0, ZONE, ZONES, all_instants, iso_texts, one_line, props

from schemas import ids
from schemas.times import TimeFormatError, from_text, parse_user_time, to_text, truncate_ms

STORED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")  # ASCII digits only

user_times = iso_texts(all_instants) | iso_texts() | st.text(max_size=30) | st.from_regex(
    r"[0-9]{4}-[01][0-9]-[0-3][0-9]([T ][0-2][0-9](:[0-5][0-9](:[0-6][0-9](\.[0-9]{1,6})?)?)?)?"
    r"(Z|z|[+-][01][0-9]:?[0-5][0-9])?", fullmatch=True)


@props(300)
@given(text=user_times, zone=st.sampled_from(ZONES))
def test_user_times_are_a_one_line_error_or_an_aware_utc_instant_that_round_trips(text: str, zone: str) -> None:
    try:
        parsed = parse_user_time(text, ZoneInfo(zone))
    except TimeFormatError as exc:
        one_line(str(exc))
        return
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    stored = to_text(parsed)
    assert STORED.fullmatch(stored), stored
    assert from_text(stored) == truncate_ms(parsed)
    given_as = datetime.fromisoformat(text.strip()[:-1] + "+00:00" if text.strip()[-1:] in "zZ" else text.strip())
    if given_as.tzinfo is not None:
        assert parsed == given_as
    else:  # wall time in the zone; a wall time inside a spring-forward gap moves to the gap's end
        wall = parsed.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        assert given_as <= wall <= given_as + timedelta(days=1), (text, zone, wall)


@props(200)
@given(text=st.text(max_size=30) | st.builds(to_text, st.datetimes(timezones=st.just(UTC)))
       | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", fullmatch=True))
def test_stored_times_are_a_one_line_error_or_read_back_exactly(text: str) -> None:
    try:
        instant = from_text(text)
    except TimeFormatError as exc:
        one_line(str(exc))
        return
    assert instant.tzinfo is not None and instant.utcoffset() == timedelta(0)
    assert to_text(instant) == text


@pytest.mark.parametrize(("text", "zone"), [("0001-01-01T00:00:00+01:00", "UTC"), ("0001-01-01T00:00:00", "Asia/Tokyo"),
                                            ("9999-12-31T23:00:00", ZONE)])
def test_times_past_the_calendars_ends_are_a_time_format_error(text: str, zone: str) -> None:
    """Was an OverflowError from astimezone()/localize() within a day of year 1 or 9999."""
    with pytest.raises(TimeFormatError):
        parse_user_time(text, ZoneInfo(zone))


def test_stored_text_is_fixed_width_for_every_year() -> None:
    """Was '5-01-01T…' from strftime('%Y'), which from_text then refused. (Since issue 11 no one may give a time
    before 1970, but stored text still reads every year.)"""
    instant = datetime(5, 1, 1, tzinfo=UTC)
    assert STORED.fullmatch(to_text(instant)) and from_text(to_text(instant)) == instant


def test_stored_times_have_ascii_digits_only() -> None:
    """\\d matched any Unicode digit, so such a time passed validation and then broke the DB's GLOB CHECK."""
    with pytest.raises(TimeFormatError):
        from_text("٢٠٢٦-06-11T09:00:00.000Z")


def test_ids_have_ascii_digits_only() -> None:
    assert not ids.is_id("task-١٧٨١١٨٢٨٠٠٠٠٠-aaaaaa", "task")


def test_a_time_with_non_ascii_digits_never_wedges_the_session(tmp_path: Path) -> None:
    """Was: the request passed requests.parse, broke a CHECK, and the IntegrityError (not caught by actions.apply)
    failed the session on every tick forever, its acks, clones and replies with it."""
    world = World(tmp_path)
    world.request(T0, {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x",
                       "processAfter": "٢٠٢٦-06-11T09:00:00.000Z"})
    sweeper = world.sweeper()
    assert sweeper.tick(T0).errors == 0
    world.request(T0, {"action": "schedule_task", "taskId": "task-1781182800000-bbbbbb", "prompt": "y"})
    assert sweeper.tick(T0 + timedelta(seconds=1)).applied == 1
