"""Printing command results: ``--json`` objects for scripts, aligned tables in TZ for people.

Human output shows control characters as escapes (see ``terminal``); ``--json`` prints the exact text.

A table on a terminal fits its width (``COLUMNS``, else the terminal's). One that fits on one line a row is
printed aligned; one too wide, or with a multi-line text, is drawn by ``rich``: its widest columns fold first, at
spaces where they can, a multi-line text keeps its lines within its column, and ids (``id`` and ``*_id`` columns)
stay whole on one line, to be copied (cut with ``…`` only if nothing else can give way). The header is bold and
failure and warning words coloured, unless ``NO_COLOR`` is set. Piped, a table is one full line per row whatever
``COLUMNS`` says (a line break shown as ``\\n``), with no escape codes: what ``grep`` and ``awk`` expect. rich is
imported only for a table to fold (it takes about 0.1 ms a cell), so neither a script nor a table that fits pays
for it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from host.cli import terminal
from host.cli.terminal import VisibleStream, cell, visible
from schemas.times import TimeFormatError, from_text

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def print_json(data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:  # an unpaired surrogate (a runner may write one) is written escaped: still JSON
        text = json.dumps(data, indent=2)
    click.echo(text)


def local_time(text: str | None, zone: ZoneInfo) -> str:
    """Stored UTC text -> ``2026-06-11 09:00:00 EDT`` in the display zone."""
    if not text:
        return "-"
    try:
        return from_text(text).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    except TimeFormatError:
        return text


def left(text: str | None, now: datetime) -> str:
    """The time until ``text`` as ``systemctl list-timers`` shows it (``4h 12min``); ``overdue`` once it has
    passed, ``-`` for no time."""
    if not text:
        return "-"
    try:
        seconds = math.ceil((from_text(text) - now).total_seconds())
    except TimeFormatError:
        return "-"
    return span(seconds) if seconds > 0 else "overdue"


def span(seconds: float | None) -> str:
    """A duration in its two largest units: ``2d 3h``, ``4h 12min``, ``12min 5s``, ``5s``; ``-`` for none."""
    if seconds is None:
        return "-"
    whole = max(0, math.ceil(seconds))
    units = [("d", 86400), ("h", 3600), ("min", 60), ("s", 1)]
    first = next((n for n, (_, size) in enumerate(units) if whole >= size), len(units) - 1)
    amount, rest = divmod(whole, units[first][1])
    shown = f"{amount}{units[first][0]}"
    if first + 1 < len(units) and (more := rest // units[first + 1][1]):
        shown += f" {more}{units[first + 1][0]}"
    return shown


# Cells shown in colour on a terminal: what failed, and what needs a look.
STYLES = {"failed": "red", "gate_error": "red", "FAIL": "red", "overdue": "red", "missed": "yellow", "WARN": "yellow",
          "paused": "yellow"}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], empty: str) -> None:
    """Print ``rows`` under ``columns`` = (key, header); ``empty`` when there is none."""
    if not rows:
        click.echo(empty)
        return
    headers = [header for _, header in columns]
    texts = [[_text(row.get(key)) for key, _ in columns] for row in rows]
    cells = [[cell(text) for text in line] for line in texts]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    width = terminal.width()
    if width is None:
        _aligned(headers, cells, widths, styled=False)
    elif sum(widths) + 2 * (len(widths) - 1) <= width and not any("\n" in text for line in texts for text in line):
        _aligned(headers, cells, widths, styled=not terminal.no_color())
    else:
        _fitted([key for key, _ in columns], headers, texts, width)


def _aligned(headers: list[str], cells: list[list[str]], widths: list[int], styled: bool) -> None:
    """One line a row, columns two spaces apart: piped, or on a terminal wide enough (rich renders about 0.1 ms a
    cell, so a table that fits is printed without it). ``styled``: the header bold and ``STYLES`` words coloured,
    written under ``VisibleStream`` (the cells were made visible already). One write for the table: click.echo
    costs about 0.1 ms a call."""
    text = "\n".join("  ".join(_padded(value, width, _style(value, number == 0) if styled else None)
                               for value, width in zip(line, widths, strict=True)).rstrip()
                     for number, line in enumerate([headers, *cells]))
    if styled:
        click.echo(text, file=terminal.underneath(sys.stdout), color=True)
    else:
        click.echo(text)


def _style(value: str, header: bool) -> dict[str, Any] | None:
    return {"bold": True} if header else {"fg": STYLES[value]} if value in STYLES else None


def _padded(value: str, width: int, style: dict[str, Any] | None) -> str:
    """``value`` padded to ``width``, in ``style`` (``click.style``'s arguments) if any; the padding stays plain."""
    return value.ljust(width) if style is None else click.style(value, **style) + " " * (width - len(value))


def _fitted(keys: list[str], headers: list[str], texts: list[list[str]], width: int) -> None:
    """The table drawn by rich within ``width``, for one too wide or with a multi-line text. Every text is made
    visible first: rich writes to the stream under ``VisibleStream`` (its colour codes would be escaped there), and
    takes ``Text``, never markup."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    drawn = Table(box=None, pad_edge=False, padding=(0, 1), header_style="" if terminal.no_color() else "bold")
    for key, header in zip(keys, headers, strict=True):
        whole = key == "id" or key.endswith("_id")
        drawn.add_column(header, no_wrap=whole, overflow="ellipsis" if whole else "fold")
    for line in texts:
        drawn.add_row(*(Text(visible(text), style=STYLES.get(text, "")) for text in line))
    Console(file=terminal.underneath(sys.stdout), width=width, color_system=None if terminal.no_color() else "standard",
            force_terminal=True, highlight=False, markup=False, emoji=False, legacy_windows=False).print(drawn)


def fields(data: dict[str, Any], order: Sequence[tuple[str, str]]) -> None:
    """Print one object as ``label  value`` lines; the lines of a multi-line value line up under its first."""
    width = max(len(label) for _, label in order)
    indent = "\n" + " " * (width + 2)
    for key, label in order:
        click.echo(f"{label.ljust(width)}  {indent.join(visible(_text(data.get(key))).splitlines() or [''])}")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``human`` with everything it prints made visible (the one way a command's
    human output reaches the terminal, so a new command cannot forget it)."""
    if as_json:
        print_json(data)
        return
    with contextlib.redirect_stdout(VisibleStream(sys.stdout)):
        human()
