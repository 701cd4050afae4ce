"""``ncl chat`` and ``ncl agent invoke``: talk to an agent through the running host's cli socket.

The client side only: the lines of ``host.channels.cli_protocol`` over a plain socket. A one-shot chat imports none
of the host's channel, asyncio, the store or pydantic (the interactive chat's status line reads the store, and loads
it when it starts), so it answers in little more than Python's start (issue 14.5, tests/test_cli_startup.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import struct
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from host.channels import cli_protocol as protocol
from host.cli.app import App, pass_app
from host.cli.output import emit, json_option, local_time
from host.cli.terminal import say
from host.errors import NclError
from host.files import lock
from schemas.validation import check_prompt

if TYPE_CHECKING:
    from host.cli.chat_status import Screen

GONE = "the host closed the connection"
STARTING_S = 15.0  # how long a host that holds its lock may take to open its socket (it is starting)


class Connection:
    """One connection to the host's cli socket: send lines, read reply objects."""

    def __init__(self, app: App) -> None:
        self.sock = _connect(protocol.socket_path(app.settings), app.settings.data_dir)
        self.file = self.sock.makefile("rb")

    def write(self, group: str, text: str, thread: str | None, channel: str = "cli") -> None:
        self.sock.sendall(protocol.encode(protocol.send(group, text, thread, channel)))

    def listen(self, group: str, thread: str | None) -> None:
        self.sock.sendall(protocol.encode(protocol.listen(group, thread)))

    def shown(self, session_id: str, ids: list[str]) -> None:
        self.sock.sendall(protocol.encode(protocol.shown(session_id, ids)))

    def send(self, group: str, text: str, thread: str | None, channel: str = "cli") -> dict[str, Any]:
        """Write a message and wait for the host's answer to it (replies before it are skipped)."""
        self.write(group, text, thread, channel)
        while True:
            answer = self.read()
            if "ok" in answer:
                if not answer["ok"]:
                    raise NclError(answer["error"])
                return answer

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise NclError(GONE)
        return protocol.decode(line)

    def close(self) -> None:
        # Shut the socket down first: a thread blocked reading the file holds its lock, and close() would wait
        # for it forever; after shutdown its read returns at once.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.file.close()
        self.sock.close()


def _connect(path: Path, data_dir: Path) -> socket.socket:
    """A connection to the host's socket. A host that holds its lock but has not opened the socket yet is starting
    (``ncl host run &`` and a chat at once): it is waited for, up to STARTING_S, saying so once."""
    deadline = time.monotonic() + STARTING_S
    said = False
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
        else:
            _check_peer(sock, path)
            return sock
        pid = lock.running_pid(data_dir)
        if pid is None:
            raise NclError("the host is not running (start it with 'ncl host run')")
        if time.monotonic() >= deadline:
            raise NclError(f"the host (pid {pid}) has not opened {path} in {STARTING_S:g} s")
        if not said:
            say(f"ncl: waiting for the host (pid {pid}) to open {path}: it is starting", err=True)
            said = True
        time.sleep(0.05)


def _check_peer(sock: socket.socket, path: Path) -> None:
    """The socket's server runs as this user or root (the kernel's word for it, SO_PEERCRED): one planted at that
    name by another account would read what is typed and answer for the agent."""
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid not in (os.geteuid(), 0):
        sock.close()
        raise NclError(f"{path} is served by uid {uid}, neither this user nor root: not talking to it (who can "
                       "write the data directory? see 'ncl doctor')")


def ask(app: App, group: str, text: str, thread: str | None, timeout: float, channel: str) -> dict[str, Any]:
    """Send once; wait for the reply to this message (or to a later one of its batch)."""
    check_prompt(text, "text" if channel == "cli" else "--prompt")
    conn = Connection(app)
    try:
        sent = conn.send(group, text, thread, channel)
        conn.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        replies = []
        while time.monotonic() < deadline:
            try:
                reply = conn.read().get("reply")
            except TimeoutError:
                break
            except NclError as exc:  # the host went away after it took the message: the message is kept
                raise NclError(f"{exc} (the message is queued as {sent['message_id']})") from None
            if reply and (reply.get("in_reply_to_seq") or 0) >= sent["seq"]:
                replies.append({"id": reply["id"], "text": reply["text"], "timestamp": reply["timestamp"],
                                "task": reply.get("task"), "failed": bool(reply.get("failed"))})
                break
        if not replies:
            raise NclError(f"no reply within {timeout:g} s (the message is queued as {sent['message_id']})")
        return {"session_id": sent["session_id"], "replies": replies}
    finally:
        conn.close()


def _label(reply: dict[str, Any]) -> str:
    """What marks a reply: the task it answers (id and a short prompt), and a failure (unless its text says so: a
    refused slash command's does)."""
    task = reply.get("task")
    failed = reply.get("failed") and not str(reply.get("text", "")).startswith("error: ")
    return (f'[task {task["id"]} "{task["prompt"]}"] ' if task else "") + ("error: " if failed else "")


def _answer(as_json: bool, data: dict[str, Any]) -> None:
    """Print the replies (a failed one on stderr); exit 1 if one is the agent saying it could not answer."""
    def human() -> None:
        for reply in data["replies"]:
            say(("ncl: " if reply["failed"] else "") + _label(reply) + reply["text"], err=reply["failed"])

    emit(as_json, data, human)
    if any(reply["failed"] for reply in data["replies"]):
        raise SystemExit(1)


@click.command("chat")
@click.argument("group")
@click.argument("text", required=False)
@click.option("--thread", help="Thread key (per-thread groups keep one session per thread).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Seconds to wait for a reply when sending once.")
@json_option
@pass_app
def chat(app: App, group: str, text: str | None, thread: str | None, timeout: float, as_json: bool) -> None:
    """Chat with GROUP's agent: interactively, or send TEXT once and print the reply."""
    if text is not None:
        _answer(as_json, ask(app, group, text, thread, timeout, "cli"))
        return
    _interactive(app, group, thread)


def _interactive(app: App, group: str, thread: str | None) -> None:
    from host.cli.chat_status import Screen  # reads the store: a one-shot chat goes without it

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    conn = Connection(app)
    zone = app.settings.tz.zone
    screen = Screen(zone, functools.cache(lambda session_id: _folder(app, session_id)))

    def listen() -> None:  # the only reader of the socket: answers to sends and replies as they arrive
        while True:
            try:
                data = conn.read()
            except (NclError, OSError, ValueError):
                if not stop.is_set():  # (not this chat's own leaving)
                    screen.above(f"{GONE}: what you type now is not sent (Ctrl-D to leave)")
                return
            if reply := data.get("reply"):
                if not reply.get("task"):  # a task's answer answers none of the messages sent
                    screen.answered(reply.get("in_reply_to_seq"))
                screen.above(f"[{local_time(reply['timestamp'], zone)}] {_label(reply)}{reply['text']}")
            elif data.get("ok"):
                screen.sent(data["session_id"], data["message_id"], data["seq"])
            elif data.get("ok") is False:
                screen.above(f"error: {data['error']}")

    stop = threading.Event()
    if sys.stdout.isatty():  # a status line only where it can be redrawn
        threading.Thread(target=screen.watch, args=(stop,), daemon=True).start()
    _missed(conn, screen, group, thread)
    threading.Thread(target=listen, daemon=True).start()
    say(f"chatting with {group} (end a line with \\ to continue it; Ctrl-D or Ctrl-C to leave)")
    try:
        while True:
            lines = [input("> ")]
            while lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1]
                lines.append(input("… "))
            if message := "\n".join(lines).strip():
                try:
                    conn.write(group, message, thread)
                except OSError:  # (click would take a broken pipe for its own output's, and exit 1 unsaid)
                    raise NclError(f"{GONE}: that line was not sent") from None
    except (EOFError, KeyboardInterrupt):
        say()
    finally:
        stop.set()
        conn.close()


def _missed(conn: Connection, screen: Screen, group: str, thread: str | None) -> None:
    """Listen to the chat's session from now on (a task's answer shows before anything is sent), and show the
    replies that came while no chat was open."""
    from host.cli.chat_status import away
    from host.store import db

    conn.listen(group, thread)
    heard = conn.read()  # its answer: the session's replies come after it
    if heard.get("ok") is False:
        conn.close()
        raise NclError(heard["error"])
    if not (session_id := heard.get("listening")):
        return  # no session yet: the first message makes it
    try:
        missed = away(screen.folder_of(session_id))
    except (NclError, OSError, db.Error) as exc:  # (a damaged file: the chat goes on without them)
        say(f"ncl: the replies that came while no chat was open could not be read: {exc}", err=True)
        return
    if missed:
        say(f"while no chat was open (all of it: ncl messages list --session {session_id}):")
    for reply in missed:
        say(f"[{local_time(reply['timestamp'], screen.zone)}] {_label(reply)}{reply['text']}")
    if missed:  # the host records them delivered: the next chat does not show them again
        conn.shown(session_id, [reply["id"] for reply in missed])


def _folder(app: App, session_id: str) -> Path:
    from host.store import sessions

    with closing(app.central()) as central:
        return sessions.get(central, app.settings, session_id).folder


@click.group("agent")
def agent_cli() -> None:
    """The agent as a callable tool."""


@agent_cli.command("invoke")
@click.argument("group")
@click.option("--prompt", required=True, help="What to ask.")
@click.option("--thread", help="Thread key (same key, same conversation).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True)
@json_option
@pass_app
def invoke(app: App, group: str, prompt: str, thread: str | None, timeout: float, as_json: bool) -> None:
    """Run one turn of GROUP's agent (its toolkit channel) and print the final answer."""
    _answer(as_json, ask(app, group, prompt, thread, timeout, "toolkit"))
