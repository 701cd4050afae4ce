"""A queue kept on disk: JSON lines appended to ``NAME.jsonl`` and read from the offset in ``NAME.offset``.

``put`` appends an item as one line, written and fsync'd before it returns: a process killed afterwards finds it at
its next start. The reader takes what lies past the offset (``waiting``) and moves the offset past each item it is
done with (``done``; the offset file is written whole, a private temporary file fsync'd and renamed over it). When
the offset reaches the end, the file is cut to nothing and the offset put back to 0: the file holds what waits and
the items being handed over, never more. A crash between an item's handing over and the offset's write hands it out
again at the next start (at least once); a line cut short by a crash while it was appended is dropped at the next
start (its ``put`` never returned).

One process uses a spool at a time (the host lock); within it, any thread (a lock). Neither file is opened through a
link: a symlink in their place is refused (``confined.Refused``), as is anything but a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from host.files import confined, private

log = logging.getLogger(__name__)
OFFSET_MAX_BYTES = 32


class Spool:
    """``folder/NAME.jsonl`` and its offset; opened at first use, ``close`` lets go of the descriptors."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, f"{name}.jsonl"
        self.offset_name = f"{name}.offset"
        self.lock = threading.Lock()
        self._fd: int | None = None
        self._dir: int | None = None
        self._offset = 0
        self._ends: deque[int] = deque()  # where each line past the offset ends; the last is the file's size
        self._notes: list[str] = []  # what opening found wrong, logged once the lock is let go

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock, and then what opening found wrong logged. Never log holding the lock: a put comes from a
        logging handler, and a line logged under the lock would wait for that handler, which waits for the lock."""
        with self.lock:
            yield
            notes, self._notes = self._notes, []
        for note in notes:
            log.warning("%s", note, extra={"action": "spool_offset_unread", "file": self.offset_name})

    def __len__(self) -> int:
        """How many items wait (or are being handed over), opening the spool if need be."""
        with self._locked():
            self._open()
            return len(self._ends)

    def put(self, item: dict[str, Any]) -> None:
        """Append ``item`` durably. OSError or Refused when it could not be: then the file is as it was."""
        line = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        with self._locked():
            fd, size = self._open(), self._size
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write", self.name)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # no half line for the next one to be glued to
                raise
            self._ends.append(size + len(line))

    def waiting(self) -> list[tuple[dict[str, Any], int]]:
        """The items past the offset, oldest first, each with the offset ``done`` takes once it is handed over. A
        line that is not a JSON object is logged and skipped (``done`` of the item before it passes it too)."""
        with self._locked():
            fd = self._open()
            offset = self._offset
            data = os.pread(fd, self._size - offset, offset)
        items: list[tuple[dict[str, Any], int]] = []
        start = skipped = offset
        for line in _lines(data):
            end = start + len(line)
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                log.warning("%s: the line at byte %d is not an item, skipped", self.name, start,
                            extra={"action": "spool_line_skipped", "file": self.name})
                if items:
                    items[-1] = (items[-1][0], end)
                else:
                    skipped = end
            else:
                items.append((item, end))
            start = end
        if skipped > offset:
            self.done(skipped)
        return items

    def done(self, end: int) -> None:
        """Everything before byte ``end`` is handed over: move the offset there (in memory at once; OSError when
        it could not be stored, and then a restart hands those items out again)."""
        with self._locked():
            self._open()
            while self._ends and self._ends[0] <= end:
                self._ends.popleft()
            self._offset = max(self._offset, end)
            assert self._fd is not None
            if not self._ends and self._offset:  # all handed over: start the file again
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                self._offset = 0
            self._store_offset()

    def close(self) -> None:
        with self.lock:
            for fd in (self._fd, self._dir):
                if fd is not None:
                    os.close(fd)
            self._fd = self._dir = None

    @property
    def _size(self) -> int:
        return self._ends[-1] if self._ends else self._offset

    def _open(self) -> int:
        """The open file (under the lock): at the first use, its partial last line cut and the offset read."""
        if self._fd is not None:
            return self._fd
        private.make_dir(self.folder)
        self._dir = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = _open_private(self._dir, self.name, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
                whole = data.rfind(b"\n") + 1
                if whole < len(data):
                    os.ftruncate(fd, whole)
                    os.fsync(fd)
                os.fsync(self._dir)  # the file's name lasts too (it may have just been made)
                offset = min(self._read_offset(), whole)
                offset = data.rfind(b"\n", 0, offset) + 1  # an offset inside a line: that line again
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(self._dir)
            self._dir = None
            raise
        ends, at = deque[int](), offset
        for line in _lines(data[offset:whole]):
            at += len(line)
            ends.append(at)
        self._fd, self._offset, self._ends = fd, offset, ends
        return fd

    def _read_offset(self) -> int:
        assert self._dir is not None
        try:
            fd = _open_private(self._dir, self.offset_name, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        except (OSError, confined.Refused) as exc:
            self._notes.append(f"{self.offset_name}: {exc}; every item in {self.name} is handed out again")
            return 0
        try:
            text = os.read(fd, OFFSET_MAX_BYTES).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if not text.isdigit():
            self._notes.append(f"{self.offset_name} holds no offset; every item in {self.name} is handed out again")
            return 0
        return int(text)

    def _store_offset(self) -> None:
        assert self._dir is not None
        private.replace_file(self._dir, self.offset_name, f"{self._offset}\n".encode(), durable=True)


def _lines(data: bytes) -> list[bytes]:
    """``data``'s lines, each with its newline (only ``\\n`` ends one)."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


def _open_private(folder: int, name: str, flags: int) -> int:
    """``name`` in the folder ``folder``, 0600 (made so if it was not), never through a link nor anything but a
    regular file."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, private.FILE_MODE, dir_fd=folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise confined.Refused(name, "a symlink", link=True) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise confined.Refused(name, "not a regular file")
        if flags & (os.O_WRONLY | os.O_RDWR):
            os.fchmod(fd, private.FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
