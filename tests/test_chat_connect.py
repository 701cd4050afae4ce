"""``ncl chat`` right after ``ncl host run &`` (issue 15.7, the README runs so): a host that holds its lock but has
not opened data/cli.sock yet is starting, and the chat waits for it, saying so once; with no host it fails at once."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from processes import Env, ncl_command

from host.channels import cli_protocol as protocol
from host.files.lock import host_lock


def test_a_chat_waits_for_a_host_that_holds_its_lock_and_has_no_socket_yet(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    with host_lock(env.data_dir):  # to the chat's process, a host is running: this one, starting
        chat = subprocess.Popen([*ncl_command(), "chat", "demo", "hello", "--json"], cwd=env.root, env=env.vars,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert chat.stderr is not None
            said = chat.stderr.readline()  # it found no socket and waits
            assert said.startswith("ncl: waiting for the host (pid ") and "it is starting" in said
            # The host opens its socket now, and answers as its channel does.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
                server.bind(str(env.data_dir / "cli.sock"))
                server.listen()
                server.settimeout(60)
                conn, _ = server.accept()
                with conn, conn.makefile("rb") as lines:
                    assert protocol.decode(lines.readline()) == protocol.send("demo", "hello", None)
                    conn.sendall(protocol.encode(protocol.accepted("sess-1", "msg-1", 2)) + protocol.encode(
                        protocol.reply("msg-2", {"text": "mock: hello"}, "2026-06-11T09:00:00.000Z", "msg-1", 2, None,
                                       False)))
                    out, err = chat.communicate(timeout=60)
        finally:
            chat.kill()
            chat.wait()
    assert chat.returncode == 0, err
    assert err == ""  # the wait was said once
    assert [reply["text"] for reply in json.loads(out)["replies"]] == ["mock: hello"]


def test_with_no_host_a_chat_fails_at_once_in_one_line(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    (env.data_dir / "cli.sock").touch()  # what a killed host may leave: no host holds the lock
    done = env.ncl("chat", "demo", "hello")
    assert done.returncode == 1
    assert done.stderr == "ncl: the host is not running (start it with 'ncl host run')\n"
