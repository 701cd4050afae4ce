"""``ncl chat GROUP`` in a real terminal (a pty): replies stream in as they arrive, a trailing backslash
continues a line, Ctrl-C leaves cleanly with exit 0, and a task's answer says which task it answers (issue 15.4)."""

from __future__ import annotations

import codecs
import json
import os
import pty
import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from processes import Env, Host, ncl_command


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[Env, Host]]:
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    running = Host(env, NCL_IDLE_TIMEOUT_S="30")
    running.wait_for_action("host_started")
    yield env, running
    running.kill()


# The banner, then readline's first prompt: only then is the terminal in readline's mode. A Ctrl-D typed earlier, in
# the line discipline's canonical mode, can be lost in the switch, and the chat would wait for input forever.
READY = "Ctrl-C to leave)\r\n> "


class Terminal:
    def __init__(self, env: Env) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([*ncl_command(), "chat", "demo"], cwd=env.root, env=env.vars, stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.screen = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a "…" may come in two reads

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, needle: str, timeout: float = 30.0) -> None:
        """Read the terminal until ``needle`` shows (select with a deadline: no sleeping)."""
        while needle not in self.screen:
            ready, _, _ = select.select([self.master], [], [], timeout)
            if not ready:
                raise AssertionError(f"{needle!r} not on screen within {timeout} s: {self.screen!r}")
            try:
                self.screen += self._utf8.decode(os.read(self.master, 4096))
            except OSError:
                raise AssertionError(f"terminal closed before {needle!r}: {self.screen!r}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


@contextmanager
def chatting(env: Env) -> Iterator[Terminal]:
    """``ncl chat demo`` in a pty, handed over once readline waits for input; killed and closed afterwards."""
    term = Terminal(env)
    try:
        term.wait_for(READY)
        yield term
    finally:
        term.close()


def test_interactive_chat_streams_replies_and_leaves_on_ctrl_c(host: tuple[Env, Host]) -> None:
    env, _ = host
    with chatting(env) as term:
        term.type("hello there\r")
        term.wait_for("mock: hello there")
        term.type("first line \\\r")
        term.wait_for("… ")
        term.type("second line\r")
        term.wait_for("mock: first line")  # one message of two lines, one reply
        term.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert term.proc.wait(timeout=10) == 0


def test_ctrl_d_on_an_empty_line_leaves_cleanly(host: tuple[Env, Host]) -> None:
    env, _ = host
    with chatting(env) as term:
        term.type("\x04")  # EOF from the terminal's line discipline
        assert term.proc.wait(timeout=10) == 0


def test_a_line_typed_after_the_host_stopped_is_said_not_sent(host: tuple[Env, Host]) -> None:
    """The host stopping is said at once, and a line typed after is a one-line error, exit 1: the line was lost with
    no word, exit 1 (review: click took the broken pipe for its own output's)."""
    env, running = host
    with chatting(env) as term:
        assert running.stop(signal.SIGTERM) == 0
        term.wait_for("the host closed the connection: what you type now is not sent")
        term.type("typed after the host stopped\r")
        term.wait_for("ncl: the host closed the connection: that line was not sent")
        assert term.proc.wait(timeout=10) == 1


def test_a_tasks_answer_is_marked_with_its_id_and_prompt(host: tuple[Env, Host]) -> None:
    env, _ = host
    with chatting(env) as term:
        term.type('/schedule_task {"prompt":"ping the team about the release notes for Friday"}\r')
        term.wait_for("Task scheduled (id: ")
        task_id = term.screen.split("Task scheduled (id: ")[1].split(",")[0]
        term.wait_for("mock: ping the team")  # the task runs at once: no time given
        [line] = [line for line in term.screen.splitlines() if "mock: ping the team" in line]
        assert f'] [task {task_id} "ping the team about the release notes f…"] mock: ping the team' in line, line
        term.type("hello\r")
        term.wait_for("mock: hello")
        assert "[task" not in term.screen.split("mock: ping the team")[-1]  # the user's own answers carry no mark


def test_a_chat_shows_what_came_while_none_was_open_and_a_tasks_answer_before_anything_is_typed(
        host: tuple[Env, Host]) -> None:
    """(Replies that came while no chat was open were only in 'ncl messages list', then shown again by every chat
    opened after; and a chat that had sent nothing yet heard none of its session's replies: a task's answer never
    showed.)"""
    env, running = host
    session = json.loads(env.ok("chat", "demo", "hello", "--json"))["session_id"]  # answered: seen
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "while away", "--json"))["id"]
    running.wait_for(lambda line: "reply_handled" in line and "stored" in line)  # (it ran at once, no chat open)
    with chatting(env) as term:
        away = term.screen.split(READY)[0]
        assert f"while no chat was open (all of it: ncl messages list --session {session}):" in away
        assert "mock: hello" not in away
        # marked with its task as a live one is (operations review: it was not)
        assert f'] [task {task} "while away"] mock: while away' in away, away
        env.ok("tasks", "add", "--session", session, "--prompt", "while open")
        term.wait_for("mock: while open")  # nothing typed in this chat
    assert "shown in one: 1 " in running.wait_for_action("replies_shown", session=session)
    with chatting(env) as term:  # shown once: the next chat does not show them again
        assert "while no chat was open" not in term.screen.split(READY)[0], term.screen


def test_only_a_chat_listening_to_a_session_records_its_replies_shown(host: tuple[Env, Host]) -> None:
    """``shown`` has no answer when taken; one naming a session the connection does not listen to, or not a list of
    ids, is refused (the next line's answer is then still its own)."""
    env, _ = host
    session = json.loads(env.ok("chat", "demo", "hello", "--json"))["session_id"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(env.root / "data" / "cli.sock"))
        lines = sock.makefile("rb")

        def said(request: dict[str, object]) -> dict[str, object]:
            sock.sendall(json.dumps(request).encode() + b"\n")
            return dict(json.loads(lines.readline()))

        refused = said({"op": "shown", "session_id": session, "ids": ["msg-1"]})
        assert refused == {"ok": False, "error": "'shown' names replies (at most 64) of a session this chat listens "
                                                 "to"}
        assert said({"op": "listen", "group": "demo", "thread": None}) == {"ok": True, "listening": session}
        assert said({"op": "shown", "session_id": session, "ids": "msg-1"})["ok"] is False
        sock.sendall(json.dumps({"op": "shown", "session_id": session, "ids": ["msg-1"]}).encode() + b"\n")
        assert said({"op": "listen", "group": "demo", "thread": None}) == {"ok": True, "listening": session}
