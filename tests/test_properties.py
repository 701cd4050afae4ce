"""Bad input, property-based (issue 7): tool arguments, queue payloads, YAML specs, webhook bodies, cron strings,
timestamps and group names always end in a clear error or a correct row: never a crash, a traceback to the user,
or a half-written row.

Every property runs derandomized (the same examples on every machine and every run) with a modest number of
examples. Where a property holds only on part of its input space today, the part where it breaks is pinned by a
concrete ``xfail(strict=True, reason="BUG: …")`` test right after it, so fixing the bug turns that test red until
its mark is removed.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from kit import FakeClock, World, utc
from processes import Env
from test_webhooks import Hook

from agent_runner.config import RunnerConfig
from agent_runner.providers import MockProvider
from agent_runner.runner import Runner
from agent_runner.store import Store
from agent_runner.tools import ToolError, Tools
from host import db, groups, inbox, queues
from host.errors import NclError
from schemas import cron, ids, requests
from schemas.messages import MessageIn, OutChatContent, QueueContent, TaskContent
from schemas.times import TimeFormatError, from_text, parse_user_time, to_text, truncate_ms

T0 = utc("2026-06-11T13:00:00")  # Thursday 09:00 in New York
ZONE = "America/New_York"
ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Apia"]
STORED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")  # ASCII digits only


def props(max_examples: int) -> Callable[[Any], Any]:
    """Deterministic examples, no deadline (real files and sockets), fixtures shared across examples allowed."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])


def one_line(message: str) -> None:
    assert message.strip(), "an empty error message"
    assert "\n" not in message.strip(), f"not one line: {message!r}"
    assert "Traceback" not in message


def observe(outcome: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics`` (so one can see both branches are exercised)."""
    if currently_in_test_context():
        event(outcome)


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON (sqlite3's json functions and most parsers refuse)."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# --- strategies ---------------------------------------------------------------------------------------------------

# Finite JSON data (NaN and Infinity have tests of their own below).
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
no_nul = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=16)

CRON_TOKENS = ["*", "0", "5", "59", "60", "23", "24", "1-5", "5-1", "3-3", "*/0", "*/1", "*/15", "1-31/2", "jan",
               "mon-fri", "sun", "7", "L", "?", "H", "1,2", "*,5", "a", "", "-1", "007", "1-", "/5", "*/60", "feb",
               "31", "29", "30", "0-59/59", "sat-sun", "2/3", "12-", "JAN", "1,,2"]
cron_field = st.sampled_from(CRON_TOKENS) | st.from_regex(r"[0-9a-z*/,\-]{1,6}", fullmatch=True)
cron_texts = (st.lists(cron_field, min_size=1, max_size=7).map(" ".join)
              | st.sampled_from([*cron.ALIASES, "@reboot", "@", "@DAILY", " 0  9 * *  1-5 ", "0 9 * * 1-5\n"])
              | st.text(max_size=30))

# ISO texts of instants a person might type, naive or with an offset: any year, or years well inside the calendar.
offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                                            max_value=timedelta(hours=23, minutes=59)))
all_instants = st.datetimes(timezones=st.none() | offsets)
sane_instants = st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9000, 12, 30),
                             timezones=st.none() | offsets)


@st.composite
def iso_texts(draw: st.DrawFn, instants: st.SearchStrategy[datetime] = sane_instants) -> str:
    moment = draw(instants)
    text = moment.isoformat(sep=draw(st.sampled_from("T ")),
                            timespec=draw(st.sampled_from(["auto", "minutes", "seconds", "milliseconds"])))
    return text.replace("+00:00", "Z") if draw(st.booleans()) else text


user_times = iso_texts(all_instants) | iso_texts() | st.text(max_size=30) | st.from_regex(
    r"[0-9]{4}-[01][0-9]-[0-3][0-9]([T ][0-2][0-9](:[0-5][0-9](:[0-6][0-9](\.[0-9]{1,6})?)?)?)?"
    r"(Z|z|[+-][01][0-9]:?[0-5][0-9])?", fullmatch=True)


# --- cron strings -------------------------------------------------------------------------------------------------


@props(300)
@given(expr=cron_texts, zone=st.sampled_from(ZONES),
       after=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_cron_is_a_one_line_error_or_strictly_increasing_aware_utc_firings(expr: str, zone: str,
                                                                           after: datetime) -> None:
    try:
        normal = cron.validate(expr)
    except cron.CronError as exc:
        one_line(str(exc))
        return
    assert cron.validate(normal) == normal  # the normalized text is itself valid and stable
    first = cron.next_after(normal, after, ZoneInfo(zone))
    previous = after
    for _, firing in zip(range(6), cron.firings(normal, after, ZoneInfo(zone)), strict=False):
        assert firing.tzinfo is not None and firing.utcoffset() == timedelta(0)
        assert firing > previous, (normal, zone, after, previous, firing)
        previous = firing
    assert first == next(cron.firings(normal, after, ZoneInfo(zone)))


@props(50)
@given(value=json_values.filter(lambda v: not isinstance(v, str)))
def test_cron_refuses_what_is_not_text(value: Any) -> None:
    with pytest.raises(cron.CronError) as refused:
        cron.validate(value)
    one_line(str(refused.value))


def test_cron_at_the_end_of_the_calendar_is_a_cron_error() -> None:
    """Was an OverflowError from `day + _DAY` past 9999-12-31 (and so a crash of schedule_task and list_tasks)."""
    with pytest.raises(cron.CronError):
        cron.next_after("0 9 * * *", datetime(9999, 12, 31, 12, tzinfo=UTC), ZoneInfo(ZONE))


# --- timestamps ---------------------------------------------------------------------------------------------------


@props(300)
@given(text=user_times, zone=st.sampled_from(ZONES))
def test_user_times_are_a_one_line_error_or_an_aware_utc_instant_that_round_trips(text: str, zone: str) -> None:
    try:
        parsed = parse_user_time(text, ZoneInfo(zone))
    except TimeFormatError as exc:
        one_line(str(exc))
        return
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    stored = to_text(parsed)
    assert STORED.fullmatch(stored), stored
    assert from_text(stored) == truncate_ms(parsed)
    given_as = datetime.fromisoformat(text.strip()[:-1] + "+00:00" if text.strip()[-1:] in "zZ" else text.strip())
    if given_as.tzinfo is not None:
        assert parsed == given_as
    else:  # wall time in the zone; a wall time inside a spring-forward gap moves to the gap's end
        wall = parsed.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        assert given_as <= wall <= given_as + timedelta(days=1), (text, zone, wall)


@props(200)
@given(text=st.text(max_size=30) | st.builds(to_text, st.datetimes(timezones=st.just(UTC)))
       | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z", fullmatch=True))
def test_stored_times_are_a_one_line_error_or_read_back_exactly(text: str) -> None:
    try:
        instant = from_text(text)
    except TimeFormatError as exc:
        one_line(str(exc))
        return
    assert instant.tzinfo is not None and instant.utcoffset() == timedelta(0)
    assert to_text(instant) == text


@pytest.mark.parametrize(("text", "zone"), [("0001-01-01T00:00:00+01:00", "UTC"), ("0001-01-01T00:00:00", "Asia/Tokyo"),
                                            ("9999-12-31T23:00:00", ZONE)])
def test_times_past_the_calendars_ends_are_a_time_format_error(text: str, zone: str) -> None:
    """Was an OverflowError from astimezone()/localize() within a day of year 1 or 9999."""
    with pytest.raises(TimeFormatError):
        parse_user_time(text, ZoneInfo(zone))


def test_stored_text_is_fixed_width_for_every_year() -> None:
    """Was '5-01-01T…' from strftime('%Y'), which from_text then refused."""
    instant = parse_user_time("0005-01-01T00:00:00Z", ZoneInfo("UTC"))
    assert STORED.fullmatch(to_text(instant)) and from_text(to_text(instant)) == instant


def test_stored_times_have_ascii_digits_only() -> None:
    """\\d matched any Unicode digit, so such a time passed validation and then broke the DB's GLOB CHECK."""
    with pytest.raises(TimeFormatError):
        from_text("٢٠٢٦-06-11T09:00:00.000Z")


def test_ids_have_ascii_digits_only() -> None:
    assert not ids.is_id("task-١٧٨١١٨٢٨٠٠٠٠٠-aaaaaa", "task")


def test_a_time_with_non_ascii_digits_never_wedges_the_session(tmp_path: Path) -> None:
    """Was: the request passed requests.parse, broke a CHECK, and the IntegrityError (not caught by actions.apply)
    failed the session on every tick forever, its acks, clones and replies with it."""
    world = World(tmp_path)
    world.request(T0, {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x",
                       "processAfter": "٢٠٢٦-06-11T09:00:00.000Z"})
    sweeper = world.sweeper()
    assert sweeper.tick(T0).errors == 0
    world.request(T0, {"action": "schedule_task", "taskId": "task-1781182800000-bbbbbb", "prompt": "y"})
    assert sweeper.tick(T0 + timedelta(seconds=1)).applied == 1


# --- tool arguments -----------------------------------------------------------------------------------------------

KNOWN = "<the session's own task>"
# Mostly well-formed calls (so the answered branch and the host's apply path are exercised), with bad values mixed in:
# any JSON value where a string belongs, as a slash command (`/schedule_task {"prompt": 5}`) can send.
# Left out, each pinned by an xfail test below: send_message with a non-text text, send_file with `to`, names too
# long or looping links for send_file, a list or object as `to`, and processAfter near year 9999 (the request is
# written before the answer).
surrogates = st.sampled_from(["\ud800", "a\udfffb", "\x00"])
task_refs = st.just(KNOWN) | st.just(KNOWN) | st.just(KNOWN) | st.sampled_from(
    ["task-1781182800000-zzzzzz", "", "../../etc", "msg-1781182800000-aaaaaa"]) | st.text(max_size=12) | json_values
good_crons = st.sampled_from(["0 9 * * *", "0 9 * * 1-5", "*/5 * * * *", "@daily", "@hourly", "30 17 * * 5"])
crons = st.none() | st.none() | good_crons | good_crons | st.sampled_from(
    ["", "*/1 * * * *", "0 0 31 2 *", "61 * * * *", "0 9 * * * *"]) | cron_texts | json_values
tool_times = st.none() | st.none() | iso_texts() | iso_texts() | st.sampled_from(
    ["", "2026-06-11T09:00:00", "2026-06-12T09:00:00Z", "yesterday", "2026-06-11T09:00:00+02:00",
     "2026-02-30T09:00:00", "0001-01-01T00:00:00+01:00", "0005-01-01T00:00:00Z"]) | st.text(max_size=20) | json_values
workspace_paths = st.sampled_from(["report.txt", "./report.txt", "sub/../report.txt", "../outside.txt", "link-out",
                                   "link-in", "/etc/hostname", "outbox", "inbound.db", "missing.txt", "", ".", "..",
                                   "a\x00b", "\ud800"]) | no_nul.filter(lambda p: "loop" not in p) | json_values
prompts = st.text(min_size=1, max_size=24) | st.text(min_size=1, max_size=24) | st.sampled_from([None, "", "  "]) \
    | surrogates | json_values
texts = st.none() | st.text(max_size=24) | surrogates | json_values

TOOL_CALLS = st.one_of(
    st.tuples(st.just("schedule_task"), st.fixed_dictionaries(
        {"prompt": prompts}, optional={"processAfter": tool_times, "recurrence": crons, "script": texts,
                                       "contextMode": st.sampled_from(["group", "isolated", "", "shared"])
                                       | json_values})),
    st.tuples(st.just("update_task"), st.fixed_dictionaries(
        {"taskId": task_refs}, optional={"prompt": prompts, "processAfter": tool_times, "recurrence": crons,
                                         "script": texts})),
    st.tuples(st.sampled_from(["pause_task", "resume_task", "cancel_task"]),
              st.fixed_dictionaries({"taskId": task_refs})),
    st.tuples(st.just("list_tasks"), st.fixed_dictionaries(
        {}, optional={"status": st.none() | st.sampled_from(["pending", "paused", "requested"]) | no_nul})),
    st.tuples(st.just("send_message"), st.fixed_dictionaries({"text": st.none() | st.text(max_size=24) | surrogates},
                                                             optional={"to": scalars | surrogates})),
    st.tuples(st.just("send_file"), st.fixed_dictionaries({"path": workspace_paths})),
    st.tuples(st.sampled_from(["run_shell", "", "names"]), st.just({})),
)
# Now and then a key no tool takes (a routing key, a session id): refused as a bad argument.
extra_keys = st.just({}) | st.just({}) | st.just({}) | st.dictionaries(
    st.sampled_from(["sessionId", "platform_id", "channel_type", "bogus"]), st.text(max_size=4), min_size=1, max_size=1)


class Workspace:
    """A fresh session for one example: one task of its own, a chat it is answering, files in and out of reach."""

    def __init__(self, root: Path) -> None:
        self.world = World(root, tz=ZONE)
        self.folder = self.world.session.folder
        self.known = self.world.schedule(T0 - timedelta(days=1), recurrence="0 9 * * *")
        self.routing = {"platform_id": "p-1", "channel_type": "cli", "thread_id": "t-1"}
        with closing(self.world.inbound()) as conn, db.transaction(conn):
            self.chat = inbox.insert(conn, {"id": "msg-1781182700000-aaaaaa", "kind": "chat",
                                            "timestamp": to_text(T0 - timedelta(minutes=1)), "status": "completed",
                                            "content": json.dumps({"text": "do it", "sender": "alice"}),
                                            **self.routing})
        (self.folder / "report.txt").write_text("numbers")
        (root / "outside.txt").write_text("not the agent's")
        (self.folder / "link-out").symlink_to(root / "outside.txt")
        (self.folder / "link-in").symlink_to(self.folder / "report.txt")
        (self.folder / "sub").mkdir()
        (self.folder / "loop").symlink_to("loop")
        config = RunnerConfig(session_dir=self.folder, generation="gen-test", tz=ZONE)
        self.tools = Tools(config, Store(config), lambda: T0,
                           turn={"in_reply_to": self.chat, "routing": dict(self.routing)})

    def out_rows(self) -> list[dict[str, Any]]:
        with closing(self.world.outbound()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM messages_out ORDER BY seq")]

    def outbox(self) -> list[str]:
        return sorted(p.name for p in (self.folder / "outbox").iterdir())

    def end_turn(self) -> None:
        """What the runner does when the model has answered: the turn's staged requests go out with its ack."""
        self.tools.store.finish([self.chat], "completed", T0, "ran")

    def close(self) -> None:
        self.world.central.close()


def check_applied(ws: Workspace, written: list[dict[str, Any]]) -> None:
    """One sweep applies or rejects (with a notice) every request written; nothing fails the session."""
    notices_before = len(ws.world.notices())
    result = ws.world.sweeper().tick(T0)
    assert result.errors == 0, "the sweep failed this session"
    with closing(ws.world.inbound()) as conn:
        handled = {r["message_out_id"]: r["status"] for r in conn.execute("SELECT * FROM delivered")}
    rejected = 0
    for row in written:
        if row["kind"] != "system":
            continue
        status = handled.get(row["id"])
        assert status in ("applied", "rejected"), (row, status)
        request = requests.parse(row["content"])
        rejected += status == "rejected"
        if status == "applied" and isinstance(request, requests.ScheduleTask):
            [task] = [r for r in ws.world.rows() if r["id"] == request.task_id]
            MessageIn.model_validate(task)
            TaskContent.model_validate(json.loads(task["content"]))
            assert {k: task[k] for k in ws.routing} == ws.routing  # routing from the inbox, never the request
    notices = [n["notice"] for n in ws.world.notices()[notices_before:]]
    assert notices.count("request_rejected") == rejected


@props(150)
@given(call=TOOL_CALLS, extra=extra_keys)
def test_tool_calls_answer_or_refuse_and_what_they_write_is_applied_or_rejected(
        tmp_path_factory: pytest.TempPathFactory, call: tuple[str, dict[str, Any]], extra: dict[str, str]) -> None:
    name, arguments = call
    arguments = {**{k: v for k, v in arguments.items()}, **(extra if arguments else {})}
    ws = Workspace(tmp_path_factory.mktemp("tools"))
    try:
        if arguments.get("taskId") == KNOWN:
            arguments["taskId"] = ws.known
        before, outbox = ws.out_rows(), ws.outbox()
        try:
            answer = ws.tools.call(name, arguments)
        except ToolError as exc:
            observe(f"{name}: refused")
            assert str(exc)
            ws.end_turn()
            assert ws.out_rows() == before and ws.outbox() == outbox, "a refused call wrote something"
            return
        observe(f"{name}: answered")
        assert isinstance(answer, str) and answer
        ws.end_turn()
        written = ws.out_rows()[len(before):]
        kinds = [r["kind"] for r in written]
        if name == "list_tasks":
            assert kinds == []
        elif name in ("send_message", "send_file"):
            assert kinds == ["chat"]
            content = OutChatContent.model_validate(strict_json(written[0]["content"]))
            if name == "send_file":
                [sent] = content.files
                copy = ws.folder / "outbox" / written[0]["id"] / sent
                assert copy.is_file() and not copy.is_symlink()
                assert copy.read_bytes() == (ws.folder / arguments["path"]).resolve().read_bytes()
        else:
            assert kinds == ["system"]
            requests.parse(written[0]["content"])  # the runner's row passes the host's own validation
        check_applied(ws, written)
    finally:
        ws.close()


# Each of these is an argument a slash command (``/schedule_task {"prompt": 5}``) or an MCP client can send.
TOOL_CRASHES = [
    # Each of these crashed Tools.call (AttributeError, ValidationError, OverflowError, ValueError,
    # UnicodeEncodeError) before it answered every bad argument with a ToolError.
    pytest.param("schedule_task", {"prompt": 5}, id="prompt-not-text"),
    pytest.param("schedule_task", {"prompt": "x", "script": 5}, id="script-not-text"),
    pytest.param("schedule_task", {"prompt": "\ud800"}, id="prompt-lone-surrogate"),
    pytest.param("schedule_task", {"prompt": "x", "processAfter": "0005-01-01T00:00:00Z"}, id="year-5"),
    pytest.param("schedule_task", {"prompt": "x", "processAfter": "9999-12-31T23:00:00"}, id="year-9999-local"),
    pytest.param("schedule_task", {"prompt": "x", "recurrence": ["0 9 * * *"]}, id="recurrence-a-list"),
    pytest.param("update_task", {"taskId": KNOWN, "prompt": ""}, id="update-empty-prompt"),
    pytest.param("update_task", {"taskId": KNOWN, "processAfter": {"at": 9}}, id="update-time-an-object"),
    pytest.param("list_tasks", {"status": 7}, id="status-not-text"),
    pytest.param("send_file", {"path": "a\x00b"}, id="path-nul"),
    pytest.param("send_file", {"path": "\ud800"}, id="path-lone-surrogate"),
    pytest.param("send_file", {"path": "x" * 300}, id="path-name-too-long"),
    pytest.param("send_file", {"path": "loop/x"}, id="path-symlink-loop"),
    pytest.param("send_message", {"text": 5}, id="text-not-text"),
    pytest.param("send_file", {"path": "report.txt", "to": "nowhere"}, id="send-file-unknown-destination"),
    pytest.param("send_message", {"text": "hi", "to": ["ops"]}, id="to-a-list"),
    pytest.param("send_file", {"path": "report.txt"}, id="control-a-good-call"),
]


@pytest.mark.parametrize(("name", "arguments"), TOOL_CRASHES)
def test_tool_arguments_of_the_wrong_kind_are_refused_not_crashed(tmp_path: Path, name: str,
                                                                  arguments: dict[str, Any]) -> None:
    ws = Workspace(tmp_path)
    if arguments.get("taskId") == KNOWN:
        arguments = {**arguments, "taskId": ws.known}
    before, outbox = ws.out_rows(), ws.outbox()
    try:
        ws.tools.call(name, arguments)
    except ToolError:
        ws.end_turn()
        assert ws.out_rows() == before and ws.outbox() == outbox
        return
    ws.end_turn()
    for row in ws.out_rows()[len(before):]:
        if row["kind"] == "chat":
            OutChatContent.model_validate(strict_json(row["content"]))


def test_a_failed_schedule_call_writes_nothing_and_list_tasks_keeps_working(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(ToolError):
        ws.tools.call("schedule_task", {"prompt": "x", "processAfter": "9999-12-31T12:00:00Z",
                                        "recurrence": "0 9 * * *"})
    ws.end_turn()
    assert [r for r in ws.out_rows() if r["kind"] == "system"] == []
    ws.tools.call("schedule_task", {"prompt": "far", "processAfter": "9999-12-31T12:00:00Z"})
    assert "far" in ws.tools.call("list_tasks", {})


async def test_a_slash_command_with_wrong_argument_types_is_answered_not_fatal(tmp_path: Path) -> None:
    """Was: an AttributeError out of Tools.call, through slash.run and Runner.step, killed the runner at each retry."""
    ws = Workspace(tmp_path)
    with closing(ws.world.inbound()) as conn, db.transaction(conn):
        inbox.insert(conn, {"id": "msg-1781182800000-bbbbbb", "kind": "chat", "timestamp": to_text(T0),
                            "content": json.dumps({"text": '/schedule_task {"prompt": 5}', "sender": "alice"}),
                            **ws.routing})
    runner = Runner(ws.tools.config, MockProvider(), FakeClock(T0))
    assert await runner.step()
    [reply] = [r for r in ws.out_rows() if r["in_reply_to"] == "msg-1781182800000-bbbbbb"]
    assert json.loads(reply["content"])["text"].startswith("error:")


# --- queue payloads -----------------------------------------------------------------------------------------------

file_urls = st.sampled_from([
    "room:///notes.txt", "room:///sub/deep.txt", "room:///sub/../notes.txt", "room:///../../../etc/passwd",
    "room:////etc/passwd", "room:///link-out", "room:///link-in", "room:///link-dir/x.txt", "room:///bin.dat",
    "room:///big.txt", "room:///missing", "room:///", "room:///.", "room:///sub", "room://other/x", "file:///etc/hosts",
    "notes.txt"]) | no_nul.map(lambda s: "room:///" + s)
prompt_items = (st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=16)})
                | st.fixed_dictionaries({"type": st.just("file"), "url": file_urls}) | json_values)
thread_templates = st.sampled_from(["{YYYY}-{MM}-{DD}", "daily-{YYYY}{MM}{DD}{HH}{mm}", "../../x", "a/b", " ", "",
                                    "{YY}"]) | st.text(max_size=16) | json_values
payloads = st.fixed_dictionaries(
    {"prompt": st.text(max_size=24) | st.lists(prompt_items, max_size=4) | json_values},
    optional={"thread_id": thread_templates, "extra": json_values}) | json_values


class QueueWorld:
    def __init__(self, root: Path) -> None:
        self.world = World(root, tz="UTC")
        self.group, _ = groups.create(self.world.central, self.world.settings, T0, "jobs", ["queue:jobs"])
        home = groups.folder(self.world.settings, self.group.id)
        (home / "sub").mkdir()
        (home / "notes.txt").write_text("the notes")
        (home / "sub" / "deep.txt").write_text("deeper")
        (home / "bin.dat").write_bytes(b"\xff\xfe\x00")
        (home / "big.txt").write_text("x" * (queues.MAX_FILE_BYTES + 1))
        (root / "secret.txt").write_text("outside")
        (root / "secret-dir").mkdir()
        (root / "secret-dir" / "x.txt").write_text("outside")
        (home / "link-out").symlink_to(root / "secret.txt")
        (home / "link-dir").symlink_to(root / "secret-dir")
        (home / "link-in").symlink_to(home / "notes.txt")
        (home / "loop").symlink_to("loop")

    def state(self) -> tuple[int, list[str], int]:
        """Sessions listed, session folders on disk, rows in all inboxes: nothing may change on a refusal."""
        listed = self.world.central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
        folders = sorted(str(p) for p in self.world.settings.sessions_dir.glob("*/*"))
        rows = 0
        for path in self.world.settings.sessions_dir.glob("*/*/inbound.db"):
            with closing(sqlite3.connect(path)) as conn:
                rows += conn.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0]
        return listed, folders, rows


@pytest.fixture
def queue_world(tmp_path: Path) -> Iterator[QueueWorld]:
    made = QueueWorld(tmp_path)
    yield made
    made.world.central.close()


def check_queue_send(qw: QueueWorld, payload: Any) -> None:
    before = qw.state()
    try:
        sent = queues.send(qw.world.central, qw.world.settings, T0, "jobs", payload)
    except NclError as exc:
        observe("refused")
        one_line(str(exc))
        assert qw.state() == before, "a refused job left something behind"
        return
    observe("queued")
    assert set(sent) == {"queue", "message_id", "session_id"}
    folder = qw.world.settings.sessions_dir / qw.group.id / sent["session_id"]
    assert folder.resolve().parent == (qw.world.settings.sessions_dir / qw.group.id).resolve()
    with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
        row = dict(conn.execute("SELECT * FROM messages_in WHERE id = ?", (sent["message_id"],)).fetchone())
    MessageIn.model_validate(row)
    content = QueueContent.model_validate(strict_json(row["content"]))
    assert (row["kind"], row["channel_type"], content.queue) == ("queue", "queue:jobs", "jobs")
    assert content.payload == payload
    for item in content.content:
        if item["type"] == "file":
            assert "outside" not in content.prompt  # nothing from outside the group folder was inlined


@props(200)
@given(payload=payloads)
def test_queue_payloads_are_a_clear_error_or_a_valid_row(queue_world: QueueWorld, payload: Any) -> None:
    check_queue_send(queue_world, payload)


@pytest.mark.parametrize("payload", [
    pytest.param({"prompt": "x", "n": float("nan")}, id="nan"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///a\x00b"}]}, id="url-nul"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///" + "a" * 300}]}, id="url-name-too-long"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///loop"}]}, id="url-symlink-loop"),
    pytest.param({"prompt": "x", "thread_id": "\ud800"}, id="thread-lone-surrogate"),
    pytest.param({"prompt": [{"type": "file", "url": "room:///link-in"}]}, id="control-link-inside"),
])
def test_queue_payload_edge_cases_are_a_clear_error_and_leave_nothing(queue_world: QueueWorld, payload: Any) -> None:
    check_queue_send(queue_world, payload)


# --- YAML specs through `ncl scheduled-task add --file` ----------------------------------------------------------

good_schedules = st.sampled_from(["30 17 * * *", "0 9 * * 1-5", "@daily", "0 */2 * * *", "15 3 1 * *"])
schedules = good_schedules | good_schedules | st.sampled_from(["*/5 * * * *", "0 0 31 2 *", "61 * * * *", "every day",
                                                               30, None]) | cron_texts
good_targets = st.one_of(
    st.fixed_dictionaries({"queue": st.fixed_dictionaries(
        {"name": st.sampled_from(["support-jobs", "jobs"]),
         "payload": st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=12)},
                                          optional={"thread_id": st.text(max_size=8), "extra": json_values})})}),
    st.fixed_dictionaries({"container": st.fixed_dictionaries(
        {"image": st.just("alpine:latest"), "command": st.sampled_from(["echo scheduled", ["echo", "a b"]])},
        optional={"timeout_seconds": st.integers(1, 86_400)})}),
    st.fixed_dictionaries({"host": st.fixed_dictionaries(
        {"command": st.sampled_from(["scripts/backup.sh --all", ["echo", "x"]])},
        optional={"cwd": st.sampled_from([".", "..", "/"]), "timeout_seconds": st.integers(1, 86_400)})}),
)
bad_targets = st.one_of(
    st.fixed_dictionaries({"queue": st.fixed_dictionaries(
        {"name": st.sampled_from(["bad name", "", "-x"]) | no_nul,
         "payload": st.fixed_dictionaries({"prompt": json_values}) | json_values},
        optional={"extra": json_values})}),
    st.fixed_dictionaries({"container": st.fixed_dictionaries(
        {"image": st.sampled_from(["", "alpine:latest"]) | no_nul,
         "command": st.sampled_from(["", "echo 'unterminated"]) | st.lists(no_nul, max_size=3) | json_values},
        optional={"timeout_seconds": st.integers(-5, 100_000) | json_values})}),
    st.fixed_dictionaries({"host": st.fixed_dictionaries(
        {"command": st.sampled_from(["", "a 'b"]) | st.lists(no_nul, max_size=3) | json_values},
        optional={"cwd": st.sampled_from(["nope", "/etc/hostname"]) | no_nul | json_values,
                  "timeout_seconds": st.integers(-5, 100_000)})}),
    st.just({}),
    st.just({"queue": {"name": "jobs", "payload": {"prompt": "x"}}, "host": {"command": "echo"}}),
)
heads = st.fixed_dictionaries(
    {"version": st.sampled_from(["v1", "v1", "v1", "v1", "v2", 1]),
     "kind": st.sampled_from(["ScheduledTask", "ScheduledTask", "ScheduledTask", "Task"]), "schedule": schedules},
    optional={"name": no_nul, "description": st.text(max_size=10),
              "active": st.booleans() | st.booleans() | json_values})
spec_docs = st.one_of(
    st.builds(lambda head, target: yaml.safe_dump({**head, **target}), heads, good_targets),
    st.builds(lambda head, target: yaml.safe_dump({**head, **target}), heads, good_targets),
    st.builds(lambda head, target, extra: yaml.safe_dump({**head, **target, **extra}), heads, bad_targets,
              st.dictionaries(st.sampled_from(["spec", "targets", "timezone"]), json_values, max_size=1)),
    st.sampled_from(["", "---", "- a\n- b", "version: v1\nkind: ScheduledTask\nschedule: */5 * * * *\n",
                     "version: v1\nkind: ScheduledTask\nschedule: @daily\nqueue: {name: j, payload: {prompt: p}}\n",
                     "!!python/object/apply:os.system ['true']", "a: [", "\t- x", "version: v1\nversion: v2\n"]),
    st.text(max_size=60),
)


def listed_specs(ncl: Callable[..., Any]) -> list[dict[str, Any]]:
    result = ncl("scheduled-task", "list", "--json")
    assert result.code == 0, result.err
    found: list[dict[str, Any]] = strict_json(result.out)["scheduled_tasks"]
    return found


@props(120)
@given(doc=spec_docs)
def test_scheduled_task_specs_are_one_clear_line_or_a_stored_task(ncl: Callable[..., Any], cli_env: Any,
                                                                   doc: str) -> None:
    path = cli_env.root / "spec.yaml"
    path.write_text(doc)
    before = listed_specs(ncl)
    result = ncl("scheduled-task", "add", "--file", str(path), "--now", "2026-06-11T09:00:00", "--json")
    assert "Traceback" not in result.out + result.err
    observe(f"exit {result.code}")
    after = listed_specs(ncl)
    if result.code != 0:
        assert result.code == 1 and len(result.err_lines) == 1 and result.err.startswith("ncl: "), result
        assert "internal error" not in result.err, result.err
        assert after == before, "a refused spec was stored"
        return
    added = strict_json(result.out)
    assert sorted(t["id"] for t in after) == sorted([*(t["id"] for t in before), added["id"]])
    spec = yaml.safe_load(doc)
    assert added["schedule"] == cron.validate(spec["schedule"])
    kind = added["target"]["kind"]
    assert kind in ("queue", "container", "host") and kind in spec
    if kind == "queue":
        assert added["target"]["payload"] == spec["queue"]["payload"]


@pytest.mark.parametrize("doc", [
    pytest.param("version: v1\nkind: ScheduledTask\nschedule: '0 9 * * *'\nqueue: {name: jobs, payload: {prompt: hi, "
                 "x: .nan}}\n", id="nan-in-payload"),
    pytest.param("version: v1\nkind: ScheduledTask\nschedule: '0 9 * * *'\nqueue: {name: jobs, payload: {prompt: "
                 "[1]}}\n", id="payload-queues-would-refuse"),
    pytest.param("version: v1\nkind: ScheduledTask\nschedule: '0 9 * * *'\nqueue: {name: jobs, payload: {prompt: "
                 "hi}}\n", id="control-good-spec"),
])
def test_scheduled_task_spec_edge_cases(ncl: Callable[..., Any], cli_env: Any, doc: str) -> None:
    path = cli_env.root / "spec.yaml"
    path.write_text(doc)
    result = ncl("scheduled-task", "add", "--file", str(path), "--now", "2026-06-11T09:00:00", "--json")
    if result.code != 0:
        assert result.code == 1 and len(result.err_lines) == 1 and "internal error" not in result.err, result
        assert listed_specs(ncl) == []
        return
    given_payload = yaml.safe_load(doc)["queue"]["payload"]
    assert strict_json(result.out)["target"]["payload"] == given_payload
    queues.prompt_of(given_payload, cli_env.root)  # what is stored can be sent when it fires


def test_a_deeply_nested_spec_is_a_clear_error(tmp_path: Path) -> None:
    # In a child process: a RecursionError in this one can upset CPython 3.11's AST recursion counter, which pytest's
    # own traceback formatting then trips over (SystemError: AST constructor recursion depth mismatch).
    env = Env(tmp_path)
    (tmp_path / "deep.yaml").write_text("[" * 2000 + "]" * 2000 + "\n")
    done = env.ncl("scheduled-task", "add", "--file", "deep.yaml")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr


# --- webhook bodies through the real HTTP server ------------------------------------------------------------------


# The server runs in a child process: a deeply nested body makes json.loads hit RecursionError in the server, and in
# this process that upsets CPython 3.11's AST recursion counter, which pytest's own traceback formatting then trips
# over (INTERNALERROR: SystemError: AST constructor recursion depth mismatch).
SERVE = """
import asyncio, sys
from pathlib import Path
from host import settings as settings_module
from host.webhooks import Webhooks

async def main():
    root = Path(sys.argv[1])
    settings = settings_module.load(environ={"NCL_DATA_DIR": str(root / "data"), "TZ": "UTC"}, cwd=root,
                                    system_tz="UTC")
    print(await Webhooks(settings).start(port=0), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class LiveHook:
    """The real webhook server (host.webhooks.Webhooks on 127.0.0.1) for the group of ``Hook``; plain sockets post."""

    def __init__(self, root: Path) -> None:
        self.hook = Hook(root)
        self.server = subprocess.Popen([sys.executable, "-c", SERVE, str(root)], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.server.stdout is not None
        self.port = int(self.server.stdout.readline())

    def post(self, body: bytes) -> tuple[int | None, bytes]:
        head = (f"POST /webhooks/github HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {self.hook.token}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(head + body)
            raw = b"".join(iter(lambda: conn.recv(65536), b""))
        status, _, rest = raw.partition(b"\r\n")
        return (int(status.split(b" ")[1]) if status else None), rest.partition(b"\r\n\r\n")[2]

    def stop(self) -> None:
        self.server.kill()
        self.server.wait(10)


@pytest.fixture
def live_hook(tmp_path: Path) -> Iterator[LiveHook]:
    made = LiveHook(tmp_path)
    yield made
    made.stop()


def check_webhook(live: LiveHook, body: bytes) -> None:
    before = live.hook.rows()
    status, answer = live.post(body)
    after = live.hook.rows()
    assert status is not None, "the server closed the connection without an answer"
    observe(f"HTTP {status}")
    if status == 202:
        assert set(json.loads(answer)) == {"message_id", "session_id"}
        assert after[:len(before)] == before and len(after) == len(before) + 1
        assert after[-1] == {"kind": "webhook", "content": {"source": "github", "payload": json.loads(body)}}
        for inbound in live.hook.settings.sessions_dir.glob("*/*/inbound.db"):
            with closing(sqlite3.connect(inbound)) as conn:
                for (content,) in conn.execute("SELECT content FROM messages_in"):
                    strict_json(content)
    else:
        assert 400 <= status < 500 and json.loads(answer)["type"] == "error", (status, answer)
        assert after == before, "a refused body was written"


webhook_bodies = st.binary(max_size=120) | json_values.map(lambda v: json.dumps(v).encode()) \
    | json_values.map(lambda v: json.dumps(v).encode("utf-16")) \
    | st.sampled_from([b"", b" ", b"{", b"null", b'"\\ud800"', b"\xef\xbb\xbf{}", b'{"a": 1}{"b": 2}', b"\x00"])


@props(120)
@given(body=webhook_bodies)
def test_webhook_bodies_are_accepted_with_one_row_or_refused_with_none(live_hook: LiveHook, body: bytes) -> None:
    check_webhook(live_hook, body)


@pytest.mark.parametrize("body", [
    pytest.param(b"NaN", id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b"1e999", id="overflowing-number"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
])
def test_webhook_bodies_that_are_not_strict_json_get_a_400(live_hook: LiveHook, body: bytes) -> None:
    check_webhook(live_hook, body)


# --- group names through `ncl groups create` ---------------------------------------------------------------------

group_names = st.sampled_from(["..", ".", "../evil", "a/b", "/abs", "ok-name", "Ok_Name", "a" * 48, "a" * 49, "-x",
                               "_x", "x\x00y", "demo", "DEMO", "ag-x", "x\n", "x ", "é", "a.b", "~root", "$(id)"]) \
    | st.text(max_size=60) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,50}", fullmatch=True)


@props(150)
@given(name=group_names)
def test_group_names_make_a_folder_inside_data_groups_or_one_clear_line(ncl: Callable[..., Any], cli_env: Any,
                                                                        name: str) -> None:
    groups_dir = cli_env.data_dir / "groups"
    before = sorted(p.name for p in groups_dir.iterdir()) if groups_dir.exists() else []
    result = ncl("groups", "create", "--json", "--", name)
    observe(f"exit {result.code}")
    assert "Traceback" not in result.out + result.err
    if result.code != 0:
        assert result.code == 1 and len(result.err_lines) == 1 and "internal error" not in result.err, result
        assert (sorted(p.name for p in groups_dir.iterdir()) if groups_dir.exists() else []) == before
        return
    folder = groups_dir / result.json()["id"]
    assert folder.is_dir() and folder.resolve().parent == groups_dir.resolve()
    assert sorted(p.name for p in groups_dir.iterdir()) == sorted([*before, folder.name])
