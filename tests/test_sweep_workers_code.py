"""The sweep's workers visit with the host's own code, or not at all. Python 3.11's forkserver, which they come
from, imports with the host's working directory first on its path: a ``host`` package there (another checkout or
release of ncl) would have visited every session with other code, silently."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from kit import World, utc

from host.scheduling import visitors
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
MANY = visitors.MIN_VISITS + 4
# A host's sweep (from this checkout: the script's own folder is first on its path, not the working directory),
# with workers for any sweep of MANY sessions, its warnings on stderr.
_HOST = """
import logging, sys
from host import settings
from host.scheduling import visitors
from host.scheduling.sweep import Sweeper
from schemas.times import from_text

if __name__ == "__main__":  # (not again in the workers, which import the main script as multiprocessing does)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    visitors.WORKERS, visitors.FIRST_VISITS = 2, visitors.MIN_VISITS
    environ = {"NCL_DATA_DIR": sys.argv[1], "TZ": "America/New_York"}
    sweeper = Sweeper(settings.load(environ=environ, system_tz="UTC"))
    result = sweeper.tick(from_text(sys.argv[2]))
    print(result.woken, result.errors, sweeper._visitors.started)
    sweeper.close()
"""


def _sweep(world: World, script: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), str(world.settings.data_dir), to_text(T0)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=True)


def test_workers_that_would_import_other_code_leave_every_visit_to_the_sweeps_thread(tmp_path: Path) -> None:
    world = World(tmp_path / "world")
    listed = [world.session] + [world.new_session() for _ in range(MANY - 1)]
    for session in listed:
        world.schedule(T0 - timedelta(minutes=5), at=to_text(T0), session=session)
    script = tmp_path / "bin" / "host_sweep.py"
    script.parent.mkdir()
    script.write_text(_HOST)
    elsewhere = tmp_path / "elsewhere"  # another checkout's package: the same code, found elsewhere
    shutil.copytree(Path(visitors.__file__).parents[1], elsewhere / "host",
                    ignore=shutil.ignore_patterns("__pycache__"))

    done = _sweep(world, script, cwd=elsewhere)
    assert done.stdout.split() == [str(MANY), "0", "True"]  # every session woken all the same, workers tried
    assert "a sweep worker failed (the workers would run" in done.stderr
    assert f"{elsewhere / 'host'}, not the host's {Path(visitors.__file__).parents[1]}" in done.stderr

    for session in listed:  # every session due again: a sweep from a plain folder, workers at work
        world.schedule(T0 - timedelta(minutes=4), at=to_text(T0), session=session)
    plain = tmp_path / "plain"
    plain.mkdir()
    done = _sweep(world, script, cwd=plain)
    assert done.stdout.split() == [str(MANY), "0", "True"]
    assert "sweep worker failed" not in done.stderr
