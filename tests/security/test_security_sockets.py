"""Security boundaries (issue 7), the proxy and sockets: the credential proxy forwards only the model API (posts
to its paths, with the host's key, to the configured upstream, whatever the client's headers say); every
socket a running host and its runners listen on is loopback-only or an owner-only file, and every TCP server
in the product binds 127.0.0.1.
"""

from __future__ import annotations

import ast
import ipaddress
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import e2e_scenario as scenario
import pytest
from processes import Env
from security_kit import ROOT, SECRET, product_files
from test_proxy import Upstream, raw, running_upstream

from host.runtimes.proxy.server import CredentialProxy
from host.settings import Settings

# --- the credential proxy forwards the model API and nothing else ------------------------------------------------


@pytest.fixture
def model_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    with running_upstream(monkeypatch) as server:
        yield server


@pytest.fixture
def proxy_socket(model_api: Upstream, tmp_path: Path) -> Iterator[Path]:
    proxy = CredentialProxy(Settings.read({"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": model_api.url}))
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


def test_tcp_servers_in_product_code_bind_loopback() -> None:
    """A static companion of the live check above: every TCP server the product starts names 127.0.0.1."""
    servers = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "start_server", "create_server"):
                host = next((k.value for k in node.keywords if k.arg == "host"), None)
                if host is None and node.args and isinstance(node.args[0], ast.Tuple):  # socket.create_server((h, p))
                    host = node.args[0].elts[0]
                servers.append((f"{path.relative_to(ROOT)}:{node.lineno}", ast.unparse(host) if host else None))
    assert servers and all(host == "'127.0.0.1'" for _, host in servers), servers
