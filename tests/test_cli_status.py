"""``ncl status`` and ``ncl messages list`` (DESIGN §12.10 shapes)."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest


def _write(path: Path, sql: str, *args: Any) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, args)


def test_status_shape_without_a_host(ncl: Any, demo_session: dict[str, Any]) -> None:
    inbound = Path(demo_session["path"]) / "inbound.db"
    _write(inbound, "INSERT INTO messages_in(id, seq, kind, timestamp, process_after, content) VALUES"
                    " ('task-1781168400000-aaaaaa', 2, 'task', '2026-06-11T09:00:00.000Z', '2026-06-11T13:00:00.000Z',"
                    " '{\"prompt\": \"standup\"}')")
    result = ncl("status", "--json")
    data = result.json()
    assert {"host_running", "runners", "next_due"} <= set(data)
    assert data["host_running"] is False and data["runners"] == []
    [item] = data["next_due"]
    assert (item["id"], item["due"], item["session_id"]) == (
        "task-1781168400000-aaaaaa", "2026-06-11T13:00:00.000Z", demo_session["id"])
    shown = ncl("status").out
    assert "data dir            " + str(Path(demo_session["path"]).parents[2]) in shown.splitlines()
    short = "sess-" + demo_session["id"].rsplit("-", 1)[1]  # the table shows ids short, as documented
    assert f" {short} " in shown and demo_session["id"] not in shown, shown


def test_status_sees_a_live_host_pid_and_a_beating_runner(ncl: Any, demo_session: dict[str, Any],
                                                          cli_env: Any) -> None:
    (cli_env.data_dir / "host.lock").write_text(f"{os.getpid()}\n")
    (Path(demo_session["path"]) / ".heartbeat").write_text("gen-x")
    data = ncl("status", "--json").json()
    assert data["host_running"] is True
    assert [r["generation"] for r in data["runners"]] == ["gen-x"]


@pytest.mark.parametrize("running", [False, True])
def test_status_counts_no_runner_the_host_stopped(ncl: Any, demo_session: dict[str, Any], cli_env: Any,
                                                  running: bool) -> None:
    """A runner's beat older than the host's last word on its runners (its pool's state while it runs, its lock
    emptied when it stopped) is of one it stopped: for ten seconds status counted it (7 runners of 5 slots)."""
    beat, lock = Path(demo_session["path"]) / ".heartbeat", cli_env.data_dir / "host.lock"
    beat.write_text("gen-x")
    lock.write_text(f"{os.getpid()}\n" if running else "")
    told = cli_env.data_dir / "runners.json" if running else lock
    if running:
        told.write_text('{"runners": [], "waiting": []}')
    now = time.time()
    os.utime(beat, (now - 2, now - 2))
    os.utime(told, (now - 1, now - 1))
    assert ncl("status", "--json").json()["runners"] == []
    os.utime(beat, (now, now))  # beating after it: a runner a one-off sweep started
    assert [r["generation"] for r in ncl("status", "--json").json()["runners"]] == ["gen-x"]


def test_messages_list_has_both_directions_in_order(ncl: Any, demo_session: dict[str, Any]) -> None:
    folder = Path(demo_session["path"])
    _write(folder / "inbound.db", "INSERT INTO messages_in(id, seq, kind, timestamp, status, content)"
                                  " VALUES ('msg-1', 2, 'chat', ?, 'completed', ?)",
           "2026-06-11T09:00:00.000Z", '{"text": "hi"}')
    _write(folder / "outbound.db", "INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, content)"
                                   " VALUES ('msg-2', 1, 'msg-1', ?, 'chat', ?)",
           "2026-06-11T09:00:01.000Z", '{"text": "hello"}')
    data = ncl("messages", "list", "--session", demo_session["id"], "--json").json()
    assert data == {"messages": [
        {"id": "msg-1", "direction": "in", "kind": "chat", "timestamp": "2026-06-11T09:00:00.000Z", "text": "hi",
         "status": "completed", "in_reply_to": None},
        {"id": "msg-2", "direction": "out", "kind": "chat", "timestamp": "2026-06-11T09:00:01.000Z",
         "text": "hello", "status": "pending", "in_reply_to": "msg-1"}]}  # (the reply's own, else matched by order)
    assert "hello" in ncl("messages", "list", "--session", demo_session["id"]).out
    unknown = ncl("messages", "list", "--session", "sess-1781168400000-zzzzzz")
    assert unknown.code == 1 and "unknown session" in unknown.err


def test_messages_list_last_shows_the_latest_of_both_directions(ncl: Any, demo_session: dict[str, Any]) -> None:
    """``--last N``: the conversation's latest N, each side read no further than its own latest N."""
    folder = Path(demo_session["path"])
    for n in range(4):  # in at :00, :02, :04, :06; out at :01, :03, :05, :07 (seq in reverse of time on the out side)
        _write(folder / "inbound.db", "INSERT INTO messages_in(id, seq, kind, timestamp, status, content)"
                                      " VALUES (?, ?, 'chat', ?, 'completed', ?)",
               f"msg-in{n}", 2 * n + 2, f"2026-06-11T09:00:0{2 * n}.000Z", f'{{"text": "ask {n}"}}')
        _write(folder / "outbound.db", "INSERT INTO messages_out(id, seq, timestamp, kind, content)"
                                       " VALUES (?, ?, ?, 'chat', ?)",
               f"msg-out{n}", 9 - 2 * n, f"2026-06-11T09:00:0{2 * n + 1}.000Z", f'{{"text": "answer {n}"}}')
    every = ncl("messages", "list", "--session", demo_session["id"], "--json").json()["messages"]
    assert [m["id"] for m in every] == [f"msg-{side}{n}" for n in range(4) for side in ("in", "out")]
    latest = ncl("messages", "list", "--session", demo_session["id"], "--last", "3", "--json").json()["messages"]
    assert latest == every[-3:]
    shown = ncl("messages", "list", "--session", demo_session["id"], "--last", "1").out
    assert "answer 3" in shown and "ask 3" not in shown
    refused = ncl("messages", "list", "--session", demo_session["id"], "--last", "0")
    assert refused.code == 1 and "--last" in refused.err and "Traceback" not in refused.err


def test_messages_list_json_writes_an_unpaired_surrogate_a_runner_wrote_escaped(ncl: Any,
                                                                                demo_session: dict[str, Any]) -> None:
    """(It failed, for good, with "a value given is not UTF-8 text": no UTF-8 JSON can hold one unescaped.)"""
    _write(Path(demo_session["path"]) / "outbound.db", "INSERT INTO messages_out(id, seq, timestamp, kind, content)"
           " VALUES ('msg-2', 1, ?, 'chat', ?)", "2026-06-11T09:00:01.000Z", '{"text": "cut \\ud83d, then é"}')
    done = ncl("messages", "list", "--session", demo_session["id"], "--json")
    assert done.code == 0 and '"text": "cut \\ud83d, then \\u00e9"' in done.out
    assert done.json()["messages"][0]["text"] == "cut \ud83d, then é"


def test_status_lists_project_tasks_among_the_next_due(ncl: Any, cli_env: Any) -> None:
    assert ncl("groups", "create", "jobs", "--channel", "queue:support-jobs").code == 0
    spec = cli_env.root / "t.yaml"
    spec.write_text("version: v1\nkind: ScheduledTask\nschedule: 30 17 * * *\n"
                    "queue: {name: support-jobs, payload: {prompt: Generate the daily summary.}}\n")
    assert ncl("scheduled-task", "add", "--file", str(spec), "--now", "2026-06-11T09:00:00Z").code == 0
    [item] = ncl("status", "--json").json()["next_due"]
    assert item["kind"] == "scheduled-task:queue" and item["due"].endswith("T17:30:00.000Z")
