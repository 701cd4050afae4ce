"""The CLI socket's sends (issue 14.2): central.db connections kept open between sends and shared by the threads
that serve them (``pool.Pool``), and the session marked active once the send is answered, not before."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest
from kit import utc
from test_webhooks import Hook

from host.channels import cli as cli_channel
from host.channels.cli import CliChannel, socket_path
from host.store import db
from host.store.pool import Pool
from schemas.times import from_text

T0, T1 = utc("2026-06-11T09:00:00"), utc("2026-06-11T09:05:00")


def test_a_pool_lends_one_connection_at_a_time_and_to_any_thread(tmp_path: Path) -> None:
    Hook(tmp_path)  # a central.db
    pool = Pool(tmp_path / "data" / "central.db")
    with pool.connection() as first, pool.connection() as second:
        assert first is not second  # both in use: a second one is opened
    used: list[object] = []

    def elsewhere() -> None:
        with pool.connection() as conn:
            used.append(conn)
            conn.execute("SELECT count(*) FROM agent_groups").fetchone()  # a thread-bound one would refuse

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert used[0] in (first, second)  # given back, lent again
    pool.close()


def test_a_connection_left_in_a_transaction_or_given_back_after_close_is_closed(tmp_path: Path) -> None:
    Hook(tmp_path)
    pool = Pool(tmp_path / "data" / "central.db")
    with pool.connection() as left_open:
        left_open.execute("BEGIN")
    with pytest.raises(sqlite3.ProgrammingError):
        left_open.execute("SELECT 1")
    with pool.connection() as idle:
        assert idle is not left_open
    with pool.connection() as busy:
        assert busy is idle
        pool.close()
        busy.execute("SELECT 1")  # in use: closed only once given back
    for conn in (idle, busy):
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


async def test_a_send_marks_its_session_active_at_its_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Hook(tmp_path)  # group "ops" with the cli channel
    at = [T0]
    monkeypatch.setattr(cli_channel.clock, "now", lambda: at[0])
    served = CliChannel(hook.settings)
    await served.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(socket_path(hook.settings)))
        answers = []
        for text, when in (("first", T0), ("second", T1), ("third", T1)):
            at[0] = when
            writer.write(json.dumps({"op": "send", "group": "ops", "text": text}).encode() + b"\n")
            answers.append(json.loads(await asyncio.wait_for(reader.readline(), 5)))
        writer.close()
    finally:
        await served.stop()
    assert [a["ok"] for a in answers] == [True, True, True]
    # A connection's next line is read once the last send's stamp is written: the second's is, by the third answer.
    with closing(db.connect(hook.settings.central_db, "central")) as central:
        created, active = central.execute("SELECT created_at, last_active_at FROM sessions").fetchone()
    assert (from_text(created), from_text(active)) == (T0, T1)
