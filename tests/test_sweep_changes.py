"""Issue 3's idle sweep: a session whose folder saw no change since it was last looked at costs no stat (inotify on
each session folder, ``changes.Changes``); any change to either file, whoever makes it, is looked at by the next
sweep; where inotify cannot tell, every session is looked at."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import RecordingRuntime, World, utc

from host.scheduling import changes, sweep
from host.scheduling.changes import Changes
from host.store.sessions import create_files
from schemas.inotify import IN_ATTRIB, IN_Q_OVERFLOW, Inotify
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # The sweeps look an hour after the files were last written: past the coarse-ctime guard, without a sleep.
    monkeypatch.setattr(sweep.clock, "filesystem_ns", lambda: time.time_ns() + 3600 * 10**9)
    return World(tmp_path)


def _stats_counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    looked: list[str] = []
    real = sweep.files_of

    def counted(path: str) -> tuple[int, ...]:
        looked.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(sweep, "files_of", counted)
    return looked


def _touched(path: Path) -> None:
    os.utime(path)


def _written(path: Path) -> None:
    with open(path, "r+b") as file:
        head = file.read(100)
        file.seek(0)
        file.write(head)


def _renamed_over(path: Path) -> None:
    shutil.copy2(path, path.with_name("copy"))
    os.replace(path.with_name("copy"), path)


def _made_beside(path: Path) -> None:
    path.with_name(path.name + "-journal").unlink(missing_ok=True)


@pytest.mark.parametrize("change", [_touched, _written, _renamed_over, _made_beside])
@pytest.mark.parametrize("name", ["inbound.db", "outbound.db"])
def test_an_idle_sweep_stats_only_the_sessions_whose_folder_changed(
        world: World, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None], name: str) -> None:
    others = [world.new_session() for _ in range(4)]
    world.schedule(T0, at=to_text(T0 + timedelta(days=1)), session=others[0])
    sweeper = world.sweeper()
    looked = _stats_counted(monkeypatch)
    ticks = [sweeper.tick(T0 + timedelta(seconds=n)) for n in range(3)]
    assert [t.sessions_opened for t in ticks] == [5, 0, 0]
    assert len(looked) == 10  # each session stat'ed twice (its visit, then the look that watches it), then never
    looked.clear()
    change(others[2].folder / name)
    result = sweeper.tick(T0 + timedelta(seconds=3))
    assert looked == [others[2].id] and result.sessions_opened == (change is not _made_beside)
    assert sweeper.tick(T0 + timedelta(seconds=4)).sessions_opened == 0
    sweeper.close()


def test_every_tenth_full_sweep_looks_at_every_session_and_partial_ones_do_not_count(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = [world.session, world.new_session()]
    sweeper = world.sweeper()
    for n in range(2):
        sweeper.tick(T0 + timedelta(seconds=n))
    looked = _stats_counted(monkeypatch)
    for _ in range(20):  # partial sweeps (an arrival's) of one session: no full look comes of them
        sweeper.tick(T0 + timedelta(seconds=2), only={sessions[0].id})
    assert looked == []
    counts = []
    for n in range(2, 2 + 2 * changes.FULL_LOOK_EVERY):
        looked.clear()
        sweeper.tick(T0 + timedelta(seconds=n))
        counts.append(len(looked))
    assert sorted(counts) == [0] * (2 * changes.FULL_LOOK_EVERY - 2) + [2, 2]
    assert counts.index(2) + changes.FULL_LOOK_EVERY == len(counts) - 1 - counts[::-1].index(2)
    sweeper.close()


def _flood(folder: Path) -> None:
    """More distinct events than the kernel's queue holds."""
    queued = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    for _ in range(queued // 2 + 10):
        os.utime(folder / "inbound.db")
        os.utime(folder / "outbound.db")


def _passes(watch: Changes, session_id: str, folder: Path, count: int) -> list[bool]:
    """What ``count`` full passes are told of the session: True, trusted unchanged."""
    found = []
    for _ in range(count):
        watch.begin(full=True)
        found.append(watch.unchanged(session_id, str(folder)))
    return found


def _trusted(folder: Path, session_id: str = "sess-1") -> Changes:
    """The session made at ``folder``, and a ``Changes`` that has looked at it twice: watched, and trusted."""
    create_files(folder)
    watch = Changes()
    assert _passes(watch, session_id, folder, 2) == [False, True]
    return watch


def test_lost_events_make_every_session_looked_at_once(tmp_path: Path) -> None:
    folders = [tmp_path / f"sess-{n}" for n in range(3)]
    for folder in folders:
        create_files(folder)
    watch = Changes()
    watch.begin(full=True)
    assert [watch.unchanged(f.name, str(f)) for f in folders] == [False] * 3  # watched from now
    watch.begin(full=True)
    assert [watch.unchanged(f.name, str(f)) for f in folders] == [True] * 3
    _flood(folders[0])
    watch.begin(full=True)
    assert [watch.unchanged(f.name, str(f)) for f in folders] == [False] * 3
    watch.begin(full=True)
    assert [watch.unchanged(f.name, str(f)) for f in folders] == [True] * 3
    watch.close()


def test_a_session_gone_is_no_longer_watched_and_one_made_again_in_its_place_is(tmp_path: Path) -> None:
    folder, other = tmp_path / "sess-a", tmp_path / "sess-b"
    create_files(folder)
    create_files(other)
    watch = Changes()
    for _ in range(2):
        watch.begin(full=True)
        found = [watch.unchanged("a", str(folder)), watch.unchanged("b", str(other))]
    assert found == [True, True]
    shutil.rmtree(folder)  # the folder removed: its watch ends with it
    create_files(folder)
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is False
    watch.keep_only({"a": str(folder)})  # b no longer active
    watch.begin(full=True)
    assert (watch.unchanged("a", str(folder)), watch.unchanged("b", str(other))) == (True, False)
    os.utime(folder / "outbound.db")
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is False
    watch.close()


def test_a_folder_moved_away_and_replaced_is_watched_where_it_now_is(tmp_path: Path) -> None:
    """An operator's restore: the session folder moved aside, another put in its place. The watch followed the old
    folder (an inotify watch is on the inode, not the name): it is dropped, and the folder at the name watched."""
    folder = tmp_path / "sess-a"
    watch = _trusted(folder, "a")
    folder.rename(tmp_path / "aside")
    create_files(folder)
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is False
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is True
    _written(folder / "outbound.db")  # a write into the folder now at the name is heard
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is False
    os.utime(tmp_path / "aside" / "outbound.db")  # and one into the old folder is not this session's
    watch.begin(full=True)
    assert watch.unchanged("a", str(folder)) is True
    watch.close()


@pytest.mark.parametrize("why", ["no inotify", "no room for a watch", "one-off sweep"])
def test_where_it_cannot_tell_every_session_is_looked_at_every_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, why: str) -> None:
    folders = [tmp_path / f"sess-{n}" for n in range(2)]
    for folder in folders:
        create_files(folder)

    def refused(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    if why == "no inotify":
        monkeypatch.setattr(changes.Inotify, "__init__", refused)
    elif why == "no room for a watch":
        monkeypatch.setattr(changes.Inotify, "watch", refused)
    with caplog.at_level("INFO", logger="host.scheduling.changes"):
        watch = Changes(watching=why != "one-off sweep")
        for _ in range(3):
            watch.begin(full=True)
            assert [watch.unchanged(f.name, str(f)) for f in folders] == [False, False]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == (0 if why == "one-off sweep" else 1)  # said once, not every pass
    watch.close()


def test_it_watches_at_most_its_share_of_the_users_watches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The rest are the runners' (a local runner waits on one for its inbox) and the live runners' journals'."""
    limit = tmp_path / "max_user_watches"
    limit.write_text("8\n")
    monkeypatch.setattr(changes, "LIMIT", str(limit))
    folders = [tmp_path / "sessions" / "group" / f"sess-{n}" for n in range(3)]
    for folder in folders:
        create_files(folder)
    with caplog.at_level("WARNING", logger="host.scheduling.changes"):
        watch = Changes()
        watch.unchanged("gone", str(tmp_path / "sessions" / "group" / "missing"))  # (a refusal said no more)
        for _ in range(3):
            watch.begin(full=True)
            found = [watch.unchanged(f.name, str(f)) for f in folders]
    # Four watched (half of 8): the two folders above the sessions', two sessions'; the third looked at every time.
    assert found == [True, True, False]
    assert ["4 folders watched, 50% of what" in r.getMessage() for r in caplog.records] == [True]
    watch.close()


def test_a_drain_reads_no_more_than_its_bound_and_says_that_events_were_left(tmp_path: Path) -> None:
    """A runner that makes events as fast as they are read would keep the sweep draining them for as long as it
    likes: a drain stops at its bound, and what it left counts as lost (every session looked at, as on overflow)."""
    create_files(tmp_path / "sess")
    watch = Inotify()
    watch.watch(tmp_path / "sess", IN_ATTRIB)
    for _ in range(200):  # 400 distinct events (alternating names: none merged with the one before)
        os.utime(tmp_path / "sess" / "inbound.db")
        os.utime(tmp_path / "sess" / "outbound.db")
    first = watch.drain(limit=2048)
    assert first[-1] == (-1, IN_Q_OVERFLOW, "") and 0 < len(first) - 1 <= 2048 // 32
    rest = watch.drain()
    assert len(first) - 1 + len(rest) == 400 and (-1, IN_Q_OVERFLOW, "") not in rest
    assert [name for _, _, name in first[:4]] == ["inbound.db", "outbound.db"] * 2
    watch.close()


def _settled(sweeper: sweep.Sweeper, start: int) -> int:
    """Ticks until every session is visited, watched and trusted."""
    opened = [sweeper.tick(T0 + timedelta(seconds=start + n)).sessions_opened for n in range(3)]
    assert opened[-1] == 0
    return start + 3


def test_a_folder_replaced_while_the_queue_overflowed_is_watched_where_it_now_is(world: World) -> None:
    """A full queue drops events, a folder's IN_MOVE_SELF or IN_IGNORED among them. Lost events drop every watch:
    the folder an operator put at a session's name meanwhile is watched at its next look, and a later change to it
    is heard."""
    restored, flooder = world.session, world.new_session()
    sweeper = world.sweeper()
    try:
        n = _settled(sweeper, 0)
        _flood(flooder.folder)  # the queue filled ...
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
        n = _settled(sweeper, 0)
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
        n = _settled(sweeper, 0)
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
        _flood(other)
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


def test_a_live_runner_flooding_its_folder_costs_the_other_sessions_nothing(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose runner is alive is looked at every pass: its folder is not watched while it lives, so a
    runner writing at will, or flooding its folder with events, fills no queue (which would make every other
    session looked at again, and each pass read what it made). Watched again at its first look after."""
    busy = world.new_session()  # (beside world.session, idle)
    runtime = RecordingRuntime()
    sweeper = world.sweeper(runtime)
    for n in range(3):
        sweeper.tick(T0 + timedelta(seconds=n))
    world.schedule(T0, at=to_text(T0), session=busy)
    sweeper.tick(T0 + timedelta(seconds=3))  # its runner started
    assert runtime.running == {busy.id}
    looked = _stats_counted(monkeypatch)
    sweeper.tick(T0 + timedelta(seconds=4))
    _flood(busy.folder)  # what its runner makes
    for n in range(5, 8):
        looked.clear()
        sweeper.tick(T0 + timedelta(seconds=n))
        assert looked == [busy.id]  # the live session only, every pass; the idle one trusted still
    sweeper.close()


def test_a_session_watched_again_once_its_runner_is_gone(tmp_path: Path) -> None:
    folder = tmp_path / "v2-sessions" / "ag-1" / "sess-1"
    watch = _trusted(folder)
    watch.live("sess-1")  # (the sweep asks nothing of it while its runner lives)
    _flood(folder)
    assert _passes(watch, "sess-1", folder, 2) == [False, True]  # no overflow, no flood read: watched, trusted
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
    watch = _trusted(folder)
    assert _passes(watch, "sess-1", folder, 1) == [True]
    os.utime(folder / "inbound.db")
    watch.begin(full=True)
    assert watch.unchanged("sess-1", str(folder)) is False
    watch.close()


def test_a_session_whose_folder_is_another_now_is_watched_there(tmp_path: Path) -> None:
    """An operator moved a session to another group by hand (its folder copied, its row's group changed): the sweep's
    list gives the new folder, and the old one's watch is dropped with it (``keep_only``)."""
    old, new = tmp_path / "v2-sessions" / "ag-a" / "s", tmp_path / "v2-sessions" / "ag-b" / "s"
    watch = _trusted(old, "s")
    create_files(new)
    watch.keep_only({"s": str(new)})  # (the list read again)
    assert _passes(watch, "s", new, 2) == [False, True]
    os.utime(new / "inbound.db")
    watch.begin(full=True)
    assert watch.unchanged("s", str(new)) is False
    watch.close()


def test_an_inotify_instance_refused_for_a_moment_is_asked_for_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost events replace the instance; a new one refused (EMFILE: the host's descriptors all taken for a moment)
    is asked for again at the next pass, not given up for the host's life."""
    folder = tmp_path / "v2-sessions" / "ag-1" / "sess-1"
    watch = _trusted(folder)
    assert watch._inotify is not None
    monkeypatch.setattr(watch._inotify, "drain", lambda: [(-1, IN_Q_OVERFLOW, "")])
    made = changes.Inotify

    def refused() -> Inotify:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(changes, "Inotify", refused)
    assert _passes(watch, "sess-1", folder, 2) == [False, False]  # (none to be had still: looked at every pass)
    monkeypatch.setattr(changes, "Inotify", made)
    assert _passes(watch, "sess-1", folder, 2) == [False, True]
    watch.close()
