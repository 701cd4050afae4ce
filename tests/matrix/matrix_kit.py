"""Helpers of tests/matrix: the person in the rooms, played by matrix-nio (every wait a sync loop with a
deadline), and the bot, a real ``ncl host run`` with a group wired to its account."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import Env, Host

SECRET = "ncl-test-shared-secret"


@dataclass
class Homeserver:
    url: str
    folder: Path
    proc: subprocess.Popen[bytes]
    users: dict[str, str] = field(default_factory=dict)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def register(self, localpart: str, password: str = "pw-" + "x" * 12) -> str:
        """A new user (through the shared-secret admin API); returns its id. Each name once a session."""
        nonce = self._call("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(SECRET.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]))
        done = self._call("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac.hexdigest()})
        self.users[done["user_id"]] = password
        return str(done["user_id"])


class Human:
    """A person in Element, played by matrix-nio: every wait is a sync loop with a deadline."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seen: list[dict[str, Any]] = []  # every timeline and typing event, in order, with its room
        self.since: str | None = None

    @classmethod
    async def login(cls, server: Homeserver, user_id: str) -> Human:
        from nio import AsyncClient, AsyncClientConfig, LoginResponse

        client = AsyncClient(server.url, user_id, config=AsyncClientConfig(encryption_enabled=False))
        done = await client.login(server.users[user_id])
        assert isinstance(done, LoginResponse), done
        human = cls(client)
        await human.sync(0)
        return human

    async def sync(self, timeout_ms: int = 1000) -> None:
        from nio import SyncResponse, TypingNoticeEvent

        done = await self.client.sync(timeout=timeout_ms, since=self.since)
        assert isinstance(done, SyncResponse), done
        self.since = done.next_batch
        for room_id, joined in done.rooms.join.items():
            for event in joined.timeline.events:
                self.seen.append({**event.source, "room_id": room_id})
            self.seen += [{"type": "m.typing", "room_id": room_id, "content": {"user_ids": list(e.users)}}
                          for e in joined.ephemeral if isinstance(e, TypingNoticeEvent)]
        for room_id in done.rooms.invite:
            await self.client.join(room_id)

    async def wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.seen if wanted(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event within {timeout} s; seen: {self.seen[-10:]}")
            await self.sync()

    def messages(self, room_id: str, sender: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e["room_id"] == room_id and e.get("sender") == sender
                and e.get("type") == "m.room.message"]

    async def room(self, *invite: str, encrypted: bool = False, name: str = "chat",
                   join_rule: str | None = None) -> str:
        from nio import RoomCreateResponse

        state = [{"type": "m.room.encryption", "state_key": "",
                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}] if encrypted else []
        if join_rule:
            state.append({"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": join_rule}})
        done = await self.client.room_create(name=name, invite=list(invite), initial_state=state)
        assert isinstance(done, RoomCreateResponse), done
        return str(done.room_id)

    async def say(self, room_id: str, text: str, **extra: Any) -> str:
        from nio import RoomSendResponse

        done = await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": text, **extra})
        assert isinstance(done, RoomSendResponse), done
        return str(done.event_id)

    async def close(self) -> None:
        await self.client.close()


class Bot:
    """A bot account, a group wired to it and the host's environment (a fresh data dir each)."""

    def __init__(self, synapse: Homeserver, root: Path, name: str, allow: str, mode: str = "shared") -> None:
        self.user_id = synapse.register(name)
        self.env = Env(root)
        self.env.vars.update({"NCL_MATRIX_HOMESERVER": synapse.url, "NCL_MATRIX_USER_ID": self.user_id,
                              "NCL_MATRIX_PASSWORD": synapse.users[self.user_id], "NCL_MATRIX_ALLOW": allow,
                              "NCL_PROVIDER": "mock"})
        self.env.ok("groups", "create", "demo", "--channel", f"matrix:{self.user_id}", "--session-mode", mode)

    @contextmanager
    def host(self, **extra: str) -> Iterator[Host]:
        host = Host(self.env, **extra)
        try:
            host.wait_for_action("matrix_logged_in", 60)
            yield host
        finally:
            host.kill() if extra else host.stop(signal.SIGTERM)

    def rows(self) -> list[dict[str, Any]]:
        """Every chat row of every session of the group, oldest first, with its session's thread key."""
        central = sqlite3.connect(self.env.data_dir / "central.db")
        found = []
        for session_id, key, group in central.execute("SELECT id, thread_key, agent_group_id FROM sessions"
                                                       " ORDER BY created_at, id"):
            with sqlite3.connect(self.env.data_dir / "v2-sessions" / group / session_id / "inbound.db") as conn:
                conn.row_factory = sqlite3.Row
                found += [{**dict(r), "session": session_id, "key": key, **json.loads(r["content"])} for r in
                          conn.execute("SELECT * FROM messages_in WHERE kind IN ('chat', 'task') ORDER BY seq")]
        central.close()
        return found


def body_of(event: dict[str, Any]) -> str:
    return str(event.get("content", {}).get("body", ""))


def from_bot(room: str, bot: Bot, wanted: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["room_id"] == room and e.get("sender") == bot.user_id and e.get("type") == "m.room.message" \
        and wanted(e)


def said(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: body_of(e) == text
