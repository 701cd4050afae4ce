"""A one-shot ``ncl chat`` and ``ncl agent invoke`` exit 1 when the answer is the agent saying it could not answer
(the provider failed: the runner acks the message ``failed`` with a "Sorry, I could not answer" reply, DESIGN §12.3)
or a refused slash command,
with the reply on stderr, or in ``--json`` marked ``"failed": true`` (issue 15.4). A real host and runner; the model
is a fake Messages API that refuses every call (tests/fake_anthropic.py)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_anthropic import FakeAnthropic
from processes import Env, Host, ncl_command

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with FakeAnthropic() as fake:  # nothing scripted: every call is a 400 not to be retried
        env = Env(tmp_path)
        env.vars.update({"NCL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": fake.url})
        env.ok("groups", "create", "demo", "--channel", "cli", "--channel", "toolkit:helper")
        host = Host(env, NCL_IDLE_TIMEOUT_S="30")
        try:
            host.wait_for_action("host_started")
            yield env
        finally:
            host.kill()


def test_chat_and_invoke_exit_1_when_the_provider_failed(env: Env) -> None:
    said = env.ncl("chat", "demo", "hello")
    assert said.returncode == 1 and said.stdout == ""
    assert said.stderr.startswith("ncl: error: Sorry, I could not answer: ") and said.stderr.count("\n") == 1
    as_json = env.ncl("chat", "demo", "again", "--json")
    assert as_json.returncode == 1
    [reply] = json.loads(as_json.stdout)["replies"]
    assert reply["failed"] is True and reply["text"].startswith("Sorry, I could not answer: ")
    invoked = env.ncl("agent", "invoke", "demo", "--prompt", "what is 2+2", "--json")
    assert invoked.returncode == 1 and json.loads(invoked.stdout)["replies"][0]["failed"] is True


def test_an_answer_that_is_no_error_exits_0(env: Env) -> None:
    said = env.ncl("chat", "demo", "/list_tasks")  # a slash command needs no model
    assert (said.returncode, said.stdout) == (0, "No tasks.\n")


def test_a_refused_slash_command_exits_1_naming_why(env: Env) -> None:
    said = env.ncl("chat", "demo", '/pause_task {"taskId": "task-nope"}')
    assert said.returncode == 1 and said.stdout == ""
    assert said.stderr == "ncl: error: no task 'task-nope' in this conversation (see list_tasks)\n"


def test_a_one_shot_chat_cut_off_by_the_host_says_its_message_was_kept(tmp_path: Path) -> None:
    """The host takes the message, then dies while the model thinks: the chat says so, and that the message is
    queued (it is answered after a restart): a resend would ask twice (review: it said only that the host closed)."""
    with socket.create_server(("127.0.0.1", 0)) as model:  # a model API that takes connections and never answers
        env = Env(tmp_path)
        env.vars.update({"NCL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": "sk-test",
                         "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{model.getsockname()[1]}"})
        env.ok("groups", "create", "demo", "--channel", "cli")
        host = Host(env)
        try:
            host.wait_for_action("host_started")
            chat = subprocess.Popen([*ncl_command(), "chat", "demo", "hello"], cwd=env.root, env=env.vars,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            host.wait_for_action("runner_starting")  # (after the answer to the send: the message is in the inbox)
        finally:
            host.kill()
        out, err = chat.communicate(timeout=30)
    [session] = json.loads(env.ok("sessions", "list", "--json"))["sessions"]
    [queued] = json.loads(env.ok("messages", "list", "--session", session["id"], "--json"))["messages"]
    assert chat.returncode == 1 and out == ""
    assert err == f"ncl: the host closed the connection (the message is queued as {queued['id']})\n"
