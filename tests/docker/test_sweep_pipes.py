"""Issue 13, point 3 with the docker runtime: ``ncl host sweep --once --json | cat`` ends with the sweep, while the
container it started runs on (its output goes to the engine, not to the caller's pipe)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from processes import Env, ncl_command


def test_a_one_off_sweep_with_docker_returns_while_its_container_runs(runner_image: str, engine: Any) -> None:
    root = Path(tempfile.mkdtemp(prefix="ncl-pipe-"))
    env = Env(root)
    env.vars.update({"NCL_RUNTIME": "docker", "NCL_IMAGE": runner_image, "NCL_IDLE_TIMEOUT_S": "600"})
    session_id = ""
    try:
        env.ok("groups", "create", "jobs", "--channel", "queue:q")
        session_id = json.loads(env.ok("queue", "send", "--queue", "q", "--json", '{"prompt": "job"}'))["session_id"]
        sweep = subprocess.Popen([*ncl_command(), "host", "sweep", "--once", "--json"], cwd=root, env=env.vars,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        out, err = sweep.communicate(timeout=120)  # read to EOF: a container holding the pipe would block here
        assert sweep.returncode == 0, err
        assert json.loads(out)["woken"] == 1
        [running] = engine.api.containers(filters={"label": f"ncl.session={session_id}"})
        assert running["State"] == "running"
    finally:
        if session_id:
            for item in engine.api.containers(all=True, filters={"label": f"ncl.session={session_id}"}):
                engine.api.remove_container(item["Id"], force=True)
        shutil.rmtree(root, ignore_errors=True)
