"""Settings: process environment over ``.env`` over defaults, validated once at start (DESIGN §3, §12.12).

No pydantic here: every command loads the settings, and importing pydantic took most of a short command's time
(issue 14.5). ``Settings`` declares each setting once: its type, variable, bounds and default; a value is read as
pydantic read it before, and refused with the same message.

This module's annotations are evaluated as the class is made (no ``from __future__ import annotations``): ``read``
looks up each field's ``Env`` in them, which from annotations kept as text took compiling 40 of them at every
start (~2 ms)."""

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from host.errors import NclError
from schemas import zone as zones
from schemas.ids import GROUP_NAME, MAIL_ADDRESS
from schemas.runner_env import DEFAULTS as RUNNER
from schemas.runner_env import LogLevel, Provider

log = logging.getLogger(__name__)


SESSIONS_DIR = "v2-sessions"  # below the data dir: one folder per agent group, one per session in it


class SettingsError(NclError):
    """A setting whose value cannot be used."""


# The longest a duration setting may be: past it, the timers made from one overflowed (inf, 1e300: the host and its
# runners failed without naming the setting).
YEAR_S = 365 * 86400.0


class Env(NamedTuple):  # not a dataclass: a fifth of its cost at import, which every command pays
    """Where a setting is read from, the variable ``name``, and its bounds: a number greater than ``gt``, at least
    ``ge``, at most ``le``; a string of at least ``min_length`` characters; ``check`` refuses (ValueError) a value
    of the wrong form."""

    name: str
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    check: Callable[[Any], object] | None = None


class AlertTarget(NamedTuple):
    """Where alerts go (``NCL_ALERT_CHANNEL``): ``session`` (a group's chat session, ``value`` the group's name),
    ``webhook`` (``value`` the URL the host POSTs them to) or ``mail`` (``value`` the address mailed, ``sender`` the
    mailbox that sends them, '' for the only one there is)."""

    kind: Literal["session", "webhook", "mail"]
    value: str
    sender: str = ""

    def __str__(self) -> str:
        """As logs and commands show it: a URL without its path, query or user (they often hold a secret)."""
        if self.kind == "session":
            return f"session:{self.value}"
        if self.kind == "mail":
            return f"mail:{self.sender}:{self.value}" if self.sender else f"mail:{self.value}"
        parts = urlsplit(self.value)
        port = f":{parts.port}" if parts.port else ""
        return f"webhook:{parts.scheme}://{parts.hostname}{port}{'/…' if parts.path.strip('/') or parts.query else ''}"

    @classmethod
    def parse(cls, text: str) -> "AlertTarget | None":
        """``session:GROUP``, ``webhook:URL``, a bare http(s) URL, ``mail:TO`` or ``mail:MAILBOX:TO``; None for ''.
        ValueError names the forms."""
        text = text.strip()
        if not text:
            return None
        kind, _, rest = text.partition(":")
        if kind == "mail":
            *sender, to = rest.split(":")
            if len(sender) <= 1 and all(re.fullmatch(MAIL_ADDRESS, a) and len(a) <= 254 for a in (*sender, to)):
                return cls("mail", to, "".join(sender).lower())
            raise ValueError("expected mail:TO_ADDRESS (sent from the only mailbox) or mail:MAILBOX_ADDRESS:TO_ADDRESS")
        if kind == "session" and re.fullmatch(GROUP_NAME, rest):
            return cls("session", rest)
        url = rest if kind == "webhook" else text
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname and url.isascii() and url.isprintable():
            parts.port  # noqa: B018 (a port out of range raises ValueError here, not at the first alert)
            return cls("webhook", url)
        raise ValueError("expected session:GROUP, webhook:URL, an http(s) URL or mail:TO_ADDRESS")


# Compiled (and cached by ``re``) where first used, as schemas.ids' patterns: few commands read a Matrix setting.
MATRIX_USER = r"@[a-z0-9._=/+-]{1,255}:[A-Za-z0-9.-]{1,230}(:[0-9]{1,5})?"
MATRIX_ALLOWED = r"@(\*|[a-z0-9._=/+-]{1,255}):[A-Za-z0-9.-]{1,230}(:[0-9]{1,5})?"


def _matrix_user(text: str) -> str:
    if text and not re.fullmatch(MATRIX_USER, text):
        raise ValueError("expected a Matrix user id such as @bot:example.org")
    return text


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if text and (parts.scheme not in ("http", "https") or not parts.hostname or not text.isascii()):
        raise ValueError("expected an http(s) URL such as https://matrix.example.org")
    return text


def matrix_allow_list(text: str) -> tuple[str, ...]:
    """``NCL_MATRIX_ALLOW``: user ids and ``@*:server`` patterns, comma-separated; ValueError names a bad one."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    for item in items:
        if not re.fullmatch(MATRIX_ALLOWED, item):
            raise ValueError(f"{item!r} is neither a Matrix user id (@user:server) nor @*:server")
    return items


FALLBACK_ZONE = zones.ResolvedZone("UTC", "fallback")


SECRETS = ("matrix_password", "matrix_access_token", "anthropic_api_key")  # settings a repr leaves out


class Settings(NamedTuple):
    """Every setting: its type, the variable it is read from (``Env``) with its bounds, its default.
    ``.env.example`` documents each one.

    A NamedTuple, as ``Env`` and ``AlertTarget``, not a frozen dataclass: every command but ``--version`` imports
    this module, and making the dataclass took 13M instructions (~5 ms), the NamedTuple takes a tenth of that."""

    data_dir: Annotated[Path, Env("NCL_DATA_DIR")] = Path("data")
    sweep_interval_s: Annotated[float, Env("NCL_SWEEP_INTERVAL_S", gt=0, le=YEAR_S)] = 60.0
    misfire_grace_s: Annotated[float, Env("NCL_MISFIRE_GRACE_S", ge=0, le=YEAR_S)] = RUNNER.misfire_grace_s
    task_min_interval_s: Annotated[float, Env("NCL_TASK_MIN_INTERVAL_S", ge=0, le=YEAR_S)] = RUNNER.task_min_interval_s
    scheduled_task_min_gap_s: Annotated[float, Env("NCL_SCHEDULED_TASK_MIN_GAP_S", ge=0, le=YEAR_S)] = 900.0
    idle_timeout_s: Annotated[float, Env("NCL_IDLE_TIMEOUT_S", gt=0, le=YEAR_S)] = RUNNER.idle_timeout_s
    poll_interval_s: Annotated[float, Env("NCL_POLL_INTERVAL_S", gt=0, le=YEAR_S)] = RUNNER.poll_interval_s
    max_batch: Annotated[int, Env("NCL_MAX_BATCH", ge=1)] = RUNNER.max_batch
    max_runners: Annotated[int, Env("NCL_MAX_RUNNERS", ge=1)] = 5
    runtime: Annotated[Literal["auto", "docker", "local"], Env("NCL_RUNTIME")] = "auto"
    image: Annotated[str, Env("NCL_IMAGE", min_length=1)] = "ncl-agent:latest"
    container_memory: Annotated[str, Env("NCL_CONTAINER_MEMORY")] = "1g"
    container_pids: Annotated[int, Env("NCL_CONTAINER_PIDS", ge=16)] = 256
    container_cpus: Annotated[float, Env("NCL_CONTAINER_CPUS", gt=0, le=1024)] = 1.0
    max_tasks_per_session: Annotated[int, Env("NCL_MAX_TASKS_PER_SESSION", ge=1)] = 100
    max_requests_per_visit: Annotated[int, Env("NCL_MAX_REQUESTS_PER_VISIT", ge=1)] = 50
    group_tokens_per_day: Annotated[int, Env("NCL_GROUP_TOKENS_PER_DAY", ge=0)] = 0
    group_requests_per_minute: Annotated[int, Env("NCL_GROUP_REQUESTS_PER_MINUTE", ge=0)] = 60
    http_max_connections: Annotated[int, Env("NCL_HTTP_MAX_CONNECTIONS", ge=1)] = 64
    # The Matrix channel (host/channels/matrix.py): the bot's account, secrets from the environment or .env only.
    matrix_homeserver: Annotated[str, Env("NCL_MATRIX_HOMESERVER", check=_http_url)] = ""
    matrix_user_id: Annotated[str, Env("NCL_MATRIX_USER_ID", check=_matrix_user)] = ""
    matrix_password: Annotated[str | None, Env("NCL_MATRIX_PASSWORD")] = None  # secret
    matrix_access_token: Annotated[str | None, Env("NCL_MATRIX_ACCESS_TOKEN")] = None  # secret
    matrix_allow: Annotated[str, Env("NCL_MATRIX_ALLOW", check=matrix_allow_list)] = ""
    matrix_max_file_bytes: Annotated[int, Env("NCL_MATRIX_MAX_FILE_BYTES", ge=0)] = 10 << 20
    provider: Annotated[Provider, Env("NCL_PROVIDER")] = RUNNER.provider
    model: Annotated[str, Env("NCL_MODEL", min_length=1)] = RUNNER.model
    http_port: Annotated[int, Env("NCL_HTTP_PORT", ge=0, le=65535)] = 8787
    # The mail channel (host/channels/mail*.py): how long an IMAP IDLE (or, without IDLE, the wait between polls)
    # lasts, the largest mail taken, attachments saved of one mail, the first wait before an SMTP send is retried.
    mail_poll_s: Annotated[float, Env("NCL_MAIL_POLL_S", gt=0, le=YEAR_S)] = 60.0
    mail_max_bytes: Annotated[int, Env("NCL_MAIL_MAX_BYTES", ge=1024)] = 25 << 20
    mail_max_attachments: Annotated[int, Env("NCL_MAIL_MAX_ATTACHMENTS", ge=0)] = 20
    mail_retry_s: Annotated[float, Env("NCL_MAIL_RETRY_S", ge=0, le=YEAR_S)] = 5.0
    mail_read_s: Annotated[float, Env("NCL_MAIL_READ_S", gt=0, le=YEAR_S)] = 20.0
    anthropic_api_key: Annotated[str | None, Env("ANTHROPIC_API_KEY")] = None  # secret
    anthropic_base_url: Annotated[str, Env("ANTHROPIC_BASE_URL")] = "https://api.anthropic.com"
    log_level: Annotated[LogLevel, Env("NCL_LOG_LEVEL")] = RUNNER.log_level
    log_format: Annotated[Literal["text", "json"], Env("NCL_LOG_FORMAT")] = "text"
    alert_channel: Annotated[str, Env("NCL_ALERT_CHANNEL", check=AlertTarget.parse)] = ""
    # Issue 16.3: an admin group's agents may create host tasks (commands run on the host, as the host's user).
    allow_agent_host_tasks: Annotated[bool, Env("NCL_ALLOW_AGENT_HOST_TASKS")] = False
    tz: zones.ResolvedZone = FALLBACK_ZONE  # no variable of its own: ``load`` resolves it

    @classmethod
    def read(cls, values: Mapping[str, str | None]) -> "Settings":
        """The settings of the variables in ``values`` (others, and None, are ignored), each read and checked:
        ``SettingsError`` names the first one refused."""
        read: dict[str, Any] = {}
        for name, kind, env in _variables(cls):
            if (text := values.get(env.name)) is not None:
                try:
                    read[name] = _checked(_read(kind, text), env)
                except ValueError as exc:
                    raise SettingsError(f"invalid setting {env.name}={text!r}: {exc}") from None
        return cls(**read)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` made, unchecked (tests and ``load`` set values already read)."""
        return self._replace(**changes)

    def __repr__(self) -> str:
        """Every setting but the secrets: a repr may reach a log or a traceback."""
        shown = (f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True) if name not in SECRETS)
        return f"Settings({', '.join(shown)})"

    @property
    def alert_target(self) -> AlertTarget | None:
        return AlertTarget.parse(self.alert_channel)

    @property
    def matrix_allowed(self) -> tuple[str, ...]:
        return matrix_allow_list(self.matrix_allow)

    @property
    def central_db(self) -> Path:
        return self.data_dir / "central.db"

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / SESSIONS_DIR

    @property
    def groups_dir(self) -> Path:
        return self.data_dir / "groups"


_TRAILING_ZEROS = re.compile(r"\.0+$")  # "3.00" is the integer 3, "3." and "3.5" are no integer
# A yes/no setting: these spellings, in any case, blanks around; empty is no (``NAME=`` in .env leaves it off).
BOOLS = {**dict.fromkeys(("1", "true", "yes", "on"), True), **dict.fromkeys(("0", "false", "no", "off", ""), False)}


def _variables(cls: type[Settings]) -> Iterator[tuple[str, Any, Env]]:
    """Each setting read from a variable: its field, its type and where it is read from."""
    for name, hint in get_type_hints(cls, include_extras=True).items():
        if get_origin(hint) is Annotated:
            kind, env = get_args(hint)
            yield name, kind, env


def variables() -> frozenset[str]:
    """The variables ncl reads: each setting's, and ``NCL_ENV_FILE`` and ``NCL_DEBUG``."""
    return frozenset(env.name for _, _, env in _variables(Settings)) | {"NCL_ENV_FILE", "NCL_DEBUG"}


def _read(kind: Any, text: str) -> Any:
    """``text`` as a value of the field type ``kind``: ASCII numbers (with ``_`` between digits, blanks around),
    one of a ``Literal``'s strings exactly, yes or no (``BOOLS``), a path, or the string itself."""
    if kind is bool:
        if (found := BOOLS.get(text.strip().lower())) is None:
            raise ValueError("Input should be 1, true, yes or on; or 0, false, no, off or empty")
        return found
    if get_origin(kind) is Literal:
        if text not in get_args(kind):
            *most, last = (repr(choice) for choice in get_args(kind))
            raise ValueError(f"Input should be {', '.join(most)} or {last}")
        return text
    if kind is int:
        try:
            return int(_TRAILING_ZEROS.sub("", text.strip()) if text.isascii() else "no")
        except ValueError:
            raise ValueError("Input should be a valid integer, unable to parse string as an integer") from None
    if kind is float:
        try:
            return float(text if text.isascii() else "no")
        except ValueError:
            raise ValueError("Input should be a valid number, unable to parse string as a number") from None
    return Path(text).expanduser() if kind is Path else text  # (~ as a shell would: .env's values are not)


def _checked(value: Any, env: Env) -> Any:
    """``value`` if within the bounds of ``env`` (NaN is within none)."""
    if env.gt is not None and not value > env.gt:
        raise ValueError(f"Input should be greater than {env.gt}")
    if env.ge is not None and not value >= env.ge:
        raise ValueError(f"Input should be greater than or equal to {env.ge}")
    if env.le is not None and not value <= env.le:
        raise ValueError(f"Input should be less than or equal to {env.le}")
    if env.min_length is not None and len(value) < env.min_length:
        raise ValueError(f"String should have at least {env.min_length} character{'s' * (env.min_length > 1)}")
    if env.check is not None:
        env.check(value)
    return value


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
    from_file: dict[str, str] = {}
    if path.is_file():
        from dotenv import dotenv_values  # only when there is a file to read: its import is 5 ms of every command

        from_file = {k: v for k, v in dotenv_values(path).items() if v is not None}
    resolved = zones.resolve(
        [("env", environ.get("TZ")), (".env", from_file.get("TZ")), ("system", system_tz or system_zone())]
    )
    for source, value in resolved.rejected:
        log.warning(
            "TZ from %s is not an IANA zone name: %r; ignored", source, value,
            extra={"action": "tz_rejected", "source": source, "value": value},
        )
    settings = Settings.read({**from_file, **environ})
    data_dir = settings.data_dir if settings.data_dir.is_absolute() else cwd / settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        raise SettingsError(f"NCL_DATA_DIR={str(data_dir)!r} is not a directory")
    return settings.replace(data_dir=data_dir, tz=resolved)
