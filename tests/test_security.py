"""Security boundaries (issue 7): what an agent, its runner and a local user can and cannot reach.

The agent's tools and the system rows it writes address only its own session's tasks and cannot choose where
anything is routed; file paths stay inside the workspace (``send_file``) or the group folder (queue file items,
group folders); gate scripts get a stripped environment; the credential proxy forwards only the model API; every
socket the host listens on is loopback-only or owner-only; and nothing in the product runs a shell (the gate's
``bash -c`` with an argument list is the one deliberate exception). Container-side checks are in
``tests/docker/test_container.py``, ``tests/docker/test_end_to_end.py`` and ``tests/docker/test_security_container.py``.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import e2e_scenario as scenario
import pytest
from kit import FakeClock, RecordingRuntime, World, utc
from processes import Env
from test_proxy import Upstream, raw, running_upstream

from agent_runner.config import RunnerConfig
from agent_runner.mcp_server import server_parameters
from agent_runner.providers import MockProvider
from agent_runner.runner import Runner
from agent_runner.store import Store
from agent_runner.tools import ToolError, Tools
from host import db, groups, inbox, queues, sessions
from host.errors import NclError
from host.proxy import CredentialProxy
from host.sessions import Session
from host.settings import Settings
from schemas.times import to_text

T0 = utc("2026-06-11T13:00:00")
SECRET = "sk-ant-security-probe-never-leaks"
ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("host", "agent_runner", "schemas")


class TwoSessions:
    """Session A (the agent under test) and B in group demo, and C in group other, each with one recurring task."""

    def __init__(self, root: Path) -> None:
        self.world = World(root)
        self.a, self.b = self.world.session, self.world.new_session()
        other, _ = groups.create(self.world.central, self.world.settings, T0, "other", ["cli"])
        self.c = sessions.create(self.world.central, self.world.settings, T0, other, None)
        self.mine = self.world.schedule(T0, recurrence="0 9 * * *", session=self.a)
        self.theirs = {"same group": (self.b, self.world.schedule(T0, recurrence="0 9 * * *", session=self.b)),
                       "other group": (self.c, self.world.schedule(T0, recurrence="0 9 * * *", session=self.c))}
        config = RunnerConfig(session_dir=self.a.folder, generation="gen-test", tz="America/New_York")
        self.tools = Tools(config, Store(config), lambda: T0)

    def rows(self, session: Session) -> list[dict[str, Any]]:
        return self.world.rows(session=session)

    def out_rows(self, session: Session) -> list[dict[str, Any]]:
        with closing(self.world.outbound(session)) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM messages_out ORDER BY seq")]

    def system_row(self, session: Session, content: dict[str, Any], **columns: Any) -> str:
        """A system request as a runner writes it, with any runner-chosen column values (routing, in_reply_to)."""
        out_id = f"msg-1781182800000-{len(self.out_rows(session)):06d}"
        seq = 2 * len(self.out_rows(session)) + 1
        row = {"id": out_id, "seq": seq, "timestamp": to_text(T0), "kind": "system", "content": json.dumps(content),
               **columns}
        with closing(self.world.outbound(session)) as conn, db.transaction(conn):
            conn.execute(f"INSERT INTO messages_out({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
        return out_id


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoSessions]:
    made = TwoSessions(tmp_path)
    yield made
    made.world.central.close()


# --- the agent's tools and system rows stay in their own session -------------------------------------------------


@pytest.mark.parametrize("whose", ["same group", "other group"])
@pytest.mark.parametrize("tool", ["update_task", "pause_task", "resume_task", "cancel_task"])
def test_tools_cannot_address_another_sessions_task(two: TwoSessions, tool: str, whose: str) -> None:
    _, task_id = two.theirs[whose]
    arguments = {"taskId": task_id, **({"prompt": "hijacked"} if tool == "update_task" else {})}
    with pytest.raises(ToolError, match="no task"):
        two.tools.call(tool, arguments)
    assert two.out_rows(two.a) == []  # nothing was even requested
    assert task_id not in two.tools.call("list_tasks", {})
    assert two.mine in two.tools.call("list_tasks", {})


@pytest.mark.parametrize("whose", ["same group", "other group"])
@pytest.mark.parametrize("request_", [{"action": "update_task", "prompt": "hijacked", "recurrence": "*/5 * * * *"},
                                      {"action": "pause_task"}, {"action": "resume_task"}, {"action": "cancel_task"}],
                         ids=lambda r: r["action"])
def test_system_rows_naming_another_sessions_task_are_rejected_and_it_is_untouched(
        two: TwoSessions, request_: dict[str, Any], whose: str) -> None:
    session, task_id = two.theirs[whose]
    untouched = two.rows(session)
    two.system_row(two.a, {**request_, "taskId": task_id})
    result = two.world.sweeper().tick(T0 + timedelta(seconds=1))
    assert (result.applied, result.errors) == (0, 0)
    assert two.rows(session) == untouched
    assert [n["notice"] for n in two.world.notices()] == ["request_rejected"]  # in A, whose request it was


def test_an_agent_cannot_take_over_another_sessions_task_id(two: TwoSessions, ncl: Callable[..., Any],
                                                            cli_env: Any) -> None:
    assert cli_env.data_dir == two.world.settings.data_dir  # the CLI sees the same install
    # The victim's session is younger than A's: the CLI looks through sessions oldest first.
    session = sessions.create(two.world.central, two.world.settings, T0, two.world.group, None)
    task_id = two.world.schedule(T0, recurrence="0 9 * * *", session=session)
    two.system_row(two.a, {"action": "schedule_task", "taskId": task_id, "prompt": "decoy", "recurrence": "0 10 * * *"})
    two.world.sweeper().tick(T0 + timedelta(seconds=1))
    cancelled = ncl("tasks", "cancel", task_id, "--json")
    live = [r for r in two.rows(session) if r["id"] == task_id and r["status"] in ("pending", "paused")]
    assert cancelled.code == 1 or live == [], "the operator's cancel of B's task left it running"


ROUTING_KEYS = ["platform_id", "channel_type", "thread_id", "platformId", "channelType", "threadId", "sessionId",
                "session_id", "agentGroupId", "agent_group_id", "routing", "to"]


@pytest.mark.parametrize("key", ROUTING_KEYS)
def test_a_schedule_request_carrying_routing_or_session_keys_is_refused(two: TwoSessions, key: str) -> None:
    session, _ = two.theirs["other group"]
    value: Any = {"channel_type": "webhook:evil"} if key == "routing" else session.id
    two.system_row(two.a, {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x", key: value})
    assert two.world.sweeper().tick(T0 + timedelta(seconds=1)).applied == 0
    assert "task-1781182800000-aaaaaa" not in [r["id"] for s in (two.a, two.b, two.c) for r in two.rows(s)]
    [notice] = two.world.notices()
    assert notice["notice"] == "request_rejected" and key in notice["text"]


def _chat(two: TwoSessions, session: Session, message_id: str, routing: dict[str, str]) -> None:
    with closing(two.world.inbound(session)) as conn, db.transaction(conn):
        inbox.insert(conn, {"id": message_id, "kind": "chat", "timestamp": to_text(T0), "status": "completed",
                            "content": json.dumps({"text": "hi", "sender": "alice"}), **routing})
        conn.execute("INSERT OR IGNORE INTO session_routing(id, channel_type, platform_id, thread_id)"
                     " VALUES (1, :channel_type, :platform_id, :thread_id)", routing)


def test_routing_of_a_scheduled_task_comes_from_the_inbox_never_from_the_runners_row(two: TwoSessions) -> None:
    mine = {"platform_id": "p-a", "channel_type": "cli", "thread_id": "t-a"}
    _chat(two, two.a, "msg-1781182700000-aaaaaa", mine)
    _chat(two, two.b, "msg-1781182700000-bbbbbb", {"platform_id": "p-b", "channel_type": "queue:b", "thread_id": "t-b"})
    evil = {"platform_id": "evil", "channel_type": "webhook:evil", "thread_id": "evil"}
    # Answering A's own chat, with routing columns of the runner's choosing: the task goes where that chat came from.
    two.system_row(two.a, {"action": "schedule_task", "taskId": "task-1781182800000-aaaaaa", "prompt": "x"},
                   in_reply_to="msg-1781182700000-aaaaaa", **evil)
    # "Answering" a message that lives in session B: not in A's inbox, so A's own routing, never B's.
    two.system_row(two.a, {"action": "schedule_task", "taskId": "task-1781182800000-bbbbbb", "prompt": "y"},
                   in_reply_to="msg-1781182700000-bbbbbb", **evil)
    assert two.world.sweeper().tick(T0 + timedelta(seconds=1)).applied == 2
    tasks = {r["id"]: {k: r[k] for k in mine} for r in two.rows(two.a) if r["id"] != two.mine and r["kind"] == "task"}
    assert tasks == {"task-1781182800000-aaaaaa": mine, "task-1781182800000-bbbbbb": mine}


# --- paths that escape the workspace, the group folder, data/groups ----------------------------------------------


def furnish(home: Path, root: Path) -> None:
    """A file, a subfolder, and links: one to a file inside, others to the secret outside (a file, a dir, ``..``)."""
    (home / "sub").mkdir(parents=True, exist_ok=True)
    (home / "report.txt").write_text("numbers")
    (home / "link-in").symlink_to(home / "report.txt")
    (home / "link-out").symlink_to(root / "secret.txt")
    (home / "link-dir").symlink_to(root / "secret-dir")
    (home / "link-up").symlink_to("..")


class Files:
    """A session workspace and the folder of a queue's group, furnished alike, and a secret outside both."""

    def __init__(self, root: Path) -> None:
        self.world = World(root, tz="UTC")
        self.workspace = self.world.session.folder
        self.secret = root / "secret.txt"
        self.secret.write_text(SECRET)
        (root / "secret-dir").mkdir()
        (root / "secret-dir" / "secret.txt").write_text(SECRET)
        self.queue_group, _ = groups.create(self.world.central, self.world.settings, T0, "jobs", ["queue:jobs"])
        furnish(self.workspace, root)
        furnish(groups.folder(self.world.settings, self.queue_group.id), root)
        furnish(groups.folder(self.world.settings, self.world.group.id), root)  # another group's files
        sent = self.workspace / "outbox" / "msg-1781182700000-aaaaaa"
        sent.mkdir(parents=True)
        (sent / "old.txt").write_text("sent before")
        (self.workspace / "link-outbox").symlink_to(sent / "old.txt")
        config = RunnerConfig(session_dir=self.workspace, generation="gen-test", tz="UTC")
        self.tools = Tools(config, Store(config), lambda: T0)

    def outbound(self) -> list[dict[str, Any]]:
        with closing(self.world.outbound()) as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM messages_out")]

    def outbox(self) -> list[str]:
        return sorted(str(p.relative_to(self.workspace)) for p in (self.workspace / "outbox").rglob("*"))


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    made = Files(tmp_path)
    yield made
    made.world.central.close()


@pytest.mark.parametrize("path", ["../secret.txt", "../../../../../../etc/hostname", "/etc/hostname", "ABSOLUTE",
                                  "link-out", "link-dir/secret.txt", "link-up/secret.txt", "sub/../../secret.txt",
                                  "outbox/msg-1781182700000-aaaaaa/old.txt", "link-outbox"])
def test_send_file_refuses_paths_out_of_the_workspace(files: Files, path: str) -> None:
    path = str(files.secret) if path == "ABSOLUTE" else path
    outbox = files.outbox()
    with pytest.raises(ToolError, match="outside the workspace"):
        files.tools.call("send_file", {"path": path})
    assert files.outbound() == [] and files.outbox() == outbox


@pytest.mark.parametrize("path", ["report.txt", "sub/../report.txt", "./report.txt", "link-in"])
def test_send_file_sends_a_copy_of_a_workspace_file(files: Files, path: str) -> None:
    answer = files.tools.call("send_file", {"path": path})
    [row] = files.outbound()
    assert row["id"] in answer and json.loads(row["content"]) == {"text": "", "files": ["report.txt"]}
    copy = files.workspace / "outbox" / row["id"] / "report.txt"
    assert copy.read_text() == "numbers" and not copy.is_symlink()


@pytest.mark.parametrize("url", ["room:///../secret.txt", "room:///../../../../../../etc/hostname", "room:////etc/hostname",
                                 "room:///link-out", "room:///link-dir/secret.txt", "room:///link-up/secret.txt",
                                 "room:///sub/../../secret.txt", "room:///../ag-demo/report.txt", "room:///.",
                                 "room:///", "file:///etc/hostname", "room://host/etc/hostname"])
def test_queue_file_items_refuse_paths_out_of_the_group_folder(files: Files, url: str) -> None:
    listed = files.world.central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    with pytest.raises(NclError) as refused:
        queues.send(files.world.central, files.world.settings, T0, "jobs", {"prompt": [{"type": "file", "url": url}]})
    assert SECRET not in str(refused.value)
    assert files.world.central.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == listed


@pytest.mark.parametrize("url", ["room:///report.txt", "room:///sub/../report.txt", "room:///link-in"])
def test_queue_file_items_inside_the_group_folder_are_inlined(files: Files, url: str) -> None:
    payload = {"prompt": [{"type": "file", "url": url}]}
    sent = queues.send(files.world.central, files.world.settings, T0, "jobs", payload)
    folder = files.world.settings.sessions_dir / files.queue_group.id / sent["session_id"]
    with closing(db.connect(folder / "inbound.db", "inbound", readonly=True)) as conn:
        (content,) = conn.execute("SELECT content FROM messages_in WHERE id = ?", (sent["message_id"],)).fetchone()
    assert '<file name="report.txt">\nnumbers\n</file>' in json.loads(content)["prompt"]


def test_queue_send_on_the_command_line_refuses_a_file_out_of_the_group_folder(ncl: Callable[..., Any],
                                                                                cli_env: Any) -> None:
    assert ncl("groups", "create", "jobs", "--channel", "queue:jobs").code == 0
    payload = json.dumps({"prompt": [{"type": "file", "url": "room:///../../../../../../../../etc/hostname"}]})
    result = ncl("queue", "send", "--queue", "jobs", "--json", payload)
    assert result.code == 1 and len(result.err_lines) == 1 and "outside the group folder" in result.err
    assert not (cli_env.data_dir / "v2-sessions").exists() or not list((cli_env.data_dir / "v2-sessions").rglob("*.db"))


@pytest.mark.parametrize("name", ["..", ".", "../escape", "/tmp/escape", "a/b", "a/../../escape", "~", "ag-x/..", " ",
                                  "x\x00y", "../../../../etc"])
def test_group_names_cannot_place_a_folder_outside_data_groups(ncl: Callable[..., Any], cli_env: Any,
                                                               name: str) -> None:
    before = sorted(str(p) for p in cli_env.root.rglob("*"))
    result = ncl("groups", "create", "--", name)
    assert result.code == 1 and len(result.err_lines) == 1 and "invalid group name" in result.err
    assert sorted(str(p) for p in cli_env.root.rglob("*") if "escape" in str(p)) == []
    assert [p for p in sorted(str(p) for p in cli_env.root.rglob("*")) if p not in before
            and not p.startswith(str(cli_env.data_dir))] == []


# --- what the runner owns in its session folder: the host must not follow it out ----------------------------------


def test_a_symlink_planted_as_outbound_db_is_never_opened_by_the_host(tmp_path: Path) -> None:
    world = World(tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"")  # an empty file is a valid empty SQLite database to sqlite3
    outbound = world.session.folder / "outbound.db"
    outbound.unlink()
    outbound.symlink_to(outside)
    try:
        world.sweeper().tick(T0)
        assert outside.read_bytes() == b"", "the host wrote through the runner's symlink"
    finally:
        world.central.close()


@pytest.mark.slow
def test_a_heartbeat_the_runner_made_a_fifo_never_blocks_the_hosts_sweep(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.schedule(T0 - timedelta(minutes=1))
    heartbeat = world.session.folder / ".heartbeat"
    os.mkfifo(heartbeat)
    swept = threading.Event()

    def sweep() -> None:  # SQLite connections belong to the thread that made them: the sweeper lives here
        sweeper = world.sweeper(RecordingRuntime())
        sweeper.tick(T0)  # wakes a runner (recorded, not started)
        sweeper.tick(T0 + timedelta(seconds=61))  # a live runner: its heartbeat is read
        swept.set()

    worker = threading.Thread(target=sweep, daemon=True)
    worker.start()
    finished = swept.wait(3)
    if not finished:  # let the blocked read see EOF, so no thread is left hanging
        os.close(os.open(heartbeat, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
    world.central.close()
    assert finished, "the sweep blocked on the runner's .heartbeat"


# --- gate scripts, MCP servers: the stripped environment ---------------------------------------------------------

GATE_ENV = {"PATH", "HOME", "TZ", "NCL_TASK_ID", "PWD", "SHLVL", "_"}  # the four we pass, and what bash adds itself


async def test_gate_scripts_run_by_the_runner_get_the_stripped_environment(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "NCL_SECRET_PROBE", "AWS_SECRET_ACCESS_KEY", "NCL_RUNNER_GENERATION"):
        monkeypatch.setenv(name, SECRET)
    world = World(tmp_path)
    task_id = world.schedule(T0 - timedelta(minutes=1),
                             script='env > gate-env.txt; echo \'{"wakeAgent": false}\'')
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    assert await Runner(config, MockProvider(), FakeClock(T0)).step()
    dumped = (world.session.folder / "gate-env.txt").read_text()
    names = {line.split("=", 1)[0] for line in dumped.splitlines() if "=" in line}
    assert names <= GATE_ENV and SECRET not in dumped, dumped
    assert f"NCL_TASK_ID={task_id}" in dumped.splitlines() and "TZ=America/New_York" in dumped.splitlines()
    with closing(world.outbound()) as conn:
        (detail,) = conn.execute("SELECT detail FROM processing_ack WHERE message_id = ?", (task_id,)).fetchone()
    assert json.loads(detail)["outcome"] == "skipped"  # the gate said no: the agent was not woken
    world.central.close()


async def test_a_gate_script_the_os_cannot_run_is_a_gate_error_not_a_dead_runner(tmp_path: Path) -> None:
    world = World(tmp_path)
    task_id = world.schedule(T0 - timedelta(minutes=1), script="echo '{\"wakeAgent\": true}' \x00")
    config = RunnerConfig(session_dir=world.session.folder, generation="gen-test", tz="America/New_York")
    try:
        assert await Runner(config, MockProvider(), FakeClock(T0)).step()
        with closing(world.outbound()) as conn:
            (detail,) = conn.execute("SELECT detail FROM processing_ack WHERE message_id = ?", (task_id,)).fetchone()
        assert json.loads(detail)["outcome"] == "gate_error"
    finally:
        world.central.close()


def test_the_mcp_server_is_started_with_the_runners_settings_only(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    params = server_parameters(RunnerConfig(session_dir=tmp_path, generation="gen-test", tz="UTC"))
    assert params.env is not None and SECRET not in json.dumps(params.env)
    assert not [n for n in params.env if any(w in n.upper() for w in ("KEY", "TOKEN", "SECRET", "ANTHROPIC"))]


# --- the credential proxy forwards the model API and nothing else ------------------------------------------------


@pytest.fixture
def model_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    with running_upstream(monkeypatch) as server:
        yield server


@pytest.fixture
def proxy_socket(model_api: Upstream, tmp_path: Path) -> Iterator[Path]:
    proxy = CredentialProxy(Settings.model_validate({"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": model_api.url}))
    (tmp_path / "sess").mkdir()
    yield proxy.open(tmp_path / "sess")
    proxy.shutdown()


# tests/test_proxy.py covers GET, other /v1 paths, `..`, `//` and absolute-form; these are the remaining tricks.
@pytest.mark.parametrize("line", ["PUT /v1/messages", "DELETE /v1/messages", "PATCH /v1/messages", "OPTIONS *",
                                  "OPTIONS /v1/messages", "post /v1/messages", "CONNECT api.anthropic.com:443",
                                  "POST /V1/MESSAGES", "POST /v1/messages/", "POST /v1/messages;x",
                                  "POST /v1/messages/%2e%2e/files", "POST /v1/messages%2f..%2ffiles",
                                  "POST /v1/messages/count_tokens/../../files", "POST @evil.example/v1/messages",
                                  "POST /v1/messages#x", "POST /v1/complete"])
def test_the_proxy_refuses_everything_but_posts_to_the_model_paths(proxy_socket: Path, model_api: Upstream,
                                                                   line: str) -> None:
    answer = raw(proxy_socket, f"{line} HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{{}}".encode())
    assert answer.split(b" ")[1] in (b"400", b"403"), answer[:80]
    assert model_api.seen == [] and SECRET.encode() not in answer


def test_the_proxy_refuses_two_body_framings_at_once(proxy_socket: Path, model_api: Upstream) -> None:
    answer = raw(proxy_socket, b"POST /v1/messages HTTP/1.1\r\nhost: p\r\ncontent-length: 5\r\n"
                               b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and model_api.seen == []


def test_client_headers_cannot_redirect_the_proxy_or_swap_its_key(proxy_socket: Path, model_api: Upstream) -> None:
    answer = raw(proxy_socket, b"POST /v1/messages HTTP/1.1\r\nhost: evil.example\r\nx-forwarded-host: evil\r\n"
                               b"proxy-authorization: Basic eA==\r\nx-api-key: agent-key\r\ncontent-length: 2\r\n\r\n"
                               b"{}")
    assert answer.startswith(b"HTTP/1.1 200 ")
    [seen] = model_api.seen
    assert seen.headers["host"] == model_api.url.removeprefix("http://")  # went to the configured API, nowhere else
    assert seen.headers["x-api-key"] == SECRET and "proxy-authorization" not in seen.headers
    assert SECRET.encode() not in answer


# --- every listening socket of a running host is loopback-only or owner-only -------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _family(pid: int) -> list[int]:
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        queue += _children(current)
    return pids


def _socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    packed = bytes.fromhex(hex_ip)
    if len(packed) == 4:
        return ipaddress.IPv4Address(packed[::-1])
    return ipaddress.IPv6Address(b"".join(packed[i:i + 4][::-1] for i in range(0, 16, 4)))


def _inet(kind: str, inodes: set[int]) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, str]]:
    """(address, port, state) of this protocol's sockets among ``inodes`` (/proc/net/tcp, tcp6, udp, udp6)."""
    found = []
    for name in (kind, kind + "6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in inodes:
                ip, port = fields[1].split(":")
                found.append((_address(ip), int(port, 16), fields[3]))
    return found


def _unix_listeners(inodes: set[int]) -> list[str]:
    """Paths of listening unix sockets among ``inodes`` ('' = unnamed, '@…' = the abstract namespace)."""
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[6]) in inodes and int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            found.append(fields[7] if len(fields) > 7 else "")
    return found


@pytest.fixture
def short_env() -> Iterator[Env]:
    """A short data dir, so runners reach their proxy socket by path (AF_UNIX's 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="ncl-sec-"))
    made = Env(root)  # NCL_RUNTIME=local, NCL_HTTP_PORT=0
    made.vars["NCL_PROVIDER"] = "mock"
    yield made
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_every_listening_socket_of_a_running_host_is_loopback_or_owner_only(short_env: Env) -> None:
    env = short_env
    env.ok("groups", "create", "demo", "--channel", "cli", "--channel", "webhook:hook")
    with scenario.running_host(env, NCL_IDLE_TIMEOUT_S="60") as host:
        answered = env.ncl("chat", "demo", "hello", "--json", "--timeout", "30")
        assert answered.returncode == 0, answered.stderr
        session_id = json.loads(answered.stdout)["session_id"]
        proxy_sock = scenario.session_folder(env, session_id) / ".proxy.sock"
        assert proxy_sock.exists()  # opened before the runner that answered was started
        pids = _family(host.proc.pid)
        assert len(pids) >= 2, "no runner alive under the host"
        inodes = _socket_inodes(pids)
        tcp = _inet("tcp", inodes)
        listening = [(ip, port) for ip, port, state in tcp if state == "0A"]
        assert listening, "the webhook server is not listening"
        assert all(ip.is_loopback for ip, _ in listening), listening
        assert all(ip.is_loopback for ip, _, _ in _inet("udp", inodes)), _inet("udp", inodes)
        unix = _unix_listeners(inodes)
        assert not [p for p in unix if not p or p.startswith("@")], f"unnamed or abstract listeners: {unix}"
        files = [p for p in env.data_dir.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]
        assert {env.data_dir / "cli.sock", proxy_sock} <= set(files), files
        modes = {str(p.relative_to(env.data_dir)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in files}
        assert set(modes.values()) == {"0o600"}, modes
        assert len(unix) == len(files), (unix, files)  # every listener is one of those files


# --- no shell anywhere in the product ----------------------------------------------------------------------------

SHELL_FUNCTIONS = {("os", "system"), ("os", "popen"), ("os", "spawnlp"), ("os", "spawnvp"), ("subprocess", "getoutput"),
                   ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell"), ("pty", "spawn")}


def _product_files() -> list[Path]:
    return sorted(p for package in PRODUCT for p in (ROOT / package).rglob("*.py"))


def test_no_product_code_runs_a_shell() -> None:
    offenders = []
    for path in _product_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                    offenders.append(f"{where} shell={ast.unparse(keyword.value)}")
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if (owner, func.attr) in SHELL_FUNCTIONS or func.attr.endswith("subprocess_shell"):
                    offenders.append(f"{where} {owner}.{func.attr}")
    assert offenders == []
    assert [p for p in _product_files() if "shell=True" in p.read_text()] == []


def test_the_gate_is_the_one_place_that_runs_bash_and_with_an_argument_list() -> None:
    runs_bash = [str(p.relative_to(ROOT)) for p in _product_files()
                 if any(isinstance(n, ast.Constant) and n.value in ("bash", "sh", "/bin/sh", "/bin/bash")
                        for n in ast.walk(ast.parse(p.read_text())))]
    assert runs_bash == ["agent_runner/gate.py"]
    gate = (ROOT / "agent_runner" / "gate.py").read_text()
    assert 'subprocess.Popen(["bash", "-c", script]' in gate


def test_tcp_servers_in_product_code_bind_loopback() -> None:
    """A static companion of the live check above: every TCP server the product starts names 127.0.0.1."""
    servers = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "start_server", "create_server"):
                host = next((k.value for k in node.keywords if k.arg == "host"), None)
                servers.append((f"{path.relative_to(ROOT)}:{node.lineno}", ast.unparse(host) if host else None))
    assert servers and all(host == "'127.0.0.1'" for _, host in servers), servers
