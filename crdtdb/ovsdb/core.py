"""The OVSDB server's protocol logic, without I/O: sessions, methods, monitors, locks, waits.

:class:`ServerCore` takes decoded JSON-RPC events from a session and queues the messages to send
back (replies and notifications, possibly to other sessions) in each session's outbox; the I/O
layer (:mod:`crdtdb.ovsdb.server`) only moves bytes and time. Method by method it follows
ovsdb-server's ``ovsdb/jsonrpc-server.c``: same results, same error objects.

Ordering guarantees clients rely on:
- the monitor updates caused by a transaction are queued before that transaction's reply;
- a ``wait`` that cannot be satisfied yet is retried after every commit to its database and
  when its timeout expires (:meth:`ServerCore.run_timers`).

A database whose ``linearizable`` attribute is true commits through a consensus plugin: the
core runs the transaction against the store's cache and queues a
:class:`~crdtdb.consensus.commit.CommitRequest` in :attr:`ServerCore.commits`; the I/O layer
awaits the plugin and calls :meth:`ServerCore.commit_finished`. One transaction per such
database is in flight at a time, so transactions of one node never conflict with each other.
A store whose ``forwards`` attribute is also true (a relay: the plugin runs transactions
itself) gets them unrun and unqueued, except those with a ``wait`` that may block.
Locks can be gated by a :class:`LockGate` (locks held cluster-wide): a session owns a lock
only while it heads the local queue *and* this node holds the lock in the cluster.
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid as uuidlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crdtdb.consensus.commit import (
    Applied,
    CommitOutcome,
    CommitRequest,
    Failed,
    Retry,
    asserted_locks,
)
from crdtdb.engine import DatabaseSchema, MemoryDatabase, Outcome
from crdtdb.engine import data as D
from crdtdb.engine.data import ZERO_UUID
from crdtdb.engine.ovshash import OvsHmap, json_hash, shash_order
from crdtdb.engine.ovsjson import is_id
from crdtdb.engine.snapshot import Changeset, ReadSet, Row, RowChange, Snapshot
from crdtdb.engine.transaction import random_uuid
from crdtdb.errors import OvsdbError
from crdtdb.ovsdb.history import DEFAULT_MAX_TXNS, TxnHistory
from crdtdb.ovsdb.jsonrpc import ErrorReply, Notification, Reply, Request
from crdtdb.ovsdb.locks import LockMode, LockTable
from crdtdb.ovsdb.monitor import Monitor, Version, monitor_key

log = logging.getLogger(__name__)

SERVER_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "_server.ovsschema"
_MONITOR_METHODS = {"monitor": Version.V1, "monitor_cond": Version.V2,
                    "monitor_cond_since": Version.V3}
_UPDATE_METHOD = {Version.V1: "update", Version.V2: "update2", Version.V3: "update3"}
_V3 = Version.V3  # (read per commit: see crdtdb/ovsdb/monitor.py's _V1)

Event = Request | Notification | Reply | ErrorReply


class Database(Snapshot, Protocol):
    """A store the server can serve: a snapshot that also runs and commits transactions.

    A store with a true ``linearizable`` attribute only runs them (``execute`` must not apply
    the changeset, and must expose ``revision``): its commits go through a plugin. A store
    with an ``is_linearizable(operations)`` method decides per transaction (tables of both
    levels in one database).
    """

    def execute(self, operations: list[Any], *, locks: Any = None,
                elapsed_ms: int = 0) -> Outcome: ...


class LockGate(Protocol):
    """Node-wide locks held in a cluster on behalf of this server's sessions.

    The server sets its ``on_change`` attribute: the gate calls it with (name, held) whenever
    it takes or loses a lock.
    """

    def held(self, name: str) -> bool: ...

    def want(self, name: str, *, steal: bool) -> None:
        """Contend for (or steal) ``name``; :meth:`ServerCore.lock_changed` reports the result.
        """

    def release(self, name: str) -> None: ...


#: After this many conflicts in a row a transaction is answered with a "try again" error
#: instead of being run again (the IDL retries it).
MAX_COMMIT_RETRIES = 100


@dataclass(eq=False, slots=True)
class _Trigger:
    request: Request
    db_name: str
    created_ms: int
    #: Absolute deadline, or None (no timeout): set while the transaction is blocked.
    deadline_ms: int | None = None
    #: Waiting for its database's in-flight commit to finish before it can run.
    queued: bool = False
    #: Handed to the consensus plugin (see :class:`PendingCommit`).
    committing: bool = False
    #: Commits of it the plugin answered with Retry.
    n_retries: int = 0
    #: Being run right now: its own commit retries the waits of its database, and must not
    #: run it a second time (see _try).
    running: bool = False


@dataclass(eq=False)
class PendingCommit:
    """A transaction the I/O layer must commit through its database's plugin."""

    session: Session
    trigger: _Trigger
    outcome: Outcome
    request: CommitRequest


@dataclass(eq=False)
class Session:
    """One client connection's state. The I/O layer sends :attr:`outbox` in order."""

    id: int
    outbox: list[Event] = field(default_factory=list)
    db_change_aware: bool = False
    monitors: dict[str, tuple[str, Monitor]] = field(default_factory=dict)
    #: Monitor keys in ovsdb-server's order (its hash table of monitor ids), which decides
    #: the order of notifications when one commit concerns several monitors.
    monitor_order: OvsHmap = field(default_factory=OvsHmap)
    triggers: dict[str, _Trigger] = field(default_factory=dict)
    closed: bool = False
    n_requests: int = 0
    #: Ids of requests dropped without an answer (a cancelled transaction): the I/O layer
    #: tells its codec to stop expecting a reply.
    abandoned: list[Any] = field(default_factory=list)
    #: The locks view a transaction of this session runs with (see ServerCore._run); it
    #: refers back to the session, so close_session drops it (no cycle left to the collector).
    run_locks: _SessionLocks | None = field(default=None, repr=False)

    def drain(self) -> list[Event]:
        out, self.outbox = self.outbox, []
        return out


class _SessionLocks:
    def __init__(self, core: ServerCore, session: Session):
        self._core, self._session = core, session

    def holds(self, lock: str) -> bool:
        return self._core.holds_lock(self._session, lock)


def _all_rows(db: Database) -> Iterator[tuple[str, Row]]:
    for table in db.schema.tables:
        for _, row in db.iter_rows(table):
            yield table, row


def _syntax_error_reply(req: Request, details: str) -> ErrorReply:
    """ovsdb-server's ``syntax_error_reply``: "<method>: <details>" with params as syntax."""
    return ErrorReply(req.id, D.syntax_error(req.params, f"{req.method}: {details}").to_json())


class ServerCore:
    """Everything one OVSDB server knows, shared by all its sessions."""

    def __init__(self, databases: Mapping[str, Database], *, now_ms: Callable[[], int],
                 server_id: str | None = None, model: str = "standalone",
                 lock_gate: LockGate | None = None,
                 txn_history: int = DEFAULT_MAX_TXNS):
        if "_Server" in databases:
            raise ValueError("_Server is the server's own database")
        self.now_ms = now_ms
        self.server_id = server_id or str(uuidlib.uuid4())
        self.locks = LockTable()
        self.lock_gate = lock_gate
        #: Commits for the I/O layer to hand to plugins (it empties the list).
        self.commits: list[PendingCommit] = []
        self._inflight: dict[str, PendingCommit] = {}
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.server_db = _build_server_db(databases, model)
        self.databases: dict[str, Database] = {"_Server": self.server_db, **databases}
        # ovsdb-server lists databases in its hash-table order; _Server is added last.
        self._db_order = list(shash_order([*databases, "_Server"]))
        self.n_commits = 0
        #: Recent transactions per database, for monitor_cond_since (``txn_history`` = 0:
        #: none, as a standalone ovsdb-server: every resume is a full dump).
        self.histories: dict[str, TxnHistory] = {} if txn_history <= 0 else {
            name: TxnHistory(db.schema.tables, _all_rows(db), max_txns=txn_history)
            for name, db in databases.items()}
        #: Set when a transaction starts waiting (the I/O layer re-arms its timer and clears
        #: it); completed waits need no timer change.
        self.waits_changed = False
        #: Transaction ids (update3, monitor_cond_since): a random prefix per server, then a
        #: counter, so ids never repeat across restarts (a resuming client's id from an
        #: earlier run is never found) without 16 random bytes per commit.
        self._txn_prefix = random_uuid()[:24]
        self._txn_ids = itertools.count(1)
        #: See _schema_json: id(schema) -> (schema, its JSON).
        self._schema_jsons: dict[int, tuple[DatabaseSchema, Any]] = {}

    # --- sessions -------------------------------------------------------------------------

    def open_session(self) -> Session:
        s = Session(next(self._ids))
        self.sessions[s.id] = s
        return s

    def close_session(self, s: Session) -> None:
        if s.closed:
            return
        s.closed = True
        self.sessions.pop(s.id, None)
        names = self.locks.names_of(s)
        for name, owner in self.locks.release_all(s):
            if self._gate_held(name):
                self._notify(owner, "locked", [name])
        for name in names:
            self._maybe_release(name)
        s.triggers.clear()
        s.monitors.clear()
        s.monitor_order = OvsHmap()
        s.outbox.clear()
        s.run_locks = None

    def _notify(self, s: Any, method: str, params: list[Any]) -> None:
        if isinstance(s, Session) and not s.closed:
            s.outbox.append(Notification(method, params))

    # --- dispatch -------------------------------------------------------------------------

    def handle(self, s: Session, event: Event) -> str | None:
        """Process one message from ``s``; replies and notifications land in outboxes.

        Returns a reason when the session must be disconnected (as ovsdb-server does when a
        client sends a reply it did not ask for), else ``None``.
        """
        if s.closed:
            return None
        if type(event) is not Request:  # (a request, mostly: one test, not three)
            if isinstance(event, Notification):
                if event.method == "cancel":
                    self._cancel(s, event.params)
                return None
            if isinstance(event, Reply):
                return None if event.id == "echo" else "received unexpected reply message"
            if isinstance(event, ErrorReply):
                return "received unexpected error message"
        s.n_requests += 1
        req = event
        method = req.method
        if method == "transact":
            db = self._lookup_db(s, req)
            if db is not None:
                self._transact(s, req, db)
        elif method in _MONITOR_METHODS:
            db = self._lookup_db(s, req)
            if db is not None:
                s.outbox.append(self._monitor(s, req, db, _MONITOR_METHODS[method]))
        elif method == "monitor_cond_change":
            s.outbox.extend(self._monitor_cond_change(s, req))
        elif method == "monitor_cancel":
            s.outbox.append(self._monitor_cancel(s, req))
        elif method == "get_schema":
            db = self._lookup_db(s, req)
            if db is not None:
                s.outbox.append(Reply(req.id, self._schema_json(db)))
        elif method == "list_dbs":
            s.outbox.append(Reply(req.id, list(self._db_order)))
        elif method == "get_server_id":
            s.outbox.append(Reply(req.id, self.server_id))
        elif method in ("lock", "steal"):
            s.outbox.append(self._lock(s, req, LockMode(method)))
        elif method == "unlock":
            s.outbox.append(self._unlock(s, req))
        elif method == "set_db_change_aware":
            p = req.params
            if len(p) != 1 or not isinstance(p[0], bool):
                s.outbox.append(_syntax_error_reply(req, "true or false parameter expected"))
            else:
                s.db_change_aware = p[0]
                s.outbox.append(Reply(req.id, {}))
        elif method == "echo":
            s.outbox.append(Reply(req.id, req.params))
        else:
            s.outbox.append(ErrorReply(req.id, "unknown method"))
        return None

    def _schema_json(self, db: Database) -> Any:
        """``get_schema``'s answer, built once per schema: every IDL client asks for it when
        it connects (ovn-nbctl on each run), and the OVN Northbound's takes ~0.6 ms to build
        (the reply is only ever encoded, never changed)."""
        schema = db.schema
        cached = self._schema_jsons.get(id(schema))
        if cached is None or cached[0] is not schema:
            cached = self._schema_jsons[id(schema)] = (schema, schema.to_json())
        return cached[1]

    def _lookup_db(self, s: Session, req: Request) -> Database | None:
        p = req.params
        if not p or not isinstance(p[0], str):
            err = D.syntax_error(p, f"{req.method} request params must begin with <db-name>")
        else:
            db = self.databases.get(p[0])
            if db is not None:
                return db
            err = D.syntax_error(p, f"{req.method} request specifies unknown database {p[0]}",
                                 tag="unknown database")
        s.outbox.append(ErrorReply(req.id, err.to_json()))
        return None

    # --- transactions and waits -----------------------------------------------------------

    def _transact(self, s: Session, req: Request, db: Database) -> None:
        triggers = s.triggers
        if triggers and monitor_key(req.id) in triggers:  # (none pending: the usual case)
            s.outbox.append(_syntax_error_reply(req, "duplicate request ID"))
            return
        now = self.now_ms()
        t = _Trigger(req, req.params[0], now)
        # Its first run is when it came (0 ms elapsed), and not through _try: nothing can
        # find it running, as it is in no session's triggers yet.
        if not self._run(s, t, now):
            # (_run has flagged waits_changed if it now waits with a deadline; queued and
            # committing transactions have none, so the timer task need not wake for them)
            triggers[monitor_key(req.id)] = t

    def _try(self, s: Session, t: _Trigger, now: int | None = None) -> bool:
        """Run a transaction; False if it is still pending (blocked on a ``wait``, queued
        behind its database's in-flight commit, or committing)."""
        t.running = True
        try:
            return self._run(s, t, now)
        finally:
            t.running = False

    def _run(self, s: Session, t: _Trigger, now: int | None) -> bool:
        db = self.databases[t.db_name]
        ops = t.request.params[1:]
        split = getattr(db, "is_linearizable", None)  # tables of both levels: per transaction
        linearizable = split(ops) if split is not None else getattr(db, "linearizable", False)
        if (getattr(db, "forwards", False) and not _waits_on_time(ops)
                and all(self.holds_lock(s, lock) for lock in asserted_locks(ops))):
            # (an assert of a lock this session does not own runs locally: "not owner";
            # the cluster would only check the node's shared session)
            # The plugin runs the transaction itself (a relay to a clustered ovsdb-server):
            # no local run, and no need to hold others back (the cluster orders them).
            self.commits.append(PendingCommit(s, t, Outcome(None), CommitRequest(
                t.db_name, ops, None, ReadSet(), db.revision,  # type: ignore[attr-defined]
                asserted_locks(ops), forward=True)))
            t.committing = True
            return False
        if linearizable and t.db_name in self._inflight:
            t.queued = True
            return False
        t.queued = False
        now = self.now_ms() if now is None else now
        locks = s.run_locks
        if locks is None:  # (made once a session, not once a transaction)
            locks = s.run_locks = _SessionLocks(self, s)
        outcome = db.execute(ops, locks=locks, elapsed_ms=now - t.created_ms)
        if outcome.blocked:
            t.deadline_ms = (None if outcome.timeout_ms is None
                             else t.created_ms + outcome.timeout_ms)
            self.waits_changed = True  # the timer task must learn the (new) deadline
            return False
        if linearizable:
            request = CommitRequest(t.db_name, ops, outcome.changeset or None,
                                    outcome.read_set, db.revision,  # type: ignore[attr-defined]
                                    asserted_locks(ops))
            pending = PendingCommit(s, t, outcome, request)
            self._inflight[t.db_name] = pending
            self.commits.append(pending)
            t.committing = True
            return False
        changeset = outcome.changeset
        # (bool(changeset), and _retry_waits' test for a waiting transaction, inline: two
        # Python calls a commit)
        if changeset is not None and any(changeset.tables.values()):
            self._committed(t.db_name, changeset)
            s.outbox.append(Reply(t.request.id, outcome.results))
            for other in self.sessions.values():
                if other.triggers:
                    self._retry_waits(t.db_name)
                    break
        else:
            s.outbox.append(Reply(t.request.id, outcome.results))
        return True

    def commit_finished(self, pending: PendingCommit, result: CommitOutcome) -> None:
        """The plugin's answer for ``pending``; with :class:`Applied` the store's change feed
        has already published the changes (so monitors heard of them before this reply)."""
        s, t = pending.session, pending.trigger
        if self._inflight.get(t.db_name) is pending:
            del self._inflight[t.db_name]
        t.committing = False
        key = monitor_key(t.request.id)
        live = not s.closed and s.triggers.get(key) is t
        reply: list[Any] | None = None
        if isinstance(result, Applied):
            reply = result.results if result.results is not None else pending.outcome.results
        elif isinstance(result, Failed):
            reply = [*(pending.outcome.results or []), result.error]
        elif isinstance(result, Retry):
            t.n_retries += 1
            if t.n_retries > MAX_COMMIT_RETRIES:
                log.warning("transaction %r on %s: %d conflicts in a row, giving up (%s)",
                            t.request.id, t.db_name, t.n_retries - 1, result.reason)
                reply = [*(pending.outcome.results or []), OvsdbError(
                    "try again", f"commit conflicted {t.n_retries - 1} times: "
                    f"{result.reason}").to_json()]
        if reply is not None and live:
            del s.triggers[key]
            s.outbox.append(Reply(t.request.id, reply))
        self._retry_waits(t.db_name)

    def _committed(self, db_name: str, changeset: Changeset) -> None:
        self.n_commits += 1
        history = self.histories.get(db_name)
        txn_id = ZERO_UUID
        if history is not None:
            txn_id = f"{self._txn_prefix}{next(self._txn_ids) & 0xffffffffffff:012x}"
            history.record(txn_id, changeset)
        for other in self.sessions.values():  # (monitors only queue: no session goes)
            if not other.monitors:
                continue
            for key in other.monitor_order:
                db, mon = other.monitors[key]
                if db != db_name:
                    continue
                updates = mon.changes(changeset)
                if updates:
                    # (_update_params, inline)
                    other.outbox.append(Notification(
                        _UPDATE_METHOD[mon.version],
                        [mon.id, txn_id, updates] if mon.version is _V3
                        else [mon.id, updates]))

    def publish(self, db_name: str, changeset: Changeset) -> None:
        """Tell monitors and pending waits about a change that did not come from a session
        (a merge of a peer's update into a replica, a consensus plugin's change feed)."""
        if db_name not in self.databases or db_name == "_Server":
            raise ValueError(f"unknown database {db_name!r}")
        if changeset:  # (an empty one: the store can take writes again, see Replica.thaw)
            self._committed(db_name, changeset)
        self._retry_waits(db_name)

    def _update_params(self, mon: Monitor, updates: Any, txn_id: str = ZERO_UUID
                       ) -> list[Any]:
        if mon.version is _V3:
            return [mon.id, txn_id, updates]
        return [mon.id, updates]

    def _retry_waits(self, db_name: str) -> None:
        for s in self.sessions.values():
            if s.triggers:
                break
        else:
            return  # nothing waits (the usual case: every commit asks)
        progress = True
        while progress:
            progress = False
            for s in list(self.sessions.values()):
                if not s.triggers:
                    continue
                for key, t in list(s.triggers.items()):
                    if t.committing or t.running or t.db_name in self._inflight:
                        continue
                    if t.db_name == db_name and s.triggers.get(key) is t and self._try(s, t):
                        del s.triggers[key]
                        progress = True

    def run_timers(self) -> None:
        """Complete the waits whose timeout has passed (each answers "timed out")."""
        now = self.now_ms()
        for s in list(self.sessions.values()):
            for key, t in list(s.triggers.items()):
                # Evaluated as of the deadline, so a late wakeup still reports the timeout
                # the client asked for.
                if (t.deadline_ms is not None and now >= t.deadline_ms and not t.committing
                        and not t.running and t.db_name not in self._inflight
                        and self._try(s, t, now=t.deadline_ms)):
                    del s.triggers[key]

    def next_deadline_ms(self) -> int | None:
        deadlines = [t.deadline_ms for s in self.sessions.values()
                     for t in s.triggers.values()
                     if t.deadline_ms is not None and not t.committing and not t.queued
                     and t.db_name not in self._inflight]  # commit_finished retries those
        return min(deadlines) if deadlines else None

    def _cancel(self, s: Session, params: list[Any]) -> None:
        if len(params) != 1:
            return
        t = s.triggers.pop(monitor_key(params[0]), None)
        if t is None:
            return
        if s.db_change_aware:
            s.outbox.append(ErrorReply(t.request.id, "canceled"))
        else:
            s.abandoned.append(t.request.id)

    # --- monitors -------------------------------------------------------------------------

    def _monitor(self, s: Session, req: Request, db: Database, version: Version) -> Event:
        p = req.params
        # ovsdb-server checks the count for monitor_cond(_since) only; plain monitor ignores
        # extra params (and crashes on missing ones, which we answer instead).
        if ((version is Version.V3 and len(p) != 4) or (version is Version.V2 and len(p) != 3)
                or len(p) < 3):
            return ErrorReply(req.id, D.syntax_error(p, "invalid parameters").to_json())
        monitor_id, requests = p[1], p[2]
        try:
            if not isinstance(requests, dict):
                raise D.syntax_error(requests, "monitor-requests must be object")
            if monitor_key(monitor_id) in s.monitors:
                raise D.syntax_error(monitor_id, "duplicate monitor ID")
            mon = Monitor(db.schema, monitor_id, requests, version)
            if version is Version.V3:
                last_id = p[3]
                if not isinstance(last_id, str):
                    raise D.syntax_error(last_id, "last-txn-id must be string")
                if not D.is_uuid(last_id):
                    raise D.syntax_error(last_id, "last-txn-id must be UUID format.")
        except OvsdbError as err:
            return ErrorReply(req.id, err.to_json())
        s.monitors[monitor_key(monitor_id)] = (p[0], mon)
        s.monitor_order.insert(json_hash(monitor_id), monitor_key(monitor_id))
        history = self.histories.get(p[0])
        if version is Version.V3 and history is not None:
            since = history.changes_after(p[3])
            if since is not None:
                # Only what the client missed (ovsdb-server sends {} when that is nothing).
                return Reply(req.id, [True, history.last_txn_id, mon.changes(since) or {}])
        initial = mon.initial(db)
        if version is Version.V3:
            last_id = history.last_txn_id if history is not None else ZERO_UUID
            return Reply(req.id, [False, last_id, initial])
        return Reply(req.id, initial)

    def _monitor_cond_change(self, s: Session, req: Request) -> list[Event]:
        p = req.params
        try:
            if len(p) != 3:
                raise D.syntax_error(p, "invalid parameters")
            entry = s.monitors.get(monitor_key(p[0]))
            if entry is None:
                raise D.syntax_error(p[0], "unknown monitor session")
            db_name, mon = entry
            new_id = p[1]
            changing = monitor_key(new_id) != monitor_key(p[0])
            if changing and monitor_key(new_id) in s.monitors:
                raise D.syntax_error(new_id, "duplicate monitor ID")
            updates = mon.change_conditions(p[2], self.databases[db_name])
        except OvsdbError as err:
            return [ErrorReply(req.id, err.to_json())]
        if changing:
            del s.monitors[monitor_key(p[0])]
            s.monitor_order.remove(json_hash(p[0]), monitor_key(p[0]))
            mon.id = new_id
            s.monitors[monitor_key(new_id)] = (db_name, mon)
            s.monitor_order.insert(json_hash(new_id), monitor_key(new_id))
        out: list[Event] = []
        if updates:
            out.append(Notification(_UPDATE_METHOD[mon.version],
                                    self._update_params(mon, updates)))
        out.append(Reply(req.id, {}))
        return out

    def _monitor_cancel(self, s: Session, req: Request) -> Event:
        if len(req.params) != 1:
            return ErrorReply(req.id, "invalid parameters")
        if s.monitors.pop(monitor_key(req.params[0]), None) is None:
            return ErrorReply(req.id, "unknown monitor")
        s.monitor_order.remove(json_hash(req.params[0]), monitor_key(req.params[0]))
        return Reply(req.id, {})

    # --- locks ----------------------------------------------------------------------------

    def _lock_name(self, req: Request) -> str | None:
        p = req.params
        if len(p) != 1 or not isinstance(p[0], str) or not is_id(p[0]):
            return None
        return p[0]

    def _lock(self, s: Session, req: Request, mode: LockMode) -> Event:
        name = self._lock_name(req)
        if name is None:
            return ErrorReply(req.id, D.syntax_error(
                req.params, f"{req.method} request params must be <id>").to_json())
        if self.locks.has_waiter(s, name):
            return ErrorReply(req.id, D.syntax_error(
                req.params, f'must issue "unlock" before new "{req.method}"').to_json())
        owner, victim = self.locks.acquire(s, name, mode)
        if self.lock_gate is None:
            if victim is not None:
                self._notify(victim, "stolen", [name])
            return Reply(req.id, {"locked": owner})
        held = self.lock_gate.held(name)
        if victim is not None and held:
            self._notify(victim, "stolen", [name])
        if not held:
            # A steal is granted at once, as ovsdb-server does; this node takes the lock from
            # the cluster in the background, and until it has, the transactions that assert the
            # lock fail ("not owner") instead of committing.
            self.lock_gate.want(name, steal=mode is LockMode.STEAL)
        return Reply(req.id, {"locked": owner and (held or mode is LockMode.STEAL)})

    def _unlock(self, s: Session, req: Request) -> Event:
        name = self._lock_name(req)
        if name is None:
            return ErrorReply(req.id, D.syntax_error(
                req.params, f"{req.method} request params must be <id>").to_json())
        if not self.locks.has_waiter(s, name):
            return _syntax_error_reply(req, '"unlock" without "lock" or "steal"')
        new_owner = self.locks.release(s, name)
        if new_owner is not None and self._gate_held(name):
            self._notify(new_owner, "locked", [name])
        self._maybe_release(name)
        return Reply(req.id, {})

    def pending_commits(self, s: Session) -> int:
        """``s``'s transactions waiting for a plugin (queued behind a commit, or committing)."""
        if not s.triggers:  # (asked before every request a client sends)
            return 0
        return sum(1 for t in s.triggers.values() if t.queued or t.committing)

    def holds_lock(self, s: Session, name: str) -> bool:
        return self.locks.holds(s, name) and self._gate_held(name)

    def _gate_held(self, name: str) -> bool:
        return self.lock_gate is None or self.lock_gate.held(name)

    def _maybe_release(self, name: str) -> None:
        if self.lock_gate is not None and self.locks.owner(name) is None:
            self.lock_gate.release(name)

    def lock_changed(self, name: str, held: bool) -> None:
        """The lock gate took (``held``) or lost ``name`` cluster-wide: tell the local owner
        "locked" or "stolen"; after a loss this node keeps contending while anyone waits."""
        owner = self.locks.owner(name)
        if owner is None:
            if held and self.lock_gate is not None:
                self.lock_gate.release(name)
            return
        self._notify(owner, "locked" if held else "stolen", [name])
        if not held and self.lock_gate is not None:
            self.lock_gate.want(name, steal=False)

    def statistics(self) -> dict[str, int]:
        return {"sessions": len(self.sessions), "commits": self.n_commits,
                "monitors": sum(len(s.monitors) for s in self.sessions.values()),
                "pending_transactions": sum(len(s.triggers) for s in self.sessions.values()),
                "commits_in_flight": len(self._inflight),
                **self.locks.statistics()}


def _waits_on_time(operations: list[Any]) -> bool:
    """Whether a transaction has a ``wait`` that may block (a timeout other than 0): such a
    transaction is first run locally, so that it waits here rather than in the cluster."""
    return any(isinstance(op, dict) and op.get("op") == "wait" and op.get("timeout") != 0
               for op in operations)


def _build_server_db(databases: Mapping[str, Database], model: str) -> MemoryDatabase:
    """The ``_Server`` database: one Database row per database, _Server's own included."""
    schema = DatabaseSchema.from_file(SERVER_SCHEMA_PATH)
    db = MemoryDatabase(schema)
    table = schema.tables["Database"]
    cols = table.columns
    rows: dict[str, RowChange] = {}
    for name, sch in [("_Server", schema), *((n, d.schema) for n, d in databases.items())]:
        row = list(table.default_row)
        uuid = str(uuidlib.uuid4())
        row[0] = (uuid,)
        row[1] = (str(uuidlib.uuid4()),)
        row[cols["name"].index] = (name,)
        row[cols["model"].index] = (model if name != "_Server" else "standalone",)
        row[cols["connected"].index] = (True,)
        row[cols["leader"].index] = (True,)
        row[cols["schema"].index] = (json.dumps(sch.to_json(), separators=(",", ":"),
                                                sort_keys=True),)
        rows[uuid] = RowChange(None, tuple(row))
    db.apply(Changeset({"Database": rows}))
    return db
