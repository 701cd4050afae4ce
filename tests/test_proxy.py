"""The credential proxy end to end: a fake Messages API on 127.0.0.1; httpx and the anthropic SDK on its socket."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest

from host.runtimes.proxy.server import SOCKET_NAME, CredentialProxy, ProxyLimits
from host.settings import Settings

MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
           "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 1, "output_tokens": 1}}


def event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


SSE_HEAD = [event("message_start", message={**MESSAGE, "content": [], "stop_reason": None}),
            event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"})]
SSE_TAIL = [event("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
            event("content_block_stop", index=0),
            event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}),
            event("message_stop")]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Upstream(ThreadingHTTPServer):
    """A fake model API: records each request, then answers with ``reply`` (JSON by default)."""

    daemon_threads = True
    # The proxy opens up to a hundred connections at once (test_proxy_bounds): socketserver's backlog of 5 is a
    # listener no model API has (once, on a loaded machine, 4 of 104 streams ended in a ReadError).
    request_queue_size = 128

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[Seen] = []
        self.reply: Callable[[Handler], None] = lambda h: h.send(200, json.dumps(MESSAGE).encode())
        self.release, self.finished = threading.Event(), threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Upstream

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.server.reply(self)

    do_GET = do_POST

    def send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in {"content-type": "application/json", "content-length": str(len(body)), **headers}.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def sse(self) -> None:
        """Half the stream, then wait until the client proves it got that half, then the rest."""
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for part in (SSE_HEAD, SSE_TAIL):
            self.wfile.write(b"".join(part))
            self.server.release.wait(10)  # a safety net only: a passing test sets it at once
        self.server.finished.set()


@contextmanager
def running_upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)  # the proxy reaches the fake upstream directly
    server = Upstream()
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    with running_upstream(monkeypatch) as server:
        yield server


@pytest.fixture
def serve(upstream: Upstream, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``serve(key=…, base_url=…, uid=…, limits=…)`` -> the socket of a proxy for session folder ``sess-1``."""
    proxies: list[CredentialProxy] = []

    def make(key: str | None = "host-key", base_url: str | None = None, uid: int | None = None, **kw: Any) -> Path:
        proxies.append(CredentialProxy(settings(base_url or upstream.url, key), **kw))
        (tmp_path / "sess-1").mkdir(exist_ok=True)
        return proxies[-1].open(tmp_path / "sess-1", uid=uid)

    yield make
    for proxy in proxies:
        proxy.shutdown()


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> Iterator[queue.Queue[logging.LogRecord]]:
    """Records of ``host.runtimes.proxy.server`` as they are emitted from the proxy's thread: a test waits on them."""
    found: queue.Queue[logging.LogRecord] = queue.Queue()
    logger, handler = logging.getLogger("host.runtimes.proxy.server"), logging.handlers.QueueHandler(found)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it also clears the logger's isEnabledFor cache
    yield found
    logger.setLevel(level)
    logger.removeHandler(handler)


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[CredentialProxy]:
    made = CredentialProxy(settings(upstream.url))
    yield made
    made.shutdown()


def settings(base_url: str, key: str | None = "host-key") -> Settings:
    return Settings.read({"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": base_url})


def client(sock: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://proxy", timeout=10)


def sdk(sock: Path) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="client-key", base_url="http://localhost", http_client=client(sock))


def raw(sock: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(sock))
        conn.sendall(data)
        return b"".join(iter(lambda: conn.recv(65536), b""))


def test_forwards_with_host_key_only(serve: Callable[..., Path], upstream: Upstream,
                                     records: queue.Queue[logging.LogRecord]) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    reply = client(serve()).post("/v1/messages?beta=true", json=body, headers={
        "x-api-key": "client-key", "authorization": "Bearer client", "anthropic-version": "2023-06-01"})
    assert reply.status_code == 200 and reply.json() == MESSAGE
    [seen] = upstream.seen
    assert (seen.method, seen.path, json.loads(seen.body)) == ("POST", "/v1/messages?beta=true", body)
    assert seen.headers["x-api-key"] == "host-key" and "authorization" not in seen.headers
    assert seen.headers["anthropic-version"] == "2023-06-01"
    opened, call = records.get(timeout=10), records.get(timeout=10)  # the call is logged once its response is out
    assert [vars(opened)["action"], *map(vars(call).get, ["action", "session", "path", "status"])] == [
        "proxy_open", "proxy_call", "sess-1", "/v1/messages", 200]
    assert "host-key" not in str([vars(opened), vars(call)])


def test_sdk_create_and_count_tokens(serve: Callable[..., Path], upstream: Upstream) -> None:
    api = sdk(serve())
    message = api.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].type == "text" and message.content[0].text == "hi"
    upstream.reply = lambda h: h.send(200, b'{"input_tokens": 12}')
    tokens = api.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hi"}])
    assert tokens.input_tokens == 12  # a second call after the proxy closed the first connection
    assert [s.path for s in upstream.seen] == ["/v1/messages", "/v1/messages/count_tokens"]
    assert {s.headers["x-api-key"] for s in upstream.seen} == {"host-key"}


def test_sdk_stream_flows_before_upstream_finishes(serve: Callable[..., Path], upstream: Upstream) -> None:
    upstream.reply = Handler.sse
    texts: list[str] = []
    with sdk(serve()).messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]) as s:
        for text in s.text_stream:
            if not texts:  # the first delta is here while the upstream still waits to send the rest
                assert not upstream.finished.is_set()
                upstream.release.set()
            texts.append(text)
        final = s.get_final_message()
    assert texts == ["Hel", "lo"] and final.stop_reason == "end_turn"
    assert upstream.finished.is_set() and json.loads(upstream.seen[0].body)["stream"] is True


@pytest.mark.parametrize("status", [429, 529])
def test_errors_pass_through(serve: Callable[..., Path], upstream: Upstream, status: int) -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    upstream.reply = lambda h: h.send(status, json.dumps(error).encode(), retry_after="7", request_id="req_1")
    reply = client(serve()).post("/v1/messages", json={})
    assert (reply.status_code, reply.json()) == (status, error)
    assert (reply.headers["retry-after"], reply.headers["request-id"]) == ("7", "req_1")


@pytest.mark.parametrize("line", ["GET /v1/models", "POST /v1/files", "POST /admin", "GET /v1/messages",
                                  "POST /v1/messages/../files", "POST /v1/messages/batches", "POST //v1/messages",
                                  "POST http://evil/v1/messages"])
def test_other_paths_refused(serve: Callable[..., Path], upstream: Upstream, line: str) -> None:
    head, _, body = raw(serve(), f"{line} HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{{}}".encode()).partition(
        b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and json.loads(body)["error"]["type"] == "permission_error"
    assert json.loads(body)["type"] == "error" and upstream.seen == []


def test_missing_key_is_a_readable_error(serve: Callable[..., Path], upstream: Upstream) -> None:
    with pytest.raises(anthropic.AuthenticationError, match="host has no ANTHROPIC_API_KEY"):
        sdk(serve(key=None)).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert upstream.seen == []


def test_upstream_down_is_502(serve: Callable[..., Path]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:  # a port nobody listens on once closed
        port = probe.getsockname()[1]
    reply = client(serve(base_url=f"http://127.0.0.1:{port}")).post("/v1/messages", json={})
    assert reply.status_code == 502 and reply.json()["error"]["type"] == "api_error"


def test_body_limits_and_chunked_requests(serve: Callable[..., Path], upstream: Upstream) -> None:
    sock = serve(limits=ProxyLimits(max_body=1024))
    assert client(sock).post("/v1/messages", content=b"x" * 2048).status_code == 413
    assert raw(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n").startswith(b"HTTP/1.1 413 ")
    # A body's size is reserved before it is read: a chunked one (the SDK never sends one) would hold a whole share.
    chunked = b"POST /v1/messages HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n\r\n"
    answer = raw(sock, chunked + b"7\r\n{\"a\":1}\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ") and b"Content-Length" in answer and upstream.seen == []
    # The body is inspected for server tools (tests/security/test_proxy_bounds.py), so it must be JSON.
    assert client(sock).post("/v1/messages", content=b"abc").status_code == 400


def test_open_close_shutdown(proxy: CredentialProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / ("deep" * 30)  # past the 107-byte socket address limit
    folder.mkdir()
    sock = proxy.open(folder)
    info = sock.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert sock == folder / SOCKET_NAME and os.listdir(folder) == [SOCKET_NAME]  # no temporary name left
    assert proxy.open(folder) == sock and sock.stat().st_ino == info.st_ino
    sock.unlink()  # someone cleaned the folder: the next open serves again
    assert proxy.open(folder).exists()
    monkeypatch.chdir(folder)  # a short path to the same socket, as a container's mount gives
    assert raw(Path(SOCKET_NAME), b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 403 ")
    proxy.close(folder)
    assert not sock.exists()
    assert (thread := proxy.thread) is not None and thread.is_alive()
    proxy.open(folder)
    proxy.shutdown()
    assert not thread.is_alive() and not sock.exists() and proxy.thread is None


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a socket to another uid needs root")
def test_socket_handed_to_container_uid(proxy: CredentialProxy, tmp_path: Path) -> None:
    tmp_path.chmod(0o711)  # the session folder is the container's mount: its uid may enter it
    sock = proxy.open(tmp_path, uid=12345)
    assert (sock.stat().st_uid, stat.S_IMODE(sock.stat().st_mode)) == (12345, 0o600)
    assert [connect_as(uid, sock) for uid in (12345, 12346)] == [0, 13]


def connect_as(uid: int, sock: Path) -> int:
    """Exit code of a child that becomes ``uid`` and connects: 0 connected, 13 refused by permissions."""
    if (pid := os.fork()) == 0:  # pragma: no cover - the child
        try:
            os.chdir(sock.parent)  # like a mount: the folder's ancestors are not the container's to traverse
            os.setgid(uid)
            os.setuid(uid)
            socket.socket(socket.AF_UNIX).connect(SOCKET_NAME)
            os._exit(0)
        except PermissionError:
            os._exit(13)
        finally:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_uid_kept_without_root(serve: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    sock = serve(uid=12345)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert [vars(r)["session"] for r in caplog.records if vars(r).get("action") == "proxy_uid_kept"] == ["sess-1"]


def test_close_cuts_calls_in_flight(proxy: CredentialProxy, upstream: Upstream, tmp_path: Path) -> None:
    upstream.reply = Handler.sse
    with client(proxy.open(tmp_path)).stream("POST", "/v1/messages", json={"stream": True}) as reply:
        chunks = reply.iter_raw()
        assert b"message_start" in next(chunks)
        proxy.close(tmp_path)  # the session stops while the model is still answering
        with pytest.raises(httpx.RemoteProtocolError):  # an unfinished body, not a short complete one
            b"".join(chunks)
    assert not upstream.finished.is_set() and not (tmp_path / SOCKET_NAME).exists()
