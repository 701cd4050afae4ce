"""Issue 2 acceptance through the ``ncl`` CLI (DESIGN §9, §10, §12): bad input. Every refusal (bad names, channels,
options, settings, a broken or newer central.db) is exit 1 (2 for usage) with one ``ncl: `` line on stderr and
nothing on stdout, a refused create leaves the groups unchanged, and so it is through the installed console script.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cli_kit import Ncl, dump, ok, one_line_error

from schemas.ddl import latest_version

if TYPE_CHECKING:
    from conftest import CliEnv

# --- bad input: exit 1 (2 for usage) and one line on stderr ----------------------------------------


def _not_a_database(env: CliEnv) -> dict[str, str]:
    env.data_dir.mkdir(parents=True, exist_ok=True)
    env.central_db.write_bytes(b"not a database at all" * 200)
    return {}


def _newer_central(env: CliEnv) -> dict[str, str]:
    env.data_dir.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(env.central_db)) as conn:
        conn.execute(f"PRAGMA user_version={latest_version('central') + 1}")
    return {}


def _data_dir_is_a_file(env: CliEnv) -> dict[str, str]:
    blocker = env.root / "blocker"
    blocker.write_text("")
    return {"NCL_DATA_DIR": str(blocker / "data")}


# (id, argv, environment or set-up, expected exit code)
BAD: list[tuple[str, list[str], Any, int]] = [
    ("name-dotdot", ["groups", "create", "../x", "--channel", "cli"], None, 1),
    ("name-slash", ["groups", "create", "a/b"], None, 1),
    ("name-dot", ["groups", "create", "a.b"], None, 1),
    ("name-empty", ["groups", "create", ""], None, 1),
    ("name-space", ["groups", "create", "a b"], None, 1),
    ("name-49", ["groups", "create", "x" * 49], None, 1),
    ("name-taken", ["groups", "create", "demo"], None, 1),
    ("name-taken-case", ["groups", "create", "DEMO"], None, 1),
    ("channel-bogus", ["groups", "create", "bot", "--channel", "bogus"], None, 1),
    ("channel-no-name", ["groups", "create", "bot", "--channel", "queue:"], None, 1),
    ("channel-path", ["groups", "create", "bot", "--channel", "webhook:../x"], None, 1),
    ("rules-missing-file", ["groups", "create", "bot", "--rules", "@missing-file"], None, 1),
    ("session-mode", ["groups", "create", "bot", "--session-mode", "weird"], None, 1),
    ("provider", ["groups", "create", "bot", "--provider", "openai"], None, 1),
    ("groups-show-unknown", ["groups", "show", "nope"], None, 1),
    ("groups-delete-unknown", ["groups", "delete", "nope", "--yes"], None, 1),
    ("groups-delete-no-yes", ["groups", "delete", "demo"], None, 1),
    ("groups-show-missing-arg", ["groups", "show"], None, 2),
    ("groups-create-missing-arg", ["groups", "create"], None, 2),
    ("groups-unknown-option", ["groups", "list", "--bogus"], None, 2),
    ("sessions-create-missing-group", ["sessions", "create"], None, 2),
    ("sessions-create-unknown-group", ["sessions", "create", "--group", "nope"], None, 1),
    ("sessions-create-bad-group-name", ["sessions", "create", "--group", "../x"], None, 1),
    ("sessions-create-empty-thread", ["sessions", "create", "--group", "demo", "--thread", " "], None, 1),
    ("sessions-create-thread-no-value", ["sessions", "create", "--group", "demo", "--thread"], None, 2),
    ("sessions-show-unknown", ["sessions", "show", "sess-1781168400000-zzzzzz"], None, 1),
    ("sessions-show-path", ["sessions", "show", "../../etc"], None, 1),
    ("sessions-list-unknown-group", ["sessions", "list", "--agent-group-id", "ag-nope"], None, 1),
    ("sessions-list-status", ["sessions", "list", "--status", "weird"], None, 1),
    ("unknown-command", ["frobnicate"], None, 2),
    ("doctor-unknown-option", ["doctor", "--bogus"], None, 2),
    ("env-max-runners-word", ["groups", "list"], {"NCL_MAX_RUNNERS": "many"}, 1),
    ("env-max-runners-zero", ["doctor"], {"NCL_MAX_RUNNERS": "0"}, 1),
    ("env-runtime", ["sessions", "list"], {"NCL_RUNTIME": "podman"}, 1),
    ("env-data-dir-under-a-file", ["groups", "create", "bot"], _data_dir_is_a_file, 1),
    ("central-not-a-database", ["groups", "list"], _not_a_database, 1),
    ("central-newer", ["sessions", "list"], _newer_central, 1),
]


def _prepare(env_or_setup: Any, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    if callable(env_or_setup):
        env_or_setup = env_or_setup(cli_env)
    for name, value in (env_or_setup or {}).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def with_demo(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))


@pytest.mark.parametrize(("argv", "env"), [pytest.param(c[1], c[2], id=c[0]) for c in BAD])
def test_bad_input_is_one_line_on_stderr(
    ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: Any,
    request: pytest.FixtureRequest,
) -> None:
    if not callable(env):  # the set-ups build their own data dir; the rest run next to group demo
        request.getfixturevalue("with_demo")
    _prepare(env, cli_env, monkeypatch)
    result = ncl(*argv)
    assert result.code in (1, 2)
    one_line_error(result)
    assert result.out == ""


@pytest.mark.parametrize(
    ("argv", "env", "code"),
    [
        pytest.param(c[1], c[2], c[3], id=c[0]) for c in BAD
    ],
)
def test_bad_input_exit_code(
    ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch, argv: list[str], env: Any, code: int,
    request: pytest.FixtureRequest,
) -> None:
    if not callable(env):
        request.getfixturevalue("with_demo")
    _prepare(env, cli_env, monkeypatch)
    assert ncl(*argv).code == code


def test_refused_create_leaves_the_groups_unchanged(ncl: Ncl, cli_env: CliEnv, with_demo: None) -> None:
    before = dump(cli_env.central_db)
    for argv in (["groups", "create", "../x"], ["groups", "create", "bot", "--channel", "bogus"],
                 ["groups", "create", "DEMO"], ["groups", "create", "bot", "--rules", "@missing-file"]):
        assert ncl(*argv).code == 1
    assert dump(cli_env.central_db) == before
    assert sorted(p.name for p in (cli_env.data_dir / "groups").iterdir()) == ["ag-demo"]


# --- end to end through the installed console script -----------------------------------------------


def _ncl_command() -> list[str]:
    script = Path(sys.executable).with_name("ncl")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from host.cli import main; main()"]


@pytest.mark.parametrize(
    ("argv", "extra_env", "code"),
    [
        pytest.param(["groups", "create", "../x", "--channel", "cli"], {}, 1, id="bad-name"),
        pytest.param(["sessions", "show", "sess-1781168400000-zzzzzz"], {}, 1, id="unknown-session"),
        pytest.param(["groups", "list"], {"NCL_MAX_RUNNERS": "many"}, 1, id="bad-setting"),
        pytest.param(["groups", "list", "--bogus"], {}, 2, id="usage"),
    ],
)
def test_console_script_end_to_end(tmp_path: Path, argv: list[str], extra_env: dict[str, str], code: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    env.update({"TZ": "UTC", "NCL_DATA_DIR": str(tmp_path / "data"), **extra_env})
    done = subprocess.run([*_ncl_command(), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ncl: "), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_a_data_dir_that_is_a_file_is_named_as_such(ncl: Ncl, cli_env: CliEnv, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """(Every command, ncl doctor too, said "[Errno 20] Not a directory: '…/central.db'".)"""
    (afile := tmp_path / "afile").write_text("x")
    monkeypatch.setenv("NCL_DATA_DIR", str(afile))
    assert one_line_error(ncl("doctor")) == f"ncl: NCL_DATA_DIR='{afile}' is not a directory"


@pytest.mark.parametrize("argv", [[], ["tasks"]], ids=["ncl", "ncl-tasks"])
def test_a_group_with_no_command_shows_its_help_as_it_is(tmp_path: Path, argv: list[str]) -> None:
    """(It was squeezed into one line: "ncl: Usage: … Options: … Commands: …".)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    env.update({"TZ": "UTC", "NCL_DATA_DIR": str(tmp_path / "data")})
    done = subprocess.run([*_ncl_command(), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == f"Usage: {' '.join(['ncl', *argv])} [OPTIONS] COMMAND [ARGS]..." and "Commands:" in lines


def test_console_script_json_output(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCL_", "ANTHROPIC_")) and k != "TZ"}
    env.update({"TZ": "UTC", "NCL_DATA_DIR": str(tmp_path / "data")})
    done = subprocess.run([*_ncl_command(), "groups", "list", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"groups": []}
    assert not (tmp_path / "data").exists()


# --- input files and texts are bounded: a clear line, never a blow-up -----------------------------------------


def test_inputs_past_their_bounds_are_one_line_and_write_nothing(ncl: Ncl, cli_env: CliEnv, tmp_path: Path) -> None:
    ok(ncl("groups", "create", "team", "--channel", "queue:jobs"))
    before = dump(cli_env.central_db)
    big = tmp_path / "job.json"
    big.write_text(json.dumps({"prompt": "a" * (1 << 20)}))
    deep = "[" * 5000 + "]" * 5000
    latin = tmp_path / "rules.txt"
    latin.write_bytes("Grüße".encode("latin-1"))
    cases = [
        (("queue", "send", "--queue", "jobs", "--file", str(big)), f"{big} is larger than 1048576 bytes"),
        (("queue", "send", "--queue", "jobs", "--json", deep), "payload is nested too deeply to read"),
        # /dev/zero never ends: read up to the bound and refused, at once
        (("groups", "create", "g", "--rules", "@/dev/zero"), "/dev/zero is larger than 262144 bytes"),
        (("groups", "create", "g", "--rules", "x" * (256 << 10 | 1)), "the rules are larger than 262144 bytes"),
        (("groups", "create", "g", "--rules", f"@{latin}"), f"{latin} is not UTF-8 text (byte 2)"),  # ü
        (("groups", "create", "g", "--rules", "Gr\udcfce"), "a value given is not UTF-8 text: 'Gr\\udcfce'"),
    ]
    for args, said in cases:
        assert one_line_error(ncl(*args)) == f"ncl: {said}", args
    assert dump(cli_env.central_db) == before
    assert not any((cli_env.data_dir / "v2-sessions").rglob("inbound.db"))


def test_times_past_the_calendar_are_one_line_or_mean_everything(ncl: Ncl) -> None:
    ok(ncl("groups", "create", "team", "--channel", "cli"))
    session = ok(ncl("sessions", "create", "--group", "team", "--json")).json()
    line = one_line_error(ncl("tasks", "add", "--session", session["id"], "--prompt", "p", "--recurrence",
                              "0 9 * * *", "--now", "9999-12-31T22:00:00Z"))
    assert line == "ncl: date value out of range"
    for back in ("999999d", "99999999999d"):  # further back than year 1: every line there is
        assert ok(ncl("logs", "--since", back)).code == 0


def test_a_damaged_table_is_one_line_pointing_at_doctor(ncl: Ncl, cli_env: CliEnv) -> None:
    """SQLite names no file when a page it reads is damaged: the line says which command finds it."""
    ok(ncl("groups", "create", "team", "--channel", "cli"))
    ok(ncl("sessions", "create", "--group", "team"))
    with closing(sqlite3.connect(cli_env.central_db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sessions'").fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    with cli_env.central_db.open("r+b") as file:
        file.seek((root - 1) * size)
        file.write(b"\xff" * size)
    assert one_line_error(ncl("sessions", "list")) == (
        "ncl: database disk image is malformed ('ncl doctor' checks every file and names the damaged one)")


@pytest.mark.parametrize("argv", [["groups", "create", "bot", "--model", "r\udcff"],  # b"r\xff" as Python reads it
                                  ["sessions", "create", "--group", "demo", "--thread", "r\udcff"],
                                  ["tasks", "show", "r\udcff"]])
def test_a_value_in_another_encoding_is_said_so(ncl: Ncl, with_demo: None, argv: list[str]) -> None:
    assert one_line_error(ncl(*argv)) == "ncl: a value given is not UTF-8 text: 'r\\udcff'"
