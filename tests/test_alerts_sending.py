"""Alerts (issue 16.6): where NCL_ALERT_CHANNEL sends them and how: to a webhook on 127.0.0.1 beside the sweeps (a
receiver that hangs or is gone holds up nothing; no redirect followed; refusals retried, then logged) or into a
group's chat session; and from real ``ncl`` processes (``ncl alerts test``, a running host, a one-off sweep).

Mailed alerts are in tests/test_alerts_mail.py, the spool that keeps them across a crash in test_alerts_spool.py."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alerts_kit import DAILY, T0, Receiver, occurrence, sender, standup, thread_receiver
from kit import World
from processes import Env, Host

from host.channels import alerts
from host.channels.alerts import ATTEMPTS, Alert
from host.settings import AlertTarget, Settings, SettingsError
from host.store import db, sessions

# --- the setting ---------------------------------------------------------------------------------------------------

def test_the_setting_takes_a_group_session_a_webhook_or_a_mail_address() -> None:
    read = [Settings.read({"NCL_ALERT_CHANNEL": text}).alert_target
            for text in ("", "session:admin", "webhook:https://hooks.example/T/B/x?k=1", "http://127.0.0.1:9",
                         "mail:ops@example.com", "mail:Agent@Example.org:ops@example.com")]
    assert read == [None, AlertTarget("session", "admin"), AlertTarget("webhook", "https://hooks.example/T/B/x?k=1"),
                    AlertTarget("webhook", "http://127.0.0.1:9"), AlertTarget("mail", "ops@example.com"),
                    AlertTarget("mail", "ops@example.com", "agent@example.org")]
    # As shown (logs, ncl alerts test): a webhook's path and query often hold its secret.
    assert [str(t) for t in read[1:]] == ["session:admin", "webhook:https://hooks.example/…",
                                          "webhook:http://127.0.0.1:9", "mail:ops@example.com",
                                          "mail:agent@example.org:ops@example.com"]
    for bad in ("slack", "session:", "session:no spaces", "ftp://x", "webhook:http://", "http://h:99999/"):
        with pytest.raises(SettingsError, match="NCL_ALERT_CHANNEL"):
            Settings.read({"NCL_ALERT_CHANNEL": bad})
    for bad in ("mail:", "mail:ops", "mail:ops@example.com:", "mail:a@x.org:b@x.org:c@x.org", "mail:ops@ex ample.com",
                "mail:ops@example.com\nBcc: all@example.com"):
        with pytest.raises(SettingsError, match=r"^invalid setting NCL_ALERT_CHANNEL=.*: expected mail:TO_ADDRESS "
                                                r"\(sent from the only mailbox\) or mail:MAILBOX_ADDRESS:TO_ADDRESS$"):
            Settings.read({"NCL_ALERT_CHANNEL": bad})


# --- sending -------------------------------------------------------------------------------------------------------

async def test_a_receiver_that_hangs_costs_each_attempt_its_timeout_and_holds_up_no_sweep(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world, hanging, answering = World(tmp_path), Receiver(status=None), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    sweeper = world.sweeper()
    async with hanging.running() as dead_url, answering.running() as url:
        out = sender(world, dead_url, timeout_s=0.2)
        serving = asyncio.create_task(out.serve())
        with alerts.reporting(out):
            assert sweeper.tick(T0 + timedelta(days=3)).missed == 1  # an alert on its way to the hanging receiver
            await hanging.until(1)  # the sender took it and waits on the receiver ...
            assert [a.event for a in out.pending] == ["task_missed"]  # (spooled until sent or given up)
            for day in range(4, 7):  # ... while the sweeps go on, each raising its own alert
                row_id, at = occurrence(world, task)
                assert world.run_occurrence(sweeper, row_id, at + timedelta(minutes=1)).sessions_opened == 1
                assert day < 6 or world.runs(task)[-1]["outcome"] == "ran"
        await hanging.until(ATTEMPTS)
        out.target = AlertTarget("webhook", url)  # the receiver is back: the next alert goes through
        out.put(Alert("test", "back", "2026-06-01T12:00:00.000Z"))
        await answering.until(1)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await out.aclose()
    assert hanging.connections == ATTEMPTS and hanging.events == ["task_missed"] * ATTEMPTS
    failed = [r for r in caplog.records if getattr(r, "action", None) == "alert_failed"]
    assert len(failed) == 1 and "no answer within 0.2 s" in failed[0].getMessage()
    assert answering.events == ["test"]


async def test_a_redirect_is_not_followed_and_a_refusal_is_retried_then_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world, elsewhere = World(tmp_path), Receiver()
    async with elsewhere.running() as other_url:
        moved, refusing = Receiver(302, f"Location: {other_url}\r\n"), Receiver(500)
        async with moved.running() as moved_url, refusing.running() as refusing_url:
            for url in (moved_url, refusing_url):
                out = sender(world, url)
                out.put(Alert("test", "hello", "2026-06-01T12:00:00.000Z"))
                await out.drain()
                await out.aclose()
    assert (moved.connections, refusing.connections, elsewhere.connections) == (ATTEMPTS, ATTEMPTS, 0)
    said = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "alert_failed"]
    assert len(said) == 2 and "answered HTTP 302" in said[0] and "answered HTTP 500" in said[1]
    assert all("s3cret" not in r.getMessage() for r in caplog.records)  # the path is not logged (nor by httpx)


async def test_a_session_target_puts_the_alert_in_the_groups_chat_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, NCL_ALERT_CHANNEL="session:demo")
    task = world.schedule(T0, recurrence=DAILY)
    out = alerts.alerts_of(world.settings, now=lambda: T0)
    assert out is not None
    with alerts.reporting(out):
        world.sweeper().tick(T0 + timedelta(days=3))
    opened_in: set[str] = set()  # the threads that opened a database while the alert went out
    connect = db.connect

    def recorded(*args: Any, **kwargs: Any) -> Any:
        opened_in.add(threading.current_thread().name)
        return connect(*args, **kwargs)

    monkeypatch.setattr(db, "connect", recorded)
    await out.drain()
    monkeypatch.setattr(db, "connect", connect)
    assert opened_in and threading.current_thread().name not in opened_in  # never the host loop's thread
    chat = sessions.by_thread(world.central, world.settings, world.group.id, "cli")  # where `ncl chat demo` talks
    assert chat is not None
    (row,) = [r for r in world.rows(session=chat) if r["kind"] == "chat"]
    notice = json.loads(row["content"])
    assert (notice["notice"], notice["sender"], row["trigger"]) == ("alert", "system", 0)
    assert notice["text"].startswith("Alert (task_missed): task ") and f"task {task}" in notice["text"]
    assert f"session {world.session.id}" in notice["text"] and "group demo" in notice["text"]


# --- real processes ------------------------------------------------------------------------------------------------

def test_ncl_alerts_test_says_in_one_line_whether_the_alert_got_there(tmp_path: Path) -> None:
    env = Env(tmp_path)
    with thread_receiver() as (url, got):
        env.vars["NCL_ALERT_CHANNEL"] = f"webhook:{url}"
        shown = f"webhook:{url.rsplit('/', 1)[0]}/…"  # the path is not shown: it often holds a secret
        assert env.ok("alerts", "test") == f"test alert sent to {shown}\n"
        assert json.loads(env.ok("alerts", "test", "--json")) == {"target": shown, "event": "test", "sent": True}
        first = got.get(timeout=5)
        assert first["event"] == "test" and "test alert" in first["text"] and got.get(timeout=5)["event"] == "test"
    with thread_receiver(status=404) as (url, got):
        env.vars["NCL_ALERT_CHANNEL"] = url
        done = env.ncl("alerts", "test")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr.splitlines() == [f"ncl: webhook:{url.rsplit('/', 1)[0]}/… answered HTTP 404"]
        assert got.get(timeout=5)["event"] == "test" and got.empty()  # one attempt: the test says what happened
    env.vars["NCL_ALERT_CHANNEL"] = ""
    done = env.ncl("alerts", "test")
    assert done.returncode == 1 and done.stderr.startswith("ncl: NCL_ALERT_CHANNEL is not set")
    env.vars["NCL_ALERT_CHANNEL"] = "mail:ops@example.com"  # no mailbox to send it from (tests/test_alerts_mail.py)
    done = env.ncl("alerts", "test")
    assert (done.returncode, done.stderr) == (1, "ncl: mail:ops@example.com: there is no mailbox to send it from "
                                                 "('ncl mailbox create', see the README)\n")


def test_a_running_host_posts_the_alert_of_a_missed_slot(tmp_path: Path) -> None:
    env = Env(tmp_path)
    session, task = standup(env)
    with thread_receiver() as (url, got):
        host = Host(env, NCL_ALERT_CHANNEL=url, NCL_MISFIRE_GRACE_S="0")
        try:
            host.wait_for_action("alert_sent")
            body = got.get(timeout=5)
        finally:
            host.stop(signal.SIGTERM)
    assert body["event"] == "task_missed" and body["task"] == task
    assert (body["session"], body["group"]) == (session, "team")
    assert got.empty()


def test_a_one_off_sweep_sends_what_it_raised_before_it_exits(tmp_path: Path) -> None:
    env = Env(tmp_path)
    _, task = standup(env)
    with thread_receiver() as (url, got):
        env.vars["NCL_ALERT_CHANNEL"] = url
        data = json.loads(env.ok("host", "sweep", "--once", "--now", "2026-01-05T12:00:00", "--json"))
        assert data["missed"] == 1
        body = got.get_nowait()  # sent (and answered) before the command returned
    assert body["event"] == "task_missed" and body["task"] == task
    assert "missed 5 slot(s)" in body["text"]  # Jan 1-5, 09:00 UTC
    assert got.empty()
