"""Printing command results: ``--json`` objects for scripts, aligned tables in TZ for people.

Human output shows control characters as escapes (see ``terminal``); ``--json`` prints the exact text.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import click

from host.cli.terminal import VisibleStream, cell, visible
from schemas.times import TimeFormatError, from_text

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def local_time(text: str | None, zone: ZoneInfo) -> str:
    """Stored UTC text -> ``2026-06-11 09:00:00 EDT`` in the display zone."""
    if not text:
        return "-"
    try:
        return from_text(text).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    except TimeFormatError:
        return text


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], empty: str) -> None:
    """Print ``rows`` under ``columns`` = (key, header); ``empty`` when there is none."""
    if not rows:
        click.echo(empty)
        return
    cells = [[cell(_text(row.get(key))) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in [headers, *cells]:
        click.echo("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


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
