"""What a runner container may write, when the host runs as root and the runner as the image's non-root uid.

The session folder stays root's, with group write for the runner's gid and the sticky bit: the runner can
create its own files there (``outbound.db-journal``, ``.heartbeat``) and delete them again, but can neither
rename nor delete what the host owns there (``inbound.db``, ``inbox/``), so it cannot swap a folder the host
writes into for a symlink. ``outbox/`` gets the same treatment; ``outbound.db`` and the group folder (the
agent's own files) belong to the runner outright. A non-root host runs the runner as its own uid instead
(``host.runtimes.docker.container_user``) and changes nothing here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from host.errors import NclError
from host.files import confined, private

SHARED_DIR = stat.S_ISVTX | stat.S_IRWXG  # sticky, group rwx
READ_DIR = stat.S_IRGRP | stat.S_IXGRP


JOURNAL = "outbound.db-journal"


def hand_over(folder: Path, group_dir: Path, uid: int, gid: int) -> None:
    keep_journal(folder)
    if os.geteuid() != 0:
        return
    group_dir.mkdir(parents=True, exist_ok=True)
    (folder / "outbox").mkdir(mode=0o700, exist_ok=True)
    for shared in (folder, folder / "outbox", group_dir):
        if not stat.S_ISDIR(shared.lstat().st_mode):
            raise NclError(f"{shared} is a symlink or not a directory; refusing to hand it to the runner")
    for shared in (folder, folder / "outbox"):
        _share(shared, gid, SHARED_DIR)
    # Everything else the host made is 0600/0700 (``private``): the runner's gid may read what it must read.
    _share(folder / "inbox", gid, READ_DIR)
    # The journal too: a reader looks into it for a hot transaction and takes one it cannot open for a hot one.
    for name in ("inbound.db", "inbound.db-journal"):
        _share(folder / name, gid, stat.S_IRGRP)
    # A hot journal a crashed host left must be the runner's too, or it could neither roll back nor delete it.
    for name in ("outbound.db", JOURNAL, ".heartbeat"):
        _own(folder / name, uid, gid)
    _own(group_dir, uid, gid)
    # fwalk with dir fds and follow_symlinks=False: a symlink the agent planted is chowned itself, never its
    # target, even if the agent swaps a directory for a link while we walk (another session of the group may run).
    for _root, dirs, files, dir_fd in os.fwalk(group_dir):
        for name in dirs + files:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid != uid:
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def keep_journal(folder: Path) -> None:
    """outbound.db's journal, an empty regular file if there is none, for the container to get as a mount of its own
    (``DockerRuntime.container_kwargs``): a runner can write it but neither rename nor remove it (a mount point is
    busy), so it cannot swap in a FIFO, on which the host's look for a hot journal (a read-only open) would block
    for ever (third attack review). The runner's SQLite keeps it (``journal_mode=TRUNCATE``). One that is not a
    regular file, left by a runner that is gone, is removed first (a directory without following a link in it); a
    real one, a hot journal of a runner killed mid-commit, is kept for the next to roll back."""
    dirfd = confined.open_dir(folder)
    try:
        try:
            info = os.stat(JOURNAL, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and stat.S_ISREG(info.st_mode):
            return
        if info is not None:
            confined.remove(dirfd, JOURNAL, info)
        fd = private.create_file(dirfd, JOURNAL)
        try:  # outbound.db's owner's, as SQLite makes a journal where it may
            owner = os.stat("outbound.db", dir_fd=dirfd, follow_symlinks=False)
            os.fchown(fd, owner.st_uid, owner.st_gid)
        except (FileNotFoundError, PermissionError):
            pass
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def _share(path: Path, gid: int, bits: int) -> None:
    """Give ``path`` (never a link's target) to the group ``gid`` with at least ``bits`` of group access."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if info.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)
    if info.st_mode & bits != bits and not stat.S_ISLNK(info.st_mode):
        os.chmod(path, stat.S_IMODE(info.st_mode) | bits)


def _own(path: Path, uid: int, gid: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if (info.st_uid, info.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
