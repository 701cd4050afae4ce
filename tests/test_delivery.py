"""Replies are delivered to their channel exactly once, in order, with up to 3 attempts, then a notice."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from kit import World, utc

from host.channels.delivery import Deliveries
from host.store.outbox import OutMessage
from host.store.sessions import Session

T0 = utc("2026-05-18T13:00:00")


class Channel:
    def __init__(self, fail_first: int = 0, listening: bool = True) -> None:
        self.fail_first, self.listening = fail_first, listening
        self.calls: list[str] = []
        self.got: list[tuple[str, int | None]] = []

    def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        self.calls.append(reply.id)
        if len(self.calls) <= self.fail_first:
            raise ConnectionError("channel down")
        if not self.listening:
            return None
        self.got.append((json.loads(reply.content)["text"], reply_to_seq))
        return True


def _reply(world: World, text: str, in_reply_to: str | None = None) -> None:
    seq = len(_out(world)) * 2 + 1
    with closing(world.outbound()) as conn:
        conn.execute("INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, channel_type, content)"
                     " VALUES (?, ?, ?, ?, 'chat', 'cli', ?)",
                     (f"msg-1779109200000-{seq:06d}", seq, in_reply_to, "2026-05-18T13:00:00.000Z",
                      json.dumps({"text": text, "files": []})))


def _out(world: World) -> list[Any]:
    with closing(world.outbound()) as conn:
        return conn.execute("SELECT id FROM messages_out").fetchall()


def _delivered(world: World) -> list[tuple[str, str]]:
    with closing(world.inbound()) as conn:
        return [tuple(r) for r in conn.execute("SELECT message_out_id, status FROM delivered ORDER BY seq")]


def test_each_reply_is_delivered_once_in_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel()
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(channel)
    _reply(world, "one")
    _reply(world, "two")
    sweeper.tick(T0)
    sweeper.tick(T0)
    assert [text for text, _ in channel.got] == ["one", "two"]
    assert [status for _, status in _delivered(world)] == ["delivered", "delivered"]


def test_three_failed_attempts_give_up_with_a_notice_and_keep_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel(fail_first=3)
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(channel)
    _reply(world, "lost")
    _reply(world, "next")
    for _ in range(3):
        sweeper.tick(T0)
    assert [status for _, status in _delivered(world)] == ["failed", "delivered"]
    assert [text for text, _ in channel.got] == ["next"]  # never before the one ahead of it was settled
    [notice] = world.notices()
    assert notice["notice"] == "delivery_failed" and notice["trigger"] == 0


def test_a_retry_that_succeeds_is_delivered_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    channel = Channel(fail_first=1)
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(channel)
    _reply(world, "eventually")
    sweeper.tick(T0)
    assert _delivered(world) == []
    sweeper.tick(T0)
    sweeper.tick(T0)
    assert [text for text, _ in channel.got] == ["eventually"] and world.notices() == []


def test_no_listener_keeps_the_reply_in_the_transcript(tmp_path: Path) -> None:
    world = World(tmp_path)
    sweeper = world.sweeper()
    sweeper.deliveries = Deliveries(Channel(listening=False))
    _reply(world, "for the record")
    sweeper.tick(T0)
    assert [status for _, status in _delivered(world)] == ["stored"]
