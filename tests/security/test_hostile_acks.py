"""A runner's ack is hostile text (it may write anything into processing_ack.detail): whatever the detail holds, the
occurrence finishes, the series goes on, and what the host keeps of it is bounded. Was: a ``reason`` that was no
string (a JSON object) failed the visit at every sweep, so the session's task never finished; a reason of any size
was copied whole into task_runs."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from kit import World, utc

from host.store import db
from schemas.times import to_text

T0 = utc("2026-05-18T13:00:00")
DETAILS = [
    {"outcome": "failed", "reason": {"nested": ["object"]}},
    {"outcome": "failed", "reason": 12},
    {"outcome": "failed", "reason": "x" * 5_000_000},
    {"outcome": "ran", "started_at": {"not": "a time"}},
    {"outcome": "ran", "started_at": "yesterday"},
    {"outcome": ["ran"]},
]


@pytest.mark.parametrize("detail", DETAILS, ids=["object-reason", "number-reason", "huge-reason", "object-start",
                                                  "text-start", "list-outcome"])
def test_any_ack_detail_finishes_the_occurrence_and_keeps_little(tmp_path: Path, detail: dict[str, object]) -> None:
    world = World(tmp_path)
    task = world.schedule(T0, at=to_text(T0), recurrence="0 9 * * *")
    sweeper = world.sweeper()
    sweeper.tick(T0)
    with closing(world.outbound()) as conn, db.transaction(conn):
        conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail, generation)"
                     " VALUES (?, 'failed', ?, ?, 'gen-test')", (task, to_text(T0 + timedelta(seconds=5)),
                                                                 json.dumps(detail)))
    sweeper.tick(T0 + timedelta(seconds=10))
    [run] = world.runs(task)
    assert len(run["detail"] or "") <= 4096
    [live] = world.live(task)
    assert live["id"] != task and live["status"] == "pending"  # the next occurrence, cloned


def test_a_detail_nested_beyond_reason_or_too_long_to_parse_is_only_a_reason(tmp_path: Path) -> None:
    world = World(tmp_path)
    for detail in ("[" * 100_000 + "]" * 100_000, json.dumps({"outcome": "ran", "pad": "y" * (4 << 20)})):
        task = world.schedule(T0, prompt=f"task {len(world.rows())}", at=to_text(T0), recurrence="0 9 * * *")
        sweeper = world.sweeper()
        sweeper.tick(T0)
        with closing(world.outbound()) as conn, db.transaction(conn):
            conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail,"
                         " generation) VALUES (?, 'completed', ?, ?, 'gen-test')",
                         (task, to_text(T0 + timedelta(seconds=5)), detail))
        sweeper.tick(T0 + timedelta(seconds=10))
        [run] = world.runs(task)
        assert run["outcome"] == "ran" and run["detail"] == detail[:4000]
