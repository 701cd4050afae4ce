"""The CLI socket (``data/cli.sock``) has limits of its own (issue 11): a cap on connections (one more gets an
error line and is closed, never held), a request line that must end in time once begun (idle between lines is
fine: a chat waits for its user), a 1 MiB line cap, and it is never starved by a flood of the webhook port."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import pytest
from test_webhooks import Hook

from host.channels import cli as cli_channel
from host.channels.cli import CliChannel, socket_path
from host.channels.webhooks import Webhooks


@pytest.fixture
async def channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Hook, CliChannel]]:
    monkeypatch.setattr(cli_channel, "MAX_CLIENTS", 3)
    monkeypatch.setattr(cli_channel, "LINE_TIMEOUT_S", 0.3)
    hook = Hook(tmp_path)  # group "ops" with the cli and webhook:github channels
    served = CliChannel(hook.settings)
    await served.start()
    yield hook, served
    await served.stop()


async def connect(hook: Hook) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(socket_path(hook.settings)))


async def hang_up(*writers: asyncio.StreamWriter) -> None:
    """Close client connections and wait until they are closed (the server may have cut them first)."""
    for writer in writers:
        writer.close()
    for writer in writers:
        with suppress(ConnectionError):
            await writer.wait_closed()


async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str) -> dict[str, object]:
    writer.write(json.dumps({"op": "send", "group": "ops", "text": text}).encode() + b"\n")
    answer: dict[str, object] = json.loads(await asyncio.wait_for(reader.readline(), 5))
    return answer


async def test_a_connection_over_the_cap_gets_an_error_line_at_once(channel: tuple[Hook, CliChannel]) -> None:
    hook, _ = channel
    held = [await connect(hook) for _ in range(3)]
    assert all([(await send(r, w, "hi"))["ok"] for r, w in held])  # each served, then idle (waiting for replies)
    reader, writer = await connect(hook)
    line = await asyncio.wait_for(reader.readline(), 1)
    assert json.loads(line)["ok"] is False and "CLI connections" in json.loads(line)["error"]
    assert await asyncio.wait_for(reader.read(), 1) == b""  # and closed
    await hang_up(writer, held[0][1])
    async with asyncio.timeout(5):
        while True:  # a slot frees once the server sees the close
            reader, writer = await connect(hook)
            answer = await send(reader, writer, "again")
            await hang_up(writer)
            if answer["ok"]:
                break
    await hang_up(*[w for _, w in held[1:]])


async def test_a_begun_line_must_end_in_time_but_idle_is_fine(channel: tuple[Hook, CliChannel]) -> None:
    hook, _ = channel
    idle_reader, idle_writer = await connect(hook)
    slow_reader, slow_writer = await connect(hook)
    slow_writer.write(b'{"op": "send", "gro')  # and never the rest
    assert await asyncio.wait_for(slow_reader.read(), 3) == b""  # cut after LINE_TIMEOUT_S
    assert (await send(idle_reader, idle_writer, "still here"))["ok"]  # idle far longer, still served
    await hang_up(idle_writer, slow_writer)


async def test_a_line_over_one_mebibyte_is_dropped(channel: tuple[Hook, CliChannel]) -> None:
    hook, _ = channel
    reader, writer = await connect(hook)
    writer.write(b"x" * (cli_channel.MAX_LINE + 10) + b"\n")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        line = await asyncio.wait_for(reader.readline(), 5)
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
    await hang_up(writer)


async def test_the_cli_answers_while_the_webhook_port_is_full(channel: tuple[Hook, CliChannel]) -> None:
    hook, _ = channel
    hooks = Webhooks(hook.settings.replace(http_max_connections=8))
    port = await hooks.start(port=0)
    flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]  # 8 held, 32 refused
    reader, writer = await connect(hook)
    assert (await send(reader, writer, "through the flood"))["ok"]
    await hang_up(writer, *[w for _, w in flood])
    await hooks.stop()


async def test_a_line_with_an_unpaired_surrogate_escape_is_refused_and_nothing_stored(
        channel: tuple[Hook, CliChannel]) -> None:
    """("\\ud83d" alone, a text cut inside an emoji: stored, 'ncl messages list --json' failed for good.)"""
    hook, _ = channel
    reader, writer = await connect(hook)
    writer.write(b'{"op": "send", "group": "ops", "text": "cut \\ud83d"}\n')
    answer = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert answer == {"ok": False, "error": "the line has an unpaired surrogate escape: not text"}
    assert (await send(reader, writer, "whole 🙂"))["ok"]
    assert [r["content"]["text"] for r in hook.rows()] == ["whole 🙂"]
    await hang_up(writer)
