"""tests/security: every attack a hostile agent, a local user or a network peer can try (SECURITY.md names them)."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("security_kit", "proxy_kit")

from proxy_kit import Host  # noqa: E402 (after its asserts are set to be rewritten)
from test_proxy import Upstream, running_upstream  # noqa: E402


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    with running_upstream(monkeypatch) as server:
        yield server


@pytest.fixture
def host(ncl: Callable[..., Any], demo_session: dict[str, Any], upstream: Upstream,
         tmp_path: Path) -> Iterator[Host]:
    made = Host(ncl, demo_session, upstream.url, tmp_path / "data")
    yield made
    for proxy in made.proxies:
        proxy.shutdown()

