"""The one error type users see: its message is printed as one line and the command exits 1."""

import errno

MAX_ERROR_CHARS = 1000
# A failure with one of these is the host's (its disk, its memory, its descriptors), never what it was reading's.
HOST_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
# Sessions an ``ncl`` command left out of what it printed, each said in a warning (``sessions.readable``): the command
# then exits 1 after printing the rest.
left_out: set[str] = set()


class NclError(Exception):
    """A bad value, an unknown id or a failed precondition, worded for the person who typed it."""


class DbError(NclError):
    """A DB file that cannot be opened or is newer than this release."""


class Busy(DbError):
    """A file another connection held locked for longer than the open's busy wait."""


class Tampered(DbError):
    """A runner's outbound.db as no runner of this host leaves it: a schema other than this release's, a read SQLite
    gave up past its bounds (``host.store.bounds``); while its runner lives, WAL mode or a planted journal
    (``journals.guard``)."""


def cut(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` of at most ``limit`` characters, saying what was cut. For an error's text that may carry what a runner
    wrote (SQLite names the object of a malformed schema in its error, whatever its length): such text is logged, and
    kept while a session fails."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"
