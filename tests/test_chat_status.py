"""The interactive chat's status line (issue 15.4): what it says of a message still waiting for its answer, read from
the message's inbox row; and in a real terminal (a pty), shown while the model holds the request and replaced by the
reply. The model is a fake Messages API that holds the first request until the test releases it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from e2e_scenario import BlockingFake
from processes import Env, Host
from test_chat_interactive import chatting

from host.cli.chat_status import CLEAR_LINE, UP, status_text
from schemas.messages import InMessage

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
    assert status_text(dataclasses.replace(ROW, **changes), 3.2, NY) == said  # type: ignore[arg-type]
    assert status_text(None, 3.2, NY) == ""


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
