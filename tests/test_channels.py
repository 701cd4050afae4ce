"""Channels through their real transports (issue 6): ``ncl chat`` and ``ncl agent invoke`` over the host's
socket, ``ncl queue send`` as a CLI process, answered by real local runners with the mock provider."""

from __future__ import annotations

import json
import sqlite3
import stat
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from datetime import date
from pathlib import Path

import pytest
from processes import Env, Host

from host.channels import queues
from host.errors import NclError


@pytest.fixture
def env(tmp_path: Path) -> Env:
    env = Env(tmp_path)
    created = json.loads(env.ok("groups", "create", "demo", "--channel", "cli", "--channel", "toolkit:helper",
                                "--channel", "queue:support-jobs", "--channel", "webhook:github", "--json"))
    env.vars["WEBHOOK_TOKEN"] = created["webhook_tokens"]["github"]
    return env


@pytest.fixture
def host(env: Env) -> Iterator[Host]:
    running = Host(env, NCL_IDLE_TIMEOUT_S="30")
    running.wait_for_action("host_started")
    yield running
    running.kill()


def replies(env: Env, session_id: str) -> list[dict[str, object]]:
    path = env.data_dir / "v2-sessions" / "ag-demo" / session_id / "outbound.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return [{"in_reply_to": r, "text": json.loads(c)["text"]} for r, c in
                conn.execute("SELECT in_reply_to, content FROM messages_out WHERE kind = 'chat' ORDER BY seq")]


def test_chat_once_prints_the_reply(env: Env, host: Host) -> None:
    assert env.ok("chat", "demo", "hello there") == "mock: hello there\n"
    data = json.loads(env.ok("chat", "demo", "and again", "--json"))
    assert set(data) == {"session_id", "replies"}
    [reply] = data["replies"]
    assert set(reply) == {"id", "text", "timestamp", "task", "failed"} and reply["text"] == "mock: and again"
    assert (reply["task"], reply["failed"]) == (None, False)  # an answer to the message itself, not an error
    sessions = json.loads(env.ok("sessions", "list", "--json"))["sessions"]
    assert [s["thread_key"] for s in sessions] == ["cli"]  # shared mode: one session for the channel address


def test_chat_socket_is_owner_only(env: Env, host: Host) -> None:
    mode = (env.data_dir / "cli.sock").stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_slash_schedule_through_chat_lands_as_a_task(env: Env, host: Host) -> None:
    out = env.ok("chat", "demo", '/schedule_task {"prompt":"standup","recurrence":"0 9 * * 1-5"}')
    task_id = out.split("id: ")[1].split(",")[0]
    listed = json.loads(env.ok("tasks", "list", "--json"))["tasks"]
    assert [t["id"] for t in listed] == [task_id]


def test_agent_invoke_answers_through_the_toolkit_channel(env: Env, host: Host) -> None:
    data = json.loads(env.ok("agent", "invoke", "demo", "--prompt", "what is 2+2", "--json"))
    assert data["replies"][0]["text"] == "mock: what is 2+2"


def test_chat_without_a_host_is_one_clear_line(env: Env) -> None:
    done = env.ncl("chat", "demo", "hello")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "host is not running" in done.stderr


def test_chat_to_a_group_without_cli_is_refused(env: Env, host: Host) -> None:
    env.ok("groups", "create", "quiet", "--channel", "queue:other")
    done = env.ncl("chat", "quiet", "hello")
    assert done.returncode == 1 and "(add it with 'ncl groups update quiet --channel cli')" in done.stderr
    env.ok("groups", "update", "quiet", "--channel", "cli")  # as it says
    assert env.ok("chat", "quiet", "hello") == "mock: hello\n"


def test_queue_jobs_without_thread_get_a_session_each_and_are_answered_once(env: Env, host: Host) -> None:
    sent = [json.loads(env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps({"prompt": f"job {n}"})))
            for n in range(5)]
    assert all(set(s) == {"queue", "message_id", "session_id"} for s in sent)
    assert len({s["session_id"] for s in sent}) == 5
    waiting = {job["session_id"] for job in sent}
    while waiting:  # replies come in any order: take each session's as it comes
        line = host.wait_for_action("reply_handled")
        waiting.discard(line.split(" session=")[1].rstrip("]"))
    for n, job in enumerate(sent):
        assert replies(env, job["session_id"]) == [{"in_reply_to": job["message_id"], "text": f"mock: job {n}"}]


def test_queue_thread_template_picks_one_session_per_period(env: Env) -> None:
    payload = {"prompt": "summarize", "thread_id": "dataset://threads/support/{YYYY}/{MM}/{DD}/{HH}/{mm}/summary"}
    first = json.loads(env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps(payload),
                              "--now", "2026-06-11T09:00:10Z"))
    same = json.loads(env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps(payload),
                             "--now", "2026-06-11T09:00:50Z"))
    later = json.loads(env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps(payload),
                              "--now", "2026-06-11T09:01:00Z"))
    assert first["session_id"] == same["session_id"] != later["session_id"]
    listed = json.loads(env.ok("sessions", "list", "--json"))["sessions"]
    assert "queue:support-jobs/dataset://threads/support/2026/06/11/09/00/summary" in [s["thread_key"] for s in listed]


def test_queue_prompt_list_mixes_file_and_text_items(env: Env) -> None:
    (env.data_dir / "groups" / "ag-demo" / "tickets.txt").write_text("ticket 42: printer on fire")
    payload = {"prompt": [{"type": "file", "url": "room:///tickets.txt"}, {"type": "text", "text": "Triage it."}]}
    sent = json.loads(env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps(payload)))
    path = env.data_dir / "v2-sessions" / "ag-demo" / sent["session_id"] / "inbound.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        content = json.loads(conn.execute("SELECT content FROM messages_in").fetchone()[0])
    assert "printer on fire" in content["prompt"] and "Triage it." in content["prompt"]
    assert content["content"][0] == {"type": "file", "url": "room:///tickets.txt", "name": "tickets.txt"}
    assert content["queue"] == "support-jobs" and content["payload"] == payload


def test_a_prompts_files_are_inlined_once_each_and_bounded_together(env: Env) -> None:
    """(One 512 KiB file named 200 times in a 9 KB payload made a 100 MB row: attack review.)"""
    folder = env.data_dir / "groups" / "ag-demo"
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(name[0] * (900 << 10))
    item = {"type": "file", "url": "room:///a.txt"}
    sent = json.loads(env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps(
        {"prompt": [item, {"type": "file", "url": "room:///./a.txt"}, item, {"type": "file", "url": "room:///b.txt"}]})))
    path = env.data_dir / "v2-sessions" / "ag-demo" / sent["session_id"] / "inbound.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        content = json.loads(conn.execute("SELECT content FROM messages_in").fetchone()[0])
    assert content["prompt"].count('<file name="a.txt">') == 1 and content["prompt"].count('<file name="b.txt">') == 1
    assert [i["name"] for i in content["content"]] == ["a.txt", "a.txt", "a.txt", "b.txt"]
    three = [{"type": "file", "url": f"room:///{n}"} for n in ("a.txt", "b.txt", "c.txt")]
    for prompt, needle in (([item] * 21, "has 21 file items; at most 20"), (three, "more than 2 MiB together")):
        done = env.ncl("queue", "send", "--queue", "support-jobs", "--json", json.dumps({"prompt": prompt}))
        assert done.returncode == 1 and needle in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert len(json.loads(env.ok("sessions", "list", "--json"))["sessions"]) == 1


@pytest.mark.parametrize(("payload", "needle"), [
    ('{"prompt": [{"type": "file", "url": "room:///../../etc/passwd"}]}', "outside the group folder"),
    ('{"prompt": [{"type": "file", "url": "file:///etc/passwd"}]}', "room:///"),
    ('{"prompt": ""}', "prompt"),
    ('{"prompt": "x", "thread_id": 5}', "thread_id"),
    ('{"prompt": "x", "thread_id": "day-{yyyy}{MM}-{Q}"}', "unknown time token(s) {Q}, {yyyy}: the tokens are {YYYY}"),
    ("[1, 2]", "JSON object"),
    ('{"prompt": [1]}', "bad prompt item 1"),
    ("{not json", "not JSON"),
])
def test_bad_queue_payloads_are_refused_without_a_row(env: Env, payload: str, needle: str) -> None:
    done = env.ncl("queue", "send", "--queue", "support-jobs", "--json", payload)
    assert done.returncode == 1 and needle in done.stderr and done.stderr.count("\n") == 1
    assert json.loads(env.ok("sessions", "list", "--json"))["sessions"] == []


@pytest.mark.parametrize(("payload", "needle"), [
    ([1], "must be a JSON object"),
    ({"prompt": "x", "n": float("nan")}, "strict JSON"),
    ({"prompt": "x", "at": date(2026, 1, 1)}, "strict JSON"),  # what YAML makes of an unquoted date
    ({"prompt": "x", "extra": {1: "a"}}, "strict JSON"),
    ({"prompt": "\ud800"}, "strict JSON"),
    ({"prompt": "x", "thread_id": "t-\udc00"}, "strict JSON"),
    ({}, 'needs "prompt"'),
    ({"prompt": " "}, 'needs "prompt"'),
    ({"prompt": []}, 'needs "prompt"'),
    ({"prompt": {"type": "text", "text": "x"}}, 'needs "prompt"'),
    ({"prompt": [1]}, "bad prompt item 1:"),
    ({"prompt": [{"type": "text"}]}, "bad prompt item"),
    ({"prompt": [{"type": "text", "text": 5}]}, "bad prompt item"),
    ({"prompt": [{"type": "image", "url": "room:///a.png"}]}, "bad prompt item"),
    ({"prompt": [{"type": "file"}]}, "bad prompt item"),
    ({"prompt": [{"type": "file", "url": 5}]}, "must be room:///"),
    ({"prompt": [{"type": "file", "url": "file:///etc/passwd"}]}, "must be room:///"),
    ({"prompt": [{"type": "file", "url": "room:///../x"}]}, "room:///../x is outside the group folder"),
    ({"prompt": [{"type": "file", "url": "room:///a/../../x"}]}, "outside the group folder"),
    ({"prompt": [{"type": "file", "url": "room:////etc/passwd"}]}, "outside the group folder"),
    ({"prompt": "x", "thread_id": ""}, "thread_id must be a non-empty string"),
    ({"prompt": "x", "thread_id": "  "}, "thread_id must be a non-empty string"),
    ({"prompt": "x", "thread_id": ["a"]}, "thread_id must be a non-empty string"),
])
def test_check_payload_refuses_in_one_clear_line(payload: object, needle: str) -> None:
    with pytest.raises(NclError) as refused:
        queues.check_payload(payload)
    assert needle in str(refused.value) and "\n" not in str(refused.value), refused.value


@pytest.mark.parametrize("payload", [
    {"prompt": "hi"},
    {"prompt": [{"type": "text", "text": ""}, {"type": "file", "url": "room:///sub/../a.txt"}], "thread_id": "d-{DD}"},
    {"prompt": [{"type": "file", "url": "room:///not-there-yet.txt"}], "extra": {"n": [1, 2.5, None, True]}},
])
def test_check_payload_leaves_the_files_to_send(payload: object) -> None:
    queues.check_payload(payload)  # no file is looked at: a missing file is send's to refuse


def test_queue_symlink_out_of_the_group_folder_is_refused(env: Env) -> None:
    (env.data_dir / "groups" / "ag-demo" / "link").symlink_to("/etc/passwd")
    done = env.ncl("queue", "send", "--queue", "support-jobs", "--json",
                   '{"prompt": [{"type": "file", "url": "room:///link"}]}')
    assert done.returncode == 1 and "outside the group folder" in done.stderr


def test_queue_list_counts_waiting_jobs(env: Env) -> None:
    for n in range(3):
        env.ok("queue", "send", "--queue", "support-jobs", "--json", json.dumps({"prompt": f"job {n}"}))
    data = json.loads(env.ok("queue", "list", "--json"))
    assert data == {"queues": [{"name": "support-jobs", "agent_group_id": "ag-demo", "pending": 3, "in_flight": 0}]}


def test_a_webhook_post_is_accepted_and_answered(env: Env, host: Host) -> None:
    line = next(seen for seen in host.seen if "[action=webhooks_listening " in seen)  # logged before host_started
    port = int(line.split("127.0.0.1:")[1].split("/")[0])
    request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/github", data=b'{"text": "build failed"}',
                                     headers={"Authorization": f"Bearer {env.vars['WEBHOOK_TOKEN']}"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        accepted = json.loads(response.read())
    host.wait_for_action("reply_handled", session=accepted["session_id"])
    [reply] = replies(env, accepted["session_id"])
    assert reply["in_reply_to"] == accepted["message_id"] and "build failed" in str(reply["text"])
