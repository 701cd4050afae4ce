"""The one stored time format (DESIGN §3) and the parser for times people and agents type."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from schemas.times import TimeFormatError, from_text, parse_user_time, to_text, truncate_ms

STORED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NEW_YORK = ZoneInfo("America/New_York")


def test_to_text_is_fixed_width_utc_with_milliseconds() -> None:
    assert to_text(datetime(2026, 6, 11, 9, 0, 0, 123456, tzinfo=UTC)) == "2026-06-11T09:00:00.123Z"
    assert to_text(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"
    assert to_text(datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == "2026-12-31T23:59:59.999Z"


def test_to_text_converts_other_offsets_to_utc() -> None:
    assert to_text(datetime(2026, 6, 11, 9, 0, tzinfo=NEW_YORK)) == "2026-06-11T13:00:00.000Z"
    assert to_text(datetime(2026, 6, 11, 9, 0, tzinfo=timezone(timedelta(hours=2)))) == "2026-06-11T07:00:00.000Z"


def test_round_trip_keeps_millisecond_precision() -> None:
    for instant in (
        datetime(2026, 6, 11, 9, 0, 0, 123456, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2099, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ):
        text = to_text(instant)
        assert STORED.match(text) and len(text) == 24
        back = from_text(text)
        assert back == truncate_ms(instant)
        assert back.tzinfo is UTC
        assert to_text(back) == text


def test_text_order_is_time_order() -> None:
    base = datetime(2026, 3, 8, 6, 59, 59, 999000, tzinfo=UTC)
    instants = [
        base + step
        for step in (
            timedelta(0),
            timedelta(milliseconds=1),
            timedelta(seconds=9),
            timedelta(seconds=10),
            timedelta(hours=17),
            timedelta(days=3),
            timedelta(days=300),
            timedelta(days=-1),
            timedelta(days=-3650),
        )
    ]
    texts = [to_text(i) for i in instants]
    assert sorted(texts) == [to_text(i) for i in sorted(instants)]
    assert len({len(t) for t in texts}) == 1


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(TimeFormatError):
        to_text(datetime(2026, 6, 11, 9, 0))


@pytest.mark.parametrize(
    "text",
    [
        "2026-06-11T09:00:00.000+00:00",  # offset instead of Z
        "2026-06-11T09:00:00Z",  # no milliseconds
        "2026-06-11T09:00:00.000",  # no Z
        "2026-06-11T09:00:00.000z",  # lower-case z
        "2026-06-11 09:00:00.000Z",  # space separator
        "2026-06-11T09:00:00.123456Z",  # microseconds
        "2026-06-11T09:00:00.000Z\n",  # trailing newline
        "2026-13-01T00:00:00.000Z",  # right shape, no such month
        "garbage",
        "",
    ],
)
def test_from_text_refuses_non_canonical_text(text: str) -> None:
    with pytest.raises(TimeFormatError):
        from_text(text)


def test_from_text_refuses_non_strings() -> None:
    with pytest.raises(TimeFormatError):
        from_text(None)  # type: ignore[arg-type]


def test_naive_user_time_is_wall_time_in_the_zone() -> None:
    assert parse_user_time("2026-06-11T09:00:00", NEW_YORK) == datetime(2026, 6, 11, 13, 0, tzinfo=UTC)
    assert parse_user_time("2026-01-11T09:00:00", NEW_YORK) == datetime(2026, 1, 11, 14, 0, tzinfo=UTC)
    assert parse_user_time("  2026-06-11T09:00  ", ZoneInfo("Asia/Kolkata")) == datetime(
        2026, 6, 11, 3, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("zone", "wall", "expected_utc"),
    [
        # New York springs forward 02:00 EST -> 03:00 EDT: 02:30 does not exist, 03:00 EDT = 07:00Z.
        ("America/New_York", "2026-03-08T02:30:00", datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
        ("America/New_York", "2026-03-08T02:00:00", datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
        # Berlin springs forward 02:00 CET -> 03:00 CEST: the gap's end is 01:00Z.
        ("Europe/Berlin", "2026-03-29T02:30:00", datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        # Lord Howe moves only 30 minutes (02:00 -> 02:30, +10:30 -> +11:00).
        ("Australia/Lord_Howe", "2026-10-04T02:10:00", datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),
    ],
)
def test_wall_time_in_a_spring_forward_gap_moves_to_the_gap_end(
    zone: str, wall: str, expected_utc: datetime
) -> None:
    assert parse_user_time(wall, ZoneInfo(zone)) == expected_utc


def test_just_after_the_gap_is_unchanged() -> None:
    assert parse_user_time("2026-03-08T03:00:00", NEW_YORK) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert parse_user_time("2026-03-08T01:59:59", NEW_YORK) == datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC)


def test_repeated_wall_time_means_its_first_occurrence() -> None:
    # New York falls back 02:00 EDT -> 01:00 EST: 01:30 happens at 05:30Z (EDT) and 06:30Z (EST).
    assert parse_user_time("2026-11-01T01:30:00", NEW_YORK) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert parse_user_time("2026-10-25T02:30:00", ZoneInfo("Europe/Berlin")) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("text", "expected_utc"),
    [
        ("2026-06-11T09:00:00Z", datetime(2026, 6, 11, 9, 0, tzinfo=UTC)),
        ("2026-06-11T09:00:00z", datetime(2026, 6, 11, 9, 0, tzinfo=UTC)),
        ("2026-06-11T09:00:00.250Z", datetime(2026, 6, 11, 9, 0, 0, 250000, tzinfo=UTC)),
        ("2026-06-11T09:00:00+02:00", datetime(2026, 6, 11, 7, 0, tzinfo=UTC)),
        ("2026-06-11T09:00:00-05:30", datetime(2026, 6, 11, 14, 30, tzinfo=UTC)),
        # An explicit offset is taken as given, even inside the zone's DST gap.
        ("2026-03-08T02:30:00-05:00", datetime(2026, 3, 8, 7, 30, tzinfo=UTC)),
    ],
)
def test_explicit_z_or_offset_is_honoured_whatever_the_zone(text: str, expected_utc: datetime) -> None:
    parsed = parse_user_time(text, NEW_YORK)
    assert parsed == expected_utc
    assert parsed.utcoffset() == timedelta(0)


def test_parsed_times_store_cleanly() -> None:
    assert to_text(parse_user_time("2026-06-11T09:00:00", NEW_YORK)) == "2026-06-11T13:00:00.000Z"


@pytest.mark.parametrize(
    "text", ["garbage", "", "   ", "tomorrow 9am", "2026-02-30T09:00:00", "09:00", "2026-06-11T25:00"]
)
def test_unreadable_user_time_is_a_one_line_time_format_error(text: str) -> None:
    with pytest.raises(TimeFormatError) as info:
        parse_user_time(text, NEW_YORK)
    message = str(info.value)
    assert message and "\n" not in message
    assert isinstance(info.value, ValueError)  # the CLI turns ValueErrors into one-line errors
