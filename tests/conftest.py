"""Shared fixtures: an isolated environment for the ``ncl`` CLI, run in-process, and row helpers.

Every test that touches settings or the CLI gets its own cwd, data dir and environment, so nothing
leaks from the developer's shell, ``.env`` or machine time zone into a result.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from host import settings as settings_module
from host.cli import main
from host.scheduling.changes import Changes

# Shared helper modules hold assertions too: have pytest rewrite them so failures say what differed.
pytest.register_assert_rewrite("cli_kit", "cli_tasks_kit", "concurrency_writers", "e2e_scenario", "kit", "processes",
                               "property_kit", "scheduled_project", "schema_kit")

# Environment prefixes that change what ncl does; scrubbed before every CLI test.
_SCRUBBED_PREFIXES = ("NCL_", "ANTHROPIC_")


@pytest.fixture(autouse=True)
def _collectable() -> Iterator[None]:
    """A host that has seen every session leaves what it holds out of the collector's passes (``gc.freeze``): in a
    test process that is whatever the tests before left, given back after each test."""
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _watches_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each sweeper watches its sessions' folders through an inotify instance of its own (``changes.Changes``), of
    which a user may have 128 (runners' waits use them too): those a test's sweepers left open are closed after it."""
    made: list[Changes] = []
    init = Changes.__init__

    def recorded(self: Changes, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Changes, "__init__", recorded)
    yield
    for changes in made:
        changes.close()


class Result(NamedTuple):
    """What one ``ncl`` invocation did: unpacks as ``(code, out, err)``."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@dataclass(frozen=True)
class CliEnv:
    root: Path  # the cwd of every invocation (where ./.env is read from)
    data_dir: Path  # NCL_DATA_DIR; not created until a command writes

    @property
    def central_db(self) -> Path:
        return self.data_dir / "central.db"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliEnv]:
    """cwd = tmp_path, NCL_DATA_DIR = tmp_path/data, no TZ/NCL_*/ANTHROPIC_* from the outer shell.

    The machine's own zone is hidden too (``system_zone`` returns None), so an unset TZ resolves
    to the UTC fallback on every machine; a test may ``monkeypatch.setenv("TZ", …)``.
    """
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name == "TZ" or name.startswith(_SCRUBBED_PREFIXES):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("NCL_DATA_DIR", str(data_dir))
    monkeypatch.setattr(settings_module, "system_zone", lambda root=Path("/"): None)
    root_logger = logging.getLogger()
    level = root_logger.level  # the CLI sets the root level from NCL_LOG_LEVEL; put it back after
    yield CliEnv(root=tmp_path, data_dir=data_dir)
    root_logger.setLevel(level)


@pytest.fixture
def ncl(cli_env: CliEnv, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``ncl("groups", "list", "--json")`` runs ``host.cli.main`` in-process and returns a Result."""

    def run(*args: str) -> Result:
        capsys.readouterr()  # drop whatever an earlier step printed
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
        else:  # pragma: no cover - main() always ends in sys.exit
            raise AssertionError("host.cli.main returned instead of exiting")
        out, err = capsys.readouterr()
        if code is None:
            code = 0
        elif not isinstance(code, int):
            code = 1
        return Result(code, out, err)

    return run


@pytest.fixture
def demo_session(ncl: Callable[..., Result]) -> dict[str, Any]:
    """Group ``demo`` (channel cli) with one session; returns the session's ``--json`` object."""
    created = ncl("groups", "create", "demo", "--channel", "cli", "--json")
    assert created.code == 0, created.err
    session = ncl("sessions", "create", "--group", "demo", "--json")
    assert session.code == 0, session.err
    data: dict[str, Any] = session.json()
    return data


def message_in(**overrides: Any) -> dict[str, Any]:
    """A valid ``messages_in`` row (a pending one-shot task); override any column."""
    row: dict[str, Any] = {
        "id": "task-1781168400000-aaaaaa",
        "seq": 2,
        "kind": "task",
        "timestamp": "2026-06-11T09:00:00.000Z",
        "status": "pending",
        "process_after": "2026-06-11T13:00:00.000Z",
        "recurrence": None,
        "series_id": "task-1781168400000-aaaaaa",
        "content": json.dumps({"prompt": "post the standup", "script": None, "context_mode": "group"}),
    }
    row.update(overrides)
    return row


def insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table}({columns}) VALUES ({marks})", tuple(row.values()))


@pytest.fixture
def row_in() -> Callable[..., dict[str, Any]]:
    """Factory for valid ``messages_in`` rows: ``row_in(id=…, seq=4, status="completed")``."""
    return message_in


@pytest.fixture
def insert_row() -> Callable[[sqlite3.Connection, str, dict[str, Any]], None]:
    """``insert_row(conn, "messages_in", row)``: one INSERT of a column→value dict."""
    return insert
