"""``ncl completion bash|zsh|fish``: the shell's completion script, click's own, so nobody needs to know that
click drives it through the ``_NCL_COMPLETE`` variable. The script calls ``ncl`` back with that variable set at
each TAB, which completes commands, options and choices without running any command."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from host.cli.terminal import say

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_NCL_COMPLETE"  # what click.Command.main looks for, named after the program


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS), metavar="SHELL")
def completion(shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: eval "$(ncl completion bash)"   in ~/.bashrc
    zsh:  eval "$(ncl completion zsh)"    in ~/.zshrc (after compinit)
    fish: ncl completion fish > ~/.config/fish/completions/ncl.fish
    """
    from host.cli import cli  # imported here: this module is one of the commands host.cli maps

    completer = get_completion_class(shell)
    assert completer is not None  # click ships one for each of SHELLS
    say(completer(cli, {}, "ncl", COMPLETE_VAR).source(), nl=False)  # our own script: nothing in it to escape
