"""A sweep's visit costs the same however long a session's history is: every query a visit makes reads the
current state through an index, never every row ever delivered, run or answered. Measured in SQLite VM steps
(deterministic for the same files), not in seconds."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc

from host.store import db
from host.store.sessions import Session
from schemas.times import to_text

T0 = utc("2026-03-02T15:00:00")
STEP = 1  # VM instructions per progress callback: every one counted


def add_history(world: World, session: Session, turns: int, requests: bool) -> None:
    """``turns`` answered chats: each a completed inbound row, its ack, its reply and (every tenth, if
    ``requests``) a request the host applied instead, all recorded as handled in ``delivered``."""
    at = to_text(T0)
    # outbound.db as its runner writes it: the host's own connections to it give up past 0.2 s of their thread's CPU,
    # which this loop's Python counts in too (CI once ran out of it, a slow moment).
    with closing(world.inbound(session)) as inbound, db.transaction(inbound), \
            closing(sqlite3.connect(session.folder / "outbound.db")) as outbound, outbound:
        for n in range(1, turns + 1):
            chat = f"msg-1772463600000-{n:06d}"
            inbound.execute("INSERT INTO messages_in(id, seq, kind, timestamp, status, content) VALUES"
                            " (?, ?, 'chat', ?, 'completed', ?)", (chat, 2 * n, at, json.dumps({"text": "hi"})))
            outbound.execute("INSERT INTO processing_ack(message_id, status, status_changed, detail, generation)"
                             " VALUES (?, 'completed', ?, NULL, 'gen-old')", (chat, at))
            kind, status = ("system", "applied") if requests and n % 10 == 0 else ("chat", "delivered")
            content = {"action": "pause_task", "taskId": "task-1772463600000-aaaaaa"} if kind == "system" else {
                "text": "hello", "files": []}
            reply = f"msg-1772463600001-{n:06d}"
            outbound.execute("INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, content) VALUES"
                             " (?, ?, ?, ?, ?, ?)", (reply, 2 * n + 1, chat, at, kind, json.dumps(content)))
            inbound.execute("INSERT INTO delivered(message_out_id, seq, delivered_at, status) VALUES (?, ?, ?, ?)",
                            (reply, 2 * n + 1, at, status))


def visit_steps(world: World, monkeypatch: pytest.MonkeyPatch) -> dict[Path, int]:
    """VM steps of the statements one sweep runs, per session folder, over every connection it opens there."""
    steps: dict[Path, int] = {}
    real: Callable[..., sqlite3.Connection] = db.connect

    def counted(path: Path, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(path, *args, **kwargs)
        steps.setdefault(path.parent, 0)

        def tick() -> int:
            steps[path.parent] += STEP
            return 0

        conn.set_progress_handler(tick, STEP)
        return conn

    with monkeypatch.context() as patch:
        patch.setattr(db, "connect", counted)
        result = world.sweeper().tick(T0)
    assert (result.errors, result.sessions_opened, result.woken) == (0, 2, 2)
    return steps


@pytest.mark.parametrize("requests", [True, False], ids=["with-requests", "chats-only"])
def test_a_visit_costs_the_same_with_ten_times_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           requests: bool) -> None:
    world = World(tmp_path)
    short, long = world.session, world.new_session()
    add_history(world, short, 300, requests)
    add_history(world, long, 3000, requests)
    for session in (short, long):  # and each has one thing due now
        world.schedule(T0, at=to_text(T0), session=session)
    steps = visit_steps(world, monkeypatch)
    assert steps[long.folder] < 1.5 * steps[short.folder], steps
