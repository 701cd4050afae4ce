"""The Matrix channel against a hostile runner (it writes its session folder and its outbound rows): the host never
reads a host file the runner linked into its outbox, never writes a user's upload through a ``files`` folder the
runner swapped for a link, and sends a session's replies only into that session's own room, whatever room the
runner's row names. Was: ``_upload`` opened ``outbox/<id>/<name>`` following links (the host's ``.env`` went to the
room), ``_text`` wrote below ``files/`` through a link, and ``deliver`` sent into the row's ``platform_id``. A
client stands in for matrix-nio (the real homeserver's tests are in tests/matrix)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc
from nio import DownloadResponse, RoomSendResponse, UploadResponse

from host.channels.matrix import MatrixChannel
from host.store import sessions
from host.store.outbox import OutMessage

BOT = "@bot:ncl.test"
ROOM, OTHER_ROOM = "!mine:ncl.test", "!theirs:ncl.test"


class Client:
    """What the channel calls on matrix-nio: records sends and uploads, serves one download."""

    def __init__(self, download: bytes = b"") -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: list[bytes] = []
        self.download_body = download
        self.rooms: dict[str, Any] = {}

    async def room_send(self, room_id: str, kind: str, content: dict[str, Any], tx_id: str) -> RoomSendResponse:
        self.sent.append((room_id, content))
        return RoomSendResponse("$e", room_id)

    async def upload(self, data: Any, content_type: str, filename: str, filesize: int) -> tuple[Any, None]:
        self.uploaded.append(data.read() if isinstance(data, io.IOBase) else bytes(data))
        return UploadResponse("mxc://ncl.test/x"), None

    async def download(self, mxc: str) -> DownloadResponse:
        return DownloadResponse(self.download_body, "application/octet-stream", "f")

    async def room_typing(self, *args: Any) -> None:
        return None


def _world(tmp_path: Path) -> tuple[World, MatrixChannel, sessions.Session, Client]:
    world = World(tmp_path, NCL_MATRIX_USER_ID=BOT, NCL_MATRIX_HOMESERVER="http://127.0.0.1:1",
                  NCL_MATRIX_ACCESS_TOKEN="t", NCL_MATRIX_ALLOW="@*:ncl.test")
    session = sessions.create(world.central, world.settings, utc("2026-01-01T00:00:00"), world.group,
                              f"matrix:{BOT}/{ROOM}")
    channel, client = MatrixChannel(world.settings), Client()
    channel.client = client
    return world, channel, session, client


def _reply(files: list[str], room: str | None = ROOM, channel: str = f"matrix:{BOT}") -> OutMessage:
    return OutMessage("msg-1-reply", 1, None, "2026-01-01T00:00:00Z", "chat", room, channel, None,
                      json.dumps({"text": "here", "files": files}))


def test_a_file_the_runner_linked_into_its_outbox_is_never_uploaded(tmp_path: Path) -> None:
    _, channel, session, client = _world(tmp_path)
    secret = tmp_path / "host.env"
    secret.write_text("ANTHROPIC_API_KEY=sk-never-leaves")
    outbox = session.folder / "outbox" / "msg-1-reply"
    outbox.mkdir(parents=True)
    (outbox / "notes.txt").symlink_to(secret)
    (outbox / "ok.txt").write_text("fine")
    assert asyncio.run(channel.deliver(session, _reply(["ok.txt", "notes.txt"]), None)) is True
    assert client.uploaded == [b"fine"]
    assert "notes.txt was not sent" in json.dumps(client.sent)  # said in the room instead


def test_an_upload_is_never_written_through_a_files_folder_the_runner_linked_elsewhere(tmp_path: Path) -> None:
    _, channel, session, client = _world(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (session.folder / "files").symlink_to(elsewhere)
    client.download_body = b"planted"
    content = {"msgtype": "m.file", "body": "a.sh", "url": "mxc://ncl.test/a", "info": {"size": 7}}
    text = asyncio.run(channel._text(session, content, "msg-1700000000000-abcdef"))
    assert list(elsewhere.iterdir()) == []
    assert "a.sh" in text and "not" in text  # said in the row, not written


@pytest.mark.parametrize("room,channel_type", [(OTHER_ROOM, f"matrix:{BOT}"), (None, f"matrix:{BOT}")])
def test_a_reply_goes_only_into_its_sessions_own_room(tmp_path: Path, room: str | None, channel_type: str) -> None:
    _, channel, session, client = _world(tmp_path)
    asyncio.run(channel.deliver(session, _reply([], room, channel_type), None))
    assert [r for r, _ in client.sent] == [ROOM]


def test_a_session_of_another_channel_cannot_send_into_a_matrix_room(tmp_path: Path) -> None:
    world, channel, _, client = _world(tmp_path)
    with pytest.raises(Exception, match="not a Matrix room"):  # the demo group's cli session, its row forged
        asyncio.run(channel.deliver(world.session, _reply([], OTHER_ROOM), None))
    assert client.sent == []
