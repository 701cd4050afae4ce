"""Which runtime runs the runners (DESIGN §8), and why: ``NCL_RUNTIME=docker`` or ``local`` as asked; ``auto``
picks docker when the engine answers and ``NCL_IMAGE`` is there, else local. The reason goes to the host's log
and to ``ncl doctor``.

``docker`` asked for explicitly is docker even with the engine down: the host stays up, its starts fail and
are retried, and it recovers when the engine answers, without a restart. Only ``auto`` decides by probing,
once, at host start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from typing import Literal

from host.runtimes.docker import DockerRuntime
from host.runtimes.image import EngineDown, connect_engine, missing_image
from host.runtimes.local import LocalRuntime
from host.runtimes.pool import Runtime
from host.settings import Settings

log = logging.getLogger(__name__)
Name = Literal["docker", "local"]
Probe = Callable[[Settings], str | None]  # None when docker can run runners, else why not


def probe_docker(settings: Settings) -> str | None:
    try:
        client = connect_engine(timeout=5)
    except EngineDown as down:
        return str(down)
    with closing(client):
        missing = missing_image(client, settings.image)
    return None if missing is None else f"image {missing}"


def choose(settings: Settings, probe: Probe = probe_docker) -> tuple[Name, str]:
    if settings.runtime == "docker":
        return "docker", "NCL_RUNTIME=docker (the engine is asked at each start; while it is down, starts are retried)"
    if settings.runtime == "local":
        return "local", "NCL_RUNTIME=local"
    problem = probe(settings)
    if problem is None:
        return "docker", f"NCL_RUNTIME=auto: docker engine reachable and image {settings.image} present"
    return "local", f"NCL_RUNTIME=auto: {problem}"


def select_runtime(settings: Settings, probe: Probe = probe_docker) -> tuple[Runtime, str]:
    name, reason = choose(settings, probe)
    runtime: Runtime = DockerRuntime(settings) if name == "docker" else LocalRuntime(settings)
    return runtime, reason


def announce(runtime: Runtime, reason: str) -> None:
    if isinstance(runtime, LocalRuntime):
        log.warning("runtime local: runners are host subprocesses with no isolation (%s)", reason,
                    extra={"action": "runtime_selected", "runtime": "local", "reason": reason})
    else:
        log.info("runtime docker (%s)", reason, extra={"action": "runtime_selected", "runtime": "docker",
                                                       "reason": reason})


def prepare(runtime: Runtime) -> None:
    """At host start: this install's containers that a previous host left are removed (DESIGN §8)."""
    if isinstance(runtime, DockerRuntime):
        runtime.cleanup_orphans()


def finish(runtime: Runtime, stop_runners: bool) -> None:
    """On the way out. ``host run`` stops its runners; a one-off sweep leaves the ones it started running and
    only waits until their starts are done."""
    if isinstance(runtime, DockerRuntime):
        runtime.close(stop_runners)
    elif isinstance(runtime, LocalRuntime) and stop_runners:
        for session_id in list(runtime.processes):
            runtime.stop(session_id)
