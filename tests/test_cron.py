"""Cron validation and firing times (DESIGN §6.5): strict 5 fields, local wall time, DST rules."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from schemas.cron import (
    ALIASES,
    CronError,
    count_between,
    firings,
    is_fixed_time,
    min_gap_violation,
    next_after,
    slots_between,
    validate,
)
from schemas.times import from_text, to_text

NEW_YORK = ZoneInfo("America/New_York")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
KOLKATA = ZoneInfo("Asia/Kolkata")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # DST moves the clock by 30 minutes
YEAR = timedelta(days=365)


def utc(text: str) -> datetime:
    return from_text(text)


def texts(instants: list[datetime]) -> list[str]:
    return [to_text(t) for t in instants]


def local_day(expr: str, zone: ZoneInfo, day: str) -> list[str]:
    """The firings whose local date is ``day`` (YYYY-MM-DD)."""
    start = datetime.fromisoformat(day).replace(tzinfo=zone)
    after = start.astimezone(UTC) - timedelta(hours=3)
    slots = slots_between(expr, after, after + timedelta(hours=30), zone)
    return [to_text(t) for t in slots if t.astimezone(zone).date() == start.date()]


# --- next_after and the zone --------------------------------------------------------------------


def test_next_after_a_firing_is_the_next_day() -> None:
    nxt = next_after("0 9 * * *", utc("2026-05-18T13:00:00.000Z"), NEW_YORK)
    assert to_text(nxt) == "2026-05-19T13:00:00.000Z"
    assert nxt.tzinfo is UTC and nxt.second == 0 and nxt.microsecond == 0


def test_next_after_is_strictly_after_and_accepts_any_aware_input() -> None:
    just_before = datetime(2026, 5, 18, 8, 59, 59, 999000, tzinfo=NEW_YORK)
    assert to_text(next_after("0 9 * * *", just_before, NEW_YORK)) == "2026-05-18T13:00:00.000Z"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_after("0 9 * * *", datetime(2026, 5, 18, 9), NEW_YORK)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("2026-01-15T00:00:00.000Z", "2026-01-15T17:00:00.000Z"),
        ("2026-07-15T00:00:00.000Z", "2026-07-15T16:00:00.000Z"),
    ],
)
def test_los_angeles_nine_am_follows_its_offset(after: str, expected: str) -> None:
    assert to_text(next_after("0 9 * * *", utc(after), LOS_ANGELES)) == expected


def test_machine_zone_does_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert time.localtime(0).tm_hour == 9  # the process zone really is Tokyo now
        assert to_text(next_after("0 9 * * *", utc("2026-01-15T00:00:00.000Z"), LOS_ANGELES)) == (
            "2026-01-15T17:00:00.000Z"
        )
        assert local_day("30 1 * * *", NEW_YORK, "2026-11-01") == ["2026-11-01T05:30:00.000Z"]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_half_hour_offset_zone() -> None:
    assert to_text(next_after("0 9 * * *", utc("2026-01-01T00:00:00.000Z"), KOLKATA)) == "2026-01-01T03:30:00.000Z"
    hourly = slots_between("0 * * * *", utc("2026-01-01T00:00:00.000Z"), utc("2026-01-01T02:00:00.000Z"), KOLKATA)
    assert texts(hourly) == ["2026-01-01T00:30:00.000Z", "2026-01-01T01:30:00.000Z"]


# --- DST: fixed-time jobs run once per local date ---------------------------------------------


def test_fixed_time_in_repeated_hour_fires_once_at_first_occurrence() -> None:
    assert local_day("30 1 * * *", NEW_YORK, "2026-11-01") == ["2026-11-01T05:30:00.000Z"]  # 01:30 EDT


def test_fixed_time_in_gap_fires_at_gap_end_once() -> None:
    assert local_day("30 2 * * *", NEW_YORK, "2026-03-08") == ["2026-03-08T07:00:00.000Z"]  # 03:00 EDT
    assert local_day("0,30 2 * * *", NEW_YORK, "2026-03-08") == ["2026-03-08T07:00:00.000Z"]
    # 02:00, 02:30 and 03:00 all land on 03:00 EDT: one firing there, never two at one instant.
    assert local_day("0,30 2,3 * * *", NEW_YORK, "2026-03-08") == [
        "2026-03-08T07:00:00.000Z",
        "2026-03-08T07:30:00.000Z",
    ]


def test_fixed_hours_across_both_transitions() -> None:
    # Once per local date: on fall-back day 01:00 (EDT) and 02:00 (EST) are two hours apart,
    # on spring-forward day 01:00 (EST) and 02:00 -> 03:00 (EDT) one hour, as on other days.
    assert local_day("0 1,2 * * *", NEW_YORK, "2026-11-01") == ["2026-11-01T05:00:00.000Z", "2026-11-01T07:00:00.000Z"]
    assert local_day("0 1,2 * * *", NEW_YORK, "2026-03-08") == ["2026-03-08T06:00:00.000Z", "2026-03-08T07:00:00.000Z"]


def test_fixed_time_with_thirty_minute_dst() -> None:
    assert local_day("15 2 * * *", LORD_HOWE, "2026-10-04") == ["2026-10-03T15:30:00.000Z"]  # 02:30 +11
    assert local_day("45 1 * * *", LORD_HOWE, "2026-04-05") == ["2026-04-04T14:45:00.000Z"]  # first 01:45


# --- DST: hourly and step jobs follow elapsed time -------------------------------------------


def test_hourly_fires_in_both_repeated_hours() -> None:
    slots = slots_between("0 * * * *", utc("2026-11-01T04:30:00.000Z"), utc("2026-11-01T07:30:00.000Z"), NEW_YORK)
    assert texts(slots) == ["2026-11-01T05:00:00.000Z", "2026-11-01T06:00:00.000Z", "2026-11-01T07:00:00.000Z"]
    assert [t.astimezone(NEW_YORK).strftime("%H:%M%z") for t in slots] == ["01:00-0400", "01:00-0500", "02:00-0500"]


def test_hourly_has_no_slot_in_the_gap() -> None:
    slots = slots_between("0 * * * *", utc("2026-03-08T05:30:00.000Z"), utc("2026-03-08T08:30:00.000Z"), NEW_YORK)
    assert [t.astimezone(NEW_YORK).strftime("%H:%M") for t in slots] == ["01:00", "03:00", "04:00"]


@pytest.mark.parametrize("expr", ["*/30 * * * *", "0,30 */1 * * *"])
def test_steps_keep_elapsed_spacing_through_fall_back(expr: str) -> None:
    slots = slots_between(expr, utc("2026-11-01T04:45:00.000Z"), utc("2026-11-01T07:15:00.000Z"), NEW_YORK)
    assert [b - a for a, b in pairwise(slots)] == [timedelta(minutes=30)] * 4


def test_thirty_minute_dst_repeats_only_the_repeated_half_hour() -> None:
    fall = slots_between("*/15 * * * *", utc("2026-04-04T14:15:00.000Z"), utc("2026-04-04T15:30:00.000Z"), LORD_HOWE)
    assert [t.astimezone(LORD_HOWE).strftime("%H:%M") for t in fall] == ["01:30", "01:45", "01:30", "01:45", "02:00"]
    hourly = slots_between("0 * * * *", utc("2026-04-04T13:30:00.000Z"), utc("2026-04-04T16:00:00.000Z"), LORD_HOWE)
    assert texts(hourly) == ["2026-04-04T14:00:00.000Z", "2026-04-04T15:30:00.000Z"]  # 01:00 +11, 02:00 +10:30
    spring = slots_between("*/15 * * * *", utc("2026-10-03T14:50:00.000Z"), utc("2026-10-03T15:45:00.000Z"), LORD_HOWE)
    assert [t.astimezone(LORD_HOWE).strftime("%H:%M") for t in spring] == ["01:30", "01:45", "02:30", "02:45"]


# --- the day fields ---------------------------------------------------------------------------


def test_day_of_month_and_day_of_week_are_or_when_both_restricted() -> None:
    february = (utc("2026-02-01T00:00:00.000Z"), utc("2026-03-01T00:00:00.000Z"), ZoneInfo("UTC"))
    days = [t.day for t in slots_between("0 12 10 * 5", *february)]
    assert days == [6, 10, 13, 20, 27]  # the Fridays and Tuesday the 10th
    only_fridays = slots_between(
        "0 12 * * 5", utc("2026-02-01T00:00:00.000Z"), utc("2026-03-01T00:00:00.000Z"), KOLKATA
    )
    assert len(only_fridays) == 4
    # OR: the 31st never comes in February, but its Mondays do.
    assert (
        to_text(next_after("0 0 31 2 1", utc("2026-01-01T00:00:00.000Z"), ZoneInfo("UTC")))
        == "2026-02-02T00:00:00.000Z"
    )


def test_february_29_waits_for_a_leap_year() -> None:
    assert to_text(next_after("0 0 29 2 *", utc("2097-01-01T00:00:00.000Z"), ZoneInfo("UTC"))) == (
        "2104-02-29T00:00:00.000Z"  # 2100 is not a leap year
    )


CROSS_CHECK = [
    "*/7 * * * *",
    "5/20 3-17/4 * * *",
    "0 9 * * 1-5",
    "15 14 1 * *",
    "0 0 13 * 5",
    "0 0 */2 * 1",
    "0 12 1-7 jan,jul sun",
    "30 4 * feb-apr *",
    "0 0 1,15 * 3",
    "0 22 * * 0,6",
    "45 23 31 * *",
    "0 */3 29 2 *",
    "*,5 0 * * *",
    "59 23 * * 7",
    "0 0 1-31 * 1",
    "10-50/15 8 * * mon-fri",
]


@pytest.mark.parametrize("zone", [ZoneInfo("UTC"), KOLKATA], ids=str)
@pytest.mark.parametrize("expr", CROSS_CHECK)
def test_agrees_with_croniter_where_there_is_no_dst(expr: str, zone: ZoneInfo) -> None:
    for start in (utc("2026-01-01T00:00:00.000Z"), utc("2027-06-30T13:37:21.123Z")):
        theirs = croniter(expr, start.astimezone(zone))
        ours = firings(expr, start, zone)
        for _ in range(40):
            assert next(ours) == theirs.get_next(datetime).astimezone(UTC)


# --- ranges of slots ---------------------------------------------------------------------------


def test_firings_are_successive_next_after() -> None:
    ours = firings("*/20 1-2 * * *", utc("2026-11-01T00:00:00.000Z"), NEW_YORK)
    chain = [next_after("*/20 1-2 * * *", utc("2026-11-01T00:00:00.000Z"), NEW_YORK)]
    for _ in range(11):
        chain.append(next_after("*/20 1-2 * * *", chain[-1], NEW_YORK))
    assert [next(ours) for _ in range(12)] == chain
    assert all(a < b for a, b in pairwise(chain))


def test_slots_between_excludes_after_and_includes_until() -> None:
    slots = slots_between("0 9 * * *", utc("2026-05-18T13:00:00.000Z"), utc("2026-05-20T13:00:00.000Z"), NEW_YORK)
    assert texts(slots) == ["2026-05-19T13:00:00.000Z", "2026-05-20T13:00:00.000Z"]
    assert slots_between("0 9 * * *", utc("2026-05-20T13:00:00.000Z"), utc("2026-05-18T13:00:00.000Z"), NEW_YORK) == []


def test_a_month_of_five_minute_slots() -> None:
    after, until = utc("2026-01-01T00:00:00.000Z"), utc("2026-01-31T00:00:00.000Z")
    slots = slots_between("*/5 * * * *", after, until, NEW_YORK)
    assert len(slots) == 8640 and slots[-1] == until
    assert count_between("*/5 * * * *", after, until, NEW_YORK) == (8640, until)
    assert count_between("0 9 * * *", after, after + timedelta(hours=1), NEW_YORK) == (0, None)


# --- minimum gap -------------------------------------------------------------------------------


def test_every_minute_violates_five_minutes_at_once() -> None:
    found = min_gap_violation("*/1 * * * *", NEW_YORK, utc("2026-01-01T00:00:30.000Z"), 300, YEAR)
    assert found is not None and texts(list(found)) == ["2026-01-01T00:01:00.000Z", "2026-01-01T00:02:00.000Z"]


@pytest.mark.parametrize(("expr", "gap"), [("*/5 * * * *", 300), ("0 9 * * 1-5", 900), ("@hourly", 900)])
def test_no_violation_over_a_year(expr: str, gap: float) -> None:
    assert min_gap_violation(expr, NEW_YORK, utc("2026-01-01T00:00:00.000Z"), gap, YEAR) is None


def test_violation_only_at_spring_forward() -> None:
    # 01:00 and 03:00 are two hours apart, except when 02:00 is skipped and they are one.
    start = utc("2026-01-01T00:00:00.000Z")
    found = min_gap_violation("0 1,3 * * *", NEW_YORK, start, 5400, YEAR)
    assert found is not None and texts(list(found)) == ["2026-03-08T06:00:00.000Z", "2026-03-08T07:00:00.000Z"]
    assert min_gap_violation("0 1,3 * * *", NEW_YORK, start, 5400, timedelta(days=60)) is None


def test_fall_back_day_spreads_fixed_hours_apart() -> None:
    # 01:00 and 02:00 are an hour apart on other days but two hours on the fall-back date.
    assert min_gap_violation("0 1,2 * * *", NEW_YORK, utc("2026-10-31T12:00:00.000Z"), 5400, timedelta(days=1)) is None
    assert min_gap_violation("0 1,2 * * *", NEW_YORK, utc("2026-10-30T12:00:00.000Z"), 5400, timedelta(days=1))


def test_violation_only_at_a_month_boundary() -> None:
    found = min_gap_violation("0 0,23 1,31 * *", NEW_YORK, utc("2026-01-02T12:00:00.000Z"), 7200, YEAR)
    assert found is not None and texts(list(found)) == ["2026-02-01T04:00:00.000Z", "2026-02-01T05:00:00.000Z"]


def test_violation_only_at_thirty_minute_fall_back() -> None:
    found = min_gap_violation("30 * * * *", LORD_HOWE, utc("2026-01-01T00:00:00.000Z"), 3600, YEAR)
    assert found is not None and texts(list(found)) == ["2026-04-04T14:30:00.000Z", "2026-04-04T15:00:00.000Z"]


# --- validate ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "normalized"),
    [
        ("*/1 * * * *", "*/1 * * * *"),
        ("  0   9 * *\tMON-FRI ", "0 9 * * mon-fri"),
        ("@daily", "@daily"),
        ("@Annually", "@annually"),
        ("0 0 29 2 *", "0 0 29 2 *"),
        ("0 0 31 2 1", "0 0 31 2 1"),
        ("0 0 * * 7", "0 0 * * 7"),
        ("5/15 * * jan-mar 1-7", "5/15 * * jan-mar 1-7"),
    ],
)
def test_valid_expressions_are_normalized(expr: str, normalized: str) -> None:
    assert validate(expr) == normalized


def test_aliases_expand_as_documented() -> None:
    assert ALIASES["@daily"] == "0 0 * * *" and ALIASES["@yearly"] == ALIASES["@annually"] == "0 0 1 1 *"
    for alias, expr in ALIASES.items():
        after = utc("2026-03-01T00:00:00.000Z")
        assert next_after(alias, after, NEW_YORK) == next_after(expr, after, NEW_YORK)


REFUSED = [
    ("", "0 fields"),
    ("garbage", "1 field;"),
    ("0 9 * *", "4 fields"),
    ("0 0 9 * * *", "6 fields"),
    ("0 0 9 * * * 2026", "7 fields"),
    ("@reboot", "unknown cron alias"),
    ("0 0 31 2 *", "never fires"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4,6,9,11 *", "never fires"),
    ("60 * * * *", "valid: 0-59"),
    ("0 24 * * *", "valid: 0-23"),
    ("0 0 0 * *", "valid: 1-31"),
    ("0 0 * 13 *", "names jan-dec"),
    ("0 0 * * 8", "names sun-sat"),
    ("0 0 L * *", "not supported"),
    ("0 0 15W * *", "not supported"),
    ("0 0 * * 5#3", "not supported"),
    ("0 0 ? * 1", "not supported"),
    ("H * * * *", "not supported"),
    ("R 0 * * *", "not supported"),
    ("0 5-5 * * *", "single value"),
    ("0 22-2 * * *", "22-23,0-2"),
    ("0 0 * * fri-mon", "5-6,0-1"),
    ("*/0 * * * *", "valid steps: 1-59"),
    ("0 0 */40 * *", "valid steps: 1-30"),
    ("1,,2 * * * *", "lists a,b"),
    ("-1 * * * *", "ranges a-b"),
    ("0 9\n* *", "4 fields"),
]


@pytest.mark.parametrize(("expr", "says"), REFUSED)
def test_invalid_expressions_are_refused_on_one_line(expr: str, says: str) -> None:
    with pytest.raises(CronError) as caught:
        validate(expr)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message and "\r" not in message
    assert isinstance(caught.value, ValueError)


def test_six_fields_name_the_five_field_form() -> None:
    with pytest.raises(CronError, match="minute hour day-of-month month day-of-week"):
        validate("0 0 9 * * 1-5")


def test_non_text_is_refused() -> None:
    with pytest.raises(CronError, match="text"):
        validate(None)  # type: ignore[arg-type]


def test_every_function_validates() -> None:
    after = utc("2026-01-01T00:00:00.000Z")
    with pytest.raises(CronError):
        next_after("0 0 31 2 *", after, NEW_YORK)
    with pytest.raises(CronError):
        min_gap_violation("* * * * * *", NEW_YORK, after, 300, YEAR)
    with pytest.raises(CronError):
        is_fixed_time("nope")


@pytest.mark.parametrize(
    ("expr", "fixed"),
    [
        ("0 9 * * *", True),
        ("30 1 * * *", True),
        ("0 9,17 * * 1-5", True),
        ("*/5 9-17 * * *", True),
        ("@daily", True),
        ("@weekly", True),
        ("0 * * * *", False),
        ("*/15 * * * *", False),
        ("0 */2 * * *", False),
        ("0 8-18/2 * * *", False),
        ("@hourly", False),
    ],
)
def test_is_fixed_time(expr: str, fixed: bool) -> None:
    assert is_fixed_time(expr) is fixed
