"""One session's inbox that cannot be read (random bytes, a newer schema) does not blind the overview commands:
``tasks list``, ``status``, ``queue list`` and ``tasks show`` print every other session's part, warn naming the file
left out, and exit 1 (a script sees that the answer is incomplete, and its JSON still parses)."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok, one_line_error

BROKEN = {"random bytes": lambda path: path.write_bytes(bytes(range(256)) * 200),
          "a newer schema": lambda path: _newer(path),
          "a missing file": lambda path: path.unlink()}  # (was left out unsaid, exit 0: attack review)


def _newer(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version=99")


@pytest.fixture
def two(ncl: Ncl) -> tuple[dict[str, Any], dict[str, Any]]:
    ok(ncl("groups", "create", "team", "--channel", "cli", "--channel", "queue:jobs"))
    good = ok(ncl("sessions", "create", "--group", "team", "--json")).json()
    bad = ok(ncl("sessions", "create", "--group", "team", "--thread", "x", "--json")).json()
    for session in (good, bad):
        ok(ncl("tasks", "add", "--session", session["id"], "--prompt", f"in {session['id']}", "--recurrence",
               "0 9 * * *"))
    return good, bad


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_the_overviews_list_every_readable_session_and_exit_1_naming_the_file_left_out(
        ncl: Ncl, two: tuple[dict[str, Any], dict[str, Any]], damage: str, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = two
    ok(ncl("queue", "send", "--queue", "jobs", "--json", '{"prompt": "a job"}'))
    BROKEN[damage](Path(bad["path"]) / "inbound.db")
    for args, check in [
        (("tasks", "list", "--json"), lambda data: {t["session_id"] for t in data["tasks"]} == {good["id"]}),
        (("status", "--json"), lambda data: {i["session_id"] for i in data["next_due"]} >= {good["id"]}
         and bad["id"] not in {i["session_id"] for i in data["next_due"]}),
        (("queue", "list", "--json"), lambda data: data["queues"][0]["pending"] == 1),
    ]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = ncl(*args)
        assert result.code == 1, (args, result.err)
        assert check(json.loads(result.out)), (args, result.out)
        said = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "session_unreadable"]
        assert said and all(str(Path(bad["path"]) / "inbound.db") in line for line in said), (args, said)
    # Found elsewhere, a task is shown all the same (the registry points at its session), and a healthy command
    # run after exits 0 again.
    task = json.loads(ncl("tasks", "list", "--json").out)["tasks"][0]
    assert ok(ncl("tasks", "show", task["id"], "--json")).json()["task"]["session_id"] == good["id"]
    assert ok(ncl("sessions", "list", "--json")).json()["sessions"]


@pytest.mark.parametrize("status", ["closed", "active"])
def test_a_closed_session_whose_folder_is_gone_is_left_out_unsaid(two: tuple[dict[str, Any], dict[str, Any]],
                                                                 status: str) -> None:
    """``sessions prune`` moves a closed session's folder aside and deletes its row in one central.db transaction,
    which a reader that listed the sessions just before does not see: that session is gone, not broken (review). An
    active session's folder is never removed so: its loss is said."""
    from host import errors
    from host.store import sessions

    good, gone = (sessions.Session(**{**s, "status": status}) for s in two)
    shutil.rmtree(gone.folder)
    errors.left_out.clear()
    read = [session.id for session, _ in sessions.readable([good, gone], lambda path: path.stat().st_size)]
    assert read == [good.id] and errors.left_out == (set() if status == "closed" else {gone.id})
    errors.left_out.clear()


@pytest.mark.parametrize("command", [("tasks", "list", "--session"), ("messages", "list", "--session")])
def test_a_broken_session_asked_for_alone_is_a_one_line_error_naming_its_file(
        ncl: Ncl, two: tuple[dict[str, Any], dict[str, Any]], command: tuple[str, ...]) -> None:
    _, bad = two
    BROKEN["random bytes"](Path(bad["path"]) / "inbound.db")
    line = one_line_error(ncl(*command, bad["id"], "--json"))
    assert str(Path(bad["path"]) / "inbound.db") in line and "file is not a database" in line


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_a_session_whose_inbox_is_broken_is_closed_with_force(
        ncl: Ncl, two: tuple[dict[str, Any], dict[str, Any]], damage: str) -> None:
    """Its inbox cannot say what closing it leaves undone: without --force that is a one-line error naming the file
    and --force; with it the session is closed, its inbox never read (attack review: --force failed too)."""
    _, bad = two
    BROKEN[damage](Path(bad["path"]) / "inbound.db")
    line = one_line_error(ncl("sessions", "close", bad["id"]))
    assert str(Path(bad["path"]) / "inbound.db") in line and "--force closes" in line, line
    assert ok(ncl("sessions", "close", bad["id"], "--force", "--json")).json() == {"id": bad["id"], "status": "closed"}


@pytest.mark.parametrize("damage", sorted(BROKEN))
def test_deleting_a_group_with_a_broken_session_pauses_the_rest_names_it_and_exits_1(
        ncl: Ncl, two: tuple[dict[str, Any], dict[str, Any]], damage: str, caplog: pytest.LogCaptureFixture) -> None:
    good, bad = two
    BROKEN[damage](Path(bad["path"]) / "inbound.db")
    with caplog.at_level(logging.WARNING):
        result = ncl("groups", "delete", "team", "--yes", "--json")
    assert result.code == 1, result.err
    assert json.loads(result.out)["sessions_closed"] == 2 and json.loads(result.out)["task_series_paused"] == 1
    said = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "session_unreadable"]
    assert said and all(str(Path(bad["path"]) / "inbound.db") in line for line in said), said
    assert not (Path(bad["path"]) / "inbound.db").exists() or damage != "a missing file"  # never made anew
    assert {s["status"] for s in ok(ncl("sessions", "list", "--json")).json()["sessions"]} == {"closed"}
    listed = ncl("tasks", "list", "--all", "--json")  # (which leaves the broken one out, and says so: exit 1)
    assert listed.code == 1
    [task] = json.loads(listed.out)["tasks"]
    assert (task["session_id"], task["status"]) == (good["id"], "paused")
