"""A file the CLI touches after it writes, so a sleeping host looks again at once instead of at its next sweep."""

from __future__ import annotations

from host.settings import Settings


def touch(settings: Settings) -> None:
    path = settings.data_dir / ".nudge"
    if settings.data_dir.is_dir():
        path.touch()


def stamp(settings: Settings) -> int:
    try:
        return (settings.data_dir / ".nudge").stat().st_mtime_ns
    except OSError:
        return 0
