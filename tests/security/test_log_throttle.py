"""Repeated troubles a flood causes (out of descriptors, disk full, connections over the cap) are logged at most
once a minute per kind (issue 11), saying how many were left out; a fake monotonic clock drives it. The servers
asyncio accepts for (the model proxy's) go through it too, in a real process at its descriptor limit."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from host.http.log_throttle import LogThrottle


def test_one_line_a_minute_per_action_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("flood"), interval_s=60)
    caplog.set_level(logging.INFO, logger="flood")
    logged = [throttle.log(logging.ERROR, "out_of_fds", now, "out of descriptors") for now in range(0, 120, 1)]
    assert logged.count(True) == 2 and logged[0] and logged[60]
    assert throttle.log(logging.ERROR, "disk_full", 61.0, "disk full")  # another kind has its own minute
    records = [(r.action, r.left_out) for r in caplog.records]  # type: ignore[attr-defined]
    assert records == [("out_of_fds", 0), ("out_of_fds", 59), ("disk_full", 0)]
    assert "59 more like it" in caplog.records[1].getMessage()


def test_a_throttle_of_a_few_lines_an_interval_says_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    """What the model proxy keeps per session (ten a minute there): the first lines of an interval, then silence,
    and the next interval's first line says how many were left out."""
    throttle = LogThrottle(logging.getLogger("flood"), interval_s=60, lines=3)
    caplog.set_level(logging.INFO, logger="flood")
    logged = [throttle.log(logging.WARNING, "refused", now, "refused") for now in range(0, 120, 1)]
    assert [now for now, done in enumerate(logged) if done] == [0, 1, 2, 60, 61, 62]
    assert [r.left_out for r in caplog.records] == [0, 0, 0, 57, 0, 0]  # type: ignore[attr-defined]


def test_a_hundred_thousand_repeats_make_a_handful_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("flood"))
    caplog.set_level(logging.INFO, logger="flood")
    for i in range(100_000):
        throttle.log(logging.WARNING, "connections_over_cap", i / 1000, "over the cap")  # 100 s of a flood
    assert len(caplog.records) == 2


# An asyncio server (what the model proxy's sockets are) next to a Listener, at its descriptor limit: asyncio logs
# "socket.accept() out of system resource" with a traceback for each pending connection, every second.
ASYNCIO_AT_THE_LIMIT = """
import asyncio, logging, os, resource, sys
from host.http.listener import Listener, unix_socket

logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

async def main():
    async def nothing(reader, writer):
        await asyncio.Event().wait()
    path = sys.argv[1]
    Listener(unix_socket(sys.argv[2]), nothing, name="cli", cap=4, busy=b"", limit=1024).start()
    server = await asyncio.start_unix_server(nothing, path=path)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1, hard))
    print("ready", flush=True)
    await asyncio.sleep(float(sys.argv[3]))

asyncio.run(main())
"""


def test_asyncio_servers_out_of_descriptors_log_once_not_a_traceback_each_time(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", ASYNCIO_AT_THE_LIMIT, str(tmp_path / "a.sock"),
                             str(tmp_path / "b.sock"), "2.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    clients = []
    for _ in range(20):  # the kernel queues them; the server cannot take one
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "a.sock"))
        clients.append(client)
    _, err = proc.communicate(timeout=30)  # it runs 2.5 s: two of asyncio's 1 s retry rounds
    for client in clients:
        client.close()
    assert err.count("cannot accept") == 1, err[-2000:]
    assert "Traceback" not in err and "out of system resource" not in err, err[-2000:]
