"""Linux inotify through libc (no dependency): the runner waits on it for the host's writes to its inbox, the host for
its runners' commits. Events are only ever a hint to look again, so a queue overflow or a burst is harmless."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_DELETE = 0x2, 0x4, 0x8, 0x200
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE = 0x40, 0x80, 0x100
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)
_LARGEST = _EVENT.size + 256  # an event with the longest name (NAME_MAX and its NUL)
DRAIN_BYTES = 1 << 20  # more than a full queue of the kernel's default 16,384 events with short names


class Inotify:
    """One inotify instance, non-blocking and close-on-exec. Raises OSError (or AttributeError on a libc without
    inotify) where there is none to be had."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd: int = fd

    def watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Add a watch; its descriptor."""
        wd: int = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _error(f"inotify_add_watch {path}")
        return wd

    def unwatch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # a watch already gone (its file removed) is no error here

    def drain(self, limit: int = DRAIN_BYTES) -> list[tuple[int, int, str]]:
        """The queued events, as (watch descriptor, mask, name: of the file in a watched folder, else ""), at most
        ``limit`` bytes of them: a writer that makes them as fast as they are read would otherwise keep the reader
        here for as long as it likes. Where it stopped at its bound (some may be left), the last is an overflow
        (descriptor -1, ``IN_Q_OVERFLOW``), as where the kernel's queue lost some."""
        found: list[tuple[int, int, str]] = []
        read = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, min(65536, limit - read)):
                read += len(chunk)
                offset = 0
                while offset + _EVENT.size <= len(chunk):
                    wd, mask, _, length = _EVENT.unpack_from(chunk, offset)
                    offset += _EVENT.size + length
                    name = chunk[offset - length:offset].rstrip(b"\0") if length else b""
                    found.append((wd, mask, os.fsdecode(name)))
                if read > limit - _LARGEST:  # (no room left for another event)
                    found.append((-1, IN_Q_OVERFLOW, ""))
                    break
        return found

    def close(self) -> None:
        os.close(self.fd)


def _error(call: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, f"{call}: {os.strerror(number)}")
