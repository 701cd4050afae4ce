"""``ncl host``: run the host, or do one sweep by hand. The host's machinery is imported by the command that runs it:
``ncl host --help`` took 390 ms importing it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Literal

import click

from host.cli import STDERR_HANDLER
from host.cli.app import App, now_option, pass_app
from host.cli.output import emit, fields, json_option, local_time
from host.cli.terminal import visible
from host.files import logs
from host.files.lock import host_lock
from host.settings import Settings
from schemas import clock

log = logging.getLogger(__name__)


@click.group("host")
def host_cli() -> None:
    """The host process: sweeps session inboxes, wakes runners, applies their requests."""


@contextlib.contextmanager
def logging_to_file(settings: Settings, stderr: Literal["lines", "quiet", "kept"]) -> Iterator[None]:
    """While inside, every record also goes to data/host.log (``logs``), and every handler gives a record the
    session of the visit it was logged in. ``lines`` and ``quiet`` are the host: INFO at least, and the CLI's short
    stderr lines replaced by the log's lines (made visible) or by none; ``kept`` keeps them, at NCL_LOG_LEVEL.
    Entered before the host lock: what taking it says (a stale lock replaced) is logged too. Put back as it was at
    the end (for in-process callers: the tests)."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    ours = handlers
    if stderr != "kept":
        root.setLevel(min(logging.INFO, level))
        ours = [handler for handler in handlers if handler.get_name() != STDERR_HANDLER]
        if stderr == "lines" and len(ours) < len(handlers):
            shown = logging.StreamHandler()
            shown.setFormatter(logs.formatter(settings.log_format, settings.tz.zone, visible))
            ours.append(shown)
    to_file = logs.file_handler(settings.data_dir, logs.formatter(settings.log_format, settings.tz.zone))
    session = logs.SessionFilter()
    root.handlers = [*ours, to_file]
    for handler in root.handlers:
        handler.addFilter(session)
    try:
        yield
    finally:
        for handler in root.handlers:
            handler.removeFilter(session)
        to_file.close()
        root.handlers = handlers
        root.setLevel(level)


@host_cli.command("run")
@click.option("-q", "--quiet", is_flag=True,
              help="Log to data/host.log only; stderr gets only an error that stops the host (scripts/run.sh).")
@pass_app
def run(app: App, quiet: bool) -> None:
    """Run the host until SIGINT/SIGTERM (one per data directory). It logs to stderr and data/host.log (rotated
    at 10 MiB, 3 old files kept; read and follow it with `ncl logs`)."""
    import asyncio

    from host.loop import Host
    from host.runtimes.factory import select_runtime
    from schemas.proctree import become_subreaper

    with logging_to_file(app.settings, "quiet" if quiet else "lines"), host_lock(app.settings.data_dir):
        # Orphans of local runners and host tasks come to us, not to pid 1, and are killed (schemas.proctree).
        app.central(write=True).close()  # made, migrated, or refused as lost before anything starts
        become_subreaper()
        runtime, reason = select_runtime(app.settings)
        runtime.announce(reason)  # local is said loudly: its runners have no isolation
        runtime.prepare()
        try:
            asyncio.run(Host(app.settings, runtime, clock).run())
        finally:
            runtime.close(stop_runners=True)


@host_cli.command("sweep")
@click.option("--once", is_flag=True, required=True, help="Do one sweep and exit (the only mode).")
@now_option
@json_option
@pass_app
def sweep(app: App, once: bool, now: datetime | None, as_json: bool) -> None:
    """One sweep. With --now it acts at that instant and only counts the runners it would wake. What it does is
    logged to data/host.log too."""
    import asyncio

    from host.channels import alerts
    from host.project_tasks.fire import fire_once
    from host.runtimes.factory import select_runtime
    from host.runtimes.pool import Runners
    from host.scheduling.sweep import Sweeper
    from schemas.proctree import subreaping

    raised = alerts.alerts_of(app.settings)  # what this sweep raises is sent before it exits, in bounded time
    # As in ``host run``, what a host task leaves when it ends is ours to kill; only while we sweep.
    with logging_to_file(app.settings, "kept"), host_lock(app.settings.data_dir), subreaping():
        # (A runner whose group's provider needs the model proxy is not started: only a running host has one,
        # ``pool.NoModel``.)
        runtime = None if now else select_runtime(app.settings)[0]
        sweeper = Sweeper(app.settings, Runners(runtime, app.settings) if runtime else None, one_off=True)
        try:
            with alerts.reporting(raised):
                fired = fire_once(app.settings, now)  # project tasks first: a job one enqueues is woken by this sweep
                result = sweeper.tick(now or app.now())
        finally:
            sweeper.close()
            if runtime is not None:
                runtime.close(stop_runners=False)  # the runners it woke outlive it, as with the local runtime
            if raised and raised.pending:
                asyncio.run(raised.flush())
    data = {**result.to_json(), **fired}
    shown = {**data, "now": local_time(data["now"], app.settings.tz.zone)}  # (the table in TZ, as every table)
    emit(as_json, data, lambda: fields(shown, [(k, k.replace("_", " ")) for k in data]))
