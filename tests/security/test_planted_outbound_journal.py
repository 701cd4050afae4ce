"""What a runner leaves as ``outbound.db-journal`` never stalls the host (third attack review). SQLite looks for a
hot journal at the first read of outbound.db: it opens the journal read-only, which blocks for ever on a FIFO, and
rolls back whatever a hot one holds. A FIFO there hung the sweep (its thread or a worker, every session with it);
a dead runner's sparse journal of gigabytes made the sweep roll it back for seconds. Now a live runner's is refused
(the runner is killed), a dead runner's is removed unread."""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from kit import World, utc
from test_locked_files import Two

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from host.runtimes.workspace import JOURNAL, keep_journal
from host.scheduling import visitors
from host.scheduling.sweep import SweepResult
from host.store import db, outbox, views
from host.store.sessions import Session
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
WAIT_S = 10.0
MANY = visitors.MIN_VISITS + 8


@contextmanager
def released(fifo: Path) -> Iterator[None]:
    """Fails the test, rather than hang it, if the host blocked on ``fifo``: a writer opening it lets the host's
    blocked open return."""
    try:
        yield
    finally:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            blocked = True
        except OSError:  # no reader waiting on it (or gone): nothing was blocked
            blocked = False
    if blocked:
        pytest.fail(f"the host blocked opening {fifo}")


def _within(work: Callable[[], object], fifo: Path) -> object:
    """``work()`` in a thread that must end within WAIT_S; a thread blocked on ``fifo`` is released, and fails."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    thread.join(WAIT_S)
    if thread.is_alive():
        with released(fifo):
            thread.join(WAIT_S)
    assert out, "the work failed"
    return out[0]


def _replaced(journal: Path, make: Callable[[Path], object]) -> None:
    """What a runner plants in place of the (empty) journal its SQLite keeps."""
    journal.unlink(missing_ok=True)
    make(journal)


def _dead_runners(world: World, count: int) -> list[Session]:
    listed = [world.session] + [world.new_session() for _ in range(count - 1)]
    for session in listed:
        world.schedule(T0 - timedelta(minutes=5), at=to_text(T0), session=session)
    return listed


@pytest.mark.parametrize("in_workers", [False, True], ids=["by-the-sweeps-thread", "by-a-worker"])
def test_a_fifo_left_as_a_dead_runners_journal_is_removed_and_the_sweep_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, in_workers: bool) -> None:
    if in_workers:
        monkeypatch.setattr(visitors, "WORKERS", 2)
        monkeypatch.setattr(visitors, "FIRST_VISITS", MANY)
    world = World(tmp_path)
    listed = _dead_runners(world, MANY if in_workers else 2)
    fifo = listed[1].folder / "outbound.db-journal"
    _replaced(fifo, os.mkfifo)
    sweeper = world.sweeper()  # no runtime: no runner lives
    caplog.set_level(logging.WARNING)

    def tick() -> SweepResult:
        try:
            return sweeper.tick(T0)
        finally:
            sweeper.close()  # (its central.db connection is the thread's)

    result = _within(tick, fifo)
    assert isinstance(result, SweepResult) and result.errors == 0 and result.woken == len(listed)
    assert not os.path.lexists(fifo)
    assert [r.message for r in caplog.records if getattr(r, "action", None) == "planted_journal_removed"] == [
        f"removed {fifo}, left by the session's runner: it is not a regular file"]


def test_a_directory_left_as_a_dead_runners_journal_is_removed_without_following_a_link_in_it(
        tmp_path: Path) -> None:
    world = World(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the runner's")
    journal = world.session.folder / "outbound.db-journal"
    _replaced(journal, os.mkdir)
    (journal / "link").symlink_to(outside)
    found = outbox.read(world.session.folder / "outbound.db", [], 0, writable=True)
    assert found.acks == {} and not os.path.lexists(journal)
    assert (outside / "keep").read_text() == "not the runner's"


ACK = "msg-1779109200000-aaaaaa"


@pytest.mark.parametrize("copies", [1, 60], ids=["a-real-one-is-rolled-back", "a-larger-one-is-removed-unread"])
def test_a_dead_runners_hot_journal_is_rolled_back_unless_no_transaction_could_have_written_it(
        tmp_path: Path, copies: int, caplog: pytest.LogCaptureFixture) -> None:
    """A runner killed mid-commit leaves a hot journal the size of what its transaction changed: rolled back at the
    open. One larger than twice the file and a MiB is planted (sparse, it costs the runner no disk, and a rollback
    of gigabytes took the sweep seconds): removed unread, what it holds never written into outbound.db."""
    world = World(tmp_path)
    path = world.session.folder / "outbound.db"
    before = path.read_bytes()
    world.ack(ACK, "completed", T0)
    journal = Path(f"{path}-journal")
    journal.write_bytes(_journal_of(before, copies))  # as the ack's transaction would have left it, killed
    planted = journal.stat().st_size > 2 * path.stat().st_size + (1 << 20)
    assert planted == (copies > 1)
    found = outbox.read(path, [ACK], 0, writable=True)
    assert list(found.acks) == ([ACK] if planted else [])
    assert not journal.exists() or journal.read_bytes()[:8] != bytes.fromhex("d9d505f920a163d7")  # no hot one left
    removed = [r for r in caplog.records if getattr(r, "action", None) == "planted_journal_removed"]
    assert len(removed) == planted


def _journal_of(original: bytes, copies: int) -> bytes:
    """A rollback journal restoring ``original`` (every page of it, ``copies`` times over), as SQLite writes one."""
    page = int.from_bytes(original[16:18], "big") or 65536
    pages, nonce = len(original) // page, 0x5EED
    records = b""
    for number in range(1, pages + 1):
        data = original[(number - 1) * page:number * page]
        checksum = (nonce + sum(data[i] for i in range(page - 200, 0, -200))) & 0xFFFFFFFF
        records += struct.pack(">I", number) + data + struct.pack(">I", checksum)
    header = bytes.fromhex("d9d505f920a163d7") + struct.pack(">IIIII", pages * copies, nonce, pages, 512, page)
    return header + bytes(512 - len(header)) + records * copies


def test_a_live_runners_fifo_journal_gets_it_killed_and_never_holds_the_sweep(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    two = Two(tmp_path)
    fifo = Path(f"{two.outbound}-journal")
    _replaced(fifo, os.mkfifo)
    with released(fifo):
        result = two.tick(T0 + timedelta(seconds=1))
    assert result.errors == 1 and two.runtime.stopped == [two.hostile.id]
    assert two.status(two.other, two.later) == "completed"
    assert [r.message for r in caplog.records if getattr(r, "action", None) == "runner_killed"] == [
        f"killing the runner of {two.hostile.id}: {fifo} is not a regular file: its runner planted it"]
    with released(fifo):  # the next visit, its runner gone, removes it
        assert two.tick(T0 + timedelta(seconds=2)).errors == 0
    assert not os.path.lexists(fifo) and two.status(two.hostile, two.task) == "completed"


@pytest.mark.parametrize("read", [lambda path: outbox.claimed(path, ["msg-1779109200000-aaaaaa"]), outbox.model_wait],
                         ids=["claims-for-a-task-command", "model-wait-for-ncl-chat"])
def test_other_reads_of_a_live_runners_file_refuse_a_fifo_journal(tmp_path: Path,
                                                                   read: Callable[[Path], object]) -> None:
    world = World(tmp_path)
    path = world.session.folder / "outbound.db"
    _replaced(Path(f"{path}-journal"), os.mkfifo)
    def refused() -> str:
        with pytest.raises(db.Tampered) as caught:
            read(path)
        return str(caught.value)

    with closing(world.central):
        said = _within(refused, Path(f"{path}-journal"))
    assert said == f"{path}-journal is not a regular file: its runner planted it"


def test_a_runners_journal_is_made_before_its_start_and_what_a_gone_runner_left_there_replaced(tmp_path: Path) -> None:
    """The container gets outbound.db's journal as a mount of its own (``workspace.keep_journal``): it must be a
    regular file of the host's making before the start. A real hot journal is kept for the runner to roll back."""
    world = World(tmp_path)
    folder = world.session.folder
    journal = folder / JOURNAL
    keep_journal(folder)
    assert journal.is_file() and not journal.is_symlink() and journal.stat().st_size == 0
    for planted in (lambda: os.mkfifo(journal), journal.mkdir, lambda: journal.symlink_to(tmp_path)):
        journal.unlink()
        planted()
        keep_journal(folder)
        assert journal.is_file() and not journal.is_symlink() and journal.stat().st_size == 0
    journal.write_bytes(b"hot")
    keep_journal(folder)
    assert journal.read_bytes() == b"hot"


def test_the_runners_commits_keep_its_journal(tmp_path: Path) -> None:
    """In a container the journal is a mount point, which a DELETE-mode commit could not remove."""
    world = World(tmp_path)
    journal = world.session.folder / JOURNAL
    keep_journal(world.session.folder)
    store = Store(RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="UTC"))
    store.set_state("probe", "1", T0)
    assert journal.is_file() and journal.stat().st_size == 0


@pytest.mark.parametrize("read", [
    lambda path: outbox.read(path, [ACK], 0, writable=False, wait_s=outbox.RUNNER_WAIT_S),
    lambda path: outbox.read(path, [ACK], 0, writable=True),
    lambda path: outbox.claimed(path, [ACK]),
    outbox.model_wait,
    lambda path: views.transcript(path.parent),
], ids=["a-live-runners-visit", "a-dead-runners-visit", "claims-for-a-task-command", "model-wait-for-ncl-chat",
        "ncl-messages-list"])
def test_a_hot_journal_the_host_rolls_back_keeps_its_name(tmp_path: Path, read: Callable[[Path], object]) -> None:
    """In a container the journal is a mount of the host's: a host that deleted its name after rolling it back
    (SQLite does in DELETE mode, and does at the first read whatever mode the connection is then set to, unless it
    is in EXCLUSIVE locking mode) would detach that mount, and a live runner could then swap a FIFO in (fourth
    attack review: it wrote a hot header into its journal, and timed the swap to the host's next read)."""
    world = World(tmp_path)
    path = world.session.folder / "outbound.db"
    before = path.read_bytes()
    world.ack(ACK, "processing", T0)
    journal = Path(f"{path}-journal")
    journal.write_bytes(_journal_of(before, 1))  # hot: as a runner killed mid-commit, or a hostile one, leaves it
    inode = journal.stat().st_ino
    with closing(world.central):
        read(path)
    assert journal.stat().st_ino == inode and journal.read_bytes()[:8] != bytes.fromhex("d9d505f920a163d7")
    assert outbox.claimed(path, [ACK]) == set()  # rolled back: the claim was never committed
