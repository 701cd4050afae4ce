"""``ncl doctor``: check the install (the checks are in ``checks``)."""

from __future__ import annotations

import click

from host.cli import checks
from host.cli.app import App, pass_app
from host.cli.output import emit, json_option, table


@click.command("doctor")
@json_option
@pass_app
def doctor(app: App, as_json: bool) -> None:
    """Check the install: TZ, .env's variables, data dir, Docker engine and image, API key, schema versions."""
    found = checks.run_all(app.settings)
    ok = all(c.ok for c in found)
    emit(as_json, {"ok": ok, "checks": [c.to_json() for c in found]}, lambda: table(
        [{**c.to_json(), "ok": c.level if c.level == "ok" else c.level.upper()} for c in found],
        [("ok", "STATUS"), ("name", "CHECK"), ("detail", "DETAIL")], ""))
    if not ok:
        raise SystemExit(1)
