"""Issue 13, point 7: series of a closed session (its group deleted) through ``ncl`` in America/New_York. They show
in ``tasks list --all`` (and ``--session``) with ``session_status`` closed and no next run; controls that would
plan runs that never fire (resume, update, run-now) are refused with one line saying why, changing nothing;
cancel still ends the series."""

from __future__ import annotations

from typing import Any

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import cli as cli
from cli_tasks_kit import inbox_rows, listed, one_line_error, show, sweep, weekday_task
from cli_tasks_kit import session as session

from schemas import ids


@pytest.fixture
def orphan(cli: Ncl, session: dict[str, Any]) -> dict[str, Any]:
    """A weekday series whose group was deleted: paused, in a closed session."""
    item = weekday_task(cli, session)
    deleted = ok(cli("groups", "delete", "demo", "--yes", "--json")).json()
    assert (deleted["sessions_closed"], deleted["task_series_paused"]) == (1, 1)
    return item


def test_live_series_say_their_session_is_active(cli: Ncl, session: dict[str, Any]) -> None:
    item = weekday_task(cli, session)
    assert item["session_status"] == "active" and item["next_run"] == "2026-05-18T13:00:00.000Z"


def test_a_closed_sessions_series_shows_with_all(cli: Ncl, session: dict[str, Any], orphan: dict[str, Any]) -> None:
    assert listed(cli) == []  # live series of active sessions only, as before
    [item] = listed(cli, "--all")
    assert (item["id"], item["status"], item["session_status"]) == (orphan["id"], "paused", "closed")
    assert item["next_run"] is None  # nothing of it runs any more
    assert listed(cli, "--session", session["id"]) == [item]  # a session named outright is shown, closed or not
    lines = ok(cli("tasks", "list", "--all")).out.splitlines()
    assert "SESSION STATUS" in lines[0]
    [line] = [x for x in lines[1:] if ids.short(orphan["id"]) in x]  # the table shows ids short
    assert " closed " in line and " paused " in line


def test_show_has_no_next_runs_in_a_closed_session(cli: Ncl, orphan: dict[str, Any]) -> None:
    shown = show(cli, orphan["id"])
    assert (shown["task"]["session_status"], shown["next_runs"]) == ("closed", [])
    out = ok(cli("tasks", "show", orphan["id"])).out
    assert "session status  closed" in out.splitlines() and "next runs:  -" in out.splitlines()


@pytest.mark.parametrize("command", [["resume"], ["run-now"], ["update", "--prompt", "again"],
                                     ["update", "--at", "2026-06-01T09:00:00"]])
def test_controls_that_plan_runs_are_refused(cli: Ncl, session: dict[str, Any], orphan: dict[str, Any],
                                             command: list[str]) -> None:
    before = inbox_rows(session)
    line = one_line_error(cli("tasks", command[0], orphan["id"], *command[1:]))
    assert line == (f"ncl: task {orphan['id']} belongs to session {session['id']}, which is closed: its runs would "
                    f"never fire, so '{command[0]}' is refused (cancel it instead)")
    assert inbox_rows(session) == before


def test_an_occurrence_id_is_refused_too(cli: Ncl, session: dict[str, Any], orphan: dict[str, Any]) -> None:
    [row] = inbox_rows(session)
    line = one_line_error(cli("tasks", "resume", row["id"]))
    assert "which is closed" in line and [r["status"] for r in inbox_rows(session)] == ["paused"]


def test_cancel_still_ends_the_series(cli: Ncl, session: dict[str, Any], orphan: dict[str, Any]) -> None:
    done = ok(cli("tasks", "cancel", orphan["id"], "--json")).json()
    assert (done["action"], done["changed"]) == ("cancelled", 1)
    [item] = listed(cli, "--all")
    assert (item["status"], item["session_status"]) == ("cancelled", "closed")


def test_a_closed_session_is_never_swept(cli: Ncl, session: dict[str, Any], orphan: dict[str, Any]) -> None:
    """Why resume is refused: the paused row would stay as it is, whatever the sweep's time."""
    before = inbox_rows(session)
    assert sweep(cli, "2026-05-20T10:00:00")["sessions_checked"] == 0
    assert inbox_rows(session) == before


def test_deleting_a_group_says_where_its_paused_series_are(cli: Ncl, session: dict[str, Any]) -> None:
    weekday_task(cli, session)
    out = ok(cli("groups", "delete", "demo", "--yes")).out
    assert "1 task series paused (shown by 'ncl tasks list --all'; they can be cancelled, not resumed)" in out
