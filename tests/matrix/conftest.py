"""tests/matrix: a real Synapse homeserver on 127.0.0.1 (SQLite, no federation, a registration shared secret),
started once for the session, and a human driven with matrix-nio.

Synapse lives in a virtualenv of its own (``.venv-synapse``, made by ``scripts/setup.sh --matrix``, or the
Python named by ``NCL_SYNAPSE_PYTHON``): it pins libraries of its own and runs as a separate process anyway.
Without it every test here is skipped, saying why; with ``NCL_REQUIRE_MATRIX=1`` (set by ``.ci/run``) that is a
failure instead, so CI never passes by skipping them. Only here and in tests/docker may tests sleep: they poll a
real server with a deadline."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from matrix_kit import SECRET, Homeserver, Human

ROOT = Path(__file__).resolve().parents[2]
SERVER = "ncl.test"
START_S = 90.0


def _python() -> Path | None:
    named = os.environ.get("NCL_SYNAPSE_PYTHON")
    candidate = Path(named) if named else ROOT / ".venv-synapse" / "bin" / "python"
    return candidate if candidate.is_file() else None


def _unavailable(reason: str) -> None:
    if os.environ.get("NCL_REQUIRE_MATRIX") == "1":
        pytest.fail(f"{reason} (NCL_REQUIRE_MATRIX=1: tests/matrix must run)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CONFIG = """\
server_name: "{server}"
pid_file: {dir}/homeserver.pid
listeners:
  - port: {port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: {dir}/homeserver.db
media_store_path: {dir}/media
max_upload_size: 50M
registration_shared_secret: "{secret}"
report_stats: false
macaroon_secret_key: "ncl-test-macaroon"
form_secret: "ncl-test-form"
signing_key_path: {dir}/signing.key
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
presence:
  enabled: false
url_preview_enabled: false
enable_metrics: false
encryption_enabled_by_default_for_room_type: "off"
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_joins: {{local: {{per_second: 1000, burst_count: 1000}}}}
rc_invites: {{per_room: {{per_second: 1000, burst_count: 1000}}, per_user: {{per_second: 1000, burst_count: 1000}}}}
rc_login:
  address: {{per_second: 1000, burst_count: 1000}}
  account: {{per_second: 1000, burst_count: 1000}}
  failed_attempts: {{per_second: 1000, burst_count: 1000}}
"""


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    python = _python()
    if python is None:
        _unavailable("Synapse is not installed: scripts/setup.sh --matrix makes .venv-synapse (or set "
                     "NCL_SYNAPSE_PYTHON)")
    assert python is not None
    folder = tmp_path_factory.mktemp("synapse")
    port = _free_port()
    config = folder / "homeserver.yaml"
    config.write_text(CONFIG.format(server=SERVER, dir=folder, port=port, secret=SECRET))
    command = [str(python), "-m", "synapse.app.homeserver", "-c", str(config)]
    subprocess.run([*command, "--generate-keys"], cwd=folder, check=True, capture_output=True, timeout=120)
    log = (folder / "stderr.log").open("wb")
    proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Homeserver(f"http://127.0.0.1:{port}", folder, proc)
    deadline = time.monotonic() + START_S
    while True:
        try:
            server._call("GET", "/_matrix/client/versions")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                tail = (folder / "stderr.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Synapse did not start within {START_S} s (exit {proc.poll()}): {tail}")
            time.sleep(0.2)
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture
async def humans(synapse: Homeserver) -> AsyncIterator[list[Human]]:
    made: list[Human] = []
    yield made
    await asyncio.gather(*(h.close() for h in made))
