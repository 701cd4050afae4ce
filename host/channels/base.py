"""What the host asks of a channel, and the registry that routes each reply to the channel of its
``channel_type`` (DESIGN §9: replies go back to the channel they came from)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from host.store.outbox import OutMessage
from host.store.sessions import Session

# A row without routing (e.g. a task an operator added) goes to whoever chats with its session, as it always has.
UNROUTED = "cli"


class Channel(Protocol):
    """A way messages come in and replies go out. ``serves`` names the channel kinds whose replies it delivers:
    ``cli`` serves ``cli``, ``webhook`` every ``webhook:NAME``."""

    @property
    def serves(self) -> tuple[str, ...]: ...

    async def start(self) -> object:
        """Begin serving (what it returns, such as a port, is the channel's own business)."""
        ...

    async def stop(self) -> None: ...

    async def deliver(self, session: Session, reply: OutMessage, reply_to_seq: int | None) -> bool | None:
        """True: handed over; None: nobody listens there (kept in the transcript); False or a raise: failed."""
        ...


class Channels:
    """The channels a host serves, each reply routed by the kind of its ``channel_type`` (before any ``:``)."""

    def __init__(self, channels: Iterable[Channel], replying: set[Path] | None = None) -> None:
        self.all = list(channels)
        # The folders of the sessions whose replies ``Deliveries`` holds, not yet sent and recorded (it keeps the
        # set; a channel may read it, on the host's loop: Matrix types on while the answer is on its way).
        self.replying = set() if replying is None else replying
        self._by_kind = {kind: channel for channel in self.all for kind in channel.serves}

    def __iter__(self) -> Iterator[Channel]:
        return iter(self.all)

    def route(self, channel_type: str | None) -> Channel | None:
        """The channel for a reply; None when no channel serves its kind (a queue's: kept in the transcript)."""
        return self._by_kind.get((channel_type or UNROUTED).partition(":")[0])
