"""A deterministic, synchronous network for the sans-I/O gossip core (property tests and the
gossip benchmark).

Nodes are (Replica, Gossip) pairs on simulated connections: a full mesh, or each node dialling
``degree`` random others. Every frame is
delivered after a random latency, or lost, or duplicated; a partition silently drops frames
between two groups (so pings time out, peers are dropped, and reconnects fail until the heal).
Time is virtual; one seeded RNG decides everything. (Link bandwidth limits are modelled only
by transport/memory.py.)
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from crdtdb.gossip import Disconnect, Gossip, GossipConfig, Send
from crdtdb.replica import Replica
from transport.memory import LinkFaults

RECONNECT_S = 0.5


class SimNet:
    def __init__(self, replicas: dict[str, Replica], *, seed: int,
                 config: GossipConfig | None = None, degree: int | None = None):
        self.rng = random.Random(seed)
        self.now = 0.0
        self.faults = LinkFaults(latency_s=(0.001, 0.02))
        self.replicas = replicas
        self.gossip = {nid: Gossip(nid, {r.name: r}, rng=random.Random(seed * 7919 + i),
                                   config=config)
                       for i, (nid, r) in enumerate(sorted(replicas.items()))}
        self._queue: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.links: set[frozenset[str]] = set()
        self._last: dict[tuple[str, str], float] = {}
        self.frames = 0
        self.bytes = 0
        for nid, r in replicas.items():
            r.add_listener(self._on_commit(nid))
        ids = sorted(replicas)
        if degree is None or degree >= len(ids) - 1:
            pairs = set(itertools.combinations(ids, 2))
        else:
            pairs = set()
            for a in ids:
                for b in self.rng.sample([x for x in ids if x != a], degree):
                    pairs.add((min(a, b), max(a, b)))
        for a, b in sorted(pairs):
            self._schedule(0.0, "connect", (a, b))
        for nid in replicas:
            self._schedule(self.rng.uniform(0, 0.1), "tick", (nid,))

    def _on_commit(self, nid: str) -> Callable[[Any], None]:
        def on_commit(ev: Any) -> None:
            if ev.update is not None:
                self._perform(nid, self.gossip[nid].local_update(self.replicas[nid].name,
                                                                 ev.update, ev.span))
        return on_commit

    def _schedule(self, at: float, kind: str, args: tuple[Any, ...]) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), kind, args))

    def _perform(self, src: str, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self._transmit(src, out.peer, out.frame)
            elif isinstance(out, Disconnect):
                self._cut(src, out.peer)

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        if frozenset((src, dst)) not in self.links:
            return
        self.frames += 1
        self.bytes += len(frame)
        f = self.faults
        if f.blocked(src, dst) or self.rng.random() < f.loss:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            at = self.now + self.rng.uniform(*f.latency_s)
            if not f.reorder:  # a stream: never overtake the link's previous frame
                at = max(at, self._last.get((src, dst), 0.0))
                self._last[src, dst] = at
            self._schedule(at, "deliver", (src, dst, frame))

    def _cut(self, a: str, b: str) -> None:
        link = frozenset((a, b))
        if link not in self.links:
            return
        self.links.discard(link)
        self.gossip[a].disconnected(b)
        self.gossip[b].disconnected(a)
        self._schedule(self.now + RECONNECT_S, "connect", (a, b))

    def step(self) -> bool:
        if not self._queue:
            return False
        at, _, kind, args = heapq.heappop(self._queue)
        self.now = max(self.now, at)
        if kind == "deliver":
            src, dst, frame = args
            if frozenset((src, dst)) in self.links:
                self._perform(dst, self.gossip[dst].receive(src, frame, self.now))
        elif kind == "tick":
            (nid,) = args
            self._perform(nid, self.gossip[nid].tick(self.now))
            self._schedule(self.now + 0.05, "tick", (nid,))
        elif kind == "connect":
            a, b = args
            link = frozenset((a, b))
            if link in self.links:
                pass
            elif self.faults.blocked(a, b) or self.faults.blocked(b, a):
                self._schedule(self.now + RECONNECT_S, "connect", (a, b))
            else:
                self.links.add(link)
                self._perform(a, self.gossip[a].connected(b, self.now))
                self._perform(b, self.gossip[b].connected(a, self.now))
        return True

    def compact(self, nid: str) -> None:
        """Start a compaction round coordinated by ``nid`` (see Gossip.start_compaction)."""
        g = self.gossip[nid]
        self._perform(nid, g.start_compaction(self.replicas[nid].name, self.now))

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            self.step()
        self.now = end

    def converged(self) -> bool:
        """Every replica holds the same merged rows (so, by determinism, shows the same)."""
        first, *rest = self.replicas.values()
        return all(r.view.raw == first.view.raw for r in rest)

    def run_until_converged(self, limit_s: float, check_every_s: float = 0.5) -> float:
        """Simulated seconds until every replica shows the same rows; raises if never."""
        start = self.now
        while self.now - start < limit_s:
            self.run_for(check_every_s)
            if self.converged():
                return self.now - start
        raise AssertionError(f"no convergence within {limit_s} simulated seconds")
