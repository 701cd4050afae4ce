"""Issue 7, fault injection: broken sessions beside healthy ones, under one real ``ncl host run`` (local runners).

Broken, each in a session of its own:
- ``hot``: a hot journal next to outbound.db, made for real: a child process writes in a transaction (spilling
  pages into the file) and is SIGKILLed before COMMIT, as a runner killed mid-write would be;
- ``truncated``: inbound.db cut to its first page;
- ``garbled``: inbound.db with a due task, then its ``messages_in`` page overwritten (the header and schema intact);
- ``gone``: the session folder deleted under the running host, its runner alive;
- ``full``: the session folder on a tiny tmpfs filled to the last byte, with a task due (needs root and mount;
  skipped, saying so, without them).

The host must keep serving the others (a chat to ``alpha`` is answered, a task in ``beta`` fires), repair what it
can (``hot``), and ``ncl doctor --json`` must name each broken session. One host run is shared by the tests below;
each asserts one promise, so a product gap fails (xfail) alone.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import e2e_scenario as scenario
import pytest
from faultkit import inbound_rows, scenario_step, short_root
from processes import Env

from host import settings as settings_module
from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.store import db, groups, sessions
from schemas import clock, ids

pytestmark = pytest.mark.slow

GROUPS = ("alpha", "beta", "hot", "truncated", "garbled", "gone", "full")
PAGE = 4096
# Begin a write transaction on outbound.db, write far more than a one-page cache holds (so changed pages reach the
# file before COMMIT: the journal is needed to undo them), then die by SIGKILL inside the transaction.
HOT_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size=1")
conn.execute("BEGIN IMMEDIATE")
for n in range(200):
    conn.execute("INSERT OR REPLACE INTO session_state(key, value, updated_at) VALUES (?, ?, ?)",
                 (f"half-written {n}", "x" * 2000, "2026-01-01T00:00:00.000Z"))
os.kill(os.getpid(), signal.SIGKILL)
"""


@dataclass
class Broken:
    folders: dict[str, Path] = field(default_factory=dict)
    session_ids: dict[str, str] = field(default_factory=dict)
    journal_was_hot: bool = False
    full_disk: str | None = None  # why the full-disk case could not be set up, if it could not
    doctor_before: dict[str, Any] = field(default_factory=dict)  # the host not started yet
    doctor_during: dict[str, Any] = field(default_factory=dict)  # the host running, every fault in place
    replies: dict[str, list[str]] = field(default_factory=dict)  # group -> texts of the chat replies it got
    beta_runs: list[dict[str, Any]] = field(default_factory=list)
    failed_sessions: set[str] = field(default_factory=set)  # sessions the host logged session_failed for
    host_exit: int | None = None
    full_log: list[str] = field(default_factory=list)  # what the host logged about the full-disk session
    journal_hot_after: bool = True  # outbound.db-journal holds something (its runner keeps an empty one)


def _make_hot_journal(outbound: Path) -> bool:
    done = subprocess.run([sys.executable, "-c", HOT_WRITER, str(outbound)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    journal = outbound.with_name("outbound.db-journal")
    # A reader that may not write cannot roll it back: proof that the journal is hot, not a leftover.
    probe = subprocess.run(["sqlite3", f"file:{outbound}?mode=ro", "SELECT COUNT(*) FROM session_state"],
                           capture_output=True, text=True, timeout=30, check=False)
    return journal.stat().st_size > 0 and probe.returncode != 0


def _fill_on_tmpfs(folder: Path) -> str | None:
    """Put the session folder on a 192 KiB tmpfs and fill it; None if done, else why it could not be."""
    if os.geteuid() != 0:
        return "not root: cannot mount a tmpfs"
    saved = folder.with_name(folder.name + ".saved")
    shutil.copytree(folder, saved)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k,mode=0755", "ncl-fault-full", str(folder)],
                             capture_output=True, text=True, timeout=30, check=False)
    if mounted.returncode != 0:
        shutil.rmtree(saved)
        return f"mount not permitted here: {mounted.stderr.strip()}"
    shutil.copytree(saved, folder, dirs_exist_ok=True)
    shutil.rmtree(saved)
    with suppress(OSError), (folder / "filler").open("wb") as filler:  # ENOSPC ends it: not one byte is left
        while True:
            filler.write(b"\0" * PAGE)
            filler.flush()
    return None


def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30, check=False).returncode:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30, check=False)


def _delete_under_host(folder: Path) -> None:
    """``rm -rf`` of a session folder under the running host, which may make a file in it meanwhile (a visit's or a
    reply's open of inbound.db keeps its journal there): removed by the next pass, as an operator would retry."""
    for _ in range(100):
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
        else:
            return
    raise AssertionError(f"{folder} kept being written in while it was removed")


def _doctor(env: Env) -> dict[str, Any]:
    done = env.ncl("doctor", "--json")
    assert done.returncode in (0, 1), done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def _reply(env: Env, group: str, text: str) -> list[str]:
    done = env.ncl("chat", group, text, "--json", "--timeout", "60")
    assert done.returncode == 0, (group, done.stderr)
    return [r["text"] for r in json.loads(done.stdout)["replies"]]


@pytest.fixture(scope="module")
def broken() -> Iterator[Broken]:
    seen = Broken()
    with short_root() as root, scenario_step("the broken-sessions scenario"):
        env = Env(root)
        settings = settings_module.load(environ=env.vars, cwd=root)
        settings.data_dir.mkdir(parents=True)
        now = clock.now()
        with closing(db.connect(settings.central_db, "central")) as central:
            for name in GROUPS:
                group, _ = groups.create(central, settings, now, name, ["cli"])
                session = sessions.create(central, settings, now, group, "cli")  # the session `ncl chat` uses
                seen.folders[name], seen.session_ids[name] = session.folder, session.id
        folders = seen.folders
        seen.journal_was_hot = _make_hot_journal(folders["hot"] / "outbound.db")
        with (folders["truncated"] / "inbound.db").open("r+b") as inbound:
            inbound.truncate(PAGE)
        with closing(db.connect(folders["garbled"] / "inbound.db", "inbound")) as conn:
            # Something to do, so the host must read the table: a sweep of an empty inbox reads indexes only.
            tasks.schedule(conn, now, Policy.of(settings), ids.new_id("task", now), "due in a garbled inbox",
                           enforce_interval=False)
            root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages_in'").fetchone()[0]
        with (folders["garbled"] / "inbound.db").open("r+b") as inbound:
            inbound.seek((root - 1) * PAGE)  # the messages_in table's root page
            inbound.write(b"\xff" * PAGE)
        with closing(db.connect(folders["full"] / "inbound.db", "inbound")) as conn:
            tasks.schedule(conn, now, Policy.of(settings), ids.new_id("task", now), "due on a full disk",
                           enforce_interval=False)
        # What the host keeps of its journal (db.INBOUND_JOURNAL_KEEP), a small commit writes over even on a full
        # disk: cut, so that the host's next commit there needs room, and fails.
        os.truncate(folders["full"] / "inbound.db-journal", 0)
        seen.full_disk = _fill_on_tmpfs(folders["full"])
        try:
            seen.doctor_before = _doctor(env)
            # Room for every session's runner at once: the broken ones must not cost the others their turn.
            with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60", NCL_MAX_RUNNERS=str(len(GROUPS))) as host:
                seen.replies["gone"] = _reply(env, "gone", "hello before the folder goes")
                _delete_under_host(folders["gone"])  # its runner alive in it
                seen.replies["alpha"] = _reply(env, "alpha", "ping")
                seen.replies["hot"] = _reply(env, "hot", "are you back?")
                asked = _reply(env, "beta", "/schedule_task " + json.dumps({"prompt": "beta's task"}))
                task_id = asked[0].split("id: ", 1)[1].split(",", 1)[0]
                seen.beta_runs = scenario.until(host, lambda: inbound_rows(
                    folders["beta"], "SELECT * FROM task_runs WHERE series_id = ?", (task_id,)), 30, "beta's task")
                if seen.full_disk is None:  # its runner fails to start 3 times, then the host's notice write fails
                    scenario.until(host, lambda: scenario.action_lines(host, "session_failed", seen.session_ids[
                        "full"]), 60, "the full-disk session failing in the sweep")
                seen.doctor_during = _doctor(env)
                assert host.proc.poll() is None
            seen.host_exit = host.proc.returncode
            seen.failed_sessions = {sid for sid in seen.session_ids.values()
                                    if scenario.action_lines(host, "session_failed", sid)}
            journal = folders["hot"] / "outbound.db-journal"
            seen.journal_hot_after = journal.exists() and journal.stat().st_size > 0
            seen.full_log = [line for line in host.seen if seen.session_ids["full"] in line and ": DEBUG: " not in line]
        finally:
            if seen.full_disk is None:
                _unmount(folders["full"])
        yield seen


def _named(doctor: dict[str, Any], folder: Path) -> bool:
    return any(not check["ok"] and str(folder) in check["detail"] for check in doctor["checks"])


def test_other_sessions_are_served_while_five_are_broken(broken: Broken) -> None:
    assert broken.replies["alpha"] == ["mock: ping"]
    assert [r["outcome"] for r in broken.beta_runs] == ["ran"]
    assert broken.host_exit == 0  # it stayed up throughout and stopped cleanly on SIGTERM


def test_broken_sessions_are_logged_and_skipped(broken: Broken) -> None:
    ids_ = broken.session_ids
    assert {n for n in ("truncated", "garbled", "gone") if ids_[n] not in broken.failed_sessions} == set()
    assert ids_["alpha"] not in broken.failed_sessions and ids_["beta"] not in broken.failed_sessions


def test_the_host_rolls_back_a_hot_journal_and_serves_that_session(broken: Broken) -> None:
    assert broken.journal_was_hot  # the fault was real: a read-only reader could not get past it
    assert broken.replies["hot"] == ["mock: are you back?"]
    assert not broken.journal_hot_after
    assert not _named(broken.doctor_during, broken.folders["hot"])  # repaired, so no longer reported


def test_doctor_names_a_session_with_a_hot_journal(broken: Broken) -> None:
    assert _named(broken.doctor_before, broken.folders["hot"]), broken.doctor_before


def test_doctor_names_a_truncated_inbound(broken: Broken) -> None:
    assert _named(broken.doctor_before, broken.folders["truncated"]), broken.doctor_before
    assert _named(broken.doctor_during, broken.folders["truncated"]), broken.doctor_during


def test_doctor_names_a_session_folder_deleted_under_the_host(broken: Broken) -> None:
    assert broken.replies["gone"] == ["mock: hello before the folder goes"]
    assert _named(broken.doctor_during, broken.folders["gone"]), broken.doctor_during


def test_doctor_names_an_inbound_with_corrupt_pages(broken: Broken) -> None:
    assert broken.session_ids["garbled"] in broken.failed_sessions  # the host cannot use it …
    assert _named(broken.doctor_during, broken.folders["garbled"]), broken.doctor_during  # … doctor should say so


def test_a_full_disk_session_does_not_stop_the_others(broken: Broken) -> None:
    if broken.full_disk is not None:
        pytest.skip(broken.full_disk)
    assert any("[action=runner_start_failed " in line for line in broken.full_log)  # the fault was real
    assert broken.replies["alpha"] == ["mock: ping"] and broken.host_exit == 0


def test_the_log_says_why_a_full_disk_session_fails(broken: Broken) -> None:
    if broken.full_disk is not None:
        pytest.skip(broken.full_disk)
    failed = [line for line in broken.full_log if "[action=session_failed " in line]
    assert failed and all("full" in line.split("[action=")[0] for line in failed), failed


def test_doctor_names_a_session_on_a_full_disk(broken: Broken) -> None:
    if broken.full_disk is not None:
        pytest.skip(broken.full_disk)
    assert _named(broken.doctor_during, broken.folders["full"]), broken.doctor_during
