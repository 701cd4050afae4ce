"""A network peer floods the webhook port (issue 11): the token is checked on the headers before any body is read,
at most ``NCL_HTTP_MAX_CONNECTIONS`` connections are held (more get 503 at once), slow heads and bodies are cut,
and running out of file descriptors neither floods the log nor starves ``ncl chat`` and the sweeps.

The first tests drive the real webhook server in this process; the attacks run against a real ``ncl host run``
(its stderr in a file, its RSS read from /proc), everything on 127.0.0.1 and the host's own unix socket."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from processes import HOST_PRELUDE, Env
from test_webhooks import Hook

from host.channels.webhooks import Webhooks

KIB = 1024
BODY = 1024 * KIB - 1  # sent of the 1 MiB announced: a server that reads before it checks waits for the last byte


def head(port: int, token: str | None, length: int = 1024 * KIB) -> bytes:
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /webhooks/hook HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}content-type: application/json\r\n"
            f"content-length: {length}\r\n\r\n").encode()


def status_of(answer: bytes) -> int | None:
    return int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else None


async def answer_of(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server says before it closes (b"" if it closed or reset without a word)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        return b""


# --- the server in this process --------------------------------------------------------------------------------


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[tuple[Hook, Webhooks]]:
    """The real server with a cap of 4 connections, a short head timeout and a long body timeout."""
    made = Hook(tmp_path)
    made.settings = made.settings.replace(http_max_connections=4)
    async with made.serving(head_timeout_s=0.5, body_timeout_s=30) as server:
        yield made, server


@pytest.mark.parametrize("token", [None, "wrong", "TOKEN-OF-ANOTHER-HOOK"])
async def test_a_bad_token_is_refused_on_the_headers_before_any_body(small: tuple[Hook, Webhooks],
                                                                   token: str | None) -> None:
    hook = small[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
    path = "/webhooks/unknown" if token == "TOKEN-OF-ANOTHER-HOOK" else "/webhooks/github"
    writer.write(head(hook.port, hook.token if path.endswith("unknown") else token).replace(
        b"/webhooks/hook", path.encode()))  # a 1 MiB body announced, none sent
    answer = await answer_of(reader, 5)  # the body timeout is 30 s: only a check on the head answers in time
    writer.close()
    assert status_of(answer) == 401
    assert hook.rows() == []


async def test_a_trickled_head_and_a_trickled_body_are_cut(small: tuple[Hook, Webhooks]) -> None:
    hook = small[0]
    reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
    writer.write(b"POST /webhooks/github HTTP/1.1\r\nhost: x\r\n")  # and never the end of the head
    assert status_of(await answer_of(reader, 5)) == 408
    writer.close()
    quick = Webhooks(hook.settings, body_timeout_s=0.5)
    port = await quick.start(port=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head(port, hook.token, 100).replace(b"/hook", b"/github") + b'{"a": ')
    assert status_of(await answer_of(reader, 5)) == 408
    writer.close()
    await quick.stop()
    assert hook.rows() == []


async def test_connections_over_the_cap_are_answered_503_at_once_and_the_cap_frees_up(
        small: tuple[Hook, Webhooks]) -> None:
    hook, server = small
    held = [await asyncio.open_connection("127.0.0.1", hook.port) for _ in range(4)]
    assert server.listener is not None
    async with asyncio.timeout(5):
        while len(server.listener.connections) < 4:  # until the server has taken them
            await asyncio.sleep(0.01)
    for request in (b"", head(hook.port, hook.token, 2).replace(b"/hook", b"/github") + b"{}"):
        reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
        writer.write(request)  # nothing, or a whole request the server will not read: the 503 arrives either way
        answer = await answer_of(reader, 0.3)  # well before the held ones time out
        writer.close()
        assert status_of(answer) == 503 and b"overloaded_error" in answer
    for _, held_writer in held:
        held_writer.close()
    status, _ = await asyncio.wait_for(post_ok(hook), 5)
    assert status == 202 and len(hook.rows()) == 1


async def post_ok(hook: Hook) -> tuple[int, dict[str, object]]:
    while True:  # the held connections end as the server sees them close; retried until the cap has room
        status, answer = await hook.post("/webhooks/github", b"{}", hook.token)
        if status != 503:
            return status, answer


# --- a real host under attack ------------------------------------------------------------------------------------


class FloodHost:
    """``ncl host run`` with its stderr in a file, optionally with a lowered soft RLIMIT_NOFILE."""

    def __init__(self, env: Env, nofile: int | None = None, **extra: str) -> None:
        self.env, self.log = env, env.root / "host.log"
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

        def lower() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, limit))

        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", HOST_PRELUDE, "host", "run"], cwd=env.root,
                                         env={**env.vars, **extra}, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log, preexec_fn=lower)
        found = self.wait_for(r"webhooks on http://127.0.0.1:(\d+)/")
        self.port = int(found.group(1))
        self.wait_for(r"\[action=host_started ")

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.log.read_text(errors="replace")):
                return found
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"{pattern} not logged within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]

    def chat(self, text: str) -> list[str]:
        done = self.env.ncl("chat", "demo", text, "--json", "--timeout", "60")
        assert done.returncode == 0, done.stderr + self.log.read_text()[-3000:]
        return [reply["text"] for reply in json.loads(done.stdout)["replies"]]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="ncl-flood-"))  # short: runners reach their proxy socket by path
    made = Env(root)
    made.vars["NCL_PROVIDER"] = "mock"
    made.ok("groups", "create", "demo", "--channel", "cli", "--channel", "webhook:hook")
    yield made
    shutil.rmtree(root, ignore_errors=True)


def sweep_once(env: Env) -> None:
    done = env.ncl("host", "sweep", "--once", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["failed"] == 0


async def unauthenticated_megabyte(port: int) -> tuple[int | None, float]:
    """Headers without a token, 1 MiB − 1 of the 1 MiB body, then hold: what came back, how long until closed."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(port, None))
        for start in range(0, BODY, 64 * KIB):
            writer.write(b"x" * min(64 * KIB, BODY - start))
            await asyncio.wait_for(writer.drain(), 20)
    except (ConnectionError, TimeoutError):
        pass  # the server stopped reading and closed: what a flooder should meet
    answer = await answer_of(reader, 20)
    writer.close()
    return status_of(answer), time.monotonic() - started


@pytest.mark.slow
def test_200_unauthenticated_connections_with_megabyte_bodies_cost_no_memory_and_are_closed(env: Env) -> None:
    host = FloodHost(env)
    try:
        assert host.chat("warm up") != []  # a runner, the proxy and every module loaded: the idle baseline
        idle = host.rss_kib()
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak.append(host.rss_kib())

        sampler = threading.Thread(target=sample)
        sampler.start()

        async def attack() -> list[tuple[int | None, float]]:
            return await asyncio.gather(*[unauthenticated_megabyte(host.port) for _ in range(200)])

        try:
            results = asyncio.run(attack())
        finally:
            done.set()
            sampler.join()
        print(f"host RSS idle {idle / KIB:.1f} MiB, peak {max(peak) / KIB:.1f} MiB under 200 connections; slowest "
              f"closed after {max(t for _, t in results):.2f} s; answers {sorted({s for s, _ in results}, key=str)}")
        assert max(peak) - idle < 30 * KIB
        assert max(t for _, t in results) < 15, "connections held"
        assert {s for s, _ in results} <= {401, 503, None}
        assert host.chat("still there?") != []
        assert host.log.stat().st_size < 1 << 20
    finally:
        host.stop()
    sweep_once(env)


def idle_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]


def answers(conns: list[socket.socket], timeout: float) -> list[int | None]:
    found = []
    for conn in conns:
        conn.settimeout(timeout)
        try:
            found.append(status_of(conn.recv(4096)))
        except (ConnectionError, TimeoutError):
            found.append(None)
        conn.close()
    return found


@pytest.mark.slow
def test_1050_idle_connections_with_1024_descriptors_neither_starve_chat_nor_flood_the_log(env: Env) -> None:
    host = FloodHost(env, nofile=1024)
    try:
        assert host.chat("warm up") != []
        idle = host.rss_kib()
        conns = idle_connections(host.port, 1050)
        assert host.chat("during the flood") != []  # the CLI socket and the sweeps, while 1,050 connect
        flooded = host.rss_kib()
        got = answers(conns, 15)  # 64 held until their head times out (408), the rest answered at once (503)
        print(f"answers to 1,050 idle connections: {({s: got.count(s) for s in set(got)})}; host RSS idle "
              f"{idle / KIB:.1f} MiB, flooded {flooded / KIB:.1f} MiB; log {host.log.stat().st_size} bytes")
        assert got.count(503) >= 1050 - 64 and set(got) <= {503, 408}
        assert flooded - idle < 30 * KIB
        assert host.chat("after the flood") != []
        assert host.log.stat().st_size < 1 << 20
    finally:
        host.stop()
    sweep_once(env)


@pytest.mark.slow
def test_running_out_of_descriptors_on_accept_is_logged_once_and_answered_503(env: Env) -> None:
    """No cap to save it (NCL_HTTP_MAX_CONNECTIONS over the descriptor limit): accept itself fails with EMFILE."""
    host = FloodHost(env, nofile=128, NCL_HTTP_MAX_CONNECTIONS="1000")
    try:
        conns = idle_connections(host.port, 300)
        got = answers(conns[-100:], 5)  # the last ones came when no descriptor was left: a spare one answers
        log = host.log.read_text()
        print(f"answers to the last 100 of 300: {({s: got.count(s) for s in set(got)})}; log {len(log)} bytes, "
              f"{log.count('Traceback')} tracebacks")
        assert got.count(503) >= 10
        assert log.count("[action=out_of_fds ") == 1 and log.count("Traceback") == 0
        assert "socket.accept() out of system resource" not in log  # asyncio's own loop is not the one accepting
        for conn in conns[:-100]:
            conn.close()
        assert host.chat("after the flood") != []
        assert host.log.stat().st_size < 1 << 20
    finally:
        host.stop()
    sweep_once(env)

