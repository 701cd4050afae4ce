"""The Matrix channel against a real Synapse (tests/matrix/conftest.py): a running ``ncl host run`` is the bot,
a person in a room is matrix-nio. Issue 18's acceptance, end to end."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from matrix_kit import Homeserver, Human
from processes import Env, Host


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


async def test_a_person_chats_with_the_agent_in_a_room(synapse: Homeserver, humans: list[Human],
                                                         tmp_path: Path) -> None:
    alice = synapse.register("alice1")
    bot = Bot(synapse, tmp_path, "bot1", allow=alice)
    with bot.host() as host:
        human = await Human.login(synapse, alice)
        humans.append(human)
        room = await human.room(bot.user_id)
        host.wait_for_action("matrix_joined", 60)
        await human.say(room, "hello **there**")
        reply = await human.wait_for(lambda e: e["room_id"] == room and e.get("sender") == bot.user_id
                                     and body_of(e).startswith("mock:"))
    assert reply["content"]["body"] == "mock: hello **there**"
    assert reply["content"]["format"] == "org.matrix.custom.html"
    assert "<strong>there</strong>" in reply["content"]["formatted_body"]
    [row] = bot.rows()
    assert (row["sender_id"], row["sender"], row["text"], row["trigger"]) == (alice, "alice1", "hello **there**", 1)
    assert (row["channel_type"], row["platform_id"], row["key"]) == (f"matrix:{bot.user_id}", room,
                                                                     f"matrix:{bot.user_id}/{room}")


def test_doctor_checks_the_login(synapse: Homeserver, tmp_path: Path) -> None:
    bot = Bot(synapse, tmp_path, "bot2", allow="")
    done = bot.env.ncl("doctor", "--json")
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "matrix"]
    assert check["level"] == "ok" and f"as {bot.user_id}" in check["detail"], check
    bot.env.vars["NCL_MATRIX_PASSWORD"] = "wrong"
    done = bot.env.ncl("doctor", "--json")
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "matrix"]
    assert done.returncode == 1 and check["level"] == "fail" and "refused" in check["detail"], check
    del bot.env.vars["NCL_MATRIX_PASSWORD"]
    done = bot.env.ncl("doctor", "--json")
    [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "matrix"]
    assert check["detail"] == "neither NCL_MATRIX_ACCESS_TOKEN nor NCL_MATRIX_PASSWORD is set"
