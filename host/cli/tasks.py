"""``ncl tasks``: list, inspect and control task series. Works with the host running or stopped."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import closing
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click

from host.cli.app import App, now_option, pass_app, policy
from host.cli.output import emit, fields, json_option, left, local_time, table
from host.errors import NclError
from host.scheduling import task_list
from host.store import db, sessions
from host.store.sessions import Session
from schemas import ids
from schemas.text import one_line
from schemas.times import parse_user_time, to_text

T = TypeVar("T")
COLUMNS = [("id", "ID"), ("agent_group_id", "GROUP"), ("session_id", "SESSION"), ("status", "STATUS"),
           ("next", "NEXT RUN"), ("left", "LEFT"), ("recurrence", "RECURRENCE"), ("last_outcome", "LAST"),
           ("session_status", "SESSION STATUS"), ("excerpt", "PROMPT")]
RUN_COLUMNS = [("outcome", "OUTCOME"), ("scheduled", "SCHEDULED"), ("started", "STARTED"),
               ("finished", "FINISHED"), ("duration_ms", "MS"), ("used", "TOKENS IN/OUT"), ("message_id", "OCCURRENCE"),
               ("detail", "DETAIL"), ("answer", "ANSWER")]
ANSWER_SHOWN = 60  # characters of a run's answer in the table, on one line; --json has the run log's 500


def _write(app: App, ref: str, action: Callable[[ModuleType, Any, Path, str], T],
           plans: str | None = None) -> tuple[Session, str, T]:
    """Find the series, run ``action(tasks, conn, session folder, series_id)`` on its inbox (``tasks``:
    host.scheduling.tasks), nudge a running host. A command that ``plans`` runs is refused in a closed session."""
    # Imported here: nudge brings asyncio, planning the cron parser and the writes' models, which the read-only
    # commands (``tasks list``) need not load.
    from host.channels import nudge
    from host.scheduling import tasks

    with closing(app.central()) as central:
        session, series_id = task_list.locate(app.settings, central, ref)
    if plans:
        task_list.refuse_closed(session, series_id, plans)

    def write() -> T:  # (done again while its runner holds outbound.db past the short wait for it: a long commit)
        with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
            return action(tasks, conn, session.folder, series_id)

    outcome = db.retried(write)
    nudge.touch(app.settings)
    return session, series_id, outcome


def _recurrence(recurrence: str | None, interval_ms: str | None) -> str | None:
    """--recurrence, or --interval-ms (Pynchy's milliseconds) as the interval it stands for."""
    if interval_ms is None:
        return recurrence
    if recurrence is not None:
        raise NclError("give --recurrence or --interval-ms, not both (--interval-ms 3600000 = --recurrence 'every 1h')")
    from schemas import interval

    return interval.from_ms(interval_ms)


def _changed(as_json: bool, verb: str, series_id: str, count: int) -> None:
    emit(as_json, {"id": series_id, "action": verb, "changed": count},
         lambda: click.echo(f"{verb}: {series_id} ({count} occurrence(s) changed)"))


@click.group("tasks")
def task_cli() -> None:
    """Scheduled task series: one line per series, addressed by series id or any occurrence id."""


@task_cli.command("list")
@click.option("--group", "group_ref", help="Only this group's tasks (name or id).")
@click.option("--session", "session_id", help="Only this session's tasks.")
@click.option("--status", type=click.Choice(["pending", "processing", "paused", *task_list.ENDED]),
              help="Only series in this status.")
@click.option("--all", "include_ended", is_flag=True,
              help="Include ended series (completed, cancelled, failed) and those of closed sessions.")
@click.option("--wide", is_flag=True, help="Full ids and prompts (the table shortens them; --json never does).")
@now_option
@json_option
@pass_app
def list_(app: App, group_ref: str | None, session_id: str | None, status: str | None, include_ended: bool,
          wide: bool, now: datetime | None, as_json: bool) -> None:
    """List task series across all groups: live ones of active sessions (a session named by --session may be
    closed), or with --all every one. LEFT is the time until the next run (from --now if given); the table shows
    ids short (task-ab12cd), which every command taking an id accepts."""
    with closing(app.central()) as central:
        group_id = None
        if group_ref:
            from host.store import groups  # imported here: the list of every group's tasks needs none of it

            group_id = groups.get(central, group_ref).id
        if session_id:
            session_id = sessions.get(central, app.settings, session_id).id
        found = [s for s in task_list.series(app.settings, central, group_id, session_id,
                                             include_ended or status in task_list.ENDED,
                                             include_closed=include_ended or session_id is not None)
                 if status is None or s.status == status]
    zone = app.settings.tz.zone
    emit(as_json, {"tasks": [s.to_json() for s in found]}, lambda: table(
        [_row(s, zone, now or app.now(), wide) for s in found],
        # SESSION STATUS only says something when a listed series' session is closed (--all, --session)
        [c for c in COLUMNS if c[0] != "session_status" or any(s.session_status != "active" for s in found)],
        "no tasks"))


def _row(found: task_list.Series, zone: ZoneInfo, now: datetime, wide: bool) -> dict[str, Any]:
    shown = (lambda text: text) if wide else ids.short
    return {**found.to_json(), "id": shown(found.id), "session_id": shown(found.session_id),
            "next": local_time(found.next_run, zone), "left": left(found.next_run, now),
            "excerpt": found.prompt if wide or len(found.prompt) <= 40 else found.prompt[:39] + "…"}


@task_cli.command("show")
@click.argument("task_id")
@json_option
@pass_app
def show(app: App, task_id: str, as_json: bool) -> None:
    """Show a series: its occurrences and its next 5 runs."""
    with closing(app.central()) as central:
        session, series_id = task_list.locate(app.settings, central, task_id)
    zone = app.settings.tz.zone
    data = task_list.detail(session, series_id, zone)

    def human() -> None:
        fields({**data["task"], "next_run": local_time(data["task"]["next_run"], zone)},
               [("id", "series"), ("agent_group_id", "group"), ("session_id", "session"),
                ("session_status", "session status"), ("status", "status"),
                ("recurrence", "recurrence"), ("next_run", "next run"), ("last_outcome", "last outcome"),
                ("prompt", "prompt")])
        click.echo("next runs:  " + (", ".join(local_time(t, zone) for t in data["next_runs"]) or "-"))
        if ends := _ends_said(data["task"], zone):
            click.echo("ends:       " + ends)
        table([{**r, "at": local_time(r["process_after"], zone)} for r in data["occurrences"]],
              [("id", "OCCURRENCE"), ("status", "STATUS"), ("at", "SCHEDULED"), ("tries", "TRIES"),
               ("recurrence", "RECURRENCE")], "no occurrences")

    emit(as_json, data, human)


def _ends_said(item: dict[str, Any], zone: ZoneInfo) -> str:
    """What is left of a series with an end (``2 runs left, until 2027-01-01 09:00 EST``), or how it ended."""
    if item.get("ended"):
        return f"ended: its {item['ended']} was reached"
    said = [] if item.get("runs_left") is None else [f"{item['runs_left']} run{'s' * (item['runs_left'] != 1)} left"]
    if item.get("until"):
        said.append(f"until {local_time(item['until'], zone)}")
    return ", ".join(said)


@task_cli.command("runs")
@click.argument("task_id")
@json_option
@pass_app
def runs(app: App, task_id: str, as_json: bool) -> None:
    """The run history of a series, oldest first: ANSWER begins what a run answered, TOKENS IN/OUT what its turn
    used (--json: the answer's id and first 500 characters, the tokens)."""
    with closing(app.central()) as central:
        session, series_id = task_list.locate(app.settings, central, task_id)
    found = task_list.runs(session, series_id)
    zone = app.settings.tz.zone
    emit(as_json, {"runs": found}, lambda: table(
        [{**r, "scheduled": local_time(r["scheduled_for"], zone), "started": local_time(r["started_at"], zone),
          "finished": local_time(r["finished_at"], zone), "used": _tokens(r["tokens"]),
          "answer": r["answer_excerpt"] and one_line(r["answer_excerpt"], ANSWER_SHOWN),
          "detail": _detail(r["detail"], zone)} for r in found],
        RUN_COLUMNS, "no runs yet"))


def _detail(detail: str | None, zone: ZoneInfo) -> str | None:
    """A missed run's detail in words and TZ ("4 slots from … to …", or "… before the one at …, which ran" where the
    latest slot ran in their place), not its JSON of UTC times; others as kept."""
    try:
        missed = json.loads(detail or "")
        latest = local_time(missed["latest_slot"], zone)
        return (f"{missed['slots']} slots from {local_time(missed['first'], zone)} "
                + (f"before the one at {latest}, which ran" if missed.get("runs") else f"to {latest}"))
    except (ValueError, TypeError, KeyError):
        return detail


def _tokens(tokens: dict[str, int | None] | None) -> str | None:
    if tokens is None:
        return None
    return "/".join("?" if tokens[key] is None else str(tokens[key]) for key in ("input", "output"))


def _control(name: str, verb: str, doc: str, action: Callable[[ModuleType, Any, Path, str, datetime, App], int],
             plans: bool = False) -> None:
    """Register ``ncl tasks NAME ID``: one control action on a series, by series or occurrence id (one that
    ``plans`` runs is refused in a closed session)."""

    @task_cli.command(name, help=doc)
    @click.argument("task_id")
    @now_option
    @json_option
    @pass_app
    def command(app: App, task_id: str, now: datetime | None, as_json: bool) -> None:
        def act(tasks: ModuleType, conn: Any, folder: Path, series_id: str) -> int:
            if changed := action(tasks, conn, folder, series_id, now or app.now(), app):
                return changed
            raise tasks.unchanged(conn, series_id, verb)  # already paused, not paused, ended: said as such

        _, series_id, count = _write(app, task_id, act, plans=name if plans else None)
        _changed(as_json, verb, series_id, count)


_control("pause", "paused", "Pause a series (a running occurrence finishes; the next one waits paused).",
         lambda tasks, c, f, s, now, app: tasks.pause(c, s, now, policy(app), folder=f))
_control("resume", "resumed", "Resume a paused series; an overdue occurrence follows the misfire rule. Refused in "
         "a closed session.", lambda tasks, c, f, s, now, app: tasks.resume(c, s, now, policy(app)), plans=True)
_control("cancel", "cancelled", "Cancel a series: its live occurrences end (a running one finishes) and a "
         "'cancelled' run is recorded.", lambda tasks, c, f, s, now, app: tasks.cancel(c, s, now, folder=f))


@task_cli.command("update")
@click.argument("task_id")
@click.option("--prompt", help="New prompt.")
@click.option("--recurrence", help="New 5-field cron in TZ or interval ('every 90m'); '' makes the series one-shot.")
@click.option("--interval-ms", help="New interval in milliseconds (3600000 = every hour), instead of --recurrence.")
@click.option("--at", "at", help="Next run time, ISO 8601 (naive = TZ).")
@click.option("--script", help="New gate script; '' removes it.")
@click.option("--until", help="New end: no run after this time, ISO 8601 (naive = TZ); '' removes it.")
@click.option("--count", help="Runs left, the next one included; '' removes the limit.")
@click.option("--force", is_flag=True, help="Allow runs closer than NCL_TASK_MIN_INTERVAL_S.")
@now_option
@json_option
@pass_app
def update(app: App, task_id: str, prompt: str | None, recurrence: str | None, interval_ms: str | None,
           at: str | None, script: str | None, until: str | None, count: str | None, force: bool,
           now: datetime | None, as_json: bool) -> None:
    """Change a series' live occurrences; a new recurrence without --at recomputes the next run from now. Refused
    in a closed session."""
    recurrence = _recurrence(recurrence, interval_ms)
    if all(v is None for v in (prompt, recurrence, at, script, until, count)):
        raise click.UsageError("nothing to update: give --prompt, --recurrence, --interval-ms, --at, --script, "
                               "--until or --count")
    after = to_text(parse_user_time(at, app.settings.tz.zone)) if at else None
    end = to_text(parse_user_time(until, app.settings.tz.zone)) if until else until
    _, series_id, changed = _write(app, task_id, lambda tasks, c, f, s: tasks.update(
        c, s, now or app.now(), policy(app), prompt, after, recurrence, script, enforce_interval=not force,
        until=end, count=count, folder=f), plans="update")
    _changed(as_json, "updated", series_id, changed)


@task_cli.command("run-now")
@click.argument("task_id")
@now_option
@json_option
@pass_app
def run_now(app: App, task_id: str, now: datetime | None, as_json: bool) -> None:
    """Add a one-shot occurrence of the series, due now; the series' schedule does not move. Refused in a closed
    session."""
    _, series_id, occurrence = _write(app, task_id, lambda tasks, c, f, s: tasks.run_now(c, s, now or app.now()),
                                      plans="run-now")
    emit(as_json, {"id": series_id, "action": "run-now", "occurrence_id": occurrence},
         lambda: click.echo(f"queued {occurrence} for series {series_id}"))


@task_cli.command("add")
@click.option("--session", "session_id", required=True, help="The session whose agent runs the task.")
@click.option("--prompt", required=True, help="What the agent is asked each time.")
@click.option("--recurrence", help="5-field cron in TZ (or @hourly, @daily, @weekly, @monthly, @yearly), or an "
              "interval: 'every 90m', 'every 1h30m' (units d, h, m, s; elapsed time from the first run).")
@click.option("--interval-ms", help="Interval in milliseconds (3600000 = every hour), instead of --recurrence.")
@click.option("--at", "at", help="First run, ISO 8601 (naive = TZ); default the first slot after now (an interval: "
              "one interval from now), or now.")
@click.option("--script", help="Gate script run before the agent (bash; last line JSON {\"wakeAgent\": …}).")
@click.option("--context-mode", type=click.Choice(["group", "isolated"]), default="group", show_default=True)
@click.option("--until", help="A recurring series' end: no run after this time, ISO 8601 (naive = TZ).")
@click.option("--count", metavar="N", help="A recurring series' number of runs in all, the first included (missed "
              "slots count).")
@click.option("--force", is_flag=True, help="Allow runs closer than NCL_TASK_MIN_INTERVAL_S, and a task the "
              "session already has live (same prompt, recurrence and script).")
@now_option
@json_option
@pass_app
def add(app: App, session_id: str, prompt: str, recurrence: str | None, interval_ms: str | None, at: str | None,
        script: str | None, context_mode: str, until: str | None, count: str | None, force: bool,
        now: datetime | None, as_json: bool) -> None:
    """Schedule a task in a session, as an operator. Its answers go where the session's chat goes (an open 'ncl
    chat', its Matrix room or mail thread) and are kept in its transcript: 'ncl messages list --session ID'."""
    from host.channels import nudge  # see _write
    from host.scheduling import tasks
    from host.store import inbox
    from host.store.task_ids import TaskIds

    recurrence = _recurrence(recurrence, interval_ms)
    moment = now or app.now()
    after = to_text(parse_user_time(at, app.settings.tz.zone)) if at else None
    end = to_text(parse_user_time(until, app.settings.tz.zone)) if until else None
    if until == "" or count == "":
        raise NclError("--until and --count take a value (an update's '' removes one)")
    with closing(app.central(write=True)) as central:
        session = sessions.get(central, app.settings, session_id)
        if session.status != "active":
            raise NclError(f"session {session.id} is {session.status}; tasks run only in active sessions")
        registry = TaskIds(central, session.agent_group_id, session.id)
        with closing(db.connect(session.folder / "inbound.db", "inbound")) as conn:
            # Operators keep to NCL_MAX_TASKS_PER_SESSION too: the cap bounds the sweep's work, whoever asks.
            # Routed as the session's own messages: its answers go where the session's chat is (an agent's task
            # is routed so too). Unrouted, its answer was kept in the transcript, never shown in the open chat.
            task_id = tasks.schedule(conn, moment, policy(app), ids.new_id("task", moment), prompt, after, recurrence,
                                     script, context_mode, inbox.session_routing(conn), enforce_interval=not force,
                                     registry=registry, duplicate_ok=force, until=end, count=count)
    nudge.touch(app.settings)
    item = task_list.summary(session, task_id)
    emit(as_json, item.to_json(), lambda: click.echo(
        f"scheduled {task_id}; next run {local_time(item.next_run, app.settings.tz.zone)}"))
