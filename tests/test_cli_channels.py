"""Issue 2 acceptance through the ``ncl`` CLI (DESIGN §9, §10, §12): channels. A webhook token is shown once and only
its hash is stored; a channel wired to another group is refused (``cli`` may be on every group); a repeated channel
is wired once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from typing import TYPE_CHECKING

from cli_kit import GROUP_KEYS, Ncl, ok, one_line_error

if TYPE_CHECKING:
    from conftest import CliEnv

def test_webhook_token_is_shown_once_and_only_its_hash_is_stored(ncl: Ncl, cli_env: CliEnv) -> None:
    created = ok(ncl("groups", "create", "hooks", "--channel", "webhook:github", "--channel", "cli", "--json")).json()
    assert set(created) == GROUP_KEYS | {"webhook_tokens"}
    token = created["webhook_tokens"]["github"]
    assert set(created["webhook_tokens"]) == {"github"}
    assert isinstance(token, str) and len(token) >= 32
    with closing(sqlite3.connect(f"file:{cli_env.central_db}?mode=ro", uri=True)) as conn:
        stored = dict(conn.execute("SELECT channel, token_hash FROM wirings").fetchall())
    assert stored == {"webhook:github": hashlib.sha256(token.encode()).hexdigest(), "cli": None}
    for path in cli_env.data_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for listing in (ncl("groups", "list", "--json"), ncl("groups", "show", "hooks", "--json"), ncl("groups", "list")):
        assert token not in ok(listing).out
    assert "webhook_tokens" not in ok(ncl("groups", "show", "hooks", "--json")).json()


def test_a_channel_wired_to_another_group_is_refused(ncl: Ncl, cli_env: CliEnv) -> None:
    ok(ncl("groups", "create", "first", "--channel", "cli", "--channel", "queue:jobs"))
    refused = ncl("groups", "create", "second", "--channel", "cli", "--channel", "queue:jobs")
    assert refused.code == 1
    message = one_line_error(refused)
    assert "queue:jobs" in message and "ag-first" in message
    assert [g["id"] for g in ok(ncl("groups", "list", "--json")).json()["groups"]] == ["ag-first"]
    assert not (cli_env.data_dir / "groups" / "ag-second").exists()
    ok(ncl("groups", "create", "third", "--channel", "cli"))  # cli may be on every group


def test_repeated_channel_is_wired_once(ncl: Ncl) -> None:
    created = ok(ncl("groups", "create", "demo", "--channel", "cli", "--channel", "cli", "--json")).json()
    assert created["channels"] == ["cli"]
