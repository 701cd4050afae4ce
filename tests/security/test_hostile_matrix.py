"""The Matrix channel against a hostile runner, and against hostile room members (the end of this file).

A hostile runner (it writes its session folder and its outbound rows): the host never
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
from types import SimpleNamespace
from typing import Any

import pytest
from kit import World, utc
from nio import InviteMemberEvent, RoomGetStateEventError, RoomSendResponse, UploadResponse

from host.channels import matrix, matrix_files, matrix_wire
from host.channels.matrix import MatrixChannel
from host.store import groups, sessions
from host.store.outbox import OutMessage

BOT = "@bot:ncl.test"
ROOM, OTHER_ROOM = "!mine:ncl.test", "!theirs:ncl.test"


class Client:
    """What the channel calls on matrix-nio: records sends and uploads, serves one download."""

    def __init__(self, download: bytes = b"") -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: list[bytes] = []
        self.download_body = download
        self.download_stalls = False
        self.rooms: dict[str, Any] = {}
        self.left: list[str] = []

    async def room_send(self, room_id: str, kind: str, content: dict[str, Any], tx_id: str) -> RoomSendResponse:
        self.sent.append((room_id, content))
        return RoomSendResponse("$e", room_id)

    async def upload(self, data: Any, content_type: str, filename: str, filesize: int) -> tuple[Any, None]:
        self.uploaded.append(data.read() if isinstance(data, io.IOBase) else bytes(data))
        return UploadResponse("mxc://ncl.test/x"), None

    async def download(self, mxc: str, save_to: Path) -> object:
        if self.download_stalls:  # a server trickling the file for ever
            await asyncio.Event().wait()
        save_to.write_bytes(self.download_body)  # as matrix-nio streams it to the file
        return object()

    async def room_get_state_event(self, room_id: str, kind: str) -> RoomGetStateEventError:
        return RoomGetStateEventError("not found")  # an unencrypted room: no m.room.encryption state

    async def room_leave(self, room_id: str) -> None:
        self.left.append(room_id)

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


# --- hostile room members ------------------------------------------------------------------------------------------

FILE = {"msgtype": "m.file", "body": "big.bin", "url": "mxc://ncl.test/big", "info": {"size": 1}}


def test_a_file_that_lies_about_its_size_is_measured_and_one_that_trickles_is_given_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event's size is its sender's word: the file is streamed to a private file and measured (never held in
    memory whole: 200 MiB said to be 1 byte took 450 MiB), and a fetch that does not end holds the sync (every
    room) at most ``FETCH_S``."""
    world, channel, session, client = _world(tmp_path)
    limit = world.settings.matrix_max_file_bytes
    client.download_body = b"x" * (limit + 1)
    text = asyncio.run(channel._text(session, FILE, "msg-1700000000000-abcdef"))
    assert text == f"[a file big.bin not taken: over NCL_MATRIX_MAX_FILE_BYTES ({limit} bytes)]"
    assert not (session.folder / "files").exists()
    client.download_stalls = True
    monkeypatch.setattr(matrix_files, "FETCH_S", 0.2)
    text = asyncio.run(channel._text(session, FILE, "msg-1700000000000-abcdef"))
    assert text == "[a file big.bin that could not be fetched: not done within 0.2 s]"


def test_an_encrypted_message_from_anyone_in_an_unencrypted_room_makes_the_bot_leave_nothing(
        tmp_path: Path) -> None:
    """Any member may send an m.room.encrypted event; only the room's m.room.encryption state (set by those with
    the power to) says the room is encrypted. Was: one such event from a member off the allow-list, and the bot
    left the room."""
    _, channel, _, client = _world(tmp_path)
    event = {"type": "m.room.encrypted", "sender": "@mallory:elsewhere.test", "event_id": "$x",
             "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "..."}}
    asyncio.run(channel._event(ROOM, event))
    assert client.left == [] and client.sent == [] and channel.state.declined == []


def test_an_invite_or_event_that_always_fails_is_given_up_and_the_sync_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failure fails the sync, which is tried again; the same invite or event failing ``MAX_TRIES`` syncs in a
    row is given up and logged (a room the bot may not join held every room's messages for ever). A failure that
    is the host's (its database, its disk) or the network's never is: it passes, and the message must not be lost."""
    _, channel, _, _ = _world(tmp_path)

    async def refused() -> None:
        raise matrix.MatrixError("joining !private:ncl.test failed: You are not allowed to join this room")

    async def full_disk() -> None:
        raise OSError(28, "No space left on device")

    for _ in range(matrix.MAX_TRIES - 1):
        with pytest.raises(matrix.MatrixError):
            asyncio.run(channel._one("invite to !private:ncl.test", refused()))
    asyncio.run(channel._one("invite to !private:ncl.test", refused()))  # the last try: given up, not raised
    assert [r.getMessage() for r in caplog.records if getattr(r, "action", "") == "matrix_given_up"] == [
        "matrix: invite to !private:ncl.test given up after 3 tries: joining !private:ncl.test failed: You are not "
        "allowed to join this room"]
    for _ in range(matrix.MAX_TRIES + 2):
        with pytest.raises(OSError):
            asyncio.run(channel._one("event $e in !mine:ncl.test", full_disk()))


@pytest.mark.parametrize("text", ["a" * 30_000, "&" * 30_000, "漢" * 30_000, "😀" * 20_000,
                                  "| a | b |\n|---|---|\n" + "| x & y | 漢 |\n" * 3000])
def test_every_part_of_a_reply_fits_an_event_and_pings_nobody(text: str) -> None:
    """An event is at most 64 KiB: parts were 12,000 characters, which as HTML and JSON escapes made 72–144 KB
    (``M_TOO_LARGE``: the reply half sent). Each part also says it mentions nobody, and shows no image (a client
    would fetch it from wherever the agent's words point)."""
    parts = matrix_wire.text_parts(text)
    assert "".join(p["body"] for p in parts) == text
    assert max(len(json.dumps(p)) for p in parts) <= matrix_wire.MAX_PART_BYTES
    assert all(p["m.mentions"] == {} for p in parts)
    assert "<img" not in matrix_wire.html_of("![tracker](mxc://evil.test/pixel) @room")


def test_the_senders_remembered_as_ignored_stay_bounded(tmp_path: Path) -> None:
    """Each ignored sender is logged once a room; remembering them never grows without bound (200,000 of them held
    71 MiB)."""
    _, channel, _, _ = _world(tmp_path)

    async def strangers() -> None:
        for n in range(matrix.MAX_IGNORED + 5):
            await channel._event(ROOM, {"type": "m.room.message", "sender": f"@s{n}:elsewhere.test",
                                        "event_id": f"${n}", "content": {"msgtype": "m.text", "body": "hi"}})

    asyncio.run(strangers())
    assert 0 < len(channel.ignored) <= matrix.MAX_IGNORED


def test_an_invite_is_judged_by_who_sent_it_not_by_the_state_the_inviting_server_added(tmp_path: Path) -> None:
    """The invite's stripped state comes from the inviting server, the invite event last: a member event earlier in
    it claiming an allowed inviter proves nothing (checked by the helper's reading of Synapse; federation cannot run
    here)."""
    world, channel, _, client = _world(tmp_path)
    groups.create(world.central, world.settings, utc("2026-01-01T00:00:00"), "bots", [f"matrix:{BOT}"])

    def invite(sender: str) -> InviteMemberEvent:
        return InviteMemberEvent.from_dict({"type": "m.room.member", "sender": sender, "state_key": BOT,
                                            "content": {"membership": "invite"}})

    invited = SimpleNamespace(invite_state=[invite("@alice:ncl.test"), invite("@mallory:elsewhere.test")])
    asyncio.run(channel._invited(OTHER_ROOM, invited))
    assert client.left == [OTHER_ROOM] and channel.state.declined == [OTHER_ROOM]
