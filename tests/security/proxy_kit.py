"""The model proxy under attack (test_proxy_bounds, test_proxy_spending, test_attack_review): a real proxy for a
session made by the real CLI, on a fake clock (``Host``), and the raw ways a hostile runner talks to its socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx2 as httpx
from kit import FakeClock
from security_kit import T0
from test_proxy import client

from host import settings as settings_module
from host.runtimes.proxy.server import CredentialProxy, ProxyLimits
from host.settings import Settings

ASK = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


class Host:
    """Group ``demo`` with one session made by the real CLI; proxies for its folder, on a fake clock."""

    def __init__(self, ncl: Callable[..., Any], session: dict[str, Any], url: str, data_dir: Path) -> None:
        self.ncl, self.folder, self.url, self.data_dir = ncl, Path(session["path"]), url, data_dir
        self.clock = FakeClock(T0)
        self.proxies: list[CredentialProxy] = []

    def settings(self, **env: str) -> Settings:
        return settings_module.load(environ={"NCL_DATA_DIR": str(self.data_dir), "ANTHROPIC_API_KEY": "host-key",
                                             "ANTHROPIC_BASE_URL": self.url, **env}, cwd=self.data_dir.parent,
                                    system_tz="UTC")

    def serve(self, limits: ProxyLimits | None = None, **env: str) -> Path:
        self.proxies.append(CredentialProxy(self.settings(**env), limits or ProxyLimits(), now=self.clock.now))
        # Relative to the cwd (the CLI fixture's tmp_path): the absolute path is past a socket address's 107 bytes.
        return Path(os.path.relpath(self.proxies[-1].open(self.folder)))

    def restart(self, **env: str) -> Path:
        self.proxies.pop().shutdown()
        return self.serve(None, **env)

    def slots(self) -> asyncio.Semaphore:
        return next(iter(self.proxies[-1]._served.values())).slots

    def waiting(self) -> int:
        return next(iter(self.proxies[-1]._served.values())).waiting

    def usage(self) -> list[tuple[str, str, int, int, int]]:
        with closing(sqlite3.connect(self.data_dir / "central.db")) as conn:
            return conn.execute("SELECT * FROM group_usage ORDER BY day").fetchall()

    def notices(self) -> list[str]:
        with closing(sqlite3.connect(self.folder / "inbound.db")) as conn:
            return [json.loads(c)["notice"] for (c,) in conn.execute(
                "SELECT content FROM messages_in WHERE json_extract(content, '$.notice') IS NOT NULL ORDER BY seq")]


def post(sock: Path, body: Any = ASK, **headers: str) -> httpx.Response:
    with client(sock) as http:
        reply: httpx.Response = http.post("/v1/messages", json=body, headers=headers)
    return reply


def error_of(reply: httpx.Response) -> tuple[int, str, str]:
    data = reply.json()
    assert data["type"] == "error"
    return reply.status_code, data["error"]["type"], data["error"]["message"]


def hold(sock: Path, data: bytes = b"") -> socket.socket:
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(10)
    conn.connect(str(sock))
    conn.sendall(data)
    return conn


def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) for the proxy's thread to reach a state."""
    for _ in range(1000):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("the proxy never got there")


def answer(conn: socket.socket) -> bytes:
    with conn:
        return b"".join(iter(lambda: conn.recv(65536), b""))
