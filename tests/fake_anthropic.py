"""A tiny fake of the Messages API on 127.0.0.1, for driving the real ``anthropic`` SDK in tests.

Scripted: each POST takes the next queued ``Scripted(status, body, headers)`` and every request
(path, headers, JSON body) is recorded. With nothing queued it answers 400 with ``x-should-retry:
false``, so a test that scripted too little fails loudly instead of looping. It serves at most
``max_requests`` requests, and ``with FakeAnthropic() as fake:`` stops it on exit. With ``uds=PATH`` it
listens on that unix socket instead, standing in for the host's credential proxy.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from socketserver import ThreadingUnixStreamServer
from types import TracebackType
from typing import Any

_ids = count(1)


@dataclass(frozen=True)
class Scripted:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


USAGE = {"input_tokens": 10, "output_tokens": 5}


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn",
            usage: dict[str, int] | None = None) -> Scripted:
    """A Messages API answer; ``usage`` as the API reports it (default ``USAGE``; {} leaves it out)."""
    usage = USAGE if usage is None else usage
    return Scripted(200, {"id": f"msg_fake{next(_ids)}", "type": "message", "role": "assistant",
                          "model": "claude-fake", "content": content, "stop_reason": stop_reason,
                          "stop_sequence": None, **({"usage": usage} if usage else {})})


def text(words: str, usage: dict[str, int] | None = None) -> Scripted:
    return message([{"type": "text", "text": words}], usage=usage)


def tool_use(name: str, arguments: dict[str, Any], say: str | None = None,
             usage: dict[str, int] | None = None) -> Scripted:
    block = {"type": "tool_use", "id": f"toolu_fake{next(_ids)}", "name": name, "input": arguments}
    return message([*([{"type": "text", "text": say}] if say else []), block], stop_reason="tool_use", usage=usage)


def error(status: int, kind: str, words: str, headers: dict[str, str] | None = None) -> Scripted:
    return Scripted(status, {"type": "error", "error": {"type": kind, "message": words}}, headers or {})


class FakeAnthropic:
    def __init__(self, max_requests: int = 50, uds: str | None = None) -> None:
        self.script: deque[Scripted] = deque()
        self.requests: list[Recorded] = []
        self.max_requests = max_requests
        self._lock = threading.Lock()
        self.uds = uds
        self._server: ThreadingHTTPServer | ThreadingUnixStreamServer = (
            ThreadingUnixStreamServer(uds, self._handler()) if uds else ThreadingHTTPServer(("127.0.0.1", 0),
                                                                                             self._handler()))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        address = self._server.server_address
        return f"http://127.0.0.1:{address[1]}" if isinstance(address, tuple) else "http://localhost"

    def queue(self, *responses: Scripted) -> None:
        self.script.extend(responses)

    def _next(self, recorded: Recorded) -> Scripted:
        with self._lock:
            self.requests.append(recorded)
            if len(self.requests) > self.max_requests:
                return error(400, "invalid_request_error", "fake: request limit reached", {"x-should-retry": "false"})
            if not self.script:
                return error(400, "invalid_request_error", "fake: nothing scripted", {"x-should-retry": "false"})
            return self.script.popleft()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pool expects

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                answer = fake._next(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()},
                                             json.loads(raw or b"{}")))
                payload = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for name, value in {"content-type": "application/json", "request-id": "req_fake",
                                    **answer.headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
                return None

        return Handler

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
