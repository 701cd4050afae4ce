"""``ncl tasks`` and ``ncl host sweep --once --now`` in-process, in America/New_York (DESIGN §6, §10, §12.8,
§12.9, §12.11, §12.13): the documented JSON shapes, control by series or occurrence id, refused input
that writes nothing, and reads that leave every file byte-identical."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest

from host import db
from schemas.ddl import latest_version
from schemas.times import from_text

if TYPE_CHECKING:
    from conftest import CliEnv, Result

Ncl = Callable[..., "Result"]
NY = ZoneInfo("America/New_York")
WEEKDAYS_0900 = "0 9 * * 1-5"
MON_0800 = "2026-05-18T08:00:00"  # Monday, local (EDT, UTC-4)
LIST_KEYS = {"id", "agent_group_id", "session_id", "status", "next_run", "recurrence", "prompt", "last_outcome"}
RUN_KEYS = {"id", "series_id", "message_id", "scheduled_for", "started_at", "finished_at", "duration_ms", "outcome",
            "detail"}
SWEEP_KEYS = {"now", "sessions_checked", "woken", "applied", "cloned", "missed", "retried", "failed"}


# --- helpers ---------------------------------------------------------------------------------------


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}: {result.err}"
    return result


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.code == code, f"exit {result.code}: {result.err}"
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("ncl: ")
    return result.err_lines[0]


def inbox_rows(session: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``sqlite3 "file:…/inbound.db?mode=ro"`` shows: every messages_in row, by seq."""
    with closing(sqlite3.connect(f"file:{Path(session['path']) / 'inbound.db'}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM messages_in ORDER BY seq")]


def ack(session: dict[str, Any], message_id: str, status: str, at: str, outcome: str = "ran") -> None:
    """What the runner writes when it finishes an occurrence (tests/kit.py World.ack)."""
    detail = json.dumps({"outcome": outcome, "reason": None})
    with closing(db.connect(Path(session["path"]) / "outbound.db", "outbound")) as conn, db.transaction(conn):
        conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail, generation)"
                     " VALUES (?, ?, ?, ?, ?)", (message_id, status, at, detail, "gen-test"))


def snapshot(data_dir: Path) -> dict[str, str]:
    """Every path under the data dir -> sha256 of its bytes ('' for a folder)."""
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            for p in sorted(data_dir.rglob("*"))}


def missed_slots(run: dict[str, Any]) -> int:
    """The slot count a ``missed`` run records (a bare number, or JSON holding ``slots``)."""
    detail = json.loads(run["detail"])
    return int(detail["slots"] if isinstance(detail, dict) else detail)


def local(text: str) -> datetime:
    return from_text(text).astimezone(NY)


@pytest.fixture
def cli(ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> Ncl:
    monkeypatch.setenv("TZ", "America/New_York")
    return ncl


@pytest.fixture
def session(cli: Ncl) -> dict[str, Any]:
    ok(cli("groups", "create", "demo", "--channel", "cli"))
    data: dict[str, Any] = ok(cli("sessions", "create", "--group", "demo", "--json")).json()
    return data


def add(cli: Ncl, session: dict[str, Any], *args: str, prompt: str = "post the standup") -> dict[str, Any]:
    item: dict[str, Any] = ok(cli("tasks", "add", "--session", session["id"], "--prompt", prompt, *args,
                                  "--json")).json()
    return item


def weekday_task(cli: Ncl, session: dict[str, Any], prompt: str = "post the standup") -> dict[str, Any]:
    return add(cli, session, "--recurrence", WEEKDAYS_0900, "--now", MON_0800, prompt=prompt)


def show(cli: Ncl, ref: str, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = ok(cli("tasks", "show", ref, "--json", *args)).json()
    return data


def listed(cli: Ncl, *args: str) -> list[dict[str, Any]]:
    data = ok(cli("tasks", "list", "--json", *args)).json()
    assert set(data) == {"tasks"}
    return list(data["tasks"])


def sweep(cli: Ncl, now: str) -> dict[str, Any]:
    data: dict[str, Any] = ok(cli("host", "sweep", "--once", "--now", now, "--json")).json()
    return data


# --- add and list ----------------------------------------------------------------------------------


def test_add_then_list_json_has_exactly_the_documented_keys(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    [listed_item] = listed(cli)
    assert set(listed_item) == LIST_KEYS
    assert listed_item == item  # `add` prints the list item alone
    assert listed_item == {
        "id": item["id"], "agent_group_id": "ag-demo", "session_id": session["id"], "status": "pending",
        "next_run": "2026-05-18T13:00:00.000Z", "recurrence": WEEKDAYS_0900, "prompt": "post the standup",
        "last_outcome": None,
    }
    [row] = inbox_rows(session)
    assert (row["id"], row["kind"], row["status"], row["series_id"]) == (item["id"], "task", "pending", item["id"])


def test_list_table_shows_the_next_run_in_tz(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    lines = ok(cli("tasks", "list")).out.splitlines()
    assert lines[0].split()[:4] == ["ID", "GROUP", "SESSION", "STATUS"]
    [line] = [x for x in lines[1:] if item["id"] in x]
    assert "2026-05-18 09:00:00 EDT" in line
    assert "13:00" not in line


def test_list_filters_by_group_session_status_and_all(cli: Ncl, session: dict[str, Any]) -> None:
    second = ok(cli("sessions", "create", "--group", "demo", "--json")).json()
    ok(cli("groups", "create", "other", "--channel", "queue:jobs"))
    other = ok(cli("sessions", "create", "--group", "other", "--json")).json()
    a = weekday_task(cli, session, "a")
    b = weekday_task(cli, second, "b")
    c = weekday_task(cli, other, "c")
    gone = weekday_task(cli, other, "gone")
    ok(cli("tasks", "pause", b["id"]))
    ok(cli("tasks", "cancel", gone["id"]))

    def ids(*args: str) -> list[str]:
        return [t["id"] for t in listed(cli, *args)]

    assert ids() == [a["id"], b["id"], c["id"]]
    assert ids("--group", "demo") == [a["id"], b["id"]]
    assert ids("--group", "ag-other") == [c["id"]]
    assert ids("--session", second["id"]) == [b["id"]]
    assert ids("--status", "paused") == [b["id"]]
    assert ids("--status", "pending") == [a["id"], c["id"]]
    assert ids("--group", "other", "--status", "pending") == [c["id"]]
    assert {t["id"]: t["status"] for t in listed(cli, "--all")} == {
        a["id"]: "pending", b["id"]: "paused", c["id"]: "pending", gone["id"]: "cancelled"}
    assert ids("--status", "cancelled") == [gone["id"]]
    assert ids("--group", "other", "--all") == [c["id"], gone["id"]]
    one_line_error(cli("tasks", "list", "--group", "nope"))
    one_line_error(cli("tasks", "list", "--status", "sleeping"))  # an invalid value: exit 1


def test_list_with_an_unknown_session_is_an_unknown_id(cli: Ncl, session: dict[str, Any]) -> None:
    one_line_error(cli("tasks", "list", "--session", "sess-1781168400000-zzzzzz"))


# --- show ------------------------------------------------------------------------------------------


def test_show_json_by_series_id_and_by_occurrence_id(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    shown = show(cli, item["id"])
    assert set(shown) == {"task", "occurrences", "next_runs"}
    assert shown["task"] == item
    [row] = shown["occurrences"]
    assert row == inbox_rows(session)[0]
    assert shown["next_runs"] == [f"2026-05-{d}T13:00:00.000Z" for d in (18, 19, 20, 21, 22)]
    assert [local(t).strftime("%a %H:%M") for t in shown["next_runs"]] == [
        "Mon 09:00", "Tue 09:00", "Wed 09:00", "Thu 09:00", "Fri 09:00"]

    # Monday's occurrence runs; the clone is an occurrence id of the same series.
    ack(session, item["id"], "completed", "2026-05-18T13:00:30.000Z")
    assert sweep(cli, "2026-05-18T09:01:00")["cloned"] == 1
    clone_id = inbox_rows(session)[1]["id"]
    by_series, by_clone = show(cli, item["id"]), show(cli, clone_id)
    assert by_series == by_clone
    assert by_clone["task"]["id"] == item["id"]
    assert [r["id"] for r in by_clone["occurrences"]] == [item["id"], clone_id]
    assert by_clone["next_runs"] == [f"2026-05-{d}T13:00:00.000Z" for d in (19, 20, 21, 22, 25)]


def test_show_table_is_in_tz(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    out = ok(cli("tasks", "show", item["id"])).out
    assert "2026-05-18 09:00:00 EDT" in out and "2026-05-22 09:00:00 EDT" in out
    assert "13:00:00" not in out


def test_show_a_one_shot_task(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--at", "2026-06-11T09:00:00", "--now", MON_0800)
    assert item["next_run"] == "2026-06-11T13:00:00.000Z" and item["recurrence"] is None
    assert show(cli, item["id"])["next_runs"] == ["2026-06-11T13:00:00.000Z"]


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
    one_line_error(cli("tasks", "pause", item["id"]))  # nothing left to pause

    ok(cli("tasks", "resume", item["id"], "--now", "2026-05-18T10:00:00"))
    shown = show(cli, clone_id)
    assert [r["status"] for r in shown["occurrences"]] == ["completed", "pending"]
    assert shown["task"]["next_run"] == "2026-05-19T13:00:00.000Z"  # not overdue: the grid is kept


def test_resume_after_the_grace_follows_the_misfire_rule(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--recurrence", "0 9 * * *", "--now", MON_0800)
    ok(cli("tasks", "pause", item["id"]))
    ok(cli("tasks", "resume", item["id"], "--now", "2026-05-21T10:30:00"))  # Thursday, past the 1 h grace
    shown = show(cli, item["id"])
    assert shown["task"]["next_run"] == "2026-05-22T13:00:00.000Z"  # Friday 09:00
    assert shown["task"]["last_outcome"] == "missed"
    [run] = ok(cli("tasks", "runs", item["id"], "--json")).json()["runs"]
    assert run["outcome"] == "missed" and missed_slots(run) == 4  # Mon, Tue, Wed, Thu

    within = add(cli, session, "--recurrence", "0 9 * * *", "--now", MON_0800, prompt="within")
    ok(cli("tasks", "pause", within["id"]))
    ok(cli("tasks", "resume", within["id"], "--now", "2026-05-21T09:30:00"))  # Thursday, inside the grace
    shown = show(cli, within["id"])
    assert shown["task"]["next_run"] == "2026-05-21T13:00:00.000Z"  # runs at once, as Thursday's slot
    [run] = ok(cli("tasks", "runs", within["id"], "--json")).json()["runs"]
    assert run["outcome"] == "missed" and missed_slots(run) == 3  # Mon, Tue, Wed


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
    ok(cli("tasks", "update", item["id"], "--at", "2026-06-01T07:15:00"))
    [row] = show(cli, item["id"])["occurrences"]
    assert row["process_after"] == "2026-06-01T11:15:00.000Z"  # 07:15 EDT
    assert row["recurrence"] == WEEKDAYS_0900
    ok(cli("tasks", "update", item["id"], "--at", "2026-06-01T07:15:00Z"))
    assert show(cli, item["id"])["occurrences"][0]["process_after"] == "2026-06-01T07:15:00.000Z"
    ok(cli("tasks", "update", item["id"], "--at", "2026-12-01T09:00:00"))  # EST in winter
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
    ok(cli("tasks", "update", item["id"], "--at", "2026-05-20T09:00:00"))  # next run Wednesday
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


# --- refused input writes nothing ------------------------------------------------------------------


def test_agent_minimum_interval_needs_force(cli: Ncl, session: dict[str, Any]) -> None:
    one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", "--recurrence", "*/1 * * * *",
                       "--now", MON_0800))
    assert inbox_rows(session) == []
    forced = add(cli, session, "--recurrence", "*/1 * * * *", "--force", "--now", MON_0800)
    assert (forced["recurrence"], forced["next_run"]) == ("*/1 * * * *", "2026-05-18T12:01:00.000Z")

    item = weekday_task(cli, session)
    before = inbox_rows(session)
    one_line_error(cli("tasks", "update", item["id"], "--recurrence", "*/1 * * * *", "--now", MON_0800))
    assert inbox_rows(session) == before
    ok(cli("tasks", "update", item["id"], "--recurrence", "*/1 * * * *", "--force", "--now", MON_0800))
    assert show(cli, item["id"])["task"]["recurrence"] == "*/1 * * * *"
    ok(cli("tasks", "update", item["id"], "--recurrence", "*/5 * * * *", "--now", MON_0800))  # 300 s is allowed


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--recurrence", "0 0 31 2 *", "never"),
    ("--recurrence", "0 9 * * 1-5 *", "5 fields"),
    ("--recurrence", "every day", ""),
    ("--at", "tomorrow at nine", "ISO 8601"),
    ("--at", "2026-02-30T09:00:00", ""),
    ("--now", "noon", "ISO 8601"),
])
def test_bad_input_is_refused_without_a_row(cli: Ncl, session: dict[str, Any], option: str, value: str,
                                            says: str) -> None:
    line = one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", option, value,
                              *(("--now", MON_0800) if option != "--now" else ())))
    assert says in line
    assert inbox_rows(session) == []

    item = weekday_task(cli, session)
    before = inbox_rows(session)
    one_line_error(cli("tasks", "update", item["id"], option, value))
    assert inbox_rows(session) == before


@pytest.mark.parametrize("verb", ["resume", "pause", "cancel", "run-now"])
def test_bad_now_is_exit_1_for_every_command_that_takes_it(cli: Ncl, session: dict[str, Any], verb: str) -> None:
    item = weekday_task(cli, session)
    before = inbox_rows(session)
    assert "--now" in one_line_error(cli("tasks", verb, item["id"], "--now", "2026-13-01T09:00:00"))
    assert inbox_rows(session) == before


def test_bad_now_for_host_sweep_is_exit_1(cli: Ncl, session: dict[str, Any]) -> None:
    one_line_error(cli("host", "sweep", "--once", "--now", "yesterday"))


def test_add_to_a_closed_session_is_refused_without_a_row(cli: Ncl, session: dict[str, Any]) -> None:
    ok(cli("groups", "delete", "demo", "--yes"))
    assert ok(cli("sessions", "show", session["id"], "--json")).json()["status"] == "closed"
    one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", "--now", MON_0800))
    assert inbox_rows(session) == []


# --- host sweep --once --now -----------------------------------------------------------------------


def _no_runtime(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the runtime selection: ``sweep --now`` must never pick one, let alone start a runner."""
    raise AssertionError("host sweep --now selected a runtime")


def test_sweep_json_counts_a_due_task_as_woken_and_starts_nothing(
        cli: Ncl, session: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("host.cli.hostcmd.select_runtime", _no_runtime)
    item = weekday_task(cli, session)

    early = sweep(cli, "2026-05-18T08:59:59")
    assert set(early) >= SWEEP_KEYS
    assert early["now"] == "2026-05-18T12:59:59.000Z"
    assert {k: early[k] for k in SWEEP_KEYS - {"now"}} == {
        "sessions_checked": 1, "woken": 0, "applied": 0, "cloned": 0, "missed": 0, "retried": 0, "failed": 0}

    due = sweep(cli, "2026-05-18T13:00:05Z")
    assert due["now"] == "2026-05-18T13:00:05.000Z"
    assert (due["sessions_checked"], due["woken"], due["cloned"]) == (1, 1, 0)
    [row] = inbox_rows(session)
    assert (row["id"], row["status"], row["tries"]) == (item["id"], "pending", 0)
    assert not (Path(session["path"]) / ".heartbeat").exists()
    with closing(sqlite3.connect(f"file:{Path(session['path']) / 'outbound.db'}?mode=ro", uri=True)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM processing_ack").fetchone()[0] == 0
    assert sweep(cli, "2026-05-18T13:00:05Z")["woken"] == 1  # still due: nothing was started


def test_sweep_table_lists_the_counts(cli: Ncl, session: dict[str, Any]) -> None:
    out = ok(cli("host", "sweep", "--once", "--now", MON_0800)).out
    labels = [line.split("  ")[0].strip() for line in out.splitlines()]
    assert {"now", "sessions checked", "woken", "cloned"} <= set(labels)


def test_sweep_without_once_is_a_usage_error(cli: Ncl) -> None:
    one_line_error(cli("host", "sweep", "--now", MON_0800), code=2)


def test_runner_ack_then_sweep_clones_and_runs_json_has_the_documented_keys(
        cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    assert ok(cli("tasks", "runs", item["id"], "--json")).json() == {"runs": []}
    assert sweep(cli, "2026-05-18T09:00:00")["woken"] == 1
    ack(session, item["id"], "completed", "2026-05-18T13:00:42.000Z")

    result = sweep(cli, "2026-05-18T09:01:00")
    assert (result["cloned"], result["woken"], result["failed"]) == (1, 0, 0)
    assert sweep(cli, "2026-05-18T09:01:00")["cloned"] == 0  # idempotent

    runs = ok(cli("tasks", "runs", item["id"], "--json")).json()
    assert set(runs) == {"runs"}
    [run] = runs["runs"]
    assert set(run) == RUN_KEYS
    assert (run["series_id"], run["message_id"], run["scheduled_for"], run["finished_at"], run["outcome"]) == (
        item["id"], item["id"], "2026-05-18T13:00:00.000Z", "2026-05-18T13:00:42.000Z", "ran")
    clone_id = inbox_rows(session)[1]["id"]
    assert ok(cli("tasks", "runs", clone_id, "--json")).json() == runs  # by occurrence id too
    table = ok(cli("tasks", "runs", item["id"])).out
    assert "2026-05-18 09:00:00 EDT" in table and "ran" in table

    [series] = listed(cli)
    assert (series["next_run"], series["last_outcome"]) == ("2026-05-19T13:00:00.000Z", "ran")
    original, clone = inbox_rows(session)
    assert (original["status"], original["recurrence"]) == ("completed", None)
    assert (clone["status"], clone["recurrence"], clone["series_id"]) == ("pending", WEEKDAYS_0900, item["id"])


def test_a_finished_one_shot_is_listed_only_with_all(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--at", "2026-05-18T09:00:00", "--now", MON_0800)
    ack(session, item["id"], "completed", "2026-05-18T13:00:10.000Z")
    sweep(cli, "2026-05-18T09:01:00")
    assert listed(cli) == []
    [ended] = listed(cli, "--all")
    assert (ended["id"], ended["status"], ended["next_run"], ended["last_outcome"]) == (
        item["id"], "completed", None, "ran")
    assert [t["id"] for t in listed(cli, "--status", "completed")] == [item["id"]]


# --- reads never write -----------------------------------------------------------------------------


def test_reads_leave_every_file_byte_identical(cli: Ncl, cli_env: CliEnv, session: dict[str, Any]) -> None:
    live = weekday_task(cli, session)
    ended = weekday_task(cli, session, "ended")
    ack(session, live["id"], "completed", "2026-05-18T13:00:30.000Z")
    sweep(cli, "2026-05-18T09:01:00")
    ok(cli("tasks", "cancel", ended["id"]))
    clone_id = inbox_rows(session)[-1]["id"]
    inbound = Path(session["path"]) / "inbound.db"
    with closing(sqlite3.connect(f"file:{inbound}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version("inbound")

    before = snapshot(cli_env.data_dir)
    nudged = (cli_env.data_dir / ".nudge").stat().st_mtime_ns
    reads = [("tasks", "list"), ("tasks", "list", "--json"), ("tasks", "list", "--all"),
             ("tasks", "list", "--all", "--json"), ("tasks", "list", "--status", "cancelled", "--json"),
             ("tasks", "list", "--group", "demo", "--session", session["id"])]
    for ref in (live["id"], clone_id, ended["id"]):
        reads += [("tasks", "show", ref), ("tasks", "show", ref, "--json"),
                  ("tasks", "show", ref, "--json"),
                  ("tasks", "runs", ref), ("tasks", "runs", ref, "--json")]
    for args in reads:
        ok(cli(*args))
    assert snapshot(cli_env.data_dir) == before
    assert (cli_env.data_dir / ".nudge").stat().st_mtime_ns == nudged  # a read does not wake the host either
