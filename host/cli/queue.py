"""``ncl queue``: push background jobs into named queues, and see what waits. The queues module (the router, asyncio)
is imported by the commands: ``--help`` took 145 ms with it."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from host.cli.app import App, now_option, pass_app
from host.cli.output import emit, json_option, print_json, table
from host.errors import NclError
from host.files import confined


@click.group("queue")
def queue_cli() -> None:
    """Named queues of background jobs (channels queue:NAME)."""


def _payload(text: str | None, file: Path | None) -> Any:
    """The job; a file of it at most ``queues.MAX_PAYLOAD_BYTES``, as a webhook's body is."""
    from host.channels.queues import MAX_PAYLOAD_BYTES

    if (text is None) == (file is None):
        raise click.UsageError("give the payload with exactly one of --json PAYLOAD or --file F")
    # (a --json argument is bounded already: Linux passes none over 128 KiB)
    raw = text if text is not None else confined.read_input(file, MAX_PAYLOAD_BYTES)  # type: ignore[arg-type]
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise NclError(f"payload is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise NclError("payload is nested too deeply to read") from None


@queue_cli.command("send")
@click.option("--queue", "queue", required=True, help="The queue name (a group must have channel queue:NAME).")
@click.option("--json", "payload_text", metavar="PAYLOAD",
              help='The job: {"prompt": "…" | [{"type":"text","text":…},{"type":"file","url":"room:///…"}], '
                   '"thread_id": "…{YYYY}{MM}{DD}…"} (the tokens in UTC: one session per period).')
@click.option("--file", "payload_file", type=click.Path(path_type=Path), help="Read the payload from a file.")
@now_option
@pass_app
def send(app: App, queue: str, payload_text: str | None, payload_file: Path | None, now: datetime | None) -> None:
    """Enqueue one job; prints {"queue", "message_id", "session_id"} as JSON (here --json is the payload)."""
    from host.channels import queues

    payload = _payload(payload_text, payload_file)
    with closing(app.central(write=True)) as central:
        print_json(queues.send(central, app.settings, now or app.now(), queue, payload))


@queue_cli.command("list")
@json_option
@pass_app
def list_(app: App, as_json: bool) -> None:
    """Queues with their group and how many jobs wait and run."""
    from host.channels import queues

    with closing(app.central()) as central:
        found = queues.summary(central, app.settings)
    emit(as_json, {"queues": found}, lambda: table(
        found, [("name", "QUEUE"), ("agent_group_id", "GROUP"), ("pending", "PENDING"), ("in_flight", "IN FLIGHT")],
        "no queues (wire one with 'ncl groups create NAME --channel queue:QUEUE')"))
