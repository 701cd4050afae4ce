"""``ncl host``: run the host, or do one sweep by hand."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import click

from host.cli.app import App, now_option, pass_app
from host.cli.output import emit, fields, json_option
from host.files.lock import host_lock
from host.loop import Host
from host.project_tasks.fire import fire_once
from host.runtimes.factory import select_runtime
from host.runtimes.pool import Runners
from host.scheduling.sweep import Sweeper
from schemas import clock
from schemas.proctree import become_subreaper, subreaping

log = logging.getLogger(__name__)


@click.group("host")
def host_cli() -> None:
    """The host process: sweeps session inboxes, wakes runners, applies their requests."""


@host_cli.command("run")
@pass_app
def run(app: App) -> None:
    """Run the host until SIGINT/SIGTERM (one per data directory)."""
    with host_lock(app.settings.data_dir):
        # Orphans of local runners and host tasks come to us, not to pid 1, and are killed (schemas.proctree).
        become_subreaper()
        logging.getLogger().setLevel(min(logging.INFO, logging.getLogger().level))
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
    """One sweep. With --now it acts at that instant and only counts the runners it would wake."""
    # As in ``host run``, what a host task leaves when it ends is ours to kill; only while we sweep.
    with host_lock(app.settings.data_dir), subreaping():
        runtime = None if now else select_runtime(app.settings)[0]
        sweeper = Sweeper(app.settings, Runners(runtime, app.settings) if runtime else None)
        try:
            fired = fire_once(app.settings, now)  # project tasks first: a job one enqueues is woken by this sweep
            result = sweeper.tick(now or app.now())
        finally:
            sweeper.close()
            if runtime is not None:
                runtime.close(stop_runners=False)  # the runners it woke outlive it, as with the local runtime
    data = {**result.to_json(), **fired}
    emit(as_json, data, lambda: fields(data, [(k, k.replace("_", " ")) for k in data]))
