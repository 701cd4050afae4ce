"""Issue 11, point 1, for the files the host reads from a runner's session folder that ``host.runtimes.pool`` and
``host.runtimes.local`` own: ``.heartbeat`` (and ``.children``, in tests/test_detached.py) are opened below the
folder with no link followed in any component and read from the checked descriptor."""

from __future__ import annotations

from pathlib import Path

from host.runtimes.pool import read_heartbeat


def test_a_heartbeat_is_read_from_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / ".heartbeat").write_text("gen-1")
    found = read_heartbeat(tmp_path)
    assert found is not None and found[0] == "gen-1"


def test_a_heartbeat_planted_as_a_link_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("gen-1")
    folder = tmp_path / "session"
    folder.mkdir()
    (folder / ".heartbeat").symlink_to(outside)
    assert read_heartbeat(folder) is None


def test_a_session_folder_replaced_by_a_link_is_not_read(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / ".heartbeat").write_text("gen-1")
    (tmp_path / "session").symlink_to(real)
    assert read_heartbeat(tmp_path / "session") is None
