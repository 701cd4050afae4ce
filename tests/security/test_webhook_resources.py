"""A webhook arrives when the host is out of disk or file descriptors (issue 11): it is answered 503, the trouble is
logged once a minute at most (no traceback), no empty ``inbound.db`` is left behind, and the next webhook after
room is made is taken. The real webhook server runs in a child process: on a 2 MiB tmpfs filled to the brim (a
mount namespace of its own), or with its descriptor limit lowered to exactly what it has open plus one (enough to
accept a connection, not to open the database)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_webhook_flood import head, status_of

SERVE = """
import asyncio, logging, os, resource, sys
from pathlib import Path
from host.store import db, groups
from host import settings as settings_module
from host.channels.webhooks import Webhooks
from schemas import clock

logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

async def main():
    root, short_of = Path(sys.argv[1]), sys.argv[2]
    settings = settings_module.load(environ={"NCL_DATA_DIR": str(root / "data"), "TZ": "UTC"}, cwd=root,
                                    system_tz="UTC")
    settings.data_dir.mkdir()
    conn = db.connect(settings.central_db, "central")  # kept open: its WAL files stay, central stays readable
    _, tokens = groups.create(conn, settings, clock.now(), "ops", ["webhook:hook"])
    port = await Webhooks(settings).start(port=0)
    if short_of == "disk":
        filler = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(filler, bytes(4096))
        except OSError:
            os.close(filler)
    else:  # one descriptor left: a connection is accepted, the database cannot be opened
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
    print(tokens["hook"], port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class ShortServer:
    """The real webhook server, short of ``disk`` or ``fds``."""

    def __init__(self, tmp_path: Path, short_of: str) -> None:
        root, self.log = tmp_path / "disk", tmp_path / "server.log"
        root.mkdir()
        command = [sys.executable, "-c", SERVE, str(root), short_of]
        if short_of == "disk":
            command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                       'mount -t tmpfs -o size=2m tmpfs "$1" && shift && exec "$@"', "sh", str(root), *command]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        self.token, port = (self.proc.stdout.readline().split() or ["", "0"])
        self.port = int(port)
        self.root = Path(f"/proc/{self.proc.pid}/root") / root.relative_to("/")  # its tmpfs, seen from here

    def post(self) -> int | None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(head(self.port, self.token, 2) + b"{}")
            return status_of(b"".join(iter(lambda: conn.recv(65536), b"")))

    def check_refused(self) -> None:
        statuses = [self.post() for _ in range(5)]
        inboxes = list(self.root.glob("data/v2-sessions/*/*/inbound.db"))
        log = self.log.read_text()
        assert statuses == [503] * 5, log[-2000:]
        assert log.count("out of file descriptors or disk space") == 1 and "Traceback" not in log, log
        assert [p for p in inboxes if p.stat().st_size == 0] == []

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def short_of(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ShortServer]:
    if request.param == "disk" and shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private tmpfs")
    made = ShortServer(tmp_path, request.param)
    if not made.port:
        made.close()
        pytest.skip(f"the server did not start: {made.log.read_text()[-300:]}")
    yield made
    made.close()


@pytest.mark.parametrize("short_of", ["disk"], indirect=True)
def test_a_full_disk_is_answered_503_logged_once_and_leaves_no_empty_inbox(short_of: ShortServer) -> None:
    short_of.check_refused()
    (short_of.root / "filler").unlink()  # room again: the next webhook is taken
    assert short_of.post() == 202


@pytest.mark.parametrize("short_of", ["fds"], indirect=True)
def test_out_of_descriptors_while_handling_is_answered_503_and_logged_once(short_of: ShortServer) -> None:
    short_of.check_refused()
