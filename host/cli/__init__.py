"""The ``ncl`` command: every command has ``--json``; errors are one line on stderr (exit 1, usage 2)."""

from __future__ import annotations

import logging
import os
import sys

import click
from pydantic import ValidationError

from host import settings as settings_module
from host.cli import checks
from host.cli.app import App, pass_app
from host.cli.chat import agent_cli, chat
from host.cli.groups import group_cli
from host.cli.hostcmd import host_cli
from host.cli.image import image_cli
from host.cli.output import emit, json_option, table
from host.cli.overview import zone_mismatch
from host.cli.queue import queue_cli
from host.cli.scheduled import scheduled_cli
from host.cli.sessions import session_cli
from host.cli.status import messages_cli, status
from host.cli.tasks import task_cli
from host.cli.terminal import VisibleFormatter, say
from host.errors import NclError
from host.store import db
from schemas.validation import one_line


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ncl-agent-host", prog_name="ncl")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """ncl: run AI agents for people from SQLite inboxes.

    Settings come from the environment, then .env in the current directory (or NCL_ENV_FILE);
    see .env.example. Times are shown in TZ.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(VisibleFormatter("ncl: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    settings = settings_module.load()
    logging.getLogger().setLevel(settings.log_level)
    ctx.obj = App(settings)
    if ctx.invoked_subcommand != "doctor" and (mismatch := zone_mismatch(settings)):  # doctor says it itself
        logging.getLogger("ncl").warning(mismatch, extra={"action": "zone_mismatch"})


@cli.command()
@json_option
@pass_app
def doctor(app: App, as_json: bool) -> None:
    """Check the install: TZ, data dir, Docker engine and image, API key, schema versions."""
    found = checks.run_all(app.settings)
    ok = all(c.ok for c in found)
    emit(as_json, {"ok": ok, "checks": [c.to_json() for c in found]}, lambda: table(
        [{**c.to_json(), "ok": c.level if c.level == "ok" else c.level.upper()} for c in found],
        [("ok", "STATUS"), ("name", "CHECK"), ("detail", "DETAIL")], ""))
    if not ok:
        raise SystemExit(1)


for command in (group_cli, session_cli, task_cli, host_cli, chat, agent_cli, queue_cli, image_cli,
                status, messages_cli, scheduled_cli):
    cli.add_command(command)


def _fail(message: str, code: int) -> None:
    say("ncl: " + message.replace("\n", " "), err=True)  # one line, whatever the message held
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns every error into one line on stderr and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="ncl", standalone_mode=False)
    except click.MissingParameter as exc:
        _fail(f"{exc.format_message()} (see '{exc.ctx.command_path if exc.ctx else 'ncl'} --help')", 2)
    except click.BadParameter as exc:  # an invalid value, not a malformed command line (DESIGN §12.11)
        _fail(exc.format_message(), 1)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        _fail(f"{exc.format_message()}{hint}", 2)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    except ValidationError as exc:  # a model at an edge refused a value: "field: message", not pydantic's report
        _fail(one_line(exc), 1)
    except (NclError, ValueError, OSError, db.Error) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 1)
    except Exception as exc:
        if os.environ.get("NCL_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set NCL_DEBUG=1 for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
