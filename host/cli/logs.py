"""``ncl logs``: the host's log (data/host.log and the files rotated from it), filtered by session, task or time,
and followed as the host writes it, across its rotations. Lines of either format (``NCL_LOG_FORMAT``) are read
back; people get text lines in TZ, ``--json`` one object a line."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import click

from host.cli.app import App, pass_app
from host.cli.output import json_option
from host.cli.terminal import say
from host.errors import NclError
from host.files import logs as log_files
from schemas import ids
from schemas.inotify import IN_MODIFY, Inotify
from schemas.times import TimeFormatError, parse_user_time, to_text

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
IN_MOVED_TO, IN_CREATE = 0x80, 0x100  # a rotation: host.log renamed away, a new one made
FOLLOWED_LINES = 10  # what --follow shows of the past unless told otherwise
SAFETY_S = 1.0  # --follow looks again at least this often, whatever inotify says (or where there is none)


def since(text: str, now: datetime, app: App, option: str = "--since") -> datetime:
    """``--since`` (or ``option``): a duration back from ``now`` (``90s``, ``10m``, ``2h``, ``1d``) or a time (naive =
    TZ)."""
    if ago := _AGO.fullmatch(text.strip()):
        try:
            return now - timedelta(seconds=float(ago[1]) * _UNIT_S[ago[2]])
        except OverflowError:  # back past year 1: every line
            return datetime.min.replace(tzinfo=UTC)
    try:
        return parse_user_time(text, app.settings.tz.zone)
    except TimeFormatError as exc:
        raise NclError(f"{option}: {exc}; or a duration such as 10m, 2h, 1d") from None


@dataclass(frozen=True)
class Wanted:
    session: str | None = None
    task: str | None = None  # a session task's series or occurrence id, or a scheduled task's id
    since: str | None = None  # stored UTC text: text order is time order

    def may_match(self, line: str) -> bool:
        """Whether ``line`` is worth parsing: it holds the ids asked for."""
        return (self.session is None or self.session in line) and (self.task is None or self.task in line)

    def __call__(self, record: dict[str, Any]) -> bool:
        return ((self.session is None or record.get("session") == self.session)
                and (self.task is None or self.task in (record.get("task"), record.get("occurrence")))
                and (self.since is None or str(record.get("time")) >= self.since))


class Tail:
    """host.log read from its start, then on as it grows; when the host rotates it, the rest of the old file is
    read before the new one. Only whole lines are handed out: one being written waits for its end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.torn = b""

    def lines(self) -> list[str]:
        if self.file is None:
            with contextlib.suppress(FileNotFoundError):
                self.file = self.path.open("rb")
            if self.file is None:
                return []
        found = self._read()
        try:
            now = self.path.stat()
        except FileNotFoundError:  # between a rotation's rename and the new file
            return found
        if now.st_ino != os.fstat(self.file.fileno()).st_ino or now.st_size < self.file.tell():
            self.close()
            self.torn = b""
            return found + self.lines()
        return found

    def _read(self) -> list[str]:
        assert self.file is not None
        *whole, self.torn = (self.torn + self.file.read()).split(b"\n")
        return [line.decode(errors="replace") for line in whole]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def records(lines: Iterable[str], wanted: Wanted) -> Iterator[dict[str, Any]]:
    for line in lines:
        if wanted.may_match(line) and (record := log_files.parse(line)) is not None and wanted(record):
            yield record


def rotated(data_dir: Path, wanted: Wanted) -> list[Path]:
    """The rotated files, oldest first; with --since, without those last written before then."""
    return [path for path in log_files.rotated(data_dir)
            if wanted.since is None or to_text(datetime.fromtimestamp(path.stat().st_mtime, UTC)) >= wanted.since]


def oldest_first(paths: list[Path], current: list[str]) -> Iterator[str]:
    for path in paths:
        with path.open("rb") as file:
            yield from (line.decode(errors="replace").rstrip("\n") for line in file)
    yield from current


def newest_first(paths: list[Path], current: list[str]) -> Iterator[str]:
    """As ``oldest_first`` backwards: ``-n`` stops as soon as it has its lines, in the newest file mostly."""
    yield from reversed(current)
    for path in reversed(paths):
        yield from reversed(path.read_bytes().decode(errors="replace").split("\n"))


def show(record: dict[str, Any], as_json: bool, app: App) -> None:
    # ASCII JSON with DEL escaped too holds nothing a terminal obeys, so ``say`` prints it exactly as it is.
    say(json.dumps(record).replace("\x7f", "\\u007f") if as_json else log_files.line_of(record, app.settings.tz.zone))


def wait_for_more(watch: Inotify | None) -> None:
    """Block until the data dir changes (a hint only) or SAFETY_S passes."""
    ready = select.select([watch.fd] if watch else [], [], [], SAFETY_S)[0]
    if ready and watch:
        watch.drain()


def _watch(data_dir: Path) -> Inotify | None:
    try:
        watch = Inotify()
    except (OSError, AttributeError):
        return None
    try:
        watch.watch(data_dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO)
    except OSError:  # no data dir yet: looked at every SAFETY_S
        watch.close()
        return None
    return watch


def _full(app: App, ref: str | None, table: str, prefix: str) -> str | None:
    """A short id, as tables show it (``sess-ab12cd``), as the full one log lines name; anything else as it is."""
    if ref is None or ids.short_pattern(ref, prefix) is None:
        return ref
    from host.store import short_ids  # imported here: reading the log needs no database otherwise

    with closing(app.central()) as central:
        return short_ids.expand(central, table, prefix, ref)


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Go on printing lines as the host writes them (Ctrl-C stops).")
@click.option("--session", "session_id", metavar="ID", help="Only lines about this session.")
@click.option("--task", "task_id", metavar="ID",
              help="Only lines about this task (its series or an occurrence id) or scheduled task (sched-…).")
@click.option("--since", "since_text", metavar="TIME",
              help="Only lines from then on: ISO 8601 (naive = TZ) or a duration back from now (30s, 10m, 2h, 1d).")
@click.option("-n", "--lines", "last", type=click.IntRange(min=0), metavar="N",
              help=f"Only the last N lines of the past (default: all; {FOLLOWED_LINES} with --follow).")
@json_option
@pass_app
def logs(app: App, follow: bool, session_id: str | None, task_id: str | None, since_text: str | None,
         last: int | None, as_json: bool) -> None:
    """The host's log, data/host.log (rotated at 10 MiB, 3 old files kept), oldest line first; times in TZ.
    --json prints one object a line: time (UTC), local, level, message, then the line's keys (action, session,
    task, …)."""
    data_dir = app.settings.data_dir
    start = since(since_text, app.now(), app) if since_text else None
    wanted = Wanted(_full(app, session_id, "sessions", "sess"), _full(app, task_id, "task_ids", "task"),
                    to_text(start) if start else None)
    if last is None and follow and start is None:
        last = FOLLOWED_LINES
    tail = Tail(data_dir / log_files.FILE)
    watch = _watch(data_dir) if follow else None  # before the first read: a line written meanwhile wakes it
    try:
        older, current = rotated(data_dir, wanted), tail.lines()
        past: Iterable[dict[str, Any]] = records(oldest_first(older, current), wanted) if last is None else \
            reversed(list(itertools.islice(records(newest_first(older, current), wanted), last)))
        for record in past:
            show(record, as_json, app)
        while follow:
            wait_for_more(watch)
            for record in records(tail.lines(), wanted):
                show(record, as_json, app)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends
    finally:
        tail.close()
        if watch:
            watch.close()
