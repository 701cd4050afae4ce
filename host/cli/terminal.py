"""What may reach an operator's terminal: stored and agent-written text with its control characters shown, not
obeyed.

A reply, a prompt or a thread key is written by an agent that may have read hostile text. Printed raw, ``ESC]52;c;…``
writes the operator's clipboard, ``ESC[2J`` clears the screen, ``ESC]0;…`` retitles the window, and a bidi override
(Trojan Source) reorders what the rest of the line appears to say. Human output therefore shows each of these
characters as the escape a Python string literal would use, never as itself:

- C0 controls except newline and tab, DEL and C1 controls (U+0080–U+009F): ``\\r``, ``\\x1b``, ``\\x07``, ``\\x7f``,
  ``\\x9b``;
- the bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), the line and paragraph separators
  (U+2028, U+2029) and lone surrogates (which no terminal encoding can write): ``\\u202e``, ``\\u2028``, ``\\ud800``;
- in a table cell, where a line break would break the layout, newline and tab too: ``\\n``, ``\\t``.

Backslashes are printed as they are, so a text that already holds the characters ``\\x1b`` looks the same as one
that holds ESC: human output is for reading; ``--json`` prints the exact text. Every human output goes through
here: ``output.emit`` runs a command's human printer with stdout passed through ``VisibleStream``; anything printed
outside a printer uses ``say``; the CLI's log lines use ``VisibleFormatter``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import click

_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _obeyed(code: int) -> bool:
    """C0 controls, DEL and C1 controls, the line and paragraph separators, bidi embeddings and overrides, bidi
    isolates, lone surrogates."""
    return (code < 0x20 or 0x7F <= code < 0xA0 or 0x2028 <= code <= 0x202E or 0x2066 <= code <= 0x2069
            or 0xD800 <= code < 0xE000)


class _Shown(dict[int, str]):
    """A ``str.translate`` table filled as characters are met, each with its escape or itself. Made whole (2,200
    entries: the surrogates) it took ~12M instructions, 3 ms of every command's start-up; a regular expression ~9M
    to compile."""

    def __init__(self, kept: str) -> None:
        super().__init__()
        self._kept = kept  # shown as they are

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if _obeyed(code) and char not in self._kept:
            shown = _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            shown = char
        self[code] = shown
        return shown


_IN_TEXT = _Shown("\n\t")
_IN_CELL = _Shown("")


def visible(text: str) -> str:
    """``text`` with every character a terminal would obey (newline and tab aside) shown as its escape."""
    return text.translate(_IN_TEXT)


def cell(text: str) -> str:
    """``visible`` for one table cell: newline and tab are shown as ``\\n`` and ``\\t`` too, so a row stays a row."""
    return text.translate(_IN_CELL)


def say(text: str = "", err: bool = False, nl: bool = True) -> None:
    """``click.echo`` for text printed outside a command's human printer (chat, errors, progress)."""
    click.echo(visible(text), err=err, nl=nl)


def paint(text: str, before: str = "", after: str = "") -> None:
    """``say`` for a line redrawn in place: ``before`` and ``after`` are our own cursor moves and prompt (the chat's
    status line), ``text`` is shown as ``say`` shows it; no newline of its own."""
    click.echo(before + visible(text) + after, nl=False)


def width() -> int | None:
    """The width a table fits: ``COLUMNS``, else the terminal's; None when stdout is no terminal (piped output is
    never cut nor folded, whatever ``COLUMNS`` says)."""
    if not sys.stdout.isatty():
        return None
    import shutil  # imported here: it loads the compression modules (~2 ms), which piped output never needs

    return shutil.get_terminal_size().columns


def no_color() -> bool:
    """``NO_COLOR`` set to anything but the empty text (https://no-color.org): no colour, nor bold."""
    return bool(os.environ.get("NO_COLOR"))


def underneath(stream: TextIO) -> TextIO:
    """The stream a ``VisibleStream`` writes to: for a printer whose texts were made visible already, and that adds
    escape codes of its own (a table's colours)."""
    return stream.target if isinstance(stream, VisibleStream) else stream


class VisibleStream:
    """A text stream that writes ``visible(text)`` to ``target``. It has no ``buffer``, so click writes text to it
    and never reaches around it to the bytes underneath."""

    def __init__(self, target: TextIO) -> None:
        self._target = target

    @property
    def target(self) -> TextIO:
        return self._target

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # click probes with b"" to tell a binary stream from a text one
            raise TypeError("a VisibleStream takes text only")
        self._target.write(visible(text))
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:
        return getattr(self._target, "errors", None)


class VisibleFormatter(logging.Formatter):
    """Log lines reach the operator's terminal too, and they quote agent text (a rejected request, a tool refusal)."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))
