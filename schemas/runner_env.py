"""What a runner is told (DESIGN §7, §12.12): its settings as NCL_* variables, and TZ, with their defaults. The host
builds one per start (``host.runtimes.pool.runner_env``), the runner parses it (``agent_runner.config``) and tells
its MCP server part of it; the host's settings take their runner defaults from ``DEFAULTS``. No secret is here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from schemas import zone as zones

Provider = Literal["mock", "anthropic"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
VARIABLES = {  # field -> the variable it travels in
    "tz": "TZ", "generation": "NCL_RUNNER_GENERATION", "session_id": "NCL_SESSION_ID",
    "agent_group_id": "NCL_AGENT_GROUP_ID", "rules": "NCL_RULES", "idle_timeout_s": "NCL_IDLE_TIMEOUT_S",
    "poll_interval_s": "NCL_POLL_INTERVAL_S", "max_batch": "NCL_MAX_BATCH",
    "task_min_interval_s": "NCL_TASK_MIN_INTERVAL_S", "misfire_grace_s": "NCL_MISFIRE_GRACE_S",
    "provider": "NCL_PROVIDER", "model": "NCL_MODEL",
    "log_level": "NCL_LOG_LEVEL", "anthropic_socket": "NCL_ANTHROPIC_SOCKET", "group_dir": "NCL_GROUP_DIR",
    "outlives_host": "NCL_OUTLIVES_HOST", "host_pid": "NCL_HOST_PID",
}


class RunnerEnv(NamedTuple):
    """Everything a runner is told, by field; ``VARIABLES`` names the variable of each. A NamedTuple, not a frozen
    dataclass: the host's settings take their defaults from here, so every command imports it, and the dataclass
    took five times as long to make (~3 ms of a command's start-up, and of a runner's)."""

    tz: str = "UTC"
    generation: str = "gen-local"
    session_id: str = ""
    agent_group_id: str = ""
    rules: str = ""
    idle_timeout_s: float = 1800.0
    poll_interval_s: float = 0.05
    max_batch: int = 20
    task_min_interval_s: float = 300.0
    misfire_grace_s: float = 3600.0  # (the tools refuse a recurring task's first run longer ago, as the host does)
    provider: Provider = "mock"
    model: str = "claude-sonnet-5"
    log_level: LogLevel = "INFO"
    anthropic_socket: str | None = None  # the model proxy, relative to the session folder; None: no model access
    group_dir: str | None = None  # the local runtime's; in a container the group folder is /workspace/agent
    # "1" from a one-off sweep: the runner outlives the process that started it, to its idle timeout (the next host
    # stops it); else it dies with its host (a death signal), so no host restart finds it still serving.
    outlives_host: str | None = None
    # The local runtime's host: a runner whose parent is already another process when it arms its death signal (its
    # host was killed during its start-up) ends at once, never serving the session beside the next host's runner.
    host_pid: str | None = None

    def to_env(self, *only: str) -> dict[str, str]:
        """The variables of the fields named (all by default); a field that is None is left out."""
        return {VARIABLES[name]: str(value) for name in only or VARIABLES if (value := getattr(self, name)) is not None}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RunnerEnv:
        """The variables ``env`` has, each read as its default's type; TZ falls back to UTC unless a zone name."""
        told: dict[str, Any] = {name: _parse(env[VARIABLES[name]], default)
                                for name, default in cls._field_defaults.items() if VARIABLES[name] in env}
        return cls(**{**told, "tz": zones.resolve([("env", env.get("TZ"))]).name})


def _parse(text: str, default: Any) -> Any:
    return text or None if default is None else type(default)(text)


DEFAULTS = RunnerEnv()
