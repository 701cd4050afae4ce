"""Issue 13, point 3: a local runner's output goes to ``runner.log`` in its session folder, which the runner can
write: the host opens it with no link followed, only as a regular file, and keeps it under ``LOG_CAP``. Point 4's
``.nudge`` leftover is here too (the other leftovers: tests/test_crash_leftovers.py, with a real SIGKILL)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from host.channels import nudge
from host.runtimes.local import LOG, LOG_CAP, open_log, trim
from host.settings import load


def test_a_log_past_the_cap_keeps_its_newest_half_and_goes_on_at_its_end(tmp_path: Path) -> None:
    (tmp_path / LOG).write_bytes(b"o" * LOG_CAP + b"newest\n")
    fd = open_log(tmp_path)
    try:
        assert os.fstat(fd).st_size == LOG_CAP // 2
        os.write(fd, b"next\n")
        os.write(fd, b"x" * LOG_CAP)  # a runner that writes on; the host's next check cuts it again
        trim(fd)
        assert os.fstat(fd).st_size == LOG_CAP // 2
    finally:
        os.close(fd)
    assert (tmp_path / LOG).read_bytes().endswith(b"x" * 100)


def test_a_log_under_the_cap_is_appended_to(tmp_path: Path) -> None:
    (tmp_path / LOG).write_bytes(b"before\n")
    fd = open_log(tmp_path)
    try:
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert (tmp_path / LOG).read_bytes() == b"before\nafter\n"


def test_a_link_planted_as_the_log_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep\n")
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / LOG).symlink_to(target)
    fd = open_log(folder)
    try:
        os.write(fd, b"runner output\n")
        assert os.path.samefile(f"/proc/self/fd/{fd}", os.devnull)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"keep\n"


def test_a_fifo_planted_as_the_log_neither_blocks_nor_is_written(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / LOG)
    fd = open_log(tmp_path)
    try:
        assert os.path.samefile(f"/proc/self/fd/{fd}", os.devnull)
    finally:
        os.close(fd)


def test_a_link_left_as_the_nudge_file_is_removed_when_a_host_listens_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 13, point 4: a leftover ``.nudge`` that is not a plain file is replaced, never followed."""
    settings = load(environ={"NCL_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path, system_tz="UTC")
    settings.data_dir.mkdir()
    target = tmp_path / "elsewhere"
    (settings.data_dir / ".nudge").symlink_to(target)

    async def listen_twice() -> None:
        for _ in range(2):
            with nudge.heard(settings, lambda _session: None):
                pass

    asyncio.run(listen_twice())
    assert not (settings.data_dir / ".nudge").is_symlink()
    nudge.touch(settings)
    assert (settings.data_dir / ".nudge").is_file() and not target.exists()
    assert [r.getMessage() for r in caplog.records if getattr(r, "action", "") == "stale_nudge_replaced"] == [
        f"removed {settings.data_dir / '.nudge'}, which was not a plain file"]
