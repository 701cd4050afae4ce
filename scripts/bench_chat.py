#!/usr/bin/env python3
"""Chat round trip under a real ``ncl host run`` (local runners, mock provider): what ``ncl chat`` does, from a
line sent on the host's CLI socket to the reply arriving back on that socket.

- ``first``: the first message after the host started.
- ``warm``: N messages one after another on one connection to one session, whose runner is already running.
- ``oneshot``: N real ``ncl chat chat TEXT`` processes one after another, to the same session with its runner
  already up: wall time of the whole process (start, imports, settings, the round trip, the reply printed), what a
  user waits for (issue 14.5: under 150 ms), and ``cpu_ms``, the CPU time (user + system) of those processes, which
  a loaded machine changes far less than their wall time. With ``--against DIR`` (another checkout, e.g. the commit
  before a change: ``git archive COMMIT | tar -x -C DIR``), that checkout's ``ncl chat`` runs alternate with this
  one's against the same host: ``oneshot_against``, before and after interleaved on the same load.
- ``cold``: N messages each sent once the runner has exited (idle): a host with no runner alive wakes, starts one,
  and answers, as for the first message after a pause.

    .venv/bin/python scripts/bench_chat.py [--rounds N] [--oneshot N] [--against DIR] [--cold N]

Every process it starts (the host, ``ncl``) runs this checkout (first on PYTHONPATH, whatever the venv's editable
install points at), ``--against``'s one-shot chats that one. The runners the host starts get no PYTHONPATH: they run
what the venv's install points at, whose schema version must be this checkout's.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_host import HostProcess, host_env
from bench_kit import log, percentile, wait_until, workdir

from host.channels import cli_protocol as protocol

NCL = [sys.executable, "-c", "from host.cli import main; main()"]
SOURCES = Path(__file__).resolve().parent.parent
LIMIT_S = 60.0
IDLE_S = 1.0  # the runners' idle timeout: a cold round waits this long and a little more for the runner to exit


class Chat:
    """One connection to the CLI socket, as ``ncl chat`` holds it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(LIMIT_S)
        self.sock.connect(str(path))
        self.lines = self.sock.makefile("rb")

    def round_trip_ms(self, group: str, text: str, thread: str | None) -> float:
        """Send one message; ms until the reply to it comes back."""
        started = time.perf_counter()
        self.sock.sendall(protocol.encode(protocol.send(group, text, thread)))
        while "ok" not in (answer := protocol.decode(self.lines.readline())):
            pass  # a reply to a message sent to this session by another client (the one-shot chats)
        if not answer["ok"]:
            raise RuntimeError(f"refused: {answer}")
        while (reply := protocol.decode(self.lines.readline()).get("reply")) is None or \
                reply.get("in_reply_to") != answer["message_id"]:
            pass
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def _stats(samples: list[float]) -> dict[str, Any]:
    return {"n": len(samples), "median_ms": round(statistics.median(samples), 1),
            "p95_ms": round(percentile(samples, 0.95), 1), "max_ms": round(max(samples), 1)}


def _cold_ms(chat: Chat, n: int) -> float:
    time.sleep(IDLE_S + 1.5)
    return chat.round_trip_ms("chat", f"hello again {n}", None)


def _oneshot_ms(root: Path, n: int, sources: Path = SOURCES) -> tuple[float, float]:
    """One ``ncl chat`` process of the checkout ``sources``: ms from its start to its exit, and ms of CPU it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([*NCL, "chat", "chat", f"once {n}"], cwd=root,
                          env=host_env(root / "data", PYTHONPATH=str(sources)), capture_output=True, text=True,
                          check=False)
    elapsed = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"ncl chat failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed, (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000


def _oneshot_stats(runs: list[tuple[float, float]]) -> dict[str, Any]:
    return {**_stats([wall for wall, _ in runs]), "cpu_ms": round(statistics.median(cpu for _, cpu in runs), 1)}


def bench(rounds: int, oneshot: int, against: Path | None, cold: int) -> dict[str, Any]:
    with workdir("ncl-bench-chat-") as root:
        (root / "data").mkdir()
        subprocess.run([*NCL, "groups", "create", "chat", "--channel", "cli"], cwd=root,
                       env=host_env(root / "data", PYTHONPATH=str(SOURCES)), check=True, stdout=subprocess.DEVNULL)
        host = HostProcess(root, NCL_LOG_LEVEL="WARNING", NCL_IDLE_TIMEOUT_S=str(IDLE_S), PYTHONPATH=str(SOURCES))
        try:
            path = root / "data" / "cli.sock"
            wait_until(lambda: host.alive() and path.exists(), 30, "cli socket")
            chat = Chat(path)
            try:
                log(f"chat: first message (runner start), {rounds} warm, {oneshot} one-shot, {cold} cold …")
                first = chat.round_trip_ms("chat", "hello", None)
                warm = [chat.round_trip_ms("chat", f"ping {n}", None) for n in range(rounds)]
                once: list[tuple[float, float]] = []
                other: list[tuple[float, float]] = []
                for n in range(oneshot):  # one after another, each well within the runner's idle timeout
                    once.append(_oneshot_ms(root, n))
                    if against:
                        other.append(_oneshot_ms(root, n, against))
                fresh = [_cold_ms(chat, n) for n in range(cold)]
            finally:
                chat.close()
        finally:
            host.stop()
    return {"first_ms": round(first, 1), "warm": _stats(warm), "oneshot": _oneshot_stats(once) if once else {},
            **({"oneshot_against": {"checkout": str(against), **_oneshot_stats(other)}} if other else {}),
            "cold": _stats(fresh) if fresh else {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="warm round trips")
    parser.add_argument("--oneshot", type=int, default=20, help="whole `ncl chat GROUP TEXT` processes")
    parser.add_argument("--against", type=Path, help="another checkout whose one-shot chats alternate with these")
    parser.add_argument("--cold", type=int, default=10, help="round trips that each start a runner (~3 s each)")
    args = parser.parse_args()
    print(json.dumps(bench(args.rounds, args.oneshot, args.against, args.cold), indent=2))


if __name__ == "__main__":
    main()
