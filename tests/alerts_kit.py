"""What the alert tests (tests/test_alerts_events.py, _sending.py, _spool.py) share: their instant and daily series,
the receivers of a webhook's POSTs (real HTTP servers on 127.0.0.1: ``Receiver``, an asyncio one in the test's loop;
``thread_receiver``, a threaded one for ``ncl`` processes), a sender to a ``Receiver`` that does not wait between
attempts, the days of a series run to chosen outcomes on the deterministic kit, and for ``ncl`` processes an install
with a daily task that has missed slots."""

from __future__ import annotations

import asyncio
import http.server
import json
import queue
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

from kit import World, utc
from processes import Env

from host.channels.alerts import Alerts
from host.settings import AlertTarget
from schemas.times import from_text

T0 = utc("2026-06-01T12:00:00")  # 08:00 EDT; the daily 09:00 series DAILY first runs at 13:00 UTC
DAILY = "0 9 * * *"


class Receiver:
    """An HTTP server on 127.0.0.1 in the test's loop: records each POST's JSON and answers ``status`` with
    ``headers``, or (``status`` None) never answers and waits for the client to go."""

    def __init__(self, status: int | None = 200, headers: str = "") -> None:
        self.status, self.headers = status, headers
        self.bodies: list[dict[str, Any]] = []
        self.connections = 0
        self.arrived = asyncio.Condition()  # notified at each body

    async def until(self, bodies: int) -> None:
        """Wait until ``bodies`` requests came (the test's timeout bounds it)."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.bodies) >= bodies)

    @property
    def events(self) -> list[str]:
        return [body["event"] for body in self.bodies]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"content-length: *(\d+)", head, re.I)
            self.bodies.append(json.loads(await reader.readexactly(int(found[1]) if found else 0)))
            async with self.arrived:
                self.arrived.notify_all()
            if self.status is None:
                await reader.read()  # until the client gives up
                return
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n{self.headers}\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hooks/s3cret"
        finally:
            server.close()


def sender(world: World, url: str, **kwargs: Any) -> Alerts:
    async def no_wait(seconds: float) -> None:  # the back-off between attempts, on no clock at all
        pass

    return Alerts(world.settings, AlertTarget("webhook", url), now=lambda: T0, sleep=no_wait, **kwargs)


def occurrence(world: World, task: str) -> tuple[str, Any]:
    (row,) = world.live(task)
    return row["id"], from_text(row["process_after"])


def run_days(world: World, task: str, outcomes: list[str]) -> None:
    """The series' next occurrences end as ``outcomes``, a minute after each one's 09:00, one sweep each."""
    sweeper = world.sweeper()
    for outcome in outcomes:
        row_id, at = occurrence(world, task)
        world.run_occurrence(sweeper, row_id, at + timedelta(minutes=1), outcome=outcome)


class Hold:
    """While ``holding``, a ``thread_receiver`` answers nothing (the sender waits) until ``released``."""

    def __init__(self) -> None:
        self.holding, self.released = True, threading.Event()


@contextmanager
def thread_receiver(status: int = 200, hold: Hold | None = None) -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """A threaded HTTP server on 127.0.0.1 for ``ncl`` processes: each POST's JSON into the queue."""
    got: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if hold is not None and hold.holding:
                hold.released.wait()
                return  # no answer at all
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        if hold is not None:
            hold.released.set()
        server.shutdown()
        server.server_close()


def standup(env: Env) -> tuple[str, str]:
    """A group ``team`` on the cli channel, a session of it and there a DAILY task added on 2026-01-01 (so any later
    day finds slots missed): the session's id and the task's."""
    env.ok("groups", "create", "team", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "team", "--json"))["id"]
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence", DAILY,
                             "--now", "2026-01-01T00:00:00", "--json"))["id"]
    return session, task
