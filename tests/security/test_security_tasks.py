"""Security boundaries (issue 7), tasks and sessions: the agent's tools and the system rows its runner writes
address only its own session's tasks, never another session's (in its group or another), and cannot choose
where anything is routed: a scheduled task's routing comes from the inbox, never from the runner's row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World
from security_kit import T0

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.store import db, groups, inbox, sessions
from host.store.sessions import Session
from schemas.times import to_text


class TwoSessions:
    """Session A (the agent under test) and B in group demo, and C in group other, each with one recurring task."""

    def __init__(self, root: Path) -> None:
        self.world = World(root)
        self.a, self.b = self.world.session, self.world.new_session()
        other, _ = groups.create(self.world.central, self.world.settings, T0, "other", ["cli"])
        self.c = sessions.create(self.world.central, self.world.settings, T0, other, None)
        self.mine = self.world.schedule(T0, recurrence="0 9 * * *", session=self.a)
        self.theirs = {"same group": (self.b, self.world.schedule(T0, recurrence="0 9 * * *", session=self.b)),
                       "other group": (self.c, self.world.schedule(T0, recurrence="0 9 * * *", session=self.c))}
        config = RunnerConfig(session_dir=self.a.folder, generation="gen-test", tz="America/New_York")
        self.tools = Tools(config, Store(config), lambda: T0)

    def rows(self, session: Session) -> list[dict[str, Any]]:
        return self.world.rows(session=session)

    def out_rows(self, session: Session) -> list[dict[str, Any]]:
        with closing(self.world.outbound(session)) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM messages_out ORDER BY seq")]

    def system_row(self, session: Session, content: dict[str, Any], **columns: Any) -> str:
        """A system request as a runner writes it, with any runner-chosen column values (routing, in_reply_to)."""
        out_id = f"msg-1781182800000-{len(self.out_rows(session)):06d}"
        seq = 2 * len(self.out_rows(session)) + 1
        row = {"id": out_id, "seq": seq, "timestamp": to_text(T0), "kind": "system", "content": json.dumps(content),
               **columns}
        with closing(self.world.outbound(session)) as conn, db.transaction(conn):
            conn.execute(f"INSERT INTO messages_out({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
        return out_id


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoSessions]:
    made = TwoSessions(tmp_path)
    yield made
    made.world.central.close()


# --- the agent's tools and system rows stay in their own session -------------------------------------------------


@pytest.mark.parametrize("whose", ["same group", "other group"])
@pytest.mark.parametrize("tool", ["update_task", "pause_task", "resume_task", "cancel_task"])
def test_tools_cannot_address_another_sessions_task(two: TwoSessions, tool: str, whose: str) -> None:
    _, task_id = two.theirs[whose]
    arguments = {"taskId": task_id, **({"prompt": "hijacked"} if tool == "update_task" else {})}
    with pytest.raises(ToolError, match="no task"):
        two.tools.call(tool, arguments)
    assert two.out_rows(two.a) == []  # nothing was even requested
    assert task_id not in two.tools.call("list_tasks", {})
    assert two.mine in two.tools.call("list_tasks", {})


@pytest.mark.parametrize("whose", ["same group", "other group"])
@pytest.mark.parametrize("request_", [{"action": "update_task", "prompt": "hijacked", "recurrence": "*/5 * * * *"},
                                      {"action": "pause_task"}, {"action": "resume_task"}, {"action": "cancel_task"}],
                         ids=lambda r: r["action"])
def test_system_rows_naming_another_sessions_task_are_rejected_and_it_is_untouched(
        two: TwoSessions, request_: dict[str, Any], whose: str) -> None:
    session, task_id = two.theirs[whose]
    untouched = two.rows(session)
    two.system_row(two.a, {**request_, "taskId": task_id})
    result = two.world.sweeper().tick(T0 + timedelta(seconds=1))
    assert (result.applied, result.errors) == (0, 0)
    assert two.rows(session) == untouched
    assert [n["notice"] for n in two.world.notices()] == ["request_rejected"]  # in A, whose request it was


def test_an_agent_cannot_take_over_another_sessions_task_id(two: TwoSessions, ncl: Callable[..., Any],
                                                            cli_env: Any) -> None:
    assert cli_env.data_dir == two.world.settings.data_dir  # the CLI sees the same install
    # The victim's session is younger than A's: the CLI looks through sessions oldest first.
    session = sessions.create(two.world.central, two.world.settings, T0, two.world.group, None)
    task_id = two.world.schedule(T0, recurrence="0 9 * * *", session=session)
    two.system_row(two.a, {"action": "schedule_task", "taskId": task_id, "prompt": "decoy", "recurrence": "0 10 * * *"})
    two.world.sweeper().tick(T0 + timedelta(seconds=1))
    cancelled = ncl("tasks", "cancel", task_id, "--json")
    live = [r for r in two.rows(session) if r["id"] == task_id and r["status"] in ("pending", "paused")]
    assert cancelled.code == 1 or live == [], "the operator's cancel of B's task left it running"


ROUTING_KEYS = ["platform_id", "channel_type", "thread_id", "platformId", "channelType", "threadId", "sessionId",
                "session_id", "agentGroupId", "agent_group_id", "routing", "to"]


@pytest.mark.parametrize("key", ROUTING_KEYS)
def test_a_schedule_request_carrying_routing_or_session_keys_is_refused(two: TwoSessions, key: str) -> None:
    session, _ = two.theirs["other group"]
    value: Any = {"channel_type": "webhook:evil"} if key == "routing" else session.id
    two.system_row(two.a, {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x", key: value})
    assert two.world.sweeper().tick(T0 + timedelta(seconds=1)).applied == 0
    assert "task-1781182800000-aaaaaa" not in [r["id"] for s in (two.a, two.b, two.c) for r in two.rows(s)]
    [notice] = two.world.notices()
    assert notice["notice"] == "request_rejected" and key in notice["text"]


def _chat(two: TwoSessions, session: Session, message_id: str, routing: dict[str, str]) -> None:
    with closing(two.world.inbound(session)) as conn, db.transaction(conn):
        inbox.insert(conn, {"id": message_id, "kind": "chat", "timestamp": to_text(T0), "status": "completed",
                            "content": json.dumps({"text": "hi", "sender": "alice"}), **routing})
        conn.execute("INSERT OR IGNORE INTO session_routing(id, channel_type, platform_id, thread_id)"
                     " VALUES (1, :channel_type, :platform_id, :thread_id)", routing)


def test_routing_of_a_scheduled_task_comes_from_the_inbox_never_from_the_runners_row(two: TwoSessions) -> None:
    mine = {"platform_id": "p-a", "channel_type": "cli", "thread_id": "t-a"}
    _chat(two, two.a, "msg-1781182700000-aaaaaa", mine)
    _chat(two, two.b, "msg-1781182700000-bbbbbb", {"platform_id": "p-b", "channel_type": "queue:b", "thread_id": "t-b"})
    evil = {"platform_id": "evil", "channel_type": "webhook:evil", "thread_id": "evil"}
    # Answering A's own chat, with routing columns of the runner's choosing: the task goes where that chat came from.
    two.system_row(two.a, {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x"},
                   in_reply_to="msg-1781182700000-aaaaaa", **evil)
    # "Answering" a message that lives in session B: not in A's inbox, so A's own routing, never B's.
    two.system_row(two.a, {"action": "schedule_task", "taskId": "task-1781182800000-bbbbbb", "prompt": "y"},
                   in_reply_to="msg-1781182700000-bbbbbb", **evil)
    assert two.world.sweeper().tick(T0 + timedelta(seconds=1)).applied == 2
    tasks = {r["id"]: {k: r[k] for k in mine} for r in two.rows(two.a) if r["id"] != two.mine and r["kind"] == "task"}
    assert tasks == {"task-1781182800000-aaaaaa": mine, "task-1781182800000-bbbbbb": mine}
