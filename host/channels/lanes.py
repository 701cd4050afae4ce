"""Threads of its own for each channel's blocking work (SQLite commits and waits for a session's lock, IMAP, SMTP,
Matrix state), instead of asyncio's one default pool (six threads on two cores): there one channel's waits held every
other's. 64 webhooks into a session whose runner kept its inbox read-locked held ``ncl chat`` of any group for 55 s
(attack review), and six mailboxes' IDLE waits (a minute each) would have held it for good.

``run(lane, work, *args)`` is ``asyncio.to_thread`` in the lane's pool; ``OneAtATime`` lets one caller at a time
through per key, the others waiting on the loop, not in a thread."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Lane = Literal["webhooks", "cli", "deliveries", "mail", "mailboxes", "matrix", "alerts"]
# Threads are made as work comes, up to these. A watched mailbox holds one of ``mailboxes`` while it waits (IDLE) or
# reads its new mail: one each, so no mailbox waits for another's.
SIZES: dict[Lane, int] = {"webhooks": 4, "cli": 4, "deliveries": 4, "mail": 4, "mailboxes": 256, "matrix": 4,
                          "alerts": 2}
_pools: dict[Lane, ThreadPoolExecutor] = {}


async def run(lane: Lane, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a thread of ``lane`` (with the caller's context variables, as ``asyncio.to_thread``)."""
    pool = _pools.get(lane)
    if pool is None:  # (only the host's loop calls this: no race)
        pool = _pools[lane] = ThreadPoolExecutor(SIZES[lane], thread_name_prefix=f"ncl-{lane}")
    call = functools.partial(contextvars.copy_context().run, work, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


class OneAtATime:
    """One holder per key at a time; a key's lock is dropped once nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            users = self._locks[key][1] - 1
            if users:
                self._locks[key] = (lock, users)
            else:
                del self._locks[key]
