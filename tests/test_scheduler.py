"""DESIGN §6 on the host side: series, clones, control, DST, misfire, idempotent sweeps (fake clock, real files)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from kit import World, utc

from host.errors import NclError
from host.scheduling import recurrence, tasks
from host.store import db, inbox
from schemas.times import to_text

MON_0800 = utc("2026-05-18T12:00:00")  # Monday 08:00 in New York (EDT, UTC-4)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_scheduled_task_row_has_the_nanoclaw_shape(world: World) -> None:
    world.request(MON_0800, {"action": "schedule_task", "taskId": "task-1779105600000-abc123",
                             "prompt": "post my standup", "recurrence": "0 9 * * 1-5"})
    result = world.sweeper().tick(MON_0800)
    assert result.applied == 1
    [row] = world.rows()
    assert (row["id"], row["kind"], row["status"], row["series_id"]) == (
        "task-1779105600000-abc123", "task", "pending", "task-1779105600000-abc123")
    assert row["process_after"] == "2026-05-18T13:00:00.000Z"  # first slot after now, 09:00 EDT
    assert json.loads(row["content"]) == {"prompt": "post my standup", "script": None, "context_mode": "group"}
    assert row["seq"] % 2 == 0


def test_completed_recurring_occurrence_gets_exactly_one_clone(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *",
                            routing={"platform_id": "p1", "channel_type": "cli", "thread_id": "t1"})
    sweeper = world.sweeper()
    with closing(world.inbound()) as conn:
        conn.execute("UPDATE messages_in SET tries = 2 WHERE id = ?", (series,))
    result = world.run_occurrence(sweeper, series, utc("2026-05-18T13:00:05"))
    assert result.cloned == 1
    again = sweeper.tick(utc("2026-05-18T13:00:05"))
    assert again.cloned == 0
    original, clone = world.rows(series)
    assert original["status"] == "completed" and original["recurrence"] is None
    assert clone["process_after"] == "2026-05-19T13:00:00.000Z"
    for key in ("kind", "content", "platform_id", "channel_type", "thread_id", "series_id", "trigger", "on_wake"):
        assert clone[key] == original[key], key
    assert (clone["status"], clone["recurrence"], clone["tries"]) == ("pending", "0 9 * * *", 0)
    assert [r["outcome"] for r in world.runs(series)] == ["ran"]


def commits(path: Path) -> int:
    """The file's change counter (header bytes 24-27): one more at each commit of a write, in a rollback journal."""
    return int.from_bytes(path.read_bytes()[24:28], "big")


def test_a_clone_visit_commits_once(world: World) -> None:
    """Ending an occurrence, recording its run and cloning it are one commit of inbound.db (each commit is four
    syncs to disk); outbound.db, whose ack the visit read, is not written."""
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    world.ack(series, "completed", utc("2026-05-18T13:00:05"), outcome="ran")
    files = [world.session.folder / "inbound.db", world.session.folder / "outbound.db"]
    before = [commits(path) for path in files]
    assert world.sweeper().tick(utc("2026-05-18T13:00:05")).cloned == 1
    assert [commits(path) for path in files] == [before[0] + 1, before[1]]


def test_failed_occurrence_is_cloned_too(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    result = world.run_occurrence(world.sweeper(), series, utc("2026-05-18T13:00:05"), outcome="failed")
    assert (result.cloned, result.failed) == (1, 1)  # (a provider's failure was not counted failed)
    assert [r["status"] for r in world.rows(series)] == ["failed", "pending"]


def test_control_by_series_or_occurrence_id_touches_only_live_rows(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    sweeper = world.sweeper()
    world.run_occurrence(sweeper, series, utc("2026-05-18T13:00:05"))
    clone_id = world.rows(series)[1]["id"]
    with closing(world.inbound()) as conn:
        assert tasks.pause(conn, clone_id, MON_0800, world.policy, folder=world.session.folder) == 1
        assert [r["status"] for r in world.rows(series)] == ["completed", "paused"]
        assert tasks.resume(conn, series, utc("2026-05-19T12:00:00"), world.policy) == 1
        assert tasks.update(conn, clone_id, MON_0800, world.policy, prompt="new words",
                            folder=world.session.folder) == 1
        assert tasks.cancel(conn, series, MON_0800, folder=world.session.folder) == 1
    first, second = world.rows(series)
    assert json.loads(first["content"])["prompt"] == "post the standup"  # the ended row is history
    assert json.loads(second["content"])["prompt"] == "new words"
    assert (second["status"], second["recurrence"]) == ("completed", None)
    assert [r["outcome"] for r in world.runs(series)] == ["ran", "cancelled"]
    with closing(world.inbound()) as conn, pytest.raises(NclError):
        tasks.update(conn, series, MON_0800, world.policy, prompt="too late", folder=world.session.folder)


def test_update_merges_content_and_keeps_unknown_keys(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *", script="echo '{\"wakeAgent\": true}'")
    with closing(world.inbound()) as conn:
        content = json.loads(conn.execute("SELECT content FROM messages_in").fetchone()[0])
        conn.execute("UPDATE messages_in SET content = ?", (json.dumps({**content, "origin": "nanoclaw"}),))
        tasks.update(conn, series, MON_0800, world.policy, prompt="changed", folder=world.session.folder)
        tasks.update(conn, series, MON_0800, world.policy, script="", folder=world.session.folder)
    assert json.loads(world.rows(series)[0]["content"]) == {
        "prompt": "changed", "script": None, "context_mode": "group", "origin": "nanoclaw"}


def test_new_recurrence_without_time_recomputes_from_now(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    with closing(world.inbound()) as conn:
        tasks.update(conn, series, utc("2026-05-18T14:00:00"), world.policy, recurrence_expr="30 17 * * *",
                     folder=world.session.folder)
    [row] = world.rows(series)
    assert (row["recurrence"], row["process_after"]) == ("30 17 * * *", "2026-05-18T21:30:00.000Z")


@pytest.mark.parametrize(("tz", "finished", "expected"), [
    ("America/New_York", "2026-05-18T13:00:00", "2026-05-19T13:00:00.000Z"),
    ("America/Los_Angeles", "2026-01-14T17:00:00", "2026-01-15T17:00:00.000Z"),
    ("America/Los_Angeles", "2026-07-14T16:00:00", "2026-07-15T16:00:00.000Z"),
])
def test_clone_time_is_the_next_slot_in_tz(tmp_path: Path, tz: str, finished: str, expected: str) -> None:
    world = World(tmp_path, tz=tz)
    series = world.schedule(utc(finished), recurrence="0 9 * * *", at=to_text(utc(finished)))
    world.run_occurrence(world.sweeper(), series, utc(finished))
    assert world.live(series)[0]["process_after"] == expected


def _fire_through(world: World, series: str, until: str) -> list[str]:
    """Run every occurrence of the series up to ``until``, each the moment it is due; the times it ran."""
    sweeper, fired = world.sweeper(), []
    while (row := world.live(series)[0])["process_after"] <= until:
        fired.append(row["process_after"])
        world.run_occurrence(sweeper, row["id"], utc(row["process_after"][:-1]))
    return fired


def test_repeated_hour_fires_once_and_gap_slot_moves_to_its_end(world: World) -> None:
    fall = world.schedule(utc("2026-10-31T12:00:00"), recurrence="30 1 * * *")
    assert _fire_through(world, fall, "2026-11-02T12:00:00.000Z") == [
        "2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"]  # 01:30 EDT once, then 01:30 EST
    spring = world.schedule(utc("2026-03-07T12:00:00"), recurrence="30 2 * * *")
    assert _fire_through(world, spring, "2026-03-09T12:00:00.000Z") == [
        "2026-03-08T07:00:00.000Z", "2026-03-09T06:30:00.000Z"]  # 03:00 EDT on the 8th, 02:30 EDT on the 9th


class TestMisfire:
    """Host down from Monday 08:00 to Thursday (local), daily 09:00 task, grace 1 h."""

    def test_back_after_grace_skips_and_records_all_slots(self, world: World) -> None:
        series = world.schedule(MON_0800, recurrence="0 9 * * *")
        result = world.sweeper().tick(utc("2026-05-21T14:30:00"))  # Thursday 10:30
        assert (result.woken, result.missed, result.cloned) == (0, 1, 1)  # (the clone was not counted)
        [missed] = world.runs(series)
        assert missed["outcome"] == "missed" and json.loads(missed["detail"])["slots"] == 4
        [live] = world.live(series)
        assert live["process_after"] == "2026-05-22T13:00:00.000Z"  # Friday 09:00

    def test_back_within_grace_runs_once_and_records_the_rest(self, world: World) -> None:
        series = world.schedule(MON_0800, recurrence="0 9 * * *")
        sweeper = world.sweeper()
        result = sweeper.tick(utc("2026-05-21T13:30:00"))  # Thursday 09:30
        assert (result.woken, result.missed) == (1, 1)
        assert json.loads(world.runs(series)[0]["detail"])["slots"] == 3
        [live] = world.live(series)
        assert live["process_after"] == "2026-05-21T13:00:00.000Z"  # runs as Thursday's 09:00
        world.run_occurrence(sweeper, live["id"], utc("2026-05-21T13:31:00"))
        assert world.live(series)[0]["process_after"] == "2026-05-22T13:00:00.000Z"
        assert [r["outcome"] for r in world.runs(series)] == ["missed", "ran"]

    def test_one_shot_due_during_outage_runs_once_when_back(self, world: World) -> None:
        once = world.schedule(MON_0800, at="2026-05-19T13:00:00.000Z")
        sweeper = world.sweeper()
        assert sweeper.tick(utc("2026-05-21T14:30:00")).woken == 1
        world.run_occurrence(sweeper, once, utc("2026-05-21T14:30:01"))
        assert [r["status"] for r in world.rows(once)] == ["completed"]
        assert sweeper.tick(utc("2026-05-21T14:30:02")).woken == 0


def test_second_tick_at_the_same_instant_changes_nothing(world: World) -> None:
    world.schedule(MON_0800, recurrence="0 9 * * *")
    world.schedule(MON_0800, at="2026-05-18T12:00:00.000Z")
    sweeper, now = world.sweeper(), utc("2026-05-21T14:30:00")
    sweeper.tick(now)
    before = _dump(world)
    result = sweeper.tick(now)
    assert (result.applied, result.cloned, result.missed, result.retried, result.failed) == (0, 0, 0, 0, 0)
    assert _dump(world) == before


def _dump(world: World) -> list[tuple[object, ...]]:
    with closing(world.inbound()) as conn:
        return [tuple(r) for r in conn.execute("SELECT * FROM messages_in ORDER BY seq")] + [
            tuple(r) for r in conn.execute("SELECT * FROM task_runs ORDER BY rowid")]


def test_crash_between_terminal_transition_and_clone_leaves_one_live_row(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    with closing(world.inbound()) as conn:  # what a writer that died before cloning would leave
        conn.execute("UPDATE messages_in SET status = 'completed' WHERE id = ?", (series,))
    sweeper = world.sweeper()
    assert sweeper.tick(utc("2026-05-18T13:00:10")).cloned == 1
    assert sweeper.tick(utc("2026-05-18T13:00:10")).cloned == 0
    assert len(world.live(series)) == 1


def test_db_refuses_a_second_live_recurring_occurrence(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    row = world.rows(series)[0]
    with closing(world.inbound()) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, recurrence, series_id, content)"
                     " VALUES ('task-1779105600000-zzzzzz', 100, 'task', ?, ?, ?, ?)",
                     (row["timestamp"], row["recurrence"], series, row["content"]))


def test_run_now_adds_a_one_shot_and_leaves_the_grid(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    with closing(world.inbound()) as conn:
        extra = tasks.run_now(conn, series, utc("2026-05-18T15:00:00"))
    rows = {r["id"]: r for r in world.rows(series)}
    assert (rows[extra]["recurrence"], rows[extra]["process_after"]) == (None, "2026-05-18T15:00:00.000Z")
    assert rows[series]["process_after"] == "2026-05-18T13:00:00.000Z"


@pytest.mark.parametrize("change", ["at", "recurrence"])
def test_a_retried_occurrence_given_a_new_time_runs_then_with_no_slot_counted_missed(world: World, change: str) -> None:
    """A runner died at the Monday 09:00 run (a retry keeps that grid slot); the operator then moves the next run to
    Thursday 15:00, or gives a new recurrence: it runs at its new time, nothing recorded missed, its tries anew (the
    old slot was kept: Thursday's run was dropped as four slots past the grace)."""
    series = world.schedule(MON_0800, recurrence="0 9 * * *")
    died = utc("2026-05-18T13:00:30")
    with closing(world.inbound()) as conn, db.transaction(conn):
        recurrence.release(conn, inbox.get(conn, series) or pytest.fail(), died, world.policy)
    assert json.loads(world.rows(series)[0]["content"])[recurrence.SLOT] == "2026-05-18T13:00:00.000Z"
    new = {"at": {"process_after": "2026-05-21T19:00:00.000Z"}, "recurrence": {"recurrence_expr": "0 15 * * 4"}}
    with closing(world.inbound()) as conn:
        tasks.update(conn, series, died, world.policy, folder=world.session.folder, **new[change])  # type: ignore[arg-type]
    [row] = world.rows(series)
    assert (row["process_after"], row["tries"]) == ("2026-05-21T19:00:00.000Z", 0)
    assert recurrence.SLOT not in json.loads(row["content"])
    result = world.sweeper().tick(utc("2026-05-21T19:00:05"))
    assert result.missed == 0 and world.runs(series) == []
    assert [(r["status"], r["process_after"]) for r in world.rows(series)] == [("pending", "2026-05-21T19:00:00.000Z")]


@pytest.mark.parametrize(("change", "column", "value"), [
    ({"process_after": "2026-05-20T13:00:00.000Z"}, "process_after", "2026-05-20T13:00:00.000Z"),
    ({"recurrence_expr": "0 9 * * *"}, "recurrence", "0 9 * * *"),
])
def test_an_update_of_a_one_shot_with_a_run_now_beside_it_changes_the_one_shot(
        world: World, change: dict[str, str], column: str, value: str) -> None:
    series = world.schedule(MON_0800, at="2026-05-19T13:00:00.000Z")
    with closing(world.inbound()) as conn:
        extra = tasks.run_now(conn, series, MON_0800)
        tasks.update(conn, series, MON_0800, world.policy, folder=world.session.folder, **change)
    rows = {r["id"]: r for r in world.rows(series)}
    assert rows[series][column] == value  # (was: "2 occurrence(s) changed", and neither was)
    assert (rows[extra]["process_after"], rows[extra]["recurrence"]) == (to_text(MON_0800), None)


def test_a_run_now_copies_the_prompt_not_the_series_grid(world: World) -> None:
    series = world.schedule(MON_0800, recurrence="0 9 * * *", count=3)
    with closing(world.inbound()) as conn, db.transaction(conn):
        recurrence.release(conn, inbox.get(conn, series) or pytest.fail(), utc("2026-05-18T13:00:30"), world.policy)
    with closing(world.inbound()) as conn:
        extra = tasks.run_now(conn, series, utc("2026-05-18T15:30:00"))
    content = json.loads({r["id"]: r for r in world.rows(series)}[extra]["content"])
    assert content == {"prompt": "post the standup", "script": None, "context_mode": "group"}
