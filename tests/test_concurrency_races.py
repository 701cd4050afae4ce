"""Concurrency (issue 7): two ``ncl tasks`` writes that race with a firing, pinned with a fake clock on real SQLite
files: a pause between the runner's claim and the host's sync keeps the run and the misfire rule; a new next run given
while an occurrence runs is not lost (or is refused clearly).

The same writes in a tight loop against a running host: tests/test_concurrency_load.py.
"""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta
from pathlib import Path

from kit import World, utc

from host.errors import NclError
from host.scheduling import tasks
from schemas.times import to_text

# Two writes that race with a firing, pinned with a fake clock. The runner claims a due row in outbound.db at once;
# the host copies that claim into messages_in ('processing') only at its next sweep (up to 0.25 s later, or
# never before the run ends when the run is short). `ncl tasks pause|cancel|update` decide by messages_in alone.
T = utc("2026-05-18T13:00:00")


def test_a_pause_between_the_runners_claim_and_the_hosts_sync_keeps_the_run_and_the_misfire(tmp_path: Path) -> None:
    world = World(tmp_path, tz="UTC")
    series = world.schedule(T - timedelta(minutes=1), recurrence="0 * * * *", at=to_text(T))
    world.ack(series, "processing", T, generation="gen-live")  # claimed; no sweep has seen the claim yet
    with closing(world.inbound()) as conn:
        assert tasks.pause(conn, series, T + timedelta(seconds=1), world.policy, folder=world.session.folder) == 1
    world.ack(series, "completed", T + timedelta(seconds=2), generation="gen-live", outcome="ran")
    sweeper = world.sweeper()
    sweeper.tick(T + timedelta(seconds=3))
    # The run finished (DESIGN §6.6: a running occurrence finishes; the next one is created paused).
    assert [(r["outcome"], r["scheduled_for"]) for r in world.runs(series)] == [("ran", to_text(T))]
    assert [(r["status"], r["process_after"]) for r in world.live(series)] == [("paused", "2026-05-18T14:00:00.000Z")]
    later = T + timedelta(minutes=90)  # 14:00 passed while paused: within the grace, it runs once, at once
    with closing(world.inbound()) as conn:
        tasks.resume(conn, series, later, world.policy)
    assert sweeper.tick(later + timedelta(seconds=1)).woken == 1


def test_a_new_next_run_given_while_an_occurrence_runs_is_not_lost(tmp_path: Path) -> None:
    world = World(tmp_path, tz="UTC")
    series = world.schedule(T - timedelta(minutes=1), recurrence="0 * * * *", at=to_text(T))
    with closing(world.inbound()) as conn:  # what the sweep writes once it has seen the runner's claim
        conn.execute("UPDATE messages_in SET status = 'processing' WHERE id = ?", (series,))
    wanted = to_text(T + timedelta(minutes=20))
    try:
        with closing(world.inbound()) as conn:
            tasks.update(conn, series, T + timedelta(seconds=5), world.policy, process_after=wanted,
                         folder=world.session.folder)
    except NclError:
        return  # refusing clearly ("it is running; try again when it ends") is a fine answer too
    world.run_occurrence(world.sweeper(), series, T + timedelta(seconds=10))
    assert [r["process_after"] for r in world.live(series)] == [wanted]
