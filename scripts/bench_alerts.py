#!/usr/bin/env python3
"""What raising an alert costs the code that logs it: a warning with an ``alert`` key through ``alerts.reporting``
(since alerts are spooled: an append and an fsync of data/alerts.jsonl), and what the sender's bookkeeping costs an
alert once it is sent (the spool's offset stored: a temporary file fsync'd and renamed). Medians and p99 over
``--rounds`` rounds of ``--alerts`` alerts, each round in a fresh data dir; one JSON object.

    .venv/bin/python scripts/bench_alerts.py [--alerts 200] [--rounds 5]

Runs against whichever tree is on sys.path first (PYTHONPATH=<another checkout> compares trees).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--own-tree" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_kit import percentile, settings_for, workdir

from host.channels import alerts
from host.settings import AlertTarget


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--own-tree", action="store_true", help="this checkout first on sys.path")
    args = parser.parse_args()
    said = logging.getLogger("host.bench")
    put_us: list[float] = []
    done_us: list[float] = []
    for _ in range(args.rounds):
        with workdir("ncl-bench-alerts-") as root:
            settings = settings_for(root)
            out = alerts.Alerts(settings, AlertTarget("webhook", "http://127.0.0.1:9"))
            with alerts.reporting(out):
                for n in range(args.alerts):
                    start = time.perf_counter()
                    said.warning("task t missed %d slot(s)", n, extra={"action": "task_missed", "task": "t",
                                                                      "alert": "task_missed"})
                    put_us.append((time.perf_counter() - start) * 1e6)
            spool = getattr(out, "spool", None)
            if spool is not None:
                for _item, end in spool.waiting():
                    start = time.perf_counter()
                    spool.done(end)
                    done_us.append((time.perf_counter() - start) * 1e6)
                spool.close()
    result = {"tree": str(Path(alerts.__file__).resolve().parent.parent.parent), "alerts": args.alerts,
              "rounds": args.rounds, "put_median_us": round(statistics.median(put_us), 1),
              "put_p99_us": round(percentile(put_us, 0.99), 1)}
    if done_us:
        result |= {"done_median_us": round(statistics.median(done_us), 1),
                   "done_p99_us": round(percentile(done_us, 0.99), 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
