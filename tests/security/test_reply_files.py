"""The files a reply sends, which its runner names: the reply's id and each file's name are the runner's to write. Was
(attack review): an id of ``../../../..`` with the file ``central.db`` uploaded the install's central.db into the
session's Matrix room, ``/etc`` with ``passwd`` the machine's; and one sparse 25 MiB file named 64 times in a mail's
reply took the host to 3.9 GB of memory (each name read and base64-encoded again). Now a file is read only from the
reply's own ``outbox/<id>/``, no link followed, a name once, at most ``reply_files.MAX_FILES`` of them, and a mail's
files together at most ``mail_smtp.MAX_FILES_BYTES``."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from test_hostile_matrix import _world

from host.channels import mail_smtp, reply_files
from host.store.outbox import OutMessage


def _reply(reply_id: str, files: list[str]) -> OutMessage:
    return OutMessage(reply_id, 1, None, "2026-01-01T00:00:00Z", "chat", None, "matrix:@bot:ncl.test", None,
                      json.dumps({"text": "here", "files": files}))


@pytest.mark.parametrize(("reply_id", "name"), [("../../../..", "central.db"), ("../../../../..", "secret.txt"),
                                                ("/", "secret.txt"), ("..", "inbound.db"), ("msg-1/..", "inbound.db"),
                                                (".", "inbound.db"), ("", "../inbound.db")])
def test_no_reply_id_or_name_reaches_a_file_outside_its_own_outbox_folder(tmp_path: Path, reply_id: str,
                                                                         name: str) -> None:
    _, channel, session, client = _world(tmp_path)
    (tmp_path / "secret.txt").write_text("the operator's")
    if reply_id == "/":
        reply_id, name = str(tmp_path), "secret.txt"  # an absolute id: any folder of the machine
    assert asyncio.run(channel.deliver(session, _reply(reply_id, [name]), None)) is True
    assert client.uploaded == []
    assert "was not sent" in json.dumps(client.sent)
    with pytest.raises(reply_files.confined.Refused):
        reply_files.read(session.folder, _reply(reply_id, [name]), name, 1 << 20)


def test_an_outbox_linked_elsewhere_is_never_read_through(tmp_path: Path) -> None:
    _, channel, session, client = _world(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "msg-1-reply"
    elsewhere.mkdir(parents=True)
    (elsewhere / "report.txt").write_text("the operator's")
    (session.folder / "outbox").rmdir()
    (session.folder / "outbox").symlink_to(elsewhere.parent)
    assert asyncio.run(channel.deliver(session, _reply("msg-1-reply", ["report.txt"]), None)) is True
    assert client.uploaded == []


def test_a_name_counts_once_and_a_reply_sends_at_most_max_files(tmp_path: Path) -> None:
    _, channel, session, client = _world(tmp_path)
    outbox = session.folder / "outbox" / "msg-1-reply"
    outbox.mkdir(parents=True)
    names = [f"f{n}.txt" for n in range(reply_files.MAX_FILES + 5)]
    for name in names:
        (outbox / name).write_text(name)
    asyncio.run(channel.deliver(session, _reply("msg-1-reply", ["f0.txt"] * 1000 + names), None))
    assert client.uploaded == [name.encode() for name in names[:reply_files.MAX_FILES]]
    assert "5 more files were not sent" in json.dumps(client.sent)


def test_a_mails_files_are_read_once_each_and_bounded_together(tmp_path: Path) -> None:
    _, _, session, _ = _world(tmp_path)
    outbox = session.folder / "outbox" / "msg-1-reply"
    outbox.mkdir(parents=True)
    for n in range(4):  # sparse: no disk for the runner, 40 MiB of reading for the host
        with (outbox / f"big{n}.bin").open("wb") as big:
            big.truncate(10 << 20)
    attached = mail_smtp._files(session, _reply("msg-1-reply", ["big0.bin"] * 1000 + [f"big{n}.bin" for n in range(4)]))
    assert [name for name, _ in attached] == ["big0.bin", "big1.bin"]  # the third would pass 25 MiB together
    assert sum(len(data) for _, data in attached) <= mail_smtp.MAX_FILES_BYTES


def test_files_not_sent_are_logged_a_few_lines_a_minute(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ten missing files named in each of twenty replies a visit rotated the whole host.log away (attack review). The
    room is still told of each."""
    _, channel, session, client = _world(tmp_path)
    caplog.set_level(logging.WARNING)
    for n in range(5):
        asyncio.run(channel.deliver(session, _reply(f"msg-{n}", [f"gone{k}.txt" for k in range(10)]), None))
    assert sum("was not sent" in content["body"] for _, content in client.sent) == 50
    logged = [r for r in caplog.records if getattr(r, "action", None) == "matrix_file_refused"]
    assert len(logged) <= 20
