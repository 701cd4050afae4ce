"""``ncl tasks`` in-process, in America/New_York (DESIGN §6, §10, §12.8, §12.9, §12.11, §12.13): control by series or
occurrence id. Pause and resume (after the grace: the misfire rule), cancel, update (content merged, recurrence and
time recomputed in TZ), run-now beside the grid, and an unknown id that changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import (
    MON_0800,
    WEEKDAYS_0900,
    ack,
    add,
    inbox_rows,
    listed,
    one_line_error,
    show,
    sweep,
    weekday_task,
)
from cli_tasks_kit import cli as cli
from cli_tasks_kit import session as session

from host.store import db, outbox


def missed_slots(run: dict[str, Any]) -> int:
    """The slot count a ``missed`` run records (a bare number, or JSON holding ``slots``)."""
    detail = json.loads(run["detail"])
    return int(detail["slots"] if isinstance(detail, dict) else detail)


# --- control: pause, resume, cancel, update, run-now -----------------------------------------------


def test_pause_and_resume_by_series_and_occurrence_id(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    ack(session, item["id"], "completed", "2026-05-18T13:00:30.000Z")
    sweep(cli, "2026-05-18T09:01:00")
    clone_id = inbox_rows(session)[1]["id"]

    paused = ok(cli("tasks", "pause", clone_id, "--json")).json()
    assert paused == {"id": item["id"], "action": "paused", "changed": 1}
    assert [r["status"] for r in show(cli, item["id"])["occurrences"]] == ["completed", "paused"]
    assert listed(cli)[0]["status"] == "paused"
    assert one_line_error(cli("tasks", "pause", item["id"])) == f"ncl: task {item['id']} is already paused"

    ok(cli("tasks", "resume", item["id"], "--now", "2026-05-18T10:00:00"))
    shown = show(cli, clone_id)
    assert [r["status"] for r in shown["occurrences"]] == ["completed", "pending"]
    assert shown["task"]["next_run"] == "2026-05-19T13:00:00.000Z"  # not overdue: the grid is kept
    assert one_line_error(cli("tasks", "resume", clone_id)) == (
        f"ncl: task {item['id']} is not paused: it is waiting for its next run")


@pytest.mark.parametrize("command", [("tasks", "pause"), ("tasks", "cancel"), ("tasks", "update", "--prompt", "new"),
                                     ("groups", "delete", "demo", "--yes")])
def test_a_command_outlasts_a_runner_commit_longer_than_its_short_wait(
        cli: Ncl, session: dict[str, Any], monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]) -> None:
    """The claims in outbound.db are waited for ``RUNNER_WAIT_S`` (0 here), so that the inbox's write lock is never
    held long on a runner's: the command is done again until the busy timeout, not failed ("database is locked", as
    found under load: a runner's commit held its file 0.3 s)."""
    item = weekday_task(cli, session)
    runner = sqlite3.connect(Path(session["path"]) / "outbound.db", isolation_level=None)
    runner.execute("BEGIN EXCLUSIVE")  # its commit under way
    tries: list[str] = []
    claimed = outbox.claimed

    def committed_after_the_first_try(path: Path, message_ids: list[str]) -> set[str]:
        tries.append(path.name)
        if runner.in_transaction and len(tries) > 1:
            runner.execute("COMMIT")
        return claimed(path, message_ids)

    monkeypatch.setattr(outbox, "RUNNER_WAIT_S", 0.0)
    monkeypatch.setattr(outbox, "claimed", committed_after_the_first_try)
    args = (*command[:2], item["id"], *command[2:]) if command[0] == "tasks" else command
    ok(cli(*args))
    runner.close()
    assert tries == ["outbound.db", "outbound.db"]
    expected = {"pause": "paused", "cancel": "cancelled", "update": "pending", "delete": "paused"}[command[1]]
    assert show(cli, item["id"])["task"]["status"] == expected


def test_resume_of_a_running_task_and_cancel_of_an_ended_one_say_so(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    sweep(cli, "2026-05-18T09:00:30")  # due: with no runner to take it the sweep leaves it waiting, so claim it
    ack(session, item["id"], "processing", "2026-05-18T13:00:40.000Z")
    ok(cli("tasks", "pause", item["id"]))  # the run goes on; its next occurrence waits paused
    ok(cli("tasks", "cancel", item["id"]))
    assert one_line_error(cli("tasks", "resume", item["id"])) == (
        f"ncl: task {item['id']} is not paused: it is running now")
    ack(session, item["id"], "completed", "2026-05-18T13:01:00.000Z")
    sweep(cli, "2026-05-18T09:02:00")
    assert one_line_error(cli("tasks", "cancel", item["id"])) == f"ncl: task {item['id']} has ended (see its runs)"


def test_resume_after_the_grace_follows_the_misfire_rule(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--recurrence", "0 9 * * *", "--now", MON_0800)
    ok(cli("tasks", "pause", item["id"]))
    ok(cli("tasks", "resume", item["id"], "--now", "2026-05-21T10:30:00"))  # Thursday, past the 1 h grace
    shown = show(cli, item["id"])
    assert shown["task"]["next_run"] == "2026-05-22T13:00:00.000Z"  # Friday 09:00
    assert shown["task"]["last_outcome"] == "missed"
    [run] = ok(cli("tasks", "runs", item["id"], "--json")).json()["runs"]
    assert run["outcome"] == "missed" and missed_slots(run) == 4  # Mon, Tue, Wed, Thu
    shown_runs = ok(cli("tasks", "runs", item["id"])).out  # in words and TZ, not its JSON of UTC times
    assert "4 slots from 2026-05-18 09:00" in shown_runs and "to 2026-05-21 09:00" in shown_runs, shown_runs

    within = add(cli, session, "--recurrence", "0 9 * * *", "--now", MON_0800, prompt="within")
    ok(cli("tasks", "pause", within["id"]))
    ok(cli("tasks", "resume", within["id"], "--now", "2026-05-21T09:30:00"))  # Thursday, inside the grace
    shown = show(cli, within["id"])
    assert shown["task"]["next_run"] == "2026-05-21T13:00:00.000Z"  # runs at once, as Thursday's slot
    [run] = ok(cli("tasks", "runs", within["id"], "--json")).json()["runs"]
    assert run["outcome"] == "missed" and missed_slots(run) == 3  # Mon, Tue, Wed
    # Thursday's slot runs: the words end before it, not with it (attack review: "3 slots from Mon to Thu")
    shown_runs = ok(cli("tasks", "runs", within["id"])).out
    assert "3 slots from 2026-05-18 09:00" in shown_runs and "before the one at 2026-05-21 09:00" in shown_runs
    assert "which ran" in shown_runs and "to 2026-05-21" not in shown_runs, shown_runs


def test_cancel_by_occurrence_id_ends_the_series(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    ack(session, item["id"], "completed", "2026-05-18T13:00:30.000Z")
    sweep(cli, "2026-05-18T09:01:00")
    clone_id = inbox_rows(session)[1]["id"]

    assert ok(cli("tasks", "cancel", clone_id, "--json")).json() == {
        "id": item["id"], "action": "cancelled", "changed": 1}
    shown = show(cli, item["id"])
    assert [(r["status"], r["recurrence"]) for r in shown["occurrences"]] == [("completed", None), ("completed", None)]
    assert shown["task"]["status"] == "cancelled"
    assert shown["next_runs"] == []
    assert [r["outcome"] for r in ok(cli("tasks", "runs", item["id"], "--json")).json()["runs"]] == ["ran", "cancelled"]
    assert listed(cli) == []
    assert [(t["id"], t["status"]) for t in listed(cli, "--all")] == [(item["id"], "cancelled")]
    one_line_error(cli("tasks", "cancel", item["id"]))  # nothing live left
    one_line_error(cli("tasks", "update", item["id"], "--prompt", "too late"))


def test_update_merges_content_by_occurrence_id_and_keeps_unknown_keys(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    inbound = Path(session["path"]) / "inbound.db"
    with closing(db.connect(inbound, "inbound")) as conn:
        conn.execute("UPDATE messages_in SET content = json_set(content, '$.extra', 7) WHERE id = ?", (item["id"],))
    assert ok(cli("tasks", "update", item["id"], "--prompt", "new words", "--script", "echo hi", "--json")).json() == {
        "id": item["id"], "action": "updated", "changed": 1}
    [row] = show(cli, item["id"])["occurrences"]
    assert json.loads(row["content"]) == {"prompt": "new words", "script": "echo hi", "context_mode": "group",
                                          "extra": 7}
    assert row["process_after"] == "2026-05-18T13:00:00.000Z"  # no time change asked for
    ok(cli("tasks", "update", item["id"], "--script", ""))
    [row] = show(cli, item["id"])["occurrences"]
    assert json.loads(row["content"])["script"] is None
    assert listed(cli)[0]["prompt"] == "new words"


def test_update_recurrence_without_at_recomputes_from_now(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    ok(cli("tasks", "update", item["id"], "--recurrence", "30 10 * * *", "--now", "2026-05-20T11:00:00"))
    task = show(cli, item["id"])["task"]
    assert (task["recurrence"], task["next_run"]) == ("30 10 * * *", "2026-05-21T14:30:00.000Z")  # Thu 10:30 EDT
    ok(cli("tasks", "update", item["id"], "--recurrence", ""))  # '' makes it one-shot, time kept
    task = show(cli, item["id"])["task"]
    assert (task["recurrence"], task["next_run"]) == (None, "2026-05-21T14:30:00.000Z")


def test_update_at_naive_is_local_and_an_offset_is_taken_as_given(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    ok(cli("tasks", "update", item["id"], "--at", "2026-06-01T07:15:00", "--now", MON_0800))
    [row] = show(cli, item["id"])["occurrences"]
    assert row["process_after"] == "2026-06-01T11:15:00.000Z"  # 07:15 EDT
    assert row["recurrence"] == WEEKDAYS_0900
    ok(cli("tasks", "update", item["id"], "--at", "2026-06-01T07:15:00Z", "--now", MON_0800))
    assert show(cli, item["id"])["occurrences"][0]["process_after"] == "2026-06-01T07:15:00.000Z"
    ok(cli("tasks", "update", item["id"], "--at", "2026-12-01T09:00:00", "--now", MON_0800))  # EST in winter
    assert show(cli, item["id"])["occurrences"][0]["process_after"] == "2026-12-01T14:00:00.000Z"


def test_update_with_no_field_is_a_usage_error(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    before = inbox_rows(session)
    one_line_error(cli("tasks", "update", item["id"]), code=2)
    one_line_error(cli("tasks", "update", item["id"], "--now", MON_0800), code=2)
    assert inbox_rows(session) == before


def test_run_now_adds_a_one_shot_occurrence_and_the_grid_stays(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    first = ok(cli("tasks", "run-now", item["id"], "--now", "2026-05-18T08:30:00", "--json")).json()
    assert set(first) == {"id", "action", "occurrence_id"}
    assert (first["id"], first["action"]) == (item["id"], "run-now")
    second = ok(cli("tasks", "run-now", first["occurrence_id"], "--now", "2026-05-18T08:40:00", "--json")).json()
    assert second["id"] == item["id"]  # by occurrence id: the same series
    occurrences = {r["id"]: r for r in show(cli, item["id"])["occurrences"]}
    assert list(occurrences) == [item["id"], first["occurrence_id"], second["occurrence_id"]]
    carrier = occurrences[item["id"]]
    assert (carrier["status"], carrier["process_after"], carrier["recurrence"]) == (
        "pending", "2026-05-18T13:00:00.000Z", WEEKDAYS_0900)
    for occurrence_id, at in ((first["occurrence_id"], "2026-05-18T12:30:00.000Z"),
                              (second["occurrence_id"], "2026-05-18T12:40:00.000Z")):
        row = occurrences[occurrence_id]
        assert (row["kind"], row["status"], row["process_after"], row["recurrence"], row["series_id"]) == (
            "task", "pending", at, None, item["id"])
        assert row["content"] == carrier["content"]
    [series] = listed(cli)  # still one line per series
    assert (series["id"], series["recurrence"], series["next_run"]) == (
        item["id"], WEEKDAYS_0900, "2026-05-18T12:30:00.000Z")
    # and it is due at once: a sweep at that instant would wake the session
    assert sweep(cli, "2026-05-18T08:30:00")["woken"] == 1


def test_show_next_runs_after_run_now_follow_the_series_grid(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    ok(cli("tasks", "update", item["id"], "--at", "2026-05-20T09:00:00", "--now", MON_0800))  # next run Wednesday
    extra = ok(cli("tasks", "run-now", item["id"], "--now", "2026-05-18T08:30:00", "--json")).json()
    assert extra["occurrence_id"]
    assert show(cli, item["id"])["next_runs"] == [
        "2026-05-18T12:30:00.000Z",  # the run-now occurrence
        "2026-05-20T13:00:00.000Z", "2026-05-21T13:00:00.000Z", "2026-05-22T13:00:00.000Z",
        "2026-05-25T13:00:00.000Z",
    ]


@pytest.mark.parametrize("args", [
    ("show",), ("runs",), ("pause",), ("resume",), ("cancel",), ("run-now",), ("update", "--prompt", "x"),
])
def test_unknown_task_id_is_exit_1(cli: Ncl, session: dict[str, Any], args: tuple[str, ...]) -> None:
    weekday_task(cli, session)
    before = inbox_rows(session)
    line = one_line_error(cli("tasks", args[0], "task-1781168400000-zzzzzz", *args[1:]))
    assert "task-1781168400000-zzzzzz" in line
    assert inbox_rows(session) == before


def test_an_operators_task_is_routed_as_the_sessions_chat_so_its_answer_shows_there(
        cli: Ncl, session: dict[str, Any]) -> None:
    """(Unrouted, its answer was kept in the transcript and the host warned it named a channel not wired.)"""
    with closing(db.connect(Path(session["path"]) / "inbound.db", "inbound")) as conn, db.transaction(conn):
        conn.execute("INSERT INTO session_routing(id, platform_id, channel_type, thread_id) VALUES (1, NULL, 'cli',"
                     " 'standup')")  # as the session's first chat left it
    item = add(cli, session, "--at", "2026-05-18T09:00:00", "--now", MON_0800)
    [row] = inbox_rows(session)
    assert (row["id"], row["channel_type"], row["platform_id"], row["thread_id"]) == (item["id"], "cli", None,
                                                                                       "standup")
