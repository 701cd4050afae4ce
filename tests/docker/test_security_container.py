"""What a runner container cannot reach (issue 7), beyond what ``test_container.py`` (only ``lo``, no capabilities,
no key in its env) and ``test_end_to_end.py`` (the host's 127.0.0.1 port is out of reach) already prove:

* no network connection at all: TCP and UDP to the internet and to the Docker bridge's gateway (the host), DNS,
  raw and packet sockets;
* nothing of the host: no process of the host is visible, no environment holds a key, no file of the install
  outside its own session and group (central.db, another session's folder) and no Docker socket is in reach;
* the real runner, inside the container, runs a task's gate script with the stripped environment and no network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from kit import World

from host.runtimes.docker import DockerRuntime
from host.runtimes.install import install_id
from host.runtimes.pool import runner_env
from host.store import db
from schemas import clock

pytestmark = pytest.mark.docker
SECRET = "sk-ant-security-container-probe"
NEEDLE = "sk-ant-"  # any Anthropic key; the probe is never handed the secret itself
GATE_ENV = {"PATH", "HOME", "TZ", "NCL_TASK_ID", "PWD", "SHLVL", "_"}

PROBE = r"""
import json, os, socket, sys

def attempt(action):
    try:
        action()
        return None
    except Exception as exc:
        return [getattr(exc, "errno", None), f"{type(exc).__name__}: {exc}"]

def tcp(host, port):
    return lambda: socket.create_connection((host, port), timeout=3).close()

def udp(host, port):
    def send():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"probe", (host, port))
    return send

def raw_socket(family, kind, proto):
    return lambda: socket.socket(family, kind, proto).close()

gateway, needle = sys.argv[1], "sk-ant-"
found = {"keys_in_environ": [], "keys_in_files": [], "install_files": [], "processes": []}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        environ = open(f"/proc/{pid}/environ", "rb").read().decode("utf-8", "replace")
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        continue
    found["processes"].append(cmdline.strip())
    if needle in environ or "ANTHROPIC_" in environ:
        found["keys_in_environ"].append(pid)
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for name in dirs + files:
        path = os.path.join(top, name)
        if name in ("central.db", "host.lock", "other-session-marker", "docker.sock") or name.startswith("sess-"):
            found["install_files"].append(path)
        if top.startswith("/workspace") and name in files:
            try:
                if needle.encode() in open(path, "rb").read(1 << 20):
                    found["keys_in_files"].append(path)
            except OSError:
                pass
print(json.dumps({
    **found,
    "tcp_internet": attempt(tcp("1.1.1.1", 443)),
    "tcp_gateway": attempt(tcp(gateway, 22)),
    "tcp_gateway_docker": attempt(tcp(gateway, 2375)),
    "udp_dns": attempt(udp("8.8.8.8", 53)),
    "udp_gateway": attempt(udp(gateway, 53)),
    "dns": attempt(lambda: socket.getaddrinfo("example.com", 443)),
    "raw_icmp": attempt(raw_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    "packet": attempt(raw_socket(socket.AF_PACKET, socket.SOCK_RAW, 0)),
    "routes": open("/proc/net/route").read().splitlines()[1:],
}))
"""

GATE = r"""env > gate-env.txt
if (exec 3<>/dev/tcp/1.1.1.1/443) 2>/dev/null; then echo open > gate-net.txt; else echo refused > gate-net.txt; fi
echo '{"wakeAgent": false}'
"""


def bridge_gateway(engine: Any) -> str:
    """The host's address on Docker's default bridge, or its usual one when the engine runs without a bridge
    (scripts/docker-engine.sh starts dockerd with --bridge=none)."""
    import docker.errors

    try:
        config = engine.networks.get("bridge").attrs["IPAM"]["Config"] or []
    except docker.errors.NotFound:
        config = []
    gateway: str = next((c["Gateway"] for c in config if "Gateway" in c), "172.17.0.1")
    return gateway


@pytest.fixture(scope="module")
def secret_world(tmp_path_factory: pytest.TempPathFactory, runner_image: str, engine: Any) -> Iterator[World]:
    """A session whose host holds the key (settings and environment), next to another session of the same group
    that has a marker file in it; every container of the install is removed afterwards."""
    world = World(tmp_path_factory.mktemp("secure"), NCL_IMAGE=runner_image, NCL_IDLE_TIMEOUT_S="2",
                  ANTHROPIC_API_KEY=SECRET)
    (world.new_session().folder / "other-session-marker").write_text("not yours")
    yield world
    for item in engine.api.containers(all=True, filters={"label": f"ncl.install={install_id(world.settings)}"}):
        engine.api.remove_container(item["Id"], force=True)
    world.central.close()


@pytest.fixture(scope="module")
def probed(secret_world: World, engine: Any) -> Iterator[dict[str, Any]]:
    runtime = DockerRuntime(secret_world.settings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANTHROPIC_API_KEY", SECRET)
        env = runner_env(secret_world.settings, secret_world.session, "gen-probe", "rules")
        runtime.start(secret_world.session, "gen-probe", env,
                      entrypoint=["/opt/ncl/bin/python", "-c", PROBE, bridge_gateway(engine)])
        container_id = runtime.wait_started(secret_world.session.id)
    try:
        assert engine.api.wait(container_id, timeout=60)["StatusCode"] == 0, engine.api.logs(container_id).decode()
        found: dict[str, Any] = json.loads(engine.api.logs(container_id, stderr=False).decode())
        found["configured_env"] = engine.api.inspect_container(container_id)["Config"]["Env"]
        yield found
    finally:
        runtime.close(stop_runners=True)


@pytest.mark.parametrize("attempt", ["tcp_internet", "tcp_gateway", "tcp_gateway_docker", "udp_dns", "udp_gateway",
                                     "dns", "raw_icmp", "packet"])
def test_the_container_cannot_open_any_network_connection(probed: dict[str, Any], attempt: str) -> None:
    assert probed[attempt] is not None, f"{attempt} succeeded"


def test_the_container_has_no_route_out(probed: dict[str, Any]) -> None:
    assert probed["routes"] == []  # only lo, which has no entry in /proc/net/route


def test_the_container_sees_none_of_the_hosts_processes_or_environment(probed: dict[str, Any]) -> None:
    assert probed["keys_in_environ"] == []
    assert not [c for c in probed["processes"] if "pytest" in c or "host run" in c], probed["processes"]
    assert len(probed["processes"]) <= 2, probed["processes"]  # docker-init and the probe: a pid namespace of its own
    assert not [e for e in probed["configured_env"] if e.startswith("ANTHROPIC_") or NEEDLE in e]


def test_the_container_reaches_no_file_of_the_install_but_its_own_session_and_group(probed: dict[str, Any]) -> None:
    assert probed["install_files"] == []  # no central.db, no other session, no docker.sock
    assert probed["keys_in_files"] == []


def _ack(world: World, message_id: str) -> dict[str, Any] | None:
    path = world.session.folder / "outbound.db"
    with closing(db.connect(path, "outbound", readonly=True)) as conn:
        row = conn.execute("SELECT * FROM processing_ack WHERE message_id = ? AND status <> 'processing'",
                           (message_id,)).fetchone()
    return dict(row) if row else None


def test_the_real_runner_in_a_container_gives_gate_scripts_the_stripped_environment_and_no_network(
        tmp_path: Path, runner_image: str, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    world = World(tmp_path, NCL_IMAGE=runner_image, NCL_IDLE_TIMEOUT_S="2", ANTHROPIC_API_KEY=SECRET)
    runtime = DockerRuntime(world.settings)
    try:
        task_id = world.schedule(clock.now(), script=GATE)  # no time, no cron: due at once
        runtime.start(world.session, "gen-gate", runner_env(world.settings, world.session, "gen-gate", ""))
        runtime.wait_started(world.session.id)
        deadline = time.monotonic() + 60
        while (ack := _ack(world, task_id)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ack is not None, "the runner never finished the task"
        assert json.loads(ack["detail"])["outcome"] == "skipped", ack
        dumped = (world.session.folder / "gate-env.txt").read_text()
        names = {line.split("=", 1)[0] for line in dumped.splitlines() if "=" in line}
        assert names <= GATE_ENV and NEEDLE not in dumped, dumped
        assert f"NCL_TASK_ID={task_id}" in dumped.splitlines() and "TZ=America/New_York" in dumped.splitlines()
        assert (world.session.folder / "gate-net.txt").read_text().strip() == "refused"
    finally:
        runtime.close(stop_runners=True)
        for item in engine.api.containers(all=True, filters={"label": f"ncl.install={install_id(world.settings)}"}):
            engine.api.remove_container(item["Id"], force=True)
        world.central.close()
