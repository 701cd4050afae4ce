"""Issue 11, acceptance 3: a hostile agent cannot make the model proxy hold the host's memory, hold its connections,
spend without limit, or have the model API reach the network for it. Real proxy, real unix sockets, a fake model
API on loopback (tests/test_proxy.py), real central.db and inbound.db files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from proxy_kit import ASK, Host, answer, error_of, hold, post, until
from security_kit import ROOT
from test_proxy import MESSAGE, Handler, Upstream, client, raw

from host.runtimes.proxy.server import ProxyLimits

# -- connections and timeouts ------------------------------------------------------------------------------------

def test_fifth_connection_waits_then_is_refused(host: Host, upstream: Upstream) -> None:
    sock = host.serve(ProxyLimits(connections=4, slot_wait_s=1, head_timeout_s=30))
    held = [hold(sock) for _ in range(4)]  # connected, never a request: each holds one of the session's slots
    until(lambda: host.slots().locked())
    status, kind, message = error_of(post(sock))
    assert (status, kind) == (429, "rate_limit_error") and "4 model API connections" in message
    held.pop().close()  # one slot frees: the next request is served
    assert post(sock).status_code == 200 and len(upstream.seen) == 1
    for conn in held:
        conn.close()


def test_waiting_connection_is_served_when_a_slot_frees(host: Host, upstream: Upstream) -> None:
    sock = host.serve(ProxyLimits(connections=4, slot_wait_s=30, head_timeout_s=30))
    held = [hold(sock) for _ in range(4)]
    until(lambda: host.slots().locked())
    request = json.dumps(ASK).encode()
    waiting = [hold(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(request), request))
               for _ in range(4)]  # as many may wait as may run
    until(lambda: host.waiting() == 4)
    # Past them, a connection is refused at once (the 30 s wait would outlast the socket's 10 s timeout).
    assert answer(hold(sock, b"POST /v1/messages HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 429 ")
    for conn in held:
        conn.close()
    assert [answer(conn).split(b" ", 2)[1] for conn in waiting] == [b"200"] * 4 and len(upstream.seen) == 4


def test_slow_head_and_slow_body_are_cut(host: Host, upstream: Upstream) -> None:
    sock = host.serve(ProxyLimits(head_timeout_s=0.2, body_timeout_s=0.2))
    assert answer(hold(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-le")) == b""  # closed, nothing answered
    assert answer(hold(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-length: 100\r\n\r\n{\"a\":")) == b""
    assert upstream.seen == [] and host.proxies[0].pool.held == 0  # the cut body's reservation is given back
    assert post(sock).status_code == 200  # the slots were freed too


# -- memory --------------------------------------------------------------------------------------------------------

def test_body_budget_refuses_what_it_cannot_hold(host: Host, upstream: Upstream, tmp_path: Path) -> None:
    """Bodies held at once stay within one budget, a session's within half of it: one session sending bodies back to
    back refused every other group's call (attack review)."""
    sock = host.serve(ProxyLimits(max_body=800, body_budget=3000))
    (tmp_path / "other").mkdir()
    (tmp_path / "third").mkdir()
    other, third = (Path(os.path.relpath(host.proxies[0].open(tmp_path / name))) for name in ("other", "third"))
    body = json.dumps({"pad": "x" * 700}).encode()
    head = b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % len(body)
    first = hold(sock, head + body[:100])  # reserves twice its 7xx bytes (bytes, then decoded text) and holds them
    until(lambda: host.proxies[0].pool.held > 0)
    second = json.dumps({"pad": "y" * 290}).encode()
    small = b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(second), second)
    refused = answer(hold(sock, small))  # its own half is full
    assert refused.startswith(b"HTTP/1.1 503 ") and b"this session's is full" in refused  # read whole, then refused
    another = hold(other, head + body[:100])  # another session's room is there
    until(lambda: host.proxies[0].pool.held > 2 * len(body))
    refused = answer(hold(third, small))  # and now the whole budget is held
    assert refused.startswith(b"HTTP/1.1 503 ") and b"all sessions' is full" in refused
    assert raw(sock, head.replace(b"%d" % len(body), b"801") + b"x" * 801).startswith(b"HTTP/1.1 413 ")
    first.sendall(body[100:])
    another.sendall(body[100:])
    assert answer(first).startswith(b"HTTP/1.1 200 ") and answer(another).startswith(b"HTTP/1.1 200 ")
    assert [s.body for s in upstream.seen] == [body, body]
    assert post(sock, {"pad": "y" * 290}).status_code == 200
    until(lambda: host.proxies[0].pool.held == 0)  # given back once the exchange ends, just after the answer


def test_sessions_holding_a_hundred_streams_leave_another_its_call(host: Host, upstream: Upstream,
                                                                   tmp_path: Path) -> None:
    """The proxy's HTTP client had a pool of 100 connections to the model API, shared: 25 runners each holding 4 long
    streams made every other call wait up to 10 minutes (attack review). Each session's slots bound its share."""
    upstream.reply = Handler.sse  # half a stream, then held until released
    sock = host.serve()
    body = json.dumps({**ASK, "stream": True}).encode()
    streams: list[socket.socket] = []
    try:
        for n in range(26):
            (tmp_path / f"s{n}").mkdir()
            other = Path(os.path.relpath(host.proxies[0].open(tmp_path / f"s{n}")))
            streams += [hold(other, b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                        for _ in range(4)]
        deadline = time.monotonic() + 120  # (104 connections to the fake API: slow on a loaded machine)
        while len(upstream.seen) < 104 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(upstream.seen) == 104
        upstream.reply = lambda h: h.send(200, json.dumps(MESSAGE).encode())
        assert post(sock).status_code == 200
    finally:
        upstream.release.set()
        for stream in streams:
            stream.close()


def test_body_memory_is_given_back_once_sent(host: Host, upstream: Upstream) -> None:
    upstream.reply = Handler.sse
    with client(host.serve()) as http, http.stream("POST", "/v1/messages", json={**ASK, "stream": True}) as reply:
        chunks = reply.iter_raw()
        assert b"message_start" in next(chunks)
        assert host.proxies[0].pool.held == 0  # the answer still streams; the request's bytes are already free
        upstream.release.set()
        assert b"message_stop" in b"".join(chunks)


RSS_PROXY = """
import json, sys, time
from pathlib import Path
from host.runtimes.proxy.server import CredentialProxy
from host.settings import Settings
proxy = CredentialProxy(Settings.read({"ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": sys.argv[1]}))
print(json.dumps([str(proxy.open(Path(folder))) for folder in sys.argv[2:]]), flush=True)
sys.stdin.read()
"""


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory now (VmRSS), or the most it ever was (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")))


def test_twenty_held_32_mib_bodies_cost_under_100_mb(tmp_path: Path) -> None:
    """The issue's attack: 20 connections (5 sessions x 4) each declare 32 MiB, send 31 MiB and hold."""
    folders = [tmp_path / f"sess-{n}" for n in range(5)]
    for folder in folders:
        folder.mkdir()
    # Leaving the block closes its pipes (stdin's EOF ends it) and waits for it.
    with subprocess.Popen([sys.executable, "-c", RSS_PROXY, "http://127.0.0.1:9", *map(str, folders)],
                          cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        sockets = json.loads(proc.stdout.readline())
        before = memory_kib(proc.pid)
        head = b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % (32 << 20)
        piece = b"x" * (1 << 20)
        held = [hold(Path(sock), head) for sock in sockets for _ in range(4)]

        def send(conn: socket.socket) -> None:
            for _ in range(31):
                conn.sendall(piece)

        senders = [threading.Thread(target=send, args=(conn,)) for conn in held]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        after, peak = memory_kib(proc.pid), memory_kib(proc.pid, "VmHWM")
        for conn in held:
            conn.close()
    grown_mb, peak_mb = (after - before) / 1024, (peak - before) / 1024
    print(json.dumps({"rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
                      "grown_mb": round(grown_mb, 1), "peak_grown_mb": round(peak_mb, 1), "connections": 20,
                      "sent_mib_each": 31}))
    assert not any(sender.is_alive() for sender in senders)  # every byte was taken: held or drained
    assert grown_mb < 100 and peak_mb < 100


# -- what the model API may do for the agent -----------------------------------------------------------------------

def test_betas_pass_only_from_the_allow_list(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    allowed = "prompt-caching-2024-07-31, interleaved-thinking-2025-05-14"
    assert post(sock, **{"anthropic-beta": allowed}).status_code == 200
    assert upstream.seen[0].headers["anthropic-beta"] == allowed
    for beta in ("web-fetch-2025-09-10", "mcp-client-2025-04-04", "files-api-2025-04-14", "made-up-2099-01-01",
                 "output-128k-2025-02-19,code-execution-2025-08-25"):
        status, kind, message = error_of(post(sock, **{"anthropic-beta": beta}))
        assert (status, kind) == (400, "invalid_request_error") and repr(beta.split(",")[-1]) in message
    assert len(upstream.seen) == 1
    assert host.ncl("groups", "update", "demo", "--allow-server-tools").code == 0
    assert post(sock, **{"anthropic-beta": "web-fetch-2025-09-10"}).status_code == 200
    assert post(sock, **{"anthropic-beta": "made-up-2099-01-01"}).status_code == 400  # never on any list


SERVER_ASKS = [
    {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]},
    {"tools": [{"name": "ok", "input_schema": {"type": "object"}}, {"type": "web_fetch_20250910", "name": "f"}]},
    {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
    {"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]},
    {"tools": [{"type": "text_editor_code_execution", "name": "t"}]},
    {"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}]},
    {"container": "container_123"},
]


@pytest.mark.parametrize("extra", SERVER_ASKS, ids=lambda e: json.dumps(e)[:40])
def test_server_tools_refused_until_the_group_allows_them(host: Host, upstream: Upstream,
                                                          extra: dict[str, Any]) -> None:
    sock = host.serve()
    status, kind, message = error_of(post(sock, {**ASK, **extra}))
    assert (status, kind) == (400, "invalid_request_error") and "--allow-server-tools" in message
    assert upstream.seen == []
    updated = host.ncl("groups", "update", "demo", "--allow-server-tools", "--json")
    assert updated.code == 0 and updated.json()["allow_server_tools"] is True
    assert post(sock, {**ASK, **extra}).status_code == 200 and len(upstream.seen) == 1
    assert host.ncl("groups", "update", "demo", "--no-allow-server-tools").code == 0
    assert post(sock, {**ASK, **extra}).status_code == 400


def test_client_tools_pass_and_tricks_do_not(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    tools = [{"name": "a", "input_schema": {}}, {"type": "custom", "name": "b", "input_schema": {}},
             {"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "str_replace"},
             {"type": "memory_20250818", "name": "memory"}, {"type": "computer_20250124", "name": "computer"}]
    assert post(sock, {**ASK, "tools": tools}).status_code == 200  # run by the runner, inside its container
    escaped = b'{"model": "m", "t\\u006fols": [{"type": "web_fetch_20250910", "name": "f"}]}'
    twice = b'{"tools": [], "tools": [{"type": "web_fetch_20250910", "name": "f"}]}'
    for body in (escaped, twice, b"not json"):
        with client(sock) as http:
            assert http.post("/v1/messages", content=body).status_code == 400
    assert len(upstream.seen) == 1


def test_a_body_of_millions_of_values_is_refused_before_its_decoding_takes_the_cores(host: Host,
                                                                                    upstream: Upstream) -> None:
    """Decoding 32 MiB of ``[],`` took 8 s of CPU, and a group's rate allows many a minute (attack review)."""
    sock = host.serve()
    for shape in (b"[],", b"{},", b"0,", b"1.5,"):
        body = b"[" + shape * 1_100_000 + b"0]"
        with client(sock) as http:
            reply = http.post("/v1/messages", content=body)
        status, kind, message = error_of(reply)
        assert (status, kind) == (400, "invalid_request_error") and "1,000,000" in message, shape
    assert upstream.seen == []


@pytest.mark.parametrize("head", [b"x-stainless-\xff: a\r\n", b"anthropic-version: \xff\r\n",
                                  b"user-agent: a\x00b\r\n"])
def test_a_header_passed_on_of_other_than_visible_ascii_is_a_400_not_a_traceback(
        host: Host, upstream: Upstream, caplog: pytest.LogCaptureFixture, head: bytes) -> None:
    """The HTTP client failed on them with an error the proxy did not expect: a 500 and a traceback in the log for
    each call, 4 MB of log for 2,000 calls (attack review)."""
    body = json.dumps(ASK).encode()
    reply = raw(host.serve(), b"POST /v1/messages HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s" % (head, len(body), body))
    assert reply.startswith(b"HTTP/1.1 400 ") and b"visible ASCII" in reply
    assert upstream.seen == [] and not [r for r in caplog.records if r.exc_info]


def test_groups_show_and_list_report_the_permission(host: Host) -> None:
    assert host.ncl("groups", "show", "demo", "--json").json()["allow_server_tools"] is False
    assert host.ncl("groups", "update", "demo", "--allow-server-tools", "--model", "m2").code == 0
    [listed] = host.ncl("groups", "list", "--json").json()["groups"]
    assert (listed["allow_server_tools"], listed["model"]) == (True, "m2")
    nothing = host.ncl("groups", "update", "demo")
    assert nothing.code == 2 and len(nothing.err_lines) == 1  # a usage error (DESIGN §12.11)


def test_refusals_do_not_flood_the_log(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    sock = host.serve()
    for _ in range(30):
        assert raw(sock, b"GET /v1/models HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403 ")
    assert post(sock).status_code == 200  # an answered call is always logged

    def calls() -> list[int]:
        return [vars(r)["status"] for r in caplog.records if vars(r).get("action") == "proxy_call"]

    until(lambda: 200 in calls())  # logged by the proxy's thread just after the answer
    assert calls() == [403] * 10 + [200]
