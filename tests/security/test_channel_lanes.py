"""A runner that keeps its session's inbox locked holds up its own hook's webhooks, never another group's chat (attack
review: 64 webhooks into such a session took asyncio's one default thread pool, six threads here, which the CLI socket
and the deliveries shared, and ``ncl chat`` of any group waited 55 s). Each channel's blocking work runs in threads of
its own (``host.channels.lanes``), one hook's arrivals one at a time; a webhook whose session stayed locked past the
busy timeout is a 503 to retry, not a 500 with a traceback in the log. A real ``ncl host run``, on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from processes import Env
from test_webhook_flood import FloodHost

HOOKS = 64  # NCL_HTTP_MAX_CONNECTIONS


@pytest.fixture
def env() -> Iterator[tuple[Env, str]]:
    root = Path(tempfile.mkdtemp(prefix="ncl-lanes-"))  # short: runners reach their proxy socket by path
    made = Env(root)
    made.vars["NCL_PROVIDER"] = "mock"
    made.ok("groups", "create", "demo", "--channel", "cli")
    token = json.loads(made.ok("groups", "create", "hooked", "--channel", "webhook:hook", "--json"))["webhook_tokens"]
    other = json.loads(made.ok("groups", "create", "other", "--channel", "webhook:other", "--json"))["webhook_tokens"]
    made.vars["OTHER_TOKEN"] = other["other"]  # (read back by the test that needs a second hook)
    yield made, token["hook"]
    shutil.rmtree(root, ignore_errors=True)


def post(port: int, token: str, body: dict[str, object], hook: str = "hook") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", f"/webhooks/{hook}", json.dumps(body), {"authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def established(port: int) -> int:
    """Connections to ``port`` the kernel has established (/proc/net/tcp: local address, state 01)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "01")


@contextmanager
def hook_locked(made: Env, token: str) -> Iterator[tuple[FloodHost, Path, sqlite3.Connection]]:
    """A running host whose hook has its session, and that session's inbox read-locked meanwhile (as its runner may
    keep it: ``ROLLBACK`` lets go); no traceback logged."""
    host = FloodHost(made)
    try:
        status, answer = post(host.port, token, {"n": 0})
        assert status == 202, answer
        inbox = made.data_dir / "v2-sessions" / "ag-hooked" / json.loads(answer)["session_id"] / "inbound.db"
        with closing(sqlite3.connect(f"file:{inbox}?mode=ro", uri=True, isolation_level=None)) as held:
            held.execute("BEGIN")
            held.execute("SELECT count(*) FROM messages_in").fetchone()
            yield host, inbox, held
        assert "Traceback" not in host.log.read_text()
    finally:
        host.stop()


def test_webhooks_into_a_locked_session_never_hold_another_groups_chat(env: tuple[Env, str]) -> None:
    made, token = env
    answered: list[int] = []
    with hook_locked(made, token) as (host, inbox, held):
        senders = [threading.Thread(target=lambda n=n: answered.append(post(host.port, token, {"n": n})[0]))
                   for n in range(1, HOOKS + 1)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 30
        while established(host.port) < HOOKS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host.chat("hello from another group") == ["mock: hello from another group"]
        before_chat = len(answered)  # (was: most of them, as 500s, one thread's busy wait after another)
        held.execute("ROLLBACK")
        for sender in senders:
            sender.join(300)
    print(f"webhooks answered before the other group's chat: {before_chat}; answers "
          f"{ {s: answered.count(s) for s in set(answered)} }")
    assert before_chat < 8
    assert len(answered) == HOOKS and set(answered) <= {202, 503} and 202 in answered
    with closing(sqlite3.connect(f"file:{inbox}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT count(*) FROM messages_in WHERE kind = 'webhook'").fetchone()[0]
    assert rows == 1 + answered.count(202)  # each 503 wrote nothing, each 202 one row


def test_a_hook_whose_session_stays_locked_is_answered_503_together_and_other_hooks_go_through(
        env: tuple[Env, str]) -> None:
    """Its session locked past the busy timeout (5 s, and the in-process lock's), a hook's webhook is a 503 to
    retry, and those that waited behind it are answered with it, not each after a whole wait of its own (review:
    one hook's waiters filled the connection cap every hook shares); another hook's arrive meanwhile."""
    made, token = env
    answered: list[tuple[float, int]] = []
    with hook_locked(made, token) as (host, _, _):
        started = time.monotonic()

        def send(n: int) -> None:
            status = post(host.port, token, {"n": n})[0]
            answered.append((time.monotonic() - started, status))

        # More than the webhooks' lane has threads (4): one at a time, they never take the other hook's.
        senders = [threading.Thread(target=send, args=(n,)) for n in range(1, 7)]
        for sender in senders:
            sender.start()
        assert post(host.port, made.vars["OTHER_TOKEN"], {"other": 1}, "other")[0] == 202
        other_at = time.monotonic() - started
        for sender in senders:
            sender.join(120)
        assert post(host.port, token, {"n": 9})[0] == 503  # (its back-off lasts 5 s)
    times = sorted(at for at, _ in answered)
    print(f"other hook answered at {other_at:.2f} s; the locked hook's answers at {times}")
    assert [status for _, status in answered] == [503] * 6 and other_at < times[0]
    assert times[-1] - times[0] < times[0] / 2  # (one after another, each waited as long as the first)
