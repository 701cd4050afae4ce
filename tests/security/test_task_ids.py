"""Issue 11 point 8: task ids are unique in the install (DESIGN §13.5). A runner that asks for a task id another
session (or its own) already uses gets its task stored under a fresh id, is told which, and the operator's
``ncl tasks cancel|pause|show`` on the victim's id act on the victim's task. Every new series is registered in
central.db ``task_ids``, and the CLI finds a registered id there without opening other sessions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import World
from schema_kit import InsertRow
from security_kit import T0

from host.store import db, groups, sessions, task_ids
from host.store.sessions import Session
from host.store.task_ids import TaskIds
from schemas import ids

LIVE = ("pending", "processing", "paused")


class Install:
    """Session A (the attacker) in group demo, and a victim session V in group other with one daily task."""

    def __init__(self, root: Path) -> None:
        self.world = World(root)
        self.attacker = self.world.session
        other, _ = groups.create(self.world.central, self.world.settings, T0, "other", ["cli"])
        self.victim = sessions.create(self.world.central, self.world.settings, T0, other, None)
        self.victim_task = self.world.schedule(T0, recurrence="0 9 * * *", session=self.victim)

    def series(self, session: Session) -> dict[str, str]:
        """series id -> status of its carrier, in one session."""
        return {r["series_id"]: r["status"] for r in self.world.rows(session=session) if r["kind"] == "task"}

    def schedule_request(self, task_id: str, prompt: str = "decoy") -> None:
        self.world.request(T0, {"action": "schedule_task", "taskId": task_id, "prompt": prompt,
                                "recurrence": "0 10 * * *"}, session=self.attacker)


@pytest.fixture
def install(tmp_path: Path) -> Iterator[Install]:
    made = Install(tmp_path)
    yield made
    made.world.central.close()


def test_a_series_is_registered_with_its_session_before_anything_else(install: Install) -> None:
    assert task_ids.lookup(install.world.central, install.victim_task) == (install.victim.agent_group_id,
                                                                           install.victim.id)
    mine = ids.new_id("task", T0)
    install.schedule_request(mine, "mine")
    assert install.world.sweeper().tick(T0 + timedelta(seconds=1)).applied == 1
    assert task_ids.lookup(install.world.central, mine) == (install.attacker.agent_group_id, install.attacker.id)
    assert mine in install.series(install.attacker)  # an unused id is kept: the agent's announced id is the stored one


def test_a_runner_reusing_another_sessions_task_id_gets_a_fresh_one_and_is_told(install: Install) -> None:
    install.schedule_request(install.victim_task)
    result = install.world.sweeper().tick(T0 + timedelta(seconds=1))
    assert (result.applied, result.errors) == (1, 0)
    [decoy] = install.series(install.attacker)
    assert decoy != install.victim_task and ids.is_id(decoy, "task")
    assert task_ids.lookup(install.world.central, decoy) == (install.attacker.agent_group_id, install.attacker.id)
    assert task_ids.lookup(install.world.central, install.victim_task)[1] == install.victim.id  # type: ignore[index]
    [notice] = install.world.notices()
    assert notice["notice"] == "task_id_replaced" and decoy in notice["text"] and notice["trigger"] == 0


def test_a_runner_reusing_its_own_task_id_gets_a_fresh_one(install: Install) -> None:
    mine = install.world.schedule(T0, recurrence="0 8 * * *")
    install.schedule_request(mine, "again")
    install.world.sweeper().tick(T0 + timedelta(seconds=1))
    found = install.series(install.attacker)
    assert len(found) == 2 and mine in found  # the old series untouched, the new one under another id


def test_an_id_registered_for_the_session_but_never_stored_is_kept(install: Install) -> None:
    """The host killed between the registry's commit and the inbox's: the request, applied again, keeps its id."""
    mine = ids.new_id("task", T0)
    assert TaskIds(install.world.central, install.attacker.agent_group_id, install.attacker.id).register(mine)
    install.schedule_request(mine, "mine")
    assert install.world.sweeper().tick(T0 + timedelta(seconds=1)).applied == 1
    assert list(install.series(install.attacker)) == [mine] and install.world.notices() == []


def test_two_sessions_asking_for_the_same_new_id_get_two_ids(install: Install) -> None:
    wanted = ids.new_id("task", T0)
    install.schedule_request(wanted, "first")
    install.world.request(T0, {"action": "schedule_task", "taskId": wanted, "prompt": "second"},
                          session=install.victim)
    install.world.sweeper().tick(T0 + timedelta(seconds=1))
    first, second = install.series(install.attacker), install.series(install.victim)
    assert wanted in first and wanted not in second and len(second) == 2  # the victim's daily one, and a fresh id


@pytest.mark.parametrize("command", ["show", "pause", "cancel"])
def test_the_operator_acts_on_the_victims_task_after_a_decoy(install: Install, ncl: Callable[..., Any],
                                                             cli_env: Any, command: str) -> None:
    """The issue's attack: before, these failed with "exists in 2 sessions … refusing to guess"."""
    assert cli_env.data_dir == install.world.settings.data_dir
    install.schedule_request(install.victim_task)
    install.world.sweeper().tick(T0 + timedelta(seconds=1))
    [decoy] = install.series(install.attacker)
    answer = ncl("tasks", command, install.victim_task, "--json")
    assert answer.code == 0, answer.err
    data = json.loads(answer.out)
    if command == "show":
        assert data["task"]["session_id"] == install.victim.id and data["task"]["prompt"] == "post the standup"
    else:
        expected = {"pause": "paused", "cancel": "completed"}[command]
        assert install.series(install.victim)[install.victim_task] == expected
    assert install.series(install.attacker)[decoy] == "pending"  # the decoy is untouched


def test_the_cli_finds_a_registered_id_without_opening_other_sessions(install: Install, ncl: Callable[..., Any],
                                                                      cli_env: Any) -> None:
    """A scan would open every inbox; a garbled one in a third session would then fail the lookup."""
    third = install.world.new_session()
    (third.folder / "inbound.db").write_bytes(b"not a database" * 100)
    answer = ncl("tasks", "show", install.victim_task, "--json")
    assert answer.code == 0, answer.err
    assert json.loads(answer.out)["task"]["session_id"] == install.victim.id


def test_tasks_add_registers_its_id(install: Install, ncl: Callable[..., Any], cli_env: Any) -> None:
    added = ncl("tasks", "add", "--session", install.attacker.id, "--prompt", "by hand", "--at",
                "2026-06-12T09:00:00", "--json")
    assert added.code == 0, added.err
    task_id = json.loads(added.out)["id"]
    assert task_ids.lookup(install.world.central, task_id) == (install.attacker.agent_group_id, install.attacker.id)
    assert all(s in LIVE for s in install.series(install.attacker).values())


def test_an_upgrade_registers_the_task_ids_the_install_already_has(tmp_path: Path, insert_row: InsertRow) -> None:
    """central v2 -> v3 registers every existing series once, in the migration: an old id is as safe from a decoy
    as a new one. An id already in two sessions stays unregistered, so the CLI still refuses to guess."""
    data = tmp_path / "data"
    data.mkdir()
    with closing(sqlite3.connect(data / "central.db")) as conn:
        conn.executescript((Path(__file__).parents[1] / "released_schemas" / "central.v2.sql").read_text())
        placed = {"sess-a": "ag-one", "sess-b": "ag-one", "sess-c": "ag-two"}
        conn.executemany("INSERT INTO sessions(id, agent_group_id, created_at, last_active_at) VALUES (?, ?, ?, ?)",
                         [(s, g, "2026-06-11T09:00:00.000Z", "2026-06-11T09:00:00.000Z") for s, g in placed.items()])
        conn.commit()
    series = {"sess-a": ["task-1-aaaaaa", "task-2-shared"], "sess-b": ["task-3-bbbbbb", "task-2-shared"]}
    for session_id, group_id in placed.items():
        folder = data / "v2-sessions" / group_id / session_id
        sessions.create_files(folder)
        with closing(db.connect(folder / "inbound.db", "inbound")) as inbox:
            for n, task_id in enumerate(series.get(session_id, [])):
                insert_row(inbox, "messages_in", {"id": f"{task_id}-{session_id}", "seq": 2 * n + 2, "kind": "task",
                                                  "timestamp": "2026-06-11T09:00:00.000Z", "series_id": task_id,
                                                  "content": json.dumps({"prompt": "old"})})
    (data / "v2-sessions" / "ag-two" / "sess-c" / "inbound.db").write_bytes(b"garbled")  # skipped, not fatal
    with closing(db.connect(data / "central.db", "central")) as central:
        rows = central.execute("SELECT id, agent_group_id, session_id FROM task_ids").fetchall()
        registered = {r[0]: (r[1], r[2]) for r in rows}
    assert registered == {"task-1-aaaaaa": ("ag-one", "sess-a"), "task-3-bbbbbb": ("ag-one", "sess-b")}
