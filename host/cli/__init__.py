"""The ``ncl`` command: every command has ``--json``; errors are one line on stderr (exit 1, usage 2).

A command's module is imported only when that command runs (``--help`` lists it by a summary kept here), and the
settings only when a command runs: ``ncl --version`` and ``ncl --help`` load neither, ``ncl tasks list`` none of the
host loop, runtimes or model proxy (tests/test_cli_startup.py).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

import click

from host import __version__, errors
from host.errors import NclError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

STDERR_HANDLER = "ncl-stderr"

# name -> ("module:attribute" of its click command, in a module imported when the command is first needed; the first
# sentence of its help, which ``ncl --help`` and completion list without importing it: tests/test_cli_startup.py
# checks it against the command's own)
COMMANDS = {
    "agent": ("host.cli.chat:agent_cli", "The agent as a callable tool."),
    "alerts": ("host.cli.alerts:alerts_cli",
               "Alerts: a series paused, gate errors in a row, missed slots, a failed project task, a runner that "
               "cannot start, reported to NCL_ALERT_CHANNEL."),
    "chat": ("host.cli.chat:chat", "Chat with GROUP's agent: interactively, or send TEXT once and print the reply."),
    "completion": ("host.cli.completion:completion", "Print the completion script for SHELL."),
    "doctor": ("host.cli.doctor:doctor",
               "Check the install: TZ, .env's variables, data dir, Docker engine and image, API key, schema versions."),
    "groups": ("host.cli.groups:group_cli", "Agent groups: one agent each, with its rules, files and channels."),
    "host": ("host.cli.hostcmd:host_cli",
             "The host process: sweeps session inboxes, wakes runners, applies their requests."),
    "image": ("host.cli.image:image_cli", "The agent-runner image (NCL_IMAGE)."),
    "logs": ("host.cli.logs:logs",
             "The host's log, data/host.log (rotated at 10 MiB, 3 old files kept), oldest line first; times in TZ."),
    "mailbox": ("host.cli.mailbox:mailbox_cli",
                "Mailboxes for mail:ADDRESS channels: where the agent reads (IMAP) and answers (SMTP) its mail."),
    "messages": ("host.cli.status:messages_cli", "Session transcripts."),
    "queue": ("host.cli.queue:queue_cli", "Named queues of background jobs (channels queue:NAME)."),
    "scheduled-task": ("host.cli.scheduled:scheduled_cli",
                       "Project-level scheduled tasks: a cron schedule in TZ firing a queue job, a container or a "
                       "host command."),
    "sessions": ("host.cli.sessions:session_cli", "Sessions: one folder and inbox per conversation or job stream."),
    "status": ("host.cli.status:status",
               "Is the host up, which runners are alive (busy or idle), which sessions wait for one, the next 10 due "
               "items."),
    "tasks": ("host.cli.tasks:task_cli",
              "Scheduled task series: one line per series, addressed by series id or any occurrence id."),
}


class LazyGroup(click.Group):
    """A group whose commands (``COMMANDS``) are imported when looked up to be run; ``--help`` and completion list
    them by the summaries in ``COMMANDS`` (importing every command module took ~350 ms: the host loop, Docker,
    pydantic models)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, _, attribute = COMMANDS[cmd_name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:  # "did you mean" among every command, not only the ones imported
            raise click.NoSuchCommand(exc.command_name, possibilities=COMMANDS, ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        summaries().format_commands(ctx, formatter)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        named = [CompletionItem(name, help=command.get_short_help_str())
                 for name, command in summaries().commands.items() if name.startswith(incomplete)]
        return named + click.Command.shell_complete(self, ctx, incomplete)  # and the group's own options


def summaries() -> click.Group:
    """Every command as a stand-in holding its name and summary alone, shortened to fit as click does the real
    one's help."""
    return click.Group(commands=[click.Command(name, help=summary) for name, (_, summary) in sorted(COMMANDS.items())])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ncl")
def cli() -> None:
    """ncl: run AI agents for people from SQLite inboxes.

    Settings come from the environment, then .env in the current directory (or NCL_ENV_FILE);
    see .env.example. Times are shown in TZ.
    """
    import logging

    from host.cli.terminal import VisibleFormatter

    handler = logging.StreamHandler()
    handler.set_name(STDERR_HANDLER)  # ``ncl host`` gives it the log file's lines, or takes it away
    handler.setFormatter(VisibleFormatter("ncl: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])  # the settings' level once loaded (app.app_of)


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
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in exc.reason:  # bytes of another encoding in argv
        _fail(f"a value given is not UTF-8 text: {exc.object[:60]!r}", 1)
    if type(exc) is db.DatabaseError:  # a damaged file ("database disk image is malformed") SQLite does not name
        _fail(f"{str(exc).splitlines()[0]} ('ncl doctor' checks every file and names the damaged one)", 1)
    # (OverflowError: a time past the calendar's end, year 9999, asked for or worked out: "date value out of range")
    if isinstance(exc, NclError | ValueError | OSError | OverflowError | db.Error):
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 1)
    if os.environ.get("NCL_DEBUG"):
        raise exc
    _fail(f"internal error: {type(exc).__name__}: {exc} (set NCL_DEBUG=1 for the traceback)", 1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turns every error into one line on stderr and an exit code."""
    errors.left_out.clear()
    try:
        code = cli.main(args=argv, prog_name="ncl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # a group with no command: its help as it is, not one line
        from host.cli.terminal import say

        say(exc.format_message(), err=True)
        sys.exit(2)
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
    sys.exit(code if isinstance(code, int) and code else 1 if errors.left_out else 0)
