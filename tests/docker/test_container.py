"""Inside a runner container (DESIGN §8 acceptance): a probe runs in place of the runner, started through
``DockerRuntime.start`` for a real session, so it gets exactly the runner's settings, mounts and file hand-over."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kit import World

from host.runtimes.docker import DockerRuntime
from host.runtimes.pool import runner_env
from host.store import db

pytestmark = pytest.mark.docker
SECRET = "sk-ant-probe-must-never-reach-a-container"

PROBE = r"""
import json, os, sqlite3, subprocess

def attempt(action):
    try:
        action()
        return None
    except Exception as exc:
        return [getattr(exc, "errno", None), f"{type(exc).__name__}: {exc}"]

def write_sqlite(path, sql, journal="DELETE"):
    def run():
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute(sql)
        conn.commit()
        conn.close()
    return run

status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
ro = sqlite3.connect("file:/workspace/inbound.db?mode=ro", uri=True)
print(json.dumps({
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "net_dev": [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]],
    "uid": os.getuid(), "euid": os.geteuid(),
    "caps": {key: status[key].strip() for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs")},
    "mounts": {l.split()[1]: l.split()[3].split(",") for l in open("/proc/mounts")},
    "write_usr": attempt(lambda: open("/usr/ncl-probe", "w").close()),
    "write_tmp": attempt(lambda: open("/tmp/ncl-probe", "w").write("x")),
    "env": subprocess.run(["env"], capture_output=True, text=True).stdout,
    "date_Z": subprocess.run(["date", "+%Z"], capture_output=True, text=True).stdout.strip(),
    "heartbeat": attempt(lambda: open("/workspace/.heartbeat", "w").write("probe")),
    "inbound_rows": ro.execute("SELECT COUNT(*) FROM messages_in").fetchone()[0],
    "inbound_sql": attempt(write_sqlite("/workspace/inbound.db", "CREATE TABLE probe(x)")),
    "inbound_append": attempt(lambda: open("/workspace/inbound.db", "ab").write(b"x")),
    "inbound_unlink": attempt(lambda: os.unlink("/workspace/inbound.db")),
    "inbound_replace": attempt(lambda: os.rename("/workspace/.heartbeat", "/workspace/inbound.db")),
    "inbox_replace": attempt(lambda: os.rename("/workspace/inbox", "/workspace/inbox-moved")),
    "outbound_sql": attempt(write_sqlite("/workspace/outbound.db", "INSERT INTO session_state(key, value, "
                                         "updated_at) VALUES ('probe', '1', '2026-01-01T00:00:00.000Z')",
                                         journal="TRUNCATE")),
    "journal_unlink": attempt(lambda: os.unlink("/workspace/outbound.db-journal")),
    "journal_moved": attempt(lambda: os.rename("/workspace/outbound.db-journal", "/workspace/moved")),
    "journal_replace": attempt(lambda: os.rename("/workspace/.heartbeat", "/workspace/outbound.db-journal")),
    "journal_fifo": attempt(lambda: os.mkfifo("/workspace/outbound.db-journal")),
    "outbox_file": attempt(lambda: os.makedirs("/workspace/outbox/msg-probe", exist_ok=True)),
    "agent_file": attempt(lambda: open("/workspace/agent/AGENT.md", "a").write("probe\n")),
}))
"""


@pytest.fixture(scope="module")
def probed_world(tmp_path_factory: pytest.TempPathFactory, runner_image: str, engine: Any) -> Iterator[World]:
    """One probe run for the whole module, in a session whose host has ANTHROPIC_API_KEY set (in its
    settings and its environment)."""
    world = World(tmp_path_factory.mktemp("probe"), NCL_IMAGE=runner_image, ANTHROPIC_API_KEY=SECRET)
    assert world.settings.anthropic_api_key == SECRET
    group_dir = world.settings.groups_dir / world.group.id
    group_dir.mkdir(parents=True, exist_ok=True)
    (group_dir / "AGENT.md").write_text("# memory\n")
    runtime = DockerRuntime(world.settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANTHROPIC_API_KEY", SECRET)
        env = runner_env(world.settings, world.session, "gen-probe", "rules")
        runtime.start(world.session, "gen-probe", env, entrypoint=["/opt/ncl/bin/python", "-c", PROBE])
        container_id = runtime.wait_started(world.session.id)
    world.container_id = container_id  # type: ignore[attr-defined]
    yield world
    runtime.close(stop_runners=True)


@pytest.fixture(scope="module")
def probed(probed_world: World, engine: Any) -> dict[str, Any]:
    container_id = probed_world.container_id  # type: ignore[attr-defined]
    assert engine.api.wait(container_id, timeout=60)["StatusCode"] == 0, engine.api.logs(container_id).decode()
    found: dict[str, Any] = json.loads(engine.api.logs(container_id, stderr=False).decode())
    return found


def test_no_network_interface_but_loopback(probed: dict[str, Any]) -> None:
    assert probed["interfaces"] == ["lo"]
    assert probed["net_dev"] == ["lo"]


def test_runs_as_a_non_root_user_with_no_capabilities(probed: dict[str, Any]) -> None:
    assert probed["uid"] != 0 and probed["euid"] != 0
    caps = probed["caps"]
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0 and int(caps["CapAmb"], 16) == 0
    assert int(caps["CapBnd"], 16) == 0  # dropped outright, not merely unused by a non-root uid
    assert caps["NoNewPrivs"] == "1"


def test_root_filesystem_is_read_only_with_a_writable_tmp(probed: dict[str, Any]) -> None:
    assert "ro" in probed["mounts"]["/"]
    assert probed["write_usr"][0] == errno.EROFS  # read-only, not merely not ours
    assert probed["write_tmp"] is None


def test_env_holds_no_api_key_and_tz_is_the_hosts(probed: dict[str, Any]) -> None:
    assert SECRET not in probed["env"]
    names = [line.split("=", 1)[0] for line in probed["env"].splitlines()]
    assert not [n for n in names if "KEY" in n or "TOKEN" in n or "SECRET" in n], names
    assert "TZ=America/New_York" in probed["env"].splitlines()
    assert probed["date_Z"] == datetime.now(ZoneInfo("America/New_York")).strftime("%Z")


def test_inbound_db_is_read_only_and_everything_else_the_runner_needs_is_writable(probed: dict[str, Any]) -> None:
    assert probed["inbound_rows"] == 0  # readable with mode=ro
    assert "readonly database" in probed["inbound_sql"][1]
    assert "ro" in probed["mounts"]["/workspace/inbound.db"] and "rw" in probed["mounts"]["/workspace"]
    assert probed["inbound_append"][0] in (errno.EROFS, errno.EACCES)  # EACCES: root's file, checked first
    # Neither removed nor replaced: the sticky folder refuses (EPERM) before the busy mount point would (EBUSY).
    assert probed["inbound_unlink"][0] in (errno.EPERM, errno.EBUSY)
    assert probed["inbound_replace"][0] in (errno.EPERM, errno.EBUSY)
    assert probed["inbox_replace"][0] == errno.EPERM  # the sticky session folder: the host's entries stay put
    for writable in ("heartbeat", "outbound_sql", "outbox_file", "agent_file"):
        assert probed[writable] is None, (writable, probed[writable])


def test_the_outbound_journal_is_a_mount_point_the_runner_writes_and_cannot_swap_for_a_fifo(
        probed: dict[str, Any]) -> None:
    """SQLite's look for a hot journal (the host's, at each read of outbound.db) opens it read-only, which blocks for
    ever on a FIFO: the runner's journal is the host's file, mounted, which the runner's SQLite keeps (TRUNCATE)."""
    assert "rw" in probed["mounts"]["/workspace/outbound.db-journal"]
    assert probed["outbound_sql"] is None
    for swap in ("journal_unlink", "journal_moved", "journal_replace"):
        assert probed[swap][0] == errno.EBUSY, (swap, probed[swap])
    assert probed["journal_fifo"][0] == errno.EEXIST


def test_the_host_still_reads_and_writes_what_the_container_touched(probed: dict[str, Any],
                                                                     probed_world: World) -> None:
    world = probed_world
    with closing(world.outbound()) as conn:
        assert conn.execute("SELECT value FROM session_state WHERE key = 'probe'").fetchone()[0] == "1"
    with closing(world.inbound()) as conn, db.transaction(conn):
        conn.execute("INSERT INTO messages_in(id, seq, kind, timestamp, content) VALUES "
                     "('msg-1768400000000-aaaaab', 2, 'chat', '2026-01-14T14:00:00.000Z', '{}')")
    assert (world.settings.groups_dir / world.group.id / "AGENT.md").read_text() == "# memory\nprobe\n"
