"""``ncl groups``: create, update, list, show and delete agent groups."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import click

from host.cli.app import App, pass_app, policy
from host.cli.output import emit, fields, json_option, local_time, table
from host.cli.terminal import say
from host.errors import NclError
from host.files import confined
from host.scheduling import tasks
from host.store import db, groups, sessions

MAX_RULES_BYTES = 256 << 10  # the rules go with every turn of the agent: ~64k tokens is already far too many
COLUMNS = [("id", "ID"), ("name", "NAME"), ("channels", "CHANNELS"), ("session_mode", "MODE"),
           ("active_sessions", "SESSIONS"), ("provider", "PROVIDER"), ("model", "MODEL"), ("created", "CREATED")]


ADMIN_HELP = ("An admin group: its agents' task tools may list, schedule and control the tasks of every group "
              "(the tools' 'group' argument); off by default.")


@click.group("groups")
def group_cli() -> None:
    """Agent groups: one agent each, with its rules, files and channels."""


def _rules(value: str) -> str:
    """The rules given, or read from @FILE; at most ``MAX_RULES_BYTES`` (every turn of the agent sends them)."""
    text = confined.read_input(Path(value[1:]), MAX_RULES_BYTES) if value.startswith("@") else value
    if len(text.encode()) > MAX_RULES_BYTES:
        raise NclError(f"the rules are larger than {MAX_RULES_BYTES} bytes")
    return text


@group_cli.command("create")
@click.argument("name")
@click.option("--channel", "channels", multiple=True, metavar="CHANNEL",
              help="cli, queue:NAME, webhook:NAME, toolkit:NAME, mail:ADDRESS (a mailbox made with 'ncl mailbox "
                   "create') or matrix:@bot:server; repeat for several.")
@click.option("--rules", default="", metavar="TEXT|@FILE", help="The agent's standing instructions.")
@click.option("--session-mode", type=click.Choice(groups.SESSION_MODES), default="shared", show_default=True,
              help="shared: one session per channel address; per-thread: one per thread key.")
@click.option("--provider", type=click.Choice(groups.PROVIDERS), help="Model provider (default NCL_PROVIDER).")
@click.option("--model", help="Model name (default NCL_MODEL).")
@click.option("--admin", is_flag=True, help=ADMIN_HELP)
@json_option
@pass_app
def create(app: App, name: str, channels: tuple[str, ...], rules: str, session_mode: str,
           provider: str | None, model: str | None, admin: bool, as_json: bool) -> None:
    """Create the agent group NAME. Webhook tokens are shown once, here."""
    with closing(app.central(write=True)) as conn:
        group, tokens = groups.create(conn, app.settings, app.now(), name, list(channels), _rules(rules),
                                      session_mode, provider, model, admin)
    data = {**group.to_json(), "active_sessions": 0}  # the list item, as every single object (DESIGN §10)
    if tokens:
        data["webhook_tokens"] = tokens

    def human() -> None:
        click.echo(f"created {'admin ' * group.admin}group {group.name} ({group.id}); files in "
                   f"{groups.folder(app.settings, group.id)}")
        for channel, token in tokens.items():
            click.echo(f"webhook:{channel} token (shown once): {token}")

    emit(as_json, data, human)


@group_cli.command("token")
@click.argument("group")
@click.option("--channel", required=True, metavar="webhook:NAME", help="The webhook channel.")
@click.option("--rotate", is_flag=True, help="Replace the existing token (the old one stops working).")
@json_option
@pass_app
def token(app: App, group: str, channel: str, rotate: bool, as_json: bool) -> None:
    """Make (or --rotate) the bearer token of a webhook channel; it is shown only now."""
    with closing(app.central(write=True)) as conn:
        made = groups.new_token(conn, groups.get(conn, group), channel, rotate)
    emit(as_json, {"channel": channel, "token": made}, lambda: click.echo(made))


@group_cli.command("update")
@click.argument("group")
@click.option("--rules", metavar="TEXT|@FILE", help="New standing instructions.")
@click.option("--provider", type=click.Choice(groups.PROVIDERS), help="Model provider.")
@click.option("--model", help="Model name.")
@click.option("--allow-server-tools/--no-allow-server-tools", default=None,
              help="Let the model API reach the network for this agent (web search/fetch, MCP connector, code "
                   "execution); refused by default.")
@click.option("--admin/--no-admin", default=None, help=ADMIN_HELP)
@click.option("--channel", "channels", multiple=True, metavar="CHANNEL",
              help="Wire one more channel (e.g. matrix:@bot:example.org); repeat for several.")
@click.option("--remove-channel", "removed", multiple=True, metavar="CHANNEL", help="Unwire a channel.")
@json_option
@pass_app
def update(app: App, group: str, rules: str | None, provider: str | None, model: str | None,
           allow_server_tools: bool | None, admin: bool | None, channels: tuple[str, ...], removed: tuple[str, ...],
           as_json: bool) -> None:
    """Change a group's rules, provider, model, server-tool permission, admin mark or channels; runners see the
    first three at their next start, the host checks the admin mark at each request and the wiring at each
    arrival."""
    fields = (rules, provider, model, allow_server_tools, admin)
    if fields == (None,) * 5 and not (channels or removed):
        raise click.UsageError("nothing to update: give --rules, --provider, --model, --channel, --remove-channel, "
                               "--allow-server-tools/--no-allow-server-tools or --admin/--no-admin")
    with closing(app.central(write=True)) as conn:
        found = groups.get(conn, group)
        if channels or removed:
            found = groups.rewire(conn, found, app.now(), list(channels), list(removed))
            _say_unwired_tasks(conn, removed)
        if fields != (None,) * 5:
            found = groups.update(conn, found, rules=None if rules is None else _rules(rules), provider=provider,
                                  model=model, allow_server_tools=allow_server_tools, admin=admin)
        count = sessions.active_counts(conn).get(found.id, 0)
    emit(as_json, {**found.to_json(), "active_sessions": count}, lambda: click.echo(
        f"updated group {found.name}: provider {found.provider or 'default'}, model {found.model or 'default'}, "
        f"server tools {'allowed' if found.allow_server_tools else 'refused'}, admin {'yes' if found.admin else 'no'}, "
        f"channels {', '.join(found.channels) or 'none'}"))


@group_cli.command("list")
@json_option
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List agent groups, each with its count of active sessions."""
    with closing(app.central()) as conn:
        found = groups.list_all(conn)
        counts = sessions.active_counts(conn)
    zone = app.settings.tz.zone
    listed = [{**g.to_json(), "active_sessions": counts.get(g.id, 0)} for g in found]
    # ADMIN only when a group is one, as most installs have none (the JSON always says).
    columns = [*COLUMNS[:4], ("admin", "ADMIN"), *COLUMNS[4:]] if any(g.admin for g in found) else COLUMNS
    emit(as_json, {"groups": listed}, lambda: table(
        [{**g, "provider": g["provider"] or "default", "model": g["model"] or "default",
          "created": local_time(g["created_at"], zone)} for g in listed],
        columns, "no groups (create one with 'ncl groups create NAME --channel cli')"))


@group_cli.command("show")
@click.argument("group")
@json_option
@pass_app
def show(app: App, group: str, as_json: bool) -> None:
    """Show one group (by name or id) with its rules and folder."""
    with closing(app.central()) as conn:
        found = groups.get(conn, group)
        count = sessions.active_counts(conn).get(found.id, 0)
    data = {**found.to_json(), "rules": found.rules, "folder": str(groups.folder(app.settings, found.id)),
            "active_sessions": count}
    emit(as_json, data, lambda: fields(
        {**data, "created_at": local_time(found.created_at, app.settings.tz.zone)},
        [("id", "id"), ("name", "name"), ("channels", "channels"), ("session_mode", "session mode"),
         ("provider", "provider"), ("model", "model"), ("created_at", "created"),
         ("allow_server_tools", "server tools"), ("admin", "admin"), ("active_sessions", "active sessions"),
         ("folder", "folder"),
         ("rules", "rules")]))


def _say_unwired_tasks(conn: db.Connection, channels: Iterable[str]) -> None:
    """Warn of the active project tasks whose queue, among ``channels``, no group is wired to now: each of their
    runs fails (said at once, not at the next slot)."""
    queues = {channel.removeprefix("queue:") for channel in channels if channel.startswith("queue:")}
    if not queues:
        return
    from host.project_tasks import specs as scheduled

    for task in scheduled.list_all(conn):
        target = task.spec.queue
        if task.active and target and target.name in queues and groups.wired_to(conn, f"queue:{target.name}") is None:
            say(f"ncl: warning: scheduled task {task.id} sends its jobs to queue {target.name}, which no group is "
                f"wired to now: each of its runs fails until one is (ncl groups update GROUP --channel "
                f"queue:{target.name}), or the task is changed or deleted", err=True)


def _pause_all(app: App, path: Path) -> int:
    if not path.exists():  # (a write would make it anew, empty: said instead)
        raise db.DbError(f"no such database: {path}")
    with closing(db.connect(path, "inbound")) as conn:
        return tasks.pause_all(conn, app.now(), policy(app), folder=path.parent)


@group_cli.command("delete")
@click.argument("group")
@click.option("--yes", is_flag=True,
              help="Really delete (without it: say what would be closed and paused, change nothing, exit 1).")
@json_option
@pass_app
def delete(app: App, group: str, yes: bool, as_json: bool) -> None:
    """Delete a group: its live task series are paused (never deleted), its sessions closed, its
    channels unwired. Files under the data dir are kept."""
    with closing(app.central(write=yes)) as conn:
        found = groups.get(conn, group)
        active = sessions.list_all(conn, app.settings, found.id, status="active")
        if not yes:
            raise NclError(f"deleting group {found.name} closes {len(active)} session(s) and pauses their "
                           "task series; run again with --yes to do it")
        # An inbox that cannot be read (damaged, missing) is named and left as it is: its session is closed all the
        # same, so nothing in it runs again, and the command exits 1 (``sessions.readable``).
        paused = sum(count for _, count in sessions.readable(active, lambda path: _pause_all(app, path)))
        groups.delete(conn, found, app.now())
        _say_unwired_tasks(conn, found.channels)
    data = {"id": found.id, "deleted": True, "sessions_closed": len(active), "task_series_paused": paused,
            "folder": str(groups.folder(app.settings, found.id))}
    emit(as_json, data, lambda: click.echo(
        f"deleted group {found.name}: {len(active)} session(s) closed, {paused} task series paused (shown by "
        f"'ncl tasks list --all'; they can be cancelled, not resumed); files kept in {data['folder']}"))
