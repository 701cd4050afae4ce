"""Alerts (issue 16.6): nothing lost on a crash. Each alert is spooled to data/alerts.jsonl as it is raised and
data/alerts.offset moves past it once it is sent or given up, so a host killed before sending sends it at its next
start (or a one-off sweep does), once; the spool is bounded, survives a line cut short, and a spool that cannot be
written keeps alerts in memory."""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alerts_kit import DAILY, T0, Hold, Receiver, run_days, sender, standup, thread_receiver
from kit import World
from processes import Env, Host

from host.channels import alerts
from host.channels.alerts import Alert
from host.files.spool import Spool


def spooled(data_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The lines of data/alerts.jsonl and the text of data/alerts.offset (None before the first alert is done)."""
    lines = (data_dir / "alerts.jsonl").read_text().splitlines()
    offset = data_dir / "alerts.offset"
    return [json.loads(line) for line in lines], offset.read_text() if offset.exists() else None


def test_a_host_killed_before_sending_sends_the_alert_once_at_its_next_start(tmp_path: Path) -> None:
    env = Env(tmp_path)
    _, task = standup(env)
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
