"""Read-only views for operators: a session's transcript, and what the host is doing (``ncl status``)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from host.runtimes.pool import read_heartbeat
from host.runtimes.published import STATE_FILE, published
from host.settings import Settings
from host.store import db, sessions, views
from host.store import project_tasks as scheduled
from host.store.sessions import Session
from schemas.times import from_text, to_text

ALIVE = timedelta(seconds=10)  # a polling runner beats every second


def transcript(session: Session, last: int | None = None) -> list[dict[str, Any]]:
    """Both directions in time order (each side's seq orders its own rows when times tie); ``last``: the latest
    that many only."""
    found = sorted(views.transcript(session.folder, last),
                   key=lambda m: (m.timestamp, m.direction == "out", m.seq or 0))
    return [{"id": m.id, "direction": m.direction, "kind": m.kind, "timestamp": m.timestamp,
             "text": views.text_of(m.content), "status": m.status, "in_reply_to": m.in_reply_to}
            for m in found[-last if last else 0:]]


def host_pid(data_dir: Path) -> int | None:
    """The pid in host.lock if that process is alive (the lock file is emptied on a clean stop)."""
    try:
        pid = int((data_dir / "host.lock").read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def runners(active: list[Session], now: datetime, pool: dict[str, Any] | None,
            since: datetime | None = None) -> list[dict[str, Any]]:
    """The running host's runners (its published ``pool`` state: busy, or idle for how long), then any other
    runner beating in an active session since ``since`` (state unknown: one a one-off sweep started). A beat before
    ``since``, when the host last said which runners it has, is of one it stopped (a slot freed, or the host's own
    stop), not of a runner."""
    by_id = {s.id: s for s in active}
    listed = [_pooled(r, by_id.get(r["session_id"]), now) for r in (pool or {}).get("runners", [])]
    known = {r["session_id"] for r in listed}
    for session in active:
        found = read_heartbeat(session.folder)
        if session.id not in known and found and now - found[1].astimezone(now.tzinfo) <= ALIVE and (
                since is None or found[1] > since):
            listed.append({"session_id": session.id, "agent_group_id": session.agent_group_id,
                           "generation": found[0], "last_beat": to_text(found[1]), "started_at": None,
                           "state": "unknown", "idle_for_s": None})
    return listed


def _pooled(runner: dict[str, Any], session: Session | None, now: datetime) -> dict[str, Any]:
    found = read_heartbeat(session.folder) if session else None
    idle = runner.get("idle_since")
    return {"session_id": runner["session_id"], "agent_group_id": session.agent_group_id if session else None,
            "generation": runner["generation"],
            "last_beat": to_text(found[1]) if found and found[0] == runner["generation"] else None,
            "started_at": runner.get("started_at"), "state": "idle" if idle else "busy",
            "idle_for_s": _seconds(now, idle)}


def waiting(active: list[Session], now: datetime, pool: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Sessions whose due work waits for a runner slot, in the order they will be served."""
    groups = {s.id: s.agent_group_id for s in active}
    return [{"session_id": w["session_id"], "agent_group_id": groups.get(w["session_id"]),
             "due_since": w["due_since"], "waiting_for_s": _seconds(now, w["due_since"])}
            for w in (pool or {}).get("waiting", [])]


def _seconds(now: datetime, since: str | None) -> float | None:
    return None if since is None else round(max(0.0, (now - from_text(since)).total_seconds()), 1)


def next_due(active: list[Session], limit: int = 10) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for session, due in sessions.readable(active, lambda path: views.next_due(path, limit)):
        items += [{"session_id": session.id, "agent_group_id": session.agent_group_id, "id": r.id, "kind": r.kind,
                   "due": r.due, "text": views.text_of(r.content)[:80]} for r in due]
    return sorted(items, key=lambda i: str(i["due"]))[:limit]


def project_due(central: db.Connection, limit: int = 10) -> list[dict[str, Any]]:
    return [{"session_id": None, "agent_group_id": None, "id": t.id, "kind": f"scheduled-task:{t.target_kind}",
             "due": t.next_run, "text": t.name or ""} for t in scheduled.upcoming(central, limit)]


def status(central: db.Connection, settings: Settings, now: datetime) -> dict[str, Any]:
    """Host up?, live runners, sessions waiting for a runner slot, and the next 10 due items across sessions and
    project tasks."""
    active = sessions.list_all(central, settings, status="active")
    pid = host_pid(settings.data_dir)
    due = sorted(next_due(active) + project_due(central), key=lambda i: str(i["due"]))[:10]
    pool = published(settings.data_dir) if pid is not None else None
    # When the host last said which runners it has: its pool's state (running), or its lock emptied (stopped).
    try:
        told = (settings.data_dir / (STATE_FILE if pid is not None else "host.lock")).stat().st_mtime
    except OSError:
        told = None
    since = None if told is None else datetime.fromtimestamp(told, UTC)
    return {"host_running": pid is not None, "host_pid": pid, "runners": runners(active, now, pool, since),
            "waiting": waiting(active, now, pool), "next_due": due}
