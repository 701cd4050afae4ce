"""A hostile runner's outbound.db in WAL mode, or a journal it planted beside it, must neither stall the sweep nor be
rolled back at the host's cost (SECURITY.md): its runner is killed before the host opens such a file, and a file
planted where only the host may write is refused by the host's own. The sessions and waits of test_locked_files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from test_forged_journal import RUNNER_UID, SYSTEM_PYTHON
from test_locked_files import T0, Two, long_waits

from host.runtimes.workspace import hand_over
from host.scheduling.sweep import SweepResult
from host.store import groups, journals

__all__ = ["long_waits"]  # (its long waits apply here too)


def _tick_beside(two: Two, process: subprocess.Popen[str], said: list[str]) -> SweepResult:
    """A tick while ``process`` (the runner's side) runs, once it has said ``said``; then it is killed."""
    try:
        assert process.stdout is not None
        heard = [process.stdout.readline().strip() for _ in said]
        assert heard == said, heard
        return two.tick(T0 + timedelta(seconds=1))
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_a_runner_that_switches_its_outbound_db_to_wal_is_killed_before_the_host_opens_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No runner of this host uses WAL (the files cross a container mount). SQLite's open of a WAL file whose read
    slots the runner holds retries for about 10 s whatever the busy timeout, so the header is read first: the
    runner is killed, and the next visit, its runner gone, reads the file and puts it back in DELETE mode."""
    two = Two(tmp_path)
    with closing(sqlite3.connect(two.outbound, isolation_level=None)) as runner:
        assert runner.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        runner.execute("BEGIN")
        runner.execute("SELECT COUNT(*) FROM processing_ack").fetchone()  # a read slot held
        first = two.tick(T0 + timedelta(seconds=1))
        assert first.errors == 1 and two.status(two.other, two.later) == "completed"
        assert two.runtime.stopped == [two.hostile.id]
        assert [r.message for r in caplog.records if getattr(r, "action", None) == "runner_killed"] == [
            f"killing the runner of {two.hostile.id}: {two.outbound} is in WAL mode: its runner switched it"]
    assert two.tick(T0 + timedelta(seconds=2)).errors == 0  # (a killed runner's locks die with it)
    assert two.status(two.hostile, two.task) == "completed"
    assert two.outbound.read_bytes()[18:20] == b"\x01\x01"  # a rollback journal again


# The runner's side (uid 1000): a non-empty outbound.db-wal beside its rollback-mode file (SQLite then opens it in
# WAL mode, whatever the header says) and the WAL read slots of outbound.db-shm locked, so that an open retries for
# about 10 s; it says what it managed.
PLANT_WAL = """
import fcntl, os, sys, time
folder = sys.argv[1]
try:
    with open(folder + "/outbound.db-wal", "wb") as wal:
        wal.write(bytes(64))
    print("planted", flush=True)
except OSError as exc:
    print("refused", type(exc).__name__, flush=True)
fd = os.open(folder + "/outbound.db-shm", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123, 0)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
                    reason="plays a root host and a runner of another uid (with the system's python3)")
def test_a_wal_file_planted_beside_outbound_db_is_refused_by_the_hosts_own(tmp_path: Path) -> None:
    """The header check alone missed it (found by the attack review): the host keeps the name taken by an empty file
    of its own, which SQLite takes for none and a runner of another uid can neither replace nor write."""
    two = Two(tmp_path)
    folder = two.hostile.folder
    hand_over(folder, groups.folder(two.world.settings, two.hostile.agent_group_id), RUNNER_UID, RUNNER_UID)
    for parent in list(folder.parents)[:-1]:
        os.chmod(parent, os.stat(parent).st_mode | 0o001)  # uid 1000 reaches the folder (its mount, in docker)
    runner = subprocess.Popen([SYSTEM_PYTHON, "-c", PLANT_WAL, str(folder)], stdout=subprocess.PIPE, text=True,
                              preexec_fn=lambda: (os.setgid(RUNNER_UID), os.setuid(RUNNER_UID)))
    result = _tick_beside(two, runner, ["refused PermissionError", "locked"])
    assert result.errors == 0 and two.status(two.hostile, two.task) == "completed"
    assert (folder / "outbound.db-wal").stat().st_size == 0 and (folder / "outbound.db-wal").stat().st_uid == 0


SHM_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123, 0)  # every WAL read slot
print("locked", flush=True)
time.sleep(60)
"""


def test_a_wal_header_written_after_the_check_costs_no_wait_on_the_read_slots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner owns outbound.db: it can flip its header to WAL right after the host's check (found by the second
    attack review, with inotify), holding the read slots of outbound.db-shm, on which SQLite's open retried for
    about 10 s and failed. The host's connections to outbound.db use EXCLUSIVE locking mode, which reads a WAL file
    without those slots."""
    two = Two(tmp_path)
    monkeypatch.setattr(journals, "guard", lambda path, live: None)  # (the check saw the header before the flip)
    with open(two.outbound, "r+b") as out:
        out.seek(18)
        out.write(b"\x02\x02")
    holder = subprocess.Popen([sys.executable, "-c", SHM_HOLDER, f"{two.outbound}-shm"], stdout=subprocess.PIPE,
                              text=True)
    result = _tick_beside(two, holder, ["locked"])
    assert result.errors == 0 and two.status(two.hostile, two.task) == "completed", two.sweeper.failing


def test_a_runner_that_plants_a_huge_journal_is_killed_before_the_host_rolls_it_back(tmp_path: Path) -> None:
    """A hot journal is rolled back at the next open, however large: a runner re-linking a 2 GiB one after each
    visit made every visit of its session take seconds (second attack review). One transaction's journal holds at
    most the pages it changed; one larger than twice the file and a MiB is the runner's doing."""
    two = Two(tmp_path)
    journal = Path(f"{two.outbound}-journal")
    with open(journal, "wb") as planted:
        planted.truncate(2 * two.outbound.stat().st_size + (1 << 20) + 1)  # (sparse: no disk)
    first = two.tick(T0 + timedelta(seconds=1))
    assert first.errors == 1 and two.runtime.stopped == [two.hostile.id]
    assert journal.stat().st_size > 1 << 20  # not rolled back while its runner lived
    journal.unlink()  # (its runner's doing; the next visit would roll it back once, the runner gone)
    assert two.tick(T0 + timedelta(seconds=2)).errors == 0
    assert two.status(two.hostile, two.task) == "completed"
