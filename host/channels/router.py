"""Where a message arriving on a channel goes (DESIGN §9): its group by wiring, its session by session mode
and thread, then one ``messages_in`` row. A ``nudge`` makes a running host wake the runner at once."""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from host.channels import nudge
from host.errors import NclError
from host.settings import Settings
from host.store import db, groups, inbox, sessions
from host.store.groups import Group
from host.store.sessions import Session
from schemas import ids
from schemas.times import to_text


@dataclass(frozen=True)
class Arrival:
    """One message as a channel hands it over."""

    channel: str  # cli | queue:NAME | webhook:NAME | toolkit:NAME
    kind: str  # chat | queue | webhook
    content: dict[str, Any]
    thread: str | None = None  # picks the session in per-thread mode (and for queue jobs)
    new_session: bool = False  # queue jobs without a thread: a fresh session each
    routing: dict[str, str | None] = field(default_factory=dict)
    place: str | None = None  # a conversation of its own within the channel (a Matrix room): a session each
    trigger: int = 1  # 0: context only (a group room's message that does not mention the agent)
    message_id: str | None = None  # fixed by the channel: an arrival already written is not written again
    session_id: str | None = None  # a new session's id, fixed too: sent again, it goes to the session it made


def group_for(conn: db.Connection, channel: str, group_ref: str | None = None) -> Group:
    """The group a channel address is wired to; ``cli`` is on many groups, so it is named explicitly."""
    if group_ref is not None:
        group = groups.get(conn, group_ref)
        if channel not in group.channels:
            raise NclError(f"group {group.name} has no {channel} channel (add it with 'ncl groups update "
                           f"{group.name} --channel {channel}')")
        return group
    group_id = groups.wired_to(conn, channel)
    if group_id is None:
        raise NclError(f"no group is wired to {channel}")
    return groups.get(conn, group_id)


def thread_key(group: Group, arrival: Arrival) -> str | None:
    if arrival.new_session:
        return None
    base = arrival.channel if arrival.place is None else f"{arrival.channel}/{arrival.place}"
    if arrival.thread is not None and (group.session_mode == "per-thread" or arrival.kind == "queue"):
        return f"{base}/{arrival.thread}"
    return base


def session_for(conn: db.Connection, settings: Settings, now: datetime, group: Group,
                key: str | None) -> Session:
    found = sessions.by_thread(conn, settings, group.id, key)
    if found:
        return found
    try:
        return sessions.create(conn, settings, now, group, key)
    except NclError:  # another writer created the thread's session first: use it
        found = sessions.by_thread(conn, settings, group.id, key)
        if found is None:
            raise
        return found


def deliver_in(central: db.Connection, settings: Settings, now: datetime, group: Group,
               arrival: Arrival, answer_first: bool = False) -> tuple[Session, str, int]:
    """Write the arrival into its session's inbox, wake the host and mark the session active; returns the session,
    the row id and its seq. ``answer_first``: the caller does the last two itself once it has answered: the message
    is safe once in the inbox."""
    from schemas.messages import CONTENT_BY_KIND  # pydantic: in the host, not in the ``ncl chat`` that finds the socket

    content = CONTENT_BY_KIND[arrival.kind].model_validate(arrival.content)
    if arrival.new_session and arrival.session_id:
        session = (sessions.find(central, settings, arrival.session_id)
                   or sessions.create(central, settings, now, group, None, arrival.session_id, one_job=True))
        if session.status == "closed":  # its job done, then sent again (a stopped host's run): found there, or new
            session = sessions.reopen(central, settings, session.id)
    elif arrival.new_session:
        session = sessions.create(central, settings, now, group, None, one_job=True)
    else:
        session = session_for(central, settings, now, group, thread_key(group, arrival))
    routing = {"channel_type": arrival.channel, "platform_id": None, "thread_id": arrival.thread,
               **arrival.routing}
    message_id = arrival.message_id or ids.new_id("msg", now)
    path = session.folder / "inbound.db"
    with db.lock_of(path), closing(db.connect(path, "inbound")) as conn, db.transaction(conn):
        if arrival.message_id and (seen := inbox.seq_of(conn, message_id)) is not None:
            return session, message_id, seen
        seq = inbox.arrive(conn, {"id": message_id, "kind": arrival.kind, "timestamp": to_text(now),
                                  "trigger": arrival.trigger, "content": json.dumps(content.model_dump())}, routing)
    if not answer_first:
        nudge.touch(settings, session.id)
        sessions.touch(central, session.id, now)
    return session, message_id, seq
