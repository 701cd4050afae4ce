"""Every channel the host serves: a new channel is a module of its own and one line here."""

from __future__ import annotations

from pathlib import Path

from host.channels.base import Channels
from host.channels.cli import CliChannel
from host.channels.mail import MailChannel
from host.channels.matrix import MatrixChannel
from host.channels.webhooks import Webhooks
from host.settings import Settings


def channels(settings: Settings) -> Channels:
    replying: set[Path] = set()
    return Channels([
        CliChannel(settings),
        Webhooks(settings),
        MailChannel(settings),
        MatrixChannel(settings, replying),
    ], replying)
