"""Issue 3's idle sweep: a session whose folder saw no change since it was last looked at costs no stat (inotify on
each session folder, ``changes.Changes``); any change to either file, whoever makes it, is looked at by the next
sweep; where inotify cannot tell, every session is looked at."""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import RecordingRuntime, World
from watching import T0, flood, passes, trusted, written

from host.scheduling import changes, sweep
from host.scheduling.changes import Changes
from host.store.sessions import create_files
from schemas.inotify import IN_ATTRIB, IN_Q_OVERFLOW, Inotify
from schemas.times import to_text


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


def _renamed_over(path: Path) -> None:
    shutil.copy2(path, path.with_name("copy"))
    os.replace(path.with_name("copy"), path)


def _made_beside(path: Path) -> None:
    path.with_name(path.name + "-journal").unlink(missing_ok=True)


@pytest.mark.parametrize("change", [_touched, written, _renamed_over, _made_beside])
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


def test_lost_events_make_every_session_looked_at_once(tmp_path: Path) -> None:
    folders = [tmp_path / f"sess-{n}" for n in range(3)]
    for folder in folders:
        create_files(folder)
    watch = Changes()
    watch.begin(full=True)
    assert [watch.unchanged(f.name, str(f)) for f in folders] == [False] * 3  # watched from now
    watch.begin(full=True)
    assert [watch.unchanged(f.name, str(f)) for f in folders] == [True] * 3
    flood(folders[0])
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
    flood(busy.folder)  # what its runner makes
    for n in range(5, 8):
        looked.clear()
        sweeper.tick(T0 + timedelta(seconds=n))
        assert looked == [busy.id]  # the live session only, every pass; the idle one trusted still
    sweeper.close()


def test_a_session_watched_again_once_its_runner_is_gone(tmp_path: Path) -> None:
    folder = tmp_path / "v2-sessions" / "ag-1" / "sess-1"
    watch = trusted(folder)
    watch.live("sess-1")  # (the sweep asks nothing of it while its runner lives)
    flood(folder)
    assert passes(watch, "sess-1", folder, 2) == [False, True]  # no overflow, no flood read: watched, trusted
    watch.close()


