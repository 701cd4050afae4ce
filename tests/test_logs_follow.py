"""Issue 15.1 with real processes: ``ncl logs -f`` follows host.log as lines are appended and across a rotation
(read with a deadline, never slept for); a real host writes host.log itself, its stderr carries the same lines (none
with ``--quiet``), and what a task run did is found by ``ncl logs --session`` / ``--task``."""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import pytest
from processes import Env, Host, ncl_command

from host.files import logs


class Lines:
    """A process's text stream, line by line as it comes, each awaited with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self, timeout: float = 20) -> str | None:
        """The next line; None at the end of the stream; fails after ``timeout``."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None

    def until(self, wanted: str, timeout: float = 30) -> list[str]:
        """Every line up to and with the first that holds ``wanted``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not seen or wanted not in seen[-1]:
            line = self.next(max(deadline - time.monotonic(), 0.001))
            assert line is not None, f"the stream ended before {wanted!r}: {seen}"
            seen.append(line)
        return seen


def record(message: str, **extra: Any) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "host.test", "msg": message, "levelno": logging.INFO, "levelname": "INFO",
                                  **extra})


@pytest.mark.slow
@pytest.mark.parametrize("form", ["text", "json"])
def test_logs_follow_prints_appended_lines_across_a_rotation_and_ends_on_ctrl_c(tmp_path: Path, form: str) -> None:
    env = Env(tmp_path)
    env.data_dir.mkdir()
    handler = logs.file_handler(env.data_dir, logs.formatter(form, ZoneInfo("UTC")))
    try:
        for n in range(3):
            handler.handle(record(f"before {n}", action="test", session="sess-a" if n else "sess-b"))
        with subprocess.Popen([*ncl_command(), "logs", "-f", "--json", "--session", "sess-a"], cwd=env.root,
                              env=env.vars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as follower:
            assert follower.stdout is not None and follower.stderr is not None
            out = Lines(follower.stdout)
            try:
                assert [json.loads(line)["message"] for line in out.until("before 2")] == ["before 1", "before 2"]
                handler.handle(record("other session", action="test", session="sess-b"))
                handler.handle(record("appended", action="test", session="sess-a"))
                assert json.loads(out.until("appended")[0])["message"] == "appended"  # sess-b's line was left out
                handler.handle(record("last of the old file", action="test", session="sess-a"))
                handler.doRollover()
                handler.handle(record("first of the new file", action="test", session="sess-a"))
                assert [json.loads(line)["message"] for line in out.until("first of the new file")] == \
                    ["last of the old file", "first of the new file"]
                assert (env.data_dir / "host.log.1").is_file()
                follower.send_signal(signal.SIGINT)
                assert follower.wait(timeout=20) == 0
                assert out.next() is None
                assert follower.stderr.read() == ""
            finally:
                follower.kill()
    finally:
        handler.close()


@pytest.mark.slow
def test_logs_follow_waits_for_a_log_that_is_not_there_yet(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.data_dir.mkdir()
    with subprocess.Popen([*ncl_command(), "logs", "-f"], cwd=env.root, env=env.vars, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as follower:
        assert follower.stdout is not None
        out = Lines(follower.stdout)
        handler = logs.file_handler(env.data_dir, logs.TextFormatter(ZoneInfo("UTC")))
        try:
            handler.handle(record("the host came up", action="host_started"))
            [line] = out.until("the host came up")
            assert line.endswith(" UTC INFO the host came up [action=host_started]")
        finally:
            handler.close()
            follower.kill()


def host_process(env: Env, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    """``ncl host run ARGS`` as an operator starts it (no test prelude), its stderr line by line."""
    proc = subprocess.Popen([*ncl_command(), "host", "run", *args], cwd=env.root, env=env.vars,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    return proc, Lines(proc.stderr)


@pytest.mark.slow
def test_the_hosts_stderr_carries_the_lines_of_its_log_and_none_when_quiet(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.vars["TZ"] = "Europe/Berlin"
    proc, err = host_process(env)
    try:
        said = err.until("[action=host_started]")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        said += [line for line in iter(err.next, None)]
    finally:
        proc.kill()
        proc.wait()
    written = (env.data_dir / "host.log").read_text().splitlines()
    assert said == written and all(logs.parse(line) for line in said)
    assert " CET " in said[0] or " CEST " in said[0]
    assert [logs.parse(line)["action"] for line in said][-1] == "host_stopped"  # type: ignore[index]

    quiet, err = host_process(env, "--quiet")
    try:
        env_log = env.data_dir / "host.log"
        deadline = time.monotonic() + 30
        while env_log.read_text().count("[action=host_started]") < 2:  # the first host's, then this one's
            assert time.monotonic() < deadline and quiet.poll() is None, env_log.read_text()
            time.sleep(0.05)
        quiet.send_signal(signal.SIGTERM)
        assert quiet.wait(timeout=20) == 0
        assert err.next() is None  # nothing on stderr
    finally:
        quiet.kill()
        quiet.wait()
    assert env_log.read_text().splitlines()[-1].endswith("[action=host_stopped]")


@pytest.mark.slow
def test_a_task_run_by_a_real_host_is_found_by_session_and_task(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--json"))["id"]
    host = Host(env)
    try:
        host.wait_for_action("task_finished", session=session)
    finally:
        assert host.stop(signal.SIGTERM) == 0
    about = [json.loads(line) for line in env.ok("logs", "--session", session, "--json").splitlines()]
    actions = [line["action"] for line in about]
    assert actions.index("runner_starting") < actions.index("runner_started") < actions.index("task_finished")
    assert {line["session"] for line in about} == {session}
    [finished] = [json.loads(line) for line in env.ok("logs", "--task", task, "--json").splitlines()]
    assert (finished["action"], finished["outcome"], finished["task"]) == ("task_finished", "ran", task)
    assert isinstance(finished["duration_ms"], int)
