"""Test doubles and a small world for scheduler tests: a fake clock, a recording runtime, and one session
on real SQLite files with helpers that act as the runner would (acks, system requests)."""

from __future__ import annotations

import json
import os
import select
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_runner.config import RunnerConfig
from agent_runner.store import Store
from agent_runner.tools import Tools
from host import settings as settings_module
from host.runtimes.pool import Runners
from host.scheduling import tasks
from host.scheduling.recurrence import Policy
from host.scheduling.sweep import Sweeper
from host.store import db, groups, sessions
from host.store.sessions import Session
from host.store.task_ids import TaskIds
from schemas import ids
from schemas.times import from_text, to_text


def utc(text: str) -> datetime:
    """``utc("2026-05-18T13:00:00")`` -> aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class FakeClock:
    current: datetime
    slept: list[float] = field(default_factory=list)
    hooks: list[tuple[datetime, Any]] = field(default_factory=list)

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        """Advance time; a hook scheduled inside the slept span runs at its instant, as if while asleep."""
        target = self.current + timedelta(seconds=seconds)
        self.slept.append(seconds)
        for at, action in sorted(self.hooks, key=lambda h: h[0]):
            if self.current < at <= target:
                self.current = at
                self.hooks.remove((at, action))
                action()
        self.current = target

    def at(self, when: datetime, action: Any) -> None:
        self.hooks.append((when, action))


@dataclass
class RecordingRuntime:
    clock: FakeClock | None = None
    started: list[tuple[datetime | None, str, str]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    uid = None  # Runtime.uid: runners run as the host's own user

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        self.started.append((self.clock.now() if self.clock else None, session.id, generation))
        self.running.add(session.id)

    def is_running(self, session_id: str) -> bool:
        return session_id in self.running

    def stop(self, session_id: str) -> None:
        self.stopped.append(session_id)
        self.running.discard(session_id)

    def retire(self, session_id: str) -> None:
        self.stop(session_id)


class World:
    """One group and session under ``tmp_path``; everything on real files."""

    def __init__(self, tmp_path: Path, tz: str = "America/New_York", **env: str) -> None:
        environ = {"NCL_DATA_DIR": str(tmp_path / "data"), "TZ": tz, **env}
        self.settings = settings_module.load(environ=environ, cwd=tmp_path, system_tz="UTC")
        self.settings.data_dir.mkdir(parents=True)
        self.policy = Policy.of(self.settings)
        self.central = db.connect(self.settings.central_db, "central")
        self.group, _ = groups.create(self.central, self.settings, utc("2026-01-01T00:00:00"), "demo", ["cli"])
        self.session = self.new_session()
        self._out_seq = 1

    def new_session(self) -> Session:
        return sessions.create(self.central, self.settings, utc("2026-01-01T00:00:00"), self.group, None)

    def inbound(self, session: Session | None = None) -> sqlite3.Connection:
        return db.connect((session or self.session).folder / "inbound.db", "inbound")

    def outbound(self, session: Session | None = None) -> sqlite3.Connection:
        return db.connect((session or self.session).folder / "outbound.db", "outbound")

    def sweeper(self, runtime: RecordingRuntime | None = None) -> Sweeper:
        return Sweeper(self.settings, Runners(runtime, self.settings) if runtime else None)

    def schedule(self, now: datetime, prompt: str = "post the standup", recurrence: str | None = None,
                 at: str | None = None, session: Session | None = None, **kw: Any) -> str:
        """An operator-scheduled task (no minimum interval)."""
        task_id = ids.new_id("task", now)
        owner = session or self.session
        kw.setdefault("registry", TaskIds(self.central, owner.agent_group_id, owner.id))  # as `ncl tasks add` does
        with closing(self.inbound(session)) as conn:
            tasks.schedule(conn, now, self.policy, task_id, prompt, at, recurrence, enforce_interval=False, **kw)
        return task_id

    def request(self, now: datetime, content: dict[str, Any], session: Session | None = None) -> str:
        """A system request row as the runner writes it into outbound.db."""
        out_id = ids.new_id("msg", now)
        with closing(self.outbound(session)) as conn, db.transaction(conn):
            conn.execute("INSERT INTO messages_out(id, seq, timestamp, kind, content) VALUES (?, ?, ?, 'system', ?)",
                         (out_id, self._out_seq, to_text(now), json.dumps(content)))
        self._out_seq += 2
        return out_id

    def ack(self, message_id: str, status: str, at: datetime, generation: str = "gen-test",
            outcome: str | None = None, reason: str | None = None, session: Session | None = None) -> None:
        detail = json.dumps({"outcome": outcome, "reason": reason}) if outcome else None
        with closing(self.outbound(session)) as conn, db.transaction(conn):
            conn.execute("INSERT OR REPLACE INTO processing_ack(message_id, status, status_changed, detail, generation)"
                         " VALUES (?, ?, ?, ?, ?)", (message_id, status, to_text(at), detail, generation))

    def turn_ends(self, now: datetime) -> list[dict[str, Any]]:
        """The requests the runner's tools staged, written for the host as the end of their turn writes them."""
        with closing(self.outbound()) as conn, db.transaction(conn):
            staged = [json.loads(r[0]) for r in conn.execute("SELECT content FROM staged_requests ORDER BY rowid")]
            conn.execute("DELETE FROM staged_requests")
        for content in staged:
            self.request(now, content)
        return staged

    def rows(self, series_id: str | None = None, session: Session | None = None) -> list[dict[str, Any]]:
        with closing(self.inbound(session)) as conn:
            sql = "SELECT * FROM messages_in" + (" WHERE series_id = ?" if series_id else "") + " ORDER BY seq"
            return [dict(r) for r in conn.execute(sql, (series_id,) if series_id else ())]

    def live(self, series_id: str) -> list[dict[str, Any]]:
        return [r for r in self.rows(series_id) if r["status"] in ("pending", "processing", "paused")]

    def runs(self, series_id: str) -> list[dict[str, Any]]:
        with closing(self.inbound()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM task_runs WHERE series_id = ? ORDER BY rowid",
                                                  (series_id,))]

    def notices(self) -> list[dict[str, Any]]:
        return [json.loads(r["content"]) | {"trigger": r["trigger"]} for r in self.rows()
                if r["kind"] == "chat" and json.loads(r["content"]).get("sender") == "system"]

    def run_occurrence(self, sweeper: Sweeper, row_id: str, at: datetime, outcome: str = "ran") -> Any:
        """The runner claims and finishes ``row_id`` at ``at``; one sweep syncs it."""
        self.ack(row_id, "completed" if outcome != "failed" else "failed", at, outcome=outcome)
        return sweeper.tick(at)


def scheduled_times(rows: list[dict[str, Any]]) -> list[datetime]:
    return [from_text(r["process_after"]) for r in rows]


def exits_within(pid: int, seconds: float) -> bool:
    """True once ``pid`` has exited (zombie or reaped), waiting at most ``seconds`` on a pidfd: no sleeping."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


TOOLS_NOW = from_text("2026-06-11T13:00:00.000Z")  # Thursday 09:00:00 EDT: when the scheduling tools' tests run


def runner_tools(world: World, now: datetime = TOOLS_NOW) -> Tools:
    """The task tools of the world's session, as its runner has them (zone America/New_York)."""
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    return Tools(config, Store(config), lambda: now)


def answered(world: World, request: dict[str, Any], session: Session, now: datetime = TOOLS_NOW) -> tuple[str, str]:
    """Write ``request`` into ``session``'s outbound.db, sweep once; (status, detail) of its ``delivered`` row."""
    out_id = world.request(now, request, session)
    world.sweeper().tick(now)
    with closing(world.inbound(session)) as conn:
        row = conn.execute("SELECT status, detail FROM delivered WHERE message_out_id = ?", (out_id,)).fetchone()
    assert row is not None, "the host did not answer"
    return str(row[0]), str(row[1])
