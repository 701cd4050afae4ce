"""The interactive chat's status line (issue 15.4): what it says of a message still waiting for its answer, read from
the message's inbox row; and in a real terminal (a pty), shown while the model holds the request and replaced by the
reply. The model is a fake Messages API that holds the first request until the test releases it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from e2e_scenario import BlockingFake
from processes import Env, Host
from test_chat_interactive import chatting

from host.cli.chat_status import CLEAR_LINE, UP, status_text
from schemas.rows import InMessage, ModelWait

NY = ZoneInfo("America/New_York")
ROW = InMessage(id="msg-1781182800000-aaaaaa", seq=3, kind="chat", timestamp="2026-06-11T13:00:00.000Z",
                status="pending", process_after=None, recurrence=None, series_id=None, tries=0, platform_id=None,
                channel_type="cli", thread_id=None, content=json.dumps({"text": "hi"}), trigger=1, on_wake=0,
                zone=None)


@pytest.mark.parametrize(("changes", "said"), [
    ({}, "… waiting for the agent to start (3 s)"),
    ({"status": "processing"}, "… the agent is working on it (3 s)"),
    ({"tries": 2, "process_after": "2026-06-11T13:00:20.000Z"},
     "… its run was cut short; retrying (try 3) at 09:00:20 EDT (3 s)"),
    ({"status": "completed"}, ""),
    ({"status": "failed"}, ""),
])
def test_the_status_says_what_happens_to_the_message(changes: dict[str, object], said: str) -> None:
    assert status_text(ROW._replace(**changes), 3.2, NY) == said
    assert status_text(None, 3.2, NY) == ""


WAIT = ModelWait((ROW.id,), "rate limited (429): slow down", "2026-06-11T13:00:30.000Z")
NOW = datetime(2026, 6, 11, 13, 0, 5, tzinfo=UTC)


def test_a_runner_waiting_to_retry_the_model_api_is_shown_until_its_retry() -> None:
    working = ROW._replace(status="processing")
    assert status_text(working, 5, NY, WAIT, NOW) == (
        "… the model API is busy (rate limited (429): slow down); retrying at 09:00:30 EDT (5 s)")
    assert status_text(working, 40, NY, WAIT, NOW + timedelta(seconds=35)) == "… the agent is working on it (40 s)"
    other = WAIT._replace(rows=("msg-other",))
    assert status_text(working, 5, NY, other, NOW) == "… the agent is working on it (5 s)"  # another batch's wait


@pytest.mark.parametrize("stored", [
    "", "not json", "[]", '{"rows": "msg-1", "problem": "x", "until": "2026-06-11T13:00:30.000Z"}',
    '{"rows": [1], "problem": "x", "until": "2026-06-11T13:00:30.000Z"}', '{"rows": [], "problem": 3, "until": ""}',
    json.dumps({"rows": [ROW.id], "problem": "x" * 5000, "until": "2026-06-11T13:00:30.000Z"}),
])
def test_what_a_runner_stored_is_taken_only_in_its_shape_and_size(stored: str) -> None:
    assert ModelWait.parse(stored) is None


def test_the_runners_words_cannot_move_the_cursor_or_break_the_line() -> None:
    wait = WAIT._replace(problem="\x1b[2J\nowned" + "y" * 300)
    said = status_text(ROW._replace(status="processing"), 5, NY, wait, NOW)
    assert "\x1b" not in said and "\n" not in said and said.count("y") < 130
    wait = WAIT._replace(until="tomorrow")
    assert status_text(ROW._replace(status="processing"), 5, NY, wait, NOW).endswith("working on it (5 s)")


@pytest.fixture
def slow_model(tmp_path: Path) -> Iterator[tuple[Env, BlockingFake]]:
    with BlockingFake() as fake:
        env = Env(tmp_path)
        env.vars.update({"NCL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake.url})
        env.ok("groups", "create", "demo", "--channel", "cli")
        host = Host(env, NCL_IDLE_TIMEOUT_S="30")
        try:
            host.wait_for_action("host_started")
            yield env, fake
        finally:
            host.kill()


@pytest.mark.slow
def test_a_terminal_shows_the_agent_working_until_the_reply_replaces_it(
        slow_model: tuple[Env, BlockingFake]) -> None:
    env, fake = slow_model
    with chatting(env) as term:
        term.type("hello\r")
        term.wait_for("… the agent is working on it (")
        assert fake.entered.wait(30)
        fake.release()  # the held request fails: the answer is the runner's apology, marked as an error
        term.wait_for("error: Sorry, I could not answer: ")
        before_reply = term.screen.split("error: Sorry, I could not answer: ")[0]
        assert before_reply.endswith("] ") and CLEAR_LINE + UP + CLEAR_LINE + "[" in before_reply
