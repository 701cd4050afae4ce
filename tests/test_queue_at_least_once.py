"""Queue jobs are at-least-once (issue 6): 200 jobs to a group with a running runner are all answered exactly
once, even when the runner is SIGKILLed once in the middle. Real host process, real local runners."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from processes import Env, Host

from host import settings as settings_module
from host.channels import queues
from host.store.db import connect
from schemas import clock

JOBS = 200


def _answers(outbound: Path) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{outbound}?mode=ro", uri=True)) as conn:
        return dict(conn.execute("SELECT in_reply_to, COUNT(*) FROM messages_out WHERE kind = 'chat'"
                                 " GROUP BY in_reply_to").fetchall())


def _runner_pids(folder: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"agent_runner --session-dir {folder}"], capture_output=True, text=True,
                           check=False)
    return [int(pid) for pid in found.stdout.split()]


def test_two_hundred_jobs_answered_exactly_once_across_a_runner_kill(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "bulk", "--channel", "queue:bulk")
    host = Host(env, NCL_IDLE_TIMEOUT_S="60")
    try:
        host.wait_for_action("host_started")
        settings = settings_module.load(environ=env.vars, cwd=tmp_path)
        sent = []
        with closing(connect(settings.central_db, "central")) as central:
            for n in range(JOBS):  # what `ncl queue send` does, without 200 process start-ups
                sent.append(queues.send(central, settings, clock.now(), "bulk",
                                        {"prompt": f"job {n}", "thread_id": "bulk-thread"}))
        [session_id] = {s["session_id"] for s in sent}
        folder = settings.sessions_dir / "ag-bulk" / session_id
        host.wait_for_action("runner_started", session=session_id)
        handled = 0
        while handled < JOBS // 4:  # let a quarter be answered, then kill the runner mid-stream
            host.wait_for_action("reply_handled", session=session_id)
            handled += 1
        [pid] = _runner_pids(folder)
        os.kill(pid, signal.SIGKILL)
        while handled < JOBS:  # the host syncs a reply's ack in the same pass that hands the reply on
            host.wait_for_action("reply_handled", session=session_id, timeout=60)
            handled += 1
        answers = _answers(folder / "outbound.db")
        assert set(answers) == {s["message_id"] for s in sent}
        assert set(answers.values()) == {1}  # exactly once each, despite the kill
        assert sum("[action=runner_started " in line for line in host.seen) == 2  # the kill cost one restart
        done = json.loads(env.ok("queue", "list", "--json"))
        assert done["queues"][0]["pending"] == 0 and done["queues"][0]["in_flight"] == 0
    finally:
        host.kill()
        for pid in _runner_pids(tmp_path):
            os.kill(pid, signal.SIGKILL)
