"""Bad input, property-based (issue 7): queue payloads through ``queues.send``. Any payload (prompt items, file
urls in and out of the group folder, thread templates, NaN) is a one-line error that leaves no session, folder
or row behind, or one valid ``messages_in`` row in a session folder of the queue's group.

Derandomized settings and the shared strategies: tests/property_kit.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kit import World
from property_kit import T0, json_values, no_nul, observe, one_line, props, strict_json

from host.channels import queues
from host.errors import NclError
from host.store import db, groups
from schemas.messages import MessageIn, QueueContent

file_urls = st.sampled_from([
    "room:///notes.txt", "room:///sub/deep.txt", "room:///sub/../notes.txt", "room:///../../../etc/passwd",
    "room:////etc/passwd", "room:///link-out", "room:///link-in", "room:///link-dir/x.txt", "room:///bin.dat",
    "room:///big.txt", "room:///missing", "room:///", "room:///.", "room:///sub", "room://other/x", "file:///etc/hosts",
    "notes.txt"]) | no_nul.map(lambda s: "room:///" + s)
prompt_items = (st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=16)})
                | st.fixed_dictionaries({"type": st.just("file"), "url": file_urls}) | json_values)
thread_templates = st.sampled_from(["{YYYY}-{MM}-{DD}", "daily-{YYYY}{MM}{DD}{HH}{mm}", "../../x", "a/b", " ", "",
                                    "{YY}"]) | st.text(max_size=16) | json_values
payloads = st.fixed_dictionaries(
    {"prompt": st.text(max_size=24) | st.lists(prompt_items, max_size=4) | json_values},
    optional={"thread_id": thread_templates, "extra": json_values}) | json_values


class QueueWorld:
    def __init__(self, root: Path) -> None:
        self.world = World(root, tz="UTC")
        self.group, _ = groups.create(self.world.central, self.world.settings, T0, "jobs", ["queue:jobs"])
        home = groups.folder(self.world.settings, self.group.id)
        (home / "sub").mkdir()
        (home / "notes.txt").write_text("the notes")
        (home / "sub" / "deep.txt").write_text("deeper")
        (home / "bin.dat").write_bytes(b"\xff\xfe\x00")
        (home / "big.txt").write_text("x" * (queues.MAX_FILE_BYTES + 1))
        (root / "secret.txt").write_text("outside")
        (root / "secret-dir").mkdir()
        (root / "secret-dir" / "x.txt").write_text("outside")
        (home / "link-out").symlink_to(root / "secret.txt")
        (home / "link-dir").symlink_to(root / "secret-dir")
        (home / "link-in").symlink_to(home / "notes.txt")
        (home / "loop").symlink_to("loop")

    def state(self) -> tuple[int, list[str], int]:
        """Sessions listed, session folders on disk, rows in all inboxes: nothing may change on a refusal."""
        listed = self.world.central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
        folders = sorted(str(p) for p in self.world.settings.sessions_dir.glob("*/*"))
        rows = 0
        for path in self.world.settings.sessions_dir.glob("*/*/inbound.db"):
            with closing(sqlite3.connect(path)) as conn:
                rows += conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0]
        return listed, folders, rows


@pytest.fixture
def queue_world(tmp_path: Path) -> Iterator[QueueWorld]:
    made = QueueWorld(tmp_path)
    yield made
    made.world.central.close()


def check_queue_send(qw: QueueWorld, payload: Any) -> None:
    before = qw.state()
    try:
        sent = queues.send(qw.world.central, qw.world.settings, T0, "jobs", payload)
    except NclError as exc:
        observe("refused")
        one_line(str(exc))
        assert qw.state() == before, "a refused job left something behind"
        return
    observe("queued")
    assert set(sent) == {"queue", "message_id", "session_id"}
    folder = qw.world.settings.sessions_dir / qw.group.id / sent["session_id"]
    assert folder.resolve().parent == (qw.world.settings.sessions_dir / qw.group.id).resolve()
    with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
        row = dict(conn.execute("SELECT * FROM messages_in WHERE id = ?", (sent["message_id"],)).fetchone())
    MessageIn.model_validate(row)
    content = QueueContent.model_validate(strict_json(row["content"]))
    assert (row["kind"], row["channel_type"], content.queue) == ("queue", "queue:jobs", "jobs")
    assert content.payload == payload
    for item in content.content:
        if item["type"] == "file":
            assert "outside" not in content.prompt  # nothing from outside the group folder was inlined


@props(200)
@given(payload=payloads)
def test_queue_payloads_are_a_clear_error_or_a_valid_row(queue_world: QueueWorld, payload: Any) -> None:
    check_queue_send(queue_world, payload)


@pytest.mark.parametrize("payload", [
    pytest.param({"prompt": "x", "n": float("nan")}, id="nan"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///a\x00b"}]}, id="url-nul"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///" + "a" * 300}]}, id="url-name-too-long"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///loop"}]}, id="url-symlink-loop"),
    pytest.param({"prompt": "x", "thread_id": "\ud800"}, id="thread-lone-surrogate"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///link-in"}]}, id="control-link-inside"),
])
def test_queue_payload_edge_cases_are_a_clear_error_and_leave_nothing(queue_world: QueueWorld, payload: Any) -> None:
    check_queue_send(queue_world, payload)
