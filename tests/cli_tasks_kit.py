"""What the ``ncl tasks`` tests (tests/test_cli_tasks_*.py) share: an install in America/New_York (the ``cli`` and
``session`` fixtures; test modules import them by name: ``from cli_tasks_kit import cli as cli``), the commands they
run through it (add a task, show, list, sweep at an instant), what the runner would write (an ack), the session's
inbox as ``sqlite3`` shows it, and their one-line-error check (exit code given, ``ncl: `` prefix)."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from cli_kit import Ncl, ok

from host.store import db

if TYPE_CHECKING:
    from conftest import CliEnv, Result

NY = ZoneInfo("America/New_York")
WEEKDAYS_0900 = "0 9 * * 1-5"
MON_0800 = "2026-05-18T08:00:00"  # Monday, local (EDT, UTC-4)


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
