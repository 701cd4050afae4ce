"""What the project-level scheduled-task tests (tests/test_scheduled_tasks_*.py) share: ``Project``, one install in
America/New_York driven through ``ncl scheduled-task`` in-process plus firers (``ScheduledTasks``) on a fake clock,
given to the tests by the ``project`` fixture (test modules import it by name: ``from scheduled_project import
project as project``); the seed spec of DESIGN §9 and its 17:30 slot; their one-line-error check."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from cli_kit import Ncl
from kit import FakeClock, utc

from host import settings as settings_module
from host.project_tasks.fire import ScheduledTasks
from host.settings import Settings

if TYPE_CHECKING:
    from conftest import CliEnv, Result

NY = ZoneInfo("America/New_York")
NOW = "2026-06-11T09:00:00"  # Thursday, local (EDT, UTC-4)
SLOT = utc("2026-06-11T21:30:00")  # 17:30 EDT
HEAD = "version: v1\nkind: ScheduledTask\n"
DAILY_QUEUE = HEAD + (  # the seed example of DESIGN §9, comment and all
    "schedule: 30 17 * * *          # cron in TZ; runs at least 15 min apart (NCL_SCHEDULED_TASK_MIN_GAP_S)\n"
    "queue: {name: support-jobs, payload: {prompt: Generate the daily summary.}}\n")


class Project:
    """One install in America/New_York driven through ``ncl`` in-process, plus firers on a fake clock."""

    def __init__(self, ncl: Ncl, root: Path) -> None:
        self.ncl, self.root = ncl, root
        self.firers: list[ScheduledTasks] = []

    def settings(self) -> Settings:
        return settings_module.load()

    def spec(self, text: str, name: str = "t.yaml") -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    def add(self, text: str, now: str = NOW) -> dict[str, Any]:
        result = self.ncl("scheduled-task", "add", "--file", self.spec(text), "--now", now, "--json")
        assert result.code == 0, result.err
        data: dict[str, Any] = result.json()
        return data

    def runs(self, task_id: str) -> list[dict[str, Any]]:
        result = self.ncl("scheduled-task", "runs", task_id, "--json")
        assert result.code == 0, result.err
        found: list[dict[str, Any]] = result.json()["runs"]
        return found

    def listed(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.ncl("scheduled-task", "list", "--json").json()["scheduled_tasks"]
        return found

    def firer(self, clock: FakeClock) -> ScheduledTasks:
        made = ScheduledTasks(self.settings(), clock.now)
        self.firers.append(made)
        return made

    def support_group(self) -> None:
        assert self.ncl("groups", "create", "support", "--channel", "queue:support-jobs").code == 0

    def queue_rows(self) -> list[dict[str, Any]]:
        rows = []
        for inbound in sorted((self.root / "data" / "v2-sessions" / "ag-support").glob("*/inbound.db")):
            with closing(sqlite3.connect(f"file:{inbound}?mode=ro", uri=True)) as conn:
                conn.row_factory = sqlite3.Row
                rows += [dict(r) for r in conn.execute("SELECT * FROM messages_in WHERE kind = 'queue'")]
        return rows


@pytest.fixture
def project(ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    monkeypatch.setenv("TZ", "America/New_York")
    made = Project(ncl, cli_env.root)
    yield made
    for firer in made.firers:
        firer.close(stop_running=True)


def one_line_error(result: Result, code: int = 1) -> str:
    assert result.code == code, f"exit {result.code}: {result.out} {result.err}"
    assert "Traceback" not in result.err and "internal error" not in result.err, result.err
    assert len(result.err_lines) == 1, result.err
    return result.err_lines[0]


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NY)
