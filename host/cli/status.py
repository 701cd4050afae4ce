"""``ncl status`` and ``ncl messages``: what the host is doing, and what was said."""

from __future__ import annotations

from contextlib import closing

import click

from host.cli import overview
from host.cli.app import App, pass_app
from host.cli.output import emit, fields, json_option, local_time, span, table
from host.store import sessions
from schemas import ids


@click.command("status")
@json_option
@pass_app
def status(app: App, as_json: bool) -> None:
    """Is the host up, which runners are alive (busy or idle), which sessions wait for one, the next 10 due
    items."""
    with closing(app.central()) as central:
        data = overview.status(central, app.settings, app.now())
    zone = app.settings.tz.zone

    def human() -> None:
        running = f"running (pid {data['host_pid']})" if data["host_running"] else "not running"
        fields({"host": running, "data": app.settings.data_dir, "runners": len(data["runners"]),
                "waiting": len(data["waiting"])},  # (the data dir: a command run elsewhere reads another's)
               [("host", "host"), ("data", "data dir"), ("runners", "runners"), ("waiting", "waiting for a slot")])
        if data["runners"]:
            click.echo("")
            table([{**r, "session_id": ids.short(r["session_id"]), "since": local_time(r["started_at"], zone),
                    "idle": span(r["idle_for_s"])} for r in data["runners"]],
                  [("session_id", "SESSION"), ("agent_group_id", "GROUP"), ("since", "RUNNING SINCE"),
                   ("state", "STATE"), ("idle", "IDLE FOR")], "")
        if data["waiting"]:
            click.echo("")
            table([{**w, "session_id": ids.short(w["session_id"]), "since": local_time(w["due_since"], zone),
                    "waited": span(w["waiting_for_s"])} for w in data["waiting"]],
                  [("session_id", "WAITING SESSION"), ("agent_group_id", "GROUP"), ("since", "DUE SINCE"),
                   ("waited", "WAITING FOR")], "")
        click.echo("")
        table([{**i, "at": local_time(i["due"], zone), "session_id": i["session_id"] and ids.short(i["session_id"])}
               for i in data["next_due"]],
              [("at", "DUE"), ("kind", "KIND"), ("agent_group_id", "GROUP"), ("session_id", "SESSION"),
               ("text", "TEXT")], "nothing due")

    emit(as_json, data, human)


@click.group("messages")
def messages_cli() -> None:
    """Session transcripts."""


@messages_cli.command("list")
@click.option("--session", "session_id", required=True, help="The session.")
@click.option("--last", type=click.IntRange(min=1), metavar="N",
              help="Only the latest N messages, both directions together (default: all).")
@json_option
@pass_app
def list_(app: App, session_id: str, last: int | None, as_json: bool) -> None:
    """Both directions of a session, in order, times in TZ."""
    with closing(app.central()) as central:
        session = sessions.get(central, app.settings, session_id)
    found = overview.transcript(session, last)
    zone = app.settings.tz.zone
    emit(as_json, {"messages": found}, lambda: table(
        [{**m, "at": local_time(m["timestamp"], zone), "arrow": "→" if m["direction"] == "in" else "←"}
         for m in found],
        [("at", "TIME"), ("arrow", ""), ("kind", "KIND"), ("status", "STATUS"), ("text", "TEXT")], "no messages"))
