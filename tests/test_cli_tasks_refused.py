"""``ncl tasks`` in-process, in America/New_York (DESIGN §6, §10, §12.8, §12.9, §12.11, §12.13): refused input writes
nothing. The agent's minimum interval needs ``--force``; a bad cron, time or ``--now`` and a closed session are one
line on stderr, exit 1, and no row.
"""

from __future__ import annotations

from typing import Any

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import MON_0800, WEEKDAYS_0900, add, inbox_rows, one_line_error, show, weekday_task
from cli_tasks_kit import cli as cli
from cli_tasks_kit import session as session


def test_agent_minimum_interval_needs_force(cli: Ncl, session: dict[str, Any]) -> None:
    """The refusal says where in TZ, and that --force allows it (it said a UTC time, and not how)."""
    assert one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", "--recurrence",
                              "*/1 * * * *", "--now", MON_0800)).endswith(
        "recurrence '*/1 * * * *' runs 60 s apart at 2026-05-18 08:01 EDT; the minimum is 300 s "
        "(NCL_TASK_MIN_INTERVAL_S; an operator's 'ncl tasks add' or 'update' allows less with --force)")
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


def test_a_recurring_series_never_starts_past_the_misfire_grace(cli: Ncl, session: dict[str, Any]) -> None:
    """Its slots since would all be recorded missed (a ``--count`` spent on them) before it ever ran. A one-shot runs
    however late, and a start within the grace runs at once (the misfire rule)."""
    long_ago = ("--at", "2026-05-18T06:59:00", "--now", MON_0800)  # 61 minutes before now
    line = one_line_error(cli("tasks", "add", "--session", session["id"], "--prompt", "x", "--recurrence",
                              WEEKDAYS_0900, "--count", "3", *long_ago))
    assert "is more than 3600 s ago (NCL_MISFIRE_GRACE_S)" in line
    assert inbox_rows(session) == []
    item = weekday_task(cli, session)
    before = inbox_rows(session)
    one_line_error(cli("tasks", "update", item["id"], *long_ago))
    assert inbox_rows(session) == before
    within = add(cli, session, "--recurrence", WEEKDAYS_0900, "--at", "2026-05-18T07:01:00", "--now", MON_0800,
                 prompt="soon")
    assert within["next_run"] == "2026-05-18T11:01:00.000Z"
    once = add(cli, session, "--at", "2020-01-01T09:00:00", "--now", MON_0800, prompt="late")
    assert once["next_run"] == "2020-01-01T14:00:00.000Z"


def test_a_script_of_blanks_is_no_script(cli: Ncl, session: dict[str, Any]) -> None:
    item = add(cli, session, "--script", "   ", "--now", MON_0800)
    ok(cli("tasks", "update", item["id"], "--script", "echo '{\"wakeAgent\": true}'", "--now", MON_0800))
    ok(cli("tasks", "update", item["id"], "--script", " \n ", "--now", MON_0800))
    assert [r["content"] for r in inbox_rows(session) if '"script": null' not in r["content"]] == []
