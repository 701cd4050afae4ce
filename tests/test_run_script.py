"""``scripts/run.sh``, the quickstart (issue 15.2 and 15.4), run for real in a copy of the project whose ``.venv``
hands over to this one: its example time is a minute from now in ``.env``'s TZ (not the machine's zone), and a
host whose runners get no isolation says so on the terminal, not only in ``data/host.log``."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from processes import Env, ncl_command

ROOT = Path(__file__).resolve().parent.parent
FAR = "Pacific/Kiritimati"  # UTC+14: no test machine's own zone, so a hint in the machine's zone is hours off


def project_copy(root: Path) -> Path:
    """The scripts and pyproject.toml, and a ``.venv`` whose python is this one, stamped as installed (setup.sh
    installs nothing)."""
    (root / "scripts").mkdir(parents=True)
    for name in ("run.sh", "setup.sh"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "ncl"):
        target = Path(sys.executable) if name == "python" else Path(sys.executable).with_name("ncl")
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".ncl-installed").write_text(f"{digest} dev\n")
    return root


@pytest.mark.slow
def test_the_quickstart_hint_is_in_tz_and_no_isolation_is_said_on_the_terminal(tmp_path: Path) -> None:
    root = project_copy(tmp_path / "project")
    (root / ".env").write_text(f"TZ={FAR}\n")
    env = Env(root).vars
    for name in ("TZ", "NCL_DATA_DIR"):  # as a new user runs it: the zone from .env, the data in ./data
        del env[name]
    before = datetime.now(ZoneInfo(FAR)).replace(tzinfo=None)
    done = subprocess.run(["scripts/run.sh"], cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, check=False)
    after = datetime.now(ZoneInfo(FAR)).replace(tzinfo=None)
    assert done.returncode == 0, done.stderr
    [hint] = [line for line in done.stdout.splitlines() if '"processAfter"' in line]
    soon = datetime.fromisoformat(hint.split('"processAfter":"')[1].split('"')[0])
    assert before + timedelta(minutes=1) - timedelta(seconds=1) <= soon <= after + timedelta(minutes=1)
    [warning] = [line for line in done.stderr.splitlines() if "no isolation" in line]
    assert "runtime local" in warning and "NCL_RUNTIME=local" in warning
    assert warning in (root / "data" / "host.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_the_quickstart_keeps_its_data_where_ncl_data_dir_says(tmp_path: Path, where: str) -> None:
    """It waited for ./data/cli.sock whatever NCL_DATA_DIR said, then stopped a host that ran well (operations
    review)."""
    root = project_copy(tmp_path / "project")
    env = Env(root).vars
    elsewhere = tmp_path / "elsewhere"
    del env["NCL_DATA_DIR"]
    if where == ".env":
        (root / ".env").write_text(f"NCL_DATA_DIR={elsewhere}\n")
    else:
        env["NCL_DATA_DIR"] = str(elsewhere)
    done = subprocess.run(["scripts/run.sh"], cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"its log: {elsewhere}/host.log" in done.stdout and "host running" in (elsewhere / "host.log").read_text()
    assert not (root / "data").exists()


@pytest.mark.slow
def test_ncl_host_run_in_a_terminal_warns_of_no_isolation_on_stderr(tmp_path: Path) -> None:
    env = Env(tmp_path)
    proc = subprocess.Popen([*ncl_command(), "host", "run"], cwd=tmp_path, env=env.vars, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the host's first lines; it runs until killed
            if "no isolation" in line:
                assert "WARNING" in line and "NCL_RUNTIME=local" in line, line
                break
        else:
            raise AssertionError("the host ended without warning of runners with no isolation")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
