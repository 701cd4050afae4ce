"""Sessions: one folder per conversation or job stream, holding its inbound.db and outbound.db."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, suppress
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from host import errors
from host.errors import NclError
from host.files import private
from host.settings import Settings
from host.store import db, short_ids
from schemas import ids
from schemas.ddl import DbKind
from schemas.times import to_text

if TYPE_CHECKING:
    from host.store.groups import Group

log = logging.getLogger(__name__)
T = TypeVar("T")


class Session(NamedTuple):  # not a dataclass: every command reading sessions makes this class, a NamedTuple 5x faster
    id: str
    agent_group_id: str
    status: str
    thread_key: str | None
    created_at: str
    last_active_at: str
    path: str

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @property
    def folder(self) -> Path:
        return Path(self.path)


def folder(settings: Settings, agent_group_id: str, session_id: str) -> Path:
    return settings.sessions_dir / agent_group_id / session_id


_COLUMNS = "id, agent_group_id, status, thread_key, created_at, last_active_at"  # Session's fields, in order


def _from_row(settings: Settings, row: Sequence[Any], base: str | None = None) -> Session:
    """``base``: the sessions folder as text, when many rows are made at once (pathlib per row cost 9 ms a thousand,
    which a host listing 10,000 sessions spent in one stretch of its event loop). Ids are slugs: no separator."""
    base = base or str(settings.sessions_dir)
    sid, group, status, thread_key, created_at, last_active_at = row
    return Session(sid, group, status, thread_key, created_at, last_active_at, f"{base}/{group}/{sid}")


def made_in_chunks(settings: Settings, rows: list[Sequence[Any]], size: int) -> Iterator[list[Session]]:
    """``rows`` (of ``active_rows``) as sessions, ``size`` at a time: the caller may pause between chunks."""
    base = str(settings.sessions_dir)
    for start in range(0, len(rows), size):
        yield [_from_row(settings, row[2:], base) for row in rows[start:start + size]]


def active_rows(conn: db.Connection, after: int = 0) -> list[Sequence[Any]]:
    """The rows of the active sessions made after the one of rowid ``after`` (0: every one), oldest first (rowid
    order is the order they were made: no sort), each as (rowid, one_job, Session's fields), to be made into
    sessions by ``made_in_chunks``."""
    return conn.execute(f"SELECT rowid, one_job, {_COLUMNS} FROM sessions WHERE status = 'active' AND rowid > ?"
                        " ORDER BY rowid", (after,)).fetchall()


class ListChanges(NamedTuple):
    """How many sessions were made, and how many times one was closed, reopened or moved (the DB counts them:
    ``schemas.ddl`` v10). Only ``made`` moved: the sessions made since were added to the end of ``active_rows``."""

    made: int
    changed: int


def list_changes(conn: db.Connection) -> ListChanges:
    return ListChanges(*conn.execute("SELECT made, changed FROM session_list").fetchone())


def create_files(path: Path) -> None:
    """The session folder (0700) with both DBs (0600) at the latest schema and the file exchange folders. Made
    under a hidden name beside it and renamed into place in one step: a failure on the way (a full disk) leaves
    no half-made folder and no empty inbound.db behind, and a folder that exists is never half-overwritten.
    Each DB is written from the image of a new one (``_image``) and synced, then opened once as any is (which
    makes the names kept beside it, ``sidecars``): three syncs in all, where migrating each file took eight (a new
    session ~8 ms, 20-60 ms while a host start swept)."""
    private.make_dir(path.parent)
    building = path.with_name(f".new-{path.name}")
    building.mkdir(mode=private.DIR_MODE)  # FileExistsError: another creation of the same id is under way
    try:
        os.chmod(building, private.DIR_MODE)
        for sub in ("inbox", "outbox"):
            (building / sub).mkdir(mode=private.DIR_MODE)
        folder = os.open(building, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for kind in ("inbound", "outbound"):
                _write(folder, f"{kind}.db", _image(kind))
                with closing(db.connect(building / f"{kind}.db", kind)):
                    pass
            os.close(private.create_file(folder, "outbound.db-journal"))  # (as its first commit left it: empty)
            os.fsync(folder)  # (its names, before it is renamed into place)
        finally:
            os.close(folder)
        os.rename(building, path)  # refuses a folder already there (not empty) instead of merging into it
    except BaseException:
        _remove(building)
        raise


@cache
def _image(kind: DbKind) -> bytes:
    """A new ``kind`` file at the latest schema, as bytes: made once, in memory, by the migrations (then compacted:
    they leave free pages)."""
    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        db.migrate(conn, kind)
        conn.execute("VACUUM")
        return conn.serialize()


def prepare() -> None:
    """Make the images of new files now (a host's start): the first session made after it (a chat's new thread)
    then does not wait for them (~8 ms; 45 ms while the host's first sweep runs)."""
    for kind in ("inbound", "outbound"):
        _image(kind)


def _write(folder: int, name: str, data: bytes) -> None:
    fd = private.create_file(folder, name)
    try:
        private.write_all(fd, data)  # (a full disk raises on the way: the creation fails, its folder removed)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove what a failed creation made."""
    import shutil  # imported here: it loads the compression modules (~2 ms), and a creation seldom fails

    shutil.rmtree(path, ignore_errors=True)


def create(
    conn: db.Connection, settings: Settings, now: datetime, group: Group, thread_key: str | None,
    session_id: str | None = None, one_job: bool = False,
) -> Session:
    """A new session of ``group``, its id ``session_id`` if given (``router.Arrival.session_id``); ``one_job``: made
    for one queue job, closed once it has nothing left to do (``host.scheduling.jobs``)."""
    if thread_key is not None and not thread_key.strip():
        raise NclError("thread key must not be empty")
    session_id = session_id or ids.new_id("sess", now)
    _check_thread(conn, settings, group, thread_key)
    # Files first: a crash leaves at worst an unlisted folder, never a listed session without files; a failed
    # insert removes them again.
    path = folder(settings, group.id, session_id)
    create_files(path)
    stamp = to_text(now)
    try:
        with db.transaction(conn):
            _check_thread(conn, settings, group, thread_key)  # again under the lock: another writer may have won
            conn.execute(
                "INSERT INTO sessions(id, agent_group_id, thread_key, status, created_at, last_active_at, one_job)"
                " VALUES (?, ?, ?, 'active', ?, ?, ?)",
                (session_id, group.id, thread_key, stamp, stamp, int(one_job)),
            )
    except BaseException:
        _remove(path)  # never listed: nothing can be using them
        raise
    return get(conn, settings, session_id)


def _check_thread(conn: db.Connection, settings: Settings, group: Group, thread_key: str | None) -> None:
    clash = by_thread(conn, settings, group.id, thread_key)
    if clash:
        raise NclError(f"group {group.name} already has an active session for thread {thread_key!r}: {clash.id}")


def by_thread(conn: db.Connection, settings: Settings, agent_group_id: str,
              thread_key: str | None) -> Session | None:
    """The group's active session for this thread, if it has one (a session without a thread key is never shared)."""
    if thread_key is None:
        return None
    row = conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE agent_group_id = ? AND thread_key = ?"
                       " AND status = 'active'", (agent_group_id, thread_key)).fetchone()
    return _from_row(settings, row) if row else None


def list_all(
    conn: db.Connection, settings: Settings, agent_group_id: str | None = None, status: str | None = None
) -> list[Session]:
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM sessions WHERE (?1 IS NULL OR agent_group_id = ?1) AND (?2 IS NULL OR status = ?2)"
        " ORDER BY created_at, id",
        (agent_group_id, status),
    ).fetchall()
    base = str(settings.sessions_dir)
    return [_from_row(settings, row, base) for row in rows]


def active_counts(conn: db.Connection) -> dict[str, int]:
    """Active sessions per group id (a group with none is absent)."""
    return {str(group): int(count) for group, count in conn.execute(
        "SELECT agent_group_id, count(*) FROM sessions WHERE status = 'active' GROUP BY agent_group_id")}


def readable(found: Iterable[Session], read: Callable[[Path], T]) -> Iterator[tuple[Session, T]]:
    """``read`` of the inbound.db of each session. A file it cannot read (corrupt, of a newer schema, unreadable,
    missing) is left out with a warning naming it, and an ``ncl`` command exits 1 (``errors.left_out``): one broken
    session never hides every other from an overview, nor goes unsaid. A closed session whose folder is gone is left
    out unsaid: a prune took it away (``remove``) after the list was read."""
    for session in found:
        path = session.folder / "inbound.db"
        if session.status == "closed" and not session.folder.exists():
            continue
        try:
            value = read(path)
        except (db.Error, db.DbError, OSError) as exc:
            problem = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            log.warning("session %s left out: %s", session.id, errors.cut(problem),
                        extra={"action": "session_unreadable", "session": session.id})
            errors.left_out.add(session.id)
            continue
        yield session, value


def find(conn: db.Connection, settings: Settings, session_id: str) -> Session | None:
    """The session of this full id, if there is one."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else _from_row(settings, row)


def get(conn: db.Connection, settings: Settings, session_id: str) -> Session:
    """The session by its id, full or short (``sess-ab12cd``)."""
    found = find(conn, settings, short_ids.expand(conn, "sessions", "sess", session_id))
    if found is None:
        raise NclError(f"unknown session {session_id!r} (see 'ncl sessions list')")
    return found


def close(conn: db.Connection, session_ids: list[str], now: datetime) -> None:
    """Close these sessions at ``now``: no sweep visits them, nothing new goes into them; their files stay."""
    with db.transaction(conn):
        conn.executemany("UPDATE sessions SET status = 'closed', closed_at = ? WHERE id = ? AND status = 'active'",
                         [(to_text(now), sid) for sid in session_ids])


def reopen(conn: db.Connection, settings: Settings, session_id: str) -> Session:
    """A closed session made active again (a job sent again into the session made for it)."""
    with db.transaction(conn):
        conn.execute("UPDATE sessions SET status = 'active', closed_at = NULL WHERE id = ?", (session_id,))
    return get(conn, settings, session_id)


def touch(conn: db.Connection, session_id: str, now: datetime) -> None:
    """Mark the session active at ``now`` (a message arrived for it), never earlier than it was (a job sent again
    as it was fired, after a host's restart, is stamped with that time)."""
    with db.transaction(conn):
        conn.execute("UPDATE sessions SET last_active_at = max(last_active_at, ?) WHERE id = ?",
                     (to_text(now), session_id))


REMOVED = ".removed-"  # a folder of a session being removed (``remove``), in its group's folder
_OLD = ("status = 'closed' AND max(last_active_at, COALESCE(closed_at, last_active_at)) < ?1"
        " AND (?2 IS NULL OR agent_group_id = ?2)")  # closed, and neither active nor closed since ?1


def closed_before(conn: db.Connection, settings: Settings, before: datetime, group_id: str | None) -> list[Session]:
    """The sessions closed, and last active, before ``before`` (of one group, if given), oldest first."""
    return [_from_row(settings, row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM sessions WHERE {_OLD} ORDER BY rowid", (to_text(before), group_id))]


def remove(conn: db.Connection, session: Session, before: datetime) -> bool:
    """A session closed and last active before ``before`` gone for good, its files, its row and its task ids: checked,
    its folder moved aside and its rows deleted in one central.db transaction (a host reopening it meanwhile, for a
    queue job it sends again, waits for that, then finds none), the files removed after (``OSError``: some are
    left, which ``left_over`` tries again). False: it no longer qualifies. A crash before the commit leaves it as it
    was, after it a folder ``left_over`` finds."""
    aside = session.folder.with_name(REMOVED + session.id)
    with db.transaction(conn):
        if conn.execute(f"SELECT 1 FROM sessions WHERE id = ?3 AND {_OLD}",
                        (to_text(before), None, session.id)).fetchone() is None:
            return False
        with suppress(FileNotFoundError):  # (moved aside by a removal that died before its commit, or gone)
            os.rename(session.folder, aside)  # nothing opens a file of it after this
        try:
            conn.execute("DELETE FROM task_ids WHERE session_id = ?", (session.id,))
            conn.execute("DELETE FROM sessions WHERE id = ?", (session.id,))
        except BaseException:
            with suppress(OSError):
                os.rename(aside, session.folder)  # (the rows stay: so do the files, where they were)
            raise
    _removed(aside)
    return True


def left_over(conn: db.Connection, settings: Settings, group_id: str | None,
              dry_run: bool = False) -> tuple[list[Path], list[str]]:
    """Folders moved aside by removals that died after their commit or could not remove every file (their sessions
    have no row), of one group if given: removed, or only listed; and why those that stay could not be."""
    found = [path for path in settings.sessions_dir.glob(f"{group_id or '*'}/{REMOVED}*")
             if find(conn, settings, path.name.removeprefix(REMOVED)) is None]
    failed = []
    for path in [] if dry_run else found:
        try:
            _removed(path)
        except OSError as exc:
            failed.append(str(exc))
    return found, failed


def _removed(path: Path) -> None:
    """``path`` and all in it removed; links are removed, never followed (the runner may have made them). By ``rm``:
    Python's rmtree recurses, and a runner's folder nested a few thousand deep ended it. A folder the runner made
    read-only (a runner of the host's own uid can) is made writable for its owner first, by ``chmod``, which follows
    no link either."""
    import subprocess  # (a removal is rare: not loaded for other commands)

    rm = ["rm", "-rf", "--one-file-system", "--", str(path)]
    if subprocess.run(rm, capture_output=True, check=False).returncode == 0:
        return
    subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], capture_output=True, check=False)
    done = subprocess.run(rm, capture_output=True, text=True, check=False)
    if done.returncode:
        raise OSError(f"{path} not removed: {errors.cut(done.stderr.strip()) or 'rm failed'}")
