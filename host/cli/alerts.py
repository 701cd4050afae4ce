"""``ncl alerts``: where the host reports trouble (``NCL_ALERT_CHANNEL``), and a test of it."""

from __future__ import annotations

import click

from host.cli.app import App, pass_app
from host.cli.output import emit, json_option
from host.errors import NclError


@click.group("alerts")
def alerts_cli() -> None:
    """Alerts: a series paused, gate errors in a row, missed slots, a failed project task, a runner that cannot
    start, reported to NCL_ALERT_CHANNEL."""


@alerts_cli.command("test")
@json_option
@pass_app
def test(app: App, as_json: bool) -> None:
    """Send a test alert to NCL_ALERT_CHANNEL, once: exit 1 (and say why) when it is not handed over."""
    import asyncio

    from host.channels.alerts import Alerts, test_alert  # imported here: 'ncl alerts --help' took 146 ms with it

    target = app.settings.alert_target
    if target is None:
        raise NclError("NCL_ALERT_CHANNEL is not set: alerts go nowhere (see .env.example)")
    sender = Alerts(app.settings, target)

    async def once() -> None:
        try:
            await sender.send(test_alert(app.settings, app.now()))
        finally:
            await sender.aclose()

    asyncio.run(once())
    data = {"target": str(target), "event": "test", "sent": True}
    emit(as_json, data, lambda: click.echo(f"test alert sent to {target}"))
