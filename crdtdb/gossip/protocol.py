"""The gossip protocol as a sans-I/O state machine: frames and time in, frames out.

What it does, per replicated database:

* **push**: a local commit's sealed update goes to every ready peer when there are at most
  ``eager_push_max_peers`` of them (else to ``fanout`` random ones); a peer that finds it new
  forwards it to ``fanout`` random others (never back to the sender) until ``max_hops``; a
  duplicate stops there. Pushing local commits to every peer is what makes a hub (the
  central node of a star, as in an OVN cloud where ovn-northd's node talks to every chassis)
  reach all its leaves at once: a leaf has nobody else to forward to, so with random fanout
  most leaves would wait for their next anti-entropy round;
* **pull anti-entropy**: every ``anti_entropy_interval_s`` (jittered) a random peer gets
  this node's state vector and answers with a diff, then asks for one back (push-pull), or
  with nothing when both state vectors are equal (then so are the documents: see
  ``Replica.in_sync_with``). This alone guarantees convergence; pushes only
  make it fast. A pushed update that follows a gap triggers an immediate pull from its
  sender. After ``anti_entropy_idle_rounds`` rounds in a row with nothing new, the interval
  doubles up to
  ``anti_entropy_max_interval_s`` (an idle hub with N leaves would otherwise answer 4N pulls
  a second forever); anything new — a push, a pull's diff, a gap, a peer coming up — brings
  it back to ``anti_entropy_interval_s``, so while writes flow (lulls included) the pulls
  that catch what pushes missed run at full rate;
* **failure detection**: a peer not heard from (any frame counts) for ``ping_interval_s``
  is pinged; one silent for ``peer_timeout_s`` is disconnected (the transport reconnects
  with backoff). On an idle link only one side ends up pinging: the other hears its pings.

A peer that sends a frame that does not decode, an update that fails its checks, or traffic
before its hello, is disconnected (a :class:`Disconnect` output); the node carries on.
Nothing here does I/O, reads a clock or draws randomness on its own: the caller passes ``now``
and an RNG, and performs the :class:`Send`/:class:`Disconnect` outputs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crdtdb.gossip import messages as m
from crdtdb.replica import CorruptUpdateError, EpochMismatchError, Replica
from crdtdb.replica.envelope import decode_state_vector

log = logging.getLogger("crdtdb.gossip")


@dataclass(frozen=True, slots=True)
class GossipConfig:
    fanout: int = 2
    #: Local commits go to every peer up to this many peers (see the module docstring).
    eager_push_max_peers: int = 64
    max_hops: int = 16
    anti_entropy_interval_s: float = 0.25
    anti_entropy_max_interval_s: float = 2.0
    #: Pull rounds without anything new before the interval starts doubling (quiet for
    #: about this many base intervals: short lulls between writes keep the full rate).
    anti_entropy_idle_rounds: int = 12
    #: Longer than ``anti_entropy_max_interval_s``: on an idle link the pulls alone show
    #: that a peer is alive, so a hub is not pinging (and ponging) every leaf every second.
    ping_interval_s: float = 2.5
    #: A peer silent this long is dropped: three ping intervals, so one late pong is not a
    #: reconnect (ovsdb-server's inactivity probe drops a client after 5-10 s).
    peer_timeout_s: float = 7.5
    max_message_bytes: int = m.DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class Send:
    peer: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    peer: str
    reason: str


Output = Send | Disconnect


@dataclass(slots=True)
class PeerState:
    """One connection. ``node_id`` and ``databases`` are known once its hello arrived."""

    key: str
    connected_at: float
    last_heard: float
    node_id: str | None = None
    #: databases replicated with this peer (same schema and epoch on both sides)
    databases: frozenset[str] = frozenset()
    next_ping: float = 0.0
    ping_seq: int = 0
    #: db -> writer -> a clock the peer is known to have reached (from its state vectors,
    #: the pushes it sent, and the pushes sent to it that it could apply). A lower bound:
    #: forwarding uses it to skip peers that have an update, and to prefer peers that can
    #: apply it at once over ones that would hold it back behind a gap and pull; statistics
    #: report the replication lag from it.
    known: dict[str, dict[int, int]] = field(default_factory=dict)
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(slots=True)
class GossipStatistics:
    pushes_sent: int = 0
    pushes_received: int = 0
    pushes_new: int = 0
    pushes_duplicate: int = 0
    forwards: int = 0
    pulls: int = 0
    #: pulls from peers answered with nothing: their state vector equalled ours
    pulls_in_sync: int = 0
    diffs_received: int = 0
    gaps: int = 0
    disconnects: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)


class Gossip:
    def __init__(self, node_id: str, replicas: Mapping[str, Replica], *,
                 rng: random.Random, config: GossipConfig | None = None):
        self.node_id = node_id
        self.replicas = dict(replicas)
        self.rng = rng
        self.config = config or GossipConfig()
        self.peers: dict[str, PeerState] = {}
        self._next_anti_entropy: float | None = None
        self._ae_interval_s = self.config.anti_entropy_interval_s
        self._quiet_rounds = 0
        self._stats = GossipStatistics()

    # --- connections ------------------------------------------------------------------------

    def hello(self) -> m.Hello:
        return m.Hello(self.node_id, {name: (r.schema_digest, r.epoch)
                                      for name, r in self.replicas.items()})

    def connected(self, peer: str, now: float) -> list[Output]:
        """A new connection (either direction): introduce ourselves."""
        self.peers[peer] = PeerState(peer, now, now, next_ping=now + self.config.ping_interval_s)
        return self._send(peer, self.hello())

    def disconnected(self, peer: str) -> None:
        self.peers.pop(peer, None)

    def ready_peers(self, db: str | None = None) -> list[str]:
        """Connections past hello (replicating ``db``), one per node, in a stable order."""
        by_node: dict[str, str] = {}
        for key, p in self.peers.items():
            if p.node_id is None or (db is not None and db not in p.databases):
                continue
            by_node.setdefault(p.node_id, key)
        return sorted(by_node.values())

    # --- input --------------------------------------------------------------------------------

    def receive(self, peer: str, frame: bytes, now: float) -> list[Output]:
        p = self.peers.get(peer)
        if p is None:
            return []
        p.last_heard = now
        p.frames_in += 1
        p.bytes_in += len(frame)
        self._stats.bytes_received += len(frame)
        try:
            msg = m.decode(frame, max_message_bytes=self.config.max_message_bytes)
            return self._handle(p, msg)
        except (m.GossipProtocolError, CorruptUpdateError) as exc:
            return self._drop(peer, f"protocol error: {exc}")

    def _handle(self, p: PeerState, msg: m.Message) -> list[Output]:
        if isinstance(msg, m.Hello):
            return self._on_hello(p, msg)
        if p.node_id is None:
            raise m.GossipProtocolError(f"{type(msg).__name__.lower()} before hello")
        if isinstance(msg, m.Ping):
            return self._send(p.key, m.Ack(msg.seq))
        if isinstance(msg, m.Ack):
            return []
        replica = self.replicas.get(msg.db)
        if replica is None or msg.db not in p.databases:
            raise m.GossipProtocolError(f"database {msg.db!r} is not replicated with this peer")
        if isinstance(msg, m.Push):
            return self._on_push(p, replica, msg)
        if isinstance(msg, m.StateVector):
            theirs = decode_state_vector(msg.state_vector)  # once: ~1 us per writer
            known = p.known.setdefault(msg.db, {})
            for client, clock in theirs.items():
                if clock > known.get(client, 0):
                    known[client] = clock
            if replica.in_sync_with(theirs):
                # Same clocks on both sides: no diff (it would repeat the whole delete set),
                # and nothing to ask back.
                self._stats.pulls_in_sync += 1
                return []
            out = self._send(p.key, m.Diff(msg.db, replica.diff(msg.state_vector)))
            if msg.reply:
                out += self._send(p.key, m.StateVector(msg.db, replica.state_vector(), False))
            return out
        assert isinstance(msg, m.Diff)
        self._stats.diffs_received += 1
        return self._apply(p, replica, msg.update)

    def _on_hello(self, p: PeerState, msg: m.Hello) -> list[Output]:
        if p.node_id is not None:
            raise m.GossipProtocolError("second hello")
        if msg.version != m.PROTOCOL_VERSION:
            raise m.GossipProtocolError(f"protocol version {msg.version}, "
                                        f"expected {m.PROTOCOL_VERSION}")
        if msg.node_id == self.node_id:
            return self._drop(p.key, "connected to itself")
        shared = []
        for name, replica in self.replicas.items():
            theirs = msg.databases.get(name)
            if theirs is None:
                continue
            if theirs != (replica.schema_digest, replica.epoch):
                log.warning("%s: %s has %s with another schema or epoch (%s); not replicated",
                            self.node_id, msg.node_id, name, theirs)
                continue
            shared.append(name)
        p.node_id = msg.node_id
        p.databases = frozenset(shared)
        log.info("%s: peer %s (%s) up, replicating %s", self.node_id, msg.node_id, p.key,
                 ", ".join(sorted(shared)) or "nothing")
        self._lively()
        out: list[Output] = []
        for db in sorted(shared):  # catch up at once
            out += self._send(p.key, m.StateVector(db, self.replicas[db].state_vector(), True))
        return out

    def _on_push(self, p: PeerState, replica: Replica, msg: m.Push) -> list[Output]:
        self._stats.pushes_received += 1
        try:
            result = replica.apply_update(msg.update)
        except EpochMismatchError:
            return []
        if result.span is not None:
            _reached(p, msg.db, result.span)
        out: list[Output] = []
        if result.gap:
            self._lively()
            self._stats.gaps += 1
            self._stats.pulls += 1
            out += self._send(p.key, m.StateVector(msg.db, replica.state_vector(), False))
        if not result.new:
            self._stats.pushes_duplicate += 1
            return out
        self._stats.pushes_new += 1
        self._lively()  # things are happening: pull at the base rate to catch what we missed
        if msg.hops + 1 < self.config.max_hops:
            for peer in self._forward_targets(msg.db, p.key, result.span):
                self._stats.forwards += 1
                out += self._push(peer, m.Push(msg.db, msg.update, msg.hops + 1), result.span)
        return out

    def _forward_targets(self, db: str, sender: str,
                         span: tuple[int, int, int] | None) -> list[str]:
        """``fanout`` peers to forward an update to: none that is known to have it, and
        first those known to have everything before it (they apply it at once; a peer that
        lacks an earlier update of that writer holds it back and pulls)."""
        if span is None:
            return self._choose(db, exclude=sender)
        client, first, count = span
        ready: list[str] = []
        lagging: list[str] = []
        for key in self.ready_peers(db):
            if key == sender:
                continue
            clock = self.peers[key].known.get(db, {}).get(client, 0)
            if clock >= first + count:
                continue
            (ready if clock >= first else lagging).append(key)
        fanout = self.config.fanout
        if len(ready) >= fanout:
            return self.rng.sample(ready, fanout)
        if len(ready) + len(lagging) <= fanout:
            return ready + lagging
        return ready + self.rng.sample(lagging, fanout - len(ready))

    def _push(self, peer: str, msg: m.Push, span: tuple[int, int, int] | None) -> list[Output]:
        if span is not None:
            p = self.peers[peer]
            if p.known.get(msg.db, {}).get(span[0], 0) >= span[1]:
                _reached(p, msg.db, span)  # it can apply it: it will have it
        return self._send(peer, msg)

    def _apply(self, p: PeerState, replica: Replica, update: bytes) -> list[Output]:
        try:
            result = replica.apply_update(update)
        except EpochMismatchError as exc:
            log.warning("%s: diff from %s not merged: %s", self.node_id, p.node_id, exc)
            return []
        if result.new or result.gap:
            self._lively()
        return []

    def _lively(self) -> None:
        """Something was missing here: pull at the base rate again (and soon)."""
        base = self.config.anti_entropy_interval_s
        self._quiet_rounds = 0
        if self._ae_interval_s > base:
            self._ae_interval_s = base
            self._next_anti_entropy = None  # rescheduled from now at the next tick

    # --- local commits and time -----------------------------------------------------------

    def local_update(self, db: str, update: bytes,
                     span: tuple[int, int, int] | None = None) -> list[Output]:
        """Push a local commit's sealed update; ``span``: its writer's clocks (see
        :class:`~crdtdb.replica.ApplyResult`), which lets later forwards skip peers that
        have it."""
        out: list[Output] = []
        ready = self.ready_peers(db)
        peers = ready if len(ready) <= self.config.eager_push_max_peers else self._choose(db)
        for peer in peers:
            self._stats.pushes_sent += 1
            out += self._push(peer, m.Push(db, update, 0), span)
        return out

    def tick(self, now: float) -> list[Output]:
        out: list[Output] = []
        cfg = self.config
        for key, p in list(self.peers.items()):
            if now - p.last_heard > cfg.peer_timeout_s:
                out += self._drop(key, f"no response for {now - p.last_heard:.1f} s")
                continue
            if now >= p.next_ping and p.node_id is not None:
                if now - p.last_heard < cfg.ping_interval_s:
                    # Heard from it lately (its own ping, an ack, any message): it is alive,
                    # no need to ask. So on an idle link only one side pings, and a node's
                    # idle traffic is one small frame per peer and interval.
                    p.next_ping = p.last_heard + cfg.ping_interval_s
                else:
                    p.ping_seq += 1
                    p.next_ping = now + cfg.ping_interval_s
                    out += self._send(key, m.Ping(p.ping_seq))
        if self._next_anti_entropy is None:
            self._next_anti_entropy = now + self._jittered(self._ae_interval_s)
        if now >= self._next_anti_entropy:
            self._next_anti_entropy = now + self._jittered(self._ae_interval_s)
            # Back off once quiet for a while, until something new turns up (see _lively).
            self._quiet_rounds += 1
            if self._quiet_rounds > cfg.anti_entropy_idle_rounds:
                self._ae_interval_s = min(2 * self._ae_interval_s,
                                          cfg.anti_entropy_max_interval_s)
            ready = self.ready_peers()
            if ready:
                peer = self.rng.choice(ready)
                for db in sorted(self.peers[peer].databases):
                    self._stats.pulls += 1
                    out += self._send(peer, m.StateVector(db, self.replicas[db].state_vector(),
                                                          True))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (``None``: after the first tick)."""
        times = [p.next_ping for p in self.peers.values() if p.node_id is not None]
        times += [p.last_heard + self.config.peer_timeout_s for p in self.peers.values()]
        if self._next_anti_entropy is not None:
            times.append(self._next_anti_entropy)
        return min(times) if times else self._next_anti_entropy

    # --- helpers ----------------------------------------------------------------------------

    def _jittered(self, seconds: float) -> float:
        return seconds * self.rng.uniform(0.5, 1.5)

    def _choose(self, db: str, exclude: str | None = None) -> list[str]:
        candidates = [k for k in self.ready_peers(db) if k != exclude]
        if len(candidates) <= self.config.fanout:
            return candidates
        return self.rng.sample(candidates, self.config.fanout)

    def _send(self, peer: str, msg: m.Message) -> list[Output]:
        frame = m.encode(msg)
        p = self.peers.get(peer)
        if p is not None:
            p.frames_out += 1
            p.bytes_out += len(frame)
        self._stats.bytes_sent += len(frame)
        return [Send(peer, frame)]

    def _drop(self, peer: str, reason: str) -> list[Output]:
        p = self.peers.pop(peer, None)
        self._stats.disconnects += 1
        log.warning("%s: dropping peer %s (%s): %s", self.node_id, peer,
                    p.node_id if p else "?", reason)
        return [Disconnect(peer, reason)]

    def statistics(self) -> GossipStatistics:
        s = GossipStatistics(**{k: getattr(self._stats, k)
                                for k in GossipStatistics.__slots__ if k != "peers"})
        s.peers = {key: {"node_id": p.node_id, "databases": sorted(p.databases),
                         "lag": {db: dict(zip(("they_lack", "we_lack"),
                                              _lag(self.replicas[db].state_vector(), known),
                                              strict=True))
                                 for db, known in p.known.items()},
                         "frames_in": p.frames_in, "frames_out": p.frames_out,
                         "bytes_in": p.bytes_in, "bytes_out": p.bytes_out}
                   for key, p in self.peers.items()}
        return s


def _reached(p: PeerState, db: str, span: tuple[int, int, int]) -> None:
    client, first, count = span
    known = p.known.setdefault(db, {})
    if first + count > known.get(client, 0):
        known[client] = first + count


def _lag(mine: bytes, b: Mapping[int, int]) -> tuple[int, int]:
    """(items the peer lacks that we have, items we lack that it has), from what is known
    of the peer's clocks."""
    a = decode_state_vector(mine)
    they_lack = sum(max(0, k - b.get(c, 0)) for c, k in a.items())
    we_lack = sum(max(0, k - a.get(c, 0)) for c, k in b.items())
    return they_lack, we_lack
