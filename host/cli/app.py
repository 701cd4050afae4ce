"""What every command is handed: the settings, and the central DB opened the right way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import click

from host.errors import NclError
from host.files import lock
from host.scheduling.recurrence import Policy
from host.settings import Settings
from host.store import db, views
from schemas import clock
from schemas.times import TimeFormatError, parse_user_time, truncate_ms


@dataclass(frozen=True)
class App:
    settings: Settings

    def central(self, write: bool = False) -> db.Connection:
        """The central DB. A read on an install that has none sees an empty one and creates nothing."""
        path = self.settings.central_db
        if write:  # db.connect makes the data dir (0700) and central.db (0600) if need be
            return db.connect(path, "central")
        if path.exists():
            return db.connect(path, "central", readonly=True)
        lock.refuse_missing_central(path.parent)  # gone under a running host: say so, never show it empty
        return views.empty_central()

    def now(self) -> datetime:
        return clock.now()


pass_app = click.make_pass_decorator(App)


def policy(app: App) -> Policy:
    return Policy.of(app.settings)


def _parse_now(ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    app = ctx.find_object(App)
    assert app is not None
    try:
        return truncate_ms(parse_user_time(value, app.settings.tz.zone))
    except TimeFormatError as exc:
        raise NclError(f"--now: {exc}") from None


now_option = click.option("--now", callback=_parse_now, metavar="ISO", expose_value=True,
                          help="Act as if it were this instant (ISO 8601, naive = TZ); default the real clock.")
