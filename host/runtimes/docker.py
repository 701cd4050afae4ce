"""The ``docker`` runtime (DESIGN §8): one container per session from ``NCL_IMAGE``, with no network, no
capabilities, no new privileges, a read-only root filesystem and the limits of ``resource_limits``; the session
folder is ``/workspace``, ``inbound.db`` is bind-mounted read-only on top of it, the group folder is
``/workspace/agent``.

The host calls ``start`` and ``is_running`` from inside its event loop, so neither talks to the engine on the
caller's thread: a start is handed to a worker pool and a runner counts as running until a container listing
taken after its start says otherwise. An engine that is down at start-up or goes away costs one failed start
per session every ``RETRY_S`` and a log line per outage; the next start after it answers works, no restart.
A start from an image that is missing or was built for other schema versions fails with one line saying to run
``ncl image build``.
``stop`` and ``cleanup_orphans`` do block: their callers need the container gone before they go on. ``retire``
does not: the engine's force-remove takes 0.1-0.3 s (more under load), and a sweep freeing slots for the next due
sessions must not wait for each in turn. The retired runner counts as running until its container is removed, and
a start asked after a retire creates its container only once that removal is done, so no more containers exist at
once than the host asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host.files import confined
from host.runtimes.image import check_runner_image
from host.runtimes.install import install_id
from host.runtimes.workspace import JOURNAL, hand_over
from host.settings import Settings
from host.store import groups
from host.store.sessions import Session

log = logging.getLogger(__name__)
CONTAINER_UID = 10001  # the Dockerfile's USER
WORKSPACE = "/workspace"
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
REFRESH_S = 0.5  # at most one container listing per this long, however often is_running is asked
RETRY_S = 5.0  # while the engine is down, starts fail at once for this long before it is asked again
STOP_WAIT_S = 120.0
NOFILE = 1024  # open files per container process: enough for a runner, too few to exhaust the host's table
LOG_MAX = "4m"  # a container's output the engine keeps, as a local runner's runner.log (a hostile runner fills no disk)


def container_user(host_uid: int, host_gid: int) -> tuple[int, int]:
    """Who the runner runs as. A root host gives the image's non-root uid the files the runner writes
    (``hand_over``); a non-root host cannot give files away, so the runner runs as the host's own uid, which
    can already write them and reach the host's 0600 proxy socket. Either way the runner is never uid 0."""
    return (CONTAINER_UID, CONTAINER_UID) if host_uid == 0 else (host_uid, host_gid)


def resource_limits(settings: Settings) -> dict[str, Any]:
    """The limits of every container the install starts, runners and project ``container:`` tasks alike: CPUs
    (NCL_CONTAINER_CPUS), memory with no swap beyond it (``memswap_limit`` equal to ``mem_limit``), pids, and at
    most ``NOFILE`` open files; its output, kept by the engine, under ``LOG_MAX`` (one file, no rotation kept)."""
    from docker.types import LogConfig, Ulimit  # the SDK, imported on use (see _default_client)

    return {"mem_limit": settings.container_memory, "memswap_limit": settings.container_memory,
            "pids_limit": settings.container_pids, "nano_cpus": round(settings.container_cpus * 1e9),
            "ulimits": [Ulimit(name="nofile", soft=NOFILE, hard=NOFILE)],
            "log_config": LogConfig(type="json-file", config={"max-size": LOG_MAX, "max-file": "1"})}


def check_env(env: dict[str, str]) -> None:
    """Refuse to put anything that looks like a credential into a container: the proxy holds the key."""
    leaked = sorted(name for name in env if any(word in name.upper() for word in SECRET_WORDS))
    if leaked:
        raise ValueError(f"refusing to pass {', '.join(leaked)} into a runner container")


def _default_client() -> Any:
    import docker  # imported on first use: the SDK takes ~0.4 s to import and most ncl commands never need it

    return docker.from_env(timeout=30)


@dataclass
class _Start:
    future: Future[str]
    done_at: float | None = None  # monotonic time the container was started


def _mount_source(folder: Path) -> Path:
    """A session or group folder to bind-mount, never through a symlink put in its place: that would hand the
    runner another directory of the host (its parents are the operator's own)."""
    os.close(confined.open_dir(folder))
    return folder.resolve()


class DockerRuntime:
    def __init__(self, settings: Settings, client_factory: Callable[[], Any] = _default_client) -> None:
        self.settings = settings
        self.install = install_id(settings)
        self.uid, self.gid = container_user(os.geteuid(), os.getegid())
        self._client_factory = client_factory
        self._client: Any = None
        self._pool = ThreadPoolExecutor(max_workers=min(settings.max_runners, 8) + 1, thread_name_prefix="ncl-docker")
        self._lock = threading.Lock()  # guards the fields below; the engine is never called while holding it
        self._engine_lock = threading.Lock()  # one thread at a time connects and cleans up orphans
        self._starts: dict[str, _Start] = {}
        self._retiring: dict[str, Future[None]] = {}  # sessions whose runner is being removed (retire)
        self._running: set[str] = set()
        self._listed_at = 0.0  # monotonic start of the last completed listing
        self._refresh: Future[None] | None = None
        self._refresh_asked = 0.0
        self._down: str | None = None
        self._down_checked = 0.0
        self._cleanup_pending = False

    def name(self, session_id: str) -> str:
        return f"ncl-{self.install}-{session_id}"

    def container_kwargs(self, session: Session, env: dict[str, str]) -> dict[str, Any]:
        """Everything ``containers.create`` is given; tests run probes with exactly these settings."""
        check_env(env)
        folder = _mount_source(session.folder)
        agent = _mount_source(groups.folder(self.settings, session.agent_group_id))
        return {
            "image": self.settings.image, "name": self.name(session.id), "user": f"{self.uid}:{self.gid}",
            "labels": {"ncl.install": self.install, "ncl.session": session.id, "ncl.group": session.agent_group_id},
            "environment": dict(env), "working_dir": WORKSPACE,
            # No network: mode none, and disabled, so the engine sets up no sandbox for it (a start took 0.1-0.15 s
            # longer, for the same namespace holding only a loopback); runc makes the empty namespace itself.
            "network_mode": "none", "network_disabled": True,
            "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"],
            "read_only": True, "tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,size=64m"},
            **resource_limits(self.settings),
            # docker-init as pid 1 reaps zombies; the runner, a subreaper below it, kills what gates leave behind.
            "init": True,
            # Mounts apply shortest path first, so the read-only inbound.db lands on top of the rw folder: the
            # runner can read it and cannot write, truncate, replace or unlink it (a mount point is busy). Its
            # outbound.db's journal likewise, writable: never replaced by a FIFO (``workspace.keep_journal``).
            "volumes": {str(folder): {"bind": WORKSPACE, "mode": "rw"},
                        str(folder / "inbound.db"): {"bind": f"{WORKSPACE}/inbound.db", "mode": "ro"},
                        str(folder / JOURNAL): {"bind": f"{WORKSPACE}/{JOURNAL}", "mode": "rw"},
                        str(agent): {"bind": f"{WORKSPACE}/agent", "mode": "rw"}},
        }

    # --- the Runtime protocol (host.runtimes.base) ---

    def announce(self, reason: str) -> None:
        log.info("runtime docker (%s)", reason, extra={"action": "runtime_selected", "runtime": "docker",
                                                       "reason": reason})

    def prepare(self) -> None:
        self.cleanup_orphans()

    def start(self, session: Session, generation: str, env: dict[str, str], *,
              entrypoint: list[str] | None = None) -> None:
        """``entrypoint`` replaces the runner (a probe, a shell) in an otherwise identical container."""
        kwargs = self.container_kwargs(session, env) | ({"entrypoint": entrypoint, "command": []} if entrypoint else {})
        future: Future[str] = Future()
        entry = _Start(future)
        with self._lock:
            self._starts[session.id] = entry
            down = self._down if time.monotonic() - self._down_checked < RETRY_S else None
            retiring = list(self._retiring.values())
        if down is not None:  # fail fast: the engine was asked moments ago and did not answer
            future.set_exception(ConnectionError(f"docker engine not reachable: {down}"))
            return
        self._pool.submit(self._start, session, generation, kwargs, entry, retiring)

    def is_running(self, session_id: str) -> bool:
        with self._lock:
            entry = self._starts.get(session_id)
            if entry is None:
                return session_id in self._retiring
        if not entry.future.done():
            return True
        if entry.future.exception() is None:
            self._ask_refresh()
            with self._lock:
                assert entry.done_at is not None
                if self._listed_at <= entry.done_at or session_id in self._running:
                    return True
        with self._lock:
            if self._starts.get(session_id) is entry:
                del self._starts[session_id]
        return False

    def stop(self, session_id: str) -> None:
        with self._lock:
            entry = self._starts.pop(session_id, None)
            retiring = self._retiring.get(session_id)
        if retiring is not None:  # its removal is under way: two at once would clash
            wait([retiring], timeout=STOP_WAIT_S)
        self._stop(session_id, entry)

    def retire(self, session_id: str) -> None:
        """Stop the session's runner without waiting (see the module's docstring); a failure is logged."""
        with self._lock:  # (held while submitting, so the worker finds its own future when it ends)
            self._retiring[session_id] = self._pool.submit(self._retire, session_id, self._starts.pop(session_id, None))

    def close(self, stop_runners: bool) -> None:
        """Finish starts in flight; with ``stop_runners`` also kill every runner this process started."""
        self._pool.shutdown(wait=True)
        if stop_runners:
            with self._lock:
                sessions = list(self._starts)
            for session_id in sessions:
                try:
                    self.stop(session_id)
                except Exception as exc:  # the engine went away: its containers went with it
                    log.warning("could not stop the runner of %s: %s", session_id, exc,
                                extra={"action": "runner_stop_failed", "session": session_id})

    # --- beyond the protocol ---

    def cleanup_orphans(self) -> int:
        """Remove this install's containers that this process did not start (a previous host's runners). An
        engine that is down now is cleaned the first time it answers, before any runner starts."""
        try:
            client = self._connect()
        except Exception as exc:
            with self._lock:
                self._cleanup_pending = True
            log.info("orphan containers are removed once the engine answers (%s)", type(exc).__name__,
                     extra={"action": "orphan_cleanup_deferred"})  # the outage itself was logged by _connect
            return 0
        return self._cleanup(client)

    def wait_started(self, session_id: str, timeout: float = 60.0) -> str:
        """The container id of the session's runner once started; raises what the start raised."""
        with self._lock:
            entry = self._starts[session_id]
        return entry.future.result(timeout=timeout)

    # --- worker side ---

    def _connect(self) -> Any:
        """The client, after a ping when the engine is new or was down; a pending orphan cleanup runs first."""
        with self._engine_lock:
            try:
                if self._client is None:
                    self._client = self._client_factory()
                    self._client.ping()
                elif self._down is not None:
                    self._client.ping()
            except Exception as exc:
                self._went_down(exc)
                raise
            if self._down is not None:
                log.info("docker engine reachable again", extra={"action": "engine_up"})
                with self._lock:
                    self._down = None
            if self._cleanup_pending:
                self._cleanup(self._client)
                self._cleanup_pending = False
            return self._client

    def _went_down(self, exc: Exception) -> None:
        """The engine stopped answering: drop the client, log once per outage, fail fast until a ping works."""
        self._client = None  # connect afresh next time: the engine may come back elsewhere (DOCKER_HOST)
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        with self._lock:
            first, self._down, self._down_checked = self._down is None, reason, time.monotonic()
        if first:
            log.warning("docker engine not reachable: %s; retrying", reason, extra={"action": "engine_down"})

    def _lost_engine(self, exc: Exception) -> None:
        """A call on a client that was fine failed to connect: the engine went away under us."""
        import requests

        if isinstance(exc, requests.exceptions.ConnectionError) and self._down is None:
            with self._engine_lock:
                self._went_down(exc)

    def _stop(self, session_id: str, entry: _Start | None) -> None:
        if entry is not None:
            # A start in flight would outlive the stop. One that failed may still have left a container: remove anyway.
            with contextlib.suppress(Exception):
                entry.future.result(timeout=STOP_WAIT_S)
        self._remove(self._connect(), self.name(session_id))
        log.info("runner of %s stopped", session_id, extra={"action": "runner_stopped", "session": session_id})

    def _retire(self, session_id: str, entry: _Start | None) -> None:
        try:
            self._stop(session_id, entry)
        except Exception as exc:  # killed with the engine, or reaped by a listing once it answers again
            self._lost_engine(exc)
            log.warning("could not stop the runner of %s: %s", session_id, exc,
                        extra={"action": "runner_stop_failed", "session": session_id})
        finally:
            with self._lock:
                del self._retiring[session_id]

    def _start(self, session: Session, generation: str, kwargs: dict[str, Any], entry: _Start,
               retiring: list[Future[None]]) -> None:
        """``retiring``: the removals asked before this start, each already on a worker (the pool takes work in
        the order it was given), waited for before anything else."""
        try:
            wait(retiring, timeout=STOP_WAIT_S)
            client = self._connect()
            check_runner_image(client, kwargs["image"])
            # A container of this name is an exited runner not reaped yet, or one a previous host process left
            # running whose claims have been released: it must not race the new generation, nor touch the files
            # handed over to it (its journal's name, say, once its mount of it is gone).
            self._remove(client, kwargs["name"])
            hand_over(session.folder, groups.folder(self.settings, session.agent_group_id), self.uid, self.gid)
            container = client.containers.create(**kwargs)
            container.start()
        except Exception as exc:
            self._lost_engine(exc)
            log.warning("runner of %s failed to start: %s", session.id, exc,
                        extra={"action": "runner_start_failed", "session": session.id, "generation": generation})
            entry.future.set_exception(exc)
            return
        log.info("runner started for %s (container %s)", session.id, container.short_id,
                 extra={"action": "runner_started", "session": session.id, "generation": generation})
        with self._lock:
            entry.done_at = time.monotonic()
        entry.future.set_result(str(container.id))

    def _ask_refresh(self) -> None:
        with self._lock:
            if (self._refresh is not None and not self._refresh.done()) or \
                    time.monotonic() - self._refresh_asked < REFRESH_S:
                return
            self._refresh_asked = time.monotonic()
            self._refresh = self._pool.submit(self._list)

    def _list(self) -> None:
        """Which of this install's runners still run; exited ones are logged with their exit code, then removed."""
        began = time.monotonic()
        try:
            client = self._connect()
            found = client.api.containers(all=True, filters={"label": f"ncl.install={self.install}"})
            running = set()
            for item in found:
                session_id = (item.get("Labels") or {}).get("ncl.session", "")
                if item.get("State") in ("exited", "dead"):
                    self._reap(client, item["Id"], session_id)
                elif item.get("State") != "removing":
                    running.add(session_id)
        except Exception as exc:  # logged once per outage; the next ask tries again
            self._lost_engine(exc)
            log.debug("container listing failed: %s", exc, extra={"action": "runner_list_failed"})
            return
        with self._lock:
            self._running, self._listed_at = running, began

    def _reap(self, client: Any, container_id: str, session_id: str) -> None:
        try:
            state = client.api.inspect_container(container_id)["State"]
            code = int(state.get("ExitCode", -1))
            tail = client.api.logs(container_id, tail=5).decode(errors="replace").strip() if code else ""
            tail = "out of memory (NCL_CONTAINER_MEMORY)" if state.get("OOMKilled") else tail
            client.api.remove_container(container_id, force=True)
        except Exception as exc:  # removed meanwhile by a start or stop of the same session
            log.debug("reaping %s: %s", container_id[:12], exc, extra={"action": "runner_reap_failed"})
            return
        level = logging.WARNING if code else logging.INFO
        log.log(level, "runner of %s exited with code %d%s", session_id, code, f": {tail}" if tail else "",
                extra={"action": "runner_exited", "session": session_id, "exit_code": code})

    def _remove(self, client: Any, name: str) -> None:
        import docker.errors

        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(name, force=True)

    def _cleanup(self, client: Any) -> int:
        with self._lock:
            ours = {e.future.result() for e in self._starts.values() if e.future.done() and not e.future.exception()}
        removed = 0
        for item in client.api.containers(all=True, filters={"label": f"ncl.install={self.install}"}):
            if item["Id"] not in ours:
                self._remove(client, item["Id"])
                removed += 1
        if removed:
            log.info("removed %d orphan runner container(s)", removed, extra={"action": "orphans_removed"})
        return removed
