"""Firing project-level scheduled tasks from the host loop (DESIGN §9, §6.3).

``tick(now)`` claims every due slot under the misfire rule of session tasks, enqueues ``queue`` targets at once
(fast) and hands ``container`` and ``host`` targets to a small thread pool, so the loop never waits on a
command; their run rows stay ``running`` until the worker records the end. ``earliest_due()`` tells the loop
when to wake. A ``running`` row found when a firer starts belongs to a host that stopped mid-run (the host lock
guarantees no other firer is alive): a queue target's job is sent again, idempotently, any other run marked failed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from host.channels import queues
from host.project_tasks import targets as scheduled_targets
from host.project_tasks.specs import Task
from host.project_tasks.targets import STOPPED, Outcome, Stop
from host.runtimes.docker import SECRET_WORDS, resource_limits
from host.runtimes.install import install_id
from host.scheduling.recurrence import Overdue, Policy, replanned, said_replanned
from host.settings import Settings
from host.store import db
from host.store import project_tasks as store
from schemas import clock as real_clock
from schemas import cron, ids
from schemas.times import from_text, to_text

log = logging.getLogger(__name__)
WORKERS = 4
HIDDEN_ENV = ("ANTHROPIC_API_KEY",)  # the proxy holds the key; no scheduled command needs it
# An agent's host task (issue 16.3) gets no variable named like a secret either (the Matrix bot's password and
# token, an operator's GITHUB_TOKEN): it was written by a model that may have read untrusted text.
AGENTS_OFF = "not run: an agent created it and NCL_ALLOW_AGENT_HOST_TASKS is off"


@dataclass
class FireResult:
    fired: int = 0
    missed: int = 0
    failed: int = 0
    left: int = 0  # due commands and containers a sweep at another instant (``--now``) does not run

    def to_json(self) -> dict[str, int]:
        return {f"scheduled_{key}": value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Claim:
    task: Task
    run_id: str | None  # None: the slots were only recorded as missed
    slot: datetime
    missed: int = 0  # slots recorded as missed by this claim


def claim(conn: db.Connection, task_id: str, now: datetime, policy: Policy) -> Claim | None:
    """Claim the due slot of a task: fire the latest passed slot if within the grace, else record it missed.

    Moving ``next_run`` and inserting the run rows is one transaction, taken with the write lock, so whoever
    claims second finds nothing due. Slots not fired become one ``missed`` run with their count."""
    with db.transaction(conn):
        row = store.due_row(conn, task_id, to_text(now))
        if row is None or row.next_run is None:
            return None
        due = Overdue.of(row.schedule, from_text(row.next_run), now, policy)
        first, slot = due.first, due.latest
        try:
            next_run: str | None = to_text(cron.next_after(row.schedule, slot, policy.zone))
        except cron.CronError:  # no slot before the year 9999 ends (a clock set there): nothing more to fire
            next_run = None
        store.set_next_run(conn, task_id, next_run, policy.zone.key)
        missed, why = due.later, "the host was not running"
        fire = due.runs(now, policy)
        if fire and store.is_running(conn, task_id):
            fire, why = False, "the previous run was still running"
        if not fire:
            missed += 1
        if missed:
            until = f"before the one at {to_text(slot)}, which runs," if fire else f"to {to_text(slot)}"
            store.add_missed(conn, ids.new_id("run", now), task_id, to_text(first), to_text(now),
                             f"{missed} slot(s) from {to_text(first)} {until} not run: {why}", missed)
        run_id = ids.new_id("run", now) if fire else None
        if run_id is not None and not store.add_running(conn, run_id, task_id, to_text(slot), to_text(now)):
            run_id = None  # this slot fired before (a schedule set back by --now): never twice
    return Claim(Task.of(replace(row, next_run=next_run)), run_id, slot, missed)


def finish(conn: db.Connection, run_id: str, outcome: Outcome, started: datetime, finished: datetime,
           queued: tuple[str, str] | None = None, status: str | None = None) -> None:
    """``queued``: the message id and session of the job the run sent."""
    store.end_run(conn, run_id, status=status or outcome.status, started_at=to_text(started),
                  finished_at=to_text(finished), duration_ms=max(0, int((finished - started).total_seconds() * 1000)),
                  exit_code=outcome.exit_code, queued=queued, output_tail=outcome.output_tail, error=outcome.error)


def said_finished(task_id: str, run_id: str, outcome: str, started: datetime, finished: datetime, what: str) -> None:
    """The line of a run's outcome (succeeded | queued | failed | timeout), with ``what`` it did or why it failed;
    a failure alerts, but for a run the host's own stop ended."""
    took = max(0.0, (finished - started).total_seconds())
    ok = outcome in ("succeeded", "queued")
    alert = {} if ok or what == STOPPED else {"alert": "scheduled_task_failed"}
    log.log(logging.INFO if ok else logging.WARNING,
            "scheduled task %s %s in %.1f s%s", task_id, outcome, took, f": {what}" if what else "",
            extra={"action": "scheduled_run_finished", "task": task_id, "run": run_id, "outcome": outcome,
                   "duration_ms": int(took * 1000), **alert})


def replan(conn: db.Connection, now: datetime, policy: Policy) -> None:
    """One zone at a time: next runs planned in another zone (TZ changed since) planned again in this one, as a
    session's tasks are (``recurrence.replanned``)."""
    stale = store.planned_elsewhere(conn, policy.zone.key)
    if not stale:
        return
    with db.transaction(conn):
        for row in stale:
            assert row.next_run is not None
            was = from_text(row.next_run)
            slot = replanned(row.schedule, was, row.zone, now, policy)
            store.set_next_run(conn, row.id, row.next_run if slot is None else to_text(slot), policy.zone.key)
            if slot is not None:
                said_replanned(f"scheduled task {row.id}", was, slot, str(row.zone), policy)


def _resent(run: store.Interrupted, task: store.TaskRow, now: datetime, policy: Policy) -> bool:
    """Whether a queue run a stopped host left is sent again: its task is as it fired it (what was sent, if it was,
    is what would be sent), still active, and the slot within the misfire grace (not a day's job days late)."""
    return (task.target_kind == "queue" and task.active and task.updated_at <= run.started_at
            and now - from_text(run.started_at) <= policy.misfire_grace)


def _docker_client() -> Any:
    import docker  # slow to import, and only container targets need it

    return docker.from_env(timeout=60)


class ScheduledTasks:
    """What the host owns: fires due project tasks and runs the slow targets on its worker threads."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = real_clock.now,
                 docker_client: Callable[[], Any] = _docker_client, commands: bool = True) -> None:
        """``commands``: False for a sweep at another instant than now, which runs no command or container (they
        run in real time, as runners do) and leaves their slots due; a queue target's job is sent."""
        self.settings, self.commands = settings, commands
        self.policy = Policy.of(settings)
        self.clock = clock
        self._docker_factory = docker_client
        self._docker: Any = None
        self._conn: db.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ncl-scheduled")
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[Future[None], Stop]] = {}
        self._failing: dict[str, str] = {}  # task id -> updated_at of a task whose claim raised: not retried

    def _central(self, now: datetime) -> db.Connection:
        if self._conn is None:
            # (a running host ticks in its sweep's thread and closes this on its loop, one after the other)
            conn = db.connect(self.settings.central_db, "central", any_thread=True)
            try:
                self._recover(conn, now)
            except BaseException:  # tried again at the next tick: a run left 'running' would block its task's slots
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _recover(self, conn: db.Connection, now: datetime) -> None:
        """Runs a stopped host left ``running`` (the host lock says no other firer is alive). A queue target's job is
        sent again, found where it went if it was sent (``queues.send``'s run id), while its task is still active, as
        it was when it fired, and the slot within the misfire grace; any other run failed, its command, container or
        job lost with that host (and a container it may have left removed)."""
        again: list[tuple[store.Interrupted, store.TaskRow]] = []
        lost: list[tuple[store.Interrupted, store.TaskRow | None]] = []
        for run in store.running(conn):
            row = store.get(conn, run.task_id)
            if row is not None and _resent(run, row, now, self.policy):
                again.append((run, row))
            else:
                lost.append((run, row))
        store.fail_runs(conn, [run.id for run, _ in lost], to_text(now), STOPPED)
        if lost:
            log.warning("%d scheduled run(s) were interrupted by a host stop", len(lost),
                        extra={"action": "scheduled_runs_interrupted", "runs": [run.id for run, _ in lost]})
        for run, row in lost:
            if row is None or row.target_kind == "container" or row.updated_at > run.started_at:
                self._pool.submit(self._remove_container, self._container_name(run.id))  # (it may have outlived it)
        for run, row in again:
            self._enqueue(conn, Task.of(row), run.id, from_text(run.started_at), FireResult())

    def _ready(self, tasks: list[store.Due]) -> list[store.Due]:
        return [t for t in tasks if self._failing.get(t.id) != t.updated_at]

    def earliest_due(self) -> datetime | None:
        if self._conn is None:
            return None  # before the first tick, which fires whatever is due anyway
        ready = self._ready(store.upcoming(self._conn, len(self._failing) + 1))
        return from_text(ready[0].next_run) if ready else None

    def tick(self, now: datetime) -> FireResult:
        result = FireResult()
        conn = self._central(now)
        replan(conn, now, self.policy)
        for task in self._ready(store.due(conn, to_text(now))):
            if not self.commands and task.target_kind != "queue":
                result.left += 1
                continue
            try:
                self._fire(conn, task.id, now, result)
            except Exception as exc:  # one broken task never stops the others, nor the host
                self._failing[task.id] = task.updated_at
                result.failed += 1
                log.error("scheduled task %s could not be fired: %s", task.id, exc,
                          extra={"action": "scheduled_fire_failed", "task": task.id, "alert": "scheduled_task_failed"})
        return result

    def _fire(self, conn: db.Connection, task_id: str, now: datetime, result: FireResult) -> None:
        claimed = claim(conn, task_id, now, self.policy)
        if claimed is None:
            return
        if claimed.missed:  # one missed run written, whether or not the latest slot fires (as a sweep counts them)
            result.missed += 1
            log.warning("scheduled task %s missed %d slot(s)", task_id, claimed.missed,
                        extra={"action": "scheduled_missed", "task": task_id, "slots": claimed.missed,
                               "alert": "scheduled_task_missed"})
        if claimed.run_id is None:
            return
        result.fired += 1
        log.info("scheduled task %s fired for %s (%s)", task_id, to_text(claimed.slot), claimed.task.spec.target_kind,
                  extra={"action": "scheduled_fired", "task": task_id, "run": claimed.run_id,
                         "target": claimed.task.spec.target_kind})
        if claimed.task.spec.queue is None:
            run_id, stop = claimed.run_id, Stop()
            with self._lock:
                future = self._pool.submit(self._work, claimed, run_id, stop)
                self._runs[run_id] = (future, stop)
            future.add_done_callback(lambda _: self._forget(run_id))
            return
        self._enqueue(conn, claimed.task, claimed.run_id, now, result)

    def _enqueue(self, conn: db.Connection, task: Task, run_id: str, now: datetime, result: FireResult) -> None:
        """Send a queue target's job, fired at ``now``, and record the run's end."""
        target = task.spec.queue
        assert target is not None
        try:
            sent = queues.send(conn, self.settings, now, target.name, target.payload, run_id)
        except Exception as exc:  # whatever it is, the claimed run must end, or it would block the next slots
            result.failed += 1
            finish(conn, run_id, Outcome("failed", error=str(exc)), now, self.clock())
            said_finished(task.id, run_id, "failed", now, now, f"enqueue failed: {exc}")
            return
        finished = self.clock()
        finish(conn, run_id, Outcome("succeeded"), now, finished, (sent["message_id"], sent["session_id"]), "queued")
        said_finished(task.id, run_id, "queued", now, finished, f"message {sent['message_id']} in session "
                      f"{sent['session_id']}")

    def _work(self, claimed: Claim, run_id: str, stop: Stop) -> None:
        started = self.clock()
        spec = claimed.task.spec
        env = {"TZ": self.settings.tz.name, "NCL_SCHEDULED_TASK_ID": claimed.task.id,
               "NCL_SCHEDULED_FOR": to_text(claimed.slot)}
        try:
            if stop.stopped:
                outcome = Outcome("failed", error=STOPPED)
            elif spec.origin is not None and not self.settings.allow_agent_host_tasks:  # an agent's (issue 16.3)
                outcome = Outcome("failed", error=AGENTS_OFF)
            elif spec.host is not None:
                inherited = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV and not (
                    spec.origin is not None and any(word in k.upper() for word in SECRET_WORDS))}
                outcome = scheduled_targets.run_host(spec.host, {**inherited, **env}, stop)
            else:
                assert spec.container is not None
                labels = {"ncl.scheduled.install": install_id(self.settings), "ncl.scheduled_task": claimed.task.id}
                kwargs = scheduled_targets.container_kwargs(
                    spec.container, self._container_name(run_id), labels, env, resource_limits(self.settings))
                outcome = scheduled_targets.run_container(self._client(), spec.container, kwargs, stop)
        except Exception as exc:  # the run failed, not the host
            outcome = Outcome("failed", error=f"{type(exc).__name__}: {exc}")
        finished = self.clock()
        try:
            with closing(db.connect(self.settings.central_db, "central")) as conn:
                finish(conn, run_id, outcome, started, finished)
        except Exception as exc:  # the row stays 'running' until the next host start fails it; say so now
            log.error("scheduled run %s ended %s but could not be recorded: %s", run_id, outcome.status, exc,
                      extra={"action": "scheduled_record_failed", "run": run_id})
        exited = "" if outcome.exit_code is None else f"exit code {outcome.exit_code}"
        said_finished(claimed.task.id, run_id, outcome.status, started, finished, outcome.error or exited)

    def _container_name(self, run_id: str) -> str:
        # Not labelled ncl.install: the runner runtime removes such containers it did not start as orphans.
        return f"ncl-{install_id(self.settings)}-{run_id}"

    def _client(self) -> Any:
        with self._lock:
            if self._docker is None:
                self._docker = self._docker_factory()
            return self._docker

    def _remove_container(self, name: str) -> None:
        try:
            self._client().containers.get(name).remove(force=True)
        except Exception as exc:  # gone already, or no engine: nothing left to clean
            log.debug("no container %s to remove: %s", name, exc, extra={"action": "scheduled_container_gone"})

    def _forget(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every run started so far has ended (tests, and the one-off sweep)."""
        with self._lock:
            futures = [future for future, _ in self._runs.values()]
        wait(futures, timeout)

    def close(self, stop_running: bool = False) -> None:
        """Let runs finish, or with ``stop_running`` kill them (recorded as failed: the host stopped)."""
        if stop_running:
            with self._lock:
                stops = [stop for _, stop in self._runs.values()]
            for stop in stops:
                stop.stop()
        self._pool.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def fire_once(settings: Settings, now: datetime | None) -> dict[str, int]:
    """``ncl host sweep --once``: fire what is due at ``now`` (default the real clock) and wait for the runs.
    With ``now`` given, only queue targets fire (commands and containers are left due, counted), their runs' times
    moving on from it at the real clock's pace."""
    start = real_clock.now()
    firer = ScheduledTasks(settings, (lambda: now + (real_clock.now() - start)) if now else real_clock.now,
                           commands=now is None)
    try:
        return firer.tick(now or start).to_json()
    finally:
        firer.close()
