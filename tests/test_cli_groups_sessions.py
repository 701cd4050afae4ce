"""Issue 2 acceptance through the ``ncl`` CLI (DESIGN §9, §10, §12): groups and sessions. The acceptance flow's
documented JSON shapes, a session folder holding both DBs (the documented query runs on it), create/show/list
agreeing, group options, tables in TZ, filters, and thread keys unique per group.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from cli_kit import GROUP_KEYS, Ncl, ok, one_line_error

from schemas.ddl import latest_version
from schemas.times import from_text

if TYPE_CHECKING:
    from conftest import CliEnv

SESSION_KEYS = {"id", "agent_group_id", "status", "thread_key", "created_at", "last_active_at", "path"}
STORED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SESSION_ID = re.compile(r"^sess-\d{13}-[0-9a-z]{6}$")
DOCUMENTED_QUERY = (
    "SELECT id, status, process_after, recurrence, series_id FROM messages_in "
    "WHERE kind='task' ORDER BY process_after"
)


def test_acceptance_flow_documented_shapes(ncl: Ncl, cli_env: CliEnv) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))
    ok(ncl("sessions", "create", "--group", "demo"))

    sessions = ok(ncl("sessions", "list", "--json")).json()
    assert set(sessions) == {"sessions"}
    [session] = sessions["sessions"]
    assert set(session) == SESSION_KEYS
    assert SESSION_ID.match(session["id"])
    assert session["agent_group_id"] == "ag-demo"
    assert session["status"] == "active"
    assert session["thread_key"] is None
    assert STORED.match(session["created_at"]) and STORED.match(session["last_active_at"])
    assert session["path"] == str(cli_env.data_dir / "v2-sessions" / "ag-demo" / session["id"])

    groups = ok(ncl("groups", "list", "--json")).json()
    assert set(groups) == {"groups"}
    [group] = groups["groups"]
    assert set(group) == GROUP_KEYS
    assert group["id"] == "ag-demo"
    assert group["name"] == "demo"
    assert group["channels"] == ["cli"]
    assert group["session_mode"] == "shared"
    assert group["provider"] is None and group["model"] is None
    assert STORED.match(group["created_at"])
    assert from_text(group["created_at"]) <= from_text(session["created_at"])
    assert (cli_env.data_dir / "groups" / "ag-demo").is_dir()


def test_session_folder_holds_both_dbs_and_the_documented_query_runs(demo_session: dict[str, Any]) -> None:
    path = Path(demo_session["path"])
    assert path.is_dir()
    assert (path / "inbound.db").is_file() and (path / "outbound.db").is_file()
    assert (path / "inbox").is_dir() and (path / "outbox").is_dir()
    with closing(sqlite3.connect(f"file:{path / 'inbound.db'}?mode=ro", uri=True)) as conn:
        assert conn.execute(DOCUMENTED_QUERY).fetchall() == []
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version("inbound")
    with closing(sqlite3.connect(f"file:{path / 'outbound.db'}?mode=ro", uri=True)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version("outbound")


def test_create_json_is_the_list_item(ncl: Ncl) -> None:
    group = ok(ncl("groups", "create", "demo", "--channel", "cli", "--json")).json()
    session = ok(ncl("sessions", "create", "--group", "demo", "--json")).json()
    assert ok(ncl("groups", "list", "--json")).json() == {"groups": [{**group, "active_sessions": 1}]}  # made: 0
    assert ok(ncl("sessions", "list", "--json")).json() == {"sessions": [session]}


def test_show_json_is_the_list_item(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    [group] = ok(ncl("groups", "list", "--json")).json()["groups"]
    for ref in ("demo", "ag-demo", "DEMO"):
        shown = ok(ncl("groups", "show", ref, "--json")).json()
        assert {k: shown[k] for k in GROUP_KEYS} == group
    assert ok(ncl("sessions", "show", demo_session["id"], "--json")).json() == demo_session


def test_group_options_are_stored(ncl: Ncl, cli_env: CliEnv) -> None:
    (cli_env.root / "rules.md").write_text("Be brief.\n")
    created = ok(ncl("groups", "create", "Support_Bot-2", "--channel", "cli", "--channel", "queue:support-jobs",
                     "--channel", "toolkit:lookup", "--rules", "@rules.md", "--session-mode", "per-thread",
                     "--provider", "anthropic", "--model", "claude-x", "--json")).json()
    assert created["id"] == "ag-support_bot-2"
    assert created["channels"] == ["cli", "queue:support-jobs", "toolkit:lookup"]
    assert (created["session_mode"], created["provider"], created["model"]) == ("per-thread", "anthropic", "claude-x")
    shown = ok(ncl("groups", "show", "support_bot-2", "--json")).json()
    assert shown["rules"] == "Be brief.\n"
    ok(ncl("groups", "create", "inline", "--rules", "Say hi.", "--json"))
    assert ok(ncl("groups", "show", "inline", "--json")).json()["rules"] == "Say hi."


def test_readable_tables_show_times_in_tz(ncl: Ncl, demo_session: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    local = from_text(demo_session["created_at"]).astimezone(ZoneInfo("Asia/Kolkata")).strftime("%Y-%m-%d %H:%M:%S %Z")
    assert local.endswith("IST")

    groups = ok(ncl("groups", "list")).out.splitlines()
    assert groups[0].split() == ["ID", "NAME", "CHANNELS", "MODE", "SESSIONS", "PROVIDER", "MODEL", "CREATED"]
    assert groups[1].split()[:5] == ["ag-demo", "demo", "cli", "shared", "1"]  # SESSIONS: how many are active

    sessions = ok(ncl("sessions", "list")).out
    header, row = sessions.splitlines()
    assert header.split()[:4] == ["ID", "GROUP", "STATUS", "THREAD"]
    assert row.startswith(demo_session["id"]) and "ag-demo" in row and "active" in row
    assert local in row
    assert demo_session["created_at"] not in row  # tables show TZ, not the stored text

    shown = ok(ncl("sessions", "show", demo_session["id"])).out
    assert demo_session["path"] in shown and local in shown
    assert "demo" in ok(ncl("groups", "show", "demo")).out


def test_empty_tables_say_so(ncl: Ncl) -> None:
    assert "no groups" in ok(ncl("groups", "list")).out
    assert "no sessions" in ok(ncl("sessions", "list")).out
    assert ok(ncl("groups", "list", "--json")).json() == {"groups": []}
    assert ok(ncl("sessions", "list", "--json")).json() == {"sessions": []}


def test_sessions_list_filters_by_agent_group_id(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    ok(ncl("groups", "create", "other", "--channel", "cli"))
    other = ok(ncl("sessions", "create", "--group", "other", "--json")).json()
    assert ok(ncl("sessions", "list", "--agent-group-id", "ag-demo", "--json")).json() == {"sessions": [demo_session]}
    assert ok(ncl("sessions", "list", "--agent-group-id", "ag-other", "--json")).json() == {"sessions": [other]}
    assert len(ok(ncl("sessions", "list", "--json")).json()["sessions"]) == 2


def test_thread_keys_are_unique_per_group(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))
    ok(ncl("groups", "create", "other", "--channel", "cli"))
    first = ok(ncl("sessions", "create", "--group", "demo", "--thread", "t1", "--json")).json()
    assert first["thread_key"] == "t1"
    refused = ncl("sessions", "create", "--group", "demo", "--thread", "t1", "--json")
    assert refused.code == 1
    assert "t1" in one_line_error(refused)
    ok(ncl("sessions", "create", "--group", "demo", "--thread", "t2"))
    ok(ncl("sessions", "create", "--group", "other", "--thread", "t1"))
    ok(ncl("sessions", "create", "--group", "demo"))  # no thread key: any number
    ok(ncl("sessions", "create", "--group", "demo"))
    listed = ok(ncl("sessions", "list", "--agent-group-id", "ag-demo", "--json")).json()["sessions"]
    assert sorted(s["thread_key"] or "-" for s in listed) == ["-", "-", "t1", "t2"]


def test_a_refused_session_leaves_no_folder(ncl: Ncl, cli_env: CliEnv) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))
    ok(ncl("sessions", "create", "--group", "demo", "--thread", "t1"))
    assert ncl("sessions", "create", "--group", "demo", "--thread", "t1").code == 1
    assert len(list((cli_env.data_dir / "v2-sessions" / "ag-demo").iterdir())) == 1


def test_an_operator_closes_a_session_with_nothing_left_to_do(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    """(There was no way to: every session made stayed in every sweep for good.) Work waiting or running keeps it
    open; --force closes it past the work (a running host stops its runner: test_job_sessions)."""
    sid, folder = demo_session["id"], Path(demo_session["path"])
    ok(ncl("tasks", "add", "--session", sid, "--prompt", "later", "--at", "2030-01-01T09:00:00"))
    assert one_line_error(ncl("sessions", "close", sid)).endswith(
        f"session {sid} has 1 messages or tasks waiting, running or paused (ncl messages list --session {sid}); "
        "--force closes it anyway, and they are never done")
    assert ok(ncl("sessions", "close", sid, "--force", "--json")).json() == {"id": sid, "status": "closed"}
    assert ok(ncl("sessions", "show", sid, "--json")).json()["status"] == "closed"
    assert one_line_error(ncl("sessions", "close", sid)).endswith(f"session {sid} is closed already")
    assert (folder / "inbound.db").exists()
