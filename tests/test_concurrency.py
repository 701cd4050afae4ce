"""Concurrency (issue 7): ``ncl`` writes in a tight loop against a running host and its runners for 60 s.

A real ``ncl host run`` (local runners, mock provider) serves two groups and five sessions holding recurring and
one-shot tasks due every few seconds (operator ``--force`` intervals) plus queue jobs. Meanwhile three writer
threads run what ``ncl tasks update|pause|resume|cancel`` and ``ncl queue send`` run (the same library calls on
fresh connections, then the nudge, as host/cli/tasks.py and host/cli/queue.py do: a subprocess per write would
not be a tight loop), and a fourth thread mixes in real ``ncl`` processes. Afterwards: no "database is locked"
(or any other error) surfaced anywhere, and no write was lost: every job has its row and exactly one answer,
every series holds what its last writer wrote, paused series stay paused, cancelled ones stay ended, every
one-shot ran exactly once.

``NCL_CONCURRENCY_S`` sets the load duration (default 60) for local runs.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World, utc
from processes import Env, Host

from host import db, nudge, queues, sessions, task_list, tasks
from host import settings as settings_module
from host.cli.app import App
from host.errors import NclError
from host.recurrence import Policy
from host.settings import Settings
from schemas import clock, ids
from schemas.times import to_text

DURATION_S = float(os.environ.get("NCL_CONCURRENCY_S", "60"))
DRAIN_S = 90.0  # after the load: every job answered, every one-shot run
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


def _task_write(settings: Settings, ref: str, action: Callable[[sqlite3.Connection, str], Any]) -> Any:
    """What ``ncl tasks pause|resume|cancel|update`` does (host/cli/tasks.py ``_write``): locate the series from
    central.db, one transaction on the session's inbox on a fresh connection, then nudge the host."""
    with closing(App(settings).central()) as central:
        session, series_id = task_list.locate(settings, central, ref)
    with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
        outcome = action(conn, series_id)
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
                _task_write(load.settings, series.id, lambda conn, series_id: tasks.update(
                    conn, series_id, clock.now(), _policy(load.settings), prompt, at, expr, enforce_interval=False))
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
            action = {"pause": lambda conn, series_id: tasks.pause(conn, series_id, now, policy),
                      "resume": lambda conn, series_id: tasks.resume(conn, series_id, now, policy),
                      "cancel": lambda conn, series_id: tasks.cancel(conn, series_id, now)}[verb]
            changed = _task_write(load.settings, series.id, action)
            if changed == 0:  # the CLI says "nothing to change" and exits 1
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


def _setup(env: Env) -> tuple[Load, dict[str, list[str]]]:
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


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def _folders(load: Load) -> dict[str, Path]:
    with closing(App(load.settings).central()) as central:
        return {s.id: s.folder for s in sessions.list_all(central, load.settings)}


def _unfinished(load: Load) -> list[str]:
    """Jobs not yet answered and delivered, one-shots not yet run: what the drain waits for."""
    folders, waiting = _folders(load), []
    by_session: dict[str, list[str]] = {}
    for job in load.jobs:
        by_session.setdefault(job.session_id, []).append(job.message_id)
    for sid, message_ids in by_session.items():
        with closing(_ro(folders[sid] / "inbound.db")) as conn:
            done = {r[0] for r in conn.execute("SELECT id FROM messages_in WHERE kind = 'queue'"
                                               " AND status = 'completed'")}
            handled = conn.execute("SELECT COUNT(*) FROM delivered").fetchone()[0]
        replies = 0
        if (folders[sid] / "outbound.db").exists():
            with closing(_ro(folders[sid] / "outbound.db")) as conn:
                replies = conn.execute("SELECT COUNT(*) FROM messages_out WHERE kind = 'chat'").fetchone()[0]
        waiting += [m for m in message_ids if m not in done]
        if handled < replies:
            waiting.append(f"{replies - handled} replies of {sid} not delivered")
    for folder in {s.session for s in load.series.values()}:
        with closing(_ro(folder / "inbound.db")) as conn:
            waiting += [r[0] for r in conn.execute("SELECT id FROM messages_in WHERE kind = 'task'"
                                                   " AND recurrence IS NULL AND status IN ('pending', 'processing')")
                        if r[0] in load.series and load.series[r[0]].state != "cancelled"]
    return waiting


def _lines(host: Host, seconds: float) -> Iterator[str]:
    """Host (and runner) stderr lines for up to ``seconds``: the drain waits on the host's own activity."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = host.lines.get(timeout=left)
        except queue.Empty:
            return
        if line is None:
            return
        host.seen.append(line)
        yield line


def _drain(host: Host, load: Load) -> None:
    deadline = time.monotonic() + DRAIN_S
    while waiting := _unfinished(load):
        assert time.monotonic() < deadline, f"{len(waiting)} not done {DRAIN_S} s after the load: {waiting[:10]}"
        for _ in _lines(host, 0.5):
            pass


def _rest_of_stderr(host: Host) -> None:
    """Everything the host and its runners wrote after the last wait (EOF once the runners are gone too)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            line = host.lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line is None:
            return
        host.seen.append(line)


def _runner_pids(root: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"agent_runner --session-dir {root}"], capture_output=True, text=True,
                           check=False)
    return [int(pid) for pid in found.stdout.split()]


def _check_jobs(load: Load, folders: dict[str, Path]) -> None:
    for sid in {j.session_id for j in load.jobs}:
        wanted = {j.message_id for j in load.jobs if j.session_id == sid}
        with closing(_ro(folders[sid] / "inbound.db")) as conn:
            rows = {r["id"]: r for r in conn.execute("SELECT id, kind, status FROM messages_in WHERE kind = 'queue'")}
            delivered = {r[0] for r in conn.execute("SELECT message_out_id FROM delivered")}
        with closing(_ro(folders[sid] / "outbound.db")) as conn:
            replies = conn.execute("SELECT id, in_reply_to FROM messages_out WHERE kind = 'chat'").fetchall()
        assert wanted <= set(rows), f"jobs with no messages_in row in {sid}: {wanted - set(rows)}"
        answers = Counter(r["in_reply_to"] for r in replies)
        assert {m: answers[m] for m in wanted if answers[m] != 1} == {}, f"jobs not answered exactly once in {sid}"
        assert {r["id"] for r in replies} <= delivered, f"replies of {sid} never handed on"


def _series_problem(series: Series, own: list[dict[str, Any]], outcomes: list[str]) -> str | None:
    """What is wrong with one series' rows and runs after the load, given what its writer last did."""
    if not own:
        return f"{series.id}: no rows at all"
    live = [r for r in own if r["status"] in ("pending", "processing", "paused")]
    carriers = [r for r in live if r["recurrence"]]
    prompt = json.loads(own[-1]["content"])["prompt"]  # the newest occurrence: clones carry the content on
    if series.owner in ("updater", "cli") and prompt != series.prompt:
        return f"{series.id}: prompt {prompt!r}, last written {series.prompt!r}"
    if not series.recurring:
        statuses = [r["status"] for r in own]
        return None if statuses == ["completed"] and outcomes == ["ran"] else \
            f"one-shot {series.id}: rows {statuses}, runs {outcomes}"
    if series.state == "cancelled":
        return f"cancelled {series.id}: live {live}, runs {outcomes}" if live or "cancelled" not in outcomes else None
    if len(carriers) != 1:
        return f"{series.id} has {len(carriers)} live occurrences carrying its recurrence"
    if series.state == "paused" and {r["status"] for r in live} != {"paused"}:
        return f"paused {series.id} has live rows {[r['status'] for r in live]}"
    if series.state == "active" and carriers[0]["status"] == "paused":
        return f"resumed {series.id} is still paused"
    if series.recurrence and carriers[0]["recurrence"] != series.recurrence:
        return f"{series.id}: recurrence {carriers[0]['recurrence']!r}, written {series.recurrence!r}"
    return None


def _check_series(load: Load) -> None:
    wrong: list[str] = []
    ran: Counter[str] = Counter()
    for folder in {s.session for s in load.series.values()}:
        with closing(_ro(folder / "inbound.db")) as conn:
            rows = [dict(r) for r in conn.execute("SELECT * FROM messages_in WHERE kind = 'task' ORDER BY seq")]
            runs = [dict(r) for r in conn.execute("SELECT * FROM task_runs")]
        twice = [m for m, n in Counter(r["message_id"] for r in runs if r["outcome"] == "ran").items() if n > 1]
        assert twice == [], f"occurrences that ran twice: {twice}"
        for series in (s for s in load.series.values() if s.session == folder):
            outcomes = [r["outcome"] for r in runs if r["series_id"] == series.id]
            ran[series.owner if series.recurring else "one-shot"] += outcomes.count("ran")
            problem = _series_problem(series, [r for r in rows if r["series_id"] == series.id], outcomes)
            if problem:
                wrong.append(problem)
    assert wrong == [], "\n".join(wrong)
    assert ran["one-shot"] == sum(not s.recurring for s in load.series.values())
    assert ran["updater"] > 0, "no recurring occurrence fired during the load: the writes raced with nothing"


@pytest.fixture
def env() -> Iterator[Env]:
    # Short: a local runner's proxy socket path must fit AF_UNIX's 107 bytes (pytest's tmp_path may not).
    root = Path(tempfile.mkdtemp(prefix="ncl-conc-"))
    yield Env(root)
    for pid in _runner_pids(root):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_tight_ncl_writes_against_a_running_host_lose_nothing_and_never_lock(env: Env) -> None:
    load, threads = _setup(env)
    host = Host(env, NCL_IDLE_TIMEOUT_S="5", NCL_MAX_RUNNERS="12")
    try:
        host.wait_for_action("host_started")
        workers = [threading.Thread(target=updater, args=(load, 1)),
                   threading.Thread(target=controller, args=(load, 2)),
                   threading.Thread(target=sender, args=(load, 3, threads)),
                   threading.Thread(target=cli_mix, args=(load, env, 4))]
        for worker in workers:
            worker.start()
        for _ in _lines(host, DURATION_S):  # the load's duration: read the host meanwhile
            pass
        load.stop.set()
        for worker in workers:
            worker.join(timeout=60)
        _drain(host, load)
        assert host.stop(signal.SIGTERM) == 0
    finally:
        host.kill()
        _rest_of_stderr(host)
    stderr = host.seen
    assert load.errors == [], "\n".join(load.errors[:20])
    assert [line for line in stderr if LOCKED in line] == []
    assert [line for line in stderr if "Traceback" in line or "[action=session_failed " in line] == []
    # A tight loop: every kind of write many times a second, real ncl processes throughout.
    assert min(load.ops[name] for name in ("tasks update", "tasks pause", "tasks resume", "queue send")) \
        >= 5 * DURATION_S, load.ops
    assert sum(n for name, n in load.ops.items() if name.startswith("ncl ")) >= DURATION_S / 10, load.ops
    folders = _folders(load)
    _check_jobs(load, folders)
    _check_series(load)


# Two writes that race with a firing, pinned with a fake clock. The runner claims a due row in outbound.db at once;
# the host copies that claim into messages_in ('processing') only at its next sweep (up to 0.25 s later, or
# never before the run ends when the run is short). `ncl tasks pause|cancel|update` decide by messages_in alone.
T = utc("2026-05-18T13:00:00")


def test_a_pause_between_the_runners_claim_and_the_hosts_sync_keeps_the_run_and_the_misfire(tmp_path: Path) -> None:
    world = World(tmp_path, tz="UTC")
    series = world.schedule(T - timedelta(minutes=1), recurrence="0 * * * *", at=to_text(T))
    world.ack(series, "processing", T, generation="gen-live")  # claimed; no sweep has seen the claim yet
    with closing(world.inbound()) as conn:
        assert tasks.pause(conn, series, T + timedelta(seconds=1), world.policy) == 1
    world.ack(series, "completed", T + timedelta(seconds=2), generation="gen-live", outcome="ran")
    sweeper = world.sweeper()
    sweeper.tick(T + timedelta(seconds=3))
    # The run finished (DESIGN §6.6: a running occurrence finishes; the next one is created paused).
    assert [(r["outcome"], r["scheduled_for"]) for r in world.runs(series)] == [("ran", to_text(T))]
    assert [(r["status"], r["process_after"]) for r in world.live(series)] == [("paused", "2026-05-18T14:00:00.000Z")]
    later = T + timedelta(minutes=90)  # 14:00 passed while paused: within the grace, it runs once, at once
    with closing(world.inbound()) as conn:
        tasks.resume(conn, series, later, world.policy)
    assert sweeper.tick(later + timedelta(seconds=1)).woken == 1


def test_a_new_next_run_given_while_an_occurrence_runs_is_not_lost(tmp_path: Path) -> None:
    world = World(tmp_path, tz="UTC")
    series = world.schedule(T - timedelta(minutes=1), recurrence="0 * * * *", at=to_text(T))
    with closing(world.inbound()) as conn:  # what the sweep writes once it has seen the runner's claim
        conn.execute("UPDATE messages_in SET status = 'processing' WHERE id = ?", (series,))
    wanted = to_text(T + timedelta(minutes=20))
    try:
        with closing(world.inbound()) as conn:
            tasks.update(conn, series, T + timedelta(seconds=5), world.policy, process_after=wanted)
    except NclError:
        return  # refusing clearly ("it is running; try again when it ends") is a fine answer too
    world.run_occurrence(world.sweeper(), series, T + timedelta(seconds=10))
    assert [r["process_after"] for r in world.live(series)] == [wanted]
