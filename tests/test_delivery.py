"""Replies are delivered to their channel exactly once, in order, with up to 3 attempts, then a notice."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc

from host.channels.base import Channels
from host.channels.delivery import Deliveries
from host.scheduling.sweep import Sweeper
from host.store import db, deliveries, groups, mailboxes
from host.store.outbox import OutMessage
from host.store.sessions import Session

T0 = utc("2026-05-18T13:00:00")


class Channel:
    serves = ("cli",)

    def __init__(self, fail_first: int = 0, listening: bool = True) -> None:
        self.fail_first, self.listening = fail_first, listening
        self.calls: list[str] = []
        self.got: list[tuple[str, int | None]] = []

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        self.calls.append(reply.id)
        if len(self.calls) <= self.fail_first:
            raise ConnectionError("channel down")
        if not self.listening:
            return None
        self.got.append((json.loads(reply.content)["text"], reply_to_seq))
        return True


def _reply(world: World, text: str, in_reply_to: str | None = None, session: Session | None = None,
           channel_type: str | None = "cli") -> None:
    seq = len(_out(world, session)) * 2 + 1
    with closing(world.outbound(session)) as conn:
        conn.execute("INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, channel_type, content)"
                     " VALUES (?, ?, ?, ?, 'chat', ?, ?)",
                     (f"msg-1779109200000-{seq:06d}", seq, in_reply_to, "2026-05-18T13:00:00.000Z", channel_type,
                      json.dumps({"text": text, "files": []})))


def _deliveries(channel: Channel) -> Deliveries:
    return Deliveries(Channels([channel]), lambda: T0)


def _tick(sweeper: Sweeper) -> None:
    """A sweep, then the host loop's sending of the replies it handed out."""
    sweeper.tick(T0)
    assert sweeper.deliveries is not None
    asyncio.run(sweeper.deliveries.drain())


def _out(world: World, session: Session | None = None) -> list[Any]:
    with closing(world.outbound(session)) as conn:
        return conn.execute("SELECT id FROM messages_out").fetchall()


def _delivered(world: World, session: Session | None = None) -> list[tuple[str, str]]:
    with closing(world.inbound(session)) as conn:
        return [tuple(r) for r in conn.execute("SELECT message_out_id, status FROM delivered ORDER BY seq")]


def test_each_reply_is_delivered_once_in_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel()
    sweeper = world.sweeper()
    sweeper.deliveries = _deliveries(channel)
    _reply(world, "one")
    _reply(world, "two")
    _tick(sweeper)
    _tick(sweeper)
    assert [text for text, _ in channel.got] == ["one", "two"]
    assert [status for _, status in _delivered(world)] == ["delivered", "delivered"]


def test_three_failed_attempts_give_up_with_a_notice_and_keep_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel(fail_first=3)
    sweeper = world.sweeper()
    sweeper.deliveries = _deliveries(channel)
    _reply(world, "lost")
    _reply(world, "next")
    for _ in range(3):
        _tick(sweeper)
    assert [status for _, status in _delivered(world)] == ["failed", "delivered"]
    assert [text for text, _ in channel.got] == ["next"]  # never before the one ahead of it was settled
    [notice] = world.notices()
    assert notice["notice"] == "delivery_failed" and notice["trigger"] == 0


def test_a_retry_that_succeeds_is_delivered_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel(fail_first=1)
    sweeper = world.sweeper()
    sweeper.deliveries = _deliveries(channel)
    _reply(world, "eventually")
    _tick(sweeper)
    assert _delivered(world) == []
    _tick(sweeper)
    _tick(sweeper)
    assert [text for text, _ in channel.got] == ["eventually"] and world.notices() == []


def test_no_listener_keeps_the_reply_in_the_transcript(tmp_path: Path) -> None:
    world = World(tmp_path)
    sweeper = world.sweeper()
    sweeper.deliveries = _deliveries(Channel(listening=False))
    _reply(world, "for the record")
    _tick(sweeper)
    assert [status for _, status in _delivered(world)] == ["stored"]


class Gate(Channel):
    """A channel that holds each reply whose text is in ``held`` until ``opened``, and notes the delivered
    watermark each send saw."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held, self.opened, self.holding = held, asyncio.Event(), asyncio.Event()
        self.marks: list[int] = []

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
            self.marks.append(deliveries.watermark(conn))
        if json.loads(reply.content)["text"] in self.held:
            self.holding.set()
            await self.opened.wait()
        return await super().deliver(session, reply, reply_to_seq)


async def _until(check: Callable[[], object]) -> None:
    """Let the loop run (no time passes) until ``check`` holds."""
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("never came true")


async def test_a_reply_on_its_way_is_neither_handed_out_again_nor_overtaken(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Gate(held={"first"})
    sweeper = world.sweeper()
    sweeper.deliveries = served = _deliveries(channel)
    _reply(world, "first")
    _reply(world, "second")
    sweeper.tick(T0)
    sending = asyncio.create_task(served.drain())
    await channel.holding.wait()
    sweeper.tick(T0)  # the next sweeps find both still undelivered
    sweeper.tick(T0)
    for _ in range(20):  # let anything that could run, run (no time passes)
        await asyncio.sleep(0)
    assert len(channel.marks) == 1  # the second waits until the first is settled
    channel.opened.set()
    await sending
    await served.drain()
    assert [text for text, _ in channel.got] == ["first", "second"] and len(channel.calls) == 2
    assert channel.marks == [0, 1]  # the second went out once the first was recorded
    assert [status for _, status in _delivered(world)] == ["delivered", "delivered"]


async def test_a_sweep_in_a_worker_thread_hands_on_the_loop_and_never_a_reply_settled_since_it_began(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel()
    sweeper = world.sweeper()
    sweeper.deliveries = served = _deliveries(channel)
    served.loop = asyncio.get_running_loop()
    _reply(world, "once")
    served.sweep_begins()
    await asyncio.to_thread(sweeper.tick, T0)  # its hand is queued on the loop, which runs it before this returns
    [queue] = served.queues.values()
    found = list(queue.replies)
    await served.drain()
    # A visit that read the reply before it was recorded hands it after (the worker runs beside the loop).
    await asyncio.to_thread(served.hand, queue.session, found)
    await served.drain()
    assert channel.calls == [found[0].id] and not any(q.replies for q in served.queues.values())
    assert [status for _, status in _delivered(world)] == ["delivered"]


async def test_a_slow_channel_holds_no_inbox_lock_and_stalls_no_other_session(tmp_path: Path) -> None:
    world = World(tmp_path)
    other = world.new_session()
    channel = Gate(held={"slow"})
    sweeper = world.sweeper()
    sweeper.deliveries = served = _deliveries(channel)
    _reply(world, "slow")
    _reply(world, "fast", session=other)
    serving = asyncio.create_task(served.serve())
    sweeper.tick(T0)
    await channel.holding.wait()
    await _until(lambda: _delivered(world, other))
    with closing(world.inbound()) as conn:  # the held reply's inbox is free for any writer meanwhile
        conn.execute("PRAGMA busy_timeout = 0")
        with db.transaction(conn):
            conn.execute("INSERT INTO delivered(message_out_id, seq, delivered_at, status)"
                         " VALUES ('probe', -1, '2026-05-18T13:00:00.000Z', 'applied')")
    assert sweeper.tick(T0).errors == 0  # and the sweep goes on
    channel.opened.set()
    await _until(lambda: [s for _, s in _delivered(world)] == ["applied", "delivered"])
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    assert sorted(text for text, _ in channel.got) == ["fast", "slow"] and len(channel.calls) == 2


def test_a_crash_between_send_and_record_sends_again_and_records_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    channel = Channel()
    sweeper = world.sweeper()
    sweeper.deliveries = _deliveries(channel)
    _reply(world, "again")

    def crash(*_: object) -> None:
        raise RuntimeError("the host died here")

    monkeypatch.setattr(deliveries, "record", crash)
    _tick(sweeper)
    assert channel.got and _delivered(world) == []
    monkeypatch.undo()
    restarted = world.sweeper()  # a new host: nothing of the old one's memory
    restarted.deliveries = _deliveries(channel)
    _tick(restarted)
    _tick(restarted)
    assert [text for text, _ in channel.got] == ["again", "again"]
    assert [status for _, status in _delivered(world)] == ["delivered"]


def test_a_reply_sent_whose_record_failed_is_only_recorded_when_handed_again(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk failed each record after its send, and each sweep sent the reply again: one CLI chat got the same
    answer 2-4 times (crash review). A running host remembers what it sent (a restarted one sends again: above)."""
    world = World(tmp_path)
    channel = Channel()
    sweeper = world.sweeper()
    sweeper.deliveries = _deliveries(channel)
    _reply(world, "once")
    record = deliveries.record

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deliveries, "record", full)
    _tick(sweeper)
    _tick(sweeper)
    assert _delivered(world) == []
    monkeypatch.setattr(deliveries, "record", record)
    _tick(sweeper)
    assert [text for text, _ in channel.got] == ["once"]
    assert [status for _, status in _delivered(world)] == ["delivered"]
    assert sweeper.deliveries.sent == {}


def test_an_outcome_is_recorded_once_with_one_notice(tmp_path: Path) -> None:
    world = World(tmp_path)
    _reply(world, "lost")
    with closing(world.outbound()) as conn:
        reply = OutMessage.of(conn.execute("SELECT * FROM messages_out").fetchone())
    with closing(world.inbound()) as conn:
        deliveries.record(conn, [reply], "failed", T0)
        deliveries.record(conn, [reply], "failed", T0)
    assert _delivered(world) == [(reply.id, "failed")] and len(world.notices()) == 1


class Hook(Channel):
    serves = ("webhook",)


def test_replies_go_to_the_channel_their_type_names(tmp_path: Path) -> None:
    world = World(tmp_path)
    chat, hook = Channel(), Hook()
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(Channels([chat, hook]), lambda: T0)
    for text, channel_type in [("chat", "cli"), ("tool", "toolkit:t"), ("hook", "webhook:gh"), ("job", "queue:q"),
                               ("unrouted", None)]:
        _reply(world, text, channel_type=channel_type)
    _tick(sweeper)
    assert [text for text, _ in hook.got] == ["hook"]
    assert [text for text, _ in chat.got] == ["chat", "unrouted"]  # toolkit: no channel serves it in this host
    assert [status for _, status in _delivered(world)] == ["delivered", "stored", "delivered", "stored", "delivered"]


class Postbox(Channel):
    """A channel with an address (as mail's and Matrix's are): it serves ``mail:ADDRESS`` replies."""

    serves = ("mail",)


def test_a_reply_goes_only_to_a_channel_its_group_is_wired_to(tmp_path: Path) -> None:
    """The runner writes a reply's channel_type: a session of group demo (wired to cli) naming another group's
    mailbox must not be mailed through it; with the wiring, it is."""
    world = World(tmp_path)
    postbox = Postbox()
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(Channels([Channel(), postbox]), lambda: T0, world.settings.central_db)
    _reply(world, "through someone else's mailbox", channel_type="mail:ops@example.org")
    _tick(sweeper)
    assert postbox.calls == [] and _delivered(world)[0][1] == "stored"
    with closing(db.connect(world.settings.central_db, "central")) as central:
        mailboxes.create(central, T0, "ops@example.org", "127.0.0.1:993", "127.0.0.1:465", "ops", "OPS_PASSWORD")
        groups.rewire(central, world.group, T0, ["mail:OPS@example.org"], [])
    _reply(world, "through its own")
    _reply(world, "through its own mailbox", channel_type="mail:ops@example.org")
    _tick(sweeper)
    assert [text for text, _ in postbox.got] == ["through its own mailbox"]


def test_a_reply_naming_no_channel_goes_to_the_sessions_chat_if_its_group_has_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An operator's task in a session made by 'ncl sessions create' is answered with no routing: the group's cli
    chat has it; a group without one keeps it in the transcript, said as that (not as a refused channel)."""
    caplog.set_level(logging.INFO, "host.channels.delivery")
    world = World(tmp_path)
    chat = Channel()
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(Channels([chat]), lambda: T0, world.settings.central_db)
    _reply(world, "to whoever chats", channel_type=None)
    _tick(sweeper)
    assert chat.got == [("to whoever chats", None)] and _delivered(world)[0][1] == "delivered"
    with closing(db.connect(world.settings.central_db, "central")) as central:
        groups.rewire(central, world.group, T0, ["webhook:hook"], ["cli"])
    _reply(world, "to nobody", channel_type=None)
    _tick(sweeper)
    assert len(chat.got) == 1 and _delivered(world)[1][1] == "stored"
    actions = [r.action for r in caplog.records if r.name == "host.channels.delivery"]
    assert "delivery_unrouted" in actions and "delivery_refused" not in actions


def test_a_turns_answer_is_handed_over_before_the_turn_is_recorded_done_and_sent_after(tmp_path: Path) -> None:
    """Matrix types on while a session works or its answer is on the way (``Channels.replying``). A sweep that
    recorded the turn done before handing the answer over would let a typing renewal between the two find neither,
    and end the notice before the answer came (a flaky Synapse test showed it). Yet the answer must go out after
    that record: a chat marks a failed turn's answer as an error from it (handed too early, a flaky terminal test
    showed a plain answer). So it is handed while the visit holds the inbox's in-process lock, which every sending
    takes first (``Deliveries._looked_up``)."""
    world = World(tmp_path)
    world.schedule(T0 - timedelta(minutes=1), prompt="answer me")
    [row] = world.rows()
    seen: list[tuple[str, set[Path], str]] = []

    class Watching(Deliveries):
        def hand(self, session: Session, replies: list[OutMessage]) -> None:
            super().hand(session, replies)
            with closing(world.inbound()) as conn:
                status = conn.execute("SELECT status FROM messages_in WHERE id = ?", (row["id"],)).fetchone()[0]
            lock: list[str] = []  # whether a sending could take the lock now: it cannot, the visit holds it
            thread = threading.Thread(target=lambda: lock.append(_taken(session)))
            thread.start()
            thread.join()
            seen.append((status, set(self.channels.replying), lock[0]))

    sweeper = world.sweeper()
    sweeper.deliveries = Watching(Channels([Channel()]), lambda: T0)
    _reply(world, "the answer", in_reply_to=row["id"])
    world.ack(row["id"], "completed", T0, outcome="ran")
    _tick(sweeper)
    assert seen == [("pending", {world.session.folder}, "database is locked")]  # handed before, sent after
    assert world.rows()[0]["status"] == "completed" and _delivered(world)[0][1] == "delivered"
    assert sweeper.deliveries.channels.replying == set()  # sent and recorded: no longer on its way


def _taken(session: Session) -> str:
    try:
        with db.lock_of(session.folder / "inbound.db").within(0):
            return "taken"
    except db.Error as exc:
        return str(exc)
