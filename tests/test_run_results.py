"""Results in the run log (issue 16.4): a ``ran`` run records its answer's id and first 500 characters and the tokens
its turn used. Tasks run through the real Runner on real session files (the anthropic provider against a fake
Messages API on 127.0.0.1, or the mock), then a sweep copies what the runner acked into ``task_runs``; what a runner
acks is its own text, so ill-typed or oversized values are cut or left out."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fake_anthropic as api
import pytest
from fake_anthropic import FakeAnthropic
from kit import FakeClock, World, utc
from processes import Env

from agent_runner.anthropic_provider import AnthropicProvider
from agent_runner.config import RunnerConfig
from agent_runner.providers import MockProvider, Provider
from agent_runner.runner import Runner
from host.store import db
from schemas import ids
from schemas.times import to_text

ZONE = "America/New_York"
DUE = utc("2026-05-18T13:00:00")  # Monday 09:00 in New York
LONG = "Standup summary:\n" + "\n".join(f"- item {n}: {'done ' * 8}" for n in range(40))  # well over 500 characters


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path, tz=ZONE)


def config(world: World) -> RunnerConfig:
    return RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz=ZONE, model="claude-test")


async def run_runner(world: World, provider: Provider, at: datetime) -> None:
    await Runner(config(world), provider, FakeClock(at)).run(once=True)


def replies(world: World) -> list[dict[str, Any]]:
    with closing(world.outbound()) as conn:
        return [dict(r) for r in conn.execute("SELECT * FROM messages_out WHERE kind = 'chat' ORDER BY seq")]


async def test_a_run_through_the_anthropic_provider_records_its_answer_and_the_turns_tokens(world: World) -> None:
    task = world.schedule(DUE - timedelta(hours=1), prompt="post the standup", at=to_text(DUE))
    with FakeAnthropic() as fake:
        # Two model calls in the turn: a tool round, then the answer; input counts cached input, as the proxy does.
        fake.queue(api.tool_use("list_tasks", {}, usage={"input_tokens": 100, "cache_read_input_tokens": 30,
                                                          "cache_creation_input_tokens": 7, "output_tokens": 20}),
                   api.text(LONG, usage={"input_tokens": 200, "output_tokens": 50}))
        environ = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "test-key", "PATH": os.environ["PATH"]}
        await run_runner(world, AnthropicProvider(config(world), environ=environ), DUE)
        assert len(fake.requests) == 2
    world.sweeper().tick(DUE + timedelta(minutes=1))

    [answer] = replies(world)
    assert answer["in_reply_to"] == task
    [run] = world.runs(task)
    assert run["outcome"] == "ran"
    assert run["answer_id"] == answer["id"]
    assert run["answer_excerpt"] == LONG[:500] and len(LONG) > 600
    assert (run["input_tokens"], run["output_tokens"]) == (100 + 30 + 7 + 200, 20 + 50)


async def test_a_batch_of_tasks_shares_one_answer_and_the_mock_reports_no_tokens(world: World) -> None:
    """Two tasks due together are one turn with one answer (in reply to the last): each task's run names it."""
    first = world.schedule(DUE - timedelta(hours=1), prompt="post the standup", at=to_text(DUE))
    second = world.schedule(DUE - timedelta(hours=1), prompt="water the plants", at=to_text(DUE))
    await run_runner(world, MockProvider(), DUE)
    world.sweeper().tick(DUE + timedelta(minutes=1))

    [answer] = replies(world)
    assert answer["in_reply_to"] == second
    text = json.loads(answer["content"])["text"]
    assert text.startswith("mock: ")
    for task in (first, second):
        [run] = world.runs(task)
        assert (run["outcome"], run["answer_id"], run["answer_excerpt"]) == ("ran", answer["id"], text)
        assert (run["input_tokens"], run["output_tokens"]) == (None, None)  # the mock provider says nothing


def write_reply(world: World, at: datetime, in_reply_to: str, content: str, seq: int = 1) -> str:
    """A chat row as a runner writes it (its content is the runner's own: any valid JSON)."""
    reply_id = ids.new_id("msg", at)
    with closing(world.outbound()) as conn, db.transaction(conn):
        conn.execute("INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, content)"
                     " VALUES (?, ?, ?, ?, 'chat', ?)", (reply_id, seq, in_reply_to, to_text(at), content))
    return reply_id


def ack(world: World, task: str, at: datetime, detail: dict[str, Any] | str, status: str = "completed") -> None:
    text = detail if isinstance(detail, str) else json.dumps(detail)
    with closing(world.outbound()) as conn, db.transaction(conn):
        conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail, generation)"
                     " VALUES (?, ?, ?, ?, 'gen-test')", (task, status, to_text(at), text))


HUGE = 10**30
REPLY = object()  # stands for the id of the reply the test wrote


@pytest.mark.parametrize(("detail", "content", "expected"), [
    pytest.param({"tokens": {"input": "12", "output": -1}}, None, (None, None, None, None), id="tokens-text-negative"),
    pytest.param({"tokens": {"input": True, "output": 1.5}}, None, (None, None, None, None), id="tokens-bool-real"),
    pytest.param({"tokens": {"input": HUGE, "output": 7}}, None, (None, None, None, 7), id="tokens-huge"),
    pytest.param({"tokens": [1, 2]}, None, (None, None, None, None), id="tokens-list"),
    pytest.param({"tokens": {"input": 3}}, None, (None, None, 3, None), id="tokens-half"),
    pytest.param({"answer_id": 12}, {"text": "hi"}, (None, None, None, None), id="answer-id-number"),
    pytest.param({"answer_id": ["x"]}, {"text": "hi"}, (None, None, None, None), id="answer-id-list"),
    pytest.param({"answer_id": "msg-1779109200000-nosuch"}, {"text": "hi"}, (None, None, None, None),
                 id="answer-id-unknown"),
    pytest.param({"answer_id": REPLY}, {"text": "x\n" * 100_000}, (REPLY, "x\n" * 250, None, None),
                 id="answer-huge"),
    pytest.param({"answer_id": REPLY}, {"text": ["not", "text"]}, (REPLY, None, None, None), id="answer-not-text"),
    pytest.param({"answer_id": REPLY}, "a string", (REPLY, None, None, None), id="answer-not-an-object"),
    pytest.param({"answer_id": REPLY, "reason": "r" * 1_000_000, "tokens": {"input": 5, "output": 6}}, {"text": "ok"},
                 (REPLY, "ok", 5, 6), id="detail-huge"),
])
def test_what_a_runner_acks_is_bounded_or_left_out(world: World, detail: dict[str, Any], content: Any,
                                                   expected: tuple[Any, ...]) -> None:
    task = world.schedule(DUE - timedelta(hours=1), at=to_text(DUE))
    at = DUE + timedelta(seconds=30)
    reply_id = write_reply(world, at, task, json.dumps(content)) if content is not None else None
    ack(world, task, at, {"outcome": "ran", "reason": None,
                          **{k: reply_id if v is REPLY else v for k, v in detail.items()}})
    world.sweeper().tick(DUE + timedelta(minutes=1))
    [run] = world.runs(task)
    found = (run["answer_id"], run["answer_excerpt"], run["input_tokens"], run["output_tokens"])
    assert found == tuple(reply_id if v is REPLY else v for v in expected)
    assert run["outcome"] == "ran"


@pytest.mark.parametrize(("status", "outcome"), [("completed", "skipped"), ("completed", "gate_error"),
                                                 ("failed", "failed")])
def test_only_a_ran_run_records_an_answer_and_tokens(world: World, status: str, outcome: str) -> None:
    task = world.schedule(DUE - timedelta(hours=1), at=to_text(DUE))
    at = DUE + timedelta(seconds=30)
    reply_id = write_reply(world, at, task, json.dumps({"text": "Sorry, I could not answer", "files": []}))
    ack(world, task, at, {"outcome": outcome, "reason": "no", "answer_id": reply_id,
                          "tokens": {"input": 1, "output": 2}}, status=status)
    world.sweeper().tick(DUE + timedelta(minutes=1))
    [run] = world.runs(task)
    assert run["outcome"] == outcome
    assert (run["answer_id"], run["answer_excerpt"], run["input_tokens"], run["output_tokens"]) == (
        None, None, None, None)


async def test_tasks_runs_shows_an_excerpt_on_one_line_and_the_tokens_and_json_the_whole_record(
        tmp_path: Path) -> None:
    """``ncl`` as a process: a task added, run by the real runner (anthropic provider, fake API), the run synced by
    ``host sweep --once``; piped, ``tasks runs`` prints one line per run, the answer's control characters shown as
    escapes."""
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))
    task = json.loads(env.ok("tasks", "add", "--session", session["id"], "--prompt", "post the standup", "--at",
                             "2026-05-18T13:00:00Z", "--now", "2026-05-18T12:00:00Z", "--json"))["id"]
    said = "Done:\tposted \x1b[31mred\x1b[0m\n\n" + LONG
    with FakeAnthropic() as fake:
        fake.queue(api.text(said, usage={"input_tokens": 1200, "output_tokens": 85}))
        folder = Path(session["path"])
        runner_config = RunnerConfig(session_dir=folder, generation="gen-test", tz="UTC", model="claude-test")
        environ = {"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "test-key", "PATH": os.environ["PATH"]}
        await Runner(runner_config, AnthropicProvider(runner_config, environ=environ), FakeClock(DUE)).run(once=True)
    env.ok("host", "sweep", "--once", "--now", "2026-05-18T13:01:00Z", "--json")

    header, line = env.ok("tasks", "runs", task).splitlines()
    assert header.split() == ["OUTCOME", "SCHEDULED", "STARTED", "FINISHED", "MS", "TOKENS", "IN/OUT", "OCCURRENCE",
                              "DETAIL", "ANSWER"]
    shown = line[header.index("ANSWER"):]
    assert shown == "Done: posted \\x1b[31mred\\x1b[0m Standup summary: - item 0: done d…"  # 60 of its characters
    assert line[header.index("TOKENS IN/OUT"):].split()[0] == "1200/85"

    [run] = json.loads(env.ok("tasks", "runs", task, "--json"))["runs"]
    with closing(sqlite3.connect(folder / "outbound.db")) as conn:
        (answer_id,) = conn.execute("SELECT id FROM messages_out WHERE kind = 'chat' AND in_reply_to = ?",
                                    (task,)).fetchone()
    assert (run["outcome"], run["answer_id"], run["answer_excerpt"]) == ("ran", answer_id, said[:500])
    assert run["tokens"] == {"input": 1200, "output": 85}
