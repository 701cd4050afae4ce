"""Issue 11 point 2: bounded work per request, per session, per visit.

- Misfire bookkeeping never walks slot by slot: a ``*/5`` slot in year 1 (213 million slots) and a sweep at
  9999-12-30 over a daily series each cost a few thousand day-level steps (counted here; the wall time is in
  scripts/bench_flood.py), and the ``missed`` run still holds the exact count, the first and the latest slot
  (cross-checked against enumeration over random crons, zones and ranges).
- A session holds at most NCL_MAX_TASKS_PER_SESSION live series; a request over it is rejected with a notice
  (identical rejections of one visit make one notice) before any costly check; ``ncl tasks add`` keeps to it too.
- A visit applies at most NCL_MAX_REQUESTS_PER_VISIT requests, in order; the rest wait, and the host comes back
  to that session at once, not after a sweep interval. The sweep hands the event loop back between sessions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from kit import FakeClock, RecordingRuntime, World
from property_kit import props
from scheduled_project import DAILY_QUEUE, SLOT, Project
from scheduled_project import project as project
from security_kit import T0

from host.loop import Host
from host.scheduling import sweep
from host.store import inbox
from schemas import cron, cron_count, ids, transitions
from schemas.times import from_text, to_text

DAY_LEVEL_BOUND = 20_000  # the year tables alone take ~5,100; enumeration took 740,000 days (2.2 million calls)
DST_ZONES = ["UTC", "America/New_York", "Europe/Dublin", "Australia/Lord_Howe", "America/Santiago",
             "America/Goose_Bay", "Asia/Tehran", "Pacific/Apia", "Africa/Casablanca"]
FIELDS = (["0", "*/5", "30", "0,30", "*/20", "7-9", "*"], ["*", "2", "1-3", "*/3", "0,23", "9", "*/7"],
          ["*", "1", "15", "1,31", "29"], ["*", "3", "10,11", "2", "3-11"], ["*", "0", "1-5", "6"])


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Calls of the day-level steps of cron evaluation (each is a few integer operations or one day's slots)."""
    calls = {"n": 0}
    for name in ("_day_matches", "_steady_offset", "_day_epochs"):
        real = getattr(cron, name)

        def counted(*args: Any, _real: Any = real) -> Any:
            calls["n"] += 1
            return _real(*args)

        monkeypatch.setattr(cron, name, counted)
    cron_count._walks.clear()  # cold: nothing remembered from earlier tests
    cron_count._year_table.cache_clear()
    yield calls


@props(200)
@given(fields=st.tuples(*(st.sampled_from(f) for f in FIELDS)), zone=st.sampled_from(DST_ZONES),
       after=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
       days=st.integers(min_value=0, max_value=40), seconds=st.integers(min_value=0, max_value=86_399),
       near=st.integers(min_value=-1, max_value=5))
def test_the_count_matches_enumeration(fields: tuple[str, ...], zone: str, after: datetime, days: int,
                                       seconds: int, near: int) -> None:
    """Random crons, zones and ranges of a few weeks, most of them around an offset transition of the zone."""
    expr = " ".join(fields)
    try:
        cron.validate(expr)
    except cron.CronError:
        assume(False)
    moves = transitions.of(ZoneInfo(zone))
    around = moves.between(int(after.timestamp()), int(after.timestamp()) + 400 * 86400) if moves else []
    if near >= 0 and around:  # start a little before one of the next transitions, so the range holds it
        after = datetime.fromtimestamp(around[near % len(around)], UTC) - timedelta(days=days // 2, seconds=seconds)
    until = after + timedelta(days=days, seconds=seconds)
    slots = cron.slots_between(expr, after, until, ZoneInfo(zone))
    assert cron.count_between(expr, after, until, ZoneInfo(zone)) == (len(slots), slots[-1] if slots else None)


@pytest.mark.parametrize(("expr", "zone"), [("0 0 29 2 *", "America/New_York"), ("0 0 29 2 *", "Europe/Dublin"),
                                             ("0 0 29 2 *", "Australia/Lord_Howe"), ("30 2 * * *", "America/New_York")])
def test_whole_400_year_cycles_count_as_enumeration_does(expr: str, zone: str) -> None:
    """2030 to 2450 holds a whole cycle of a rule-following zone (from 2038): counted once, still exact."""
    after, until = datetime(2030, 5, 5, tzinfo=UTC), datetime(2450, 3, 1, tzinfo=UTC)
    slots = cron.slots_between(expr, after, until, ZoneInfo(zone))
    assert cron.count_between(expr, after, until, ZoneInfo(zone)) == (len(slots), slots[-1])


def _stored_recurrence(world: World, first: str, expr: str) -> str:
    """A recurring row already in the inbox (as from an install before the input checks of times)."""
    task_id = ids.new_id("task", T0)
    with closing(world.inbound()) as conn:
        inbox.insert(conn, {"id": task_id, "kind": "task", "timestamp": to_text(T0), "process_after": first,
                            "recurrence": expr, "series_id": task_id, "content": json.dumps({"prompt": "p"})})
        conn.commit()
    return task_id


def _missed(world: World) -> dict[str, Any]:
    with closing(world.inbound()) as conn:
        [row] = conn.execute("SELECT detail FROM task_runs WHERE outcome = 'missed'").fetchall()
    detail: dict[str, Any] = json.loads(row[0])
    return detail


def test_a_slot_in_year_one_is_counted_exactly_in_bounded_work(tmp_path: Path, work: dict[str, int]) -> None:
    world = World(tmp_path, tz="UTC")
    first = "0001-01-03T00:00:00.000Z"
    _stored_recurrence(world, first, "*/5 * * * *")
    result = world.sweeper().tick(T0)
    assert (result.missed, result.errors) == (1, 0)
    later = (T0 - from_text(first)) // timedelta(minutes=5)  # every 5 minutes since, in UTC: 213 million
    assert later > 200_000_000
    assert _missed(world) == {"slots": later, "first": first, "latest_slot": to_text(T0), "runs": True}
    assert work["n"] < DAY_LEVEL_BOUND, work


@pytest.mark.parametrize("zone", ["America/New_York", "Australia/Lord_Howe", "America/Santiago"])
def test_a_year_one_count_in_a_dst_zone_is_bounded(zone: str, work: dict[str, int]) -> None:
    count, latest = cron.count_between("*/5 * * * *", datetime(1, 1, 3, tzinfo=UTC), T0, ZoneInfo(zone))
    assert count > 200_000_000 and latest is not None and T0 - latest < timedelta(minutes=5)
    assert work["n"] < DAY_LEVEL_BOUND, work


def test_a_sweep_at_the_end_of_the_calendar_is_bounded_and_ends_the_series(tmp_path: Path,
                                                                           work: dict[str, int]) -> None:
    world = World(tmp_path)  # New York
    task_id = world.schedule(T0, recurrence="0 9 * * *")
    result = world.sweeper().tick(datetime(9999, 12, 30, tzinfo=UTC))
    assert (result.missed, result.errors) == (1, 0)  # was: 26 s of CPU, then the session failed
    detail = _missed(world)
    # Daily at 09:00 from 2026-06-12 to 9999-12-28 (the walk stops two days short of the calendar's end).
    assert detail["slots"] == (date(9999, 12, 28) - date(2026, 6, 12)).days + 1
    assert detail["latest_slot"] == "9999-12-28T14:00:00.000Z"
    assert world.live(task_id) == []  # no slot is left before the calendar ends: the series ends
    assert work["n"] < DAY_LEVEL_BOUND, work


def test_a_project_task_at_the_end_of_the_calendar_is_bounded_and_stops(project: Project,
                                                                         work: dict[str, int]) -> None:
    """The same misfire rule for project tasks (one Overdue definition): one missed run, and nothing more to fire."""
    project.support_group()
    item = project.add(DAILY_QUEUE)
    now = datetime(9999, 12, 30, tzinfo=UTC)
    result = project.firer(FakeClock(now)).tick(now)
    assert (result.fired, result.missed, result.failed) == (0, 1, 0)
    (missed,) = project.runs(item["id"])
    assert missed["missed_slots"] == (date(9999, 12, 28) - SLOT.date()).days + 1  # daily from SLOT to 9999-12-28
    assert project.listed()[0]["next_run"] is None
    assert work["n"] < DAY_LEVEL_BOUND, work


# --- live series per session ----------------------------------------------------------------------------------


def _schedule_requests(world: World, count: int, **extra: Any) -> list[str]:
    prompts = [f"task {n}" for n in range(count)]
    for prompt in prompts:
        world.request(T0, {"action": "schedule_task", "taskId": ids.new_id("task", T0), "prompt": prompt,
                           "processAfter": "2026-07-01T00:00:00.000Z", **extra})
    return prompts


def _stored_prompts(world: World) -> list[str]:
    return [json.loads(r["content"])["prompt"] for r in world.rows() if r["kind"] == "task"]


def test_a_session_holds_at_most_the_cap_and_the_rest_is_refused_cheaply(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, NCL_MAX_TASKS_PER_SESSION="3")
    _schedule_requests(world, 3)
    checks = {"n": 0}
    real = cron.min_gap_violation

    def counted(*args: Any) -> Any:
        checks["n"] += 1
        return real(*args)

    monkeypatch.setattr(cron, "min_gap_violation", counted)
    _schedule_requests(world, 4, recurrence="*/5 * * * *", processAfter=None)
    result = world.sweeper().tick(T0 + timedelta(seconds=1))
    assert (result.applied, result.errors) == (3, 0)
    assert _stored_prompts(world) == ["task 0", "task 1", "task 2"]
    assert checks["n"] == 0  # refused before the recurrence was even checked
    [notice] = world.notices()  # four refusals, one notice
    assert notice["notice"] == "request_rejected" and "NCL_MAX_TASKS_PER_SESSION" in notice["text"]
    assert "(4 such requests)" in notice["text"] and notice["trigger"] == 0


def test_ended_series_make_room(tmp_path: Path, ncl: Callable[..., Any], cli_env: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NCL_MAX_TASKS_PER_SESSION", "2")
    world = World(tmp_path, NCL_MAX_TASKS_PER_SESSION="2")
    first = world.schedule(T0, at="2026-07-01T00:00:00.000Z")
    world.schedule(T0, at="2026-07-01T00:00:00.000Z")
    refused = ncl("tasks", "add", "--session", world.session.id, "--prompt", "one more", "--at", "2026-07-02T09:00")
    assert refused.code == 1 and "NCL_MAX_TASKS_PER_SESSION" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert ncl("tasks", "cancel", first).code == 0
    assert ncl("tasks", "add", "--session", world.session.id, "--prompt", "one more", "--at",
               "2026-07-02T09:00").code == 0


# --- requests per visit ------------------------------------------------------------------------------------------


def test_a_visit_applies_at_most_the_limit_in_order_and_the_session_stays_due(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_MAX_REQUESTS_PER_VISIT="5")
    prompts = _schedule_requests(world, 12)
    sweeper = world.sweeper()
    for applied in (5, 5, 2):
        assert sweeper.tick(T0 + timedelta(seconds=1)).applied == applied
        assert _stored_prompts(world) == prompts[:len(_stored_prompts(world))]  # oldest first, nothing skipped
    assert _stored_prompts(world) == prompts
    assert sweeper.tick(T0 + timedelta(seconds=2)).applied == 0


async def test_the_host_comes_back_at_once_for_requests_left_over(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_MAX_REQUESTS_PER_VISIT="5", NCL_SWEEP_INTERVAL_S="60")
    _schedule_requests(world, 12)
    clock = FakeClock(T0)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    for stored in (5, 10):
        await host.step()  # a sweep, then a sleep until the next thing to do
        assert len(_stored_prompts(world)) == stored
    assert clock.now() - T0 < timedelta(seconds=1)  # not a 60 s sweep interval between the visits
    await host.step()
    assert len(_stored_prompts(world)) == 12


async def test_the_sweep_hands_the_loop_back_between_sessions(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    for _ in range(3):
        world.schedule(T0, session=world.new_session(), at=to_text(T0 + timedelta(days=1)))
    monkeypatch.setattr(sweep, "YIELD_AFTER_S", -1.0)  # every session counts as a long visit
    clock = FakeClock(T0)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    turns, seen = {"n": 0}, []
    real = sweep.Sweeper._sweep_one

    def visit(self: sweep.Sweeper, *args: Any) -> None:
        seen.append(turns["n"])
        real(self, *args)

    monkeypatch.setattr(sweep.Sweeper, "_sweep_one", visit)

    async def other_work() -> None:  # what a webhook or a chat would be doing meanwhile
        while True:
            turns["n"] += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    try:
        await host._sweep(T0, None)
    finally:
        task.cancel()
    assert len(seen) == 4 and seen == sorted(set(seen)), seen  # other work ran between every two sessions
