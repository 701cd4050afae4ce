"""A network peer's junk lengths (issue 11): ``Content-Length`` and chunk sizes are ASCII digits or a one-line 400,
never an unhandled exception; heads and bodies that trickle in are cut (408). The parser is driven through a real
``asyncio.StreamReader``; the last tests go through the real webhook server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from property_kit import props
from test_webhooks import Hook

from host.http.wire import Refusal, read_body, read_head

CAP = 1 << 20


async def parse(raw: bytes, cap: int = CAP, *, eof: bool = True) -> bytes:
    reader = asyncio.StreamReader(limit=64 << 10)
    reader.feed_data(raw)
    if eof:
        reader.feed_eof()
    request = await read_head(reader)
    return await read_body(reader, request, cap, timeout=5)


def refusal(raw: bytes, cap: int = CAP) -> tuple[int, str]:
    """The status and message a request is refused with; fails if it is accepted or raises anything else."""
    try:
        body = asyncio.run(parse(raw, cap))
    except Refusal as exc:
        assert "\n" not in exc.args[2]
        return exc.args[0], exc.args[2]
    raise AssertionError(f"accepted: {body[:40]!r}")


def with_length(value: bytes, body: bytes = b"") -> bytes:
    return b"POST /webhooks/x HTTP/1.1\r\nhost: h\r\ncontent-length: " + value + b"\r\n\r\n" + body


def chunked(*lines: bytes) -> bytes:
    return b"POST /webhooks/x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n" + b"".join(lines)


@pytest.mark.parametrize("value", ["²", "+5", "-5", " 5x", "1_000", "0x10", "5.0", "1e3", "٥", "５", "5 5",
                                   "9" * 16, "9" * 5000, "1" + "0" * 30])
def test_content_length_junk_is_a_400_naming_the_header(value: str) -> None:
    status, message = refusal(with_length(value.encode(), b"hello"))
    assert status == 400 and "Content-Length" in message


def test_an_empty_content_length_and_two_different_ones_are_400() -> None:
    assert refusal(with_length(b""))[0] == 400
    assert refusal(b"POST / HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc")[0] == 400


def test_a_plain_length_over_the_cap_is_413_and_leading_zeros_are_a_length() -> None:
    assert refusal(with_length(str(CAP + 1).encode()))[0] == 413
    assert asyncio.run(parse(with_length(b"0" * 5000 + b"5", b"hello"))) == b"hello"


@props(200)
@given(value=st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=24))
def test_any_content_length_is_read_as_plain_digits_or_refused(value: str) -> None:
    raw = with_length(value.encode(), b"x" * 40)
    try:
        body = asyncio.run(parse(raw))
    except Refusal as exc:
        digits = re.fullmatch(r"[0-9]+", value.strip(" \t"))
        assert exc.args[0] == 400 or (exc.args[0] == 413 and digits), (value, exc.args)
    except asyncio.IncompleteReadError:
        assert int(value.strip(" \t")) > 40  # a true length longer than what came: the peer hung up early
    else:
        assert re.fullmatch(r"[0-9]+", value.strip(" \t")), value  # only ASCII digits are a length
        assert body == b"x" * int(value.strip(" \t"))


@pytest.mark.parametrize("size", [b"+5", b"-5", b" 5", b"5 ", b"0x5", b"5_0", b"\xc2\xb2", b"", b"g",
                                  b"1" * 13, b"5;\x00\r\nhello"])
def test_chunk_size_junk_is_a_400(size: bytes) -> None:
    assert refusal(chunked(size + b"\r\nhello\r\n0\r\n\r\n")) == (400, "malformed chunked body")


@props(200)
@given(line=st.binary(max_size=20).filter(lambda line: b"\n" not in line))
def test_any_chunk_size_line_is_hex_digits_or_refused(line: bytes) -> None:
    raw = chunked(line + b"\r\n" + b"z" * 64 + b"\r\n0\r\n\r\n")
    try:
        body = asyncio.run(parse(raw))
    except Refusal as exc:
        assert exc.args[0] in (400, 413), exc.args
    except asyncio.IncompleteReadError:
        pass  # a true size larger than what came
    else:
        size = re.fullmatch(rb"([0-9A-Fa-f]{1,12})(;[^\r\n]*)?", line)
        assert size is not None, line
        assert body == (b"z" * 64)[:int(size.group(1), 16)]


def test_chunked_bodies_still_read_with_extensions_and_trailers() -> None:
    raw = chunked(b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\n")
    assert asyncio.run(parse(raw)) == b"hello!"


def test_endless_trailers_are_refused() -> None:
    raw = chunked(b"1\r\na\r\n0\r\n" + b"x-t: " + b"a" * 1000 + b"\r\n" * 1 + b"x-u: 1\r\n" * 2000 + b"\r\n")
    assert refusal(raw)[0] == 400


def test_a_body_that_never_completes_is_cut_by_its_timeout() -> None:
    async def trickle() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(with_length(b"10", b"abc"))
        request = await read_head(reader, timeout=1)
        await read_body(reader, request, CAP, timeout=0.2)

    started = time.monotonic()
    with pytest.raises(Refusal) as refused:
        asyncio.run(trickle())
    assert refused.value.args[0] == 408 and time.monotonic() - started < 2


# --- through the real webhook server ------------------------------------------------------------------------------


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[Hook]:
    made = Hook(tmp_path)
    async with made.serving():
        yield made


@pytest.mark.parametrize("value", ["²", "+2", " 2x", "1_0", "", "9" * 5000])
async def test_the_webhook_answers_content_length_junk_with_400_and_writes_nothing(hook: Hook, value: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
    writer.write(f"POST /webhooks/github HTTP/1.1\r\nauthorization: Bearer {hook.token}\r\n"
                 f"content-length: {value}\r\n\r\n{{}}".encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in answer, answer[:200]
    assert hook.rows() == []


async def test_the_webhook_head_stays_capped_at_64_kib_with_431(hook: Hook) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hook.port)
    writer.write(b"POST /webhooks/github HTTP/1.1\r\n" + b"x-pad: " + b"a" * (64 << 10) + b"\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and hook.rows() == []
