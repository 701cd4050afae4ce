"""Issue 15.1, the host's log: lines of either format (``NCL_LOG_FORMAT``) in TZ that parse back to the same object,
on one line whatever the message holds; the session of the visit a line was logged in; data/host.log private and
rotated by size; ``ncl logs`` reading it and the rotated files, filtered by session, task and time, as text in TZ or
JSON. Records are made with fixed instants; the files are real."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest
from cli_kit import Ncl, ok, one_line_error

from host import settings as settings_module
from host.cli.app import App
from host.cli.logs import since
from host.errors import NclError
from host.files import logs
from host.settings import SettingsError

if TYPE_CHECKING:
    from conftest import CliEnv  # tests/conftest.py: only for types (a runtime import may find another conftest)

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 6, 11, 7, 0, tzinfo=UTC)  # 09:00 CEST


def record(message: str, at: datetime = T0, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    made = logging.makeLogRecord({"name": "host.test", "msg": message, "levelno": level,
                                  "levelname": logging.getLevelName(level), **extra})
    made.created = at.timestamp()
    return made


def test_a_text_line_is_in_tz_and_parses_back_to_the_json_lines_object() -> None:
    extras = {"action": "task_finished", "session": "sess-1", "task": "task-1", "duration_ms": 2300, "count": "12",
              "spaced": "a b", "runs": ["run 1", 2], "none": None, "quoted": 'say "hi"', "empty": ""}
    made = record("task task-1 ran in 2.3 s", **extras)
    text = logs.TextFormatter(BERLIN).format(made)
    assert text.startswith("2026-06-11 09:00:00.000+02:00 CEST INFO task task-1 ran in 2.3 s [action=task_finished "
                           "session=sess-1 task=task-1 duration_ms=2300 count=\"12\" spaced=\"a b\"")
    as_json = logs.JsonFormatter(BERLIN).format(made)
    expected = {"time": "2026-06-11T07:00:00.000Z", "local": "2026-06-11T09:00:00.000+02:00", "level": "INFO",
                "message": "task task-1 ran in 2.3 s", **extras}
    assert json.loads(as_json) == expected
    assert logs.parse(text) == logs.parse(as_json) == expected
    assert logs.line_of(expected, BERLIN) == text


def test_a_message_stays_on_its_line_and_cannot_forge_the_keys() -> None:
    made = record("rejected: \"x\" [action=forged session=victim]\nsecond line\r\x1b[2J", action="request_rejected",
                  session="sess-1")
    text = logs.TextFormatter(ZoneInfo("UTC")).format(made)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    parsed = logs.parse(text)
    assert parsed is not None and (parsed["action"], parsed["session"]) == ("request_rejected", "sess-1")
    assert parsed["message"] == "rejected: \"x\" [action=forged session=victim]\\nsecond line\\r\\x1b[2J"
    assert "\n" not in logs.JsonFormatter(ZoneInfo("UTC")).format(made)


def test_an_exception_goes_on_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.LogRecord("host.test", logging.ERROR, __file__, 1, "failed", None, __import__("sys").exc_info())
    text = logs.TextFormatter(ZoneInfo("UTC")).format(made)
    assert "\n" not in text and "ValueError: boom" in text and logs.parse(text) is not None


@pytest.mark.parametrize("line", ["", "ncl: INFO: host running", "2026-06-11 09:00:00.000+02:00 CEST INFO torn [act",
                                  "{\"level\": \"INFO\"}", "{not json", "[]"])
def test_anything_else_is_not_a_line(line: str) -> None:
    assert logs.parse(line) is None


def test_a_line_logged_while_visiting_a_session_names_it_unless_it_names_one() -> None:
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append  # type: ignore[method-assign]
    handler.addFilter(logs.SessionFilter())
    logger = logging.getLogger("host.test.visiting")
    logger.addHandler(handler)
    try:
        with logs.visiting("sess-1"):
            logger.warning("inside")
            logger.warning("about another", extra={"session": "sess-2"})
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    assert [getattr(r, "session", None) for r in said] == ["sess-1", "sess-2", None]


def test_the_log_file_is_private_and_rotated_by_size(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / logs.FILE).write_text("")
    os.chmod(data / logs.FILE, 0o644)  # a shell redirect's, from before the host wrote it itself
    old = os.umask(0)
    try:
        handler = logs.file_handler(data, logs.TextFormatter(ZoneInfo("UTC")))
    finally:
        os.umask(old)
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert (handler.maxBytes, handler.backupCount) == (logs.MAX_BYTES, logs.BACKUPS) == (10 << 20, 3)
    handler.maxBytes = 300  # a few lines a file
    try:
        for n in range(20):
            handler.handle(record(f"line {n:02d}", action="test"))
    finally:
        handler.close()
    assert [p.name for p in logs.rotated(data)] == ["host.log.3", "host.log.2", "host.log.1"]
    for path in [*logs.rotated(data), data / logs.FILE]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size <= 300
    every = [*logs.rotated(data), data / logs.FILE]
    kept = [logs.parse(line) for path in every for line in path.read_text().splitlines()]
    numbers = [int(r["message"].split()[1]) for r in kept if r]
    assert numbers == list(range(20 - len(numbers), 20))  # the newest lines, in order; the oldest went


def test_the_log_format_setting(tmp_path: Path) -> None:
    assert settings_module.load(environ={}, cwd=tmp_path, system_tz="UTC").log_format == "text"
    assert settings_module.load(environ={"NCL_LOG_FORMAT": "json"}, cwd=tmp_path, system_tz="UTC").log_format == "json"
    with pytest.raises(SettingsError, match="NCL_LOG_FORMAT"):
        settings_module.load(environ={"NCL_LOG_FORMAT": "xml"}, cwd=tmp_path, system_tz="UTC")
    assert isinstance(logs.formatter("json", BERLIN), logs.JsonFormatter)
    assert isinstance(logs.formatter("text", BERLIN), logs.TextFormatter)


def test_since_is_a_duration_back_from_now_or_a_time_naive_in_tz(tmp_path: Path) -> None:
    app = App(settings_module.load(environ={"TZ": "Europe/Berlin"}, cwd=tmp_path, system_tz="UTC"))
    assert since("10m", T0, app) == T0 - timedelta(minutes=10)
    assert since("1.5h", T0, app) == T0 - timedelta(minutes=90)
    assert since("2d", T0, app) == T0 - timedelta(days=2)
    assert since("2026-06-11T09:00:00", T0, app) == T0
    assert since("2026-06-11T07:00:00Z", T0, app) == T0
    with pytest.raises(NclError, match=r"--since: .*10m"):
        since("yesterday", T0, app)


# --- ncl logs ------------------------------------------------------------------------------------------------------

LINES = [  # (minutes after T0, message, extras)
    (0, "host running", {"action": "host_started"}),
    (1, "starting a runner for sess-a", {"action": "runner_starting", "session": "sess-a"}),
    (2, "task task-1 ran in 1.0 s", {"action": "task_finished", "session": "sess-a", "task": "task-1"}),
    (3, "task task-1 ran in 1.0 s", {"action": "task_finished", "session": "sess-a", "task": "task-1",
                                     "occurrence": "task-2"}),
    (4, "task task-9 failed", {"action": "task_finished", "session": "sess-b", "task": "task-9"}),
    (5, "scheduled task sched-1 queued in 0.0 s", {"action": "scheduled_run_finished", "task": "sched-1"}),
]


def write_log(data: Path, form: str = "text", rotate_after: int = 3) -> list[dict[str, Any]]:
    """LINES through the real formatter, the first ``rotate_after`` in host.log.1, the rest in host.log; their
    objects."""
    data.mkdir(parents=True, exist_ok=True)
    formatter = logs.formatter(form, ZoneInfo("UTC"))
    made = [formatter.format(record(m, T0 + timedelta(minutes=n), **e)) for n, m, e in LINES]
    (data / "host.log.1").write_text("\n".join(made[:rotate_after]) + "\n")
    (data / "host.log").write_text("\n".join(made[rotate_after:]) + "\n" + made[0][:20])  # a line being written
    return [json.loads(logs.JsonFormatter(ZoneInfo("UTC")).format(record(m, T0 + timedelta(minutes=n), **e)))
            for n, m, e in LINES]


def shown(ncl: Ncl, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(ncl("logs", "--json", *args)).out.splitlines()]


@pytest.fixture
def logged(cli_env: CliEnv) -> list[dict[str, Any]]:
    return write_log(cli_env.data_dir)


def test_logs_prints_every_file_oldest_first_and_filters(ncl: Ncl, logged: list[dict[str, Any]]) -> None:
    assert shown(ncl) == logged
    assert shown(ncl, "--session", "sess-a") == logged[1:4]
    assert shown(ncl, "--task", "task-1") == logged[2:4]
    assert shown(ncl, "--task", "task-2") == [logged[3]]  # an occurrence id
    assert shown(ncl, "--task", "sched-1") == [logged[5]]
    assert shown(ncl, "--since", "2026-06-11T07:03:00Z") == logged[3:]
    assert shown(ncl, "--session", "sess-a", "-n", "2") == logged[2:4]  # across the rotation, read newest first
    assert shown(ncl, "-n", "4") == logged[2:]
    assert shown(ncl, "--session", "nobody") == []


def test_logs_reads_json_lines_as_it_reads_text_lines(ncl: Ncl, cli_env: CliEnv) -> None:
    expected = write_log(cli_env.data_dir, "json")
    assert (cli_env.data_dir / "host.log").read_text().startswith("{")
    assert shown(ncl) == expected
    assert shown(ncl, "--session", "sess-b") == [expected[4]]


def test_logs_prints_text_lines_in_this_commands_tz(ncl: Ncl, logged: list[dict[str, Any]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    lines = ok(ncl("logs", "--task", "sched-1")).out.splitlines()
    assert lines == [logs.line_of(logged[5], BERLIN)]
    assert lines[0].startswith("2026-06-11 09:05:00.000+02:00 CEST INFO scheduled task sched-1 queued")


def test_logs_with_no_log_yet_prints_nothing(ncl: Ncl) -> None:
    assert ok(ncl("logs")).out == ""


def test_logs_refuses_a_since_it_cannot_read(ncl: Ncl) -> None:
    assert "--since" in one_line_error(ncl("logs", "--since", "last tuesday"))


def test_logs_since_skips_rotated_files_written_before_then(ncl: Ncl, cli_env: CliEnv,
                                                           logged: list[dict[str, Any]]) -> None:
    rotated = cli_env.data_dir / "host.log.1"
    rotated.write_text(rotated.read_text() + "2099-01-01 00:00:00.000+00:00 UTC INFO from the future []\n")
    os.utime(rotated, (T0.timestamp(), T0.timestamp()))  # last written at T0: nothing in it is later
    assert shown(ncl, "--since", "2026-06-11T07:00:01Z") == logged[3:]


def test_logs_json_is_exact_and_ascii(ncl: Ncl, cli_env: CliEnv) -> None:
    cli_env.data_dir.mkdir()
    text = "agent said \x7f\u202e\x9b and ü"
    (cli_env.data_dir / "host.log").write_text(logs.JsonFormatter(ZoneInfo("UTC")).format(record(text)) + "\n")
    out = ok(ncl("logs", "--json")).out
    assert out.isascii() and json.loads(out)["message"] == text
    human = ok(ncl("logs")).out
    assert "\x7f" not in human and "\u202e" not in human and "\\u202e" in human

