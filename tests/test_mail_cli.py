"""Issue 17.1: ``ncl mailbox create|list|show|delete`` (``--json`` everywhere) and ``--channel mail:ADDRESS`` on
``ncl groups create|update``: a mailbox in central.db with its password only as the name of a variable, a channel
naming an unknown mailbox refused in one line. No server is needed: nothing here connects."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from processes import Env

CREATE = ("mailbox", "create", "--address", "Agent@Example.org", "--imap", "imap.example.org:993",
          "--smtp", "smtp.example.org:465", "--user", "agent@example.org", "--password-env", "AGENT_MAIL_PASSWORD",
          "--allow", "alice@example.org", "--allow", "*@team.example.org")


def refused(env: Env, *args: str) -> str:
    done = env.ncl(*args)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_a_mailbox_is_stored_listed_shown_and_deleted(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.vars["AGENT_MAIL_PASSWORD"] = "hunter2-not-stored"
    made = json.loads(env.ok(*CREATE, "--json"))
    assert made == {"address": "agent@example.org", "imap_host": "imap.example.org", "imap_port": 993,
                    "smtp_host": "smtp.example.org", "smtp_port": 465, "username": "agent@example.org",
                    "password_env": "AGENT_MAIL_PASSWORD", "tls": "ssl",
                    "allow": ["alice@example.org", "*@team.example.org"], "created_at": made["created_at"]}
    with closing(sqlite3.connect(env.data_dir / "central.db")) as conn:
        dumped = "\n".join(conn.iterdump())
    assert "hunter2" not in dumped and "AGENT_MAIL_PASSWORD" in dumped

    listed = json.loads(env.ok("mailbox", "list", "--json"))["mailboxes"]
    assert [(m["address"], m["group"]) for m in listed] == [("agent@example.org", None)]
    assert "agent@example.org" in env.ok("mailbox", "list")

    env.ok("groups", "create", "support", "--channel", "mail:agent@EXAMPLE.org")
    assert json.loads(env.ok("groups", "show", "support", "--json"))["channels"] == ["mail:agent@example.org"]
    shown = json.loads(env.ok("mailbox", "show", "agent@example.org", "--json"))
    assert shown["group"] == "ag-support" and shown["password_env"] == "AGENT_MAIL_PASSWORD"
    text = env.ok("mailbox", "show", "agent@example.org")
    assert "AGENT_MAIL_PASSWORD" in text and "hunter2" not in text

    assert "wired to group ag-support" in refused(env, "mailbox", "delete", "agent@example.org")
    env.ok("groups", "update", "support", "--remove-channel", "mail:agent@example.org")
    assert json.loads(env.ok("mailbox", "delete", "agent@example.org", "--json")) == {
        "address": "agent@example.org", "deleted": True}
    assert json.loads(env.ok("mailbox", "list", "--json")) == {"mailboxes": []}
    assert "unknown mailbox" in refused(env, "mailbox", "show", "agent@example.org")


def test_a_channel_naming_no_mailbox_is_refused_in_one_line(tmp_path: Path) -> None:
    env = Env(tmp_path)
    error = refused(env, "groups", "create", "g", "--channel", "mail:a@example.org")
    assert "unknown mailbox 'a@example.org'" in error and "ncl mailbox create" in error
    assert json.loads(env.ok("groups", "list", "--json"))["groups"] == []  # nothing half made
    env.ok("groups", "create", "g", "--channel", "cli")
    assert "unknown mailbox" in refused(env, "groups", "update", "g", "--channel", "mail:a@example.org")
    assert "invalid mail address" in refused(env, "groups", "create", "h", "--channel", "mail:not-an-address")


def test_bad_mailbox_options_are_refused_in_one_line(tmp_path: Path) -> None:
    env = Env(tmp_path)
    base = dict(zip(CREATE[2::2], CREATE[3::2], strict=False))
    cases = {
        "--imap": ("imap.example.org", "invalid IMAP server"),
        "--smtp": ("smtp.example.org:99999", "invalid SMTP server"),
        "--password-env": ("hunter2 with spaces", "the NAME of the variable"),
        "--address": ("nobody", "invalid mail address"),
        "--allow": ("alice", "invalid sender pattern"),
    }
    for option, (value, said) in cases.items():
        args = [arg for key, val in {**base, option: value}.items() for arg in (key, val)]
        assert said in refused(env, "mailbox", "create", *args), option
    env.ok(*CREATE)
    assert "already exists" in refused(env, *CREATE)


def mail_check(env: Env) -> dict[str, object]:
    done = env.ncl("doctor", "--json")
    checks = json.loads(done.stdout)
    return next(c for c in (checks["checks"] if isinstance(checks, dict) else checks) if c["name"] == "mail")


def test_doctor_says_an_empty_allow_list_refuses_everything(tmp_path: Path) -> None:
    env = Env(tmp_path)
    assert mail_check(env) == {"name": "mail", "ok": True, "level": "ok", "detail": "no mailboxes"}
    env.ok("mailbox", "create", *CREATE[2:12])  # no --allow
    check = mail_check(env)
    assert check["level"] == "warn" and "allow-list is empty: every mail is refused" in str(check["detail"])
    env.ok("groups", "create", "support", "--channel", "mail:agent@example.org")
    check = mail_check(env)  # wired, and its password variable is not set: it cannot work
    assert check["level"] == "fail" and "AGENT_MAIL_PASSWORD is not set" in str(check["detail"])
