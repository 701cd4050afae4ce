"""What a runner container may write, when the host runs as root and the runner as the image's non-root uid.

The session folder stays root's, with group write for the runner's gid and the sticky bit: the runner can
create its own files there (``outbound.db-journal``, ``.heartbeat``) and delete them again, but can neither
rename nor delete what the host owns there (``inbound.db``, ``inbox/``), so it cannot swap a folder the host
writes into for a symlink. ``outbox/`` gets the same treatment; ``outbound.db`` and the group folder (the
agent's own files) belong to the runner outright. A non-root host runs the runner as its own uid instead
(``host.runtimes.docker.container_user``) and changes nothing here.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from host.errors import NclError
from host.files import confined, private

log = logging.getLogger(__name__)
SHARED_DIR = stat.S_ISVTX | stat.S_IRWXG  # sticky, group rwx
TREE_ENTRIES, TREE_DEPTH = 100_000, 32  # of the group folder handed over at a start (``_own_tree``)
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
    _own_tree(group_dir, uid, gid)


def _own_tree(top: Path, uid: int, gid: int) -> None:
    """Give the runner what it does not own yet below its group folder: what the operator put there (AGENT.md,
    skills). Each folder is opened beneath ``top`` with no link followed and each entry chowned itself, so a link the
    agent planted, or a folder it swaps for one meanwhile (another session of the group may run), is never a way
    out; a file of more than one name (a hard link the agent made to a file of the host's) is left as it is. At most
    ``TREE_ENTRIES`` entries a start, ``TREE_DEPTH`` folders deep (below is the agent's own making), walked with a
    stack of names, not of descriptors or frames: a tree of millions cost each start seconds, one 3,000 deep stopped
    every start of the group (attack review)."""
    folders, seen = [(0, "")], 0
    while folders:
        depth, relative = folders.pop()
        try:
            fd = confined.open_beneath(top, relative, os.O_DIRECTORY) if relative else confined.open_dir(top)
        except (confined.Refused, OSError):  # swapped for a link, or gone, meanwhile
            continue
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if (seen := seen + 1) > TREE_ENTRIES:
                        log.warning("%s holds over %d entries: only the first were handed to its runner", top,
                                    TREE_ENTRIES, extra={"action": "group_folder_too_large"})
                        return
                    info = entry.stat(follow_symlinks=False)
                    folder = stat.S_ISDIR(info.st_mode)
                    if info.st_uid != uid and (folder or info.st_nlink == 1):
                        os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
                    if folder and depth < TREE_DEPTH:
                        folders.append((depth + 1, f"{relative}/{entry.name}" if relative else entry.name))
        finally:
            os.close(fd)


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
    """Give ``path`` (never a link's target) to the runner; a file of more than one name is refused: the runner linked
    a file of the host's there (``inbound.db`` as ``.heartbeat``), whose inode a chown would hand it."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if (info.st_uid, info.st_gid) == (uid, gid):
        return
    if not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1:
        raise NclError(f"{path} has {info.st_nlink} names (a hard link its runner made): refusing to hand it over")
    os.chown(path, uid, gid, follow_symlinks=False)
