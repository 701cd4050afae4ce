"""What a runner container may write, when the host runs as root and the runner as the image's non-root uid.

The session folder stays root's, with group write for the runner's gid and the sticky bit: the runner can
create its own files there (``outbound.db-journal``, ``.heartbeat``) and delete them again, but can neither
rename nor delete what the host owns there (``inbound.db``, ``inbox/``), so it cannot swap a folder the host
writes into for a symlink. ``outbox/`` gets the same treatment; ``outbound.db`` and the group folder (the
agent's own files) belong to the runner outright. A non-root host runs the runner as its own uid instead
(``docker_runtime.container_user``) and changes nothing here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

SHARED_DIR = stat.S_ISVTX | stat.S_IRWXG  # sticky, group rwx


def hand_over(folder: Path, group_dir: Path, uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    for shared in (folder, folder / "outbox"):
        shared.mkdir(exist_ok=True)
        info = shared.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise OSError(f"{shared} is not a directory; refusing to hand it to the runner")
        if info.st_gid != gid:
            os.chown(shared, -1, gid, follow_symlinks=False)
        if info.st_mode & SHARED_DIR != SHARED_DIR:
            os.chmod(shared, stat.S_IMODE(info.st_mode) | SHARED_DIR)
    # A hot journal a crashed host left must be the runner's too, or it could neither roll back nor delete it.
    for name in ("outbound.db", "outbound.db-journal", ".heartbeat"):
        _own(folder / name, uid, gid)
    group_dir.mkdir(parents=True, exist_ok=True)
    _own(group_dir, uid, gid)
    # fwalk with dir fds and follow_symlinks=False: a symlink the agent planted is chowned itself, never its
    # target, even if the agent swaps a directory for a link while we walk (another session of the group may run).
    for _root, dirs, files, dir_fd in os.fwalk(group_dir):
        for name in dirs + files:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid != uid:
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def _own(path: Path, uid: int, gid: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if (info.st_uid, info.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
