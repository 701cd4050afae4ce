"""Bad input, property-based (issue 7): webhook bodies through the real HTTP server. Any body (binary, JSON in
UTF-8 or UTF-16, NaN, huge numbers, deep nesting) is accepted (202) with exactly one strict-JSON row, or
refused with a 4xx JSON error and no row.

Derandomized settings and the shared strategies: tests/property_kit.py.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from property_kit import json_values, observe, props, strict_json
from test_webhooks import Hook

# The server runs in a child process: a deeply nested body makes json.loads hit RecursionError in the server, and in
# this process that upsets CPython 3.11's AST recursion counter, which pytest's own traceback formatting then trips
# over (INTERNALERROR: SystemError: AST constructor recursion depth mismatch).
SERVE = """
import asyncio, sys
from pathlib import Path
from host import settings as settings_module
from host.channels.webhooks import Webhooks

async def main():
    root = Path(sys.argv[1])
    settings = settings_module.load(environ={"NCL_DATA_DIR": str(root / "data"), "TZ": "UTC"}, cwd=root,
                                    system_tz="UTC")
    print(await Webhooks(settings).start(port=0), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class LiveHook:
    """The real webhook server (host.channels.webhooks.Webhooks on 127.0.0.1) for the Hook group; sockets post."""

    def __init__(self, root: Path) -> None:
        self.hook = Hook(root)
        self.server = subprocess.Popen([sys.executable, "-c", SERVE, str(root)], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.server.stdout is not None
        self.port = int(self.server.stdout.readline())

    def post(self, body: bytes) -> tuple[int | None, bytes]:
        head = (f"POST /webhooks/github HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {self.hook.token}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(head + body)
            raw = b"".join(iter(lambda: conn.recv(65536), b""))
        status, _, rest = raw.partition(b"\r\n")
        return (int(status.split(b" ")[1]) if status else None), rest.partition(b"\r\n\r\n")[2]

    def stop(self) -> None:
        self.server.kill()
        self.server.wait(10)
        assert self.server.stdout is not None
        self.server.stdout.close()


@pytest.fixture
def live_hook(tmp_path: Path) -> Iterator[LiveHook]:
    made = LiveHook(tmp_path)
    yield made
    made.stop()


def check_webhook(live: LiveHook, body: bytes) -> None:
    before = live.hook.rows()
    status, answer = live.post(body)
    after = live.hook.rows()
    assert status is not None, "the server closed the connection without an answer"
    observe(f"HTTP {status}")
    if status == 202:
        assert set(json.loads(answer)) == {"message_id", "session_id"}
        assert after[:len(before)] == before and len(after) == len(before) + 1
        assert after[-1] == {"kind": "webhook", "content": {"source": "github", "payload": json.loads(body)}}
        for inbound in live.hook.settings.sessions_dir.glob("*/*/inbound.db"):
            with closing(sqlite3.connect(inbound)) as conn:
                for (content,) in conn.execute("SELECT content FROM messages_in"):
                    strict_json(content)
    else:
        assert 400 <= status < 500 and json.loads(answer)["type"] == "error", (status, answer)
        assert after == before, "a refused body was written"


webhook_bodies = st.binary(max_size=120) | json_values.map(lambda v: json.dumps(v).encode()) \
    | json_values.map(lambda v: json.dumps(v).encode("utf-16")) \
    | st.sampled_from([b"", b" ", b"{", b"null", b'"\\ud800"', b"\xef\xbb\xbf{}", b'{"a": 1}{"b": 2}', b"\x00"])


@props(120)
@given(body=webhook_bodies)
def test_webhook_bodies_are_accepted_with_one_row_or_refused_with_none(live_hook: LiveHook, body: bytes) -> None:
    check_webhook(live_hook, body)


@pytest.mark.parametrize("body", [
    pytest.param(b"NaN", id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b"1e999", id="overflowing-number"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
])
def test_webhook_bodies_that_are_not_strict_json_get_a_400(live_hook: LiveHook, body: bytes) -> None:
    check_webhook(live_hook, body)
