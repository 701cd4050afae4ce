"""How a sweep worker process (``host.scheduling.visitors``) makes SQLite's allocations cheaper. A cold visit opens
two files, and each open parses its file's schema anew (DESIGN §2: a connection per operation): about 1,300 small
allocations a visit, each one a ``malloc`` (Debian's SQLite is built with ``SQLITE_OMIT_LOOKASIDE``), freed again
at the close. Counted with callgrind over 300 cold visits, both changes together cut a visit's instructions by a
fifth (2.74 → 2.23 million), its CPU time by about as much (docs/scaling.md):

- ``stop_counting``: SQLite's memory statistics off. They are on by default: every allocation and free takes a
  process-wide mutex and updates counters (11% of a visit's instructions).
- ``tune_forkserver``: glibc's per-thread cache of freed chunks holds 500 of each size, not 7: what one visit's close
  frees, the next visit's open takes back from it, where most went through the allocator's slower bins (8%). glibc
  reads it once, when a program starts: the workers' forkserver is given it in its environment."""

from __future__ import annotations

import _sqlite3  # (Python's SQLite module: its functions are looked up through it)
import ctypes
import logging
import os

log = logging.getLogger(__name__)
TCACHE = "glibc.malloc.tcache_count=500"
_CONFIG_MEMSTATUS = 9  # SQLITE_CONFIG_MEMSTATUS
_OK = 0


def stop_counting() -> bool:
    """SQLite's memory statistics turned off in this process: whether they were. SQLite takes such settings only
    while shut down, which is allowed only with no connection open: called first thing in a process that opened
    none (a worker, before its first visit). False, nothing changed, where the library's functions cannot be reached
    (a Python with SQLite built in and its symbols hidden) or it refuses."""
    try:
        library = ctypes.CDLL(_sqlite3.__file__)  # (the SQLite it uses: a shared library it links, or built in)
        shutdown, config, initialize = library.sqlite3_shutdown, library.sqlite3_config, library.sqlite3_initialize
    except (OSError, AttributeError) as exc:
        log.debug("SQLite's memory statistics stay on: %s", exc)
        return False
    if shutdown() != _OK:
        return False
    done = bool(config(_CONFIG_MEMSTATUS, ctypes.c_int(0)) == _OK)
    if initialize() != _OK:
        raise RuntimeError("SQLite failed to start again after its settings were changed")
    return done


def tune_forkserver() -> None:
    """``TCACHE`` in the environment the workers' forkserver starts with, added to the operator's own tunables, if
    any (unless they set it). Set once and kept: the host sets no other variable, so glibc's first setenv leaves the
    array another thread's getenv may be reading in place (changing a variable's value never moves it). Runners get
    an environment of their own; a host task's command inherits it, which only sizes its malloc's cache."""
    tunables = os.environ.get("GLIBC_TUNABLES")
    if tunables is None:
        os.environ["GLIBC_TUNABLES"] = TCACHE
    elif "glibc.malloc.tcache_count=" not in tunables:
        os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TCACHE}"
