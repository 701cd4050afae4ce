#!/usr/bin/env python3
"""Every benchmark in one command: one JSON report on stdout, a short table on stderr (issue 7).

- ``sweep``: one ``Sweeper.tick`` over 100 / 1,000 / 10,000 sessions, variants idle, clone10, due10
  (scripts/bench_sweep.py).
- ``lateness``: 200 one-shot tasks due over 20 s across 50 sessions, the real host loop (``host.loop.Host``,
  real clock) with a runtime whose ``start`` records the real time and acks what is due, as a very fast runner
  would; lateness = that time − the task's due time (scripts/bench_lateness.py).
- ``pickup``: a row written into inbound.db -> claimed by a running runner (warm), and runner process started
  with a row due -> claimed (cold start), mock provider; and the CPU an idle runner uses (scripts/bench_runner.py).
- ``queue``: N jobs sent to one thread (one session) whose runner is already running, under a real
  ``ncl host run`` with local runners and the mock provider: jobs/s from the first send to the last answer
  (scripts/bench_host.py).
- ``rss``: a real ``ncl host run`` sweeping 10,000 idle sessions every second: its VmRSS after a few ticks, and how
  fast its webhook server answers while the first sweep (a host start) opens every session (scripts/bench_host.py).
- ``chat``: chat round trips over the CLI socket of a real ``ncl host run`` (local runners, mock provider), from the
  line sent to the reply back: warm (the session's runner running) and cold (a new session each)
  (scripts/bench_chat.py).

Targets (issue 7): 10,000 idle sessions under 50 ms a tick; firing lateness p99 under 1 s; warm pickup median
under 100 ms; cold start median under 1.5 s; host RSS with 10,000 sessions under 150 MB; (issue 13) an idle runner
under 0.2% of a core. ``--quick`` runs smaller
sizes for a smoke run; a target measured at a smaller size than its own reports ``met: null``
(scripts/bench_report.py).

    .venv/bin/python scripts/bench.py [--only sweep,lateness,pickup,queue,rss,chat] [--quick] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_chat
import bench_runner
import bench_sweep
from bench_host import bench_queue, bench_rss
from bench_kit import log, workdir
from bench_lateness import bench_lateness
from bench_report import table, targets

BENCHES = ("sweep", "lateness", "pickup", "queue", "rss", "chat")


# --- sweep ----------------------------------------------------------------------------------------------------


def bench_sweep_cost(quick: bool) -> dict[str, Any]:
    sizes, ticks, rounds = ([100, 1000], 5, 2) if quick else ([100, 1000, 10000], 20, 5)
    results: list[dict[str, Any]] = []
    setup: dict[str, Any] = {}
    with workdir("ncl-bench-sweep-") as base:
        for size in sizes:
            log(f"sweep: {size} sessions …")
            rows, setup[str(size)] = bench_sweep.bench_size(base / str(size), size, ticks, rounds)
            results += rows
    return {"ticks": ticks, "rounds": rounds, "results": results, "setup": setup}


# --- pickup ---------------------------------------------------------------------------------------------------


def bench_pickup(quick: bool) -> dict[str, Any]:
    samples, cold, idle_s = (10, 3, 5) if quick else (50, 5, 20)
    log(f"pickup: {samples} warm, {cold} cold, {idle_s} s idle …")
    return bench_runner.measure(samples, cold, 0.05, idle_s)


# --- chat -----------------------------------------------------------------------------------------------------


def bench_chat_round_trip(quick: bool) -> dict[str, Any]:
    rounds, cold = (10, 3) if quick else (50, 10)
    return bench_chat.bench(rounds, cold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of a minute or two")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a measured target is missed")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] if args.only else list(BENCHES)
    unknown = set(chosen) - set(BENCHES)
    if unknown or not chosen:
        parser.error(f"--only takes names from {','.join(BENCHES)}; unknown: {','.join(sorted(unknown))}")
    runs: dict[str, Callable[[bool], dict[str, Any]]] = {
        "sweep": bench_sweep_cost, "lateness": bench_lateness, "pickup": bench_pickup, "queue": bench_queue,
        "rss": bench_rss, "chat": bench_chat_round_trip}
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "platform": platform.platform()},
                              "quick": args.quick, "elapsed_s": {}}
    for name in BENCHES:
        if name in chosen:
            started = time.perf_counter()
            report[name] = runs[name](args.quick)
            report["elapsed_s"][name] = round(time.perf_counter() - started, 1)
    report["targets"] = targets(report)
    table(report)
    print(json.dumps(report, indent=2))
    missed = [n for n, t in report["targets"].items() if t["met"] is False]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
