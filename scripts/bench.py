#!/usr/bin/env python3
"""Every benchmark in one command: one JSON report on stdout, a short table on stderr (issue 7).

- ``sweep``: one ``Sweeper.tick`` over 100 / 1,000 / 10,000 sessions, variants idle, clone10, due10
  (scripts/bench_sweep.py).
- ``lateness``: 200 one-shot tasks due over 20 s across 50 sessions, the real host loop (``host.loop.Host``,
  real clock) with a runtime whose ``start`` records the real time and acks what is due, as a very fast runner
  would; lateness = that time − the task's due time.
- ``pickup``: a row written into inbound.db -> claimed by a running runner (warm), and runner process started
  with a row due -> claimed (cold start), mock provider (scripts/bench_runner.py).
- ``queue``: N jobs sent to one thread (one session) whose runner is already running, under a real
  ``ncl host run`` with local runners and the mock provider: jobs/s from the first send to the last answer.
- ``rss``: a real ``ncl host run`` sweeping 10,000 idle sessions every second: its VmRSS after a few ticks, and how
  fast its webhook server answers while the first sweep (a host start) opens every session.

Targets (issue 7): 10,000 idle sessions under 50 ms a tick; firing lateness p99 under 1 s; warm pickup median
under 100 ms; cold start median under 1.5 s; host RSS with 10,000 sessions under 150 MB. ``--quick`` runs smaller
sizes for a smoke run; a target measured at a smaller size than its own reports ``met: null``.

    .venv/bin/python scripts/bench.py [--only sweep,lateness,pickup,queue,rss] [--quick] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_runner
import bench_sweep

from host import db, groups, queues, sessions, tasks
from host.loop import Host
from host.recurrence import Policy
from host.sessions import Session
from host.settings import Settings, load
from schemas import clock, ids
from schemas.times import from_text, to_text

BENCHES = ("sweep", "lateness", "pickup", "queue", "rss")
HOST_CMD = [sys.executable, "-c", "from host.cli import main; main()", "host", "run"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    # Short paths under /tmp: a runner's proxy socket path in its session folder must fit AF_UNIX's 107 bytes.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def host_env(data_dir: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    return {**base, "NCL_DATA_DIR": str(data_dir), "TZ": "UTC", "NCL_RUNTIME": "local", "NCL_PROVIDER": "mock",
            "NCL_HTTP_PORT": "0", **extra}


def settings_for(root: Path, **extra: str) -> Settings:
    settings = load(environ={"NCL_DATA_DIR": str(root / "data"), "TZ": "UTC", **extra}, cwd=root, system_tz="UTC")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def wait_until(check: Callable[[], bool], limit_s: float, what: str, every_s: float = 0.005) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {limit_s} s")
        time.sleep(every_s)


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


# --- firing lateness ------------------------------------------------------------------------------------------


@dataclass
class AckingRuntime:
    """A runner that starts instantly: the real time of the start is recorded for each row it finds due, which it
    acks at once (with the heartbeat a runner writes); then it has exited. The host's loop does the rest."""

    lateness_ms: dict[str, float] = field(default_factory=dict)
    starts: int = 0

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        started = datetime.now(UTC)
        self.starts += 1
        with closing(db.connect(session.folder / "inbound.db", "inbound", readonly=True)) as conn:
            due = conn.execute("SELECT id, process_after FROM messages_in WHERE status = 'pending' AND trigger = 1"
                               " AND (process_after IS NULL OR process_after <= ?)", (to_text(started),)).fetchall()
        for row in due:
            self.lateness_ms.setdefault(row[0], (started - from_text(row[1])).total_seconds() * 1000)
        (session.folder / ".heartbeat").write_text(generation)
        detail = json.dumps({"outcome": "ran", "reason": None})
        with closing(db.connect(session.folder / "outbound.db", "outbound")) as conn, db.transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail,"
                             " generation) VALUES (?, 'completed', ?, ?, ?)",
                             [(row[0], to_text(started), detail, generation) for row in due])

    def is_running(self, session_id: str) -> bool:
        return False

    def stop(self, session_id: str) -> None:
        return None


async def _run_host(host: Host, runtime: AckingRuntime, total: int, until: float) -> None:
    while len(runtime.lateness_ms) < total and time.monotonic() < until:
        await host.step()


def bench_lateness(quick: bool) -> dict[str, Any]:
    count, spread_s, session_count = (40, 5.0, 10) if quick else (200, 20.0, 50)
    with workdir("ncl-bench-late-") as root:
        settings = settings_for(root)
        policy = Policy.of(settings)
        now = clock.now()
        with closing(db.connect(settings.central_db, "central")) as central:
            group, _ = groups.create(central, settings, now, "bench", ["cli"])
            made = [sessions.create(central, settings, now, group, None) for _ in range(session_count)]
        start = now + timedelta(seconds=3)  # the host's first tick and its settling visit come first
        rng = random.Random(7)
        due_at = sorted(rng.uniform(0, spread_s) for _ in range(count))
        for n, offset in enumerate(due_at):
            session = made[n % session_count]
            with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
                tasks.schedule(conn, now, policy, ids.new_id("task", now), f"task {n}",
                               to_text(start + timedelta(seconds=offset)), enforce_interval=False)
        runtime = AckingRuntime()
        host = Host(settings, runtime, clock)
        log(f"lateness: {count} one-shot tasks over {spread_s:g} s in {session_count} sessions …")
        try:
            asyncio.run(_run_host(host, runtime, count, time.monotonic() + 3 + spread_s + 15))
        finally:
            host.sweeper.close()
            host.scheduled.close()
            host.proxy.shutdown()
    late = list(runtime.lateness_ms.values())
    return {"tasks": count, "sessions": session_count, "spread_s": spread_s, "fired": len(late),
            "missing": count - len(late), "runner_starts": runtime.starts,
            "p50_ms": round(statistics.median(late), 1) if late else None,
            "p99_ms": round(percentile(late, 0.99), 1) if late else None,
            "max_ms": round(max(late), 1) if late else None, "min_ms": round(min(late), 1) if late else None}


# --- pickup ---------------------------------------------------------------------------------------------------


def bench_pickup(quick: bool) -> dict[str, Any]:
    samples, cold = (10, 3) if quick else (50, 5)
    log(f"pickup: {samples} warm, {cold} cold …")
    return bench_runner.measure(samples, cold, 0.05)


# --- queue throughput -----------------------------------------------------------------------------------------


class HostProcess:
    """A real ``ncl host run``; its stderr lines are kept (read by a thread) so the pipe never fills."""

    def __init__(self, root: Path, **extra: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(HOST_CMD, cwd=root, env=host_env(root / "data", **extra),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def alive(self) -> bool:
        """True while the host runs; a host that exited is an error, with its last words."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"host exited {self.proc.returncode}: {self.lines[-5:]}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _answered(outbound: Path, wanted: set[str]) -> int:
    if not outbound.exists():
        return 0
    with closing(sqlite3.connect(f"{outbound.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        found = {r[0] for r in conn.execute("SELECT in_reply_to FROM messages_out WHERE kind = 'chat'")}
    return len(found & wanted)


def _handed_on(inbound: Path) -> int:
    with closing(sqlite3.connect(f"{inbound.as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM delivered").fetchone()[0])


def bench_queue(quick: bool) -> dict[str, Any]:
    jobs = 100 if quick else 500
    with workdir("ncl-bench-queue-") as root:
        settings = settings_for(root)
        with closing(db.connect(settings.central_db, "central")) as central:
            groups.create(central, settings, clock.now(), "bench", ["queue:bench"])
        host = HostProcess(root, NCL_IDLE_TIMEOUT_S="120", NCL_LOG_LEVEL="WARNING")
        try:
            wait_until(lambda: host.alive() and (settings.data_dir / "cli.sock").exists(), 30, "host start")
            with closing(db.connect(settings.central_db, "central")) as central:
                first = queues.send(central, settings, clock.now(), "bench", {"prompt": "warm", "thread_id": "t"})
                folder = settings.sessions_dir / "ag-bench" / first["session_id"]
                wait_until(lambda: _answered(folder / "outbound.db", {first["message_id"]}) == 1, 30,
                           "warm-up job answered (runner running)")
                log(f"queue: {jobs} jobs to one session with a running runner …")
                started = time.perf_counter()
                sent = {queues.send(central, settings, clock.now(), "bench",  # what `ncl queue send` does
                                    {"prompt": f"job {n}", "thread_id": "t"})["message_id"] for n in range(jobs)}
            send_s = time.perf_counter() - started
            wait_until(lambda: _answered(folder / "outbound.db", sent) == jobs, 120, "every job answered",
                       every_s=0.002)
            answered_s = time.perf_counter() - started
            wait_until(lambda: _handed_on(folder / "inbound.db") >= jobs + 1, 60, "every answer handed on",
                       every_s=0.002)
            handed_s = time.perf_counter() - started
        finally:
            host.stop()
    return {"jobs": jobs, "send_s": round(send_s, 3), "answered_s": round(answered_s, 3),
            "handed_on_s": round(handed_s, 3), "jobs_per_s": round(jobs / answered_s, 1),
            "handed_on_jobs_per_s": round(jobs / handed_s, 1)}


# --- host RSS -------------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def _webhook_ms(port: int) -> float:
    """One request to the host's webhook server (an unknown name: refused at once), in ms."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/webhooks/bench-probe", body=b"{}", headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000


def bench_rss(quick: bool) -> dict[str, Any]:
    size, ticks = (1000, 3) if quick else (10000, 5)
    with workdir("ncl-bench-rss-") as root:
        log(f"rss: building {size} sessions …")
        bench_sweep.build(root, size)  # every session idle: one daily task, not due
        host = HostProcess(root, NCL_SWEEP_INTERVAL_S="1", NCL_LOG_LEVEL="DEBUG")
        try:
            # The first sweep opens every session, a chunk a tick; meanwhile the host must keep answering.
            wait_until(lambda: host.alive() and any("webhooks on http://127.0.0.1:" in line for line in host.lines),
                       60, "webhooks listening", every_s=0.01)
            port = int(next(line for line in host.lines if "webhooks on http://" in line).split(":")[-1].split("/")[0])
            started, during = time.monotonic(), []
            while not any("every session seen once" in line for line in host.lines):
                host.alive()
                during.append(_webhook_ms(port))
                if time.monotonic() - started > 300:
                    raise RuntimeError("the host never saw every session")
            first_sweep_s = time.monotonic() - started
            full_s = time.monotonic()
            samples = []
            while time.monotonic() - full_s < ticks + 2:  # the settling tick, then `ticks` idle ones
                host.alive()
                samples.append(_proc_status(host.proc.pid))
                time.sleep(0.25)
        finally:
            host.stop()
    last = samples[-1]
    return {"sessions": size, "sweep_interval_s": 1, "sampled_s": ticks + 2,
            "rss_mb": round(last["VmRSS"] / 1024, 1), "rss_max_mb": round(max(s["VmRSS"] for s in samples) / 1024, 1),
            "hwm_mb": round(last["VmHWM"] / 1024, 1), "first_sweep_s": round(first_sweep_s, 1),
            "webhook_during_first_sweep_ms": {"n": len(during), "median": round(statistics.median(during), 1),
                                              "max": round(max(during), 1)} if during else None}


# --- report ---------------------------------------------------------------------------------------------------


def target(limit: float, unit: str, value: float | None, measured_at: int | None = None,
           needed_at: int | None = None) -> dict[str, Any]:
    full = measured_at == needed_at
    met = None if value is None or not full else value < limit
    entry: dict[str, Any] = {"limit": limit, "unit": unit, "value": value, "met": met}
    if needed_at is not None:
        entry |= {"sessions": measured_at, "target_sessions": needed_at}
    return entry


def targets(report: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if "sweep" in report:
        idle = {r["sessions"]: r["median_ms"] for r in report["sweep"]["results"] if r["variant"] == "idle"}
        size = max(idle)
        found["idle_10000_tick_ms"] = target(50, "ms", idle[size], size, 10000)
    if "lateness" in report:
        found["firing_lateness_p99_ms"] = target(1000, "ms", report["lateness"]["p99_ms"])
        if report["lateness"]["missing"]:
            found["firing_lateness_p99_ms"]["met"] = False
    if "pickup" in report:
        found["warm_pickup_median_ms"] = target(100, "ms", report["pickup"]["warm_pickup"]["median_ms"])
        found["cold_start_median_ms"] = target(1500, "ms", report["pickup"]["cold_start"]["median_ms"])
    if "rss" in report:
        found["host_rss_10000_mb"] = target(150, "MB", report["rss"]["rss_mb"], report["rss"]["sessions"], 10000)
    return found


def table(report: dict[str, Any]) -> None:
    if "sweep" in report:
        log(f"\n{'sweep':<10} {'sessions':>8} {'variant':<8} {'median_ms':>10} {'p95_ms':>9} {'ms/busy':>8}")
        for r in report["sweep"]["results"]:
            per = "-" if r["per_busy_session_ms"] is None else f"{r['per_busy_session_ms']:.3f}"
            log(f"{'':<10} {r['sessions']:>8} {r['variant']:<8} {r['median_ms']:>10.3f} {r['p95_ms']:>9.3f} {per:>8}")
    if "lateness" in report:
        late = report["lateness"]
        log(f"lateness   {late['fired']}/{late['tasks']} fired: p50 {late['p50_ms']} ms, p99 {late['p99_ms']} ms,"
            f" max {late['max_ms']} ms")
    if "pickup" in report:
        warm, cold = report["pickup"]["warm_pickup"], report["pickup"]["cold_start"]
        log(f"pickup     warm median {warm['median_ms']} ms (p95 {warm['p95_ms']}), cold median {cold['median_ms']}"
            f" ms (max {cold['max_ms']})")
    if "queue" in report:
        q = report["queue"]
        log(f"queue      {q['jobs']} jobs: {q['jobs_per_s']} jobs/s answered, {q['handed_on_jobs_per_s']} jobs/s"
            " handed on")
    if "rss" in report:
        r = report["rss"]
        log(f"rss        {r['sessions']} sessions: VmRSS {r['rss_mb']} MB (peak {r['hwm_mb']} MB)")
        if r["webhook_during_first_sweep_ms"]:
            w = r["webhook_during_first_sweep_ms"]
            log(f"start      first sweep {r['first_sweep_s']} s; webhooks answered meanwhile in "
                f"{w['median']} ms median, {w['max']} ms max ({w['n']} requests)")
    log(f"\n{'target':<26} {'value':>10} {'limit':>8}  met")
    for name, t in report["targets"].items():
        met = {True: "yes", False: "NO", None: "n/a (smaller size)"}[t["met"]]
        log(f"{name:<26} {t['value']!s:>10} {'< ' + format(t['limit'], 'g'):>8}  {met}")


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
        "rss": bench_rss}
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
