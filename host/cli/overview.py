"""Read-only views for operators: a session's transcript, and what the host is doing (``ncl status``)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from host.runtimes.pool import read_heartbeat
from host.settings import Settings
from host.store import db, sessions, views
from host.store import project_tasks as scheduled
from host.store.sessions import Session
from schemas.times import to_text

ALIVE = timedelta(seconds=10)  # a polling runner beats every second


def _text(content: str) -> str:
    data = json.loads(content)
    if not isinstance(data, dict):
        return json.dumps(data)
    for key in ("text", "prompt"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return json.dumps(data, ensure_ascii=False)


def transcript(session: Session) -> list[dict[str, Any]]:
    """Both directions in time order (each side's seq orders its own rows when times tie)."""
    found = sorted(views.transcript(session.folder), key=lambda m: (m.timestamp, m.direction == "out", m.seq or 0))
    return [{"id": m.id, "direction": m.direction, "kind": m.kind, "timestamp": m.timestamp, "text": _text(m.content),
             "status": m.status} for m in found]


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


def runners(active: list[Session], now: datetime) -> list[dict[str, Any]]:
    alive = []
    for session in active:
        found = read_heartbeat(session.folder)
        if found and now - found[1].astimezone(now.tzinfo) <= ALIVE:
            alive.append({"session_id": session.id, "agent_group_id": session.agent_group_id,
                          "generation": found[0], "last_beat": to_text(found[1])})
    return alive


def next_due(active: list[Session], limit: int = 10) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for session in active:
        path = session.folder / "inbound.db"
        if not path.exists():
            continue
        items += [{"session_id": session.id, "agent_group_id": session.agent_group_id, "id": r.id, "kind": r.kind,
                   "due": r.due, "text": _text(r.content)[:80]} for r in views.next_due(path, limit)]
    return sorted(items, key=lambda i: str(i["due"]))[:limit]


def project_due(central: db.Connection, limit: int = 10) -> list[dict[str, Any]]:
    return [{"session_id": None, "agent_group_id": None, "id": t.id, "kind": f"scheduled-task:{t.target_kind}",
             "due": t.next_run, "text": t.name or ""} for t in scheduled.upcoming(central, limit)]


def status(central: db.Connection, settings: Settings, now: datetime) -> dict[str, Any]:
    """Host up?, live runners, and the next 10 due items across sessions and project tasks."""
    active = sessions.list_all(central, settings, status="active")
    pid = host_pid(settings.data_dir)
    due = sorted(next_due(active) + project_due(central), key=lambda i: str(i["due"]))[:10]
    return {"host_running": pid is not None, "host_pid": pid, "runners": runners(active, now), "next_due": due}
