#!/usr/bin/env python3
"""Where a Docker runner's cold start goes (issue 14: under 400 ms median): ``Runners.start`` of a new container
until the runner's claim of the due chat row, split by timestamps into the engine calls ``DockerRuntime`` makes
(each API request, on its worker thread), the wait before the runner process exists, and the runner itself (process
start to claim). One JSON object of medians in ms.

    .venv/bin/python scripts/bench_docker_start.py [--starts 7]

Runs NCL_IMAGE, by default ncl-agent:test (built by tests/docker). The runner's process start is read from
/proc (clock ticks since boot, 10 ms steps), so the split of the last two figures is ±10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_kit import log, settings_for, wait_until, workdir

from host.runtimes.docker import DockerRuntime, _default_client
from host.runtimes.pool import Runners
from host.store import db, groups, sessions
from schemas import clock

TEST_IMAGE = "ncl-agent:test"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
CALLS = ("ping", "inspect_image", "remove_container", "create_container", "inspect_container", "start")


def boot_s() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def timed(call: Callable[..., Any], name: str, calls: list[tuple[str, float, float]]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = boot_s()
        try:
            return call(*args, **kwargs)
        finally:
            calls.append((name, began, boot_s()))
    return wrapper


def timed_client(calls: list[tuple[str, float, float]]) -> Callable[[], Any]:
    """The runtime's client, each engine request of ``CALLS`` recorded as (name, began, ended) in boot-clock s."""
    def factory() -> Any:
        client = _default_client()
        for name in CALLS:
            setattr(client.api, name, timed(getattr(client.api, name), name, calls))
        return client
    return factory


def runner_started_s(engine: Any, container_id: str) -> float:
    """When the container's runner process (the child of docker-init, its pid 1) started, in boot-clock s."""
    init = engine.api.inspect_container(container_id)["State"]["Pid"]
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    stat = Path(f"/proc/{children[0]}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19]) * TICK_S


def claimed(folder: Path, message_id: str) -> bool:
    try:
        with closing(sqlite3.connect(f"file:{folder / 'outbound.db'}?mode=ro", uri=True)) as conn:
            found = conn.execute("SELECT 1 FROM processing_ack WHERE message_id = ?", (message_id,)).fetchone()
        return found is not None
    except sqlite3.Error:  # not made yet
        return False


def measure(starts: int) -> dict[str, Any]:
    import docker

    engine = docker.from_env()
    phases: dict[str, list[float]] = defaultdict(list)
    with workdir("ncl-dstart-") as root:
        settings = settings_for(root, NCL_IMAGE=os.environ.get("NCL_IMAGE", TEST_IMAGE), NCL_IDLE_TIMEOUT_S="60")
        now = clock.now()
        with closing(db.connect(settings.central_db, "central")) as central:
            group, _ = groups.create(central, settings, now, "start", ["cli"])
            made = [sessions.create(central, settings, now, group, None) for _ in range(starts + 1)]
        calls: list[tuple[str, float, float]] = []
        runtime = DockerRuntime(settings, client_factory=timed_client(calls))
        runners = Runners(runtime, settings)
        try:
            for n, session in enumerate(made):
                message_id = f"msg-{1768400000000 + n}-bench0"
                with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn, db.transaction(conn):
                    conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, trigger, channel_type, content)"
                                 " VALUES (?, 2, 'chat', '2026-01-14T14:00:00.000Z', 1, 'cli', ?)",
                                 (message_id, json.dumps({"text": "bench", "sender": "b", "sender_id": "b"})))
                calls.clear()
                began = boot_s()
                runners.start(session, clock.now())
                wait_until(partial(claimed, session.folder, message_id), 60, "the runner's claim", every_s=0.002)
                done, calls_made = boot_s(), list(calls)
                process = runner_started_s(engine, runtime.wait_started(session.id))
                runners.kill(session.id)
                if n == 0:
                    continue  # the first start also connects to the engine and warms its caches
                total = dict.fromkeys(CALLS, 0.0)
                for name, call_began, call_ended in calls_made:
                    total[name] += call_ended - call_began
                start_began, start_ended = next((b, e) for name, b, e in calls_made if name == "start")
                phases["total"].append(done - began)
                phases["host_before_engine"].append(min(b for _, b, _ in calls_made) - began)
                for name in CALLS[1:]:
                    phases[f"api_{name}"].append(total[name])
                phases["start_call_to_runner_process"].append(process - start_began)  # runc's own work
                phases["start_call_after_runner_process"].append(start_ended - process)
                phases["start_returned_to_claim"].append(done - start_ended)
                phases["runner_process_to_claim"].append(done - process)
                log(f"start {n}: {(done - began) * 1000:.0f} ms")
        finally:
            runtime.close(stop_runners=True)
    return {"starts": starts, "load": os.getloadavg()[0],
            "median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in phases.items()},
            "total_ms": [round(v * 1000) for v in phases["total"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=7)
    print(json.dumps(measure(parser.parse_args().starts), indent=2))


if __name__ == "__main__":
    main()
