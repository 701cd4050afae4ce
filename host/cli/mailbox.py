"""``ncl mailbox``: the mailboxes ``mail:ADDRESS`` channels read and answer (issue 17). The password is never
given or stored: only the name of the variable (environment or ``.env``) that holds it."""

from __future__ import annotations

from contextlib import closing

import click

from host.cli.app import App, pass_app
from host.cli.output import emit, fields, json_option, local_time, table
from host.store import mailboxes

COLUMNS = [("address", "ADDRESS"), ("imap", "IMAP"), ("smtp", "SMTP"), ("tls", "TLS"), ("allowed", "ALLOWED"),
           ("group", "GROUP")]


@click.group("mailbox")
def mailbox_cli() -> None:
    """Mailboxes for mail:ADDRESS channels: where the agent reads (IMAP) and answers (SMTP) its mail."""


@mailbox_cli.command("create")
@click.option("--address", required=True, help="The mailbox's address; the channel is mail:ADDRESS.")
@click.option("--imap", required=True, metavar="HOST:PORT", help="The IMAP server (993 with --tls ssl).")
@click.option("--smtp", required=True, metavar="HOST:PORT", help="The SMTP server (465 with ssl, 587 starttls).")
@click.option("--user", required=True, help="The login name of the account (often the address).")
@click.option("--password-env", required=True, metavar="VAR",
              help="The NAME of the variable (environment or .env) holding the password; never the password.")
@click.option("--tls", type=click.Choice(mailboxes.TLS_MODES), default="ssl", show_default=True,
              help="ssl: TLS from the start; starttls: upgraded; none: plain text (a local server only).")
@click.option("--allow", "allow", multiple=True, metavar="SENDER-PATTERN",
              help="A sender whose mail the agent takes and answers: alice@example.org or *@example.org; repeat. "
                   "None: every mail is refused.")
@json_option
@pass_app
def create(app: App, address: str, imap: str, smtp: str, user: str, password_env: str, tls: str,
           allow: tuple[str, ...], as_json: bool) -> None:
    """Store a mailbox; wire it with 'ncl groups create NAME --channel mail:ADDRESS'."""
    with closing(app.central(write=True)) as conn:
        made = mailboxes.create(conn, app.now(), address, imap, smtp, user, password_env, tls, list(allow))
    emit(as_json, made.to_json(), lambda: click.echo(
        f"created mailbox {made.address} ({len(made.allow)} allowed sender pattern(s)"
        f"{'; none: every mail is refused until --allow is given' if not made.allow else ''}); wire it with "
        f"'ncl groups create NAME --channel {made.channel}'"))


@mailbox_cli.command("list")
@json_option
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List mailboxes and the group each is wired to."""
    with closing(app.central()) as conn:
        found = mailboxes.list_all(conn)
        wired = {mailbox.address: group for mailbox, group in mailboxes.wired(conn)}
    listed = [{**m.to_json(), "group": wired.get(m.address)} for m in found]
    emit(as_json, {"mailboxes": listed}, lambda: table(
        [{**m, "imap": f"{m['imap_host']}:{m['imap_port']}", "smtp": f"{m['smtp_host']}:{m['smtp_port']}",
          "allowed": ", ".join(m["allow"]) or "nobody", "group": m["group"] or "-"} for m in listed],
        COLUMNS, "no mailboxes (create one with 'ncl mailbox create --address … --imap … --smtp … --user … "
                 "--password-env VAR --allow …')"))


@mailbox_cli.command("show")
@click.argument("address")
@json_option
@pass_app
def show(app: App, address: str, as_json: bool) -> None:
    """Show one mailbox (never its password: only the variable that holds it)."""
    with closing(app.central()) as conn:
        found = mailboxes.get(conn, address)
        group = {m.address: g for m, g in mailboxes.wired(conn)}.get(found.address)
    data = {**found.to_json(), "group": group}
    emit(as_json, data, lambda: fields(
        {**data, "imap": f"{found.imap_host}:{found.imap_port}", "smtp": f"{found.smtp_host}:{found.smtp_port}",
         "allow": ", ".join(found.allow) or "nobody (every mail is refused)", "group": group or "-",
         "created_at": local_time(found.created_at, app.settings.tz.zone)},
        [("address", "address"), ("imap", "imap"), ("smtp", "smtp"), ("tls", "tls"), ("username", "user"),
         ("password_env", "password from"), ("allow", "allowed senders"), ("group", "group"),
         ("created_at", "created")]))


@mailbox_cli.command("delete")
@click.argument("address")
@json_option
@pass_app
def delete(app: App, address: str, as_json: bool) -> None:
    """Delete a mailbox (refused while a group is wired to it). Its mail on the server is not touched."""
    with closing(app.central(write=True)) as conn:
        found = mailboxes.get(conn, address)
        mailboxes.delete(conn, found)
    emit(as_json, {"address": found.address, "deleted": True},
         lambda: click.echo(f"deleted mailbox {found.address}"))
