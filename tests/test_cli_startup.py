"""Issue 14.5, a CLI that starts at once: which modules a real ``ncl`` process imports (``-X importtime`` through
PYTHONPROFILEIMPORTTIME), never how long it takes (scripts/bench_cli.py times it).

``ncl --version`` imports neither the settings nor pydantic, nor importlib.metadata (the version is
``host.__version__``), nor pathlib (no import hook of an editable install runs as the venv's Python starts);
``ncl --help`` none of them nor any command's module (it lists them by their summaries);
``ncl tasks list`` none of the host loop, runtimes, model proxy, HTTP clients, project-task firing or asyncio, nor
pydantic (the settings and the rows it reads go without; writes validate with it), nor what only the writes, ``tasks
show`` or other commands use (the cron parser, the planning of runs, the outbox, mailboxes, the task id registry,
OpenSSL through secrets and hashlib, shutil, ctypes: each about 1 to 15 ms of start-up); a one-shot ``ncl chat``
only the client of the CLI socket (its wire format, the settings), none of the host's side of it, the store or
sqlite3 either. A top-level import of any of them put back in the modules these commands load fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from processes import Env, Host

from host.cli import COMMANDS, cli, summaries
from host.files.lock import host_lock
from host.runtimes.published import publish

# What only ``ncl host``, ``doctor``, ``status``, ``image``, the interactive ``chat`` or ``scheduled-task`` need (a
# name and its submodules).
HEAVY = ("anthropic", "asyncio", "docker", "httpx", "httpx2", "mcp", "yaml", "host.loop", "host.runtimes.docker",
         "host.runtimes.pool", "host.runtimes.proxy", "host.project_tasks.fire", "host.project_tasks.targets",
         "host.scheduling.sweep")
SETTINGS = ("pydantic", "pydantic_core", "host.settings", "host.store", "sqlite3")
# The host's side of the CLI socket, and the interactive chat's status line (it reads the store).
CHAT_SERVER = ("host.channels.cli", "host.channels.router", "host.channels.nudge", "host.cli.chat_status")
# What ``ncl tasks list`` needs none of, though the commands beside it in host/cli/tasks.py do.
NOT_LISTING = ("croniter", "schemas.cron", "schemas.recurring", "host.scheduling.tasks", "host.scheduling.recurrence",
               "host.store.outbox", "host.store.mailboxes", "host.store.views", "host.store.task_ids", "secrets",
               "hashlib", "host.store.groups")
# What reading the store needs on no path of ``ncl tasks list``: shutil (a failed session creation removes its
# files, a table on a terminal asks its width) loads the compression modules, ctypes (a file opened beneath a
# runner's folder) its own runtime: about 2 ms each.
RARE = ("shutil", "ctypes")
# The classes it makes are NamedTuples or plain: a frozen dataclass compiles its generated methods when made (~5M
# instructions each, schemas/rows.py held three).
CLASSES = ("dataclasses",)
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def imported(env: Env, *args: str) -> tuple[str, list[str], set[str]]:
    """What ``ncl ARGS`` printed on stdout and (the import report aside) on stderr, and every module its process
    imported."""
    env.vars["PYTHONPROFILEIMPORTTIME"] = "1"
    try:
        done = env.ncl(*args)
    finally:
        del env.vars["PYTHONPROFILEIMPORTTIME"]
    said = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 0, said
    return done.stdout, said, {m[1] for line in done.stderr.splitlines() if (m := IMPORTED.match(line))}


def among(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in names))


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """A data dir with one session holding one task series."""
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["id"]
    env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence", "0 9 * * *")
    return env


def test_version_imports_no_settings_and_nothing_heavy(env: Env) -> None:
    out, _, modules = imported(env, "--version")
    assert out.startswith("ncl, version ")
    assert "click" in modules  # the parse sees what was imported
    assert among(modules, HEAVY + SETTINGS + ("importlib.metadata", "email")) == []
    # The venv's Python starts with no import hook of the editable install (pyproject.toml: the packages' folder is
    # on the path through a plain .pth); setuptools' hook loaded pathlib and importlib.util into every process.
    assert among(modules, ("pathlib", "importlib.util")) == []
    assert [m for m in modules if m.startswith("__editable__")] == []


def test_help_imports_no_command_module_and_nothing_heavy(env: Env) -> None:
    out, _, modules = imported(env, "--help")
    listed = out.partition("Commands:")[2]
    assert all(f"  {name} " in listed for name in COMMANDS)
    assert "  tasks           Scheduled task series: one line per series, addressed..." in listed  # shortened to fit
    assert among(modules, HEAVY + SETTINGS + ("host.cli.app", "host.cli.tasks", "host.cli.hostcmd")) == []


def test_the_summaries_help_lists_are_the_commands_own_help() -> None:
    """``ncl --help`` lists the stand-ins of ``summaries``: each says what its command's own help would, at any
    width."""
    with click.Context(cli) as ctx:
        for name, stand_in in summaries().commands.items():
            command = cli.get_command(ctx, name)
            assert command is not None and not command.hidden
            for limit in (30, 45, 60, 10**6):
                assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit), name


def test_tasks_list_imports_nothing_of_the_host_machinery(env: Env) -> None:
    out, said, modules = imported(env, "tasks", "list")
    assert "standup" in out  # the series was read from its session's inbox
    assert said == []
    assert {"host.settings", "host.scheduling.task_list"} <= modules
    assert among(modules, (*HEAVY, "pydantic", "dotenv")) == []  # the settings are read without them
    assert among(modules, NOT_LISTING + RARE + CLASSES) == []


def test_the_task_commands_beside_the_list_still_import_what_it_goes_without(env: Env) -> None:
    """The counter-check of NOT_LISTING: ``tasks show`` plans the next runs (the cron parser), ``tasks add`` makes an
    id (secrets) and plans a series."""
    listed = json.loads(env.ok("tasks", "list", "--json"))["tasks"][0]["id"]
    _, _, shown = imported(env, "tasks", "show", listed)
    assert {"croniter", "schemas.recurring", "host.store.task_ids"} <= shown
    session = json.loads(env.ok("sessions", "list", "--json"))["sessions"][0]["id"]
    _, _, added = imported(env, "tasks", "add", "--session", session, "--prompt", "later", "--at", "2099-01-01T09:00")
    assert {"secrets", "host.scheduling.tasks", "host.store.task_ids"} <= added


def test_with_a_host_running_in_another_zone_tasks_list_warns_and_still_imports_nothing_heavy(env: Env) -> None:
    """The zone check reads the running host's published state, without the runner pool."""
    with host_lock(env.data_dir):  # held by this process: to the ncl process, a host is running
        publish(env.data_dir, {"zone": "America/New_York", "runners": [], "waiting": []})
        out, said, modules = imported(env, "tasks", "list")
    assert "standup" in out
    assert len(said) == 1 and "uses TZ=America/New_York, this command TZ=UTC" in said[0]
    assert "host.runtimes.published" in modules
    assert among(modules, HEAVY) == []


@pytest.mark.slow
def test_a_one_shot_chat_imports_the_socket_client_alone(env: Env) -> None:
    """A real host answers (mock provider); the ``ncl chat`` process loads the settings and the socket's wire format,
    nothing of the host's side, the store or pydantic."""
    host = Host(env, NCL_PROVIDER="mock", NCL_IDLE_TIMEOUT_S="30")
    try:
        host.wait_for_action("host_started")
        out, said, modules = imported(env, "chat", "demo", "hello")
    finally:
        host.kill()
    assert (out, said) == ("mock: hello\n", [])
    assert {"host.settings", "host.channels.cli_protocol", "host.runtimes.published"} <= modules
    assert among(modules, HEAVY + CHAT_SERVER + ("pydantic", "dotenv", "host.store", "sqlite3")) == []


# What the groups of the host's machinery import only when one of their commands runs.
MACHINERY = ("pydantic", "yaml", "docker", "anthropic", "httpx", "httpx2", "mcp", "host.loop", "host.runtimes.pool",
             "host.scheduling.sweep", "host.project_tasks", "host.channels.alerts", "host.channels.router",
             "schemas.requests")


@pytest.mark.parametrize("command", ["host", "doctor", "scheduled-task", "alerts", "queue"])
def test_the_help_of_a_command_of_the_machinery_imports_none_of_it(env: Env, command: str) -> None:
    """They import it when they run: ``--help`` took 390 ms (host), 295 (doctor: schemas.requests' pydantic models,
    for one constant), 280 (scheduled-task: the specs' pydantic models and YAML), about 145 (alerts, queue)."""
    out, _, modules = imported(env, command, "--help")
    assert out.startswith(f"Usage: ncl {command} ")
    assert among(modules, MACHINERY) == []


def test_a_commands_help_reads_no_setting_so_shows_with_an_invalid_one(env: Env) -> None:
    """The settings are loaded when a command asks for them, which its ``--help`` never does; the command itself
    still refuses the setting."""
    env.vars["NCL_MAX_RUNNERS"] = "0"
    for args in (("tasks", "--help"), ("tasks", "list", "--help")):
        out, said, _ = imported(env, *args)
        assert out.startswith(f"Usage: ncl {' '.join(args[:-1])} ") and said == []
    done = env.ncl("tasks", "list")
    assert done.returncode == 1 and "invalid setting NCL_MAX_RUNNERS='0'" in done.stderr


def test_a_sweep_still_imports_the_machinery(env: Env) -> None:
    """The counter-check: a command that needs the machinery imports it, and the parse sees it."""
    _, _, modules = imported(env, "host", "sweep", "--once", "--now", "2030-01-01T00:00:00Z", "--json")
    assert {"host.scheduling.sweep", "host.runtimes.pool", "host.project_tasks.fire"} <= modules


def test_every_listed_command_is_found_under_its_own_name() -> None:
    with click.Context(cli) as ctx:
        for name in cli.list_commands(ctx):
            command = cli.get_command(ctx, name)
            assert command is not None and command.name == name
    assert cli.list_commands(click.Context(cli)) == sorted(COMMANDS)


def test_a_mistyped_command_is_matched_against_commands_not_yet_imported(tmp_path: Path) -> None:
    done = Env(tmp_path).ncl("taks")
    assert done.returncode == 2
    assert "No such command 'taks'" in done.stderr and "'tasks'" in done.stderr
