"""The runner's poll loop with the offline mock provider on real session files (DESIGN §7, issue 4)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.sax import saxutils

import pytest
from kit import FakeClock, utc

from agent_runner import prompt
from agent_runner import runner as runner_module
from agent_runner.config import RunnerConfig
from agent_runner.providers import MockProvider, ProviderError, Reply, Turn
from agent_runner.runner import Runner
from agent_runner.store import Store, StoreError
from host.store.sessions import create_files
from schemas.rows import InMessage
from schemas.times import from_text

NOW = utc("2026-01-14T15:00:00")  # Wednesday 10:00 in New York


@dataclass
class Recording(MockProvider):
    turns: list[Turn] = field(default_factory=list)

    async def respond(self, turn: Turn) -> Reply:
        self.turns.append(turn)
        return await super().respond(turn)


class Failing(MockProvider):
    async def respond(self, turn: Turn) -> Reply:
        raise ProviderError("authentication failed (401)")


class Session:
    def __init__(self, root: Path, **config: Any) -> None:
        self.dir = root / "sess"
        create_files(self.dir)
        self.config = RunnerConfig(session_dir=self.dir, generation="gen-1", tz="America/New_York",
                                   **{"max_batch": 10, **config})
        self.seq = 0

    def add(self, kind: str = "chat", text: str = "hi", trigger: int = 1, process_after: str | None = None,
            **content: Any) -> str:
        self.seq += 2
        row_id = f"msg-{1768400000000 + self.seq}-{self.seq:06d}"
        body = {"chat": {"text": text, "sender": "alice"}, "task": {"prompt": text, "script": None,
                                                                  "context_mode": "group"}}.get(kind, {"text": text})
        with closing(sqlite3.connect(self.dir / "inbound.db")) as conn, conn:
            conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, process_after, trigger, platform_id,"
                         " channel_type, thread_id, content) VALUES (?, ?, ?, ?, ?, ?, 'p1', 'cli', 't1', ?)",
                         (row_id, self.seq, kind, "2026-01-14T14:00:00.000Z", process_after, trigger,
                          json.dumps({**body, **content})))
        return row_id

    def out(self, kind: str | None = "chat") -> list[dict[str, Any]]:
        with closing(sqlite3.connect(self.dir / "outbound.db")) as conn:
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute("SELECT * FROM messages_out ORDER BY seq")]
        return [r | {"body": json.loads(r["content"])} for r in rows if kind is None or r["kind"] == kind]

    def staged(self) -> list[str]:
        with closing(sqlite3.connect(self.dir / "outbound.db")) as conn:
            return [r[0] for r in conn.execute("SELECT generation FROM staged_requests")]

    def acks(self) -> dict[str, tuple[str, dict[str, Any]]]:
        with closing(sqlite3.connect(self.dir / "outbound.db")) as conn:
            return {m: (s, json.loads(d or "{}")) for m, s, d in
                    conn.execute("SELECT message_id, status, detail FROM processing_ack")}

    async def run(self, provider: MockProvider | None = None, clock: FakeClock | None = None) -> Runner:
        runner = Runner(self.config, provider or MockProvider(), clock or FakeClock(NOW))
        await runner.run(once=True)
        return runner


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(tmp_path)


async def test_two_pending_chats_make_one_call_and_one_reply(session: Session) -> None:
    first, second = session.add(text="hello"), session.add(text="are you there?")
    provider = Recording()
    await session.run(provider)
    assert len(provider.turns) == 1
    [reply] = session.out()
    assert reply["body"] == {"text": "mock: are you there?", "files": []}
    assert (reply["in_reply_to"], reply["platform_id"], reply["channel_type"], reply["thread_id"]) == (
        second, "p1", "cli", "t1")
    assert {m: s for m, (s, _) in session.acks().items()} == {first: "completed", second: "completed"}
    assert reply["seq"] % 2 == 1


async def test_fifteen_due_rows_in_batches_of_ten_oldest_first(session: Session) -> None:
    ids = [session.add(text=f"n{i}") for i in range(15)]
    provider = Recording()
    await session.run(provider)
    assert [[r.id for r in t.rows] for t in provider.turns] == [ids[:10], ids[10:]]
    assert len(session.acks()) == 15


async def test_context_rows_alone_never_call_the_provider_but_ride_along(session: Session) -> None:
    note = session.add(text="FYI the build is red", trigger=0)
    provider = Recording()
    await session.run(provider)
    assert provider.turns == [] and session.acks() == {}
    ask = session.add(text="what is up?")
    await session.run(provider)
    [turn] = provider.turns
    assert [r.id for r in turn.rows] == [note, ask]
    assert "FYI the build is red" in turn.prompt
    assert set(session.acks()) == {note, ask}


async def test_system_rows_are_never_shown_to_the_agent(session: Session) -> None:
    control = session.add(kind="system", text="secret control", trigger=0)
    session.add(text="hello")
    provider = Recording()
    await session.run(provider)
    assert "secret control" not in provider.turns[0].prompt
    assert control not in session.acks()


async def test_rows_not_yet_due_wait(session: Session) -> None:
    session.add(text="later", process_after="2026-01-14T16:00:00.000Z")
    provider = Recording()
    await session.run(provider)
    assert provider.turns == []
    await session.run(provider, FakeClock(utc("2026-01-14T16:00:00")))
    assert len(provider.turns) == 1


async def test_prompt_has_the_time_in_tz_and_tags_kind_and_sender(session: Session) -> None:
    session.add(kind="task", text="post the standup")
    provider = Recording()
    await session.run(provider)
    text = provider.turns[0].prompt
    assert "2026-01-14 10:00" in text and "America/New_York" in text
    assert 'kind="task"' in text and 'sender="scheduler"' in text


@pytest.mark.parametrize(("content", "shown"), [
    ({"text": "hi", "sender": "Alice", "sender_id": "@alice:ncl.test"}, "Alice (@alice:ncl.test)"),
    # a display name chosen to pass for someone else: the id says whom
    ({"text": "hi", "sender": "Alice\u200b", "sender_id": "@mallory:ncl.test"}, "Alice\u200b (@mallory:ncl.test)"),
    ({"text": "hi", "sender": "@bob:ncl.test", "sender_id": "@bob:ncl.test"}, "@bob:ncl.test"),
    ({"text": "hi", "sender": "user", "sender_id": None}, "user"),
])
def test_a_chat_shows_its_senders_id_beside_the_name_they_chose(content: dict[str, Any], shown: str) -> None:
    row = InMessage.of({"id": "msg-1", "seq": 2, "kind": "chat", "timestamp": "2026-01-14T15:00:00.000Z",
                        "status": "pending", "process_after": None, "recurrence": None, "series_id": None,
                        "tries": 0, "platform_id": None, "channel_type": "matrix", "thread_id": None,
                        "content": json.dumps(content), "trigger": 1, "on_wake": 0, "zone": None})
    assert prompt.sender_of(row) == shown


def test_prompt_escapes_text_and_attributes_as_xml_does() -> None:
    # The runner's own escape and quoteattr (xml.sax.saxutils costs a sixth of its start-up): the same output.
    for text in ("", "plain", "a & b < c > d", 'say "hi"', "it's", """both " and '""", "tab\tcr\rlf\n", "&amp;"):
        assert (prompt.escape(text), prompt.quoteattr(text)) == (saxutils.escape(text), saxutils.quoteattr(text))


async def test_gate_skip_wakes_nobody(session: Session) -> None:
    task = session.add(kind="task", text="check inbox", script='echo "log line"; echo \'{"wakeAgent":false}\'')
    provider = Recording()
    await session.run(provider)
    assert provider.turns == [] and session.out() == []
    assert session.acks()[task][0] == "completed" and session.acks()[task][1]["outcome"] == "skipped"


async def test_gate_wake_puts_its_data_in_the_prompt(session: Session) -> None:
    session.add(kind="task", text="summarize", script='echo \'{"wakeAgent":true,"data":{"n":3}}\'')
    provider = Recording()
    await session.run(provider)
    assert 'Script output: {"n": 3}' in provider.turns[0].prompt


@pytest.mark.parametrize("wakes", [False, True])
async def test_a_gated_run_starts_when_its_gate_does(session: Session, monkeypatch: pytest.MonkeyPatch,
                                                     wakes: bool) -> None:
    """A run's time includes its gate's: a gate of 5 s that woke the agent made a run of a few ms, one that skipped
    a run of 5 s (attack review)."""
    clock = FakeClock(NOW)
    gate = runner_module.run_gate

    def five_seconds(*args: Any, **kwargs: Any) -> Any:
        clock.current += timedelta(seconds=5)
        return gate(*args, **kwargs)

    monkeypatch.setattr(runner_module, "run_gate", five_seconds)
    task = session.add(kind="task", text="t", script=f"echo '{{\"wakeAgent\":{str(wakes).lower()}}}'")
    await session.run(Recording(), clock)
    status, detail = session.acks()[task]
    assert (status, detail["outcome"]) == ("completed", "ran" if wakes else "skipped")
    assert from_text(detail["started_at"]) == NOW  # when the gate began, 5 s before the run's end


async def test_a_gate_error_does_not_stop_the_chat_beside_it(session: Session) -> None:
    task = session.add(kind="task", text="t", script="echo '{\"wakeAgent\":true}'; exit 1")
    chat = session.add(text="still there?")
    await session.run(Recording())
    assert session.acks()[task][1]["outcome"] == "gate_error" and "exit code 1" in session.acks()[task][1]["reason"]
    assert [r["in_reply_to"] for r in session.out()] == [chat]


async def test_provider_failure_is_a_failed_ack_and_a_readable_reply(session: Session) -> None:
    chat = session.add(text="hello")
    await session.run(Failing())
    status, detail = session.acks()[chat]
    assert (status, detail["outcome"]) == ("failed", "failed") and "401" in detail["reason"]
    assert "authentication failed" in session.out()[0]["body"]["text"]


class Scheduling(MockProvider):
    """Calls schedule_task as a model would, then answers, fails, or dies (never returns) as told."""

    def __init__(self, then: str) -> None:
        self.then = then

    async def respond(self, turn: Turn) -> Reply:
        turn.tools.call("schedule_task", {"prompt": "post standup", "recurrence": "0 9 * * 1-5"})
        if self.then == "die":  # the process is SIGKILLed here: nothing after this line ever runs
            await asyncio.Event().wait()
        if self.then == "fail":
            raise ProviderError("overloaded (529)")
        return await super().respond(turn)


class TestTurnsAreAtomic:
    """A tool's task request takes effect with the turn that made it: a turn killed after the call and retried by
    the next runner asks once, not twice (issue 7)."""

    async def test_the_request_waits_for_the_answer_and_goes_first(self, session: Session) -> None:
        chat = session.add(text="set up my standup")
        await session.run(Scheduling("answer"))
        request, reply = session.out(None)
        assert (request["kind"], request["body"]["action"], request["in_reply_to"]) == ("system", "schedule_task", chat)
        assert reply["kind"] == "chat" and reply["seq"] > request["seq"] and session.staged() == []

    async def test_a_killed_turn_asks_nothing_and_its_retry_asks_once(self, session: Session) -> None:
        chat = session.add(text="set up my standup")
        dying = asyncio.create_task(session.run(Scheduling("die")))
        while not session.staged():  # the tool call happened; the turn is now in the model's hands
            await asyncio.sleep(0)
        dying.cancel()  # as far as the files go, the same as a SIGKILL: nothing after the tool call ran
        with pytest.raises(asyncio.CancelledError):
            await dying
        assert session.out(None) == [] and session.acks()[chat][0] == "processing"

        session.config = dataclasses.replace(session.config, generation="gen-2")  # the next runner
        await session.run(Scheduling("answer"))
        [request] = session.out("system")
        assert request["in_reply_to"] == chat and session.acks()[chat][0] == "completed"
        assert session.staged() == []  # the dead turn's request was dropped, not applied late

    async def test_a_failed_turn_keeps_what_it_asked(self, session: Session) -> None:
        # A provider error ends the row for good (no retry), so the request made before it must not be lost.
        chat = session.add(text="set up my standup")
        await session.run(Scheduling("fail"))
        [request] = session.out("system")
        assert request["body"]["prompt"] == "post standup" and session.acks()[chat][0] == "failed"


    async def test_a_turn_that_cannot_record_its_answer_ends_the_runner_for_its_claims_to_be_released(
            self, session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
        """A full disk failed a turn's write after its claim: the runner logged it and went on, its rows claimed by
        its own generation, which the host leaves alone while it lives and which it never fetched again (crash
        review: stranded until its idle timeout). Now it ends, and the host releases them to the next runner."""
        chat = session.add(text="hello")

        def full(*args: Any, **kwargs: Any) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(Store, "finish", full)
        with pytest.raises(StoreError, match="disk is full"):
            await session.run()
        assert session.acks()[chat][0] == "processing" and session.out(None) == []


class TestSlashCommands:
    async def test_too_frequent_schedule_is_refused_with_the_interval(self, session: Session) -> None:
        session.add(text='/schedule_task {"prompt":"x","recurrence":"*/1 * * * *"}')
        provider = Recording()
        await session.run(provider)
        assert provider.turns == []
        [reply] = session.out()
        assert "300" in reply["body"]["text"] and reply["body"]["text"].startswith("error:")
        assert session.out("system") == []

    async def test_list_tasks_shows_a_request_before_the_host_applied_it(self, session: Session) -> None:
        session.add(text='/schedule_task {"prompt":"post standup","recurrence":"0 9 * * 1-5"}')
        session.add(text="/list_tasks")
        await session.run()
        scheduled, listed = (r["body"]["text"] for r in session.out())
        task_id = scheduled.split("id: ")[1].split(",")[0]
        assert task_id in listed and "requested" in listed and "post standup" in listed
        [request] = session.out("system")
        assert request["body"]["taskId"] == task_id and request["body"]["action"] == "schedule_task"

    async def test_naive_process_after_is_local_time(self, session: Session) -> None:
        session.add(text='/schedule_task {"prompt":"p","processAfter":"2026-01-15T09:00:00",'
                         '"recurrence":"0 9 * * 1-5"}')
        await session.run()
        assert session.out("system")[0]["body"]["processAfter"] == "2026-01-15T14:00:00.000Z"

    async def test_send_file_outside_the_workspace_is_refused(self, session: Session) -> None:
        session.add(text='/send_file {"path":"../../etc/passwd"}')
        await session.run()
        assert "outside the workspace" in session.out()[0]["body"]["text"]

    async def test_clear_resets_the_conversation(self, session: Session) -> None:
        session.add(text="remember me")
        provider = Recording()
        await session.run(provider)
        session.add(text="/clear")
        session.add(text="who am I?")
        await session.run(provider)
        assert provider.turns[0].history == [] and provider.turns[-1].history == []

    async def test_unknown_tool_and_bad_json_say_so(self, session: Session) -> None:
        session.add(text="/frobnicate {}")
        session.add(text="/schedule_task {not json")
        await session.run()
        first, second = (r["body"]["text"] for r in session.out())
        assert "unknown tool" in first and "not JSON" in second


async def test_conversation_continues_across_batches(session: Session) -> None:
    session.add(text="one")
    provider = Recording()
    await session.run(provider)
    session.add(text="two")
    await session.run(provider)
    assert [m["role"] for m in provider.turns[1].history or []] == ["user", "assistant"]


async def test_isolated_task_neither_reads_nor_extends_the_conversation(session: Session) -> None:
    session.add(text="one")
    provider = Recording()
    await session.run(provider)
    session.add(kind="task", text="isolated job", context_mode="isolated")
    await session.run(provider)
    assert provider.turns[1].history is None
    session.add(text="three")
    await session.run(provider)
    assert len(provider.turns[2].history or []) == 2


async def test_stale_claims_of_a_previous_generation_are_released_at_start(session: Session) -> None:
    chat = session.add(text="hello")
    with closing(sqlite3.connect(session.dir / "outbound.db")) as conn, conn:
        conn.execute("INSERT INTO processing_ack VALUES (?, 'processing', '2026-01-14T14:00:00.000Z', NULL, 'gen-0')",
                     (chat,))
    await session.run()
    assert session.acks()[chat][0] == "completed"


async def test_idle_runner_exits_after_the_idle_timeout_and_beats(tmp_path: Path) -> None:
    session = Session(tmp_path, idle_timeout_s=30.0, poll_interval_s=0.5)
    clock = FakeClock(NOW)
    await Runner(session.config, MockProvider(), clock).run()
    assert clock.now() - NOW == timedelta(seconds=30)
    assert (session.dir / ".heartbeat").read_text() == "gen-1"


async def test_each_queue_job_gets_its_own_answer(session: Session) -> None:
    jobs = [session.add(kind="queue", text=f"job {n}", queue="q", content=[], payload={}) for n in range(3)]
    chat = session.add(text="and a chat")
    provider = Recording()
    await session.run(provider)
    assert sorted(r["in_reply_to"] for r in session.out()) == sorted([*jobs, chat])
    assert [len(t.rows) for t in provider.turns] == [1, 1, 1, 1]


async def test_a_jobs_data_beyond_its_prompt_reaches_the_agent(session: Session) -> None:
    """(A payload's other keys were stored, and the agent saw only the prompt.)"""
    session.add(kind="queue", text="triage this ticket", queue="q", content=[],
                payload={"prompt": "triage this ticket", "thread_id": "t", "ticket": {"id": 7, "title": "Crash"}})
    await session.run(Recording())
    [reply] = session.out()
    assert json.loads(reply["content"])["text"] == (
        'mock: triage this ticket\n\nData: {"ticket": {"id": 7, "title": "Crash"}}')

