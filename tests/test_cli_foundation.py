"""Issue 2 acceptance through the ``ncl`` CLI: groups, sessions, doctor, errors (DESIGN §9, §10, §12)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
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
RowIn = Callable[..., dict[str, Any]]
InsertRow = Callable[[sqlite3.Connection, str, dict[str, Any]], None]

GROUP_KEYS = {"id", "name", "channels", "session_mode", "provider", "model", "created_at"}
SESSION_KEYS = {"id", "agent_group_id", "status", "thread_key", "created_at", "last_active_at", "path"}
STORED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SESSION_ID = re.compile(r"^sess-\d{13}-[0-9a-z]{6}$")
DOCUMENTED_QUERY = (
    "SELECT id, status, process_after, recurrence, series_id FROM messages_in "
    "WHERE kind='task' ORDER BY process_after"
)


def ok(result: Result) -> Result:
    assert result.code == 0, f"exit {result.code}: {result.err}"
    return result


def one_line_error(result: Result) -> str:
    assert result.code != 0
    assert "Traceback" not in result.err and "Traceback" not in result.out
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("ncl: ")
    return result.err_lines[0]


def dump(path: Path) -> list[str]:
    """The logical content of a DB, independent of WAL files and page layout."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return list(conn.iterdump())


# --- the acceptance flow ---------------------------------------------------------------------------


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
    assert ok(ncl("groups", "list", "--json")).json() == {"groups": [group]}
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
    assert groups[0].split() == ["ID", "NAME", "CHANNELS", "SESSIONS", "PROVIDER", "MODEL", "CREATED"]
    assert groups[1].split()[:3] == ["ag-demo", "demo", "cli"]

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


# --- group delete ----------------------------------------------------------------------------------


@pytest.fixture
def busy_group(ncl: Ncl, demo_session: dict[str, Any], row_in: RowIn, insert_row: InsertRow) -> dict[str, Any]:
    """demo (cli + queue:jobs) whose session holds a live recurring task, a finished one and a chat."""
    inbound = Path(demo_session["path"]) / "inbound.db"
    with closing(db.connect(inbound, "inbound")) as conn, db.transaction(conn):
        insert_row(conn, "messages_in", row_in(id="task-1781168400000-aaaaaa", seq=2, recurrence="0 9 * * *",
                                              series_id="task-1781168400000-aaaaaa"))
        insert_row(conn, "messages_in", row_in(id="task-1781168400000-bbbbbb", seq=4, status="completed",
                                              series_id="task-1781168400000-bbbbbb"))
        insert_row(conn, "messages_in", row_in(id="msg-1781168400000-cccccc", seq=6, kind="chat",
                                              series_id=None, content='{"text":"hi","sender":"user"}'))
    return demo_session


def statuses(session: dict[str, Any]) -> dict[str, str]:
    with closing(sqlite3.connect(f"file:{Path(session['path']) / 'inbound.db'}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("SELECT id, status FROM messages_in").fetchall())


def test_group_delete_without_yes_changes_nothing(ncl: Ncl, cli_env: CliEnv, busy_group: dict[str, Any]) -> None:
    before_central = dump(cli_env.central_db)
    before_inbound = (Path(busy_group["path"]) / "inbound.db").read_bytes()
    refused = ncl("groups", "delete", "demo")
    assert refused.code == 1
    assert "--yes" in one_line_error(refused)
    assert dump(cli_env.central_db) == before_central
    assert (Path(busy_group["path"]) / "inbound.db").read_bytes() == before_inbound
    assert [g["id"] for g in ok(ncl("groups", "list", "--json")).json()["groups"]] == ["ag-demo"]
    assert ok(ncl("sessions", "show", busy_group["id"], "--json")).json()["status"] == "active"


def test_group_delete_with_yes_pauses_tasks_closes_sessions_keeps_files(
    ncl: Ncl, cli_env: CliEnv, busy_group: dict[str, Any]
) -> None:
    ok(ncl("groups", "create", "keeper", "--channel", "cli"))
    done = ok(ncl("groups", "delete", "demo", "--yes", "--json")).json()
    assert done["sessions_closed"] == 1 and done["task_series_paused"] == 1

    assert statuses(busy_group) == {
        "task-1781168400000-aaaaaa": "paused",  # live series: paused, never deleted
        "task-1781168400000-bbbbbb": "completed",
        "msg-1781168400000-cccccc": "pending",
    }
    assert [g["id"] for g in ok(ncl("groups", "list", "--json")).json()["groups"]] == ["ag-keeper"]
    assert ok(ncl("sessions", "show", busy_group["id"], "--json")).json()["status"] == "closed"
    path = Path(busy_group["path"])
    assert (path / "inbound.db").is_file() and (path / "outbound.db").is_file()
    assert (cli_env.data_dir / "groups" / "ag-demo" / "AGENT.md").is_file()


def test_deleting_a_group_unwires_its_channels(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "queue:jobs"))
    ok(ncl("groups", "delete", "demo", "--yes"))
    assert ok(ncl("groups", "create", "next", "--channel", "queue:jobs", "--json")).json()["channels"] == [
        "queue:jobs"
    ]


# --- channels --------------------------------------------------------------------------------------


def test_webhook_token_is_shown_once_and_only_its_hash_is_stored(ncl: Ncl, cli_env: CliEnv) -> None:
    created = ok(ncl("groups", "create", "hooks", "--channel", "webhook:github", "--channel", "cli", "--json")).json()
    assert set(created) == GROUP_KEYS | {"webhook_tokens"}
    token = created["webhook_tokens"]["github"]
    assert set(created["webhook_tokens"]) == {"github"}
    assert isinstance(token, str) and len(token) >= 32
    with closing(sqlite3.connect(f"file:{cli_env.central_db}?mode=ro", uri=True)) as conn:
        stored = dict(conn.execute("SELECT channel, token_hash FROM wirings").fetchall())
    assert stored == {"webhook:github": hashlib.sha256(token.encode()).hexdigest(), "cli": None}
    for path in cli_env.data_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for listing in (ncl("groups", "list", "--json"), ncl("groups", "show", "hooks", "--json"), ncl("groups", "list")):
        assert token not in ok(listing).out
    assert "webhook_tokens" not in ok(ncl("groups", "show", "hooks", "--json")).json()


def test_a_channel_wired_to_another_group_is_refused(ncl: Ncl, cli_env: CliEnv) -> None:
    ok(ncl("groups", "create", "first", "--channel", "cli", "--channel", "queue:jobs"))
    refused = ncl("groups", "create", "second", "--channel", "cli", "--channel", "queue:jobs")
    assert refused.code == 1
    message = one_line_error(refused)
    assert "queue:jobs" in message and "ag-first" in message
    assert [g["id"] for g in ok(ncl("groups", "list", "--json")).json()["groups"]] == ["ag-first"]
    assert not (cli_env.data_dir / "groups" / "ag-second").exists()
    ok(ncl("groups", "create", "third", "--channel", "cli"))  # cli may be on every group


def test_repeated_channel_is_wired_once(ncl: Ncl) -> None:
    created = ok(ncl("groups", "create", "demo", "--channel", "cli", "--channel", "cli", "--json")).json()
    assert created["channels"] == ["cli"]


# --- doctor ----------------------------------------------------------------------------------------


def test_doctor_json_shape(ncl: Ncl) -> None:
    result = ncl("doctor", "--json")
    report = result.json()
    assert set(report) == {"ok", "checks"}
    assert all(set(check) == {"name", "ok", "detail"} for check in report["checks"])
    names = [c["name"] for c in report["checks"]]
    assert {"timezone", "data_dir", "docker_engine", "image", "api_key", "schema"} <= set(names)
    assert report["ok"] is all(c["ok"] for c in report["checks"])
    assert result.code == (0 if report["ok"] else 1)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["timezone"]["ok"] is True and "UTC" in by_name["timezone"]["detail"]
    assert by_name["data_dir"]["ok"] is True
    assert by_name["api_key"]["ok"] is True  # the default provider is the offline mock


def test_doctor_fails_and_names_a_rejected_tz(ncl: Ncl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Not/AZone")
    result = ncl("doctor", "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False
    [timezone] = [c for c in report["checks"] if c["name"] == "timezone"]
    assert timezone["ok"] is False and "Not/AZone" in timezone["detail"]
    assert "Traceback" not in result.err


def test_doctor_table_and_schema_versions(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    table = ncl("doctor").out
    assert "timezone" in table and "schema" in table
    report = ncl("doctor", "--json").json()
    [schema] = [c for c in report["checks"] if c["name"] == "schema"]
    assert schema["ok"] is True
    assert f"inbound v{latest_version('inbound')}" in schema["detail"]


def test_doctor_flags_a_session_file_newer_than_this_release(ncl: Ncl, demo_session: dict[str, Any]) -> None:
    inbound = Path(demo_session["path"]) / "inbound.db"
    with closing(sqlite3.connect(inbound)) as conn:
        conn.execute(f"PRAGMA user_version={latest_version('inbound') + 1}")
    result = ncl("doctor", "--json")
    assert result.code == 1
    [schema] = [c for c in result.json()["checks"] if c["name"] == "schema"]
    assert schema["ok"] is False and str(inbound) in schema["detail"]


# --- reads never write -----------------------------------------------------------------------------

READS = [
    ("groups", "list"),
    ("groups", "list", "--json"),
    ("sessions", "list"),
    ("sessions", "list", "--json"),
    ("doctor",),
    ("doctor", "--json"),
]


def test_reads_on_a_fresh_install_create_nothing(ncl: Ncl, cli_env: CliEnv) -> None:
    for args in READS:
        assert ncl(*args).code in (0, 1), args  # doctor may fail a check; it still must not write
    for args in [("groups", "show", "demo"), ("sessions", "show", "sess-1781168400000-aaaaaa"),
                 ("groups", "delete", "demo"), ("sessions", "list", "--agent-group-id", "ag-demo")]:
        assert ncl(*args).code == 1, args
    assert not cli_env.central_db.exists()
    assert not cli_env.data_dir.exists()


def test_reads_change_no_data(ncl: Ncl, cli_env: CliEnv, busy_group: dict[str, Any]) -> None:
    inbound = Path(busy_group["path"]) / "inbound.db"
    outbound = Path(busy_group["path"]) / "outbound.db"
    central, inbound_bytes, outbound_bytes = dump(cli_env.central_db), inbound.read_bytes(), outbound.read_bytes()
    for args in [*READS, ("groups", "show", "demo"), ("sessions", "show", busy_group["id"]),
                 ("sessions", "list", "--agent-group-id", "ag-demo")]:
        assert ncl(*args).code in (0, 1), args
    assert dump(cli_env.central_db) == central
    assert inbound.read_bytes() == inbound_bytes
    assert outbound.read_bytes() == outbound_bytes


# --- bad input: exit 1 (2 for usage) and one line on stderr ----------------------------------------


def _not_a_database(env: CliEnv) -> dict[str, str]:
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.central_db.write_bytes(b"not a database at all" * 200)
    return {}


def _newer_central(env: CliEnv) -> dict[str, str]:
    env.data_dir.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(env.central_db)) as conn:
        conn.execute(f"PRAGMA user_version={latest_version('central') + 1}")
    return {}


def _data_dir_is_a_file(env: CliEnv) -> dict[str, str]:
    blocker = env.root / "blocker"
    blocker.write_text("")
    return {"NCL_DATA_DIR": str(blocker / "data")}


# (id, argv, environment or set-up, expected exit code)
BAD: list[tuple[str, list[str], Any, int]] = [
    ("name-dotdot", ["groups", "create", "../x", "--channel", "cli"], None, 1),
    ("name-slash", ["groups", "create", "a/b"], None, 1),
    ("name-dot", ["groups", "create", "a.b"], None, 1),
    ("name-empty", ["groups", "create", ""], None, 1),
    ("name-space", ["groups", "create", "a b"], None, 1),
    ("name-49", ["groups", "create", "x" * 49], None, 1),
    ("name-taken", ["groups", "create", "demo"], None, 1),
    ("name-taken-case", ["groups", "create", "DEMO"], None, 1),
    ("channel-bogus", ["groups", "create", "bot", "--channel", "bogus"], None, 1),
    ("channel-no-name", ["groups", "create", "bot", "--channel", "queue:"], None, 1),
    ("channel-path", ["groups", "create", "bot", "--channel", "webhook:../x"], None, 1),
    ("rules-missing-file", ["groups", "create", "bot", "--rules", "@missing-file"], None, 1),
    ("session-mode", ["groups", "create", "bot", "--session-mode", "weird"], None, 1),
    ("provider", ["groups", "create", "bot", "--provider", "openai"], None, 1),
    ("groups-show-unknown", ["groups", "show", "nope"], None, 1),
    ("groups-delete-unknown", ["groups", "delete", "nope", "--yes"], None, 1),
    ("groups-delete-no-yes", ["groups", "delete", "demo"], None, 1),
    ("groups-show-missing-arg", ["groups", "show"], None, 2),
    ("groups-create-missing-arg", ["groups", "create"], None, 2),
    ("groups-unknown-option", ["groups", "list", "--bogus"], None, 2),
    ("sessions-create-missing-group", ["sessions", "create"], None, 2),
    ("sessions-create-unknown-group", ["sessions", "create", "--group", "nope"], None, 1),
    ("sessions-create-bad-group-name", ["sessions", "create", "--group", "../x"], None, 1),
    ("sessions-create-empty-thread", ["sessions", "create", "--group", "demo", "--thread", " "], None, 1),
    ("sessions-create-thread-no-value", ["sessions", "create", "--group", "demo", "--thread"], None, 2),
    ("sessions-show-unknown", ["sessions", "show", "sess-1781168400000-zzzzzz"], None, 1),
    ("sessions-show-path", ["sessions", "show", "../../etc"], None, 1),
    ("sessions-list-unknown-group", ["sessions", "list", "--agent-group-id", "ag-nope"], None, 1),
    ("sessions-list-status", ["sessions", "list", "--status", "weird"], None, 1),
    ("unknown-command", ["frobnicate"], None, 2),
    ("doctor-unknown-option", ["doctor", "--bogus"], None, 2),
    ("env-max-runners-word", ["groups", "list"], {"NCL_MAX_RUNNERS": "many"}, 1),
    ("env-max-runners-zero", ["doctor"], {"NCL_MAX_RUNNERS": "0"}, 1),
    ("env-runtime", ["sessions", "list"], {"NCL_RUNTIME": "podman"}, 1),
    ("env-data-dir-under-a-file", ["groups", "create", "bot"], _data_dir_is_a_file, 1),
    ("central-not-a-database", ["groups", "list"], _not_a_database, 1),
    ("central-newer", ["sessions", "list"], _newer_central, 1),
]


def _prepare(env_or_setup: Any, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    if callable(env_or_setup):
        env_or_setup = env_or_setup(cli_env)
    for name, value in (env_or_setup or {}).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def with_demo(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))


@pytest.mark.parametrize(("argv", "env"), [pytest.param(c[1], c[2], id=c[0]) for c in BAD])
def test_bad_input_is_one_line_on_stderr(
    ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: Any,
    request: pytest.FixtureRequest,
) -> None:
    if not callable(env):  # the set-ups build their own data dir; the rest run next to group demo
        request.getfixturevalue("with_demo")
    _prepare(env, cli_env, monkeypatch)
    result = ncl(*argv)
    assert result.code in (1, 2)
    one_line_error(result)
    assert result.out == ""


@pytest.mark.parametrize(
    ("argv", "env", "code"),
    [
        pytest.param(c[1], c[2], c[3], id=c[0]) for c in BAD
    ],
)
def test_bad_input_exit_code(
    ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: Any, code: int,
    request: pytest.FixtureRequest,
) -> None:
    if not callable(env):
        request.getfixturevalue("with_demo")
    _prepare(env, cli_env, monkeypatch)
    assert ncl(*argv).code == code


def test_refused_create_leaves_the_groups_unchanged(ncl: Ncl, cli_env: CliEnv, with_demo: None) -> None:
    before = dump(cli_env.central_db)
    for argv in (["groups", "create", "../x"], ["groups", "create", "bot", "--channel", "bogus"],
                 ["groups", "create", "DEMO"], ["groups", "create", "bot", "--rules", "@missing-file"]):
        assert ncl(*argv).code == 1
    assert dump(cli_env.central_db) == before
    assert sorted(p.name for p in (cli_env.data_dir / "groups").iterdir()) == ["ag-demo"]


# --- end to end through the installed console script -----------------------------------------------


def _ncl_command() -> list[str]:
    script = Path(sys.executable).with_name("ncl")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from host.cli import main; main()"]


@pytest.mark.parametrize(
    ("argv", "extra_env", "code"),
    [
        pytest.param(["groups", "create", "../x", "--channel", "cli"], {}, 1, id="bad-name"),
        pytest.param(["sessions", "show", "sess-1781168400000-zzzzzz"], {}, 1, id="unknown-session"),
        pytest.param(["groups", "list"], {"NCL_MAX_RUNNERS": "many"}, 1, id="bad-setting"),
        pytest.param(["groups", "list", "--bogus"], {}, 2, id="usage"),
    ],
)
def test_console_script_end_to_end(tmp_path: Path, argv: list[str], extra_env: dict[str, str], code: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    env.update({"TZ": "UTC", "NCL_DATA_DIR": str(tmp_path / "data"), **extra_env})
    done = subprocess.run([*_ncl_command(), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ncl: "), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_console_script_json_output(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    env.update({"TZ": "UTC", "NCL_DATA_DIR": str(tmp_path / "data")})
    done = subprocess.run([*_ncl_command(), "groups", "list", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"groups": []}
    assert not (tmp_path / "data").exists()
