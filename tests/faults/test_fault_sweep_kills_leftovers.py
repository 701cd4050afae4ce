"""Issue 7, fault injection: what a killed host leaves behind, and what the next host makes of it. A recurring
occurrence claimed by a runner that died with its host is retried as the latest passed slot of its grid, the slots
not run recorded as one ``missed`` run (deterministic: a fake clock on real files); a SIGKILLed host's live local
runner is gone before it can serve beside the next host (real processes).

The kill loop these were found with: tests/faults/test_fault_sweep_kills.py.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

import pytest
from faultkit import runner_pids, scenario_step
from kit import RecordingRuntime, World, exits_within, utc
from processes import Env, Host

from schemas.times import to_text


def test_a_recurring_occurrence_retried_after_its_runner_died_keeps_the_grid_and_records_missed_slots(
        tmp_path: Path) -> None:
    """Seen while building the kill loop of test_fault_sweep_kills.py (runs recorded at retry times, off the grid).
    A */10 occurrence is claimed at 10:00 by a runner that dies with its host; the host is back at 10:25 and the
    retry runs at 10:26. By DESIGN §6.3 and §12.7 the overdue occurrence runs as the latest passed slot (10:20), the
    slots not run are one ``missed`` run, and the grid goes on at 10:30. Deterministic: one session, real files, a
    fake clock."""
    with scenario_step("a claimed occurrence, its runner and host dead, released and run by the next"):
        world = World(tmp_path, tz="UTC")
        slot = utc("2026-05-18T10:00:00")
        task = world.schedule(slot - timedelta(minutes=5), recurrence="*/10 * * * *")
        runtime = RecordingRuntime()
        sweeper = world.sweeper(runtime)
        assert sweeper.tick(slot).woken == 1
        world.ack(task, "processing", slot + timedelta(seconds=1), generation=runtime.started[-1][2])
        restarted = world.sweeper(RecordingRuntime())  # the host died with its runner; a new one knows no runner
        assert restarted.tick(slot + timedelta(minutes=25)).retried == 1
        world.ack(task, "completed", slot + timedelta(minutes=26), generation="gen-next", outcome="ran")
        restarted.tick(slot + timedelta(minutes=26))

    runs = world.runs(task)
    [ran] = [r for r in runs if r["outcome"] == "ran"]
    missed = sum(json.loads(r["detail"])["slots"] for r in runs if r["outcome"] == "missed")
    [live] = world.live(task)
    assert live["process_after"] == to_text(slot + timedelta(minutes=30))
    assert ran["scheduled_for"] == to_text(slot + timedelta(minutes=20)), runs  # a slot of the grid, the latest
    assert missed == 2, runs  # 10:00 and 10:10 did not run as themselves


@pytest.mark.slow
def test_a_sigkilled_hosts_local_runners_are_stopped_by_the_next_host(tmp_path: Path) -> None:
    """Real processes: a host with a live local runner is SIGKILLed; the next host starts. DESIGN §8: orphan
    runners of this install are removed at start (for containers they are), else two runners serve one session
    and a message claimed by both can be answered twice."""
    env = Env(tmp_path)
    with scenario_step("a group to chat with"):
        env.ok("groups", "create", "demo", "--channel", "cli")
    first = Host(env, NCL_IDLE_TIMEOUT_S="600")
    second: Host | None = None
    orphans: list[int] = []
    try:
        with scenario_step("a host with a live runner SIGKILLed, and the next one started"):
            first.wait_for_action("host_started")
            session_id = json.loads(env.ok("chat", "demo", "hello", "--json", "--timeout", "60"))["session_id"]
            orphans = runner_pids(first, session_id, at_least=1)
            first.proc.kill()  # SIGKILL: no chance to stop its runners itself
            first.proc.wait(timeout=10)
            second = Host(env, NCL_IDLE_TIMEOUT_S="600")
            second.wait_for_action("host_started")
        # A local runner dies with the host that started it (PR_SET_PDEATHSIG), so it never serves beside the next.
        assert exits_within(orphans[0], 5), "the dead host's runner still serves the session beside the new host"
    finally:
        for host in (first, second):
            if host is not None:
                host.kill()
        for pid in orphans:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
