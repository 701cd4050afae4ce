"""A hostile runner of an admin group against its requests answered by the host (issue 16.3): a request the host
applied in another file (central.db, another session's inbox) before its own record in the requester's inbox
committed is read again after a crash, and must not apply twice; an agent's host task gets no secret of the host's
environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from kit import FakeClock, World

from host.project_tasks.fire import ScheduledTasks
from host.store import groups, sessions
from host.store import project_tasks as store
from host.store.sessions import Session
from schemas.times import from_text

NOW = from_text("2026-06-11T13:00:00.000Z")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """Group demo (not admin) with a session; group ops, admin, with one; host tasks from agents allowed."""
    monkeypatch.setenv("TZ", "America/New_York")
    world = World(tmp_path, NCL_ALLOW_AGENT_HOST_TASKS="1")
    world.ops_group, _ = groups.create(world.central, world.settings, NOW, "ops", ["cli"], admin=True)  # type: ignore[attr-defined]
    world.ops = sessions.create(world.central, world.settings, NOW, world.ops_group, None)  # type: ignore[attr-defined]
    yield world


def ops(world: World) -> Session:
    return world.ops  # type: ignore[attr-defined,no-any-return]


def applied_then_crashed(world: World, request: dict[str, Any]) -> tuple[str, str]:
    """The request applied once, then its record in the requester's inbox undone (what a host killed after the
    other files' commits and before the inbox's leaves) and the outbox read again; the second answer."""
    out_id = world.request(NOW, request, ops(world))
    answers = []
    for undo in (True, False):
        world.sweeper().tick(NOW)
        with closing(world.inbound(ops(world))) as conn:
            answers.append(tuple(conn.execute("SELECT status, detail FROM delivered WHERE message_out_id = ?",
                                              (out_id,)).fetchone()))
            if undo:
                with conn:
                    conn.execute("DELETE FROM delivered WHERE message_out_id = ?", (out_id,))
    assert answers[0] == answers[1]
    return answers[1]


def test_a_task_scheduled_in_another_group_is_not_scheduled_again_after_a_crash(world: World) -> None:
    wanted = "task-1781182800000-abcdef"
    status, said = applied_then_crashed(world, {"action": "schedule_task", "taskId": wanted, "prompt": "every hour",
                                                "recurrence": "0 * * * *", "group": "demo"})
    assert (status, said) == ("applied", f"Task scheduled in group demo (id: {wanted}, session {world.session.id})")
    tasks = [r for r in world.rows(session=world.session) if r["kind"] == "task"]
    assert [r["id"] for r in tasks] == [wanted]  # one series, not a second under a fresh id
    notices = [r for r in world.rows(session=world.session) if r["kind"] == "chat"]
    assert len(notices) == 1


def test_a_host_task_is_not_created_again_after_a_crash(world: World) -> None:
    status, said = applied_then_crashed(world, {"action": "schedule_task", "taskType": "host", "command": "true",
                                                "recurrence": "0 3 * * *", "prompt": "nightly"})
    assert status == "applied" and said.startswith("Host task created (id: host-")
    assert len(store.list_all(world.central)) == 1  # one command the host runs, not two


def test_an_agents_host_task_runs_without_the_hosts_secrets(world: World, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    secrets = {"ANTHROPIC_API_KEY": "sk-1", "NCL_MATRIX_PASSWORD": "pw", "NCL_MATRIX_ACCESS_TOKEN": "tok",
               "GITHUB_TOKEN": "gh", "DB_PASSWORD": "db"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    seen = tmp_path / "env.txt"
    code = f"import os; open({str(seen)!r}, 'w').write(' '.join(sorted(os.environ)))"
    world.request(NOW, {"action": "schedule_task", "taskType": "host", "command": [sys.executable, "-c", code],
                        "recurrence": "0 3 * * *"}, ops(world))
    world.sweeper().tick(NOW)
    assert len(store.list_all(world.central)) == 1
    firer = ScheduledTasks(world.settings, FakeClock(from_text("2026-06-12T07:00:30.000Z")).now)
    try:
        firer.tick(firer.clock())
        firer.wait(30)
    finally:
        firer.close(stop_running=True)
    names = set(seen.read_text().split())
    assert "NCL_SCHEDULED_TASK_ID" in names and "PATH" in names
    assert names.isdisjoint(secrets)


def test_a_closed_session_is_never_scheduled_into_and_a_flood_is_cut_at_ten_a_visit(world: World) -> None:
    with world.central:
        world.central.execute("UPDATE sessions SET status = 'closed' WHERE id = ?", (world.session.id,))
    out_ids = [world.request(NOW, {"action": "schedule_task", "taskId": f"task-1781182800000-aaaa{n:02d}",
                                   "prompt": "x" * 10_000, "group": "demo"}, ops(world)) for n in range(12)]
    world.sweeper().tick(NOW)
    with closing(world.inbound(ops(world))) as conn:
        said = [tuple(conn.execute("SELECT status, detail FROM delivered WHERE message_out_id = ?", (i,)).fetchone())
                for i in out_ids]
    assert {s for s, _ in said} == {"rejected"}
    assert [d.split(" (")[0] for _, d in said[:10]] == ["group demo has no active session to schedule into"] * 10
    assert [d for _, d in said[10:]] == ["more than 10 requests naming a group at once; ask again"] * 2
    assert [r for r in world.rows(session=world.session) if r["kind"] == "task"] == []
