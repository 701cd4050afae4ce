"""The names beside a session's SQLite files that SQLite would trust, kept taken by files of the host's."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from host.errors import NclError

log = logging.getLogger(__name__)


def keep(dirfd: int, path: Path) -> None:
    """A session file's folder is writable by its runner (for outbound.db's journal), and SQLite trusts what it
    finds beside a database: a hot rollback journal is "rolled back" into it at the next open, and a non-empty
    ``-wal`` file makes it open the database in WAL mode whatever its header says, reading (and checkpointing into
    it) the pages the WAL holds, and waiting up to 10 s for WAL read slots whoever holds them. A runner could so forge
    host rows in inbound.db, or stall the sweep. So these names are kept taken by host-owned files: inbound.db's
    journal (``journal_mode=PERSIST``: zeroed at commit, never deleted; a journal of the host's own is kept, after a
    crash it is the rollback that keeps inbound.db whole), and an empty ``-wal`` beside inbound.db and outbound.db
    (which SQLite takes for none; neither file ever uses WAL). A missing or foreign one is replaced by an empty one
    of the host's in one rename, leaving no moment for a runner to link its own in. In the sticky folder a runner of
    another uid can then neither remove, replace nor write them. (A runner of the host's own uid, as a non-root host
    runs them, could: SECURITY.md says so.)"""
    if path.name == "inbound.db":
        _own_name(dirfd, path, path.name + "-journal", lambda info: True)
    _own_name(dirfd, path, path.name + "-wal", lambda info: info.st_size == 0)


def _own_name(dirfd: int, path: Path, name: str, kept: Callable[[os.stat_result], bool]) -> None:
    """``name`` (beside ``path``) taken by a regular file of the host's that is ``kept``, else by an empty one."""
    try:
        info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        info = None
    if info is not None and info.st_uid == os.geteuid() and stat.S_ISREG(info.st_mode) and kept(info):
        return
    if info is not None:
        log.warning("replaced %s: not the host's (uid %d, %d bytes)", path.with_name(name), info.st_uid,
                    info.st_size, extra={"action": "foreign_journal_removed"})
        if stat.S_ISDIR(info.st_mode):  # (a rename cannot replace a directory; no link in it is followed)
            import shutil  # (imported here, as secrets below: what every command imports stays small)

            shutil.rmtree(name, dir_fd=dirfd)
    owner = os.stat(path.name, dir_fd=dirfd, follow_symlinks=False)
    import secrets  # see schemas.ids.new_id

    temp = f".{name}-{secrets.token_hex(6)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    try:
        try:  # the journal is read by whoever reads inbound.db (a runner's reads check it for a hot journal)
            os.fchmod(fd, stat.S_IMODE(owner.st_mode) & 0o640)
            with suppress(PermissionError):
                os.fchown(fd, -1, owner.st_gid)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(temp, dir_fd=dirfd)
        raise NclError(f"cannot keep {path.with_name(name)} the host's: {exc.strerror}") from None
