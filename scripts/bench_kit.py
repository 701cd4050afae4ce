"""What the benchmarks of scripts/bench.py share: a log line on stderr, a percentile, a short-lived work dir under
/tmp, settings for a data dir of their own, a polling wait with a deadline, and one timed webhook request."""

from __future__ import annotations

import http.client
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from host.settings import Settings, load


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


def webhook_ms(port: int, timeout_s: float) -> float:
    """One request to the host's webhook server (an unknown name: refused at once), in ms."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/webhooks/bench-probe", body=b"{}", headers={"Content-Type": "application/json"})
        conn.getresponse().read()
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000
