"""Helpers of tests/matrix: the person in the rooms, played by matrix-nio (every wait a sync loop with a
deadline)."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


