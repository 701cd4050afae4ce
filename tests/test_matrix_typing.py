"""The Matrix channel's typing notice (a client stands in for matrix-nio; the real homeserver's test is in
tests/matrix): renewed while a session of the room still has a triggering row claimed or due, so a turn longer
than one notice (60 s) still shows the bot typing; in per-thread mode an answer in one thread leaves it on while
another thread's runner works; stopped when none works, or 30 min after the room's latest triggering message.
Was: set once for 60 s when a message came, switched off by any answer in the room."""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc
from nio import RoomSendResponse

from host.channels.matrix import TYPING_CAP, TYPING_MS, MatrixChannel
from host.store import db, groups, inbox, sessions
from host.store.outbox import OutMessage
from schemas import clock

BOT = "@bot:ncl.test"
ROOM = "!room:ncl.test"


class Client:
    """Records the typing notices and sends of the channel."""

    def __init__(self) -> None:
        self.typing: list[tuple[str, bool, int]] = []
        self.rooms: dict[str, Any] = {}

    async def room_typing(self, room_id: str, on: bool, timeout: int) -> None:
        self.typing.append((room_id, on, timeout))

    async def room_send(self, room_id: str, kind: str, content: dict[str, Any], tx_id: str) -> RoomSendResponse:
        return RoomSendResponse("$e", room_id)


def _world(tmp_path: Path) -> tuple[World, MatrixChannel, Client]:
    world = World(tmp_path, NCL_MATRIX_USER_ID=BOT, NCL_MATRIX_HOMESERVER="http://127.0.0.1:1",
                  NCL_MATRIX_ACCESS_TOKEN="t", NCL_MATRIX_ALLOW="@*:ncl.test")
    groups.create(world.central, world.settings, utc("2026-01-01T00:00:00"), "talk", [f"matrix:{BOT}"],
                  session_mode="per-thread")
    channel, client = MatrixChannel(world.settings), Client()
    channel.client = client
    return world, channel, client


def _say(channel: MatrixChannel, event_id: str, thread: str | None) -> None:
    content: dict[str, Any] = {"msgtype": "m.text", "body": "think hard"}
    if thread:
        content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread}
    asyncio.run(channel._event(ROOM, {"type": "m.room.message", "sender": "@alice:ncl.test", "event_id": event_id,
                                      "origin_server_ts": 1767225600000, "content": content}))


def _answer(world: World, channel: MatrixChannel, thread: str) -> None:
    """The thread's runner is done (its row completed, as the sweep records it) and its answer is delivered."""
    session = sessions.by_thread(world.central, world.settings, "ag-talk", f"matrix:{BOT}/{ROOM}/{thread}")
    assert session is not None
    with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn, db.transaction(conn):
        for row in inbox.rows(conn, "SELECT * FROM messages_in"):
            inbox.end(conn, row.id, "completed")
    reply = OutMessage(f"msg-1-{thread[1:]}", 1, None, "2026-01-01T00:00:00Z", "chat", ROOM, f"matrix:{BOT}",
                       thread, json.dumps({"text": "done"}))
    assert asyncio.run(channel.deliver(session, reply, None)) is True


def test_an_answer_in_one_thread_leaves_the_bot_typing_while_another_thread_works(tmp_path: Path) -> None:
    world, channel, client = _world(tmp_path)
    _say(channel, "$a", "$a")
    _say(channel, "$b", "$b")
    assert client.typing == [(ROOM, True, TYPING_MS)] * 2
    _answer(world, channel, "$a")
    assert (ROOM, False, TYPING_MS) not in client.typing  # thread $b's runner still works
    asyncio.run(channel.renew_typing())
    assert client.typing[-1] == (ROOM, True, TYPING_MS)  # renewed: the notice outlasts its own 60 s
    _answer(world, channel, "$b")
    assert client.typing[-1] == (ROOM, False, TYPING_MS)
    asyncio.run(channel.renew_typing())  # nobody works: nothing renewed
    assert client.typing[-1] == (ROOM, False, TYPING_MS) and channel.typing == {}


def test_typing_is_renewed_while_the_runner_works_and_stops_without_an_answer_or_after_the_cap(
        tmp_path: Path) -> None:
    world, channel, client = _world(tmp_path)
    _say(channel, "$m", None)
    for _ in range(3):  # each renewal pass while the row waits or is claimed
        asyncio.run(channel.renew_typing())
    assert client.typing == [(ROOM, True, TYPING_MS)] * 4
    asyncio.run(channel.renew_typing(clock.now() + TYPING_CAP + timedelta(seconds=1)))  # a stuck runner
    assert client.typing[-1] == (ROOM, False, TYPING_MS) and channel.typing == {}
    _say(channel, "$n", None)
    session = sessions.by_thread(world.central, world.settings, "ag-talk", f"matrix:{BOT}/{ROOM}")
    assert session is not None
    with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn, db.transaction(conn):
        for row in inbox.rows(conn, "SELECT * FROM messages_in"):
            inbox.end(conn, row.id, "failed")  # the turn failed and nothing was answered
    asyncio.run(channel.renew_typing())
    assert client.typing[-2:] == [(ROOM, True, TYPING_MS), (ROOM, False, TYPING_MS)]


def test_a_message_and_the_typing_renewal_do_their_sqlite_work_off_the_hosts_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Matrix message's commits (a new session's files, the inbox row) and the renewal's reads run in threads, as
    the CLI socket's and the webhooks' do: the loop serves the other channels and the model proxy meanwhile."""
    world, channel, _ = _world(tmp_path)
    threads: dict[str, set[str]] = {}
    real_connect = db.connect

    def connect(path: Path, kind: Any, **kw: Any) -> Any:
        threads.setdefault(f"{path.name}", set()).add(threading.current_thread().name)
        return real_connect(path, kind, **kw)

    monkeypatch.setattr(db, "connect", connect)
    _say(channel, "$m1", "$t1")
    asyncio.run(channel.renew_typing())
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop in this thread
    assert set(threads) >= {"central.db", "inbound.db"} and all(loop_thread not in t for t in threads.values()), threads
    session = sessions.by_thread(world.central, world.settings, "ag-talk", f"matrix:{BOT}/{ROOM}/$t1")
    [row] = world.rows(session=session)
    assert json.loads(row["content"])["text"] == "think hard"
    threads.clear()  # an answer's send asks whether the room's sessions still work, off the loop too
    reply = OutMessage("msg-1-t1", 1, None, "2026-01-01T00:00:00Z", "chat", ROOM, f"matrix:{BOT}", "$t1",
                       json.dumps({"text": "done"}))
    assert session is not None and asyncio.run(channel.deliver(session, reply, None)) is True
    assert set(threads) == {"inbound.db"} and loop_thread not in threads["inbound.db"], threads


def test_typing_stays_on_while_the_answer_is_on_its_way_and_a_renewal_never_restarts_what_an_answer_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a sweep recording the turn done and the answer's send, the session's folder is in
    ``Channels.replying``: a renewal then types on (it used to stop, and the answer came after the notice had
    ended). A renewal that finds the answer sent meanwhile (``deliver`` ended the notice) does not type again."""
    world, channel, client = _world(tmp_path)
    _say(channel, "$m", None)
    session = sessions.by_thread(world.central, world.settings, "ag-talk", f"matrix:{BOT}/{ROOM}")
    assert session is not None
    with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn, db.transaction(conn):
        for row in inbox.rows(conn, "SELECT * FROM messages_in"):
            inbox.end(conn, row.id, "completed")
    channel.replying.add(session.folder)  # as Deliveries keeps it while the answer waits to be sent
    asyncio.run(channel.renew_typing())
    assert client.typing == [(ROOM, True, TYPING_MS)] * 2 and ROOM in channel.typing
    channel.replying.clear()  # sent and recorded
    asyncio.run(channel.renew_typing())
    assert client.typing[-1] == (ROOM, False, TYPING_MS) and channel.typing == {}

    _say(channel, "$n", None)
    before = len(client.typing)

    def answered_meanwhile(typing: Any, now: Any) -> bool:
        channel.typing.pop(ROOM)  # what deliver does (its notice off is the client's business, not this test's)
        return True

    monkeypatch.setattr(channel, "_working", answered_meanwhile)
    asyncio.run(channel.renew_typing())
    assert len(client.typing) == before and channel.typing == {}
