"""The memory transport: a simulated network for nodes running in one trio process.

Links have latency with jitter, loss, duplication, optional reordering, a bandwidth limit, and
partitions (groups, one-way cuts) that can change at any time (flapping is a caller changing
them on a schedule). Everything random comes from one seeded RNG and every delay from
``trio.sleep_until``, so under ``trio.testing.MockClock`` a run is fast and, with trio's
deterministic scheduling pinned (see sims/), reproducible.

A connection is made with :meth:`MemoryNetwork.connect`; a partition does not close
connections (frames are silently dropped, as on a real cut), so the gossip layer's failure
detector notices and drops the peer, and :meth:`MemoryNetwork.run` re-dials it until the
partition heals.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import trio

from transport.base import PeerDown, PeerUp, Received, TransportEvent

RECONNECT_S = 0.5


@dataclass
class LinkFaults:
    latency_s: tuple[float, float] = (0.001, 0.001)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False
    #: bytes per second on each directed link; None: unlimited
    bandwidth_bps: float | None = None
    groups: list[set[str]] | None = None
    one_way: set[tuple[str, str]] = field(default_factory=set)

    def blocked(self, a: str, b: str) -> bool:
        if (a, b) in self.one_way:
            return True
        if self.groups is None:
            return False
        ga = next((i for i, g in enumerate(self.groups) if a in g), None)
        gb = next((i for i, g in enumerate(self.groups) if b in g), None)
        return ga != gb


class MemoryTransport:
    """One node's end of the network (the :class:`~transport.base.Transport` interface).
    Peers are named by node name."""

    def __init__(self, network: MemoryNetwork, name: str, max_events: int):
        self.network = network
        self.name = name
        self._send_events, self.events = trio.open_memory_channel[TransportEvent](max_events)
        self.listen_addresses: list[tuple[str, int]] = []
        self.peers: set[str] = set()

    def send_nowait(self, peer: str, frame: bytes) -> None:
        if peer in self.peers:
            self.network._transmit(self.name, peer, frame)

    def disconnect(self, peer: str, reason: str) -> None:
        self.network.disconnect(self.name, peer, reason)

    def _event(self, ev: TransportEvent) -> None:
        try:
            self._send_events.send_nowait(ev)
        except trio.WouldBlock:  # the node is not keeping up: it loses that frame
            self.network.dropped_events += 1

    async def drain(self) -> None:
        return

    def statistics(self) -> dict[str, Any]:
        return {"connections": len(self.peers)}


class MemoryNetwork:
    def __init__(self, *, rng: random.Random, faults: LinkFaults | None = None,
                 max_events: int = 10_000):
        self.rng = rng
        self.faults = faults or LinkFaults()
        self.max_events = max_events
        self.nodes: dict[str, MemoryTransport] = {}
        self.wanted: set[frozenset[str]] = set()
        self._heap: list[tuple[float, int, str, TransportEvent]] = []
        self._seq = itertools.count()
        self._wakeup = trio.Event()
        self._link_free: dict[tuple[str, str], float] = {}
        self._fifo: dict[tuple[str, str], float] = {}
        #: nodes that are down (crashed): nothing connects to them
        self.down: set[str] = set()
        #: called with (time, src, dst, frame) for every delivered frame (traces)
        self.on_deliver: Any = None
        self.frames_sent = 0
        self.bytes_sent = 0
        self.frames_lost = 0
        self.dropped_events = 0

    def endpoint(self, name: str) -> MemoryTransport:
        t = self.nodes[name] = MemoryTransport(self, name, self.max_events)
        return t

    def connect(self, a: str, b: str) -> None:
        """Keep ``a`` and ``b`` connected (re-dialled after a drop, once not partitioned)."""
        self.wanted.add(frozenset((a, b)))
        self._try_connect(a, b)

    def _try_connect(self, a: str, b: str) -> None:
        if a in self.down or b in self.down:
            return
        ta, tb = self.nodes[a], self.nodes[b]
        if b in ta.peers or self.faults.blocked(a, b) or self.faults.blocked(b, a):
            return
        ta.peers.add(b)
        tb.peers.add(a)
        ta._event(PeerUp(b))
        tb._event(PeerUp(a))

    def crash(self, name: str) -> None:
        """The node is gone: its links drop (its peers see the connection close)."""
        self.down.add(name)
        for peer in sorted(self.nodes[name].peers):
            self.disconnect(name, peer, "crashed")

    def revive(self, name: str) -> MemoryTransport:
        """The node is back, with a fresh endpoint; its links are re-dialled."""
        self.down.discard(name)
        return self.endpoint(name)

    def disconnect(self, a: str, b: str, reason: str) -> None:
        ta, tb = self.nodes[a], self.nodes[b]
        if b not in ta.peers:
            return
        ta.peers.discard(b)
        tb.peers.discard(a)
        ta._event(PeerDown(b, reason))
        tb._event(PeerDown(a, "peer closed the connection"))

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        f = self.faults
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        if f.blocked(src, dst) or self.rng.random() < f.loss:
            self.frames_lost += 1
            return
        now = trio.current_time()
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            at = now + self.rng.uniform(*f.latency_s)
            if f.bandwidth_bps:
                start = max(now, self._link_free.get((src, dst), now))
                self._link_free[src, dst] = start + len(frame) / f.bandwidth_bps
                at = max(at, self._link_free[src, dst])
            if not f.reorder:  # a stream: never overtake the link's previous frame
                at = max(at, self._fifo.get((src, dst), 0.0))
                self._fifo[src, dst] = at
            heapq.heappush(self._heap, (at, next(self._seq), dst, Received(src, frame)))
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver frames when due and re-dial dropped links; run it in a nursery."""
        next_redial = trio.current_time() + RECONNECT_S
        while True:
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, dst, ev = heapq.heappop(self._heap)
                t = self.nodes[dst]
                if isinstance(ev, Received) and ev.peer in t.peers:
                    if self.on_deliver is not None:
                        self.on_deliver(now, ev.peer, dst, ev.frame)
                    t._event(ev)
            if now >= next_redial:
                next_redial = now + RECONNECT_S
                for link in self.wanted:
                    a, b = sorted(link)
                    self._try_connect(a, b)
            self._wakeup = trio.Event()
            at = min(self._heap[0][0] if self._heap else next_redial, next_redial)
            with trio.move_on_at(at):
                await self._wakeup.wait()
