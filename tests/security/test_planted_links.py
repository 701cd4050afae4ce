"""Security boundaries (issue 11, point 1): the host never reads through a link a runner could plant.

A runner writes its group folder and its session folder, so any name there may flip between a file and a symlink
to a secret (the host's ``.env``) while the host reads it. ``host.files.confined`` opens below a directory descriptor
with no link followed in any component and reads what it checked; ``db.connect`` opens a session's databases only
when the path SQLite resolved is the pinned link-free one. The races below flip a name thousands of times during
real reads: every read is either refused or the real file, never the secret.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from kit import World
from security_kit import SECRET, T0

from host.channels import queues
from host.errors import NclError
from host.files import confined
from host.store import db, groups, outbox, views

ROUNDS = 2000
MAX_ROUNDS = 50 * ROUNDS


def rounds(outcomes: dict[str, int]) -> Iterator[int]:
    """ROUNDS tries, and more (up to MAX_ROUNDS) until the race was seen both ways: on a loaded machine the
    flipper may get no time slice during the first ROUNDS, and the test must then go on, not fail."""
    n = 0
    while n < ROUNDS or (min(outcomes.values()) == 0 and n < MAX_ROUNDS):
        yield n
        n += 1


@pytest.fixture(params=[True, False], ids=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of opening beneath a folder: openat2 where the kernel has it, the O_NOFOLLOW walk otherwise."""
    if request.param and not confined.use_openat2:
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(confined, "use_openat2", request.param)
    return bool(request.param)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A folder with a file, a subfolder, links of every kind, a FIFO; a secret beside it."""
    (tmp_path / ".env").write_text(f"ANTHROPIC_API_KEY={SECRET}\n")
    folder = tmp_path / "group"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("notes")
    (folder / "sub" / "deep.txt").write_text("deep")
    (folder / "link-file").symlink_to(tmp_path / ".env")
    (folder / "link-in").symlink_to("notes.txt")
    (folder / "link-dir").symlink_to("sub")
    (folder / "link-up").symlink_to("..")
    os.mkfifo(folder / "fifo")
    return folder


# --- confined: what it opens and what it refuses, by both resolvers ------------------------------------------------


@pytest.mark.parametrize("relative, content", [("notes.txt", b"notes"), ("sub/deep.txt", b"deep")])
def test_a_plain_file_below_the_folder_is_read(home: Path, resolver: bool, relative: str, content: bytes) -> None:
    assert confined.read_beneath(home, relative, 100) == content
    assert confined.use_openat2 is resolver  # the resolver under test is the one that answered


@pytest.mark.parametrize("relative", ["link-file", "link-in", "link-dir/deep.txt", "link-up/.env", "sub/../notes.txt",
                                      "../.env", "/etc/hostname", "", "./notes.txt", "sub//deep.txt", "a\0b",
                                      "notes.txt/x"])
def test_links_and_ways_out_are_refused_in_any_component(home: Path, resolver: bool, relative: str) -> None:
    with pytest.raises(confined.Refused) as refused:
        confined.read_beneath(home, relative, 100)
    assert refused.value.link and "\n" not in str(refused.value) and SECRET not in str(refused.value)


def test_a_fifo_is_refused_without_blocking(home: Path, resolver: bool) -> None:
    with pytest.raises(confined.Refused, match="not a regular file"):
        confined.read_beneath(home, "fifo", 100)  # no writer: a blocking open would hang here


@pytest.mark.parametrize("relative", ["sub", "fifo"])
def test_anything_but_a_regular_file_is_refused(home: Path, resolver: bool, relative: str) -> None:
    with pytest.raises(confined.Refused) as refused:
        confined.read_beneath(home, relative, 100)
    assert not refused.value.link and refused.value.why == "not a regular file"


def test_a_file_over_the_cap_is_refused(home: Path, resolver: bool) -> None:
    assert confined.read_beneath(home, "notes.txt", 5) == b"notes"
    with pytest.raises(confined.Refused, match="larger than 4 bytes"):
        confined.read_beneath(home, "notes.txt", 4)


def test_a_folder_that_is_itself_a_symlink_is_refused(home: Path, resolver: bool) -> None:
    alias = home.parent / "alias"
    alias.symlink_to(home)
    with pytest.raises(confined.Refused) as refused:
        confined.read_beneath(alias, "notes.txt", 100)
    assert str(alias) in str(refused.value)


# --- the races: a flipper swaps a name between the real file and a link to the secret ----------------------------


@contextmanager
def flipping(folder: Path, name: str, real: Path, secret: Path) -> Iterator[threading.Event]:
    """A thread that atomically replaces ``folder/name`` by a symlink to ``secret``, then by a hard link of
    ``real`` (same inode, so the real file never changes), as fast as it can, until the block ends."""
    stop = threading.Event()

    def flip() -> None:
        link, copy = folder / "flip-link", folder / "flip-real"
        while not stop.is_set():
            link.symlink_to(secret)
            os.replace(link, folder / name)
            copy.hardlink_to(real)
            os.replace(copy, folder / name)

    worker = threading.Thread(target=flip, daemon=True)
    worker.start()
    try:
        yield stop
    finally:
        stop.set()
        worker.join(10)


def test_queue_file_items_never_inline_a_link_flipped_in_during_2000_reads(tmp_path: Path) -> None:
    world = World(tmp_path, tz="UTC")
    try:
        group, _ = groups.create(world.central, world.settings, T0, "jobs", ["queue:jobs"])
        folder = groups.folder(world.settings, group.id)
        env = tmp_path / ".env"
        env.write_text(f"ANTHROPIC_API_KEY={SECRET}\n")
        keep = tmp_path / "tickets.keep"
        keep.write_text("ticket 42: printer on fire")
        (folder / "tickets.txt").hardlink_to(keep)
        payload = {"prompt": [{"type": "file", "url": "room:///tickets.txt"}]}
        outcomes = {"real": 0, "refused": 0}
        with flipping(folder, "tickets.txt", keep, env):
            for _ in rounds(outcomes):
                try:
                    text, _items = queues.prompt_of(payload, folder)  # what queues.send inlines
                except NclError as refused:
                    assert SECRET not in str(refused)
                    outcomes["refused"] += 1
                    continue
                assert SECRET not in text and "printer on fire" in text
                outcomes["real"] += 1
            for _ in range(20):  # the whole path too: a session made, the row stored
                try:
                    queues.send(world.central, world.settings, T0, "jobs", payload)
                except NclError:
                    continue
        assert outcomes["real"] > 0 and outcomes["refused"] > 0, outcomes  # the race really was run
        for inbound in world.settings.sessions_dir.rglob("inbound.db"):
            assert SECRET.encode() not in inbound.read_bytes()
    finally:
        world.central.close()


def _secret_db(path: Path) -> bytes:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE secret(value TEXT)")
        conn.execute("INSERT INTO secret VALUES (?)", (SECRET,))
        conn.commit()
    return path.read_bytes()


def test_db_connect_never_opens_a_link_flipped_in_as_outbound_db_during_2000_opens(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.central.close()
    folder = world.session.folder
    secret = tmp_path / "secret.db"
    before = _secret_db(secret)
    keep = tmp_path / "outbound.keep"
    os.link(folder / "outbound.db", keep)
    target = os.path.realpath(folder / "outbound.db")
    outcomes = {"real": 0, "refused": 0}
    with flipping(folder, "outbound.db", keep, secret):
        for n in rounds(outcomes):
            try:
                conn = db.connect(folder / "outbound.db", "outbound", readonly=n % 2 == 0)
            except db.DbError as refused:
                assert SECRET not in str(refused)
                outcomes["refused"] += 1
                continue
            with closing(conn):
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                assert "secret" not in tables and "messages_out" in tables
                assert conn.execute("PRAGMA database_list").fetchone()[2] == target
                outcomes["real"] += 1
    assert outcomes["real"] > 0 and outcomes["refused"] > 0, outcomes
    assert secret.read_bytes() == before  # never opened read-write, never migrated, never journaled
    assert not (tmp_path / "secret.db-journal").exists()


def test_db_connect_refuses_a_session_folder_that_is_a_symlink(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.central.close()
    folder = world.session.folder
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    folder.symlink_to(moved)
    for readonly in (True, False):
        with pytest.raises(db.DbError) as refused:
            db.connect(folder / "inbound.db", "inbound", readonly=readonly)
        assert str(folder) in str(refused.value) and "symlink" in str(refused.value)


@pytest.mark.parametrize("kind", ["inbound", "outbound"])
def test_a_link_or_fifo_planted_as_a_session_db_is_never_opened(tmp_path: Path, kind: str) -> None:
    world = World(tmp_path)
    world.central.close()
    path = world.session.folder / f"{kind}.db"
    secret = tmp_path / "secret.db"
    before = _secret_db(secret)
    for plant in (lambda: path.symlink_to(secret), lambda: os.mkfifo(path)):
        path.unlink()
        plant()
        for readonly in (True, False):
            with pytest.raises(db.DbError, match="not a regular file"):
                db.connect(path, kind, readonly=readonly)  # a FIFO opened by SQLite would block here
    assert secret.read_bytes() == before


# --- a FIFO swapped in after the check: SQLite's open must not wait for a writer for ever -------------------------


def _in_thread(work: Callable[[], None], timeout: float) -> None:
    """Run ``work`` in a thread; fail (instead of hanging the suite) if it has not finished in ``timeout``."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"still blocked after {timeout} s"
    if errors:
        raise errors[0]


@contextmanager
def _flipping(tmp_path: Path, folder: Path) -> Iterator[None]:
    """A runner swapping a FIFO and its real file in turns as outbound.db, for the block."""
    keep = tmp_path / "outbound.keep"
    os.link(folder / "outbound.db", keep)
    stop = threading.Event()

    def flip() -> None:
        fifo, copy = folder / "flip-fifo", folder / "flip-real"
        while not stop.is_set():
            os.mkfifo(fifo)
            os.replace(fifo, folder / "outbound.db")
            copy.hardlink_to(keep)
            os.replace(copy, folder / "outbound.db")

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        yield
    finally:
        stop.set()
        flipper.join(10)


def _sweeps_read(folder: Path, _: int) -> None:
    """What the sweep reads while the runner is alive."""
    found = outbox.read(folder / "outbound.db", ["msg-1"], 0, writable=False)
    assert found.acks == {} and found.requests == []


def _operators_read(folder: Path, n: int) -> None:
    """``ncl messages list``, then ``ncl doctor``, in turns."""
    if n % 2:
        views.transcript(folder)
    elif views.file_state(folder / "outbound.db")[0] is None:
        raise db.DbError("unreadable")


@pytest.mark.parametrize("read", [_sweeps_read, _operators_read], ids=["the-sweep", "an-operator"])
def test_a_read_of_outbound_db_never_hangs_on_a_fifo_flipped_in(tmp_path: Path,
                                                                read: Callable[[Path, int], None]) -> None:
    """SQLite opens a read-only file O_RDONLY: on a FIFO swapped in after the check, that blocks for ever (the
    operator's ``ncl messages list`` and ``ncl doctor`` did so, deaf to Ctrl-C, found by an attack review)."""
    world = World(tmp_path)
    world.central.close()
    folder = world.session.folder
    outcomes = {"real": 0, "refused": 0}

    def opens() -> None:
        for n in rounds(outcomes):
            try:
                read(folder, n)
            except db.DbError:
                outcomes["refused"] += 1
                continue
            outcomes["real"] += 1

    with _flipping(tmp_path, folder):
        _in_thread(opens, 120)
    assert outcomes["real"] > 0 and outcomes["refused"] > 0, outcomes
