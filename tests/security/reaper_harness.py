"""Issue 11, point 5: a process that is a subreaper, as ``ncl host run`` and every runner are, running one owner
(a gate script, a host task, a local runner) and reporting which marked processes are still alive right after it
ended. Run as ``python reaper_harness.py CASE MARKER DIR``; prints one JSON object.

pytest itself is never made a subreaper: every orphan of the whole suite would then come to it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # tests/ (kit) and the project

from process_marks import gate_script, marked  # noqa: E402

from schemas.proctree import OWN, become_subreaper  # noqa: E402


def _gate(markers: list[str], folder: Path) -> dict[str, Any]:
    from agent_runner.gate import run_gate

    result = run_gate(gate_script(markers), task_id="task-x", tz="UTC", home=str(folder), cwd=str(folder))
    return {"outcome": result.outcome, "reason": result.reason, "alive": marked(*markers)}


def _host_task(markers: list[str], folder: Path) -> dict[str, Any]:
    from host.project_tasks.specs import HostTarget
    from host.project_tasks.targets import Stop, run_host

    # The YAML host task: the command returns at once, the setsid'd daemon is what it leaves.
    target = HostTarget(command=f"sh -c \"setsid sh -c 'exec sleep {markers[0]}' &\"", cwd=str(folder),
                        timeout_seconds=5)
    outcome = run_host(target, {"PATH": os.environ["PATH"]}, Stop())
    return {"outcome": outcome.status, "reason": outcome.error, "alive": marked(*markers)}


def _runner_killed(markers: list[str], folder: Path) -> dict[str, Any]:
    """A local runner whose gate is holding three daemons is SIGKILLed alone (as the OOM killer would): its
    orphans come to us, and the runtime kills them when it finds the runner gone."""
    from datetime import timedelta

    from kit import World, exits_within

    from host.runtimes.local import LocalRuntime
    from schemas import clock

    world = World(folder)
    runtime = LocalRuntime(world.settings)
    world.schedule(clock.now() - timedelta(minutes=1), script=gate_script(markers, hold=markers[0] + "1"))
    runtime.start(world.session, "gen-test", {"TZ": "UTC", "NCL_IDLE_TIMEOUT_S": "60"})
    runner = runtime.processes[world.session.id]
    everything = [*markers, markers[0] + "1"]
    while len(marked(*everything)) < 4:  # the three daemons, and the gate holding in its own sleep
        if exits_within(runner.pid, 0.02):
            return {"outcome": "runner exited early", "alive": marked(*everything)}
    before = marked(*everything)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    running = runtime.is_running(world.session.id)
    world.central.close()
    return {"outcome": f"running={running}", "before": before, "alive": marked(*everything)}


def _spare(markers: list[str], folder: Path) -> dict[str, Any]:
    """A sweep kills the stray and nothing else, and reaps none of the children someone else waits for: one of
    ours in a session of its own (started through OWN) and a plain one in our session (a library's)."""
    import subprocess

    ours = OWN.spawn(lambda: subprocess.Popen(["sleep", markers[0]], start_new_session=True), lambda p: p.pid)
    plain = subprocess.Popen(["sleep", markers[1]])
    subprocess.run(["sh", "-c", f"(setsid sleep {markers[2]} &)"], check=True)  # an orphan: now our child
    while len(marked(*markers)) < 3:
        os.sched_yield()
    swept = OWN.sweep()
    alive = marked(*markers)
    for child in (ours, plain):
        child.kill()
    return {"swept": len(swept), "alive": alive, "expected": [ours.pid, plain.pid],
            "codes": [ours.wait(), plain.wait()]}


CASES = {"gate": _gate, "host-task": _host_task, "runner-killed": _runner_killed, "spare": _spare}

if __name__ == "__main__":
    case, marker, where = sys.argv[1:4]
    assert become_subreaper(), "this kernel cannot make subreapers"
    report = CASES[case]([marker + n for n in "123"], Path(where))
    OWN.sweep(everything=True)
    print(json.dumps(report))
