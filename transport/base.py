"""What the node needs from a transport: frames to and from named peers, and peer events.

A transport delivers :class:`PeerUp`, :class:`Received` and :class:`PeerDown` events in order
per peer on one receive channel, and takes frames with :meth:`Transport.send_nowait` (bounded
per peer: a peer that cannot keep up is disconnected, not buffered for without end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from crdtdb.engine.frozen import fast_init


@dataclass(frozen=True, slots=True)
class PeerUp:
    peer: str


@dataclass(frozen=True, slots=True)
class PeerDown:
    peer: str
    reason: str


@fast_init  # (one per frame a node receives)
@dataclass(frozen=True, slots=True)
class Received:
    peer: str
    frame: bytes


TransportEvent = PeerUp | PeerDown | Received


class Transport(Protocol):
    events: trio.MemoryReceiveChannel[TransportEvent]

    def send_nowait(self, peer: str, frame: bytes) -> None:
        """Queue a frame; an unknown or closed peer is ignored (its PeerDown is coming)."""
        ...

    def disconnect(self, peer: str, reason: str) -> None: ...
