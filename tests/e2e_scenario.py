"""End-to-end scenarios shared by the ``docker`` and ``local`` runtimes (issue 5 acceptance): a real ``ncl host
run``, real ``ncl`` CLI processes, real runners, and a fake Messages API on 127.0.0.1 that the runners reach only
through the host's credential proxy.

What differs between the runtimes (how to read a live runner's environment, how to SIGKILL it, extra isolation
checks) is a ``RunnerAccess``; ``tests/test_end_to_end_local.py`` and ``tests/docker/test_end_to_end.py`` pass
theirs. Waiting is done by blocking on the host's log lines (``until``) or on subprocesses, never by sleeping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import fake_anthropic as api
from fake_anthropic import FakeAnthropic, Recorded, Scripted
from processes import Env, Host, ncl_command

T = TypeVar("T")
ZONE = "America/New_York"
KEY = "test-key"
MODEL = "claude-e2e-test"
ASK = "every weekday at 9am remind me to post my standup"
STANDUP = {"prompt": "post my standup", "recurrence": "0 9 * * 1-5"}
CONFIRM = "Scheduled: weekdays at 9."
REMIND = "Time to post your standup!"
ANSWER = "I am here, answered once."
TASK_QUERY = ("SELECT id, status, process_after, recurrence, series_id FROM messages_in WHERE kind='task'"
              " ORDER BY process_after")  # DESIGN §4, verbatim
QUIET_S = 2.0  # with nothing logged for this long, a condition is checked again anyway


class RunnerAccess(Protocol):
    """What a test needs to reach into a live runner of one runtime."""

    def environment(self, host: Host, session_id: str) -> dict[str, str]:
        """The live runner's process environment."""
        ...

    def check_live(self, host: Host, session_id: str, folder: Path) -> None:
        """Runtime-specific checks while the session's runner is alive (isolation, socket owner)."""
        ...

    def kill(self, host: Host, session_id: str) -> None:
        """SIGKILL the session's runner and return once it is dead."""
        ...


# --- the host and its log ---


def model_env(env: Env, fake: FakeAnthropic, **extra: str) -> None:
    """The host talks to the fake model with the key; every time is in America/New_York."""
    env.vars.update({"NCL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url,
                     "NCL_MODEL": MODEL, "TZ": ZONE, **extra})


@contextmanager
def running_host(env: Env, **extra_env: str) -> Iterator[Host]:
    """``ncl host run`` at DEBUG (a sweep line every tick while a runner lives: ``until`` wakes on them), stopped
    with SIGTERM at the end so it stops its runners, killed if it will not go."""
    host = Host(env, NCL_LOG_LEVEL="DEBUG", **extra_env)
    try:
        host.wait_for_action("host_started", timeout=60)
        yield host
    except BaseException:
        stop_host(host)
        print("host log (DEBUG lines left out):", *[line for line in host.seen if ": DEBUG: " not in line], sep="\n")
        raise
    else:
        stop_host(host)


def stop_host(host: Host) -> None:
    """SIGTERM, then everything the host logged up to ``host_stopped`` is in ``host.seen``."""
    if host.proc.poll() is None:
        host.proc.send_signal(signal.SIGTERM)
        with suppress(AssertionError):  # it died instead: whatever it said is in host.seen already
            host.wait_for_action("host_stopped", timeout=60)
        try:
            host.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            host.kill()


def until(host: Host, check: Callable[[], T | None], timeout: float, what: str) -> T:
    """``check()`` until it returns something truthy, re-checked whenever the host logs a line (or has been quiet
    for ``QUIET_S``); fails after ``timeout`` seconds, or at once if the host died."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: not within {timeout:g} s; host log tail:\n" + "\n".join(host.seen[-40:]))
        try:
            host.wait_for(lambda _line: True, timeout=min(left, QUIET_S))
        except AssertionError:
            if host.proc.poll() is not None:
                raise


def action_lines(host: Host, action: str, session: str | None = None) -> list[str]:
    return [line for line in host.seen if f"[action={action} " in line
            and (session is None or f" session={session}]" in line)]


def wait_action_count(host: Host, action: str, session: str, count: int, timeout: float) -> list[str]:
    """Block on the log until ``action`` for ``session`` has been logged ``count`` times (counting lines seen)."""
    deadline = time.monotonic() + timeout
    while len(found := action_lines(host, action, session)) < count:
        host.wait_for_action(action, timeout=max(deadline - time.monotonic(), 0.001), session=session)
    return found


# --- reading session files and CLI output ---


def session_folder(env: Env, session_id: str, group: str = "ag-demo") -> Path:
    return env.data_dir / "v2-sessions" / group / session_id


def task_rows(inbound: Path) -> list[dict[str, str | None]]:
    """The documented operator query, with the real ``sqlite3`` binary on a ``mode=ro`` URI (DESIGN §4)."""
    done = subprocess.run(["sqlite3", f"file:{inbound}?mode=ro", TASK_QUERY], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    names = ("id", "status", "process_after", "recurrence", "series_id")
    return [{k: v or None for k, v in zip(names, line.split("|"), strict=True)} for line in done.stdout.splitlines()]


def readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def chat_replies(folder: Path) -> list[tuple[str, str]]:
    """(in_reply_to, text) of every chat reply the runner wrote, in order."""
    if not (folder / "outbound.db").exists():
        return []
    with closing(readonly(folder / "outbound.db")) as conn:
        return [(r["in_reply_to"], json.loads(r["content"])["text"])
                for r in conn.execute("SELECT in_reply_to, content FROM messages_out WHERE kind = 'chat' ORDER BY seq")]


def inbound_row(folder: Path, message_id: str) -> dict[str, Any]:
    with closing(readonly(folder / "inbound.db")) as conn:
        return dict(conn.execute("SELECT * FROM messages_in WHERE id = ?", (message_id,)).fetchone())


def cli_json(env: Env, *args: str) -> Any:
    return json.loads(env.ok(*args, "--json"))


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def from_utc_text(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def next_weekday_nine(after: datetime, zone: ZoneInfo) -> str:
    """The first ``0 9 * * 1-5`` slot in ``zone`` strictly after ``after``, as stored UTC text."""
    local = after.astimezone(zone)
    day = local.date()
    while True:
        slot = datetime.combine(day, clock_time(9), zone)
        if slot > local and slot.weekday() < 5:
            return utc_text(slot)
        day += timedelta(days=1)


# --- a fake model that can hold a request ---


class BlockingFake(FakeAnthropic):
    """Request number ``hold`` (1-based, default the first) is held until ``release()``, then answered with a
    non-retryable 400 without taking a scripted answer (its runner is dead by then: nobody reads it); every
    other request is served as scripted."""

    def __init__(self, hold: int = 1) -> None:
        super().__init__()
        self.hold = hold
        self.entered = threading.Event()
        self.gate = threading.Event()
        self._count = 0

    def release(self) -> None:
        self.gate.set()

    def _next(self, recorded: Recorded) -> Scripted:
        with self._lock:
            self._count += 1
            held = self._count == self.hold
            if held:
                self.requests.append(recorded)
        if not held:
            return super()._next(recorded)
        self.entered.set()
        self.gate.wait(timeout=300)
        return api.error(400, "invalid_request_error", "fake: this answer goes to a killed runner",
                         {"x-should-retry": "false"})

    def __exit__(self, *exc: Any) -> None:
        self.gate.set()  # a test that failed before releasing must not leave a handler thread hanging
        super().__exit__(*exc)


# --- the scenarios ---


def check_runner_env(environment: dict[str, str]) -> None:
    names = sorted(environment)
    assert not [n for n in names if n.startswith("ANTHROPIC_")], names
    assert not [n for n in names if any(w in n.upper() for w in ("KEY", "TOKEN", "SECRET"))], names
    assert KEY not in environment.values()
    assert environment.get("NCL_ANTHROPIC_SOCKET") == ".proxy.sock"  # relative to the session folder
    assert environment.get("TZ") == ZONE and environment.get("NCL_PROVIDER") == "anthropic"


def standup(env: Env, host: Host, fake: FakeAnthropic, access: RunnerAccess) -> None:
    """Issue 5 acceptance 1: a chat makes the model schedule a weekday standup reminder; the task is stored with its
    series id and cron; moved to "in 3 s" it fires, the runner answers, a clone for the next weekday 09:00
    appears, and the run is recorded. The model is reached only through the host's proxy with the host's key."""
    zone = ZoneInfo(ZONE)
    fake.queue(api.tool_use("schedule_task", STANDUP), api.text(CONFIRM), *[api.text(REMIND)] * 3)

    sent = cli_json(env, "chat", "demo", ASK, "--timeout", "90")
    assert [r["text"] for r in sent["replies"]] == [CONFIRM], (sent, fake.requests)
    session_id = sent["session_id"]
    folder = session_folder(env, session_id)

    # The runner is alive (NCL_IDLE_TIMEOUT_S is long): no key in its environment, the proxy socket owner-only.
    check_runner_env(access.environment(host, session_id))
    assert oct((folder / ".proxy.sock").stat().st_mode & 0o777) == "0o600"
    access.check_live(host, session_id, folder)

    # The model saw the host's key, set by the proxy (the runner's own placeholder credential is dropped).
    first, second = fake.requests[:2]
    for request in (first, second):
        assert request.path == "/v1/messages"
        assert request.headers.get("x-api-key") == KEY
        assert "authorization" not in request.headers
        assert request.body["model"] == MODEL
    assert ASK in json.dumps(first.body["messages"])
    [result] = second.body["messages"][-1]["content"]
    assert result["type"] == "tool_result" and not result.get("is_error"), result
    announced = re.search(r"task-\d+-[0-9a-z]{6}", json.dumps(result["content"]))
    assert announced, result

    # Within a few seconds inbound.db holds the pending task: series id = id, the cron, the id the agent was told.
    def pending_task() -> list[dict[str, str | None]] | None:
        rows = task_rows(folder / "inbound.db")
        return rows if rows and rows[0]["status"] == "pending" else None

    [task] = until(host, pending_task, 10, "the scheduled task row")
    task_id = task["id"]
    assert task_id == announced.group(0)
    assert task["series_id"] == task_id and task["recurrence"] == STANDUP["recurrence"]
    assert task["process_after"] == next_weekday_nine(datetime.now(UTC), zone)

    # Fire it now, not at 9am: the operator moves the next run to 3 s from now (naive = TZ) while the host runs.
    at = (datetime.now(zone) + timedelta(seconds=3)).replace(microsecond=0, tzinfo=None)
    updated = cli_json(env, "tasks", "update", task_id, "--at", at.isoformat())
    assert updated == {"id": task_id, "action": "updated", "changed": 1}
    fire_at = utc_text(at.replace(tzinfo=zone))
    assert task_rows(folder / "inbound.db")[0]["process_after"] == fire_at

    runs = until(host, lambda: cli_json(env, "tasks", "runs", task_id)["runs"] or None, 30, "the task's run")
    assert [(r["outcome"], r["series_id"], r["message_id"], r["scheduled_for"]) for r in runs] == \
        [("ran", task_id, task_id, fire_at)]

    def cloned() -> dict[str, Any] | None:
        found: dict[str, Any] = cli_json(env, "tasks", "show", task_id)
        return found if len(found["occurrences"]) == 2 else None

    shown = until(host, cloned, 10, "the clone")
    done, clone = sorted(shown["occurrences"], key=lambda r: r["seq"])
    assert (done["id"], done["status"], done["recurrence"]) == (task_id, "completed", None)
    assert clone["status"] == "pending" and clone["series_id"] == task_id != clone["id"]
    assert clone["recurrence"] == STANDUP["recurrence"]
    assert clone["process_after"] == next_weekday_nine(from_utc_text(fire_at), zone)
    assert shown["task"]["next_run"] == clone["process_after"] and shown["task"]["last_outcome"] == "ran"
    rows = task_rows(folder / "inbound.db")
    assert [(r["id"], r["status"], r["series_id"]) for r in rows] == \
        [(task_id, "completed", task_id), (clone["id"], "pending", task_id)]

    def reminded() -> list[dict[str, Any]] | None:
        found = cli_json(env, "messages", "list", "--session", session_id)["messages"]
        return found if any(m["direction"] == "out" and m["text"] == REMIND for m in found) else None

    transcript = until(host, reminded, 10, "the reminder in the transcript")
    said = [m["text"] for m in transcript if m["direction"] == "out" and m["kind"] == "chat"]
    assert said == [CONFIRM, REMIND]
    assert len(fake.requests) == 3 and all(r.headers.get("x-api-key") == KEY for r in fake.requests)
    assert "post my standup" in json.dumps(fake.requests[2].body["messages"][-1])


def killed_mid_turn(env: Env, host: Host, fake: BlockingFake, access: RunnerAccess) -> None:
    """Issue 5 acceptance 4: a runner SIGKILLed while its model call is in flight; the claimed message goes back
    with tries=1, a new runner answers it, and it is answered exactly once."""
    fake.queue(api.text(ANSWER))
    chat = subprocess.Popen([*ncl_command(), "chat", "demo", "are you there?", "--json", "--timeout", "120"],
                            cwd=env.root, env=env.vars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert fake.entered.wait(timeout=90), "the runner never called the model"
        [session] = cli_json(env, "sessions", "list")["sessions"]
        folder = session_folder(env, session["id"])
        with closing(readonly(folder / "inbound.db")) as conn:
            [(message_id,)] = conn.execute("SELECT id FROM messages_in WHERE kind = 'chat'").fetchall()
        with closing(readonly(folder / "outbound.db")) as conn:
            claim = conn.execute("SELECT status FROM processing_ack WHERE message_id = ?", (message_id,)).fetchone()
        assert claim is not None and claim["status"] == "processing"  # mid-batch: claimed, not answered
        wait_action_count(host, "runner_started", session["id"], 1, timeout=10)

        access.kill(host, session["id"])
        fake.release()

        # The host notices, releases the claim (tries 1, retry at +5 s) and starts a new runner, which answers.
        wait_action_count(host, "runner_started", session["id"], 2, timeout=60)
        out, err = chat.communicate(timeout=120)
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.communicate()
    assert chat.returncode == 0, err
    assert [r["text"] for r in json.loads(out)["replies"]] == [ANSWER]

    def completed() -> dict[str, Any] | None:
        found = inbound_row(folder, message_id)
        return found if found["status"] == "completed" else None

    row = until(host, completed, 15, "the retried message completed")
    assert row["tries"] == 1
    assert chat_replies(folder) == [(message_id, ANSWER)]  # exactly once, and not the dead runner's error
    transcript = cli_json(env, "messages", "list", "--session", session["id"])["messages"]
    assert [m["text"] for m in transcript if m["direction"] == "out"] == [ANSWER]
    assert len(fake.requests) == 2  # the held one (its runner killed) and the retry
    assert [len(action_lines(host, "runner_started", session["id"]))] == [2]


def pid_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in os.fsdecode(raw).split("\0") if "=" in item)
