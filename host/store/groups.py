"""Agent groups: one agent each — its rules, its files, its channels (DESIGN §9)."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, get_args

from host.errors import NclError
from host.settings import Settings
from host.store.db import Connection, transaction
from schemas import ids
from schemas.runner_env import Provider
from schemas.times import to_text

CHANNEL = re.compile(r"cli|(queue|webhook|toolkit):[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
                     r"|matrix:@[a-z0-9._=/+-]{1,255}:[A-Za-z0-9.-]{1,230}(:[0-9]{1,5})?")
SESSION_MODES = ("shared", "per-thread")
PROVIDERS: tuple[Provider, ...] = get_args(Provider)


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    name: str
    channels: list[str]
    session_mode: str
    provider: str | None
    model: str | None
    created_at: str
    allow_server_tools: bool = False  # may the model API reach the network for it (host/runtimes/proxy/policy.py)
    admin: bool = False  # may its agents act on every group's tasks (host/scheduling/cross_group.py)
    rules: str = field(default="", repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["rules"]
        return data


def folder(settings: Settings, group_id: str) -> Path:
    return settings.groups_dir / group_id


def check_channel(channel: str) -> str:
    if channel.startswith("mail:"):  # a mailbox's address, in lower case as ``ncl mailbox create`` stored it
        from host.store import mailboxes  # imported here, as in create and rewire: commands that read go without

        return f"mail:{mailboxes.check_address(channel[5:])}"
    if not CHANNEL.fullmatch(channel):
        raise NclError(
            f"invalid channel {channel!r}: use cli, queue:NAME, webhook:NAME, toolkit:NAME "
            "(NAME: letters, digits, '.', '_', '-'), mail:ADDRESS or matrix:@bot:server"
        )
    return channel


def create(
    conn: Connection,
    settings: Settings,
    now: datetime,
    name: str,
    channels: list[str],
    rules: str = "",
    session_mode: str = "shared",
    provider: str | None = None,
    model: str | None = None,
    admin: bool = False,
) -> tuple[Group, dict[str, str]]:
    """Create a group and wire its channels. Returns it and the webhook tokens, shown only now."""
    import secrets  # see new_token

    from host.store import mailboxes  # see check_channel

    try:
        group_id = ids.group_id(name)
    except ValueError as exc:
        raise NclError(str(exc)) from None
    wanted = list(dict.fromkeys(check_channel(c) for c in channels))
    if session_mode not in SESSION_MODES:
        raise NclError(f"invalid session mode {session_mode!r}: use shared or per-thread")
    if provider is not None and provider not in PROVIDERS:
        raise NclError(f"invalid provider {provider!r}: use {' or '.join(PROVIDERS)}")
    tokens = {c.split(":", 1)[1]: secrets.token_urlsafe(32) for c in wanted if c.startswith("webhook:")}
    created = to_text(now)
    with transaction(conn):
        if conn.execute("SELECT 1 FROM agent_groups WHERE id = ?", (group_id,)).fetchone():
            raise NclError(f"group {name!r} already exists ({group_id})")
        mailboxes.require(conn, wanted)
        conn.execute(
            "INSERT INTO agent_groups(id, name, rules, session_mode, provider, model, created_at, admin)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (group_id, name, rules, session_mode, provider, model, created, int(admin)),
        )
        _wire(conn, group_id, wanted, 0, tokens, created)
    home = folder(settings, group_id)
    home.mkdir(parents=True, exist_ok=True)
    memory = home / "AGENT.md"
    if not memory.exists():
        memory.write_text(f"# {name}\n\nThe agent's memory: notes it keeps between conversations.\n")
    return get(conn, group_id), tokens


def _wire(conn: Connection, group_id: str, channels: list[str], first: int, tokens: dict[str, str],
          created: str) -> None:
    """Wire ``channels`` to the group from ``position`` ``first`` on (caller holds the transaction)."""
    for position, channel in enumerate(channels, first):
        owner = conn.execute(
            "SELECT agent_group_id FROM wirings WHERE channel = ? AND channel <> 'cli'", (channel,)
        ).fetchone()
        if owner:
            raise NclError(f"channel {channel} is already wired to group {owner[0]}")
        token = tokens.get(channel.split(":", 1)[1]) if channel.startswith("webhook:") else None
        conn.execute(
            "INSERT INTO wirings(channel, agent_group_id, position, token_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (channel, group_id, position, token_hash(token) if token else None, created),
        )


def rewire(conn: Connection, group: Group, now: datetime, add: list[str], remove: list[str]) -> Group:
    """Add channels to a group (a webhook's token is made by ``ncl groups token``) and unwire others; a channel
    both added and removed, or removed but not the group's, is refused."""
    from host.store import mailboxes  # see check_channel

    added = [c for c in dict.fromkeys(check_channel(c) for c in add) if c not in group.channels]
    mailboxes.require(conn, added)
    for channel in remove:
        if channel not in group.channels or channel in add:
            raise NclError(f"group {group.name} has no channel {channel} to remove"
                           f" (its channels: {', '.join(group.channels) or 'none'})")
    with transaction(conn):
        conn.executemany("DELETE FROM wirings WHERE channel = ? AND agent_group_id = ?",
                         [(channel, group.id) for channel in remove])
        top = conn.execute("SELECT COALESCE(MAX(position), -1) FROM wirings WHERE agent_group_id = ?",
                           (group.id,)).fetchone()[0]
        _wire(conn, group.id, added, int(top) + 1, {}, to_text(now))
    return get(conn, group.id)


def new_token(conn: Connection, group: Group, channel: str, rotate: bool) -> str:
    """A webhook channel's bearer token, shown once: made now if it has none, or replaced with ``rotate``."""
    import secrets  # imported here, as hashlib below: they load OpenSSL (~4 ms), which commands that read need not
    if not channel.startswith("webhook:") or channel not in group.channels:
        raise NclError(f"group {group.name} has no channel {channel} (webhook channels: "
                       f"{', '.join(c for c in group.channels if c.startswith('webhook:')) or 'none'})")
    with transaction(conn):
        (stored,) = conn.execute("SELECT token_hash FROM wirings WHERE channel = ? AND agent_group_id = ?",
                                 (channel, group.id)).fetchone()
        if stored and not rotate:
            raise NclError(f"{channel} already has a token and it is only shown when made; "
                           "--rotate replaces it (the old one stops working)")
        token = secrets.token_urlsafe(32)
        conn.execute("UPDATE wirings SET token_hash = ? WHERE channel = ? AND agent_group_id = ?",
                     (token_hash(token), channel, group.id))
    return token


def token_hash(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def _from_row(conn: Connection, row: sqlite3.Row) -> Group:
    channels = [
        r[0]
        for r in conn.execute(
            "SELECT channel FROM wirings WHERE agent_group_id = ? ORDER BY position", (row["id"],)
        )
    ]
    return Group(
        id=row["id"],
        name=row["name"],
        channels=channels,
        session_mode=row["session_mode"],
        provider=row["provider"],
        model=row["model"],
        created_at=row["created_at"],
        allow_server_tools=bool(row["allow_server_tools"]),
        admin=bool(row["admin"]),
        rules=row["rules"],
    )


def list_all(conn: Connection) -> list[Group]:
    rows = conn.execute("SELECT * FROM agent_groups ORDER BY name").fetchall()
    return [_from_row(conn, row) for row in rows]


def get(conn: Connection, ref: str) -> Group:
    """A group by id (``ag-demo``) or name (``demo``, any case)."""
    row = conn.execute(
        "SELECT * FROM agent_groups WHERE id = ? OR name = ? COLLATE NOCASE", (ref, ref)
    ).fetchone()
    if row is None:
        raise NclError(f"unknown group {ref!r} (see 'ncl groups list')")
    return _from_row(conn, row)


def update(conn: Connection, group: Group, *, rules: str | None = None, provider: str | None = None,
           model: str | None = None, allow_server_tools: bool | None = None, admin: bool | None = None) -> Group:
    """Change the given fields (None: keep; at least one given); running sessions see them at their runner's next
    start."""
    if provider is not None and provider not in PROVIDERS:
        raise NclError(f"invalid provider {provider!r}: use {' or '.join(PROVIDERS)}")
    changes = {"rules": rules, "provider": provider, "model": model, "allow_server_tools": allow_server_tools,
               "admin": admin}
    wanted = {name: value for name, value in changes.items() if value is not None}
    assert wanted, "the caller gives something to change"
    with transaction(conn):
        conn.execute(f"UPDATE agent_groups SET {', '.join(f'{name} = :{name}' for name in wanted)} WHERE id = :id",
                     {**wanted, "id": group.id})
    return get(conn, group.id)


def allows_server_tools(conn: Connection, group_id: str) -> bool:
    row = conn.execute("SELECT allow_server_tools FROM agent_groups WHERE id = ?", (group_id,)).fetchone()
    return bool(row and row[0])


def wired_channels(conn: Connection, group_id: str) -> list[str]:
    """The channels a group is wired to (``cli``, ``mail:ADDRESS``, …); none for an unknown group."""
    return [r[0] for r in conn.execute("SELECT channel FROM wirings WHERE agent_group_id = ?", (group_id,))]


def is_admin(conn: Connection, group_id: str) -> bool:
    """Whether the operator marked the group admin (``--admin``); a group that is gone is not."""
    row = conn.execute("SELECT admin FROM agent_groups WHERE id = ?", (group_id,)).fetchone()
    return bool(row and row[0])


class Brief(NamedTuple):
    """What a group's runners are told when they start: its rules, and its provider and model (None: the host's
    ``NCL_PROVIDER`` and ``NCL_MODEL``)."""

    rules: str = ""
    provider: Provider | None = None
    model: str | None = None


def named_with_provider(conn: Connection, provider: str) -> list[str]:
    """The names of the groups that name this provider as their own."""
    return [row[0] for row in conn.execute("SELECT name FROM agent_groups WHERE provider = ? ORDER BY name",
                                           (provider,))]


def brief(conn: Connection, group_id: str) -> Brief:
    """The group's ``Brief`` (empty for a group that is gone)."""
    row = conn.execute("SELECT rules, provider, model FROM agent_groups WHERE id = ?", (group_id,)).fetchone()
    return Brief(*row) if row else Brief()




def delete(conn: Connection, group: Group, now: datetime) -> None:
    """Remove the group and its wirings; its sessions are closed at ``now``. Files on disk are kept."""
    with transaction(conn):
        conn.execute("UPDATE sessions SET status = 'closed', closed_at = ? WHERE agent_group_id = ?"
                     " AND status = 'active'", (to_text(now), group.id))
        conn.execute("DELETE FROM agent_groups WHERE id = ?", (group.id,))


# --- wirings: which group each channel address belongs to ------------------------------------------

def wired_to(conn: Connection, channel: str) -> str | None:
    """The id of the group ``channel`` is wired to (``cli`` is on many groups: any one of them), or None."""
    row = conn.execute("SELECT agent_group_id FROM wirings WHERE channel = ?", (channel,)).fetchone()
    return None if row is None else str(row[0])


def stored_token_hash(conn: Connection, channel: str) -> str | None:
    """The hash of a webhook channel's bearer token; None if it is not wired or has no token yet."""
    row = conn.execute("SELECT token_hash FROM wirings WHERE channel = ?", (channel,)).fetchone()
    return str(row[0]) if row and row[0] else None


def queues(conn: Connection) -> list[tuple[str, str]]:
    """(channel, group id) of every wired ``queue:NAME`` channel, by channel."""
    rows = conn.execute("SELECT channel, agent_group_id FROM wirings WHERE channel LIKE 'queue:%' ORDER BY channel")
    return [(str(channel), str(group_id)) for channel, group_id in rows]
