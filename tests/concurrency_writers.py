"""The load of the concurrency test (tests/test_concurrency_load.py): the install it runs against (two groups,
five sessions holding recurring and one-shot tasks due every few seconds, queue jobs) and the four writer
threads. Three run what ``ncl tasks update|pause|resume|cancel`` and ``ncl queue send`` run (the same library
calls on fresh connections, then the nudge, as host/cli/tasks.py and host/cli/queue.py do: a subprocess per
write would not be a tight loop); a fourth mixes in real ``ncl`` processes. Each writer records in ``Load``
what it last wrote, for the checks afterwards, and every unexpected exception as an error.

``NCL_CONCURRENCY_S`` sets the load duration (default 60) for local runs.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from processes import Env

from host import settings as settings_module
from host.channels import nudge, queues
from host.cli.app import App
from host.errors import NclError
from host.scheduling import task_list, tasks
from host.scheduling.recurrence import Policy
from host.settings import Settings
from host.store import db
from schemas import clock, ids
from schemas.times import to_text

DURATION_S = float(os.environ.get("NCL_CONCURRENCY_S", "60"))
EVERY_MINUTE, EVERY_2_MINUTES = "* * * * *", "*/2 * * * *"
ONE_SHOT_EVERY_S = 4.0  # per session; five sessions: one due every 0.8 s
MAX_BACKLOG = 60  # queue jobs waiting or running before the sender reads instead of sending
NEW_SESSION_JOBS = 6  # jobs without thread_id: each makes a session (and a runner start)
LOCKED = "database is locked"


@dataclass
class Series:
    id: str
    session: Path  # the session folder
    owner: str  # updater | controller | cancel | cli
    recurring: bool
    prompt: str = ""  # what the last successful write left
    recurrence: str | None = None
    state: str = "active"  # active | paused | cancelled (controller and cli series)
    ended: bool = False  # a one-shot that ran: updates now fail, as they must
    pushed_at: float = 0.0  # monotonic time of the last --at push


@dataclass
class Job:
    message_id: str
    session_id: str


@dataclass
class Load:
    settings: Settings
    series: dict[str, Series]
    stop: threading.Event = field(default_factory=threading.Event)
    jobs: list[Job] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # unexpected exceptions and failed ncl processes
    ops: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, error: str | None = None) -> None:
        with self.lock:
            self.ops[name] += 1
            if error is not None:
                self.errors.append(f"{name}: {error}")

    def owned(self, owner: str) -> list[Series]:
        return [s for s in self.series.values() if s.owner == owner]


def _policy(settings: Settings) -> Policy:
    return Policy.of(settings)


def _task_write(settings: Settings, ref: str, action: Callable[[sqlite3.Connection, Path, str], Any]) -> Any:
    """What ``ncl tasks pause|resume|cancel|update`` does (host/cli/tasks.py ``_write``): locate the series from
    central.db, one transaction on the session's inbox on a fresh connection, then nudge the host."""
    with closing(App(settings).central()) as central:
        session, series_id = task_list.locate(settings, central, ref)

    def write() -> Any:
        with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
            return action(conn, session.folder, series_id)

    outcome = db.retried(write)
    nudge.touch(settings)
    return outcome


def _queue_send(settings: Settings, queue_name: str, payload: dict[str, Any]) -> dict[str, str]:
    """What ``ncl queue send`` does (host/cli/queue.py): central.db opened for writing, one send."""
    with closing(App(settings).central(write=True)) as central:
        return queues.send(central, settings, clock.now(), queue_name, payload)


def _guarded(load: Load, name: str, op: Callable[[], None]) -> None:
    try:
        op()
    except Exception as exc:  # every failure is a finding; the load goes on to find the others
        load.record(name, f"{type(exc).__name__}: {exc}")
    else:
        load.record(name)


def updater(load: Load, seed: int) -> None:
    """``tasks update``: new prompts on recurring and one-shot series, sometimes a new recurrence, and now and
    then a recurring series' next run pulled to 2 s from now, so firings race with the writes."""
    rng = random.Random(seed)
    targets, count = load.owned("updater"), 0
    while not load.stop.is_set():
        series = rng.choice([s for s in targets if not s.ended])
        count += 1
        prompt = f"{series.id} v{count}"
        expr = rng.choice((EVERY_MINUTE, EVERY_2_MINUTES)) if series.recurring and rng.random() < 0.05 else None
        at = None
        if series.recurring and time.monotonic() - series.pushed_at > 5 and rng.random() < 0.2:
            at = to_text(clock.now() + timedelta(seconds=2))
            series.pushed_at = time.monotonic()

        def op(series: Series = series, prompt: str = prompt, expr: str | None = expr, at: str | None = at) -> None:
            try:
                _task_write(load.settings, series.id, lambda conn, folder, series_id: tasks.update(
                    conn, series_id, clock.now(), _policy(load.settings), prompt, at, expr, enforce_interval=False,
                    folder=folder))
            except NclError as exc:
                if series.recurring or "no live occurrence" not in str(exc):
                    raise
                series.ended = True  # the one-shot ran: its last prompt is the one before this
                return
            series.prompt = prompt
            if expr:
                series.recurrence = expr

        _guarded(load, "tasks update", op)


def controller(load: Load, seed: int) -> None:
    """``tasks pause`` / ``tasks resume`` flipping series, and each ``cancel`` series cancelled at its time."""
    rng = random.Random(seed)
    flipped, doomed = load.owned("controller"), load.owned("cancel")
    start = time.monotonic()
    while not load.stop.is_set():
        due = [s for i, s in enumerate(doomed)
               if s.state != "cancelled" and time.monotonic() - start > DURATION_S * (i + 1) / (len(doomed) + 1)]
        series = due[0] if due else rng.choice(flipped)
        verb = "cancel" if due else ("resume" if series.state == "paused" else "pause")

        def op(series: Series = series, verb: str = verb) -> None:
            now, policy = clock.now(), _policy(load.settings)
            action = {"pause": lambda conn, folder, series_id: tasks.pause(conn, series_id, now, policy, folder=folder),
                      "resume": lambda conn, folder, series_id: tasks.resume(conn, series_id, now, policy),
                      "cancel": lambda conn, folder, series_id: tasks.cancel(conn, series_id, now, folder=folder)}[verb]
            changed = _task_write(load.settings, series.id, action)
            if changed == 0:  # the CLI says why (already paused, not paused, ended) and exits 1
                raise AssertionError(f"{verb} {series.id} changed nothing (its state was {series.state})")
            series.state = {"pause": "paused", "resume": "active", "cancel": "cancelled"}[verb]

        _guarded(load, f"tasks {verb}", op)


def sender(load: Load, seed: int, threads: dict[str, list[str]]) -> None:
    """``queue send`` into existing thread sessions, a few jobs into new sessions; reads ``queue list`` instead
    while the runners are behind, so the backlog stays drainable."""
    rng = random.Random(seed)
    start, fresh, backlog = time.monotonic(), 0, 0
    while not load.stop.is_set():
        if backlog >= MAX_BACKLOG:
            def read() -> None:
                nonlocal backlog
                with closing(App(load.settings).central()) as central:
                    found = queues.summary(central, load.settings)
                backlog = sum(q["pending"] + q["in_flight"] for q in found)

            _guarded(load, "queue list", read)
            continue
        queue_name = rng.choice(sorted(threads))
        payload: dict[str, Any] = {"prompt": f"job {len(load.jobs)} {rng.random()}"}
        if time.monotonic() - start > DURATION_S * (fresh + 1) / (NEW_SESSION_JOBS + 1):
            fresh += 1  # no thread_id: a session of its own
        else:
            payload["thread_id"] = rng.choice(threads[queue_name])

        def send(queue_name: str = queue_name, payload: dict[str, Any] = payload) -> None:
            nonlocal backlog
            sent = _queue_send(load.settings, queue_name, payload)
            with load.lock:
                load.jobs.append(Job(sent["message_id"], sent["session_id"]))
            backlog += 1

        _guarded(load, "queue send", send)


def cli_mix(load: Load, env: Env, seed: int) -> None:
    """Real ``ncl`` processes mixed in: update, pause/resume, queue send, and the reads an operator runs."""
    rng = random.Random(seed)
    [series] = load.owned("cli")
    count = 0
    while not load.stop.is_set():
        count += 1
        step = count % 5
        if step == 0:
            args = ["tasks", "update", series.id, "--prompt", f"{series.id} cli v{count}", "--json"]
        elif step == 1:
            args = ["tasks", "resume" if series.state == "paused" else "pause", series.id, "--json"]
        elif step == 2:
            args = ["queue", "send", "--queue", "jobs-b", "--json",
                    json.dumps({"prompt": f"cli job {count}", "thread_id": rng.choice(["t0", "t1"])})]
        else:
            args = rng.choice([["tasks", "list", "--json"], ["queue", "list", "--json"], ["status", "--json"]])
        done = env.ncl(*args)
        name = f"ncl {args[0]} {args[1]}"
        if done.returncode != 0:
            load.record(name, f"exit {done.returncode}: {done.stderr.strip()}")
            continue
        load.record(name)
        if LOCKED in done.stderr:
            load.record(name, done.stderr.strip())
        if args[:2] == ["tasks", "update"]:
            series.prompt = args[4]
        elif args[0] == "tasks" and args[1] in ("pause", "resume"):
            series.state = "paused" if args[1] == "pause" else "active"
        elif args[:2] == ["queue", "send"]:
            sent = json.loads(done.stdout)
            with load.lock:
                load.jobs.append(Job(sent["message_id"], sent["session_id"]))


def _schedule(settings: Settings, folder: Path, prompt: str, at: datetime | None, expr: str | None) -> str:
    """What ``ncl tasks add --force`` does."""
    now = clock.now()
    task_id = ids.new_id("task", now)
    with closing(db.connect(folder / "inbound.db", "inbound")) as conn:
        tasks.schedule(conn, now, _policy(settings), task_id, prompt, to_text(at) if at else None, expr,
                       enforce_interval=False)
    return task_id


def setup_load(env: Env) -> tuple[Load, dict[str, list[str]]]:
    env.ok("groups", "create", "alpha", "--channel", "cli", "--channel", "queue:jobs-a")
    env.ok("groups", "create", "beta", "--channel", "queue:jobs-b")
    cli_session = json.loads(env.ok("sessions", "create", "--group", "alpha", "--json"))
    settings = settings_module.load(environ=env.vars, cwd=env.root)
    load = Load(settings, {})
    threads = {"jobs-a": ["t0", "t1"], "jobs-b": ["t0", "t1"]}
    folders = [Path(cli_session["path"])]
    for queue_name, names in threads.items():  # the first job of each thread makes its session
        for thread in names:
            sent = _queue_send(settings, queue_name, {"prompt": f"first of {thread}", "thread_id": thread})
            load.jobs.append(Job(sent["message_id"], sent["session_id"]))
            group = "ag-alpha" if queue_name == "jobs-a" else "ag-beta"
            folders.append(settings.sessions_dir / group / sent["session_id"])
    start = clock.now() + timedelta(seconds=5)  # the host is up by then
    for n, folder in enumerate(folders):
        owners = ["updater", "updater", "controller", "controller", "cancel"] + (["cli"] if n == 0 else [])
        for owner in owners:
            prompt = f"{owner} series in {folder.name}"
            task_id = _schedule(settings, folder, prompt, start + timedelta(seconds=n), EVERY_MINUTE)
            load.series[task_id] = Series(task_id, folder, owner, True, prompt, EVERY_MINUTE)
        shots = int(DURATION_S / ONE_SHOT_EVERY_S)
        for k in range(shots):
            at = start + timedelta(seconds=k * ONE_SHOT_EVERY_S + n * ONE_SHOT_EVERY_S / len(folders))
            prompt = f"one-shot {k} in {folder.name}"
            task_id = _schedule(settings, folder, prompt, at, None)
            load.series[task_id] = Series(task_id, folder, "updater", False, prompt)
    return load, threads
