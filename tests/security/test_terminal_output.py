"""Issue 11, point 6: agent-written and stored text never reaches an operator's terminal raw. Every human output
shows control characters (C0 but newline and tab, ESC, DEL, C1) and bidi overrides as escapes (``\\x1b``,
``\\x9b``, ``\\u202e``); ``--json`` prints the exact text, as before.

Each command runs in-process (the ``ncl`` fixture) on hostile text stored where an agent or a peer could put it: a
reply in outbound.db, a task prompt and a run's detail, a session's thread key, a group's model and rules, a
scheduled task's name and a run's output, a data dir path; ``ncl chat`` against a running host whose mock agent
echoes the text back, once and in a terminal.
"""

from __future__ import annotations

import ast
import itertools
import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cli_kit import Ncl, ok
from processes import Env, Host
from security_kit import ROOT

from host.cli.terminal import VisibleFormatter, cell, visible

if TYPE_CHECKING:
    from conftest import CliEnv

# A clipboard write, a screen clear, a window title, an 8-bit CSI, a right-to-left override, DEL.
HOSTILE = "\x1b]52;c;aGFja2Vk\x07\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eexe.txt\x7f"
SHOWN = "\\x1b]52;c;aGFja2Vk\\x07\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\u202eexe.txt\\x7f"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
AT = "2026-06-11T09:00:00.000Z"


def safe(text: str) -> str:
    """Human output: no character a terminal would obey (but newline), and the hostile text shown escaped."""
    found = RAW.search(text)
    assert found is None, f"raw {found.group()!r} in {text!r}"
    assert SHOWN[:40] in text, text
    return text


def same_json(out: str) -> Any:
    """--json output: exactly what json.dumps(indent=2, ensure_ascii=False) wrote before issue 11."""
    data = json.loads(out)
    assert out == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return data


def _write(path: Path, sql: str, *args: Any) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, args)


@pytest.fixture
def session(ncl: Ncl) -> dict[str, Any]:
    ok(ncl("groups", "create", "demo", "--channel", "cli", "--model", HOSTILE, "--rules", f"{HOSTILE}\nline two"))
    data: dict[str, Any] = ok(ncl("sessions", "create", "--group", "demo", "--thread", HOSTILE, "--json")).json()
    return data


def test_visible_escapes_every_control_character_and_keeps_the_rest() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        shown = visible(chr(code))
        assert not RAW.search(shown) and (shown in "\n\t" or shown.startswith("\\")), (hex(code), shown)
    assert visible("a\nb\tc") == "a\nb\tc" and cell("a\nb\tc") == "a\\nb\\tc"
    assert visible("\r\x1b\x9b\u202e\ud800") == "\\r\\x1b\\x9b\\u202e\\ud800"
    plain = "plain text, ünïcödé, 日本語, emoji 🙂, C:\\path"
    assert visible(plain) == plain


def test_exactly_the_characters_a_terminal_obeys_are_escaped() -> None:
    """The module's list, bound by bound (its table is filled as characters are met): C0, DEL and C1 controls, the
    line and paragraph separators, bidi embeddings, overrides and isolates, lone surrogates; each shown as a string
    literal writes it. Every code point of the BMP (all of the list is there) and two beyond."""
    obeyed = {*range(0x20), *range(0x7F, 0xA0), *range(0x2028, 0x202F), *range(0x2066, 0x206A), *range(0xD800, 0xE000)}
    every = "".join(map(chr, [*range(0x10000), 0x1F642, 0x10FFFF]))
    for shown, kept in ((visible, "\n\t"), (cell, "")):
        expected = "".join(repr(char)[1:-1] if ord(char) in obeyed and char not in kept else char for char in every)
        assert shown(every) == expected
        assert shown(every) == expected  # the second time from the filled table


def test_messages_list_shows_a_hostile_reply_escaped_and_json_keeps_it(ncl: Ncl, session: dict[str, Any]) -> None:
    folder = Path(session["path"])
    _write(folder / "inbound.db", "INSERT INTO messages_in(id, seq, kind, timestamp, status, content)"
                                  " VALUES ('msg-1', 2, 'chat', ?, 'completed', ?)", AT, json.dumps({"text": "hi"}))
    _write(folder / "outbound.db", "INSERT INTO messages_out(id, seq, in_reply_to, timestamp, kind, content)"
                                   " VALUES ('msg-2', 1, 'msg-1', ?, 'chat', ?)",
           AT, json.dumps({"text": f"{HOSTILE}\nsecond line"}))
    table = safe(ok(ncl("messages", "list", "--session", session["id"])).out)
    assert len(table.splitlines()) == 3, "a reply's newline broke the table's row"
    data = same_json(ok(ncl("messages", "list", "--session", session["id"], "--json")).out)
    assert data["messages"][1]["text"] == f"{HOSTILE}\nsecond line"


def test_task_prompt_and_run_detail_are_escaped_in_list_show_runs_and_status(ncl: Ncl,
                                                                            session: dict[str, Any]) -> None:
    added = ok(ncl("tasks", "add", "--session", session["id"], "--prompt", HOSTILE, "--at", "2026-06-12T09:00:00Z",
                   "--now", "2026-06-11T09:00:00Z", "--json")).json()
    _write(Path(session["path"]) / "inbound.db", "INSERT INTO task_runs(id, series_id, outcome, detail, finished_at)"
                                                 " VALUES ('run-1', ?, 'gate_error', ?, ?)", added["id"], HOSTILE, AT)
    for args in (["tasks", "list"], ["tasks", "show", added["id"]], ["tasks", "runs", added["id"]], ["status"]):
        safe(ok(ncl(*args)).out)
    assert same_json(ok(ncl("tasks", "list", "--json")).out)["tasks"][0]["prompt"] == HOSTILE
    assert same_json(ok(ncl("tasks", "show", added["id"], "--json")).out)["task"]["prompt"] == HOSTILE
    assert same_json(ok(ncl("tasks", "runs", added["id"], "--json")).out)["runs"][0]["detail"] == HOSTILE
    assert same_json(ok(ncl("status", "--json")).out)["next_due"][0]["text"] == HOSTILE


def test_sessions_and_groups_show_thread_model_and_rules_escaped(ncl: Ncl, session: dict[str, Any]) -> None:
    for args in (["sessions", "list"], ["sessions", "show", session["id"]], ["groups", "list"],
                 ["groups", "show", "demo"]):
        safe(ok(ncl(*args)).out)
    shown = ok(ncl("groups", "show", "demo")).out
    assert re.search(r"\n +line two\n", shown), "a multi-line value's next lines line up under its first"
    assert same_json(ok(ncl("sessions", "list", "--json")).out)["sessions"][0]["thread_key"] == HOSTILE
    assert same_json(ok(ncl("sessions", "show", session["id"], "--json")).out)["thread_key"] == HOSTILE
    assert same_json(ok(ncl("groups", "list", "--json")).out)["groups"][0]["model"] == HOSTILE
    assert same_json(ok(ncl("groups", "show", "demo", "--json")).out)["rules"] == f"{HOSTILE}\nline two"


def test_scheduled_task_name_and_run_output_are_escaped(ncl: Ncl, cli_env: CliEnv) -> None:
    ok(ncl("groups", "create", "jobs", "--channel", "queue:support-jobs"))
    spec = cli_env.root / "t.yaml"
    spec.write_text("version: v1\nkind: ScheduledTask\nschedule: 30 17 * * *\n"
                    f"name: {json.dumps(HOSTILE)}\n"
                    "queue: {name: support-jobs, payload: {prompt: Generate the daily summary.}}\n")
    task = ok(ncl("scheduled-task", "add", "--file", str(spec), "--now", "2026-06-11T09:00:00Z", "--json")).json()
    _write(cli_env.central_db, "INSERT INTO scheduled_task_runs(id, task_id, status, scheduled_for, output_tail,"
                               " error) VALUES ('run-1', ?, 'failed', ?, ?, ?)", task["id"], AT, HOSTILE, HOSTILE)
    for args in (["scheduled-task", "list"], ["scheduled-task", "runs", task["id"]], ["status"]):
        safe(ok(ncl(*args)).out)
    listed = same_json(ok(ncl("scheduled-task", "list", "--json")).out)["scheduled_tasks"]
    assert listed[0]["name"] == HOSTILE
    run = same_json(ok(ncl("scheduled-task", "runs", task["id"], "--json")).out)["runs"][0]
    assert (run["output_tail"], run["error"]) == (HOSTILE, HOSTILE)


def test_doctor_shows_a_hostile_data_dir_escaped(ncl: Ncl, cli_env: CliEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile_dir = cli_env.root / HOSTILE.replace("/", "_")
    monkeypatch.setenv("NCL_DATA_DIR", str(hostile_dir))
    monkeypatch.setenv("NCL_RUNTIME", "local")
    done = ncl("doctor")
    safe(done.out + done.err)
    checks = same_json(ncl("doctor", "--json").out)["checks"]
    assert any(HOSTILE.replace("/", "_") in c["detail"] for c in checks)


def test_errors_and_log_lines_are_one_line_and_escaped(ncl: Ncl, session: dict[str, Any]) -> None:
    refused = ncl("tasks", "show", f"task-{HOSTILE}\nsecond line")
    assert refused.code == 1 and len(refused.err.splitlines()) == 1
    assert not RAW.search(refused.err), refused.err
    unread = ncl("groups", "create", "other", "--rules", f"@{HOSTILE}\nsecond line")  # a message quoting raw text
    assert unread.code == 1 and len(unread.err.splitlines()) == 1
    safe(unread.err)
    record = logging.LogRecord("host", logging.WARNING, __file__, 1, "rejected: %s", (HOSTILE,), None)
    assert not RAW.search(VisibleFormatter("%(message)s").format(record))


def test_the_hosts_log_lines_show_agent_text_escaped(tmp_path: Path) -> None:
    """The real console script at INFO: a runner's request whose ``action`` is hostile is logged as rejected."""
    env = Env(tmp_path)
    env.ok("groups", "create", "demo", "--channel", "cli")
    folder = Path(json.loads(env.ok("sessions", "create", "--group", "demo", "--json"))["path"])
    _write(folder / "outbound.db", "INSERT INTO messages_out(id, seq, timestamp, kind, content)"
                                   " VALUES ('sys-1781182800000-aaaaaa', 1, ?, 'system', ?)",
           AT, json.dumps({"action": HOSTILE, "taskId": "task-1781182800000-aaaaaa"}))
    done = env.ncl("host", "sweep", "--once", "--now", "2026-06-11T13:00:00Z")
    assert done.returncode == 0, done.stderr
    assert "request was rejected" in done.stderr
    safe(done.stderr)


@pytest.fixture
def host(ncl: Ncl, cli_env: CliEnv) -> Iterator[Env]:
    ok(ncl("groups", "create", "demo", "--channel", "cli"))
    env = Env(cli_env.root)  # the same data dir as the in-process CLI: root/data
    running = Host(env, NCL_IDLE_TIMEOUT_S="30")
    running.wait_for_action("host_started")
    yield env
    running.kill()


def test_chat_once_prints_the_agents_reply_escaped(ncl: Ncl, host: Env) -> None:
    """The mock agent answers ``mock: <the message>``: an agent repeating what it read."""
    shown = ok(ncl("chat", "demo", HOSTILE, "--timeout", "60"))
    assert safe(shown.out).startswith("mock: ")
    [reply] = same_json(ok(ncl("chat", "demo", HOSTILE, "--timeout", "60", "--json")).out)["replies"]
    assert reply["text"] == f"mock: {HOSTILE}"


def test_interactive_chat_shows_the_agents_reply_escaped(host: Env) -> None:
    from test_chat_interactive import chatting

    with chatting(host) as term:
        # Ctrl-V before a control key inserts it literally (readline's quoted-insert, or the tty's lnext).
        term.type("say \x16\x1b]52;c;aGk=\x16\x07 done\r")
        term.wait_for("done\r\n> ")
        term.wait_for("mock: say ")
        term.wait_for(" done")
        assert "\x1b]52" not in term.screen and "\\x1b]52;c;aGk=\\x07 done" in term.screen, term.screen


# --- nothing prints around the one funnel -------------------------------------------------------------------------

PRINTERS = {"click.echo", "click.secho", "print", "sys.stdout.write", "sys.stderr.write"}


def _printer_calls(tree: ast.AST) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
    """Every call of a printing function, with the chain of nodes enclosing it."""
    def walk(node: ast.AST, chain: list[ast.AST]) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
        if isinstance(node, ast.Call) and ast.unparse(node.func) in PRINTERS:
            yield node, chain
        for child in ast.iter_child_nodes(node):
            yield from walk(child, [*chain, node])
    yield from walk(tree, [])


def _allowed(call: ast.Call, chain: list[ast.AST]) -> bool:
    if all(isinstance(a, ast.Constant) for a in call.args):  # a literal of our own ("", "\r")
        return True
    for outer, inner in itertools.pairwise(chain):
        if isinstance(inner, ast.FunctionDef) and inner.name == "human":  # a printer handed to emit
            return True
        if isinstance(inner, ast.Lambda) and isinstance(outer, ast.Call) and getattr(outer.func, "id", "") == "emit":
            return True
    return False


def test_every_human_output_of_the_cli_goes_through_the_escaping_funnel() -> None:
    """``click.echo`` only inside a printer handed to ``emit`` (which escapes what it prints) or with a literal;
    anything else prints with ``say``. So a new command cannot print agent text raw by forgetting."""
    stray = []
    for path in sorted((ROOT / "host" / "cli").glob("*.py")):
        if path.name in ("output.py", "terminal.py"):
            continue
        for call, chain in _printer_calls(ast.parse(path.read_text())):
            if not _allowed(call, chain):
                stray.append(f"{path.name}:{call.lineno}")
    assert stray == []
