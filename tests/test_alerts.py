"""Alerts (issue 16.6): each kind of trouble reaches NCL_ALERT_CHANNEL once per event, sent beside the sweeps (a
receiver that hangs or is gone holds up nothing), to a webhook on 127.0.0.1 or into a group's chat session.

Events are driven by the deterministic kit (real SQLite files, a fake clock, single ticks); the receivers are real
HTTP servers on 127.0.0.1: an asyncio one in the test's loop, a threaded one for ``ncl`` processes."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import queue
import re
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kit import FakeClock, RecordingRuntime, World, utc
from processes import Env, Host
from scheduled_project import HEAD, SLOT, Project
from scheduled_project import project as project  # the fixture

from host.channels import alerts
from host.channels.alerts import ATTEMPTS, Alert, Alerts
from host.files.spool import Spool
from host.settings import AlertTarget, Settings, SettingsError
from host.store import sessions
from schemas.times import from_text

T0 = utc("2026-06-01T12:00:00")  # 08:00 EDT; the daily 09:00 series below first runs at 13:00 UTC
DAILY = "0 9 * * *"


class Receiver:
    """An HTTP server on 127.0.0.1 in the test's loop: records each POST's JSON and answers ``status`` with
    ``headers``, or (``status`` None) never answers and waits for the client to go."""

    def __init__(self, status: int | None = 200, headers: str = "") -> None:
        self.status, self.headers = status, headers
        self.bodies: list[dict[str, Any]] = []
        self.connections = 0
        self.arrived = asyncio.Condition()  # notified at each body

    async def until(self, bodies: int) -> None:
        """Wait until ``bodies`` requests came (the test's timeout bounds it)."""
        async with self.arrived:
            await self.arrived.wait_for(lambda: len(self.bodies) >= bodies)

    @property
    def events(self) -> list[str]:
        return [body["event"] for body in self.bodies]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            found = re.search(rb"content-length: *(\d+)", head, re.I)
            self.bodies.append(json.loads(await reader.readexactly(int(found[1]) if found else 0)))
            async with self.arrived:
                self.arrived.notify_all()
            if self.status is None:
                await reader.read()  # until the client gives up
                return
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n{self.headers}\r\n".encode())
            await writer.drain()
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hooks/s3cret"
        finally:
            server.close()


def sender(world: World, url: str, **kwargs: Any) -> Alerts:
    async def no_wait(seconds: float) -> None:  # the back-off between attempts, on no clock at all
        pass

    return Alerts(world.settings, AlertTarget("webhook", url), now=lambda: T0, sleep=no_wait, **kwargs)


def occurrence(world: World, task: str) -> tuple[str, Any]:
    (row,) = world.live(task)
    return row["id"], from_text(row["process_after"])


def run_days(world: World, task: str, outcomes: list[str]) -> None:
    """The series' next occurrences end as ``outcomes``, a minute after each one's 09:00, one sweep each."""
    sweeper = world.sweeper()
    for outcome in outcomes:
        row_id, at = occurrence(world, task)
        world.run_occurrence(sweeper, row_id, at + timedelta(minutes=1), outcome=outcome)


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


# --- each event, once ----------------------------------------------------------------------------------------------

async def test_a_series_that_pauses_itself_alerts_once_with_its_task_session_and_group(tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            run_days(world, task, ["failed", "failed"])
            assert not out.pending
            run_days(world, task, ["failed"])
        assert world.live(task)[0]["status"] == "paused"
        await out.drain()
        await out.aclose()
    (body,) = receiver.bodies
    assert body["event"] == "task_auto_paused" and body["task"] == task
    assert (body["session"], body["group"]) == (world.session.id, "demo")
    assert "failed 3 times in a row" in body["text"] and from_text(body["at"])
    assert set(body) == {"event", "text", "at", "task", "run", "session", "group", "id"}
    assert re.fullmatch(r"alert-[0-9a-f]{16}", body["id"])


async def test_gate_errors_alert_when_three_come_in_a_row_and_again_only_after_a_run_broke_the_streak(
        tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            run_days(world, task, ["gate_error"] * 4)
            assert len(out.pending) == 1  # the 3rd, not the 4th
            run_days(world, task, ["ran", "gate_error", "gate_error", "gate_error"])
        await out.drain()
        await out.aclose()
    assert receiver.events == ["task_gate_errors", "task_gate_errors"]
    assert {b["task"] for b in receiver.bodies} == {task}


async def test_missed_slots_alert_once_when_recorded(tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    task = world.schedule(T0, recurrence=DAILY)
    later = T0 + timedelta(days=3)  # 08:00 EDT: the latest slot is 23 h old, beyond the grace
    sweeper = world.sweeper()
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            assert sweeper.tick(later).missed == 1
            assert sweeper.tick(later).missed == 0
        await out.drain()
        await out.aclose()
    (body,) = receiver.bodies
    assert body["event"] == "task_missed" and body["task"] == task and body["session"] == world.session.id
    assert "missed 3 slot(s)" in body["text"]


class FailingRuntime(RecordingRuntime):
    def start(self, session: Any, generation: str, env: dict[str, str]) -> None:
        raise RuntimeError("no such image")


async def test_a_runner_that_cannot_start_alerts_once_a_streak(tmp_path: Path) -> None:
    world, receiver = World(tmp_path), Receiver()
    world.schedule(T0, at="2026-06-01T12:00:00.000Z")
    sweeper = world.sweeper(FailingRuntime())
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):
            for seconds in (0, 1, 2, 60, 200, 600):  # failures 1-6 (back-off 0, 0, 10, 30, 120 s)
                sweeper.tick(T0 + timedelta(seconds=seconds))
        assert sweeper.runners is not None and sweeper.runners.failures[world.session.id] == 6
        await out.drain()
        await out.aclose()
    (body,) = receiver.bodies
    assert body["event"] == "runner_start_failed" and body["session"] == world.session.id
    assert "start failed: no such image (3 in a row)" in body["text"]


async def test_a_project_task_that_fails_or_misses_slots_alerts(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    receiver = Receiver()
    failing = project.add(HEAD + "schedule: 30 17 * * *\nhost: {command: 'false'}\n")
    async with receiver.running() as url:
        monkeypatch.setenv("NCL_ALERT_CHANNEL", url)
        settings = project.settings()
        out = Alerts(settings, AlertTarget("webhook", url))
        clock = FakeClock(SLOT)
        firer = project.firer(clock)
        with alerts.reporting(out):
            assert firer.tick(SLOT).fired == 1
            firer.wait()  # the command runs on a worker thread, whose line is queued from there
            later = SLOT + timedelta(days=2, hours=2)  # down across the next two slots, beyond the grace
            assert firer.tick(later).missed == 1
        await out.drain()
        await out.aclose()
    assert receiver.events == ["scheduled_task_failed", "scheduled_task_missed"]
    failed, missed = receiver.bodies
    assert failed["task"] == missed["task"] == failing["id"] and failed["run"]
    assert "failed" in failed["text"] and "exit code 1" in failed["text"]
    assert "missed 2 slot(s)" in missed["text"]  # the two after the one that fired


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


async def test_a_session_target_puts_the_alert_in_the_groups_chat_session(tmp_path: Path) -> None:
    world = World(tmp_path, NCL_ALERT_CHANNEL="session:demo")
    task = world.schedule(T0, recurrence=DAILY)
    out = alerts.alerts_of(world.settings, now=lambda: T0)
    assert out is not None
    with alerts.reporting(out):
        world.sweeper().tick(T0 + timedelta(days=3))
    await out.drain()
    chat = sessions.by_thread(world.central, world.settings, world.group.id, "cli")  # where `ncl chat demo` talks
    assert chat is not None
    (row,) = [r for r in world.rows(session=chat) if r["kind"] == "chat"]
    notice = json.loads(row["content"])
    assert (notice["notice"], notice["sender"], row["trigger"]) == ("alert", "system", 0)
    assert notice["text"].startswith("Alert (task_missed): task ") and f"task {task}" in notice["text"]
    assert f"session {world.session.id}" in notice["text"] and "group demo" in notice["text"]


# --- real processes ------------------------------------------------------------------------------------------------

class Hold:
    """While ``holding``, a ``thread_receiver`` answers nothing (the sender waits) until ``released``."""

    def __init__(self) -> None:
        self.holding, self.released = True, threading.Event()


@contextmanager
def thread_receiver(status: int = 200, hold: Hold | None = None) -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """A threaded HTTP server on 127.0.0.1 for ``ncl`` processes: each POST's JSON into the queue."""
    got: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            if hold is not None and hold.holding:
                hold.released.wait()
                return  # no answer at all
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        if hold is not None:
            hold.released.set()
        server.shutdown()
        server.server_close()


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
    env.ok("groups", "create", "team", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "team", "--json"))["id"]
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence", DAILY,
                             "--now", "2026-01-01T00:00:00", "--json"))["id"]
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
    env.ok("groups", "create", "team", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "team", "--json"))["id"]
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence", DAILY,
                             "--now", "2026-01-01T00:00:00", "--json"))["id"]
    with thread_receiver() as (url, got):
        env.vars["NCL_ALERT_CHANNEL"] = url
        data = json.loads(env.ok("host", "sweep", "--once", "--now", "2026-01-05T12:00:00", "--json"))
        assert data["missed"] == 1
        body = got.get_nowait()  # sent (and answered) before the command returned
    assert body["event"] == "task_missed" and body["task"] == task
    assert "missed 5 slot(s)" in body["text"]  # Jan 1-5, 09:00 UTC
    assert got.empty()


def test_reporting_lowers_a_root_logger_set_above_warning_and_puts_it_back(tmp_path: Path) -> None:
    root = logging.getLogger()
    level, handler = root.level, logging.NullHandler()
    root.setLevel(logging.ERROR)
    root.addHandler(handler)
    try:
        out = Alerts(Settings(data_dir=tmp_path), AlertTarget("webhook", "http://127.0.0.1:9"))
        with alerts.reporting(out):
            logging.getLogger("host.scheduling.recurrence").warning("x", extra={"action": "a", "alert": "task_missed"})
            assert (root.level, handler.level) == (logging.WARNING, logging.ERROR)  # the handler shows no more
        assert (root.level, handler.level) == (logging.ERROR, logging.NOTSET)
        assert [a.event for a in out.pending] == ["task_missed"]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# --- nothing lost on a crash: the spool (data/alerts.jsonl) ----------------------------------------------------------

def spooled(data_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The lines of data/alerts.jsonl and the text of data/alerts.offset (None before the first alert is done)."""
    lines = (data_dir / "alerts.jsonl").read_text().splitlines()
    offset = data_dir / "alerts.offset"
    return [json.loads(line) for line in lines], offset.read_text() if offset.exists() else None


def test_a_host_killed_before_sending_sends_the_alert_once_at_its_next_start(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "team", "--channel", "cli")
    session = json.loads(env.ok("sessions", "create", "--group", "team", "--json"))["id"]
    task = json.loads(env.ok("tasks", "add", "--session", session, "--prompt", "standup", "--recurrence", DAILY,
                             "--now", "2026-01-01T00:00:00", "--json"))["id"]
    hold = Hold()
    with thread_receiver(hold=hold) as (url, got):
        first = Host(env, NCL_ALERT_CHANNEL=url, NCL_MISFIRE_GRACE_S="0")
        try:
            held = got.get(timeout=30)  # on its way: the receiver holds the request, unanswered
            # Spooled as raised (its group is looked up when it is sent), no offset stored yet:
            assert spooled(env.data_dir) == ([{**held, "group": None}], None)
        finally:
            first.kill()  # SIGKILL: no flush, no goodbye
        hold.holding = False
        second = Host(env, NCL_ALERT_CHANNEL=url, NCL_MISFIRE_GRACE_S="0")
        try:
            second.wait_for_action("alert_sent")
            sent = got.get(timeout=5)
        finally:
            assert second.stop(signal.SIGTERM) == 0  # a stop sends whatever is still queued
    assert held["event"] == sent["event"] == "task_missed" and sent["task"] == task
    assert sent == held  # the same alert (its id too), so a receiver can tell it saw it before
    assert got.empty()  # once
    assert spooled(env.data_dir) == ([], "0\n")  # all sent: the file starts again


def test_a_one_off_sweep_sends_what_a_killed_host_left(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.ok("groups", "create", "team", "--channel", "cli")
    left = Alert("task_missed", "task x missed 1 slot(s)", "2026-01-05T12:00:00.000Z")
    (env.data_dir / "alerts.jsonl").write_text(json.dumps(left.to_json()) + "\n")
    with thread_receiver() as (url, got):
        env.vars["NCL_ALERT_CHANNEL"] = url
        env.ok("host", "sweep", "--once", "--json")
        assert got.get_nowait() == left.to_json() and got.empty()
    assert spooled(env.data_dir) == ([], "0\n")


def test_the_offset_moves_past_each_alert_sent_or_given_up_and_the_file_starts_again_when_all_are(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    spool = Spool(data_dir, "alerts")
    spool.put({"n": 1})
    spool.put({"n": 2})
    first_end = len(b'{"n":1}\n')
    assert [(item, end) for item, end in spool.waiting()] == [({"n": 1}, first_end), ({"n": 2}, 2 * first_end)]
    spool.done(first_end)
    assert spooled(data_dir) == ([{"n": 1}, {"n": 2}], f"{first_end}\n")
    spool.close()
    again = Spool(data_dir, "alerts")  # a restart: from the stored offset
    assert [item for item, _ in again.waiting()] == [{"n": 2}] and len(again) == 1
    again.put({"n": 3})
    ((_, second_end), (_, third_end)) = again.waiting()
    again.done(second_end)
    assert len(again) == 1 and spooled(data_dir)[1] == f"{second_end}\n"
    again.done(third_end)
    assert (len(again), spooled(data_dir)) == (0, ([], "0\n"))
    assert {oct(p.stat().st_mode & 0o777) for p in data_dir.iterdir()} == {"0o600"}
    again.close()


def test_a_line_cut_short_by_a_crash_is_dropped_and_a_stray_offset_starts_its_line_again(tmp_path: Path,
                                                                                        caplog: Any) -> None:
    (tmp_path / "alerts.jsonl").write_bytes(b'{"n":1}\n{"n":2}\n{"n":3')  # killed while appending n 3
    (tmp_path / "alerts.offset").write_text("11\n")  # inside n 2's line
    spool = Spool(tmp_path, "alerts")
    assert [item for item, _ in spool.waiting()] == [{"n": 2}]
    assert (tmp_path / "alerts.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n'
    spool.close()
    (tmp_path / "alerts.offset").write_text("what\n")
    spool = Spool(tmp_path, "alerts")
    assert [item for item, _ in spool.waiting()] == [{"n": 1}, {"n": 2}]  # at least once: all again, said why
    assert [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "spool_offset_unread"] == [
        "alerts.offset holds no offset; every item in alerts.jsonl is handed out again"]
    spool.close()


async def test_the_spool_is_bounded_and_says_how_many_it_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(alerts, "QUEUE_MAX", 3)
    world, receiver = World(tmp_path), Receiver()
    async with receiver.running() as url:
        out = sender(world, url)
        for n in range(5):
            out.put(Alert("test", f"n {n}", "2026-06-01T12:00:00.000Z"))
        lines, offset = spooled(world.settings.data_dir)
        assert [line["text"] for line in lines] == ["n 0", "n 1", "n 2"] and offset is None  # the newest dropped
        await out.drain()
        await out.aclose()
    assert [b["text"] for b in receiver.bodies] == ["n 0", "n 1", "n 2"]
    (said,) = [r for r in caplog.records if getattr(r, "action", None) == "alerts_dropped"]
    assert said.getMessage() == "2 alert(s) dropped: more than 3 were waiting"
    assert spooled(world.settings.data_dir) == ([], "0\n")


@pytest.mark.parametrize("planted", ["symlink", "directory"])
async def test_a_spool_that_cannot_be_written_keeps_alerts_in_memory_says_so_once_and_follows_no_link(
        tmp_path: Path, planted: str, caplog: pytest.LogCaptureFixture) -> None:
    world, receiver = World(tmp_path), Receiver()
    spool, elsewhere = world.settings.data_dir / "alerts.jsonl", tmp_path / "elsewhere"
    elsewhere.write_text("")
    if planted == "symlink":
        spool.symlink_to(elsewhere)
    else:
        spool.mkdir()
    task = world.schedule(T0, recurrence=DAILY)
    async with receiver.running() as url:
        out = sender(world, url)
        with alerts.reporting(out):  # raised inside a sweep: nothing raised into it
            assert world.sweeper().tick(T0 + timedelta(days=3)).missed == 1
            run_days(world, task, ["gate_error"] * 3)
        assert [a.event for a in out.pending] == ["task_missed", "task_gate_errors"]
        await out.drain()
        await out.aclose()
    assert receiver.events == ["task_missed", "task_gate_errors"]
    said = [r.getMessage() for r in caplog.records if getattr(r, "action", None) == "alerts_not_spooled"]
    assert len(said) == 1 and said[0].startswith("alerts are kept in memory only")
    assert ("alerts.jsonl: refused (a symlink)" in said[0]) is (planted == "symlink")
    assert elsewhere.read_text() == "" and (spool.is_symlink() or spool.is_dir())
