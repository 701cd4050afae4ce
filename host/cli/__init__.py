"""The ``ncl`` command: every command has ``--json``; errors are one line on stderr (exit 1, usage 2).

A command's module is imported only when that command runs (or ``--help`` lists it), and the settings only when a
command runs: ``ncl --version`` loads neither, ``ncl tasks list`` none of the host loop, runtimes or model proxy
(tests/test_cli_startup.py).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from host import __version__
from host.errors import NclError

STDERR_HANDLER = "ncl-stderr"

# name -> "module:attribute" of its click command, in a module imported when the command is first needed
COMMANDS = {
    "agent": "host.cli.chat:agent_cli",
    "alerts": "host.cli.alerts:alerts_cli",
    "chat": "host.cli.chat:chat",
    "completion": "host.cli.completion:completion",
    "doctor": "host.cli.doctor:doctor",
    "groups": "host.cli.groups:group_cli",
    "host": "host.cli.hostcmd:host_cli",
    "image": "host.cli.image:image_cli",
    "logs": "host.cli.logs:logs",
    "mailbox": "host.cli.mailbox:mailbox_cli",
    "messages": "host.cli.status:messages_cli",
    "queue": "host.cli.queue:queue_cli",
    "scheduled-task": "host.cli.scheduled:scheduled_cli",
    "sessions": "host.cli.sessions:session_cli",
    "status": "host.cli.status:status",
    "tasks": "host.cli.tasks:task_cli",
}


class LazyGroup(click.Group):
    """A group whose commands (``COMMANDS``) are imported when looked up: to be run, or listed by ``--help``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attribute = COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:  # "did you mean" among every command, not only the ones imported
            raise click.NoSuchCommand(exc.command_name, possibilities=COMMANDS, ctx=ctx) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ncl")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """ncl: run AI agents for people from SQLite inboxes.

    Settings come from the environment, then .env in the current directory (or NCL_ENV_FILE);
    see .env.example. Times are shown in TZ.
    """
    import logging

    from host import settings as settings_module
    from host.cli.app import App, zone_mismatch
    from host.cli.terminal import VisibleFormatter

    handler = logging.StreamHandler()
    handler.set_name(STDERR_HANDLER)  # ``ncl host`` gives it the log file's lines, or takes it away
    handler.setFormatter(VisibleFormatter("ncl: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    settings = settings_module.load()
    logging.getLogger().setLevel(settings.log_level)
    ctx.obj = App(settings)
    if ctx.invoked_subcommand != "doctor" and (mismatch := zone_mismatch(settings)):  # doctor says it itself
        logging.getLogger("ncl").warning(mismatch, extra={"action": "zone_mismatch"})


def _fail(message: str, code: int) -> None:
    from host.cli.terminal import say

    say("ncl: " + message.replace("\n", " "), err=True)  # one line, whatever the message held
    sys.exit(code)


def _fail_on(exc: Exception) -> None:
    """Exit with one line for an error a command raised; re-raise an unexpected one under NCL_DEBUG."""
    # imported here: only a command that ran (and so loaded them already) can raise these
    from pydantic import ValidationError

    from host.store import db
    from schemas.validation import one_line

    if isinstance(exc, ValidationError):  # a model at an edge refused a value: "field: message", not pydantic's report
        _fail(one_line(exc), 1)
    if isinstance(exc, NclError | ValueError | OSError | db.Error):
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 1)
    if os.environ.get("NCL_DEBUG"):
        raise exc
    _fail(f"internal error: {type(exc).__name__}: {exc} (set NCL_DEBUG=1 for the traceback)", 1)


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
    except Exception as exc:
        _fail_on(exc)
    sys.exit(code if isinstance(code, int) else 0)
