"""Which runtime runs the runners (DESIGN §8), and why: ``NCL_RUNTIME=docker`` or ``local`` as asked; ``auto``
picks docker when the engine answers and ``NCL_IMAGE`` is there, built for this host's schema versions (its
labels), else local, saying why. The reason goes to the host's log and to ``ncl doctor``.

``docker`` asked for explicitly is docker even with the engine down: the host stays up, its starts fail and
are retried, and it recovers when the engine answers, without a restart. Only ``auto`` decides by probing,
once, at host start.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing

from host.runtimes.base import Runtime
from host.runtimes.docker import DockerRuntime
from host.runtimes.image import EngineDown, connect_engine, inspect
from host.runtimes.local import LocalRuntime
from host.settings import Settings

Probe = Callable[[Settings], str | None]  # None when docker can run runners, else why not
RUNTIMES: dict[str, Callable[[Settings], Runtime]] = {  # each runtime under its NCL_RUNTIME name
    "docker": DockerRuntime,
    "local": LocalRuntime,
}


def probe_docker(settings: Settings) -> str | None:
    try:
        client = connect_engine(timeout=5)
    except EngineDown as down:
        return str(down)
    with closing(client):
        _, problem = inspect(client, settings.image)
    return None if problem is None else f"image {problem}"


def choose(settings: Settings, probe: Probe = probe_docker) -> tuple[str, str]:
    if settings.runtime == "docker":
        return "docker", "NCL_RUNTIME=docker (the engine is asked at each start; while it is down, starts are retried)"
    if settings.runtime != "auto":
        return settings.runtime, f"NCL_RUNTIME={settings.runtime}"
    problem = probe(settings)
    if problem is None:
        return "docker", f"NCL_RUNTIME=auto: docker engine reachable and image {settings.image} present"
    return "local", f"NCL_RUNTIME=auto: {problem}"


def select_runtime(settings: Settings, probe: Probe = probe_docker) -> tuple[Runtime, str]:
    name, reason = choose(settings, probe)
    return RUNTIMES[name](settings), reason
