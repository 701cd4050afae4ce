"""The file a session's credential proxy listens on: ``<session folder>/.proxy.sock`` (DESIGN §8).

Permissions: always mode 0600. A container runs as another non-root uid, so a root host hands the socket to it
(``open(folder, uid=…)``). A non-root host cannot give a file away and will not open it to every local user (anyone
who can connect spends the key): the socket stays its own, with a warning; run the container as the host's uid then.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from pathlib import Path

from host.files import confined

log = logging.getLogger(__name__)
SOCKET_NAME = ".proxy.sock"


def bind(folder: Path, uid: int | None) -> tuple[socket.socket, int]:
    """Bind a temporary name, set owner and mode, then rename: the path is never looser; a stale one is replaced."""
    temp = f".proxy-{secrets.token_hex(4)}.sock"
    dirfd = confined.open_dir(folder)  # the folder as the host resolved it, never a link swapped in since
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A socket address holds 107 bytes; a deep data dir overflows that, so bind through the folder's descriptor.
        short = len(os.fsencode(folder / temp)) < 100
        sock.bind(str(folder / temp) if short else f"/proc/self/fd/{dirfd}/{temp}")
        os.chmod(temp, 0o600, dir_fd=dirfd)
        if uid is not None and os.geteuid() == 0:
            os.chown(temp, uid, -1, dir_fd=dirfd)
        elif uid is not None and uid != os.geteuid():
            log.warning("cannot hand %s to uid %d without root; it stays 0600 for uid %d", folder / SOCKET_NAME,
                        uid, os.geteuid(), extra={"action": "proxy_uid_kept", "session": folder.name})
        inode = os.stat(temp, dir_fd=dirfd).st_ino
        _say_stale(folder, dirfd)
        os.rename(temp, SOCKET_NAME, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dirfd)
        raise
    finally:
        os.close(dirfd)
    return sock, inode


def _say_stale(folder: Path, dirfd: int) -> None:
    """A socket a closed proxy leaves is removed with it: one found here is a killed host's (or the runner's)."""
    with contextlib.suppress(FileNotFoundError):
        os.stat(SOCKET_NAME, dir_fd=dirfd, follow_symlinks=False)
        log.warning("replacing %s, left by a host that was killed (or put there by the runner)", folder / SOCKET_NAME,
                    extra={"action": "stale_socket_replaced", "session": folder.name})


def inode_of(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None
