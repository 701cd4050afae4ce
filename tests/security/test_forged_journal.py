"""A runner may create files in its session folder (outbound.db's journal lives there), and SQLite rolls a "hot"
journal found beside a database into it at the next open. A journal a runner forged beside ``inbound.db`` would
rewrite the host's rows (task prompts, routing, delivery records). The host keeps that name taken by a journal of
its own (``sidecars.keep``, ``journal_mode=PERSIST``), which a runner of another uid can neither remove nor
replace in the sticky session folder. Found by the attack review of issue 11."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from kit import World, utc

from host.runtimes.workspace import hand_over
from host.store import db, groups

RUNNER_UID = 1000
SYSTEM_PYTHON = "/usr/bin/python3"  # one any uid may run (the venv's may sit in a folder only root can enter)
# The runner's side: put its journal back the moment the host takes the name (bounded: 20 s at most).
RELINK = """
import os, sys, time
end = time.monotonic() + 20
while time.monotonic() < end and os.path.exists(sys.argv[1]):
    try:
        os.link(sys.argv[1], sys.argv[2])
    except FileExistsError:
        pass
    except OSError:
        break
"""


def _forge(world: World, task: str, into: Path) -> None:
    """A journal whose rollback writes a forged prompt for ``task``: made on a copy of inbound.db (a runner may read
    it), from a transaction left open on that copy."""
    forged = into.with_name("forged.db")
    shutil.copyfile(world.session.folder / "inbound.db", forged)
    with closing(sqlite3.connect(forged)) as conn, conn:
        conn.execute("UPDATE messages_in SET content = ? WHERE id = ?",
                     (json.dumps({"prompt": "FORGED by the runner", "context_mode": "group"}), task))
    conn = sqlite3.connect(forged, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE messages_in SET content = json_set(content, '$.pad', 'x')")
    shutil.copyfile(f"{forged}-journal", into)
    conn.execute("ROLLBACK")
    conn.close()


def _forge_wal(world: World, task: str, into: Path) -> None:
    """A WAL holding a forged prompt for ``task``, made on a copy of inbound.db: SQLite opens a database in WAL mode
    whenever a non-empty ``-wal`` is beside it, whatever its header says, and reads (and checkpoints) its pages."""
    forged = into.with_name("forged.db")
    shutil.copyfile(world.session.folder / "inbound.db", forged)
    conn = sqlite3.connect(forged, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("UPDATE messages_in SET content = ? WHERE id = ?",
                 (json.dumps({"prompt": "FORGED by the runner", "context_mode": "group"}), task))
    shutil.copyfile(f"{forged}-wal", into)
    conn.close()


def _prompts(inbound: Path, task: str, opens: int) -> list[str]:
    found = []
    for _ in range(opens):
        with closing(db.connect(inbound, "inbound")) as conn:
            found.append(conn.execute("SELECT content FROM messages_in WHERE id = ?", (task,)).fetchone()[0])
    return found


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="plays a root host and a runner of another uid (with the system's python3)")
@pytest.mark.parametrize(("name", "forge"), [("inbound.db-journal", _forge), ("inbound.db-wal", _forge_wal)],
                         ids=["journal", "wal"])
def test_a_runner_of_another_uid_cannot_get_a_forged_journal_rolled_into_inbound_db(
        tmp_path: Path, name: str, forge: Callable[[World, str, Path], None]) -> None:
    """The -wal was found by the attack review of the lock-stall fix: the host read the forged prompt, then
    checkpointed it into inbound.db for good."""
    world = World(tmp_path / "w", tz="UTC")
    task = world.schedule(utc("2026-06-11T13:00:00"), at="2026-07-01T00:00:00.000Z")
    folder = world.session.folder
    mine = tmp_path / "mine"
    forge(world, task, mine)
    hand_over(folder, groups.folder(world.settings, world.session.agent_group_id), RUNNER_UID, RUNNER_UID)
    planted = folder / ".mine"
    shutil.copyfile(mine, planted)
    os.chown(planted, RUNNER_UID, RUNNER_UID)
    (folder / name).unlink(missing_ok=True)  # free, as before the fix
    for parent in list(folder.parents)[:-1]:
        os.chmod(parent, os.stat(parent).st_mode | 0o001)  # uid 1000 reaches the folder (its mount, in docker)
    runner = subprocess.Popen([SYSTEM_PYTHON, "-c", RELINK, str(planted), str(folder / name)],
                              preexec_fn=lambda: (os.setgid(RUNNER_UID), os.setuid(RUNNER_UID)))
    try:
        deadline = time.monotonic() + 10
        while not (folder / name).exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # a real process racing: wait for its first link, bounded
        prompts = _prompts(folder / "inbound.db", task, 20)
    finally:
        planted.unlink(missing_ok=True)
        runner.wait(30)
    assert not any("FORGED" in p for p in prompts), prompts[:1]
    assert os.stat(folder / name, follow_symlinks=False).st_uid == 0, "the name is the host's for good"
    assert "FORGED" not in _prompts(folder / "inbound.db", task, 1)[0]  # nothing was checkpointed into the file


@pytest.mark.xfail(strict=True, reason="known limit (SECURITY.md): a non-root host runs its runners as its own uid, "
                                       "which may rewrite any file the host owns in the session folder")
def test_a_runner_of_the_hosts_own_uid_cannot_forge_inbound_rows_either(tmp_path: Path) -> None:
    world = World(tmp_path / "w", tz="UTC")
    task = world.schedule(utc("2026-06-11T13:00:00"), at="2026-07-01T00:00:00.000Z")
    _forge(world, task, world.session.folder / "inbound.db-journal")
    assert not any("FORGED" in p for p in _prompts(world.session.folder / "inbound.db", task, 1))
