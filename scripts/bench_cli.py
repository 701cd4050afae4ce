"""How fast the ``ncl`` CLI starts (issue 14.5): wall time of the real ``ncl`` process, medians of N runs.

- ``version``: ``ncl --version``;
- ``help``: ``ncl --help``;
- ``tasks_list``: ``ncl tasks list`` over a data dir of 100 active sessions, each holding one daily task series
  (made with the host's own functions: ``groups.create``, ``sessions.create``, ``tasks.schedule``).

Each command runs once untimed (a warm page cache), then ``--runs`` times. Prints one JSON object with the medians,
the minimums and ``targets`` (``met``: every median under its target), and for reference two floors timed the same
way: ``python_startup`` (``python -c pass``) and ``settings_import`` (``import host.settings``: pydantic and the
settings model, which every command but ``--version`` and ``--help`` loads).

    .venv/bin/python scripts/bench_cli.py [--runs 15] [--sessions 100]

It times the checkout it is in (first on the timed processes' PYTHONPATH, whatever the venv's editable install
points at), which also makes the data dir: for the "before" of a change, copy it into
``git worktree add /tmp/before <commit>`` and run it there with this venv's python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.settings import Settings, load
from host.store import db, groups, sessions
from host.store.task_ids import TaskIds
from schemas import ids

SOURCES = Path(__file__).resolve().parent.parent  # the checkout timed, and the one that makes the data dir
NOW = datetime(2030, 1, 2, 8, 0, tzinfo=UTC)  # the daily 09:00 tasks are due later: every series is listed
TARGETS = {"version_ms_lt": 80.0, "help_ms_lt": 100.0, "tasks_list_ms_lt": 150.0}


def build(root: Path, count: int) -> Settings:
    """A data dir with one group and ``count`` active sessions, each with one daily task series."""
    settings = load(environ={"NCL_DATA_DIR": str(root / "data"), "TZ": "UTC"}, cwd=root, system_tz="UTC")
    policy = Policy.of(settings)
    with closing(db.connect(settings.central_db, "central")) as central:
        group, _ = groups.create(central, settings, NOW, "bench", ["cli"])
        for number in range(count):
            session = sessions.create(central, settings, NOW, group, f"thread-{number}")
            with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
                tasks.schedule(conn, NOW, policy, ids.new_id("task", NOW), f"daily report {number}",
                               recurrence_expr="0 9 * * *", registry=TaskIds(central, group.id, session.id))
    return settings


def timed(command: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[list[float], str]:
    """Wall times in ms of ``runs`` runs after one untimed run, and the output of the last one."""
    out = ""
    times: list[float] = []
    for run in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
        elapsed = (time.perf_counter() - started) * 1000
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
        if run:
            times.append(elapsed)
        out = done.stdout
    return times, out


def summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--ncl", type=Path, default=Path(sys.executable).parent / "ncl", help="The ncl script.")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ncl-bench-cli-"))
    try:
        settings = build(root, args.sessions)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("NCL_", "PYTHON"))}
        env.update({"NCL_DATA_DIR": str(settings.data_dir), "TZ": "UTC", "PYTHONPATH": str(SOURCES)})
        ncl = [str(args.ncl)]
        python = [str(args.ncl.with_name("python")), "-c"]
        results: dict[str, Any] = {}
        for name, command in (("version", [*ncl, "--version"]), ("help", [*ncl, "--help"]),
                              ("tasks_list", [*ncl, "tasks", "list"]), ("python_startup", [*python, "pass"]),
                              ("settings_import", [*python, "import host.settings"])):
            times, _ = timed(command, env, root, args.runs)
            results[name] = summary(times)
        _, listed = timed([*ncl, "tasks", "list", "--json"], env, root, 0)
        found = len(json.loads(listed)["tasks"])
        if found != args.sessions:
            raise SystemExit(f"ncl tasks list listed {found} series, expected {args.sessions}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    met = all(results[name]["median_ms"] < TARGETS[f"{name}_ms_lt"] for name in ("version", "help", "tasks_list"))
    print(json.dumps({"ncl": str(args.ncl), "sources": str(SOURCES),
                      "runs": args.runs, "sessions": args.sessions, "cpus": os.cpu_count(),
                      "load_1min": round(os.getloadavg()[0], 2), **results,
                      "targets": {**TARGETS, "met": met}}, indent=2))


if __name__ == "__main__":
    main()
