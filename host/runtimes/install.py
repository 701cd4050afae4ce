"""Which install a container belongs to: every container ncl starts is named and labelled with this id."""

from __future__ import annotations

import hashlib

from host.settings import Settings


def install_id(settings: Settings) -> str:
    """A stable id of this data directory: derived, never stored, so every host and CLI process agrees."""
    return hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
