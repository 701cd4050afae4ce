"""Issue 15.5, tables people like to read, printed by real ``ncl`` processes: on a terminal (a pseudo-terminal of
the test's own) a table fits ``COLUMNS`` or the terminal's width, folds a multi-line prompt within its column and
has colours unless ``NO_COLOR``; piped, every row is one full line without escape codes, whatever ``COLUMNS`` says.
Tables show ids short (``task-ab12cd``), ``--wide`` and ``--json`` in full, and every command taking an id takes the
short one; ``tasks list`` has LEFT, ``groups list`` a count of sessions, ``status`` names runners and waiting work.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import sqlite3
import struct
import subprocess
import termios
from contextlib import closing
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from processes import Env, ncl_command

from host.cli.output import span
from host.files import logs
from host.files.lock import host_lock
from host.runtimes.published import publish
from schemas import ids

ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
PROMPT = "first: the standup\nsecond line"  # within the 40 characters a table shows
NOW = "2030-01-02T04:47:30"  # naive: in TZ (UTC here)


def on_terminal(env: Env, *args: str, width: int = 200, **extra: str) -> str:
    """What ``ncl ARGS`` prints with its stdout on a pseudo-terminal ``width`` columns wide (\\r\\n read as \\n)."""
    return terminal_run(env, *args, width=width, **extra)[0]


def terminal_run(env: Env, *args: str, width: int = 200, **extra: str) -> tuple[str, str]:
    """``on_terminal``, and what the process wrote on stderr (to a file: a full pipe would stall it)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, width, 0, 0))
    variables = {k: v for k, v in env.vars.items() if k not in ("COLUMNS", "NO_COLOR")}
    with (env.root / "stderr").open("w+") as stderr:
        proc = subprocess.Popen([*ncl_command(), *args], cwd=env.root, env={**variables, "TERM": "xterm", **extra},
                                stdin=subprocess.DEVNULL, stdout=slave, stderr=stderr)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        assert proc.wait(timeout=120) == 0
        stderr.seek(0)
        return b"".join(chunks).decode().replace("\r\n", "\n"), stderr.read()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    env = Env(tmp_path)
    env.vars.pop("COLUMNS", None)
    env.vars.pop("NO_COLOR", None)
    env.ok("groups", "create", "demo", "--channel", "cli")
    return env


@pytest.fixture
def session(env: Env) -> dict[str, Any]:
    return dict(json.loads(env.ok("sessions", "create", "--group", "demo", "--json")))


@pytest.fixture
def task(env: Env, session: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(env.ok("tasks", "add", "--session", session["id"], "--prompt", PROMPT, "--at",
                                  "2030-01-02T09:00", "--now", NOW, "--json")))


def test_on_a_terminal_the_table_fits_columns_and_folds_the_prompt(env: Env, task: dict[str, Any]) -> None:
    shown = ESCAPE.sub("", on_terminal(env, "tasks", "list", "--now", NOW, COLUMNS="100"))
    lines = shown.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 100 < len(env.ok("tasks", "list").splitlines()[1])
    assert ids.short(task["id"]) in lines[1] and task["id"] not in shown  # ids whole, short
    assert "\\n" not in shown  # the prompt's line break is a line of its cell, not an escape
    [second] = [line for line in lines if "second line" in line]
    assert second.index("second line") == lines[1].index("first:")  # within the prompt's column
    assert second[:second.index("second line")].strip() == ""  # the row's other cells are not repeated


def test_on_a_terminal_without_columns_the_table_fits_the_terminal(env: Env, task: dict[str, Any]) -> None:
    lines = ESCAPE.sub("", on_terminal(env, "tasks", "list", "--now", NOW, width=90)).splitlines()
    assert len(lines) > 2 and max(len(line.rstrip()) for line in lines) <= 90


def test_colours_on_a_terminal_only_and_never_with_no_color(env: Env, task: dict[str, Any]) -> None:
    assert "\x1b[1mID" in on_terminal(env, "tasks", "list")  # the header is bold (drawn by rich: a folded prompt)
    assert "\x1b" not in on_terminal(env, "tasks", "list", NO_COLOR="1")
    assert "\x1b" not in env.ok("tasks", "list")


def test_piped_every_row_is_one_full_line_whatever_columns_says(env: Env, task: dict[str, Any]) -> None:
    env.vars["COLUMNS"] = "40"
    lines = env.ok("tasks", "list", "--now", NOW).splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["ID", "GROUP", "SESSION", "STATUS", "NEXT", "RUN", "LEFT", "RECURRENCE", "LAST",
                                "PROMPT"]  # SESSION STATUS only when a session is closed
    assert lines[1].split() == [ids.short(task["id"]), "ag-demo", ids.short(task["session_id"]), "pending",
                                "2030-01-02", "09:00:00", "UTC", "4h", "12min", "-", "-", "first:", "the",
                                "standup\\nsecond", "line"]


def test_wide_and_json_show_ids_and_prompts_in_full(env: Env, task: dict[str, Any]) -> None:
    [row] = env.ok("tasks", "list", "--wide").splitlines()[1:]
    assert row.startswith(task["id"] + " ") and task["session_id"] in row
    assert row.endswith("first: the standup\\nsecond line")
    [item] = json.loads(env.ok("tasks", "list", "--json"))["tasks"]
    assert (item["id"], item["session_id"], item["prompt"]) == (task["id"], task["session_id"], PROMPT)
    env.ok("tasks", "update", task["id"], "--prompt", "x" * 39 + "yz")
    assert env.ok("tasks", "list").splitlines()[1].endswith(" " + "x" * 39 + "…")  # 40 characters at most
    assert env.ok("tasks", "list", "--wide").splitlines()[1].endswith(" " + "x" * 39 + "yz")


def test_left_counts_down_to_the_next_run_then_says_overdue(env: Env, task: dict[str, Any]) -> None:
    def left(now: str) -> list[str]:
        return env.ok("tasks", "list", "--now", now).splitlines()[1].split()[7:9]

    assert left("2030-01-02T04:47:30") == ["4h", "12min"]
    assert left("2029-12-30T07:00:00") == ["3d", "2h"]
    assert left("2030-01-02T08:59:59") == ["1s", "-"]
    assert left("2030-01-02T09:00:00") == ["overdue", "-"]
    env.ok("tasks", "pause", task["id"])
    assert left(NOW)[0] == "-"  # no next run


@pytest.mark.parametrize(("seconds", "shown"), [(0, "0s"), (59.2, "1min"), (61, "1min 1s"), (3600, "1h"),
                                                (86400 + 7200 + 59, "1d 2h"), (None, "-")])
def test_span_shows_the_two_largest_units(seconds: float | None, shown: str) -> None:
    assert span(seconds) == shown


def test_a_short_id_is_taken_wherever_a_full_one_is(env: Env, task: dict[str, Any]) -> None:
    paused = json.loads(env.ok("tasks", "pause", ids.short(task["id"]), "--json"))
    assert paused["id"] == task["id"]
    shown = json.loads(env.ok("tasks", "show", ids.short(task["id"]), "--json"))
    assert shown["task"]["id"] == task["id"]
    listed = json.loads(env.ok("tasks", "list", "--session", ids.short(task["session_id"]), "--json"))["tasks"]
    assert [t["id"] for t in listed] == [task["id"]]
    assert json.loads(env.ok("sessions", "show", ids.short(task["session_id"]), "--json"))["id"] == task["session_id"]


def test_a_short_id_naming_two_or_none_is_refused_in_one_line(env: Env, task: dict[str, Any]) -> None:
    short = ids.short(task["id"])
    twin = "task-1000000000000-" + short.removeprefix("task-")
    with closing(sqlite3.connect(env.data_dir / "central.db")) as central, central:
        central.execute("INSERT INTO task_ids(id, agent_group_id, session_id) VALUES (?, 'ag-demo', ?)",
                        (twin, task["session_id"]))
    done = env.ncl("tasks", "pause", short)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"'{short}' is short for 2 ids ({twin}, {task['id']}); give the full one" in done.stderr
    unknown = env.ncl("tasks", "pause", "task-zzzzzz")
    assert unknown.returncode == 1 and "unknown task 'task-zzzzzz'" in unknown.stderr
    assert json.loads(env.ok("tasks", "pause", task["id"], "--json"))["id"] == task["id"]  # the full id still works


def test_groups_list_counts_active_sessions(env: Env, session: dict[str, Any]) -> None:
    env.ok("sessions", "create", "--group", "demo")
    env.ok("groups", "create", "quiet", "--channel", "queue:jobs")
    lines = env.ok("groups", "list").splitlines()
    assert lines[0].split() == ["ID", "NAME", "CHANNELS", "MODE", "SESSIONS", "PROVIDER", "MODEL", "CREATED"]
    assert [line.split()[:5] for line in lines[1:]] == [["ag-demo", "demo", "cli", "shared", "2"],
                                                        ["ag-quiet", "quiet", "queue:jobs", "shared", "0"]]
    listed = json.loads(env.ok("groups", "list", "--json"))["groups"]
    assert [(g["name"], g["session_mode"], g["active_sessions"]) for g in listed] == [("demo", "shared", 2),
                                                                                      ("quiet", "shared", 0)]


def test_status_names_the_runners_and_the_work_waiting_for_a_slot(env: Env, session: dict[str, Any]) -> None:
    other = json.loads(env.ok("sessions", "create", "--group", "demo", "--thread", "t2", "--json"))
    with host_lock(env.data_dir):  # held by this process: to ncl, a host is running
        publish(env.data_dir, {"zone": "UTC", "runners": [
            {"session_id": session["id"], "generation": 1, "started_at": "2019-12-31T23:00:00.000Z",
             "idle_since": "2020-01-01T00:00:00.000Z"}],
            "waiting": [{"session_id": other["id"], "due_since": "2020-01-01T00:00:00.000Z"}]})
        shown = env.ok("status")
    lines = shown.splitlines()
    [runner] = [line for line in lines if line.startswith(ids.short(session["id"]))]
    assert runner.split()[1:6] == ["ag-demo", "2019-12-31", "23:00:00", "UTC", "idle"]
    assert runner.split()[6].endswith("d")  # idle for days (by the real clock)
    [header] = [line for line in lines if line.startswith("WAITING SESSION")]
    assert header.split() == ["WAITING", "SESSION", "GROUP", "DUE", "SINCE", "WAITING", "FOR"]
    [waiting] = [line for line in lines if line.startswith(ids.short(other["id"]))]
    assert waiting.split()[1:5] == ["ag-demo", "2020-01-01", "00:00:00", "UTC"]


def test_a_table_that_fits_the_terminal_is_aligned_without_rich_and_coloured(env: Env, session: dict[str, Any]) -> None:
    one = json.loads(env.ok("tasks", "add", "--session", session["id"], "--prompt", "one line", "--at",
                            "2030-01-02T09:00", "--now", NOW, "--json"))
    env.ok("tasks", "pause", one["id"])
    shown, stderr = terminal_run(env, "tasks", "list", PYTHONPROFILEIMPORTTIME="1")
    assert not [line for line in stderr.splitlines() if line.endswith(("| rich", "| rich.table"))]
    header, row = shown.splitlines()
    assert header.startswith("\x1b[1mID\x1b[0m" + " " * (len(ids.short(one["id"])) - 2) + "  \x1b[1mGROUP")
    assert "  \x1b[33mpaused\x1b[0m " in row  # the padding after a word stays plain
    assert ESCAPE.sub("", row).split()[:4] == [ids.short(one["id"]), "ag-demo", ids.short(session["id"]), "paused"]
    plain = on_terminal(env, "tasks", "list", NO_COLOR="1").splitlines()
    assert plain == [ESCAPE.sub("", header), ESCAPE.sub("", row)]  # the same table, without escape codes


def test_rich_is_imported_for_a_terminal_only_and_never_pydantic(env: Env, task: dict[str, Any]) -> None:
    """Piped (scripts, scripts/bench_cli.py), ``tasks list`` pays nothing for rich; on a terminal, for a table to
    fold (a multi-line prompt here), it loads rich's table and console, and still not pydantic (``-X importtime``
    through PYTHONPROFILEIMPORTTIME, on stderr)."""
    def modules(stderr: str) -> set[str]:
        return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}

    env.vars["PYTHONPROFILEIMPORTTIME"] = "1"
    piped = modules(env.ncl("tasks", "list").stderr)
    assert "host.cli.output" in piped and not any(m.startswith("rich") for m in piped)
    drawn = modules(terminal_run(env, "tasks", "list")[1])
    assert {"rich.table", "rich.console"} <= drawn
    assert not any(m == "pydantic" or m.startswith("pydantic.") for m in drawn)


@pytest.mark.parametrize("more", ["", "\nsecond line"])  # aligned, and drawn by rich (a multi-line text)
def test_on_a_terminal_agent_text_is_shown_inert(env: Env, session: dict[str, Any], more: str) -> None:
    """Tables on a terminal write under the escaping stream (their colours would be escaped there): each text is
    made visible first, and rich is handed text, never markup."""
    env.ok("tasks", "add", "--session", session["id"], "--prompt", "\x1b]52;c;aGk=\x07[bold]x[/bold] \u202e" + more,
           "--at", "2030-01-02T09:00", "--now", NOW)
    shown = on_terminal(env, "tasks", "list", NO_COLOR="1")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b]52;c;aGk=\\x07[bold]x[/bold] \\u202e" in shown
    assert "\\n" not in shown  # a line break is a line of its cell


def test_logs_takes_short_session_and_task_ids(env: Env, task: dict[str, Any]) -> None:
    formatter = logs.formatter("text", ZoneInfo("UTC"))
    lines = [logging.makeLogRecord({"name": "host.test", "msg": f"line {n}", "levelno": logging.INFO,
                                    "levelname": "INFO", **extra})
             for n, extra in enumerate([{"session": task["session_id"]}, {"task": task["id"]}, {}])]
    (env.data_dir / "host.log").write_text("".join(formatter.format(line) + "\n" for line in lines))
    for option, full in (("--session", task["session_id"]), ("--task", task["id"])):
        found = [json.loads(line) for line in env.ok("logs", "--json", option, ids.short(full)).splitlines()]
        assert [record["message"] for record in found] == ["line 0" if option == "--session" else "line 1"]


def test_a_short_session_id_naming_two_is_refused_in_one_line(env: Env, session: dict[str, Any]) -> None:
    short = ids.short(session["id"])
    twin = "sess-1000000000000-" + short.removeprefix("sess-")
    with closing(sqlite3.connect(env.data_dir / "central.db")) as central, central:
        central.execute("INSERT INTO sessions(id, agent_group_id, created_at, last_active_at)"
                        " VALUES (?, 'ag-demo', ?, ?)", (twin, session["created_at"], session["created_at"]))
    for args in (("sessions", "show", short), ("tasks", "list", "--session", short),
                 ("messages", "list", "--session", short)):
        done = env.ncl(*args)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, args
        assert f"'{short}' is short for 2 ids ({twin}, {session['id']}); give the full one" in done.stderr
