"""Issue 11, acceptance 3, the money side: a hostile agent cannot spend past its group's limits through the model proxy,
by the number of its calls or by hiding the tokens they cost. Real proxy, real unix sockets, a fake model API on
loopback (tests/test_proxy.py), real central.db and inbound.db files (the fixtures of tests/security/conftest.py)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from proxy_kit import ASK, Host, error_of, hold, post, until
from security_kit import T0
from test_proxy import MESSAGE, Handler, Upstream, client


def test_daily_token_budget_persists_resets_and_notices_once(host: Host, upstream: Upstream) -> None:
    upstream.reply = lambda h: h.send(200, json.dumps({**MESSAGE, "usage": {"input_tokens": 60,
                                                                            "output_tokens": 50}}).encode())
    sock = host.serve(NCL_GROUP_TOKENS_PER_DAY="100")
    assert post(sock).status_code == 200  # 110 tokens: over the budget after it, not before
    assert host.usage() == [("ag-demo", "2026-06-11", 1, 60, 50)]
    refused = post(sock)
    status, kind, message = error_of(refused)
    assert (status, kind) == (429, "rate_limit_error") and refused.headers["x-should-retry"] == "false"
    assert "110 of its 100 model tokens" in message and "resets at 2026-06-12T00:00Z" in message
    assert int(refused.headers["retry-after"]) == 11 * 3600
    sock = host.restart(NCL_GROUP_TOKENS_PER_DAY="100")  # the budget is in central.db, not in the proxy
    assert post(sock).status_code == 429 and len(upstream.seen) == 1
    assert host.notices() == ["model_budget_exhausted"]  # three refusals, two proxies, one notice
    host.clock.current = T0 + timedelta(hours=11)  # 00:00 UTC: a new day
    assert post(sock).status_code == 200
    assert [row[1] for row in host.usage()] == ["2026-06-11", "2026-06-12"]


def test_streamed_usage_is_counted(host: Host, upstream: Upstream) -> None:
    upstream.reply = Handler.sse
    upstream.release.set()  # the whole stream at once
    reply = post(host.serve(), {**ASK, "stream": True})
    assert reply.status_code == 200 and b"message_delta" in reply.content
    assert host.usage() == [("ag-demo", "2026-06-11", 1, 1, 2)]  # message_start's input, message_delta's output


def _hung_up(sock: Path, body: bytes, after: Callable[[bytes], bool]) -> None:
    """A runner's call, hung up once ``after`` holds of what it got so far."""
    with hold(sock, b"POST /v1/messages HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)) as conn:
        conn.setblocking(False)
        got = bytearray()

        def read() -> bool:
            with contextlib.suppress(BlockingIOError):
                got.extend(conn.recv(65536))
            return after(bytes(got))

        until(read)


def test_a_streamed_answer_cut_short_counts_its_max_tokens(host: Host, upstream: Upstream) -> None:
    """A stream's output total comes in its last event: a runner that read the text and hung up before it was
    charged 1 output token for 19,000 (attack review)."""
    upstream.reply = Handler.sse
    sock = host.serve(NCL_GROUP_TOKENS_PER_DAY="1000")
    _hung_up(sock, json.dumps({**ASK, "max_tokens": 64000, "stream": True}).encode(), lambda got: b"Hel" in got)
    upstream.release.set()  # the rest of the stream, which nobody reads
    until(lambda: bool(host.usage()))
    assert host.usage() == [("ag-demo", "2026-06-11", 1, 1, 64000)]  # message_start's input, the most output
    assert post(sock).status_code == 429


def test_an_answer_its_caller_left_before_it_came_counts_as_if_read(host: Host, upstream: Upstream) -> None:
    """A JSON answer's usage is at its end: a runner that hung up while the API worked was charged nothing for an
    answer of 150,000 input and 100,000 output tokens (attack review). Its input is estimated from the request."""
    went = threading.Event()

    def late(handler: Handler) -> None:
        went.wait(10)
        handler.send(200, json.dumps({**MESSAGE, "content": [{"type": "text", "text": "x" * 400_000}],
                                      "usage": {"input_tokens": 150_000, "output_tokens": 100_000}}).encode())

    upstream.reply = late
    sock = host.serve()
    body = json.dumps({**ASK, "max_tokens": 100_000, "messages": [{"role": "user", "content": "y" * 4000}]}).encode()
    _hung_up(sock, body, lambda _: bool(upstream.seen))
    went.set()
    until(lambda: bool(host.usage()))
    assert host.usage() == [("ag-demo", "2026-06-11", 1, len(body) // 4, 100_000)]


def test_a_refusal_of_the_api_cut_short_counts_nothing(host: Host, upstream: Upstream) -> None:
    went = threading.Event()

    def refused(handler: Handler) -> None:
        went.wait(10)
        handler.send(529, json.dumps({"type": "error", "error": {"type": "overloaded_error",
                                                                 "message": "x" * 400_000}}).encode())

    upstream.reply = refused
    sock = host.serve()
    _hung_up(sock, json.dumps({**ASK, "max_tokens": 100_000}).encode(), lambda _: bool(upstream.seen))
    went.set()
    until(lambda: bool(host.usage()))
    assert host.usage() == [("ag-demo", "2026-06-11", 1, 0, 0)]


def test_usage_cannot_be_hidden_by_compression(host: Host, upstream: Upstream) -> None:
    assert post(host.serve(), **{"accept-encoding": "gzip, br"}).status_code == 200
    assert upstream.seen[0].headers["accept-encoding"] == "identity"  # the proxy reads usage from plain bytes
    assert host.usage() == [("ag-demo", "2026-06-11", 1, 1, 1)]


def test_request_rate_per_group_minute(host: Host, upstream: Upstream) -> None:
    sock = host.serve(NCL_GROUP_REQUESTS_PER_MINUTE="2")
    assert [post(sock).status_code for _ in range(2)] == [200, 200]
    host.clock.current = T0 + timedelta(seconds=50)
    refused = [post(sock) for _ in range(2)]
    status, kind, message = error_of(refused[0])
    assert (status, kind) == (429, "rate_limit_error") and "NCL_GROUP_REQUESTS_PER_MINUTE=2" in message
    assert "resets at 13:01:00Z" in message and refused[0].headers["retry-after"] == "10"
    assert host.notices() == ["model_rate_limited"] and len(upstream.seen) == 2
    host.clock.current = T0 + timedelta(minutes=1)
    assert post(sock).status_code == 200


def test_calls_refused_for_their_body_count_toward_the_groups_rate(host: Host, upstream: Upstream) -> None:
    """The rate is counted before a body is held or read: calls of bodies that fail to decode (each costing the host
    their decoding) were refused for ever without counting."""
    sock = host.serve(NCL_GROUP_REQUESTS_PER_MINUTE="3")
    with client(sock) as http:
        assert [http.post("/v1/messages", content=b"not json").status_code for _ in range(4)] == [400, 400, 400, 429]
