"""``ncl tasks`` in-process, in America/New_York (DESIGN §6, §10, §12.8, §12.9, §12.11, §12.13): adding, listing and
showing tasks. The documented JSON shapes, tables in TZ, the list's filters, ``show`` by series or occurrence id with
the next runs, and reads that leave every file byte-identical.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import (
    MON_0800,
    NY,
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

from schemas import ids
from schemas.ddl import latest_version
from schemas.times import from_text

if TYPE_CHECKING:
    from conftest import CliEnv

LIST_KEYS = {"id", "agent_group_id", "session_id", "status", "next_run", "recurrence", "prompt", "last_outcome",
             "session_status", "until", "runs_left", "ended"}  # session_status: issue 13; the last three: 16.2


def snapshot(data_dir: Path) -> dict[str, str]:
    """Every path under the data dir -> sha256 of its bytes ('' for a folder)."""
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            for p in sorted(data_dir.rglob("*"))}


def local(text: str) -> datetime:
    return from_text(text).astimezone(NY)


# --- add and list ----------------------------------------------------------------------------------


def test_add_then_list_json_has_exactly_the_documented_keys(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    [listed_item] = listed(cli)
    assert set(listed_item) == LIST_KEYS
    assert listed_item == item  # `add` prints the list item alone
    assert listed_item == {
        "id": item["id"], "agent_group_id": "ag-demo", "session_id": session["id"], "status": "pending",
        "next_run": "2026-05-18T13:00:00.000Z", "recurrence": WEEKDAYS_0900, "prompt": "post the standup",
        "last_outcome": None, "session_status": "active", "until": None, "runs_left": None, "ended": None,
    }
    [row] = inbox_rows(session)
    assert (row["id"], row["kind"], row["status"], row["series_id"]) == (item["id"], "task", "pending", item["id"])


def test_list_table_shows_the_next_run_in_tz(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    lines = ok(cli("tasks", "list")).out.splitlines()
    assert lines[0].split()[:4] == ["ID", "GROUP", "SESSION", "STATUS"]
    [line] = [x for x in lines[1:] if ids.short(item["id"]) in x]  # the table shows ids short
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


@pytest.mark.parametrize("recurrence", ["@yearly", "every 1h"])
def test_show_a_series_whose_next_slot_is_past_the_calendars_end(cli: Ncl, session: dict[str, Any],
                                                                  recurrence: str) -> None:
    """``tasks add`` takes a series at the last night of the year 9999; ``tasks show`` failed on it ("no firing
    before the end of the calendar", attack review; an interval's with StopIteration): it shows the runs there are."""
    item = add(cli, session, "--recurrence", recurrence, "--at", "9999-12-31T18:00:00", "--now", MON_0800)
    assert show(cli, item["id"])["next_runs"][0] == "9999-12-31T23:00:00.000Z"


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
