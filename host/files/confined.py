"""Reading a file a runner could have planted links in: relative to a directory descriptor, no link followed.

Session and group folders are writable by runners, so any name in them may become a symlink (or a FIFO) between
a check and a use. Everything here opens the path once, component by component with ``O_NOFOLLOW``
(``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the kernel has it), then checks and reads the
open descriptor itself: what was checked is what is read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from pathlib import Path, PurePath
from typing import Any

from host.errors import NclError
from host.files import private

SYS_OPENAT2 = 437  # the same number on every architecture that has the syscall (x86_64, arm64, …)
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_LINKS = (errno.ELOOP, errno.ENOTDIR, errno.EXDEV)  # what a link, a non-directory or a way out gives


class Refused(NclError):
    """A path that leaves its folder, passes a symlink, is not a regular file, or is too large: ``why`` says
    which in a few words, ``link`` whether it was a way out (a link, '..', an absolute path)."""

    def __init__(self, name: str, why: str, link: bool = False) -> None:
        super().__init__(f"{name}: refused ({why})")
        self.name, self.why, self.link = name, why, link


@functools.cache
def _libc_syscall() -> Any:
    import ctypes  # imported here, as in _openat2: ~2 ms of start-up that commands opening no file beneath go without

    try:
        call = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    return call


# Cleared on the first open that finds no syscall in libc, or gets ENOSYS/EPERM (old kernel, seccomp): the walk takes
# over.
use_openat2 = True


def parts_of(relative: str | PurePath) -> list[str]:
    """The components of a relative path; '..', absolute paths, empty and '.' components are refused."""
    text = str(relative)
    parts = text.split("/")
    if not text or text.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in text:
        raise Refused(repr(text), "only plain names below the folder, no '..', '.' or absolute path", link=True)
    return parts


def open_dir(path: Path) -> int:
    """A descriptor of the directory ``path``, refusing it if its own name is a symlink (its parents are the
    operator's to choose); the caller closes it."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in _LINKS:
            raise Refused(str(path), "a symlink or not a directory", link=True) from None
        raise


def remove(dirfd: int, name: str, info: os.stat_result) -> None:
    """Whatever ``name`` is in the folder ``dirfd`` (``info``: its lstat), gone: a directory with all it holds, no
    link in it followed; anything else unlinked (a link itself, never its target)."""
    if stat.S_ISDIR(info.st_mode):
        import shutil  # (imported here: what every command imports stays small)

        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)


def discard(folder: Path, name: str) -> None:
    """The file ``name`` in ``folder`` unlinked if it is there (a link itself, never its target); a folder that is a
    symlink, or a directory of that name, is left as it is."""
    with contextlib.suppress(OSError, Refused):
        dirfd = open_dir(folder)
        try:
            os.unlink(name, dir_fd=dirfd)
        finally:
            os.close(dirfd)


def _openat2(dirfd: int, relative: str, flags: int, mode: int) -> int:
    global use_openat2
    if (syscall := _libc_syscall()) is None:
        use_openat2 = False
        return _walk(dirfd, relative.split("/"), flags, mode)
    import ctypes

    # struct open_how: flags, mode, resolve
    how = (ctypes.c_uint64 * 3)(flags, mode if flags & os.O_CREAT else 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    for _attempt in range(8):
        fd = int(syscall(SYS_OPENAT2, dirfd, os.fsencode(relative), ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM):  # no openat2 here (or a filter forbids it): walk from now on
            use_openat2 = False
            break
        if code not in (errno.EINTR, errno.EAGAIN):  # EAGAIN: a rename elsewhere raced the lookup; try again
            raise OSError(code, os.strerror(code), relative)
    return _walk(dirfd, relative.split("/"), flags, mode)


def _walk(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    current = dirfd
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            if current != dirfd:
                os.close(current)
            current = step
        return os.open(parts[-1], flags, mode, dir_fd=current)
    finally:
        if current != dirfd:
            os.close(current)


def open_beneath(root: Path, relative: str | PurePath, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor of ``root/relative`` reached without following a symlink in any component (``root`` itself
    included, its parents not) and without blocking on a FIFO; the caller closes it. ``flags`` apply to the last
    component, with ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` always added."""
    parts = parts_of(relative)
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    base = open_dir(root)
    try:
        if use_openat2:
            return _openat2(base, "/".join(parts), flags, mode)
        return _walk(base, parts, flags, mode)
    except OSError as exc:
        if exc.errno in _LINKS:
            raise Refused("/".join(parts), f"passes a symlink or leaves {root.name}/", link=True) from None
        raise
    finally:
        os.close(base)


def read_fd(fd: int, name: str, max_bytes: int) -> bytes:
    """The whole content of the open regular file ``fd``, refused if it is anything else or over ``max_bytes``."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Refused(name, "not a regular file")
    if info.st_size > max_bytes:
        raise Refused(name, f"larger than {max_bytes} bytes")
    chunks, left = [], max_bytes + 1  # one byte more than allowed: a file that grew since fstat is caught too
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise Refused(name, f"larger than {max_bytes} bytes")
    return data


def read_input(path: Path, max_bytes: int) -> str:
    """An operator's input file (a command's ``--file``, ``@FILE``) as UTF-8 text: whatever it is (a pipe, as
    ``/dev/stdin``, too), read up to one byte past ``max_bytes`` and refused past it (``/dev/zero`` ends at once)."""
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise NclError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise NclError(f"{path} is larger than {max_bytes} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise NclError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def read_beneath(root: Path, relative: str | PurePath, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/relative`` (see :func:`open_beneath`), at most ``max_bytes``."""
    fd = open_beneath(root, relative)
    try:
        return read_fd(fd, str(relative), max_bytes)
    finally:
        os.close(fd)


def write_beneath(root: Path, relative: str | PurePath, data: bytes) -> None:
    """Write ``root/relative`` whole (0600), making its folder (0700) if missing, without following a symlink in
    any component (see :func:`open_beneath`): the folder may be a runner's to write too."""
    parts = parts_of(relative)
    if len(parts) > 1:
        above = open_beneath(root, "/".join(parts[:-2]), os.O_RDONLY | os.O_DIRECTORY) if len(parts) > 2 \
            else open_dir(root)
        try:
            with contextlib.suppress(FileExistsError):  # a link in its place is refused by the open below
                os.mkdir(parts[-2], private.DIR_MODE, dir_fd=above)
        finally:
            os.close(above)
    fd = open_beneath(root, relative, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, private.FILE_MODE)
    try:
        private.write_all(fd, data)
    finally:
        os.close(fd)
