"""Issue 14 point 2: where should the loop's own database work run while the sweep works in its thread? Over N
sessions (scripts/bench_sweep.py builds them) a thread sweeps them again and again (a fresh Sweeper each time: every
session opened, as in the first sweep after a start), while the event loop does a webhook's database work every
20 ms: read a token hash from central.db, and write one inbox row (a commit). Three ways: on the loop itself, in a
thread (``asyncio.to_thread``, what the host does), and through ``aiosqlite`` (a thread per connection, each statement
a hop), under Python's GIL switch interval (5 ms) and the host's (``host.loop.SWITCH_INTERVAL_S``). Prints JSON: the
work's latency and how late a 1 ms timer of the loop fired meanwhile (p50/p99/max, ms).

    .venv/bin/python scripts/bench_loop_db.py [--sessions 1000] [--seconds 5]

``aiosqlite`` is not a dependency of the host: the third way is measured only where it can be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sweep
from bench_flood import _stats
from bench_kit import workdir

from host.loop import SWITCH_INTERVAL_S
from host.scheduling.sweep import Sweeper
from host.settings import Settings
from host.store import db, groups

TOKEN = "SELECT token_hash FROM wirings WHERE channel = ?"
INSERT = "INSERT INTO probe(at) VALUES (?)"


def _sweeping(settings: Settings, stop: threading.Event) -> None:
    while not stop.is_set():
        sweeper = Sweeper(settings)
        sweeper.tick(bench_sweep.NOW)
        sweeper.close()


def _work(central: Path, inbox: Path) -> None:
    """What the loop's own database work is like: a read of central.db, a commit to a session file."""
    with closing(db.connect(central, "central")) as conn:
        groups.stored_token_hash(conn, "webhook:probe")
    with closing(sqlite3.connect(inbox, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT, (time.time(),))
        conn.execute("COMMIT")


async def _aio_work(central: Path, inbox: Path) -> None:
    import aiosqlite

    async with aiosqlite.connect(central) as conn:
        await (await conn.execute(TOKEN, ("webhook:probe",))).fetchone()
    async with aiosqlite.connect(inbox, isolation_level=None) as conn:
        await conn.execute("BEGIN IMMEDIATE")
        await conn.execute(INSERT, (time.time(),))
        await conn.execute("COMMIT")


async def _probe(work: Callable[[], Awaitable[None]], seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    lags: list[float] = []
    done = time.monotonic() + seconds

    async def ticking() -> None:
        while time.monotonic() < done:
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - asked) * 1000 - 1)

    ticker = asyncio.create_task(ticking())
    while time.monotonic() < done:
        started = time.perf_counter()
        await work()
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.02)
    await ticker
    return {"work": _stats(latencies), "loop_lag": _stats(lags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    try:
        import aiosqlite  # noqa: F401
        have_aio = True
    except ImportError:
        have_aio = False
    with workdir("ncl-bench-loop-db-") as base:
        settings, _ = bench_sweep.build(base, args.sessions)
        inbox = base / "probe.db"
        with closing(sqlite3.connect(inbox)) as conn:
            conn.execute("PRAGMA journal_mode=PERSIST")
            conn.execute("CREATE TABLE probe(at REAL)")
        central = settings.central_db

        async def on_loop() -> None:
            _work(central, inbox)

        async def in_thread() -> None:
            await asyncio.to_thread(_work, central, inbox)

        async def through_aiosqlite() -> None:
            await _aio_work(central, inbox)

        ways = {"on_loop": on_loop, "to_thread": in_thread, **({"aiosqlite": through_aiosqlite} if have_aio else {})}
        results: dict[str, Any] = {}
        stop = threading.Event()
        sweeping = threading.Thread(target=_sweeping, args=(settings, stop), daemon=True)
        sweeping.start()
        try:
            for switch in (0.005, SWITCH_INTERVAL_S):
                sys.setswitchinterval(switch)
                for name, way in ways.items():
                    results[f"{name} switch {switch * 1000:g} ms"] = asyncio.run(_probe(way, args.seconds))
        finally:
            stop.set()
            sweeping.join()
    print(json.dumps({"sessions": args.sessions, "seconds": args.seconds, "results": results}))


if __name__ == "__main__":
    main()
