"""Whatever a runner writes into outbound.db, the host reads a bounded part of it: each request's text up to one
character past what a request may be (then refused with the usual notice), each reply's up to 1 Mi characters
(a longer one is answered with a line saying so), 20 replies a read (the rest at the next visits, in order), and
each id or routing text up to 4096 characters, an ack's detail to 64 Ki (a claim's not at all). Was: every row
read whole, as many as there were. The text of an error it causes is cut too, and so is any log line."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from kit import FakeClock, RecordingRuntime, World, utc

from host.channels.base import Channels
from host.channels.delivery import Deliveries
from host.errors import MAX_ERROR_CHARS
from host.files import logs
from host.loop import Host
from host.scheduling import visitors
from host.scheduling.sweep import Sweeper
from host.store import db, outbox
from host.store.outbox import OutMessage
from host.store.sessions import Session
from schemas.rows import MAX_REQUEST_CHARS
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


class Chat:
    serves = ("cli",)

    def __init__(self) -> None:
        self.got: list[str] = []

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool:
        self.got.append(json.loads(reply.content)["text"])
        return True


def _write(world: World, rows: list[tuple[str, str, str]]) -> None:
    """(id, kind, content) rows as the runner writes them, seq 1, 3, 5..."""
    with closing(world.outbound()) as conn, db.transaction(conn):
        conn.executemany("INSERT INTO messages_out(id, seq, timestamp, kind, channel_type, content)"
                         " VALUES (?, ?, '2026-05-18T13:00:00.000Z', ?, 'cli', ?)",
                         [(mid, 2 * n + 1, kind, content) for n, (mid, kind, content) in enumerate(rows)])


@pytest.fixture
def read_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every row content the host reads from outbound.db."""
    sizes: list[int] = []
    made = OutMessage.of

    def of(row: object) -> OutMessage:
        message = made(row)  # type: ignore[arg-type]
        sizes.append(len(message.content))
        return message

    monkeypatch.setattr(OutMessage, "of", of)
    return sizes


def test_a_request_too_long_is_refused_having_been_read_only_so_far(tmp_path: Path, read_sizes: list[int]) -> None:
    world = World(tmp_path)
    prompt = "p" * (8 * MAX_REQUEST_CHARS)
    _write(world, [("msg-1779109200000-000001", "system",
                    json.dumps({"action": "schedule_task", "taskId": "task-1779109200000-abcdef", "prompt": prompt,
                                "processAfter": "2026-06-01T00:00:00.000Z"}))])
    assert world.sweeper().tick(T0).applied == 0
    assert read_sizes == [MAX_REQUEST_CHARS + 1]
    [notice] = world.notices()
    assert notice["text"] == f"Your request was rejected: request longer than {MAX_REQUEST_CHARS} characters"


def test_a_reply_too_long_is_answered_with_a_line_saying_so(tmp_path: Path, read_sizes: list[int]) -> None:
    world = World(tmp_path)
    _write(world, [("msg-1779109200000-000001", "chat", json.dumps({"text": "x" * (3 << 20), "files": []}))])
    chat, sweeper = Chat(), world.sweeper()
    sweeper.deliveries = Deliveries(Channels([chat]), lambda: T0)
    sweeper.tick(T0)
    asyncio.run(sweeper.deliveries.drain())
    assert read_sizes == [outbox.REPLY_CHARS + 1]
    assert chat.got == [f"[The agent's answer was longer than {outbox.REPLY_CHARS} characters: not sent.]"]


def test_replies_are_read_twenty_at_a_time_and_all_go_out_in_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    _write(world, [(f"msg-1779109200000-{n:06d}", "chat", json.dumps({"text": f"reply {n}", "files": []}))
                   for n in range(50)])
    chat, sweeper = Chat(), world.sweeper()
    sweeper.deliveries = Deliveries(Channels([chat]), lambda: T0)
    for sent in (20, 40, 50, 50):
        sweeper.tick(T0)
        asyncio.run(sweeper.deliveries.drain())
        assert chat.got == [f"reply {n}" for n in range(sent)]


def test_ids_and_routing_are_read_up_to_4096_characters(tmp_path: Path) -> None:
    world = World(tmp_path)
    huge = "x" * 100_000
    with closing(world.outbound()) as conn, db.transaction(conn):
        conn.execute("PRAGMA ignore_check_constraints=ON")  # (the runner owns the file: its checks bind nobody)
        conn.execute("INSERT INTO messages_out(id, seq, timestamp, kind, platform_id, channel_type, thread_id,"
                     " content) VALUES (?, 1, ?, 'chat', ?, ?, ?, '{}')", (huge, huge, huge, huge, huge))
        conn.execute("INSERT INTO processing_ack(message_id, status, status_changed, detail, generation)"
                     " VALUES ('msg-1', ?, ?, ?, ?)", (huge, huge, huge, huge))
        conn.execute("INSERT INTO processing_ack(message_id, status, status_changed, detail, generation)"
                     " VALUES ('msg-2', 'processing', '2026-05-18T13:00:00.000Z', ?, 'gen')", (huge,))
        conn.execute("INSERT OR REPLACE INTO container_state(id, current_tool, tool_timeout_s, updated_at)"
                     " VALUES (1, ?, ?, '2026-05-18T13:00:00.000Z')",
                     (huge, "9" * 64))
    found = outbox.read(world.session.folder / "outbound.db", ["msg-1", "msg-2"], 0, writable=False)
    [reply], ack = found.replies, found.acks["msg-1"]
    assert {len(v) for v in (reply.id, reply.timestamp, reply.platform_id, reply.channel_type, reply.thread_id,
                             ack.status, ack.status_changed, ack.generation)} == {outbox.TEXT_CHARS}
    # A finished ack's detail is read to one past what is parsed (then it is only a reason: acks.detail); a claim's,
    # which nothing uses, not at all (100 claims of 4 Mi emoji each cost 1.6 GiB a visit: second attack review).
    assert len(ack.detail or "") == outbox.MAX_DETAIL + 1 and found.acks["msg-2"].detail is None
    assert found.tool_timeout_s == outbox.MAX_TOOL_TIMEOUT_S  # (a timedelta of 10**64 s would not even be made)


def test_what_is_kept_of_a_sweep_reading_them_all(tmp_path: Path) -> None:
    """(The sweep's own path: a runner's 50 long requests cost 50 refusals and bounded reads.)"""
    world = World(tmp_path)
    long = json.dumps({"action": "pause_task", "taskId": "task-1779109200000-abcdef",
                       "x": "y" * (2 * MAX_REQUEST_CHARS)})
    _write(world, [(f"msg-1779109200000-{n:06d}", "system", long) for n in range(50)])
    sweeper: Sweeper = world.sweeper()
    assert sweeper.tick(T0).applied == 0
    [notice] = world.notices()
    assert notice["text"].endswith(f"request longer than {MAX_REQUEST_CHARS} characters (50 such requests)")


def test_a_running_host_comes_back_at_once_for_the_replies_past_the_first_twenty(tmp_path: Path) -> None:
    """With no runner alive nothing else woke the host for them: each twenty waited for the next full sweep, a
    minute apart (second attack review). Once a session's handed replies are all settled, the host is told, as of
    an arrival: its nap ends and its next sweep looks at that session."""
    asyncio.run(_host_sends_45(tmp_path))


async def _host_sends_45(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_SWEEP_INTERVAL_S="60")
    _write(world, [(f"msg-1779109200000-{n:06d}", "chat", json.dumps({"text": f"reply {n}", "files": []}))
                   for n in range(45)])
    clock = FakeClock(T0)
    host = Host(world.settings, RecordingRuntime(clock), clock)
    chat = Chat()
    host.deliveries.channels, host.deliveries.central = Channels([chat]), None
    for sent in (20, 40, 45):
        await host.step()
        assert not host.woken.is_set()
        await host.deliveries.drain()  # (in a running host: while it naps)
        assert chat.got == [f"reply {n}" for n in range(sent)]
        assert host.woken.is_set() and host._arrived == {world.session.id}


@pytest.mark.parametrize("in_workers", [False, True], ids=["by-the-sweeps-thread", "by-a-worker"])
def test_an_error_naming_what_a_runner_wrote_is_cut_where_it_is_logged_and_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, in_workers: bool) -> None:
    """SQLite's error for a malformed schema names the object, however long its name: a dead runner's 4 MiB one
    crossed the worker's pipe, was logged whole and kept in ``Sweeper.failing`` while the session failed (eight such
    sessions: 400 MiB of host memory, and host.log rotated away; third attack review)."""
    world = World(tmp_path)
    listed = [world.session] + [world.new_session() for _ in range(visitors.MIN_VISITS + 8 if in_workers else 1)]
    if in_workers:
        monkeypatch.setattr(visitors, "WORKERS", 2)
        monkeypatch.setattr(visitors, "FIRST_VISITS", len(listed))
    for session in listed:
        world.schedule(T0, at=to_text(T0), session=session)
    with closing(sqlite3.connect(world.session.folder / "outbound.db", isolation_level=None)) as runner:
        runner.execute("PRAGMA writable_schema=ON")
        runner.execute("INSERT INTO sqlite_master VALUES ('table', ?, 'x', 0, 'CREATE TABLE broken (')",
                       ("n" * (4 << 20),))
    caplog.set_level(logging.WARNING)
    sweeper = world.sweeper()
    try:
        assert sweeper.tick(T0).errors == 1
        kept = sweeper.failing[world.session.id]
    finally:
        sweeper.close()
    assert "malformed database schema (nnnn" in kept and kept.endswith(" more characters)")
    assert len(kept) < MAX_ERROR_CHARS + 200
    [said] = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "session_failed"]
    assert kept in said and len(said) < MAX_ERROR_CHARS + 300


@pytest.mark.parametrize("kind", ["text", "json"])
def test_no_log_line_is_longer_than_64_kib(kind: str) -> None:
    """Whatever a record carries (its message and traceback): host.log keeps 4 files of 10 MiB, which a few lines of
    megabytes would rotate away."""
    record = logging.makeLogRecord({"msg": "a runner said %s", "args": ("x" * (1 << 20),), "levelname": "WARNING",
                                    "action": "example"})
    line = logs.formatter(kind, ZoneInfo("UTC")).format(record)
    assert logs.MAX_MESSAGE_CHARS < len(line) < logs.MAX_MESSAGE_CHARS + 400
    assert f"… ({(1 << 20) + len('a runner said ') - logs.MAX_MESSAGE_CHARS} more characters)" in line
