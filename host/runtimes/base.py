"""What the host needs of a runtime, the thing that runs runners (DESIGN §8). A runtime is one module that
implements ``Runtime`` and one line in ``host.runtimes.factory.RUNTIMES``."""

from __future__ import annotations

from typing import Protocol

from host.store.sessions import Session


class Runtime(Protocol):
    """Starts and stops runner processes, one per session at a time."""

    @property
    def uid(self) -> int | None:
        """Who runners run as, to be given their model proxy socket; None: the host's own user."""

    def announce(self, reason: str) -> None:
        """Log, at host start, that this runtime runs the runners and why it was chosen."""

    def prepare(self) -> None:
        """At host start: clear what a previous host's runners left behind."""

    def start(self, session: Session, generation: str, env: dict[str, str]) -> None:
        """Start a runner for the session with this environment (``host.runtimes.pool.runner_env``)."""

    def is_running(self, session_id: str) -> bool:
        """Whether the runner this process started for the session is still alive."""

    def stop(self, session_id: str) -> None:
        """Kill the session's runner and whatever it started; returns once they are gone."""

    def retire(self, session_id: str) -> None:
        """Stop the session's runner, an idle one whose slot is wanted, without waiting: ``is_running`` stays True
        until it is gone, and runners started after this call run only once it is."""

    def close(self, stop_runners: bool) -> None:
        """On the way out: finish starts in flight; with ``stop_runners`` also stop every runner started."""
