"""Issue 14 point 2: is the event loop ever held? A real ``ncl host run`` (local runtime, mock provider) over N idle
sessions (scripts/bench_sweep.py builds them); two probes measure how long the host takes to answer while it works:
a webhook POST every 20 ms, and an ``ncl chat`` send over the CLI socket every 50 ms (the host's answer to the
send). Measured during two sweeps: the first after a host start (every session opened), and one that finishes and
clones the daily task of 10% of them (a ``completed`` ack written into their outbound.db, then a nudge); then, as the
baseline, 15 s with no sweep. Prints JSON: p50/p99/max of both probes in each phase, and how long the sweeps took.
Target: p99 under 10 ms, max under 50 ms.

    .venv/bin/python scripts/bench_loop.py [--sessions 10000] [--clone-percent 10] [--runs 1]

Runs against whatever ``host`` package comes first on the path, so the same script measures an older checkout too
(``PYTHONPATH=/tmp/before .venv/bin/python scripts/bench_loop.py``). The data is built once and copied for each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sweep
from bench_flood import Probe, _chat_ms, _free_port, _listening, _stats
from bench_host import HostProcess
from bench_kit import log, settings_for, wait_until, webhook_ms, workdir

from host.channels import nudge
from host.settings import Settings
from host.store import db

LIMIT_S = 600
IDLE_S = 15.0  # the baseline: the same probes with no sweep going on (only the probes' own chats to answer)


def _events(host: HostProcess, action: str) -> list[dict[str, Any]]:
    """The host's JSON log records of ``action`` so far."""
    found = []
    for line in list(host.lines):
        if f'"{action}"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("action") == action:
                found.append(record)
    return found


def _probed(settings: Settings, port: int, host: HostProcess, done: Any) -> tuple[float, dict[str, Any]]:
    """Probe the host until ``done()``; seconds taken and the probes' figures."""
    probes = [Probe(lambda: webhook_ms(port, 60), 0.02), Probe(lambda: _chat_ms(settings, "bench"), 0.05)]
    started = time.monotonic()
    for probe in probes:
        probe.start()
    try:
        wait_until(lambda: host.alive() and done(), LIMIT_S, "phase done", every_s=0.05)
    finally:
        for probe in probes:
            probe.stop.set()
        for probe in probes:
            probe.join(120)
    took = time.monotonic() - started
    for probe in probes:
        slow = sorted(zip(probe.samples, probe.at, strict=True), reverse=True)[:3]
        log("slowest: " + ", ".join(f"{ms:.0f} ms at {at - started:+.2f} s" for ms, at in slow))
    return took, {"webhook": _stats(probes[0].samples), "chat": _stats(probes[1].samples)}


def run(root: Path, built: Path, sessions_list: list[Any], percent: int) -> dict[str, Any]:
    """One host over a fresh copy of ``built``: the first sweep, then the clone sweep."""
    shutil.copytree(built, root / "data", symlinks=True)
    # The copy left up to ~1 GB of dirty pages (10,000 sessions): written back during the first sweep, they made each
    # of the host's syncs wait for them (a chat's inbox commit 0.8 s). Measured is the host, not the copy.
    os.sync()
    settings = settings_for(root)
    port = _free_port()
    host = HostProcess(root, NCL_LOG_LEVEL="DEBUG", NCL_LOG_FORMAT="json", NCL_HTTP_PORT=str(port),
                       NCL_SWEEP_INTERVAL_S="600", NCL_IDLE_TIMEOUT_S="600")
    try:
        wait_until(lambda: host.alive() and (settings.data_dir / "cli.sock").exists() and _listening(port), 60,
                   "host listening", every_s=0.002)
        log("first sweep …")
        first_s, first = _probed(settings, port, host, lambda: bool(_events(host, "sessions_seen")))
        time.sleep(1.5)  # every file settled (sweep.RACY_NS)
        cloned = [s for n, s in enumerate(sessions_list) if n % (100 // percent) == 0]
        before = sum(e.get("cloned", 0) for e in _events(host, "sweep"))
        for session in cloned:
            bench_sweep.ack(session._replace(path=str(root / "data" / session.folder.relative_to(built))))
        log(f"clone sweep over {len(cloned)} acks …")
        nudge.touch(settings)
        clone_s, clone = _probed(settings, port, host,
                                 lambda: sum(e.get("cloned", 0) for e in _events(host, "sweep")) - before
                                 >= len(cloned))
        log(f"idle for {IDLE_S:.0f} s …")
        until = time.monotonic() + IDLE_S
        _, idle = _probed(settings, port, host, lambda: time.monotonic() >= until)
    finally:
        host.stop()
    return {"first_sweep_s": round(first_s, 2), "first_sweep": first, "clones": len(cloned),
            "clone_sweep_s": round(clone_s, 2), "clone_sweep": clone, "idle": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--clone-percent", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    log(f"host code: {Path(db.__file__).parent}; load {os.getloadavg()[0]:.2f}; building {args.sessions} sessions …")
    with workdir("ncl-bench-loop-") as base:
        _, listed = bench_sweep.build(base / "built", args.sessions)
        runs = []
        for n in range(args.runs):
            runs.append({"load_1m": round(os.getloadavg()[0], 2),
                         **run(base / f"run{n}", base / "built" / "data", listed, args.clone_percent)})
    print(json.dumps({"host_code": str(Path(db.__file__).parent.parent), "sessions": args.sessions, "runs": runs}))


if __name__ == "__main__":
    main()
