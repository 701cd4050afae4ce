"""A data directory another local account owns (made ahead under /tmp, say): its owner can rename anything in it,
whatever the modes, and so put a socket of its own where the host's ``cli.sock`` was (attack review: it read an
operator's chat and answered for the agent, and ``ncl doctor`` said ok). The host refuses such a directory,
``ncl doctor`` fails it, and ``ncl chat`` talks only to a socket served by its own user or root (SO_PEERCRED)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import Env

NOBODY = 65534
SERVER = """import os, socket, sys
os.setgid(65534); os.setuid(65534)
server = socket.socket(socket.AF_UNIX); server.bind(sys.argv[1]); server.listen(1)
conn, _ = server.accept(); conn.settimeout(30)
print(repr(conn.recv(4096)), flush=True)
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another account takes root")


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="ncl-foreign-"))
    root.chmod(0o755)  # (the other account must reach its folder, as under /tmp)
    made = Env(root)
    made.data_dir.mkdir(mode=0o700)
    os.chown(made.data_dir, NOBODY, NOBODY)
    yield made
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("whose", ["data-dir", "folder-above"])
def test_the_host_refuses_a_data_dir_another_account_can_swap_and_doctor_fails_it(env: Env, whose: str) -> None:
    """Its own, or a folder above it (the data dir made in it by the host was then theirs to rename: review)."""
    folder = env.data_dir
    if whose == "folder-above":
        folder = env.data_dir.parent / "shared"
        folder.mkdir()
        os.chown(folder, NOBODY, NOBODY)
        env.vars["NCL_DATA_DIR"] = str(folder / "data")
    said = f"{folder} is owned by uid {NOBODY}, not by this user (uid 0)" + (
        f": chown -R 0 {folder}" if whose == "data-dir" else " or root")
    for command in (("host", "sweep", "--once"), ("host", "run")):
        done = env.ncl(*command)
        assert done.returncode == 1 and done.stderr == (
            f"ncl: refusing the data directory {env.vars['NCL_DATA_DIR']}: {said} (who can rename it could stand in "
            "for the host)\n")
    assert not (Path(env.vars["NCL_DATA_DIR"]) / "host.lock").exists()
    doctor = env.ncl("doctor")
    [line] = [line for line in doctor.stdout.splitlines() if "data_dir" in line]
    assert doctor.returncode == 1 and line.startswith("FAIL") and said in line


def test_a_folder_above_others_may_write_without_the_sticky_bit_is_refused_and_tmp_is_not(env: Env) -> None:
    shared = env.data_dir.parent / "open"
    shared.mkdir()
    shared.chmod(0o777)
    env.vars["NCL_DATA_DIR"] = str(shared / "data")
    done = env.ncl("host", "sweep", "--once")
    assert done.returncode == 1 and f"{shared} above it can be written by other users (mode 0777)" in done.stderr
    shared.chmod(0o1777)  # as /tmp: nobody renames what is not theirs
    assert env.ncl("host", "sweep", "--once").returncode == 0


def test_chat_never_talks_to_a_socket_another_account_serves(env: Env) -> None:
    planted = subprocess.Popen([sys.executable, "-c", SERVER, str(env.data_dir / "cli.sock")], stdout=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 30
        while not (env.data_dir / "cli.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        done = env.ncl("chat", "demo", "my password is hunter2")
        assert done.returncode == 1 and done.stderr == (
            f"ncl: {env.data_dir / 'cli.sock'} is served by uid {NOBODY}, neither this user nor root: not talking to "
            "it (who can write the data directory? see 'ncl doctor')\n")
        out, _ = planted.communicate(timeout=30)
        assert out == "b''\n"  # it heard nothing: the client hung up unheard
    finally:
        planted.kill()
        planted.wait()
