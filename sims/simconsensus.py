"""A majority-based consensus plugin for the Northbound, for simulations only.

Members (:class:`Member`, 3 by default) are simulated consensus servers on the simulation's
:class:`~transport.memory.MemoryNetwork`, so partitions, loss, delays and crashes hit them like
any node. They run Raft's core (Ongaro & Ousterhout, sections 5.1-5.4): terms, randomized
elections, a leader that replicates its log and counts an entry committed once a majority of
members hold it (only entries of its own term; earlier ones commit with them). What a member
keeps across a crash (term, vote, log) is written before it answers anyone, so a crash loses
none of it; the rest (role, commit index) starts over. No compaction, membership changes or
pre-vote: a simulation is short.

The log is the Northbound's history, one entry per request, and the revision of an entry is
its index. Each node keeps a cache (a :class:`~crdtdb.consensus.LinearizableDatabase`) that
its :class:`NbClient` feeds from committed entries only, in log order, applying a state
machine that every node computes identically:

* a transaction entry carries the changeset, the cache revision it ran at (``base``) and the
  tables it depends on (:func:`crdtdb.consensus.etcd.conflict_tables`, as the etcd plugin
  compares them); it is applied only if none of those tables changed after ``base``, else it
  is a no-op and its node answers :class:`~crdtdb.consensus.Retry`. Deciding at apply time,
  in log order, makes a conflict answer final: the transaction never takes effect;
* a read entry (a read-only transaction's barrier) changes nothing; once it is applied the
  node's cache shows everything committed before the read was called, and the read's result
  stands if no table it read changed after its base (else Retry: run it again);
* the leader's no-op at the start of its term changes nothing;
* a request id seen before is a no-op: a request may be sent again (to another member, after
  a timeout) and land twice, and only its first entry counts.

So the committed log is a total order of the requests consistent with real time (an entry is
created after its call, and whatever completed before that call is already earlier in every
leader's log), and a request's result is that of its entry: linearizable by construction, as
long as Raft's safety holds. A request whose entry the node has not seen applied when
:attr:`Timing.commit_timeout_s` runs out is answered "commit outcome unknown" (it may still
land later), as the ovsdb relay does.

Checks built in: a node's feed sends the term of the last entry it applied, and a member that
has committed that index with another term says so (an applied entry vanished: the node's
cache diverged); a member told to overwrite an entry it counted as committed reports it. Both
go to :attr:`Stats.violations`.

Planted bugs for the simulator's own tests override :meth:`Member.commit_quorum` (count an
entry committed on fewer members) or :meth:`NbClient.read_barrier` (answer reads from the
cache).
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from crdtdb.consensus.commit import Applied, CommitOutcome, CommitRequest, Failed, Retry
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.consensus.etcd import conflict_tables
from crdtdb.engine.binary import decode_row, encode_row
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, RowChange
from transport.base import Received
from transport.memory import MemoryTransport

log = logging.getLogger("crdtdb.sims.consensus")

UNKNOWN_OUTCOME = "commit outcome unknown"

FOLLOWER, CANDIDATE, LEADER = "follower", "candidate", "leader"


@dataclass(frozen=True)
class Timing:
    #: how often a member looks at its timers
    tick_s: float = 0.01
    heartbeat_s: float = 0.05
    #: entries a member has not acknowledged are sent again after this long (heartbeats
    #: in between carry none)
    retransmit_s: float = 0.3
    election_s: tuple[float, float] = (0.3, 0.6)
    #: a fetch with nothing to return waits this long for a commit before answering empty
    fetch_park_s: float = 1.0
    #: a node that hears nothing back from a fetch this long asks another member
    fetch_timeout_s: float = 1.5
    #: a request not yet seen committed is sent again (to the leader known then) this often
    resend_s: float = 0.25
    #: after this long a request's outcome is unknown
    commit_timeout_s: float = 3.0
    append_batch: int = 64
    fetch_batch: int = 256


@dataclass
class Stats:
    """Counters and safety reports shared by a group's members and clients."""

    frames: int = 0
    bytes: int = 0
    elections: int = 0
    leaders: int = 0
    requests: int = 0
    conflicts: int = 0
    unknown: int = 0
    violations: list[str] = field(default_factory=list)


def _pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def _unpack(frame: bytes) -> dict[str, Any]:
    msg = msgpack.unpackb(frame, raw=False)
    assert isinstance(msg, dict)
    return msg


def _send(transport: MemoryTransport, stats: Stats, peer: str, msg: dict[str, Any]) -> None:
    frame = _pack(msg)
    if peer in transport.peers:
        stats.frames += 1
        stats.bytes += len(frame)
    transport.send_nowait(peer, frame)


# --- members ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    term: int
    #: the request's id; "" for a leader's no-op
    id: str
    payload: bytes


@dataclass
class MemberDisk:
    """What a member keeps across a crash (written before it answers, so none of it is lost)."""

    term: int = 0
    voted_for: str | None = None
    log: list[LogEntry] = field(default_factory=list)


class Member:
    """One life of a consensus member (a crash ends it; the next one starts from its disk)."""

    def __init__(self, name: str, members: Sequence[str], disk: MemberDisk,
                 transport: MemoryTransport, *, rng: random.Random, timing: Timing,
                 stats: Stats):
        self.name = name
        self.peers = [m for m in members if m != name]
        self.n_members = len(members)
        self.disk = disk
        self.transport = transport
        self.rng = rng
        self.timing = timing
        self.stats = stats
        self.role = FOLLOWER
        self.leader: str | None = None
        self.commit_index = 0
        self.next_index: dict[str, int] = {}
        self.match_index: dict[str, int] = {}
        self.votes: set[str] = set()
        #: leader only: when entries were last sent to a member that has not answered since
        self._unacked: dict[str, float] = {}
        #: leader only: request id -> index, for every entry of its log
        self._ids: dict[str, int] = {}
        #: fetches waiting for a commit: (client, req, from, prev term, answer by)
        self._parked: list[tuple[str, int, int, int, float]] = []
        self._election_at = trio.current_time() + self._election_timeout()
        self._heartbeat_at = 0.0

    def quorum(self) -> int:
        return self.n_members // 2 + 1

    def commit_quorum(self) -> int:
        """Members (this one included) that must hold an entry before it counts committed."""
        return self.quorum()

    def _election_timeout(self) -> float:
        return self.rng.uniform(*self.timing.election_s)

    def _last(self) -> tuple[int, int]:
        log_ = self.disk.log
        return len(log_), (log_[-1].term if log_ else 0)

    def _send(self, peer: str, msg: dict[str, Any]) -> None:
        _send(self.transport, self.stats, peer, msg)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump)
            while True:
                self._tick(trio.current_time())
                await trio.sleep(self.timing.tick_s)

    async def _pump(self) -> None:
        async for ev in self.transport.events:
            if isinstance(ev, Received):
                self._on_frame(ev.peer, ev.frame)

    def _tick(self, now: float) -> None:
        if self.role == LEADER:
            if now >= self._heartbeat_at:
                self._broadcast()
        elif now >= self._election_at:
            self._campaign(now)
        if self._parked and min(p[4] for p in self._parked) <= now:
            due = [p for p in self._parked if p[4] <= now]
            self._parked = [p for p in self._parked if p[4] > now]
            for src, req, frm, prev_term, _ in due:
                self._serve(src, req, frm, prev_term, force=True)

    # --- elections --------------------------------------------------------------------------

    def _campaign(self, now: float) -> None:
        self.disk.term += 1
        self.disk.voted_for = self.name
        self.role, self.leader, self.votes = CANDIDATE, None, {self.name}
        self._election_at = now + self._election_timeout()
        self.stats.elections += 1
        last_idx, last_term = self._last()
        for p in self.peers:
            self._send(p, {"t": "vote", "term": self.disk.term, "last_idx": last_idx,
                           "last_term": last_term})
        if len(self.votes) >= self.quorum():
            self._become_leader()

    def _on_vote(self, src: str, m: dict[str, Any]) -> None:
        last_idx, last_term = self._last()
        grant = (m["term"] == self.disk.term and self.disk.voted_for in (None, src)
                 and (m["last_term"], m["last_idx"]) >= (last_term, last_idx))
        if grant:
            self.disk.voted_for = src
            self._election_at = trio.current_time() + self._election_timeout()
        self._send(src, {"t": "voted", "term": self.disk.term, "granted": grant})

    def _on_voted(self, src: str, m: dict[str, Any]) -> None:
        if self.role == CANDIDATE and m["term"] == self.disk.term and m["granted"]:
            self.votes.add(src)
            if len(self.votes) >= self.quorum():
                self._become_leader()

    def _become_leader(self) -> None:
        self.role, self.leader = LEADER, self.name
        self.stats.leaders += 1
        n = len(self.disk.log)
        self.next_index = {p: n + 1 for p in self.peers}
        self.match_index = {p: 0 for p in self.peers}
        self._unacked = {}
        self._ids = {e.id: i for i, e in enumerate(self.disk.log, 1) if e.id}
        self._append(LogEntry(self.disk.term, "", b""))

    # --- replication ------------------------------------------------------------------------

    def _append(self, entry: LogEntry) -> None:
        self.disk.log.append(entry)
        if entry.id:
            self._ids[entry.id] = len(self.disk.log)
        self._advance_commit()
        self._broadcast()

    def _broadcast(self) -> None:
        for p in self.peers:
            self._send_append(p)
        self._heartbeat_at = trio.current_time() + self.timing.heartbeat_s

    def _send_append(self, peer: str) -> None:
        log_ = self.disk.log
        prev = self.next_index[peer] - 1
        now = trio.current_time()
        if self._unacked.get(peer, -1e9) > now - self.timing.retransmit_s:
            entries: list[LogEntry] = []  # entries already on the way: just a heartbeat
        else:
            entries = log_[prev:prev + self.timing.append_batch]
            if entries:
                self._unacked[peer] = now
        self._send(peer, {"t": "append", "term": self.disk.term, "prev_idx": prev,
                          "prev_term": log_[prev - 1].term if prev else 0,
                          "entries": [[e.term, e.id, e.payload] for e in entries],
                          "commit": self.commit_index})

    def _on_append(self, src: str, m: dict[str, Any]) -> None:
        term = self.disk.term
        if m["term"] < term:
            self._send(src, {"t": "appended", "term": term, "ok": False, "next": 0})
            return
        self.role, self.leader = FOLLOWER, src
        self._election_at = trio.current_time() + self._election_timeout()
        log_ = self.disk.log
        prev = m["prev_idx"]
        if prev > len(log_):
            self._send(src, {"t": "appended", "term": term, "ok": False,
                             "next": len(log_) + 1})
            return
        if prev > 0 and log_[prev - 1].term != m["prev_term"]:
            bad, k = log_[prev - 1].term, prev  # skip back over the whole conflicting term
            while k > 1 and log_[k - 2].term == bad:
                k -= 1
            self._send(src, {"t": "appended", "term": term, "ok": False, "next": k})
            return
        idx = prev
        for e_term, e_id, payload in m["entries"]:
            idx += 1
            if idx <= len(log_):
                if log_[idx - 1].term == e_term:
                    continue
                if idx <= self.commit_index:
                    self.stats.violations.append(
                        f"{self.name}: told to overwrite entry {idx} (term "
                        f"{log_[idx - 1].term}) that it counted as committed (up to "
                        f"{self.commit_index})")
                    self.commit_index = idx - 1
                del log_[idx - 1:]
            log_.append(LogEntry(e_term, e_id, payload))
        last_new = prev + len(m["entries"])
        self._set_commit(min(m["commit"], last_new))
        self._send(src, {"t": "appended", "term": term, "ok": True, "match": last_new})

    def _on_appended(self, src: str, m: dict[str, Any]) -> None:
        if self.role != LEADER or m["term"] != self.disk.term:
            return
        if m["ok"]:
            match = m["match"]
            self._unacked.pop(src, None)
            if match > self.match_index[src]:
                self.match_index[src] = match
            self.next_index[src] = max(self.next_index[src], match + 1)
            self._advance_commit()
            if self.next_index[src] <= len(self.disk.log) and match >= self.match_index[src]:
                self._send_append(src)  # more to send (catching up)
        elif 0 < m["next"] < self.next_index[src]:
            self._unacked.pop(src, None)
            self.next_index[src] = max(m["next"], self.match_index[src] + 1)
            self._send_append(src)

    def _advance_commit(self) -> None:
        log_ = self.disk.log
        for n in range(len(log_), self.commit_index, -1):
            if log_[n - 1].term != self.disk.term:
                break  # entries of earlier terms commit only with one of this term
            acks = 1 + sum(1 for p in self.peers if self.match_index.get(p, 0) >= n)
            if acks >= self.commit_quorum():
                self._set_commit(n)
                break

    def _set_commit(self, n: int) -> None:
        if n <= self.commit_index:
            return
        self.commit_index = n
        if self._parked:
            waiting, self._parked = self._parked, []
            for p in waiting:
                if not self._serve(*p[:4], force=False):
                    self._parked.append(p)

    # --- clients ----------------------------------------------------------------------------

    def _on_submit(self, src: str, m: dict[str, Any]) -> None:
        accepted = self.role == LEADER
        if accepted and m["id"] not in self._ids:
            self._append(LogEntry(self.disk.term, m["id"], m["entry"]))
        self._send(src, {"t": "submitted", "id": m["id"], "accepted": accepted,
                         "leader": self.leader})

    def _on_fetch(self, src: str, m: dict[str, Any]) -> None:
        self._parked = [p for p in self._parked if p[0] != src]  # superseded
        if not self._serve(src, m["req"], m["from"], m["prev"], force=False):
            self._parked.append((src, m["req"], m["from"], m["prev"],
                                 trio.current_time() + self.timing.fetch_park_s))

    def _serve(self, src: str, req: int, frm: int, prev_term: int, *, force: bool) -> bool:
        """Answer a fetch of the committed entries from index ``frm`` on (False: nothing to
        send yet, park it)."""
        log_ = self.disk.log
        prev = frm - 1
        if 0 < prev <= self.commit_index and log_[prev - 1].term != prev_term:
            self._send(src, {"t": "fetched", "req": req, "diverged": True,
                             "detail": f"entry {prev} is of term {log_[prev - 1].term} here, "
                                       f"the node applied one of term {prev_term}"})
            return True
        if frm > self.commit_index:
            if not force:
                return False
            entries: list[LogEntry] = []
        else:
            entries = log_[prev:min(self.commit_index, prev + self.timing.fetch_batch)]
        self._send(src, {"t": "fetched", "req": req, "from": frm, "leader": self.leader,
                         "entries": [[e.term, e.id, e.payload] for e in entries]})
        return True

    def _on_frame(self, src: str, frame: bytes) -> None:
        m = _unpack(frame)
        if "term" in m and m["term"] > self.disk.term:
            self.disk.term, self.disk.voted_for = m["term"], None
            self.role, self.leader = FOLLOWER, None
        handler = _MEMBER_HANDLERS.get(m["t"])
        if handler is not None:
            handler(self, src, m)


_MEMBER_HANDLERS = {
    "vote": Member._on_vote,
    "voted": Member._on_voted,
    "append": Member._on_append,
    "appended": Member._on_appended,
    "submit": Member._on_submit,
    "fetch": Member._on_fetch,
}


# --- nodes -----------------------------------------------------------------------------------


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    wake: trio.Event = field(default_factory=trio.Event)
    answered: bool = False
    outcome: tuple[int, bool] | None = None


class NbClient:
    """One node's side: the Northbound cache, fed from the members' committed log, and the
    plugin (a :class:`~crdtdb.consensus.database.Committer`) that commits through them.

    One life of a node: a restarted node starts with an empty cache and replays the log.
    """

    def __init__(self, name: str, members: Sequence[str], transport: MemoryTransport,
                 schema: DatabaseSchema, *, life: int, rng: random.Random, timing: Timing,
                 stats: Stats, new_uuid: Any):
        self.name = name
        self.members = list(members)
        self.transport = transport
        self.schema = schema
        self.timing = timing
        self.stats = stats
        self.db = LinearizableDatabase(schema, MemoryDatabase(schema, new_uuid=new_uuid), self,
                                       new_uuid=new_uuid)
        self.leader: str | None = None
        self._rr = rng.randrange(len(self.members))
        self._life = life
        self._ids = itertools.count(1)
        self._reqs = itertools.count(1)
        #: the state machine: the last revision that changed each table, request ids seen
        self.table_rev: dict[str, int] = {}
        self._seen: set[str] = set()
        self._last_term = 0
        self._pending: dict[str, _Pending] = {}
        self._fetch_req = 0
        self._fetch_resp: dict[str, Any] | None = None
        self._fetch_ev = trio.Event()
        self._fetch_kicked = False
        #: False once the feed stopped (a divergence or a broken entry: see violations)
        self.feed_ok = True

    # --- the plugin ---------------------------------------------------------------------------

    async def commit(self, db: LinearizableDatabase, request: CommitRequest) -> CommitOutcome:
        if request.fences:
            return Failed({"error": "not supported",
                           "details": "cluster-wide locks are not simulated"})
        if request.read_only:
            return await self.read_barrier(request)
        assert request.changeset is not None
        tables = sorted(conflict_tables(self.schema, request))
        rows = []
        for tname, changes in request.changeset.tables.items():
            table = self.schema.tables[tname]
            for uuid, ch in changes.items():
                rows.append([tname, uuid,
                             None if ch.old is None else encode_row(table, ch.old),
                             None if ch.new is None else encode_row(table, ch.new)])
        got = await self._request({"k": "txn", "base": request.base_revision,
                                   "tables": tables, "rows": rows})
        if got is None:
            return Failed({"error": UNKNOWN_OUTCOME})
        index, applied = got
        if applied:
            return Applied()
        self.stats.conflicts += 1
        return Retry(f"a table it depends on changed between revisions "
                     f"{request.base_revision} and {index}")

    async def read_barrier(self, request: CommitRequest) -> CommitOutcome:
        """A read's majority round: its entry commits after everything that completed before
        the call, and the cache shows all of it once the entry is applied."""
        got = await self._request({"k": "read"})
        if got is None:
            return Failed({"error": UNKNOWN_OUTCOME})
        tables = conflict_tables(self.schema, request)
        if any(self.table_rev.get(t, 0) > request.base_revision for t in tables):
            return Retry("a table it read changed before its barrier")
        return Applied()

    async def _request(self, entry: dict[str, Any]) -> tuple[int, bool] | None:
        """Submit an entry until the feed applies it: (its revision, applied), or None when
        the time is up (the outcome is unknown)."""
        self.stats.requests += 1
        eid = f"{self.name}.{self._life}.{next(self._ids)}"
        payload = _pack(entry)
        p = self._pending[eid] = _Pending()
        try:
            with trio.move_on_after(self.timing.commit_timeout_s):
                while not p.done.is_set():
                    target = self._target()
                    p.wake, p.answered = trio.Event(), False
                    self._send(target, {"t": "submit", "id": eid, "entry": payload})
                    with trio.move_on_after(self.timing.resend_s):
                        await p.wake.wait()
                    if not p.done.is_set():
                        if not p.answered:
                            self._rotate(target)
                        self._refetch()  # in case the feed's fetch or its answer was lost
        finally:
            del self._pending[eid]
        if p.outcome is None:
            self.stats.unknown += 1
        return p.outcome

    def _refetch(self) -> None:
        """Give up on the fetch in flight and send another (to the same member)."""
        if self._fetch_resp is None:
            self._fetch_kicked = True
            self._fetch_ev.set()

    def _target(self) -> str:
        return self.leader or self.members[self._rr]

    def _rotate(self, bad: str) -> None:
        if self.leader == bad:
            self.leader = None
        if self.members[self._rr] == bad:
            self._rr = (self._rr + 1) % len(self.members)

    def _send(self, peer: str, msg: dict[str, Any]) -> None:
        _send(self.transport, self.stats, peer, msg)

    # --- the feed -----------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump)
            await self._feed()
            await trio.sleep_forever()  # the feed stopped: keep answering nothing

    async def _pump(self) -> None:
        async for ev in self.transport.events:
            if not isinstance(ev, Received):
                continue
            m = _unpack(ev.frame)
            if m["t"] == "fetched":
                if m["req"] == self._fetch_req and self._fetch_resp is None:
                    self._fetch_resp = m
                    self._fetch_ev.set()
            elif m["t"] == "submitted":
                p = self._pending.get(m["id"])
                if m["accepted"]:
                    self.leader = ev.peer
                if p is None:
                    continue
                p.answered = True
                if not m["accepted"]:
                    if m["leader"] and m["leader"] != ev.peer:
                        self.leader = m["leader"]
                        p.wake.set()  # send it there now
                    else:
                        self._rotate(ev.peer)

    async def _feed(self) -> None:
        while True:
            target = self._target()
            req = next(self._reqs)
            self._fetch_req, self._fetch_resp, self._fetch_ev = req, None, trio.Event()
            self._fetch_kicked = False
            self._send(target, {"t": "fetch", "req": req, "from": self.db.revision + 1,
                                "prev": self._last_term})
            with trio.move_on_after(self.timing.fetch_timeout_s):
                await self._fetch_ev.wait()
            resp = self._fetch_resp
            if resp is None:
                if not self._fetch_kicked:
                    self._rotate(target)
                continue
            if resp.get("diverged"):
                self.stats.violations.append(f"{self.name}: its Northbound cache diverged: "
                                             f"{resp['detail']}")
                self.feed_ok = False
                return
            if resp["leader"]:
                self.leader = resp["leader"]
            elif not resp["entries"]:
                self._rotate(target)
            if resp["entries"] and resp["from"] == self.db.revision + 1:
                try:
                    self._apply(resp["entries"])
                except Exception as exc:  # a broken entry: report it, stop this feed
                    self.stats.violations.append(f"{self.name}: applying the Northbound "
                                                 f"log failed at revision "
                                                 f"{self.db.revision + 1}: {exc!r}")
                    self.feed_ok = False
                    return

    def _apply(self, entries: list[Any]) -> None:
        for term, eid, payload in entries:
            index = self.db.revision + 1
            cs = Changeset()
            applied = True
            first = bool(eid) and eid not in self._seen
            if first:
                self._seen.add(eid)
                e = _unpack(payload)
                if e["k"] == "txn":
                    if all(self.table_rev.get(t, 0) <= e["base"] for t in e["tables"]):
                        cs = self._changeset(e["rows"])
                    else:
                        applied = False
            self.db.apply_feed(index, cs)
            for tname, rows in cs.tables.items():
                if rows:
                    self.table_rev[tname] = index
            self._last_term = term
            p = self._pending.get(eid) if first else None
            if p is not None:
                p.outcome = (index, applied)
                p.done.set()
                p.wake.set()

    def _changeset(self, rows: list[Any]) -> Changeset:
        cs = Changeset()
        for tname, uuid, old, new in rows:
            table = self.schema.tables[tname]
            cs.tables.setdefault(tname, {})[uuid] = RowChange(
                None if old is None else decode_row(table, old),
                None if new is None else decode_row(table, new))
        return cs

    def state(self) -> dict[str, list[tuple[str, Any]]]:
        """The cache's rows, for comparing nodes."""
        return {t: sorted(self.db.iter_rows(t)) for t in sorted(self.schema.tables)}
