"""Security boundaries (issue 11, point 7): files are private. Whatever the umask, the host and the CLI make the
data dir 0700 and the databases 0600 (group access only where a runner's uid needs it); ``ncl doctor`` warns
about a data dir other users can write or read; every command refuses a session or group folder that is a
symlink, in one line naming it; a central.db removed under a running host is reported, never recreated empty; a
session whose files cannot all be made (a full disk) leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_kit import Ncl, ok, one_line_error
from kit import World
from processes import ncl_command

from host.runtimes.workspace import hand_over


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual default umask, under which plain creation gives every local user read access."""
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def made(ncl: Ncl) -> str:
    """A group ``demo`` and one of its sessions; the session's id."""
    ok(ncl("groups", "create", "demo", "--channel", "cli", "--channel", "queue:jobs"))
    return str(ok(ncl("sessions", "create", "--group", "demo", "--json")).json()["id"])


def test_the_data_dir_is_0700_and_every_database_0600_whatever_the_umask(ncl: Ncl, cli_env: Any) -> None:
    session_id = made(ncl)
    ok(ncl("host", "sweep", "--once", "--now", "2026-06-11T13:00:00Z"))  # takes host.lock, opens every file
    data = cli_env.data_dir
    assert mode(data) == 0o700
    [folder] = (data / "v2-sessions").glob(f"*/{session_id}")
    assert mode(folder) == 0o700
    files = [data / "central.db", data / "host.lock", folder / "inbound.db", folder / "outbound.db"]
    files += [p for p in data.glob("central.db-*")]  # WAL and shared memory, if they are there
    assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root")
def test_a_root_host_grants_the_runner_uid_exactly_what_it_reads_and_writes(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        world = World(tmp_path)
    finally:
        os.umask(before)
    folder, group_dir = world.session.folder, world.settings.groups_dir / world.group.id
    hand_over(folder, group_dir, 10001, 10001)
    assert (mode(folder / "inbound.db"), (folder / "inbound.db").stat().st_gid) == (0o640, 10001)
    # its journal (kept for good) too: a reader that cannot open it takes it for a hot one and cannot read
    assert (mode(folder / "inbound.db-journal"), (folder / "inbound.db-journal").stat().st_gid) == (0o640, 10001)
    assert (mode(folder / "inbox"), (folder / "inbox").stat().st_gid) == (0o750, 10001)
    assert mode(folder) == 0o1770 and mode(folder / "outbox") == 0o1770
    assert (folder / "outbound.db").stat().st_uid == 10001 and mode(folder / "outbound.db") == 0o600
    world.central.close()


@pytest.mark.parametrize("bits, level, words", [(0o777, "warn", "can write"), (0o755, "warn", "can read"),
                                                (0o700, "ok", None)])
def test_doctor_warns_about_a_data_dir_other_users_can_reach(ncl: Ncl, cli_env: Any, bits: int, level: str,
                                                             words: str | None) -> None:
    made(ncl)
    os.chmod(cli_env.data_dir, bits)
    result = ncl("doctor", "--json")
    report = result.json()
    [check] = [c for c in report["checks"] if c["name"] == "data_dir"]
    assert check["level"] == level and check["ok"] is True
    assert (words is None) == ("can " not in check["detail"]) and (words is None or words in check["detail"])
    failing = [c for c in report["checks"] if c["level"] == "fail"]
    assert result.code == (1 if failing else 0)  # a warning alone never fails doctor


@pytest.mark.parametrize("command", [["messages", "list", "--session", "{sid}"],
                                     ["tasks", "list", "--session", "{sid}"],
                                     ["host", "sweep", "--once", "--now", "2026-06-11T13:00:00Z", "--json"]])
def test_every_command_refuses_a_session_folder_that_is_a_symlink(ncl: Ncl, cli_env: Any, command: list[str],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    session_id = made(ncl)
    [folder] = (cli_env.data_dir / "v2-sessions").glob(f"*/{session_id}")
    moved = cli_env.root / "moved"
    folder.rename(moved)
    folder.symlink_to(moved)
    result = ncl(*[part.replace("{sid}", session_id) for part in command])
    if command[0] == "host":  # the sweep goes on with the other sessions and counts this one as an error
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert result.json()["errors"] == 1 and str(folder) in logged and "symlink" in logged
        return
    line = one_line_error(result)
    assert str(folder) in line and "symlink" in line


def test_a_queue_send_refuses_a_group_folder_that_is_a_symlink(ncl: Ncl, cli_env: Any) -> None:
    made(ncl)
    [home] = (cli_env.data_dir / "groups").iterdir()
    moved = cli_env.root / "group-elsewhere"
    home.rename(moved)
    (moved / "notes.txt").write_text("notes")
    home.symlink_to(moved)
    payload = json.dumps({"prompt": [{"type": "file", "url": "room:///notes.txt"}]})
    line = one_line_error(ncl("queue", "send", "--queue", "jobs", "--json", payload))
    assert str(home) in line and "symlink" in line


HOLD_LOCK = """
import sys
from pathlib import Path
from host.files.lock import host_lock
with host_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_central_db_removed_under_a_running_host_is_reported_not_recreated(ncl: Ncl, cli_env: Any) -> None:
    made(ncl)
    # Leaving the block closes its pipes (stdin's EOF lets the lock go) and waits for it.
    with subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cli_env.data_dir)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        for name in ("central.db", "central.db-wal", "central.db-shm"):
            (cli_env.data_dir / name).unlink(missing_ok=True)
        for command in (["groups", "list"], ["sessions", "list"], ["groups", "create", "other"], ["status"]):
            line = one_line_error(ncl(*command))
            assert "central.db is missing but a host is running" in line, (command, line)
            assert not cli_env.central_db.exists()
        doctor = ncl("doctor", "--json")
        [schema] = [c for c in doctor.json()["checks"] if c["name"] == "schema"]
        assert doctor.code == 1 and schema["level"] == "fail" and "missing but a host is running" in schema["detail"]
    # No host, but the install's sessions: a new central.db would leave them orphaned (test below); moved away, first
    # use makes a new one.
    (cli_env.data_dir / "v2-sessions").rename(cli_env.data_dir / "old-sessions")
    ok(ncl("groups", "create", "again"))
    assert cli_env.central_db.exists()


@pytest.mark.parametrize("lost", ["removed", "emptied"])
def test_a_central_db_lost_beside_the_installs_sessions_is_reported_not_recreated(ncl: Ncl, cli_env: Any,
                                                                                  lost: str) -> None:
    """Its groups, wirings and tasks are only in central.db: an empty one made in its place (as first use does)
    left every session orphaned, its scheduled tasks never firing, and said nothing."""
    made(ncl)
    cli_env.central_db.unlink()
    if lost == "emptied":  # (as a first use stopped before its first commit leaves it: taken for a missing one)
        cli_env.central_db.write_bytes(b"")
    for command in (["groups", "list"], ["sessions", "list"], ["groups", "create", "other"], ["status"],
                    ["host", "sweep", "--once"]):
        line = one_line_error(ncl(*command))
        assert "central.db is missing but" in line and "holds sessions" in line and "backup" in line, (command, line)
        assert not cli_env.central_db.exists() or cli_env.central_db.stat().st_size == 0
    doctor = ncl("doctor", "--json")
    [schema] = [c for c in doctor.json()["checks"] if c["name"] == "schema"]
    assert doctor.code == 1 and schema["level"] == "fail" and "holds sessions" in schema["detail"]
    host = ncl("host", "run")  # refused before it starts anything
    assert one_line_error(host).endswith("move " + str(cli_env.data_dir / "v2-sessions") + " away)")


def _disk_full() -> None:
    """Writes past 48 KiB fail with EFBIG (as ENOSPC would), as a full disk fails SQLite mid-file."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))


def test_a_session_whose_files_cannot_be_made_leaves_nothing_behind(ncl: Ncl, cli_env: Any) -> None:
    made(ncl)
    sessions_dir = next((cli_env.data_dir / "v2-sessions").iterdir())
    before = sorted(p.name for p in sessions_dir.iterdir())
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([*ncl_command(), "sessions", "create", "--group", "demo"], cwd=cli_env.root, env=env,
                          capture_output=True, text=True, preexec_fn=_disk_full, timeout=60)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert sorted(p.name for p in sessions_dir.iterdir()) == before  # no folder, no hidden half-made one
    assert len(ok(ncl("sessions", "list", "--json")).json()["sessions"]) == 1
