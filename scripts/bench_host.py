"""The benchmarks of scripts/bench.py that run a real ``ncl host run`` (local runners, mock provider), each in a data
dir of its own:

- ``queue``: N jobs sent to one thread (one session) whose runner is already running: jobs/s from the first send to
  the last answer, and to the last answer handed on.
- ``rss``: the host sweeping 10,000 idle sessions every second (scripts/bench_sweep.py builds them): its VmRSS after a
  few ticks, and how fast its webhook server answers while the first sweep (a host start) opens every session.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import bench_sweep
from bench_kit import log, percentile, settings_for, wait_until, webhook_ms, workdir

from host.channels import queues
from host.store import db, groups
from schemas import clock

HOST_CMD = [sys.executable, "-c", "from host.cli import main; main()", "host", "run"]


def host_env(data_dir: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    return {**base, "NCL_DATA_DIR": str(data_dir), "TZ": "UTC", "NCL_RUNTIME": "local", "NCL_PROVIDER": "mock",
            "NCL_HTTP_PORT": "0", **extra}


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


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def _first_sweep(host: HostProcess) -> tuple[float, dict[str, float]]:
    """Seconds from the webhook server listening to "every session seen once", and how fast the webhook server
    answered meanwhile (a host sweeping at start must keep serving)."""
    wait_until(lambda: host.alive() and any("webhooks on http://127.0.0.1:" in line for line in host.lines),
               60, "webhooks listening", every_s=0.01)
    port = int(next(line for line in host.lines if "webhooks on http://" in line).split(":")[-1].split("/")[0])
    started, during = time.monotonic(), []
    while not any("every session seen once" in line for line in host.lines):
        host.alive()
        during.append(webhook_ms(port, 60))
        if time.monotonic() - started > 300:
            raise RuntimeError("the host never saw every session")
    return time.monotonic() - started, {"n": len(during), "median": round(statistics.median(during), 1),
                                        "p99": round(percentile(during, 0.99), 1), "max": round(max(during), 1)}


def bench_rss(quick: bool) -> dict[str, Any]:
    """The first start over ``size`` idle sessions (every one opened), its RSS while sweeping them every second,
    then a restart (the host opens only what changed since: issue 14)."""
    size, ticks = (1000, 3) if quick else (10000, 5)
    env = {"NCL_SWEEP_INTERVAL_S": "1", "NCL_LOG_LEVEL": "DEBUG"}
    with workdir("ncl-bench-rss-") as root:
        log(f"rss: building {size} sessions …")
        bench_sweep.build(root, size)  # every session idle: one daily task, not due
        host = HostProcess(root, **env)
        try:
            first_s, first = _first_sweep(host)
            full_s = time.monotonic()
            samples = []
            while time.monotonic() - full_s < ticks + 2:  # the settling tick, then `ticks` idle ones
                host.alive()
                samples.append(_proc_status(host.proc.pid))
                time.sleep(0.25)
        finally:
            host.stop()
        log("rss: restarting the host …")
        host = HostProcess(root, **env)
        try:
            restart_s, restart = _first_sweep(host)
        finally:
            host.stop()
    last = samples[-1]
    return {"sessions": size, "sweep_interval_s": 1, "sampled_s": ticks + 2,
            "rss_mb": round(last["VmRSS"] / 1024, 1), "rss_max_mb": round(max(s["VmRSS"] for s in samples) / 1024, 1),
            "hwm_mb": round(last["VmHWM"] / 1024, 1), "first_sweep_s": round(first_s, 1),
            "webhook_during_first_sweep_ms": first, "restart_sweep_s": round(restart_s, 2),
            "webhook_during_restart_ms": restart}
