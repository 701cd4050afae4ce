"""Issue 2 acceptance through the ``ncl`` CLI (DESIGN §9, §10, §12): what a command does to the stored data. ``groups
delete`` changes nothing without ``--yes`` and with it pauses live task series, closes sessions and keeps every file,
unwiring the group's channels; reads (list, show, doctor) never write, not even on a fresh install.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cli_kit import Ncl, dump, ok, one_line_error

from host.store import db

if TYPE_CHECKING:
    from conftest import CliEnv

RowIn = Callable[..., dict[str, Any]]
InsertRow = Callable[[sqlite3.Connection, str, dict[str, Any]], None]


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
