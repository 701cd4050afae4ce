"""Security boundaries (issue 7), paths: file paths stay inside the workspace (``send_file``) or the group folder
(queue file items, group folders under data/groups), whatever ``..``, absolute paths and symlinks they use; and
what the runner owns in its session folder (a symlink planted as outbound.db, a fifo as .heartbeat) never
leads the host out of it or blocks its sweep. Container-side checks are in ``tests/docker/test_container.py``,
``tests/docker/test_end_to_end.py`` and ``tests/docker/test_security_container.py``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import RecordingRuntime, World
from security_kit import SECRET, T0

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tool_error import ToolError
from agent_runner.tools import Tools
from host.channels import queues
from host.errors import NclError
from host.store import db, groups

# --- paths that escape the workspace, the group folder, data/groups ----------------------------------------------


def furnish(home: Path, root: Path) -> None:
    """A file, a subfolder, and links: one to a file inside, others to the secret outside (a file, a dir, ``..``)."""
    (home / "sub").mkdir(parents=True, exist_ok=True)
    (home / "report.txt").write_text("numbers")
    (home / "link-in").symlink_to(home / "report.txt")
    (home / "link-out").symlink_to(root / "secret.txt")
    (home / "link-dir").symlink_to(root / "secret-dir")
    (home / "link-up").symlink_to("..")


class Files:
    """A session workspace and the folder of a queue's group, furnished alike, and a secret outside both."""

    def __init__(self, root: Path) -> None:
        self.world = World(root, tz="UTC")
        self.workspace = self.world.session.folder
        self.secret = root / "secret.txt"
        self.secret.write_text(SECRET)
        (root / "secret-dir").mkdir()
        (root / "secret-dir" / "secret.txt").write_text(SECRET)
        self.queue_group, _ = groups.create(self.world.central, self.world.settings, T0, "jobs", ["queue:jobs"])
        furnish(self.workspace, root)
        furnish(groups.folder(self.world.settings, self.queue_group.id), root)
        furnish(groups.folder(self.world.settings, self.world.group.id), root)  # another group's files
        sent = self.workspace / "outbox" / "msg-1781182700000-aaaaaa"
        sent.mkdir(parents=True)
        (sent / "old.txt").write_text("sent before")
        (self.workspace / "link-outbox").symlink_to(sent / "old.txt")
        config = RunnerConfig(session_dir=self.workspace, generation="gen-test", tz="UTC")
        self.tools = Tools(config, Store(config), lambda: T0)

    def outbound(self) -> list[dict[str, Any]]:
        with closing(self.world.outbound()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM messages_out")]

    def outbox(self) -> list[str]:
        return sorted(str(p.relative_to(self.workspace)) for p in (self.workspace / "outbox").rglob("*"))


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    made = Files(tmp_path)
    yield made
    made.world.central.close()


@pytest.mark.parametrize("path", ["../secret.txt", "../../../../../../etc/hostname", "/etc/hostname", "ABSOLUTE",
                                  "link-out", "link-dir/secret.txt", "link-up/secret.txt", "sub/../../secret.txt",
                                  "outbox/msg-1781182700000-aaaaaa/old.txt", "link-outbox"])
def test_send_file_refuses_paths_out_of_the_workspace(files: Files, path: str) -> None:
    path = str(files.secret) if path == "ABSOLUTE" else path
    outbox = files.outbox()
    with pytest.raises(ToolError, match="outside the workspace"):
        files.tools.call("send_file", {"path": path})
    assert files.outbound() == [] and files.outbox() == outbox


@pytest.mark.parametrize("path", ["report.txt", "sub/../report.txt", "./report.txt", "link-in"])
def test_send_file_sends_a_copy_of_a_workspace_file(files: Files, path: str) -> None:
    answer = files.tools.call("send_file", {"path": path})
    [row] = files.outbound()
    assert row["id"] in answer and json.loads(row["content"]) == {"text": "", "files": ["report.txt"]}
    copy = files.workspace / "outbox" / row["id"] / "report.txt"
    assert copy.read_text() == "numbers" and not copy.is_symlink()


@pytest.mark.parametrize("url", ["room:///../secret.txt", "room:///../../../../../../etc/hostname", "room:////etc/hostname",
                                 "room:///link-out", "room:///link-dir/secret.txt", "room:///link-up/secret.txt",
                                 "room:///sub/../../secret.txt", "room:///../ag-demo/report.txt", "room:///.",
                                 "room:///", "file:///etc/hostname", "room://host/etc/hostname",
                                 "room:///link-in"])  # issue 11: no link is followed, not even one that stays inside
def test_queue_file_items_refuse_paths_out_of_the_group_folder(files: Files, url: str) -> None:
    listed = files.world.central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    with pytest.raises(NclError) as refused:
        queues.send(files.world.central, files.world.settings, T0, "jobs", {"prompt": [{"type": "file", "url": url}]})
    assert SECRET not in str(refused.value)
    assert files.world.central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == listed


@pytest.mark.parametrize("url", ["room:///report.txt", "room:///sub/../report.txt"])
def test_queue_file_items_inside_the_group_folder_are_inlined(files: Files, url: str) -> None:
    payload = {"prompt": [{"type": "file", "url": url}]}
    sent = queues.send(files.world.central, files.world.settings, T0, "jobs", payload)
    folder = files.world.settings.sessions_dir / files.queue_group.id / sent["session_id"]
    with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
        (content,) = conn.execute("SELECT content FROM messages_in WHERE id = ?", (sent["message_id"],)).fetchone()
    assert '<file name="report.txt">\nnumbers\n</file>' in json.loads(content)["prompt"]


def test_queue_send_on_the_command_line_refuses_a_file_out_of_the_group_folder(ncl: Callable[..., Any],
                                                                                cli_env: Any) -> None:
    assert ncl("groups", "create", "jobs", "--channel", "queue:jobs").code == 0
    payload = json.dumps({"prompt": [{"type": "file", "url": "room:///../../../../../../../../etc/hostname"}]})
    result = ncl("queue", "send", "--queue", "jobs", "--json", payload)
    assert result.code == 1 and len(result.err_lines) == 1 and "outside the group folder" in result.err
    assert not (cli_env.data_dir / "v2-sessions").exists() or not list((cli_env.data_dir / "v2-sessions").rglob("*.db"))


@pytest.mark.parametrize("name", ["..", ".", "../escape", "/tmp/escape", "a/b", "a/../../escape", "~", "ag-x/..", " ",
                                  "x\x00y", "../../../../etc"])
def test_group_names_cannot_place_a_folder_outside_data_groups(ncl: Callable[..., Any], cli_env: Any,
                                                               name: str) -> None:
    before = sorted(str(p) for p in cli_env.root.rglob("*"))
    result = ncl("groups", "create", "--", name)
    assert result.code == 1 and len(result.err_lines) == 1 and "invalid group name" in result.err
    assert sorted(str(p) for p in cli_env.root.rglob("*") if "escape" in str(p)) == []
    assert [p for p in sorted(str(p) for p in cli_env.root.rglob("*")) if p not in before
            and not p.startswith(str(cli_env.data_dir))] == []


# --- what the runner owns in its session folder: the host must not follow it out ----------------------------------


def test_a_symlink_planted_as_outbound_db_is_never_opened_by_the_host(tmp_path: Path) -> None:
    world = World(tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"")  # an empty file is a valid empty SQLite database to sqlite3
    outbound = world.session.folder / "outbound.db"
    outbound.unlink()
    outbound.symlink_to(outside)
    try:
        world.sweeper().tick(T0)
        assert outside.read_bytes() == b"", "the host wrote through the runner's symlink"
    finally:
        world.central.close()


@pytest.mark.slow
def test_a_heartbeat_the_runner_made_a_fifo_never_blocks_the_hosts_sweep(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.schedule(T0 - timedelta(minutes=1))
    heartbeat = world.session.folder / ".heartbeat"
    os.mkfifo(heartbeat)
    swept = threading.Event()

    def sweep() -> None:  # SQLite connections belong to the thread that made them: the sweeper lives here
        sweeper = world.sweeper(RecordingRuntime())
        sweeper.tick(T0)  # wakes a runner (recorded, not started)
        sweeper.tick(T0 + timedelta(seconds=61))  # a live runner: its heartbeat is read
        swept.set()

    worker = threading.Thread(target=sweep, daemon=True)
    worker.start()
    finished = swept.wait(3)
    if not finished:  # let the blocked read see EOF, so no thread is left hanging
        os.close(os.open(heartbeat, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    world.central.close()
    assert finished, "the sweep blocked on the runner's .heartbeat"
