"""``ncl doctor``'s checks: each says whether something is wrong and what was found."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from host.cli.app import zone_mismatch
from host.errors import NclError
from host.files import lock, private
from host.runtimes.image import EngineDown, Versions, connect_engine, host_versions, inspect
from host.settings import AlertTarget, Settings, variables
from host.settings import env_file as env_file_of
from host.store import db, groups, mailboxes, project_tasks, sessions, views
from schemas.ddl import DbKind, latest_version

MIN_FREE_BYTES = 1 << 20  # below this a SQLite write (journal plus pages) can no longer be counted on


Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One finding: ``fail`` makes doctor exit 1, ``warn`` is said loudly but the install works."""

    name: str
    level: Level
    detail: str
    extra: dict[str, Any] | None = None  # more keys of its JSON (the image check's versions)

    @property
    def ok(self) -> bool:
        return self.level != "fail"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "level": self.level, "detail": self.detail, **(self.extra or {})}


def _level(ok: bool, warn: bool = False) -> Level:
    return "fail" if not ok else "warn" if warn else "ok"


def timezone(settings: Settings) -> Check:
    tz = settings.tz
    rejected = "; ".join(f"rejected TZ={value!r} from {source}" for source, value in tz.rejected)
    mismatch = zone_mismatch(settings)
    detail = "; ".join([f"{tz.name} (from {tz.source})", *filter(None, [rejected, mismatch])])
    return Check("timezone", _level(not tz.rejected, warn=mismatch is not None), detail)


def env_file(settings: Settings) -> Check:
    """``NCL_`` variables of .env (or ``NCL_ENV_FILE``) that ncl does not read: a misspelt one is ignored, its
    setting left at its default with no word (``NCL_MAX_RUNERS=2``). (The environment's are not looked at: other
    tools may set their own there.)"""
    path = env_file_of(os.environ, Path.cwd())
    if not path.is_file():
        return Check("env_file", "ok", f"no {path}")
    from dotenv import dotenv_values

    known = variables()
    unknown = sorted(key for key in dotenv_values(path) if key.startswith("NCL_") and key not in known)
    if unknown:
        return Check("env_file", "warn", f"{path}: ncl reads no {', '.join(unknown)} (misspelt? see .env.example)")
    return Check("env_file", "ok", f"{path}: every NCL_ variable is one ncl reads")


def data_dir(settings: Settings) -> Check:
    path = settings.data_dir
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    writable = probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    state = "exists" if path.exists() else f"will be created under {probe} (mode 0700)"
    exposed, owner = private.exposure(path), private.foreign(path)
    detail = f"{path} ({state}; {'writable' if writable else 'NOT writable'})" + "".join(
        f"; {problem}" for problem in (owner, exposed) if problem)
    return Check("data_dir", _level(writable and owner is None, warn=exposed is not None), detail)


def _missing(settings: Settings) -> Level:
    """How bad a missing engine or image is: the docker runtime cannot run without it (fail), ``auto`` falls back
    to runners with no isolation (warn), and the local runtime does not use either (ok)."""
    return "fail" if settings.runtime == "docker" else "warn" if settings.runtime == "auto" else "ok"


def docker_engine(settings: Settings) -> tuple[Check, Check, str | None]:
    """The engine and the runner image (required only by NCL_RUNTIME=docker), and what keeps ``auto`` from
    choosing docker (None: nothing), so the runtime check need not ask the engine a second time."""
    unused = "; not used: NCL_RUNTIME=local" if settings.runtime == "local" else ""
    try:
        client = connect_engine(timeout=5)
    except EngineDown as down:
        level = _missing(settings)
        engine = Check("docker_engine", level, f"not reachable ({down.reason}); runtime {settings.runtime}")
        return engine, _image(level, f"{settings.image}: unknown (no engine){unused}", None), str(down)
    with closing(client):
        engine = Check("docker_engine", "ok", f"reachable (engine {client.version().get('Version', '?')})")
        found, problem = inspect(client, settings.image)
    if problem is None:
        return engine, _image("ok", f"{settings.image} present", found), None
    return engine, _image(_missing(settings), problem + unused, found, said=found is not None), f"image {problem}"


def _image(level: Level, detail: str, found: Versions | None, said: bool = False) -> Check:
    """The image check: the versions the image was built for (None: no image to ask) next to this host's, in
    its detail unless it ``said`` them already (a mismatch)."""
    host = host_versions()
    seen = f"image: {found.describe()}; " if found else ""
    return Check("image", level, detail if said else f"{detail} ({seen}host: {host.describe()})",
                 {"image_versions": found.to_json() if found else None, "host_versions": host.to_json()})


def runtime(settings: Settings, probe: Callable[[Settings], str | None] | None = None) -> Check:
    """Which runtime ``ncl host run`` would use and why (given what the engine check found, if it ran).
    Informational: local is a valid choice, said loudly."""
    # imported here: it pulls in both runtimes, which only this check needs
    from host.runtimes import factory as runtimes

    name, reason = runtimes.choose(settings, probe or runtimes.probe_docker)
    return Check("runtime", _level(True, warn=name == "local"),
                 f"{name}: {reason}" + ("; runners get NO isolation" if name == "local" else ""))


def api_key(settings: Settings) -> Check:
    """The key, where the host's provider or a group's needs it."""
    present = bool(settings.anthropic_api_key)
    named: list[str] = []
    if not lock.unmade(settings.central_db):  # (one lost or unreadable is the schema check's to say)
        with contextlib.suppress(NclError, db.Error), \
                closing(db.connect(settings.central_db, "central", readonly=True)) as conn:
            named = groups.named_with_provider(conn, "anthropic")
    needed = settings.provider == "anthropic" or bool(named)
    detail = (f"ANTHROPIC_API_KEY {'present' if present else 'not set'}; provider {settings.provider}"
              + (f" (groups {', '.join(named)}: anthropic)" if named else ""))
    return Check("api_key", _level(present or not needed), detail)


def schema_versions(settings: Settings, folders: list[Path] | None = None) -> Check:
    """Versions and integrity of central.db and every active session's files. Session files are read without
    migrating; central.db was migrated already if it was older, by listing its sessions (as any command does)."""
    problems: list[str] = []
    tally: Counter[str] = Counter()
    files: list[tuple[DbKind, Path]] = [("central", settings.central_db)]
    files += [(kind, folder / f"{kind}.db") for folder in folders or [] for kind in ("inbound", "outbound")]
    for kind, path in files:
        found, state = views.file_state(path) if path.exists() else (None, "missing")
        latest = latest_version(kind)
        if found is None:
            problems.append(f"{path}: missing or unreadable ({state})")
        elif found > latest:
            problems.append(f"{path}: v{found} is newer than this release (v{latest})")
        elif state != "ok":
            problems.append(f"{path}: corrupt ({state})")
        else:
            tally[f"{kind} v{found}" + ("" if found == latest else f" (migrates to v{latest} on open)")] += 1
    summary = ", ".join(f"{count}× {label}" for label, count in sorted(tally.items()))
    return Check("schema", _level(not problems), "; ".join([summary, *problems]) if problems else summary)


def free_space(settings: Settings, folders: list[Path]) -> Check:
    """Room to write on every filesystem the data lives on (sessions may sit on mounts of their own)."""
    full: list[str] = []
    seen: dict[int, bool] = {}
    for folder in [settings.data_dir, *folders]:
        try:
            device = folder.stat().st_dev
            if device not in seen:
                stats = os.statvfs(folder)
                seen[device] = stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES
        except OSError:
            continue  # a missing folder is the schema check's to report
        if seen[device]:
            full.append(str(folder))
    detail = f"{len(seen)} filesystem(s) with room" if not full else f"no free space for: {', '.join(full[:10])}" + (
        f" (+{len(full) - 10} more)" if len(full) > 10 else "")
    return Check("disk", _level(not full), detail)


def agent_host_tasks(settings: Settings) -> Check:
    """NCL_ALLOW_AGENT_HOST_TASKS (issue 16.3): on, admin groups' agents may have commands run on this machine (a
    warning, said at every doctor); off, the host tasks they created while it was on do not run (said too)."""
    from schemas.requests import HOST_ID  # imported here: its pydantic models took 95 ms of 'ncl doctor --help'

    held = 0
    if not lock.unmade(settings.central_db):
        try:
            with closing(db.connect(settings.central_db, "central", readonly=True)) as conn:
                held = project_tasks.count_with_prefix(conn, HOST_ID)
        except (db.DbError, db.Error):
            pass  # the schema check says what is wrong with central.db
    made = f"{held} host task(s) created by agents ('ncl scheduled-task list' shows them, 'delete' removes one)"
    if settings.allow_agent_host_tasks:
        return Check("agent_host_tasks", "warn", "NCL_ALLOW_AGENT_HOST_TASKS is on: admin groups' agents may have "
                     f"commands run on this machine as {_user()}; {made}")
    return Check("agent_host_tasks", _level(True, warn=held > 0),
                 f"off{f'; {made}, which do not run while it is off' if held else ''}")


def alert_channel(settings: Settings) -> Check:
    """NCL_ALERT_CHANNEL (issue 16.6): where trouble is reported, a webhook shown without its path or query (they
    often hold its secret). None set, or a ``session:GROUP`` naming no group, and trouble is seen only by whoever
    reads the log or the session: a warning."""
    target = settings.alert_target
    if target is None:
        return Check("alerts", "warn", "none configured; trouble is only in the log and the session "
                     "(set NCL_ALERT_CHANNEL, see .env.example)")
    if target.kind == "mail":
        return _alert_mail(settings, target)
    if target.kind == "session":
        missing = Check("alerts", "warn", f"{target} names no group: its alerts go nowhere ('ncl groups list')")
        if lock.unmade(settings.central_db):
            return missing
        try:
            with closing(db.connect(settings.central_db, "central", readonly=True)) as conn:
                groups.get(conn, target.value)
        except (db.DbError, db.Error):
            pass  # the schema check says what is wrong with central.db
        except NclError:
            return missing
    return Check("alerts", "ok", f"alerts go to {target}")


def _alert_mail(settings: Settings, target: AlertTarget) -> Check:
    """``mail:`` alerts: the mailbox that sends them exists and logs in to its SMTP server (10 s), else fail."""
    from host.channels import alerts, mail_smtp

    try:
        mailbox = alerts.sending_mailbox(settings, target)
    except (db.DbError, db.Error):
        return Check("alerts", "fail", f"{target}: central.db not read (see the schema check)")
    except NclError as exc:
        return Check("alerts", "fail", str(exc))
    if (login := mail_smtp.check_smtp(mailbox)) is not None:
        return Check("alerts", "fail", f"{target}: {login}")
    return Check("alerts", "ok", f"alerts go to {target}, mailed from {mailbox.address} (SMTP login ok)")


def matrix_login(settings: Settings) -> Check:
    """The Matrix channel's login (NCL_MATRIX_*), asked of the homeserver; not set up at all is fine."""
    import asyncio

    from host.channels.matrix_login import MatrixError, check_login, configured

    missing = configured(settings)
    if missing == "":
        return Check("matrix", "ok", "not set up (NCL_MATRIX_USER_ID is empty)")
    if missing:
        return Check("matrix", "fail", missing)
    try:
        return Check("matrix", "ok", asyncio.run(asyncio.wait_for(check_login(settings), 20)))
    except (MatrixError, OSError, TimeoutError) as exc:
        return Check("matrix", "fail", f"{settings.matrix_homeserver}: {str(exc)[:300] or type(exc).__name__}")


def mail(settings: Settings) -> Check:
    """Each mailbox (issue 17): an empty allow-list refuses every mail and skipped mails wait for the operator
    (warn), a wired mailbox whose password variable is unset or whose IMAP login fails cannot work (fail); the login
    is tried with a short timeout."""
    if lock.unmade(settings.central_db):
        return Check("mail", "ok", "no mailboxes")
    try:
        with closing(db.connect(settings.central_db, "central", readonly=True)) as conn:
            found, wired = mailboxes.list_all(conn), {m.address: g for m, g in mailboxes.wired(conn)}
            skipped = {m.address: mailboxes.skipped(conn, m.address) for m in found}
    except (db.DbError, db.Error):
        return Check("mail", "ok", "not read (see the schema check)")
    if not found:
        return Check("mail", "ok", "no mailboxes")
    from host.channels import mail_imap

    levels: list[Level] = []
    said = []
    for mailbox in found:
        problems: list[tuple[Level, str]] = []
        if not mailbox.allow:
            problems.append(("warn", "its allow-list is empty: every mail is refused (ncl mailbox create … --allow)"))
        if skipped[mailbox.address]:
            problems.append(("warn", f"{skipped[mailbox.address]} mail(s) skipped after failing every take, left "
                                     "unread (log: mail_skipped; central.db mail_seen: reason)"))
        if mailbox.address not in wired:
            problems.append(("ok", "no group is wired to it"))
        else:
            login = mail_imap.check_login(settings, mailbox)
            problems.append(("fail", login) if login else ("ok", "IMAP login ok"))
        levels += [level for level, _ in problems]
        said.append(f"{mailbox.address}: {'; '.join(text for _, text in problems)}")
    level: Level = "fail" if "fail" in levels else "warn" if "warn" in levels else "ok"
    return Check("mail", level, " | ".join(said))


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _session_folders(settings: Settings) -> tuple[list[Path], Check | None]:
    if lock.unmade(settings.central_db):
        try:
            lock.refuse_missing_central(settings.data_dir, settings.sessions_dir)
        except NclError as exc:  # lost, not yet made
            return [], Check("schema", "fail", str(exc))
        return [], Check("schema", "ok", f"no central.db yet (latest central v{latest_version('central')})")
    try:
        with closing(db.connect(settings.central_db, "central", readonly=True)) as conn:
            return [s.folder for s in sessions.list_all(conn, settings, status="active")], None
    except (db.DbError, db.Error) as exc:
        return [], Check("schema", "fail", str(exc))


def run_all(settings: Settings) -> list[Check]:
    folders, early = _session_folders(settings)
    engine, image, problem = docker_engine(settings)
    return [timezone(settings), env_file(settings), data_dir(settings), engine, image,
            runtime(settings, lambda _: problem), api_key(settings), early or schema_versions(settings, folders),
            free_space(settings, folders), agent_host_tasks(settings), alert_channel(settings), matrix_login(settings),
            mail(settings)]
