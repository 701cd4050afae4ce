"""Answers someone is waiting for: a chat's message or a webhook's arrival on its way into an inbox, then the answer
written. While one is worked out, the sweep gives way: its thread and its worker processes wait before their next
session until no answer is owed (``Yielding``). On two cores the workers and the sweep's thread otherwise took the
time the answer needed: a chat's answer during a host's first sweep over 10,000 sessions went from p99 16-21 ms to
8.5-9.2 ms (scripts/bench_loop.py, interleaved runs on a quiet machine; docs/scaling.md).

The sweep's give-way is bounded, so a flood of requests cannot stall it: a wait lasts at most ``HOLD_S`` (an answer
takes 2-5 ms), and a waiter that waited does not wait again before it has worked as long: at most half of a sweep's
time goes to answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from multiprocessing.synchronize import Event as ProcessEvent

HOLD_S = 0.01

_owed = 0  # answers being worked out now (the loop's thread alone changes it)
_none_here = threading.Event()  # no answer owed: what the sweep's thread waits for
_none_here.set()
_none_there: ProcessEvent | None = None  # the same, for the worker processes (made with the first of them)


@contextmanager
def owed() -> Iterator[None]:
    """An answer is worked out inside (the loop's thread only)."""
    global _owed
    _owed += 1
    _set(False)
    try:
        yield
    finally:
        _owed -= 1
        if not _owed:
            _set(True)


def _set(none_owed: bool) -> None:
    for event in (_none_here, _none_there):
        if event is not None:
            event.set() if none_owed else event.clear()


def for_workers() -> ProcessEvent:
    """What the sweep's worker processes wait on (given to each as it starts)."""
    global _none_there
    if _none_there is None:
        _none_there = get_context("forkserver").Event()
        _set(not _owed)
    return _none_there


class Yielding:
    """One waiter's give-way: the sweep's thread's, or a worker's."""

    def __init__(self, none_owed: threading.Event | ProcessEvent | None = None) -> None:
        self._none_owed = none_owed or _none_here
        self._not_before = 0.0

    def wait(self) -> None:
        """Wait while an answer is owed (see the module), then go on."""
        if self._none_owed.is_set():
            return
        started = time.monotonic()
        if started < self._not_before:
            return
        self._none_owed.wait(HOLD_S)
        ended = time.monotonic()
        self._not_before = ended + (ended - started)
