#!/usr/bin/env python3
"""Runner pickup latency: a row written into inbound.db -> claimed by a running runner (mock provider).

Also the cold start: runner process started with a row due -> that row claimed; and what an idle runner costs: the
CPU time its process used over ``idle_s`` seconds with nothing to do, as a share of one core (issue 13: under 0.2%).
Prints one JSON object.
Usage: .venv/bin/python scripts/bench_runner.py [--samples 50] [--poll 0.05] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from host.store.sessions import create_files

ACK = "SELECT 1 FROM processing_ack WHERE message_id = ?"


def write_row(session: Path, seq: int) -> str:
    row_id = f"msg-{1768400000000 + seq}-{seq:06d}"
    with closing(sqlite3.connect(session / "inbound.db", timeout=5)) as conn, conn:
        conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, content) VALUES (?, ?, 'chat', ?, ?)",
                     (row_id, seq, "2026-01-01T00:00:00.000Z", json.dumps({"text": f"ping {seq}"})))
    return row_id


def wait_claimed(session: Path, row_id: str, limit_s: float = 10.0) -> float:
    """Seconds until the row's claim shows in outbound.db (polled every millisecond)."""
    start = time.perf_counter()
    with closing(sqlite3.connect(session / "outbound.db", timeout=5)) as conn:
        while time.perf_counter() - start < limit_s:
            if conn.execute(ACK, (row_id,)).fetchone():
                return time.perf_counter() - start
            time.sleep(0.001)
    raise TimeoutError(f"{row_id} not claimed within {limit_s} s")


def runner(session: Path, poll: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TZ": "UTC", "NCL_PROVIDER": "mock", "NCL_POLL_INTERVAL_S": str(poll),
           "NCL_IDLE_TIMEOUT_S": "600", "NCL_RUNNER_GENERATION": "gen-bench", "NCL_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "agent_runner", "--session-dir", str(session)], env=env,
                            cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL)


def cpu_s(pid: int) -> float:
    """CPU seconds the process has run: /proc/PID/schedstat (nanoseconds), else user + system time from
    /proc/PID/stat (clock ticks, 10 ms)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float) -> dict[str, float]:
    before, started = cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    used, elapsed = cpu_s(pid) - before, time.perf_counter() - started
    return {"seconds": round(elapsed, 1), "cpu_s": round(used, 4), "core_pct": round(100 * used / elapsed, 3)}


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 2),
            "max_ms": round(ms[-1], 2), "samples": len(ms)}


def measure(samples: int = 50, cold_samples: int = 5, poll: float = 0.05, idle_s: float = 20) -> dict[str, Any]:
    """Cold starts, then warm pickups on one running runner, then its idle CPU; the report ``main`` prints."""
    with tempfile.TemporaryDirectory() as tmp:
        cold = []
        for n in range(cold_samples):
            session = Path(tmp) / f"cold{n}"
            create_files(session)
            row = write_row(session, 2)
            start = time.perf_counter()
            proc = runner(session, poll)
            wait_claimed(session, row, 30)
            cold.append(time.perf_counter() - start)
            proc.terminate()
            proc.wait(10)
        session = Path(tmp) / "warm"
        create_files(session)
        proc = runner(session, poll)
        try:
            wait_claimed(session, write_row(session, 2), 30)  # warm up: process started and polling
            warm = []
            for n in range(samples):
                row = write_row(session, 4 + 2 * n)
                warm.append(wait_claimed(session, row))
                time.sleep(0.013 * (n % 7))  # spread writes over the poll phase
            idle = idle_cpu(proc.pid, idle_s)
        finally:
            proc.terminate()
            proc.wait(10)
    report: dict[str, Any] = {"poll_interval_s": poll, "warm_pickup": summary(warm), "cold_start": summary(cold),
                              "idle_cpu": idle, "targets": {"warm_median_ms_lt": 100, "cold_median_ms_lt": 1500,
                                                            "idle_core_pct_lt": 0.2}}
    report["targets"]["met"] = (report["warm_pickup"]["median_ms"] < 100
                                and report["cold_start"]["median_ms"] < 1500 and idle["core_pct"] < 0.2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--cold-samples", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--idle-s", type=float, default=20)
    args = parser.parse_args()
    print(json.dumps(measure(args.samples, args.cold_samples, args.poll, args.idle_s), indent=2))


if __name__ == "__main__":
    main()
