"""What the sweep's worker processes run with, checked in a host of their own (a fresh process: its forkserver, the
workers' parent, starts with that host's first big sweep): the host's own code, or no worker at all; SQLite's memory
statistics off and glibc's larger cache of freed chunks (``host.store.allocations``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from kit import World, utc

from host.scheduling import visitors
from host.store import allocations
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
MANY = visitors.MIN_VISITS + 4
# A host's sweep with workers for any sweep of MANY sessions (run from this checkout: a script's own folder is first
# on its path, not the working directory), then what its workers run with, as JSON; its warnings on stderr.
_HOST = """
import json, logging, os, sys
from host import settings
from host.scheduling import visitors
from host.scheduling.sweep import Sweeper
from schemas.times import from_text

# SQLite's memory in use as its statistics count it, after it made a table (0: not counted)
COUNTED = ("(__import__('sqlite3').connect(':memory:').execute('CREATE TABLE t(a)'),"
           " __import__('ctypes').CDLL(__import__('_sqlite3').__file__).sqlite3_memory_used())[1]")

if __name__ == "__main__":  # (not again in the workers, which import the main script as multiprocessing does)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    visitors.WORKERS, visitors.FIRST_VISITS = 2, visitors.MIN_VISITS
    sweeper = Sweeper(settings.load(environ={"NCL_DATA_DIR": sys.argv[1], "TZ": "UTC"}, system_tz="UTC"))
    result = sweeper.tick(from_text(sys.argv[2]))
    found = {"woken": result.woken, "errors": result.errors, "refused": sweeper._visitors.refused,
             "here": eval(COUNTED)}
    if sweeper._visitors._pool is not None:
        pool = sweeper._visitors._pool
        found["counted"] = sorted({pool.submit(eval, COUNTED).result() for _ in range(4)})
        found["tunables"] = sorted({pool.submit(os.getenv, "GLIBC_TUNABLES").result() for _ in range(4)})
    print(json.dumps(found))
    sweeper.close()
"""


def _sweep(world: World, tmp_path: Path, cwd: Path, tunables: str | None = None) -> tuple[dict[str, Any], str]:
    """One sweep of ``world`` by a host started in ``cwd``: what it printed, and its stderr."""
    script = tmp_path / "bin" / "host_sweep.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(_HOST)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run([sys.executable, str(script), str(world.settings.data_dir), to_text(T0)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout), done.stderr


def _due(world: World, listed: list[Any], minutes: int) -> None:
    for session in listed:
        world.schedule(T0 - timedelta(minutes=minutes), at=to_text(T0), session=session)


def test_workers_allocate_for_sqlite_without_counting_and_keep_more_freed_memory_at_hand(tmp_path: Path) -> None:
    """A cold visit's ~1,300 allocations (a schema parsed at each open) cost less (docs/scaling.md)."""
    world = World(tmp_path / "world")
    listed = [world.session] + [world.new_session() for _ in range(MANY - 1)]
    _due(world, listed, 5)
    found, _ = _sweep(world, tmp_path, tmp_path)
    assert (found["woken"], found["errors"], found["refused"]) == (MANY, 0, "")
    assert found["here"] > 0, "the host's own SQLite counts (the probe can tell)"
    assert found["counted"] == [0]
    assert found["tunables"] == [allocations.TCACHE]  # (what the workers' forkserver, and its glibc, started with)

    _due(world, listed, 4)  # an operator's own tunables are kept, the cache's added
    found, _ = _sweep(world, tmp_path, tmp_path, tunables="glibc.malloc.arena_max=2")
    assert found["tunables"] == [f"glibc.malloc.arena_max=2:{allocations.TCACHE}"]
    _due(world, listed, 3)  # and one who set the cache themselves keeps theirs
    found, _ = _sweep(world, tmp_path, tmp_path, tunables="glibc.malloc.tcache_count=9")
    assert found["tunables"] == ["glibc.malloc.tcache_count=9"]


def test_stop_counting_turns_sqlites_memory_statistics_off() -> None:
    script = ("from host.store import allocations\n"
              "import sqlite3, ctypes, _sqlite3\n"
              "stopped = allocations.stop_counting()\n"
              "sqlite3.connect(':memory:').execute('CREATE TABLE t(a)')\n"
              "print(stopped, ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "0"]


def test_workers_that_would_run_other_code_are_never_used(tmp_path: Path) -> None:
    """Python 3.11's forkserver imports with the host's working directory first on its path: a ``host`` package there
    (another checkout or release of ncl) would have visited every session with other code, silently."""
    world = World(tmp_path / "world")
    listed = [world.session] + [world.new_session() for _ in range(MANY - 1)]
    _due(world, listed, 5)
    elsewhere = tmp_path / "elsewhere"  # another checkout's package: the same code, found elsewhere
    shutil.copytree(Path(visitors.__file__).parents[1], elsewhere / "host",
                    ignore=shutil.ignore_patterns("__pycache__"))
    found, stderr = _sweep(world, tmp_path, elsewhere)
    assert (found["woken"], found["errors"]) == (MANY, 0)  # every session visited all the same, by the host itself
    if sys.version_info[:2] == (3, 11) or found["refused"]:  # (a later Python's forkserver may use the host's path)
        assert found["refused"].startswith(f"they would run {elsewhere / 'host'}, not the host's "
                                           f"{Path(visitors.__file__).parents[1]}")
        assert stderr.count("a sweep worker failed (they would run") == 1 and "counted" not in found
