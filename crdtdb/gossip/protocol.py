"""The gossip protocol as a sans-I/O state machine: frames and time in, frames out.

What it does, per replicated database:

* **push**: a local commit's sealed update goes to every ready peer when there are at most
  ``eager_push_max_peers`` of them (else to ``fanout`` random ones, one at least); a peer
  that finds it new forwards it to ``fanout`` random others (never back to the sender)
  until ``max_hops``; a duplicate stops there. Pushing local commits to every peer is what
  makes a hub (the central node of a star, as in an OVN cloud where ovn-northd's node talks
  to every chassis) reach all its leaves at once: a leaf has nobody else to forward to, so
  with random fanout most leaves would wait for their next anti-entropy round. A hub does
  better with ``fanout`` 0 (no forwarding): its leaves pull it anyway (docs/gossip.md);
* **pull anti-entropy**: every ``anti_entropy_interval_s`` (jittered) a random peer gets
  this node's state vector and answers with a diff, then asks for one back (push-pull), or
  with nothing when both state vectors are equal (then so are the documents: see
  ``Replica.in_sync_with``), and with only its own pull when the asker is ahead
  (``Replica.covered_by``). This alone guarantees convergence; pushes only
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
* **compaction epochs** (docs/consistency.md, "Compaction"): peers in the same epoch of a
  database replicate it; a node that meets a peer in a newer epoch fetches that peer's full
  state and moves to it (:meth:`Replica.adopt`), unless it wrote past the new base's cut
  (then it is *stranded*: it stays, says so, and keeps its writes). A compaction round
  (:meth:`Gossip.start_compaction`) makes that rare: its coordinator floods ``freeze``,
  every node in the epoch holds its local writes and reports how far they reach back along
  the path the freeze came by, and once the coordinator has every writer's report and the
  writes they name, it rebuilds, announces the new epoch, and the others fetch it. A round
  that cannot finish within ``round_timeout_s`` is given up (``thaw``); a node never holds
  writes longer than ``freeze_timeout_s``.

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
from crdtdb.replica import (
    CorruptUpdateError,
    EpochId,
    EpochMismatchError,
    Replica,
    StrandedError,
)
from crdtdb.replica.envelope import decode_state_vector
from crdtdb.replica.replica import BASE_CLIENT_ID

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
    #: A compaction round's coordinator gives the round up if it cannot cut by then.
    round_timeout_s: float = 5.0
    #: ... and cuts no sooner than this after the last new report (reports of writers it
    #: did not know of may still be on their way).
    round_settle_s: float = 0.2
    #: A node holds its local writes for a round at most this long (longer than a round).
    freeze_timeout_s: float = 30.0
    #: A full state asked for and not received by then may be asked of another peer.
    fetch_timeout_s: float = 30.0
    #: Coordinate a compaction round once a database has merged or made this many changes
    #: in its epoch (``None``: only when asked, :meth:`Gossip.start_compaction`). One node
    #: of a cluster should have it (in an OVN cloud, the central node).
    compact_after_updates: int | None = None


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
    #: the peer's epoch of each database it has with the same schema
    epochs: dict[str, EpochId] = field(default_factory=dict)
    #: databases replicated with this peer (same schema and epoch on both sides)
    databases: frozenset[str] = frozenset()
    #: db -> (epoch, when): the full state this peer was last sent (a peer asks again
    #: only when one went missing: at most one every half fetch timeout)
    sent_state: dict[str, tuple[EpochId, float]] = field(default_factory=dict)
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
    #: compaction: rounds this node coordinated, and how they ended
    rounds_started: int = 0
    rounds_cut: int = 0
    rounds_given_up: int = 0
    #: rounds in which this node held its writes
    freezes: int = 0
    #: moves to a newer epoch from a peer's full state, and refusals (stranded)
    adoptions: int = 0
    strandings: int = 0
    #: how long this node's local writes were held by its last round, and at most
    held_s_last: float = 0.0
    held_s_max: float = 0.0
    #: db -> the newest epoch this node could not move to (see Gossip.stranded)
    stranded: dict[str, str] = field(default_factory=dict)
    #: databases whose local writes a compaction round holds right now
    holding: list[str] = field(default_factory=list)
    disconnects: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)


class CompactionRefusedError(RuntimeError):
    """A compaction round cannot start now (another is running, or writes are held)."""


@dataclass(slots=True)
class _Round:
    """A compaction round this node coordinates."""

    round_id: int
    epoch: EpochId
    deadline: float
    #: writer -> the clock its writes reach (its report)
    reports: dict[int, int]
    last_report: float
    since: float


@dataclass(slots=True)
class _Hold:
    """Local writes held for a round (``parent``: the peer its freeze came from)."""

    round_id: int
    until: float
    parent: str | None
    since: float


@dataclass(slots=True)
class _Fetch:
    peer: str
    deadline: float


#: Round ids remembered, so a flooded freeze, report or thaw is handled once.
_MAX_SEEN = 4096


class Gossip:
    def __init__(self, node_id: str, replicas: Mapping[str, Replica], *,
                 rng: random.Random, config: GossipConfig | None = None):
        self.node_id = node_id
        self.replicas = dict(replicas)
        self.rng = rng
        self.config = config or GossipConfig()
        self.peers: dict[str, PeerState] = {}
        self._next_anti_entropy: float | None = None
        #: Whether next_deadline may have moved earlier since the driver last asked
        #: (see deadline_moved_earlier).
        self._deadline_moved = True
        self._ae_interval_s = self.config.anti_entropy_interval_s
        self._quiet_rounds = 0
        self._stats = GossipStatistics()
        #: the latest time the caller passed in (for what is reported, not decided)
        self._now = 0.0
        self._rounds: dict[str, _Round] = {}
        self._holds: dict[str, _Hold] = {}
        self._fetches: dict[str, _Fetch] = {}
        #: db -> the newest epoch this node could not move to (it wrote past its cut)
        self.stranded: dict[str, EpochId] = {}
        #: (kind, round, client) already handled: flooded messages arrive many times
        self._seen: dict[tuple[str, int, int], None] = {}
        #: db -> no automatic round before then (after one that did not cut)
        self._next_round: dict[str, float] = {}

    # --- connections ------------------------------------------------------------------------

    def hello(self) -> m.Hello:
        return m.Hello(self.node_id, {name: (r.schema_digest, r.epoch_id)
                                      for name, r in self.replicas.items()})

    def connected(self, peer: str, now: float) -> list[Output]:
        """A new connection (either direction): introduce ourselves."""
        self.peers[peer] = PeerState(peer, now, now, next_ping=now + self.config.ping_interval_s)
        self._deadline_moved = True
        return self._send(peer, self.hello())

    def disconnected(self, peer: str) -> None:
        self.peers.pop(peer, None)
        for db, f in list(self._fetches.items()):
            if f.peer == peer:  # ask another (see _compaction_timers)
                del self._fetches[db]

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
        self._now = now
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
        if type(msg) is m.Push:
            # Most frames: a push of a database replicated with this peer goes straight in;
            # any other case takes the checks below (p.databases: past hello, same epoch).
            replica = self.replicas.get(msg.db)
            if replica is not None and msg.db in p.databases and not replica.unlogged:
                return self._on_push(p, replica, msg)
        if isinstance(msg, m.Hello):
            return self._on_hello(p, msg)
        if p.node_id is None:
            raise m.GossipProtocolError(f"{type(msg).__name__.lower()} before hello")
        if isinstance(msg, m.Ping):
            return self._send(p.key, m.Ack(msg.seq))
        if isinstance(msg, m.Ack):
            return []
        replica = self.replicas.get(msg.db)
        if replica is None or msg.db not in p.epochs:
            raise m.GossipProtocolError(f"database {msg.db!r} is not replicated with this peer")
        if replica.unlogged:
            return []  # out of service until reopened (see Replica.unlogged): nothing in or out
        if isinstance(msg, m.Epoch | m.Fetch | m.State | m.Freeze | m.Frozen | m.Thaw):
            return self._on_epoch_message(p, replica, msg)
        if isinstance(msg, m.StateVector) and msg.epoch != p.epochs[msg.db]:
            p.epochs[msg.db] = msg.epoch  # it moved, and its announcement went missing
            self._shared(p)
        if msg.db not in p.databases:
            # Sent before one side's move to a newer epoch reached the other: harmless,
            # but a pull from an older epoch gets told where this node is.
            if isinstance(msg, m.StateVector):
                if msg.epoch < replica.epoch_id:
                    return self._send(p.key, m.Epoch(msg.db, replica.epoch_id))
                return self._maybe_fetch(p, msg.db, msg.epoch, p.last_heard)
            return []
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
            out: list[Output] = []
            if not replica.covered_by(theirs):  # else the asker is ahead: only ask back
                out += self._send(p.key, m.Diff(msg.db, replica.diff(msg.state_vector,
                                                                     clocks=theirs)))
            if msg.reply:
                out += self._send(p.key, self._pull(msg.db, False))
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
        for name, replica in self.replicas.items():
            theirs = msg.databases.get(name)
            if theirs is None:
                continue
            if theirs[0] != replica.schema_digest:
                log.warning("%s: %s has %s with another schema (%s); not replicated",
                            self.node_id, msg.node_id, name, theirs[0])
                continue
            p.epochs[name] = theirs[1]
        p.node_id = msg.node_id
        self._shared(p)
        log.info("%s: peer %s (%s) up, replicating %s", self.node_id, msg.node_id, p.key,
                 ", ".join(sorted(p.databases)) or "nothing")
        self._lively()
        out: list[Output] = []
        for db in sorted(p.databases):  # catch up at once
            out += self._send(p.key, self._pull(db, True))
        for db, epoch in sorted(p.epochs.items()):
            out += self._maybe_fetch(p, db, epoch, p.last_heard)
        return out

    def _shared(self, p: PeerState) -> None:
        """Recompute what is replicated with ``p``; what is known of its clocks in a database
        no longer shared was about another epoch's writers (clocks restart with each)."""
        p.databases = frozenset(db for db, e in p.epochs.items()
                                if e == self.replicas[db].epoch_id)
        for db in [db for db in p.known if db not in p.databases]:
            del p.known[db]

    def _on_push(self, p: PeerState, replica: Replica, msg: m.Push) -> list[Output]:
        self._stats.pushes_received += 1
        try:
            result = replica.apply_update(msg.update, pushed=True)
        except EpochMismatchError:
            return []
        if result.span is not None:
            _reached(p, msg.db, result.span)
        out: list[Output] = []
        if result.gap:
            self._lively()
            self._stats.gaps += 1
            self._stats.pulls += 1
            out += self._send(p.key, self._pull(msg.db, False))
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
        if self.config.fanout == 0 or len(self.peers) < 2:
            return []  # (a star's hub: see the module docstring; or the sender is all)
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
            result = replica.apply_update(update, self_contained=True)  # a pull's answer
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
            self._deadline_moved = True

    # --- local commits and time -----------------------------------------------------------

    def local_update(self, db: str, update: bytes,
                     span: tuple[int, int, int] | None = None) -> list[Output]:
        """Push a local commit's sealed update; ``span``: its writer's clocks (see
        :class:`~crdtdb.replica.ApplyResult`), which lets later forwards skip peers that
        have it."""
        out: list[Output] = []
        ready = self.ready_peers(db)
        # Past eager_push_max_peers, fanout random peers, and one at least: fanout 0 (a star's
        # hub, see the module docstring) stops forwarding, never a node's own commits.
        peers = ready if len(ready) <= self.config.eager_push_max_peers else \
            self._choose(db, n=max(self.config.fanout, 1))
        for peer in peers:
            self._stats.pushes_sent += 1
            out += self._push(peer, m.Push(db, update, 0), span)
        return out

    def tick(self, now: float) -> list[Output]:
        self._now = now
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
        out += self._compaction_timers(now)
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
                # Every database it has, in whatever epoch it is believed to be: a pull
                # carries this node's epoch, so two nodes that missed each other's move learn
                # of it (see _handle).
                for db in sorted(self.peers[peer].epochs):
                    if self.replicas[db].unlogged:
                        continue
                    self._stats.pulls += 1
                    out += self._send(peer, self._pull(db, True))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (``None``: after the first tick)."""
        times = [p.next_ping for p in self.peers.values() if p.node_id is not None]
        times += [p.last_heard + self.config.peer_timeout_s for p in self.peers.values()]
        if self._next_anti_entropy is not None:
            times.append(self._next_anti_entropy)
        for r in self._rounds.values():
            times += [r.deadline, r.last_report + self.config.round_settle_s]
        times += [h.until for h in self._holds.values()]
        times += [f.deadline for f in self._fetches.values()]
        return min(times) if times else self._next_anti_entropy

    def deadline_moved_earlier(self) -> bool:
        """Whether :meth:`next_deadline` may be earlier than when the caller last asked
        this (then it should tick soon and ask again); cleared by asking.

        Handling a frame or a commit moves deadlines later (pings, timeouts) or not at all,
        but for a peer coming up and pulls picking up again after a quiet spell; while a
        compaction round is configured or under way, any frame may move its timers, so the
        answer is always yes. A driver that re-armed its timer on every output instead (the
        node did) ran a tick per frame at a hub, ~10-15% of a chassis node's CPU per NB
        change in the OVN sandbox."""
        moved = (self._deadline_moved or bool(self._rounds or self._holds or self._fetches)
                 or self.config.compact_after_updates is not None)
        self._deadline_moved = False
        return moved

    # --- compaction epochs ------------------------------------------------------------------

    def start_compaction(self, db: str, now: float) -> list[Output]:
        """Coordinate a compaction round of ``db`` (see the module docstring); it ends in a
        later :meth:`tick`: cut (this node moves to the next epoch, the others follow) or
        given up. Raises :class:`CompactionRefusedError` while a round holds ``db`` here or
        this node is moving to a newer epoch."""
        replica = self.replicas[db]
        if db in self._rounds or db in self._holds or replica.frozen:
            raise CompactionRefusedError(f"{db}: a compaction round is already running")
        if db in self._fetches:
            raise CompactionRefusedError(f"{db}: moving to a newer epoch")
        if db in self.stranded:
            raise CompactionRefusedError(f"{db}: stranded in epoch {replica.epoch_id} "
                                         f"(the others are in {self.stranded[db]})")
        self._now = now
        round_id = self.rng.getrandbits(63)
        self._remember("freeze", round_id, 0)
        replica.freeze()
        self._rounds[db] = _Round(round_id, replica.epoch_id, now + self.config.round_timeout_s,
                                  {replica.client_id: replica.own_clock()}, now, now)
        self._stats.rounds_started += 1
        self._lively()
        log.info("%s: compaction round %x of %s (epoch %s) started", self.node_id, round_id,
                 db, replica.epoch_id)
        return self._flood(db, m.Freeze(db, round_id, replica.epoch_id))

    def _on_epoch_message(self, p: PeerState, replica: Replica,
                          msg: m.Epoch | m.Fetch | m.State | m.Freeze | m.Frozen | m.Thaw
                          ) -> list[Output]:
        db, now = msg.db, p.last_heard
        if isinstance(msg, m.Epoch):
            p.epochs[db] = msg.epoch
            self._shared(p)
            if msg.epoch == replica.epoch_id:  # it joined ours: catch up
                return self._send(p.key, self._pull(db, True))
            h = self._holds.get(db)
            if h is not None and msg.epoch > replica.epoch_id:
                # The round was cut: keep holding until this node has moved too.
                h.until = max(h.until, now + self.config.fetch_timeout_s)
            return self._maybe_fetch(p, db, msg.epoch, now)
        if isinstance(msg, m.Fetch):
            mine, theirs = replica.epoch_id, p.epochs.get(db)
            sent, when = p.sent_state.get(db, (None, 0.0))
            if (theirs is None or theirs >= mine
                    or (sent == mine and now < when + self.config.fetch_timeout_s / 2)):
                return []  # nothing newer to give it, or given just now
            p.sent_state[db] = (mine, now)
            return self._send(p.key, m.State(db, replica.full_state()))
        if isinstance(msg, m.State):
            f = self._fetches.get(db)
            if f is None or f.peer != p.key:
                return []  # not asked for (or asked of another since): ignore
            del self._fetches[db]
            return self._adopt(db, replica, msg.update)
        if isinstance(msg, m.Freeze):
            if (not self._remember("freeze", msg.round_id, 0) or msg.epoch != replica.epoch_id
                    or db in self._rounds or db in self._holds or db in self._fetches):
                return []
            replica.freeze()
            self._holds[db] = _Hold(msg.round_id, now + self.config.freeze_timeout_s, p.key,
                                    now)
            self._stats.freezes += 1
            out = self._flood(db, msg, exclude=p.key)
            return out + self._send(p.key, m.Frozen(db, msg.round_id, replica.client_id,
                                                    replica.own_clock()))
        if isinstance(msg, m.Frozen):
            if not self._remember("frozen", msg.round_id, msg.client):
                return []
            r = self._rounds.get(db)
            if r is not None and r.round_id == msg.round_id:
                r.reports[msg.client] = msg.clock
                r.last_report = now
                self._lively()  # pull the writes it names soon
                return []
            h = self._holds.get(db)
            if h is not None and h.round_id == msg.round_id and h.parent in self.peers:
                return self._send(h.parent, msg)  # back towards the coordinator
            return []
        if not self._remember("thaw", msg.round_id, 0):
            return []
        h = self._holds.get(db)
        if h is not None and h.round_id == msg.round_id:
            self._release(db, "its coordinator gave the round up")
        return self._flood(db, msg, exclude=p.key)

    def _maybe_fetch(self, p: PeerState, db: str, epoch: EpochId, now: float) -> list[Output]:
        """Ask ``p`` for its full state if it is in a newer epoch and no one is asked yet."""
        if epoch <= self.replicas[db].epoch_id or db in self._fetches:
            return []
        if db in self.stranded:
            if epoch > self.stranded[db]:
                self.stranded[db] = epoch  # (for the status: still stranded)
            return []
        self._fetches[db] = _Fetch(p.key, now + self.config.fetch_timeout_s)
        log.info("%s: %s is in epoch %s of %s, this node in %s: fetching its state",
                 self.node_id, p.node_id, epoch, db, self.replicas[db].epoch_id)
        return self._send(p.key, m.Fetch(db))

    def _adopt(self, db: str, replica: Replica, update: bytes) -> list[Output]:
        """Move to the newer epoch of a fetched full state (CorruptUpdateError: the caller
        drops the peer)."""
        try:
            replica.adopt(update)
        except StrandedError as exc:
            self.stranded[db] = exc.theirs
            self._stats.strandings += 1
            log.error("%s: %s", self.node_id, exc)
            self._release(db, "stranded")
            return []
        except EpochMismatchError:
            return []  # not newer any more: moved meanwhile
        self._stats.adoptions += 1
        self._release(db, f"moved to epoch {replica.epoch_id}")
        return self._announce(db)

    def _announce(self, db: str) -> list[Output]:
        """Tell every peer with ``db`` this node's (new) epoch, and catch up with those
        already in it."""
        replica = self.replicas[db]
        out: list[Output] = []
        for key, p in list(self.peers.items()):
            if db not in p.epochs:
                continue
            out += self._send(key, m.Epoch(db, replica.epoch_id))
            self._shared(p)
            if db in p.databases:
                out += self._send(key, self._pull(db, True))
        self._lively()
        return out

    def _release(self, db: str, why: str) -> None:
        """End this node's hold on ``db`` (or its own round), if any."""
        h = self._holds.pop(db, None)
        r = self._rounds.pop(db, None)
        if h is None and r is None:
            return
        self.replicas[db].thaw()
        held = self._now - (h or r).since  # type: ignore[union-attr]
        self._stats.held_s_last = held
        self._stats.held_s_max = max(self._stats.held_s_max, held)
        log.info("%s: writes to %s taken again after %.3f s: %s", self.node_id, db, held, why)

    def _compaction_timers(self, now: float) -> list[Output]:
        out: list[Output] = []
        for db, h in list(self._holds.items()):
            if now >= h.until:
                log.warning("%s: compaction round %x of %s did not finish in time", self.node_id,
                            h.round_id, db)
                self._release(db, "the round timed out")
        for db, f in list(self._fetches.items()):
            if now >= f.deadline:
                del self._fetches[db]
        for db, replica in self.replicas.items():
            if db in self._fetches or db in self.stranded or replica.unlogged:
                continue
            newer = [(p.epochs[db], key) for key, p in self.peers.items()
                     if p.epochs.get(db, replica.epoch_id) > replica.epoch_id]
            if newer:  # a fetch failed or its peer went: ask the one with the newest
                epoch, key = max(newer)
                out += self._maybe_fetch(self.peers[key], db, epoch, now)
        for db, r in list(self._rounds.items()):
            out += self._advance_round(db, r, now)
        limit = self.config.compact_after_updates
        if limit is not None:
            for db, replica in self.replicas.items():
                if (replica.changes_in_epoch() >= limit and now >= self._next_round.get(db, 0)
                        and not (replica.frozen or replica.unlogged or db in self._fetches
                                 or db in self.stranded)):
                    out += self.start_compaction(db, now)
        return out

    def _advance_round(self, db: str, r: _Round, now: float) -> list[Output]:
        """Cut once every writer of the epoch has reported and this node has what they
        reported (at the deadline: without the writers that never reported, who may find
        themselves stranded); give up at the deadline if writes are still missing."""
        replica = self.replicas[db]
        if replica.epoch_id != r.epoch:  # moved to a newer epoch meanwhile
            self._release(db, "moved to a newer epoch")
            return []
        clocks = decode_state_vector(replica.state_vector())
        writers = {c for c, k in clocks.items() if k and c != BASE_CLIENT_ID}
        missing = writers - r.reports.keys()
        behind = sorted(c for c, k in r.reports.items() if clocks.get(c, 0) < k)
        settled = now >= r.last_report + self.config.round_settle_s
        if not behind and settled and (not missing or now >= r.deadline):
            return self._cut(db, r, sorted(missing))
        if now < r.deadline:
            return []
        self._stats.rounds_given_up += 1
        self._next_round[db] = now + 4 * self.config.round_timeout_s  # (automatic ones)
        log.warning("%s: compaction round %x of %s given up: writes of %s not here",
                    self.node_id, r.round_id, db, ", ".join(map(str, behind)))
        self._release(db, "the round was given up")
        self._remember("thaw", r.round_id, 0)
        return self._flood(db, m.Thaw(db, r.round_id))

    def _cut(self, db: str, r: _Round, missing: list[int]) -> list[Output]:
        replica = self.replicas[db]
        if missing:
            log.warning("%s: compaction round %x of %s cut without reports from writers %s "
                        "(any that wrote past the cut will be stranded)", self.node_id,
                        r.round_id, db, ", ".join(map(str, missing)))
        try:
            epoch = replica.rebuild()
        except Exception:
            log.exception("%s: compaction of %s failed; giving the round up", self.node_id, db)
            self._stats.rounds_given_up += 1
            self._next_round[db] = r.deadline + 4 * self.config.round_timeout_s
            self._release(db, "the rebuild failed")
            self._remember("thaw", r.round_id, 0)
            return self._flood(db, m.Thaw(db, r.round_id))
        self._stats.rounds_cut += 1
        self._release(db, f"cut into epoch {epoch}")
        return self._announce(db)

    def _remember(self, kind: str, round_id: int, client: int) -> bool:
        """Whether a flooded message is new (and note it)."""
        key = (kind, round_id, client)
        if key in self._seen:
            return False
        if len(self._seen) >= _MAX_SEEN:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = None
        return True

    def _flood(self, db: str, msg: m.Message, exclude: str | None = None) -> list[Output]:
        out: list[Output] = []
        for key in self.ready_peers(db):
            if key != exclude:
                out += self._send(key, msg)
        return out

    # --- helpers ----------------------------------------------------------------------------

    def _pull(self, db: str, reply: bool) -> m.StateVector:
        replica = self.replicas[db]
        return m.StateVector(db, replica.state_vector(), reply, replica.epoch_id)

    def _jittered(self, seconds: float) -> float:
        return seconds * self.rng.uniform(0.5, 1.5)

    def _choose(self, db: str, exclude: str | None = None, n: int | None = None) -> list[str]:
        n = self.config.fanout if n is None else n
        candidates = [k for k in self.ready_peers(db) if k != exclude]
        if len(candidates) <= n:
            return candidates
        return self.rng.sample(candidates, n)

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
        s = GossipStatistics(**{k: getattr(self._stats, k) for k in GossipStatistics.__slots__
                                if k not in ("peers", "stranded", "holding")})
        s.stranded = {db: str(e) for db, e in self.stranded.items()}
        s.holding = sorted({*self._holds, *self._rounds})
        # Our clocks decoded once per database, not once per peer.
        mine = {db: decode_state_vector(r.state_vector()) for db, r in self.replicas.items()}
        s.peers = {key: {"node_id": p.node_id, "databases": sorted(p.databases),
                         "lag": {db: dict(zip(("they_lack", "we_lack"),
                                              _lag(mine[db], known), strict=True))
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


def _lag(a: Mapping[int, int], b: Mapping[int, int]) -> tuple[int, int]:
    """(items the peer lacks that we have, items we lack that it has), from our clocks and
    what is known of the peer's."""
    they_lack = sum(max(0, k - b.get(c, 0)) for c, k in a.items())
    we_lack = sum(max(0, k - a.get(c, 0)) for c, k in b.items())
    return they_lack, we_lack
