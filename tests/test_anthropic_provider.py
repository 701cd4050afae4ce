"""The anthropic provider through the real Runner: real SDK, real MCP server process, real session files,
and a fake Messages API on 127.0.0.1 (tests/fake_anthropic.py) playing scripted turns."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import fake_anthropic as api
import pytest
from fake_anthropic import FakeAnthropic

from agent_runner.anthropic_provider import AnthropicProvider
from agent_runner.config import RunnerConfig
from agent_runner.runner import Runner
from agent_runner.store import Store
from host.cli.chat_status import status_text
from host.store import db, inbox, outbox
from host.store.sessions import create_files
from schemas import clock, ids
from schemas.times import to_text

TZ = "America/New_York"
ROUTE = {"platform_id": "cli:local", "channel_type": "cli", "thread_id": None}


@dataclass
class Session:
    path: Path
    env: dict[str, str]
    seq: int = 0

    @property
    def config(self) -> RunnerConfig:
        return RunnerConfig.from_env(self.path, self.env)

    def add(self, kind: str = "chat", text: str = "hello", **content: Any) -> str:
        """A due row in inbound.db, as the host writes it."""
        self.seq += 2
        row_id = ids.new_id("task" if kind == "task" else "msg", clock.now())
        body = {"text": text, "sender": "Ada", "sender_id": "u1"} if kind == "chat" else content
        with closing(sqlite3.connect(self.path / "inbound.db")) as conn, conn:
            conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, series_id, platform_id, channel_type,"
                         " thread_id, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (row_id, self.seq, kind, to_text(clock.now()), row_id if kind == "task" else None,
                          ROUTE["platform_id"], ROUTE["channel_type"], ROUTE["thread_id"], json.dumps(body)))
        return row_id

    def out(self, kind: str = "chat") -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.path / "outbound.db")) as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM messages_out WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
        return [dict(r) | {"content": json.loads(r["content"])} for r in rows]

    def ack(self, message_id: str) -> dict[str, Any]:
        with closing(sqlite3.connect(self.path / "outbound.db")) as conn:
            status, detail = conn.execute("SELECT status, detail FROM processing_ack WHERE message_id = ?",
                                          (message_id,)).fetchone()
        return {"status": status, **json.loads(detail)}

    def conversation(self) -> list[dict[str, Any]] | None:
        raw = Store(self.config).state("conversation")
        return None if raw is None else list(json.loads(raw))

    async def run(self, **provider: Any) -> None:
        config = self.config
        await Runner(config, AnthropicProvider(config, **provider), clock).run(once=True)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "NCL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TZ", TZ)
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        yield server


@pytest.fixture
def session(tmp_path: Path) -> Session:
    create_files(tmp_path / "sess")
    return Session(tmp_path / "sess", {"TZ": TZ, "NCL_PROVIDER": "anthropic", "NCL_RUNNER_GENERATION": "gen-test",
                                      "NCL_MODEL": "claude-test"})


def user_texts(request: api.Recorded) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "user" and isinstance(m["content"], str)]


def first_tool_use_id(request: api.Recorded) -> str:
    assistant = request.body["messages"][-2]
    return str(next(b["id"] for b in assistant["content"] if b["type"] == "tool_use"))


async def test_tool_use_schedules_a_task_and_the_model_sees_the_outcome(fake: FakeAnthropic, session: Session) -> None:
    standup = {"prompt": "post standup", "processAfter": "2099-01-15T09:00:00", "recurrence": "0 9 * * 1-5"}
    fake.queue(api.tool_use("schedule_task", standup), api.text("Done: weekdays at 9."))
    chat = session.add(text="every weekday at 9am remind me to post my standup")
    await session.run()

    [request] = session.out("system")
    assert request["content"]["action"] == "schedule_task"
    assert request["content"]["processAfter"] == "2099-01-15T14:00:00.000Z"
    assert request["content"]["recurrence"] == "0 9 * * 1-5"
    assert request["in_reply_to"] == chat
    first, second = fake.requests
    assert first.headers["authorization"] == "Bearer test-key"  # SDK 2.x sends the key as a bearer token
    assert first.body["model"] == session.config.model
    assert {t["name"] for t in first.body["tools"]} >= {"schedule_task", "list_tasks", "send_file"}
    assert "every weekday at 9am" in user_texts(first)[-1]
    [result] = second.body["messages"][-1]["content"]
    assert result["type"] == "tool_result" and not result.get("is_error")
    assert result["tool_use_id"] == first_tool_use_id(second)
    said = result["content"][0]["text"]
    assert request["content"]["taskId"] in said
    assert "next runs: Thu 2099-01-15 09:00:00 EST, Fri 2099-01-16 09:00:00 EST" in said
    [reply] = session.out("chat")
    assert reply["content"] == {"text": "Done: weekdays at 9.", "files": []}
    assert reply["in_reply_to"] == chat and reply["channel_type"] == "cli"
    ack = session.ack(chat)
    assert (ack["status"], ack["outcome"], ack["reason"]) == ("completed", "ran", None)


async def test_a_refused_tool_call_reaches_the_model_as_an_error(fake: FakeAnthropic, session: Session) -> None:
    fake.queue(api.tool_use("schedule_task", {"prompt": "x", "recurrence": "*/1 * * * *"}), api.text("Too often."))
    session.add(text="every minute please")
    await session.run()
    [result] = fake.requests[1].body["messages"][-1]["content"]
    assert result["is_error"] is True and "minimum interval between runs is 300 s" in result["content"][0]["text"]
    assert session.out("system") == []
    assert [r["content"]["text"] for r in session.out()] == ["Too often."]


async def test_rate_limit_is_retried_after_the_asked_wait(fake: FakeAnthropic, session: Session) -> None:
    fake.queue(api.error(429, "rate_limit_error", "slow down", {"retry-after": "0"}), api.text("hi"))
    chat = session.add()
    await session.run()
    assert len(fake.requests) == 2
    assert [r["content"]["text"] for r in session.out()] == ["hi"]
    assert session.ack(chat)["status"] == "completed"


async def test_a_wait_to_retry_is_told_to_the_chat_while_it_lasts(fake: FakeAnthropic, session: Session) -> None:
    """Issue 15.4: the runner says in its session_state that it waits to retry the model API; the interactive chat
    reads it (``outbox.model_wait``) and shows it instead of "working"."""
    shown: list[str] = []
    chat = session.add()

    async def sleep(seconds: float) -> None:
        with closing(sqlite3.connect(session.path / "inbound.db")) as conn:
            conn.execute("UPDATE messages_in SET status = 'processing' WHERE id = ?", (chat,))  # as the sweep copies
            conn.commit()
        with closing(db.connect(session.path / "inbound.db", "inbound", readonly=True)) as conn:
            row = inbox.get(conn, chat)
        shown.append(status_text(row, 2, ZoneInfo(TZ), outbox.model_wait(session.path / "outbound.db")))

    fake.queue(api.error(529, "overloaded_error", "Overloaded"), api.text("ok"))
    await session.run(sleep=sleep)
    assert len(shown) == 1
    assert shown[0].startswith("… the model API is busy (overloaded (529): Overloaded); retrying at ")
    assert [r["content"]["text"] for r in session.out()] == ["ok"]


async def test_overload_backs_off_and_a_long_retry_after_fails_at_once(fake: FakeAnthropic, session: Session) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    fake.queue(api.error(529, "overloaded_error", "Overloaded"), api.error(503, "api_error", "down"), api.text("ok"))
    session.add()
    await session.run(sleep=sleep)
    assert (slept, len(fake.requests)) == ([1.0, 2.0], 3)
    assert [r["content"]["text"] for r in session.out()] == ["ok"]

    fake.queue(api.error(429, "rate_limit_error", "quota", {"retry-after": "3600"}))
    chat = session.add()
    await session.run(sleep=sleep)
    assert (slept, len(fake.requests)) == ([1.0, 2.0], 4)  # no hour-long nap inside a claimed batch
    assert session.ack(chat)["reason"] == "rate limited (429): quota (asked to wait 3600 s)"


async def test_bad_key_fails_the_batch_with_a_readable_reply(fake: FakeAnthropic, session: Session) -> None:
    fake.queue(api.error(401, "authentication_error", "invalid x-api-key"))
    chat = session.add()
    await session.run()
    assert len(fake.requests) == 1  # never retried
    ack = session.ack(chat)
    assert (ack["status"], ack["outcome"]) == ("failed", "failed")
    assert ack["reason"] == "authentication failed (401): invalid x-api-key"
    [reply] = session.out()
    assert reply["content"]["text"] == "Sorry, I could not answer: authentication failed (401): invalid x-api-key"
    assert reply["in_reply_to"] == chat


async def test_conversation_continues_across_turns_until_cleared(fake: FakeAnthropic, session: Session) -> None:
    fake.queue(api.text("Hi Ada."), api.text("You said hello."))
    session.add(text="hello")
    await session.run()
    session.add(text="what did I say?")
    await session.run()
    second = fake.requests[1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert "hello" in second[0]["content"] and second[1]["content"] == [{"type": "text", "text": "Hi Ada."}]
    assert len(session.conversation() or []) == 4

    session.add(text="/clear")
    await session.run()  # a slash command needs no model
    assert len(fake.requests) == 2 and session.conversation() is None
    fake.queue(api.text("Hello again."))
    session.add(text="hi")
    await session.run()
    assert [m["role"] for m in fake.requests[2].body["messages"]] == ["user"]


async def test_isolated_task_neither_reads_nor_extends_the_conversation(fake: FakeAnthropic, session: Session) -> None:
    earlier = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi."}]
    Store(session.config).set_state("conversation", json.dumps(earlier), clock.now())
    fake.queue(api.text("Summary: nothing new."))
    task = session.add("task", prompt="summarize the inbox", script=None, context_mode="isolated")
    await session.run()
    [request] = fake.requests
    assert [m["role"] for m in request.body["messages"]] == ["user"]
    assert "summarize the inbox" in request.body["messages"][0]["content"]
    assert session.conversation() == earlier
    assert session.ack(task)["status"] == "completed"


async def test_rejected_history_is_retried_once_without_it(fake: FakeAnthropic, session: Session,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    broken = [{"role": "user", "content": "old"}, {"role": "assistant", "content": "old reply"}]
    Store(session.config).set_state("conversation", json.dumps(broken), clock.now())
    fake.queue(api.error(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"),
               api.text("Fresh start."))
    chat = session.add(text="hi")
    await session.run()
    assert [len(r.body["messages"]) for r in fake.requests] == [3, 1]
    assert [r["content"]["text"] for r in session.out()] == ["Fresh start."]
    assert session.ack(chat)["status"] == "completed"
    assert [m["role"] for m in session.conversation() or []] == ["user", "assistant"]
    assert any(getattr(r, "action", None) == "conversation_reset" for r in caplog.records)


async def test_a_bad_request_without_history_is_not_retried(fake: FakeAnthropic, session: Session) -> None:
    fake.queue(api.error(400, "invalid_request_error", "max_tokens: too large"))
    chat = session.add()
    await session.run()
    assert len(fake.requests) == 1
    assert session.ack(chat)["reason"] == "bad request (400): max_tokens: too large"


async def test_group_mcp_servers_add_prefixed_tools(fake: FakeAnthropic, session: Session, tmp_path: Path) -> None:
    group = tmp_path / "group"
    group.mkdir()
    twin = {"command": sys.executable, "args": ["-m", "agent_runner.mcp_server", "--session-dir", str(session.path)],
            "env": {"TZ": TZ}}
    (group / "mcp.json").write_text(json.dumps({"servers": {"twin": twin, "bad name!": twin}}))
    session.env["NCL_GROUP_DIR"] = str(group)
    fake.queue(api.tool_use("twin__list_tasks", {}), api.text("None."))
    session.add(text="what is scheduled?")
    await session.run()
    names = [t["name"] for t in fake.requests[0].body["tools"]]
    assert len(names) == 16 and "twin__schedule_task" in names and "list_tasks" in names
    [result] = fake.requests[1].body["messages"][-1]["content"]
    assert result["content"] == [{"type": "text", "text": "No tasks."}]


async def test_unix_socket_reaches_the_credential_proxy(fake: FakeAnthropic, session: Session,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeAnthropic(uds=str(session.path / "anthropic.sock")) as proxy:
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        monkeypatch.delenv("ANTHROPIC_BASE_URL")
        monkeypatch.setenv("NCL_ANTHROPIC_SOCKET", str(session.path / "anthropic.sock"))
        proxy.queue(api.text("via the proxy"))
        session.add()
        await session.run()
    [request] = proxy.requests
    assert request.path == "/v1/messages" and request.headers["authorization"] == "Bearer ncl-proxy"
    assert [r["content"]["text"] for r in session.out()] == ["via the proxy"]
    assert fake.requests == []
