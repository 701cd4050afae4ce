"""Settings: process environment over ``.env`` over defaults, validated once at start (DESIGN §3, §12.12)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from host.errors import NclError
from schemas import zone as zones
from schemas.runner_env import DEFAULTS as RUNNER
from schemas.runner_env import LogLevel, Provider

log = logging.getLogger(__name__)


SESSIONS_DIR = "v2-sessions"  # below the data dir: one folder per agent group, one per session in it


class SettingsError(NclError):
    """A setting whose value cannot be used."""


class Settings(BaseModel):
    """Every setting, under its environment name. ``.env.example`` documents each one."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    data_dir: Path = Field(Path("data"), alias="NCL_DATA_DIR")
    sweep_interval_s: float = Field(60.0, gt=0, alias="NCL_SWEEP_INTERVAL_S")
    misfire_grace_s: float = Field(3600.0, ge=0, alias="NCL_MISFIRE_GRACE_S")
    task_min_interval_s: float = Field(RUNNER.task_min_interval_s, ge=0, alias="NCL_TASK_MIN_INTERVAL_S")
    scheduled_task_min_gap_s: float = Field(900.0, ge=0, alias="NCL_SCHEDULED_TASK_MIN_GAP_S")
    idle_timeout_s: float = Field(RUNNER.idle_timeout_s, gt=0, alias="NCL_IDLE_TIMEOUT_S")
    poll_interval_s: float = Field(RUNNER.poll_interval_s, gt=0, alias="NCL_POLL_INTERVAL_S")
    max_batch: int = Field(RUNNER.max_batch, ge=1, alias="NCL_MAX_BATCH")
    max_runners: int = Field(5, ge=1, alias="NCL_MAX_RUNNERS")
    runtime: Literal["auto", "docker", "local"] = Field("auto", alias="NCL_RUNTIME")
    image: str = Field("ncl-agent:latest", min_length=1, alias="NCL_IMAGE")
    container_memory: str = Field("1g", alias="NCL_CONTAINER_MEMORY")
    container_pids: int = Field(256, ge=16, alias="NCL_CONTAINER_PIDS")
    container_cpus: float = Field(1.0, gt=0, le=1024, alias="NCL_CONTAINER_CPUS")
    max_tasks_per_session: int = Field(100, ge=1, alias="NCL_MAX_TASKS_PER_SESSION")
    max_requests_per_visit: int = Field(50, ge=1, alias="NCL_MAX_REQUESTS_PER_VISIT")
    group_tokens_per_day: int = Field(0, ge=0, alias="NCL_GROUP_TOKENS_PER_DAY")
    group_requests_per_minute: int = Field(60, ge=0, alias="NCL_GROUP_REQUESTS_PER_MINUTE")
    http_max_connections: int = Field(64, ge=1, alias="NCL_HTTP_MAX_CONNECTIONS")
    provider: Provider = Field(RUNNER.provider, alias="NCL_PROVIDER")
    model: str = Field(RUNNER.model, min_length=1, alias="NCL_MODEL")
    http_port: int = Field(8787, ge=0, le=65535, alias="NCL_HTTP_PORT")
    anthropic_api_key: str | None = Field(None, alias="ANTHROPIC_API_KEY", repr=False)
    anthropic_base_url: str = Field("https://api.anthropic.com", alias="ANTHROPIC_BASE_URL")
    log_level: LogLevel = Field(RUNNER.log_level, alias="NCL_LOG_LEVEL")
    log_format: Literal["text", "json"] = Field("text", alias="NCL_LOG_FORMAT")
    tz: zones.ResolvedZone = Field(zones.ResolvedZone("UTC", "fallback"), exclude=True)

    @property
    def central_db(self) -> Path:
        return self.data_dir / "central.db"

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / SESSIONS_DIR

    @property
    def groups_dir(self) -> Path:
        return self.data_dir / "groups"


def system_zone(root: Path = Path("/")) -> str | None:
    """The machine's own zone name, from /etc/timezone or the /etc/localtime link, if any."""
    try:
        return (root / "etc/timezone").read_text().strip() or None
    except OSError:
        pass
    try:
        target = os.readlink(root / "etc/localtime")
    except OSError:
        return None
    marker = "zoneinfo/"
    return target.split(marker, 1)[1] if marker in target else None


def env_file(environ: Mapping[str, str], cwd: Path) -> Path:
    return Path(environ["NCL_ENV_FILE"]) if environ.get("NCL_ENV_FILE") else cwd / ".env"


def load(
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    system_tz: str | None = None,
) -> Settings:
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    path = env_file(environ, cwd)
    if environ.get("NCL_ENV_FILE") and not path.is_file():
        raise SettingsError(f"NCL_ENV_FILE={str(path)!r} is not a readable file")
    from_file = {k: v for k, v in dotenv_values(path).items() if v is not None} if path.is_file() else {}
    merged = {**from_file, **environ}
    resolved = zones.resolve(
        [("env", environ.get("TZ")), (".env", from_file.get("TZ")), ("system", system_tz or system_zone())]
    )
    for source, value in resolved.rejected:
        log.warning(
            "TZ from %s is not an IANA zone name: %r; ignored", source, value,
            extra={"action": "tz_rejected", "source": source, "value": value},
        )
    try:
        settings = Settings.model_validate({**merged, "tz": resolved})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "settings"
        raise SettingsError(f"invalid setting {name}={merged.get(name)!r}: {err['msg']}") from None
    data_dir = settings.data_dir if settings.data_dir.is_absolute() else cwd / settings.data_dir
    return settings.model_copy(update={"data_dir": data_dir})
