"""``ncl tasks`` in-process, in America/New_York (DESIGN §6, §10, §12.8, §12.9, §12.11, §12.13): ``ncl host sweep
--once --now``. Its documented counts and table; a due task counted as woken with no runtime selected and nothing
started; a runner's ack then a sweep clone the series and record a run (``tasks runs``).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok
from cli_tasks_kit import MON_0800, WEEKDAYS_0900, ack, add, inbox_rows, listed, one_line_error, sweep, weekday_task
from cli_tasks_kit import cli as cli
from cli_tasks_kit import session as session

RUN_KEYS = {"id", "series_id", "message_id", "scheduled_for", "started_at", "finished_at", "duration_ms", "outcome",
            "detail", "answer_id", "answer_excerpt", "tokens"}  # answer_id, answer_excerpt, tokens: issue 16.4
SWEEP_KEYS = {"now", "sessions_checked", "woken", "applied", "cloned", "missed", "retried", "failed"}


def _no_runtime(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the runtime selection: ``sweep --now`` must never pick one, let alone start a runner."""
    raise AssertionError("host sweep --now selected a runtime")


def test_sweep_json_counts_a_due_task_as_woken_and_starts_nothing(
        cli: Ncl, session: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("host.runtimes.factory.select_runtime", _no_runtime)
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
    assert "now               2026-05-18 08:00:00 EDT" in out.splitlines()  # in TZ, as every table


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
    assert (run["answer_id"], run["answer_excerpt"], run["tokens"]) == (None, None, None)  # the ack named none
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
