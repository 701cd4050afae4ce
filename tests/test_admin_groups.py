"""Issue 16.3, the admin group: the operator marks groups admin (``ncl groups create|update --admin``, central.db
``agent_groups.admin``, a central migration), and only their agents' task tools may act on another group's tasks.
The host decides from central.db, never from what a runner writes: a forged request is refused like any other."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from cli_kit import Ncl, ok, one_line_error
from schema_kit import open_plain

from host.store import db
from schemas.ddl import MIGRATIONS, latest_version

# --- the mark: central.db and the CLI ----------------------------------------------------------------------------


def test_a_central_db_of_v5_migrates_with_every_group_not_admin(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    with closing(open_plain(path)) as conn:
        for step in MIGRATIONS["central"][:5]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version=5")
        conn.execute("INSERT INTO agent_groups(id, name, created_at) VALUES ('ag-old', 'old', "
                     "'2026-01-01T00:00:00.000Z')")
    with closing(db.connect(path, "central")) as conn:
        assert db.version(conn) == latest_version("central")
        assert [tuple(r) for r in conn.execute("SELECT id, admin FROM agent_groups")] == [("ag-old", 0)]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE agent_groups SET admin = 2")


def test_groups_create_and_update_mark_admin_groups(ncl: Ncl) -> None:
    plain = ok(ncl("groups", "create", "team", "--channel", "cli", "--json")).json()
    assert plain["admin"] is False
    boss = ok(ncl("groups", "create", "ops", "--channel", "queue:ops", "--admin", "--json")).json()
    assert boss["admin"] is True
    assert "created admin group ops" in ok(ncl("groups", "create", "ops2", "--admin")).out

    listed = {g["name"]: g["admin"] for g in ok(ncl("groups", "list", "--json")).json()["groups"]}
    assert listed == {"team": False, "ops": True, "ops2": True}
    table = ok(ncl("groups", "list")).out.splitlines()
    assert table[0].split()[:5] == ["ID", "NAME", "CHANNELS", "MODE", "ADMIN"]
    assert [line.split()[4] for line in table[1:]] == ["yes", "yes", "no"]  # ops, ops2, team (by name)

    assert ok(ncl("groups", "update", "team", "--admin", "--json")).json()["admin"] is True
    assert "admin no" in ok(ncl("groups", "update", "ops", "--no-admin")).out
    assert ok(ncl("groups", "show", "ops", "--json")).json()["admin"] is False
    assert "admin" in ok(ncl("groups", "show", "team")).out
    ok(ncl("groups", "update", "team", "--no-admin"))
    ok(ncl("groups", "update", "ops2", "--no-admin"))
    assert "ADMIN" not in ok(ncl("groups", "list")).out  # the column only when a group is admin


def test_groups_update_with_nothing_names_admin(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "team"))
    assert "--admin/--no-admin" in one_line_error(ncl("groups", "update", "team"))
