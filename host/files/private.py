"""What the host and the CLI create is private to their user, whatever the umask: the data directory 0700, the
databases 0600 (SQLite gives their journals the same mode). Group access exists only where a runner's uid needs
it, granted explicitly (``workspace.hand_over``). Also the check ``ncl doctor`` makes of an existing data dir."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_dir(path: Path) -> None:
    """``path`` and any missing parents, each made 0700 (a folder that exists already is left as it is)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe == probe.parent:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile: its mode is its maker's
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask; chmod is not


def create_file(dirfd: int, name: str) -> int:
    """A new empty file ``name`` in the folder ``dirfd``, 0600, opened read-write (the caller closes it). An
    empty file is a valid empty SQLite database. FileExistsError if something (even a link) is there."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dirfd)
    os.fchmod(fd, FILE_MODE)
    return fd


def write_all(fd: int, data: bytes) -> None:
    """``data`` written whole to ``fd`` (a write may take part of it; a full disk raises on the way)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace_file(dirfd: int, name: str, data: bytes, durable: bool = False) -> None:
    """Write ``name`` in the folder ``dirfd`` whole: a private temporary file renamed over it, so a reader sees the
    old content or the new, never part. ``durable``: synced before the rename, and the folder after it."""
    temporary = f".{name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dirfd)
    fd = create_file(dirfd, temporary)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    if durable:
        os.fsync(dirfd)


def foreign(path: Path) -> str | None:
    """Who else could swap the data dir ``path`` or what is in it, said as a problem (None: nobody). Its owner, if
    not this user, and the owner of a folder above it, if neither this user nor root, or anyone, above it, in a
    folder others may write without the sticky bit: each can rename names in it whatever their modes, and put a
    socket or files of its own in their place. (Folders not made yet are this user's to make.)"""
    me, real = os.geteuid(), Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue
        if info.st_uid != me and (folder == real or info.st_uid != 0):
            return (f"{folder} is owned by uid {info.st_uid}, not by this user (uid {me})"
                    + (f": chown -R {me} {folder}" if folder == real else " or root"))
        if folder != real and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            return f"{folder} above it can be written by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def exposure(path: Path) -> str | None:
    """What other local users may do to the data dir ``path``, or None if nothing (or it does not exist yet)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"mode {mode:04o}: group or other users can write it (chmod 700 {path})"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"mode {mode:04o}: group or other users can read it (chmod 700 {path})"
    return None
