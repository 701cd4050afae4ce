"""``ncl sessions``: the operator's way to open and inspect sessions."""

from __future__ import annotations

from contextlib import closing

import click

from host.cli.app import App, pass_app
from host.cli.output import emit, fields, json_option, local_time, table
from host.errors import NclError, cut
from host.store import db, groups, sessions, views

COLUMNS = [("id", "ID"), ("agent_group_id", "GROUP"), ("status", "STATUS"), ("thread_key", "THREAD"),
           ("created", "CREATED"), ("last_active", "LAST ACTIVE")]


@click.group("sessions")
def session_cli() -> None:
    """Sessions: one folder and inbox per conversation or job stream."""


@session_cli.command("create")
@click.option("--group", "group_ref", required=True, help="Group name or id.")
@click.option("--thread", "thread_key", help="Thread key (at most one active session per key).")
@json_option
@pass_app
def create(app: App, group_ref: str, thread_key: str | None, as_json: bool) -> None:
    """Create a session for a group, with its folder and both DBs."""
    with closing(app.central(write=True)) as conn:
        found = sessions.create(conn, app.settings, app.now(), groups.get(conn, group_ref), thread_key)
    emit(as_json, found.to_json(), lambda: click.echo(f"created session {found.id} in {found.path}"))


def _group_id(conn: db.Connection, app: App, ref: str) -> str:
    """A group's id by name or id; also the id of a deleted group whose closed sessions remain."""
    try:
        return groups.get(conn, ref).id
    except NclError:
        if sessions.list_all(conn, app.settings, ref):
            return ref
        raise


@session_cli.command("list")
@click.option("--agent-group-id", "--group", "group_ref", help="Only this group's sessions (id or name).")
@click.option("--status", type=click.Choice(["active", "closed"]), help="Only sessions in this status.")
@json_option
@pass_app
def list_(app: App, group_ref: str | None, status: str | None, as_json: bool) -> None:
    """List sessions, oldest first."""
    with closing(app.central()) as conn:
        group_id = _group_id(conn, app, group_ref) if group_ref else None
        found = sessions.list_all(conn, app.settings, group_id, status)
    zone = app.settings.tz.zone
    emit(as_json, {"sessions": [s.to_json() for s in found]}, lambda: table(
        [{**s.to_json(), "created": local_time(s.created_at, zone), "last_active": local_time(s.last_active_at, zone)}
         for s in found], COLUMNS, "no sessions"))


@session_cli.command("show")
@click.argument("session_id")
@json_option
@pass_app
def show(app: App, session_id: str, as_json: bool) -> None:
    """Show one session."""
    with closing(app.central()) as conn:
        found = sessions.get(conn, app.settings, session_id)
    zone = app.settings.tz.zone
    emit(as_json, found.to_json(), lambda: fields(
        {**found.to_json(), "created_at": local_time(found.created_at, zone),
         "last_active_at": local_time(found.last_active_at, zone)},
        [("id", "id"), ("agent_group_id", "group"), ("status", "status"), ("thread_key", "thread"),
         ("created_at", "created"), ("last_active_at", "last active"), ("path", "path")]))


@session_cli.command("close")
@click.argument("session_id")
@click.option("--force", is_flag=True, help="Close it even with work waiting, running or paused: that work is never "
                                            "done.")
@json_option
@pass_app
def close(app: App, session_id: str, force: bool, as_json: bool) -> None:
    """Close a session: no sweep visits it, a running host stops its runner, and nothing new goes into it (a new
    message of its thread starts a new session); its files stay, and 'ncl messages list' and 'ncl tasks list --all'
    still read them. (A session made for one queue job is closed by the host once it has nothing left to do.)"""
    from host.channels import nudge

    with closing(app.central(write=True)) as conn:
        found = sessions.get(conn, app.settings, session_id)
        if found.status == "closed":
            raise NclError(f"session {found.id} is closed already")
        if not force and (live := _live_rows(found)):
            raise NclError(f"session {found.id} has {live} messages or tasks waiting, running or paused (ncl messages "
                           f"list --session {found.id}); --force closes it anyway, and they are never done")
        sessions.close(conn, [found.id], app.now())
    nudge.touch(app.settings)
    emit(as_json, {"id": found.id, "status": "closed"}, lambda: click.echo(f"closed session {found.id}"))


def _live_rows(session: sessions.Session) -> int:
    """What ``close`` would leave undone; an inbox it cannot read (damaged, missing) is a one-line error that says
    ``--force`` closes the session without reading it."""
    try:
        return views.live_rows(session.folder / "inbound.db")
    except (db.Error, db.DbError) as exc:
        raise NclError(f"{cut(str(exc))}; --force closes session {session.id} without reading it") from None


@session_cli.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Sessions closed, and last active, longer ago than this: 30d, 12h (or a time; naive = TZ).")
@click.option("--group", "group_ref", metavar="NAME", help="Only this group's (name or id, or a deleted group's id).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, remove nothing.")
@json_option
@pass_app
def prune(app: App, older_than: str, group_ref: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove closed sessions for good: their folders (inbox, outbox, files), rows and task ids. A session made for
    each queue job keeps ~150 KB once closed. Active sessions are never touched; 'ncl messages list' and 'ncl tasks
    list --all' no longer show what a removed session held. The age must be longer than NCL_MISFIRE_GRACE_S: within
    it a stopped host's scheduled run may still send its job again into the session it was made for. A folder that
    cannot be removed whole is named, the others removed all the same, and the command exits 1."""
    from host.cli.logs import since

    now = app.now()
    before = since(older_than, now, app, "--older-than")
    if (now - before).total_seconds() <= app.settings.misfire_grace_s:
        grace = app.settings.misfire_grace_s
        raise NclError(f"--older-than must reach further back than NCL_MISFIRE_GRACE_S ({grace:g} s)"
                       + (": that time is in the future" if before > now else ""))
    if group_ref is not None and not group_ref.strip():
        raise NclError("--group names no group: give a group's name or id, or leave --group out for every group")
    with closing(app.central(write=True)) as conn:
        group_id = _group_id(conn, app, group_ref) if group_ref else None
        left, failed = sessions.left_over(conn, app.settings, group_id, dry_run)  # (before: each tried once a run)
        removed = []
        for found in sessions.closed_before(conn, app.settings, before, group_id):
            try:
                if dry_run or sessions.remove(conn, found, before):
                    removed.append(found)
            except OSError as exc:  # (its rows are gone: the folder left is tried again by the next prune)
                removed.append(found)
                failed.append(str(exc))
    done = "would remove" if dry_run else "removed"
    zone = app.settings.tz.zone
    emit(as_json, {"dry_run": dry_run, "sessions": [s.to_json() for s in removed], "left_over": [str(p) for p in left],
                   "not_removed": failed},
         lambda: click.echo("\n".join([f"{done} session {s.id} ({s.agent_group_id}, last active "
                                       f"{local_time(s.last_active_at, zone)})" for s in removed]
                                      + [f"{done} {p}, left by a removal that was cut short" for p in left])
                            or "no closed session is that old"))
    if failed:
        raise NclError("; ".join(failed) + " (tried again by the next prune)")
