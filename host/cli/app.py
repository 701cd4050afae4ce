"""What every command is handed: the settings, the central DB opened the right way, and a warning when the running
host plans in another zone. The settings are loaded when a command first asks for them (``pass_app``), not by the
``ncl`` group: a command's ``--help`` loads none (and shows even when a setting is invalid)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Concatenate, NamedTuple, ParamSpec, TypeVar

import click

from host import settings as settings_module
from host.errors import NclError
from host.files import lock
from host.settings import Settings
from schemas.times import TimeFormatError, parse_user_time, truncate_ms

if TYPE_CHECKING:
    from host.scheduling.recurrence import Policy
    from host.store import db


class App(NamedTuple):  # not a dataclass: a fifth of its cost at import, which every command pays
    settings: Settings

    def central(self, write: bool = False) -> db.Connection:
        """The central DB. A read on an install that has none sees an empty one and creates nothing."""
        from host.store import db  # imported here: ``ncl chat`` talks to the host and opens no database

        path = self.settings.central_db
        if write:  # db.connect makes the data dir (0700) and central.db (0600) if need be
            return db.connect(path, "central")
        if not lock.unmade(path):
            return db.connect(path, "central", readonly=True)
        lock.refuse_missing_central(path.parent, self.settings.sessions_dir)  # lost: say so, never show it empty
        from host.store import views

        return views.empty_central()

    def now(self) -> datetime:
        from schemas import clock  # imported here, as Policy below: commands that only read need neither

        return clock.now()


P = ParamSpec("P")
R = TypeVar("R")


def app_of(ctx: click.Context) -> App:
    """This command line's App, made at the first ask: the settings loaded, the log level set from them, and a running
    host planning in another zone warned about (``doctor`` says it itself)."""
    root = ctx.find_root()
    if not isinstance(root.obj, App):
        settings = settings_module.load()
        logging.getLogger().setLevel(settings.log_level)
        root.obj = App(settings)
        if root.invoked_subcommand != "doctor" and (mismatch := zone_mismatch(settings)):
            logging.getLogger("ncl").warning(mismatch, extra={"action": "zone_mismatch"})
    return root.obj


def pass_app(command: Callable[Concatenate[App, P], R]) -> Callable[P, R]:
    """Hands a command this command line's App (``app_of``) as its first argument."""

    def with_app(*args: P.args, **kwargs: P.kwargs) -> R:
        return command(app_of(click.get_current_context()), *args, **kwargs)

    return functools.update_wrapper(with_app, command)


def zone_mismatch(settings: Settings) -> str | None:
    """What to warn about when a running host plans in another zone than this command's TZ (None: nothing)."""
    pid = lock.running_pid(settings.data_dir)
    if pid is None:
        return None
    from host.runtimes.published import published  # imported here: no host is the norm

    zone = (published(settings.data_dir) or {}).get("zone")
    if not isinstance(zone, str) or zone == settings.tz.name:
        return None
    return (f"the running host (pid {pid}) uses TZ={zone}, this command TZ={settings.tz.name} (from "
            f"{settings.tz.source}): the host plans times in {zone}, this command shows them in {settings.tz.name}, "
            "until the host is restarted with the new TZ (it then re-plans waiting recurring tasks)")


def policy(app: App) -> Policy:
    from host.scheduling.recurrence import Policy

    return Policy.of(app.settings)


def _parse_now(ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return truncate_ms(parse_user_time(value, app_of(ctx).settings.tz.zone))
    except TimeFormatError as exc:
        raise NclError(f"--now: {exc}") from None


now_option = click.option("--now", callback=_parse_now, metavar="ISO", expose_value=True,
                          help="Act as if it were this instant (ISO 8601, naive = TZ); default the real clock.")
