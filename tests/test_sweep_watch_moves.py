"""The idle sweep's watches follow the folder at a session's name, not the one they were made on (an inotify watch
is on an inode): a session folder, its group's or the sessions' root moved, restored, removed while held, linked,
or lost events, and what comes after is looked at."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from kit import World
from watching import T0, flood, passes, settled, trusted, written

from host.scheduling import changes, sweep
from host.scheduling.changes import Changes
from host.store.sessions import create_files
from schemas.inotify import IN_Q_OVERFLOW, Inotify
from schemas.times import to_text


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # As in test_sweep_changes.py: the sweeps look an hour after the files were written (settled at once).
    monkeypatch.setattr(sweep.clock, "filesystem_ns", lambda: time.time_ns() + 3600 * 10**9)
    return World(tmp_path)


def test_a_folder_moved_away_and_replaced_is_watched_where_it_now_is(tmp_path: Path) -> None:
    """An operator's restore: the session folder moved aside, another put in its place. The watch followed the old
    folder (an inotify watch is on the inode, not the name): it is dropped, and the folder at the name watched."""
    folder = tmp_path / "sess-a"
    watch = trusted(folder, "a")
    folder.rename(tmp_path / "aside")
    create_files(folder)
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is False
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is True
    written(folder / "outbound.db")  # a write into the folder now at the name is heard
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is False
    os.utime(tmp_path / "aside" / "outbound.db")  # and one into the old folder is not this session's
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is True
    watch.close()


def test_a_folder_replaced_while_the_queue_overflowed_is_watched_where_it_now_is(world: World) -> None:
    """A full queue drops events, a folder's IN_MOVE_SELF or IN_IGNORED among them. Lost events drop every watch:
    the folder an operator put at a session's name meanwhile is watched at its next look, and a later change to it
    is heard."""
    restored, flooder = world.session, world.new_session()
    sweeper = world.sweeper()
    try:
        n = settled(sweeper, 0)
        flood(flooder.folder)  # the queue filled ...
        aside = restored.folder.with_name("aside")
        restored.folder.rename(aside)  # ... while the operator restores this one (its IN_MOVE_SELF is dropped)
        shutil.copytree(aside, restored.folder, symlinks=True)
        assert sweeper.tick(T0 + timedelta(seconds=n)).sessions_opened >= 1  # the overflow: looked at once
        assert sweeper.tick(T0 + timedelta(seconds=n + 1)).sessions_opened == 0
        # Later, no runner alive: the operator schedules a task due now into the restored session.
        world.schedule(T0, at=to_text(T0), session=restored)
        result = sweeper.tick(T0 + timedelta(seconds=n + 2))
        assert result.sessions_opened == 1, "the operator's write to the restored session was not looked at"
    finally:
        sweeper.close()


def test_a_group_folder_moved_aside_and_restored_is_watched_where_it_now_is(world: World) -> None:
    """An operator's restore of a whole group (``mv <g> <g>.old; cp -a backup <g>``) while the host runs: the
    session folders' watches went with the old folders (they saw no IN_MOVE_SELF: only their parent moved). The
    group's folder is watched too: its move drops them, and the restored sessions are looked at."""
    session = world.session
    sweeper = world.sweeper()
    try:
        n = settled(sweeper, 0)
        group_dir = session.folder.parent
        old = group_dir.with_name(group_dir.name + ".old")
        group_dir.rename(old)
        shutil.copytree(old, group_dir, symlinks=True)
        world.schedule(T0, at=to_text(T0), session=session)  # a task due now, in the restored session's inbox
        result = sweeper.tick(T0 + timedelta(seconds=n))
        assert result.sessions_opened == 1, "the restored session's new task was not looked at"
    finally:
        sweeper.close()


def test_a_folder_removed_while_held_open_and_restored_is_watched_where_it_now_is(world: World) -> None:
    """A folder removed while a process still holds it (an operator's shell in it) gives neither IN_DELETE_SELF nor
    IN_IGNORED until the hold ends; its group folder's IN_DELETE of its name drops the watch."""
    session = world.session
    sweeper = world.sweeper()
    backup = session.folder.with_name("backup")
    holder = None
    try:
        n = settled(sweeper, 0)
        shutil.copytree(session.folder, backup, symlinks=True)
        holder = subprocess.Popen(["sleep", "60"], cwd=session.folder)  # the operator's shell, cd'ed into it
        shutil.rmtree(session.folder)
        shutil.copytree(backup, session.folder, symlinks=True)
        assert sweeper.tick(T0 + timedelta(seconds=n)).sessions_opened == 1  # the restore is seen (IN_DELETEs)
        assert sweeper.tick(T0 + timedelta(seconds=n + 1)).sessions_opened == 0
        world.schedule(T0, at=to_text(T0), session=session)  # a task due now, in the restored session's inbox
        result = sweeper.tick(T0 + timedelta(seconds=n + 2))
        assert result.sessions_opened == 1, "the operator's write to the restored session was not looked at"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        sweeper.close()


def test_after_lost_events_a_folder_moved_away_and_replaced_is_watched_where_it_now_is(tmp_path: Path) -> None:
    """The first case for ``Changes`` alone: a write into the folder now at the session's name is heard after an
    overflow lost the old folder's IN_MOVE_SELF."""
    folder, other = tmp_path / "sess-a", tmp_path / "sess-b"
    create_files(folder)
    create_files(other)
    watch = Changes()
    try:
        for _ in range(2):
            watch.begin(full=True)
            found = [watch.unchanged("a", str(folder)), watch.unchanged("b", str(other))]
        assert found == [True, True]
        flood(other)
        folder.rename(tmp_path / "aside")
        create_files(folder)
        watch.begin(full=True)
        assert watch.unchanged("a", str(folder)) is False  # the overflow: looked at once
        watch.begin(full=True)
        assert watch.unchanged("a", str(folder)) is True
        os.utime(folder / "inbound.db")  # a change to the folder now at the name
        watch.begin(full=True)
        assert watch.unchanged("a", str(folder)) is False, "a change to the session's folder was not heard"
    finally:
        watch.close()


@pytest.mark.parametrize("linked", ["sessions root", "group folder"])
def test_a_session_under_a_linked_folder_is_trusted_once_looked_at(tmp_path: Path, linked: str) -> None:
    """Where the sessions, or a group's, are kept is the operator's choice (a link to a bigger disk): the folders
    above a session's are watched through the link, and an idle session costs no stat."""
    disk = tmp_path / "disk"
    disk.mkdir()
    root = tmp_path / "data" / "v2-sessions"
    if linked == "sessions root":
        root.parent.mkdir()
        os.symlink(disk, root)
    else:
        root.mkdir(parents=True)
        os.symlink(disk, root / "ag-1")
    folder = root / "ag-1" / "sess-1"
    watch = trusted(folder)
    assert passes(watch, "sess-1", folder, 1) == [True]
    os.utime(folder / "inbound.db")
    watch.begin(full=True)
    assert watch.unchanged("sess-1", str(folder)) is False
    watch.close()


def test_a_session_whose_folder_is_another_now_is_watched_there(tmp_path: Path) -> None:
    """An operator moved a session to another group by hand (its folder copied, its row's group changed): the sweep's
    list gives the new folder, and the old one's watch is dropped with it (``keep_only``)."""
    old, new = tmp_path / "v2-sessions" / "ag-a" / "s", tmp_path / "v2-sessions" / "ag-b" / "s"
    watch = trusted(old, "s")
    create_files(new)
    watch.keep_only({"s": str(new)})  # (the list read again)
    assert passes(watch, "s", new, 2) == [False, True]
    os.utime(new / "inbound.db")
    watch.begin(full=True)
    assert watch.unchanged("s", str(new)) is False
    watch.close()


def test_an_inotify_instance_refused_for_a_moment_is_asked_for_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost events replace the instance; a new one refused (EMFILE: the host's descriptors all taken for a moment)
    is asked for again at the next pass, not given up for the host's life."""
    folder = tmp_path / "v2-sessions" / "ag-1" / "sess-1"
    watch = trusted(folder)
    assert watch._inotify is not None
    monkeypatch.setattr(watch._inotify, "drain", lambda: [(-1, IN_Q_OVERFLOW, "")])
    made = changes.Inotify

    def refused() -> Inotify:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(changes, "Inotify", refused)
    assert passes(watch, "sess-1", folder, 2) == [False, False]  # (none to be had still: looked at every pass)
    monkeypatch.setattr(changes, "Inotify", made)
    assert passes(watch, "sess-1", folder, 2) == [False, True]
    watch.close()
