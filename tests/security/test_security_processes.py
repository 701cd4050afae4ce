"""Security boundaries (issue 7), processes: gate scripts get a stripped environment (and one the OS cannot run
is a gate error, not a dead runner); MCP servers get the runner's settings only; and nothing in the product runs
a shell (the gate's ``bash -c`` with an argument list is the one deliberate exception).
"""

from __future__ import annotations

import ast
import json
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from kit import FakeClock, World
from security_kit import ROOT, SECRET, T0, product_files

from agent_runner.config import RunnerConfig
from agent_runner.mcp_server import server_parameters
from agent_runner.providers import MockProvider
from agent_runner.runner import Runner

# --- gate scripts, MCP servers: the stripped environment ---------------------------------------------------------

GATE_ENV = {"PATH", "HOME", "TZ", "NCL_TASK_ID", "PWD", "SHLVL", "_"}  # the four we pass, and what bash adds itself


async def test_gate_scripts_run_by_the_runner_get_the_stripped_environment(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "NCL_SECRET_PROBE", "AWS_SECRET_ACCESS_KEY", "NCL_RUNNER_GENERATION"):
        monkeypatch.setenv(name, SECRET)
    world = World(tmp_path)
    task_id = world.schedule(T0 - timedelta(minutes=1),
                             script='env > gate-env.txt; echo \'{"wakeAgent": false}\'')
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    assert await Runner(config, MockProvider(), FakeClock(T0)).step()
    dumped = (world.session.folder / "gate-env.txt").read_text()
    names = {line.split("=", 1)[0] for line in dumped.splitlines() if "=" in line}
    assert names <= GATE_ENV and SECRET not in dumped, dumped
    assert f"NCL_TASK_ID={task_id}" in dumped.splitlines() and "TZ=America/New_York" in dumped.splitlines()
    with closing(world.outbound()) as conn:
        (detail,) = conn.execute("SELECT detail FROM processing_ack WHERE message_id = ?", (task_id,)).fetchone()
    assert json.loads(detail)["outcome"] == "skipped"  # the gate said no: the agent was not woken
    world.central.close()


async def test_a_gate_script_the_os_cannot_run_is_a_gate_error_not_a_dead_runner(tmp_path: Path) -> None:
    world = World(tmp_path)
    task_id = world.schedule(T0 - timedelta(minutes=1), script="echo '{\"wakeAgent\": true}' \x00")
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    try:
        assert await Runner(config, MockProvider(), FakeClock(T0)).step()
        with closing(world.outbound()) as conn:
            (detail,) = conn.execute("SELECT detail FROM processing_ack WHERE message_id = ?", (task_id,)).fetchone()
        assert json.loads(detail)["outcome"] == "gate_error"
    finally:
        world.central.close()


def test_the_mcp_server_is_started_with_the_runners_settings_only(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    params = server_parameters(RunnerConfig(session_dir=tmp_path, generation="gen-test", tz="UTC"))
    assert params.env is not None and SECRET not in json.dumps(params.env)
    assert not [n for n in params.env if any(w in n.upper() for w in ("KEY", "TOKEN", "SECRET", "ANTHROPIC"))]


# --- no shell anywhere in the product ----------------------------------------------------------------------------

SHELL_FUNCTIONS = {("os", "system"), ("os", "popen"), ("os", "spawnlp"), ("os", "spawnvp"), ("subprocess", "getoutput"),
                   ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell"), ("pty", "spawn")}


def test_no_product_code_runs_a_shell() -> None:
    offenders = []
    for path in product_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                    offenders.append(f"{where} shell={ast.unparse(keyword.value)}")
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if (owner, func.attr) in SHELL_FUNCTIONS or func.attr.endswith("subprocess_shell"):
                    offenders.append(f"{where} {owner}.{func.attr}")
    assert offenders == []
    assert [p for p in product_files() if "shell=True" in p.read_text()] == []


def test_the_gate_is_the_one_place_that_runs_bash_and_with_an_argument_list() -> None:
    runs_bash = [str(p.relative_to(ROOT)) for p in product_files()
                 if any(isinstance(n, ast.Constant) and n.value in ("bash", "sh", "/bin/sh", "/bin/bash")
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert runs_bash == ["agent_runner/gate.py", "host/cli/completion.py"]
    completion = (ROOT / "host" / "cli" / "completion.py").read_text()  # names the shells it prints scripts for
    assert not any(word in completion for word in ("subprocess", "os.exec", "os.system", "os.spawn", "pty"))
    gate = (ROOT / "agent_runner" / "gate.py").read_text()
    assert 'subprocess.Popen(["bash", "-c", script]' in gate
