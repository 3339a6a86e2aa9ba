"""The ``ovsdb`` plugin: linearizable databases kept by a real clustered (Raft) ovsdb-server.

A crdtdb node is then an OVSDB relay for these databases. It keeps one connection to the
cluster's *leader* (found through ``_Server``, as the IDL does with leader-only) and does
everything over it:

* a ``monitor`` of every table keeps the node's cache; ovsdb-server sends a session's own
  updates before its transaction's reply, and the connection's reader applies each update
  to the cache as it reads it (before it looks at the next message), so once the reply is
  in, the cache shows the commit: no further wait, no task switch;
* transactions are forwarded as the client sent them: the cluster executes and linearizes
  them (its own verify and prerequisite checks), and its result array goes back unchanged;
* locks are taken on that same session on behalf of the node's sessions, so an OVSDB
  ``assert`` in a forwarded transaction is checked by the cluster against the very session
  that holds the lock: fencing comes for free.

When the leader changes (or the connection drops), the node reconnects to the new leader,
reloads the cache (a fresh monitor, diffed against the cache) and takes its locks again; its
sessions hear "stolen" in between. A transaction whose connection dropped mid-flight may or
may not have committed: it is answered with an explicit "commit outcome unknown" error,
never retried blindly (a retry could apply it twice).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from crdtdb.consensus.commit import Applied, CommitOutcome, CommitRequest, Failed
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.engine import data as D
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Changeset, Row, RowChange
from crdtdb.engine.transaction import random_uuid
from crdtdb.errors import CrdtdbError, OvsdbError
from crdtdb.ovsdb.client import (
    DEFAULT_MAX_QUEUED_NOTIFICATIONS,
    ConnectFailed,
    ConnectionLost,
    Notification,
    OvsdbClient,
    RpcError,
    is_leader,
    open_ovsdb_client,
    parse_remotes,
)
from crdtdb.ovsdb.jsonrpc import ErrorReply, Reply

log = logging.getLogger(__name__)

_SERVER_MONITOR = "crdtdb-relay-_Server"


class RelayError(CrdtdbError):
    """The cluster answered something the relay cannot use (a schema mismatch, a bad
    update)."""


@dataclass(frozen=True, slots=True)
class RelayOptions:
    connect_timeout_s: float = 2.0
    #: Pause between attempts to find a leader (doubling up to the max).
    backoff_s_min: float = 0.05
    backoff_s_max: float = 1.0
    #: Distinct locks this node asks the leader for at once; beyond, clients wait unlocked
    #: (with a warning in the log).
    max_locks: int = 1024


@dataclass(eq=False)
class _Feed:
    """The notifications of one connection to the leader. Its client's reader hands each one
    to :meth:`OvsdbRelay._notified` as it reads it; until the caches are loaded from the
    monitors' initial replies they are kept, in order, in ``backlog``."""

    backlog: list[Notification] | None = field(default_factory=list)


def _row_from_json(table: TableSchema, uuid: str, cols: dict[str, Any],
                   base: Row | None) -> Row:
    row = list(base if base is not None else table.default_row)
    row[0] = (uuid,)
    for name, value in cols.items():
        col = table.columns.get(name)
        if col is None:
            raise RelayError(f"{table.name}: the cluster sent unknown column {name!r}")
        try:
            row[col.index] = D.datum_from_json(col.type, value)
        except OvsdbError as exc:
            raise RelayError(f"{table.name}.{name}: bad value from the cluster: {exc}") \
                from None
    # The cluster's _version is not monitored; the cache keeps its own per modification.
    row[1] = (random_uuid(),)
    return tuple(row)


class OvsdbRelay:
    """One node's relay to a clustered ovsdb-server. Use :func:`open_ovsdb_relay`."""

    def __init__(self, remotes: str, schemas: Iterable[DatabaseSchema], *,
                 options: RelayOptions):
        self.remotes = [str(r) for r in parse_remotes(remotes)]
        self.options = options
        # The cluster runs and orders the transactions: the core forwards them as sent,
        # several at a time (see crdtdb.ovsdb.core).
        self.databases: dict[str, LinearizableDatabase] = {
            s.name: LinearizableDatabase(s, MemoryDatabase(s), self, forwards=True)
            for s in schemas}
        self.locks = RelayLockGate(self)
        self._client: OvsdbClient | None = None
        #: Set (then replaced) each time a connection to the leader has loaded the caches.
        self._went_live = trio.Event()
        self._was_up = False
        self.n_connects = 0
        self.n_commits = 0
        self.n_unknown_outcomes = 0

    # --- connection -----------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected to the leader, forever. ``started`` once a first cache is loaded."""
        backoff_s = self.options.backoff_s_min
        status: Any = task_status
        while True:
            try:
                await self._session(status)
            except (ConnectFailed, ConnectionLost, RpcError, RelayError) as exc:
                log.warning("ovsdb cluster: %s; looking for the leader again", exc)
            except _NotLeader as exc:
                log.info("ovsdb cluster: %s; looking for the leader again", exc)
            if self.n_connects:
                status = trio.TASK_STATUS_IGNORED
                backoff_s = self.options.backoff_s_min if self._was_up else backoff_s
            self._was_up = False
            await trio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.options.backoff_s_max)

    async def _connect_leader(self, stack: AsyncExitStack) -> tuple[OvsdbClient, _Feed]:
        """Connect to each remote in turn; keep the first that is the connected leader of
        every database the relay serves (a standalone server is its own leader)."""
        failures: list[str] = []
        for remote in self.remotes:
            feed = _Feed()
            try:
                async with AsyncExitStack() as attempt:
                    client = await attempt.enter_async_context(open_ovsdb_client(
                        remote, connect_timeout_s=self.options.connect_timeout_s,
                        on_notification=lambda note, feed=feed: self._notified(feed, note)))
                    leader = True
                    for name in self.databases:
                        leader = leader and await is_leader(client, name)
                    if leader:
                        await stack.enter_async_context(attempt.pop_all())
                        log.info("ovsdb cluster: connected to the leader at %s", remote)
                        return client, feed
                    failures.append(f"{remote}: not the leader")
            except (ConnectFailed, ConnectionLost, RpcError, CrdtdbError) as exc:
                failures.append(f"{remote}: {exc}")
        raise _NotLeader("no leader among " + "; ".join(failures))

    async def _session(self, task_status: Any) -> None:
        async with AsyncExitStack() as stack:
            client, feed = await self._connect_leader(stack)
            try:
                status = await client.call("monitor", ["_Server", _SERVER_MONITOR, {
                    "Database": {"columns": ["name", "leader", "connected"]}}])
                # The member may have lost the leadership since is_leader() said yes (a
                # paused leader that wakes up): the monitor's own first state decides, and
                # every later change arrives as an update. Without this check the relay
                # could stay on a follower, whose locks are its own (OVSDB locks are per
                # server), so another node could hold the same lock on the real leader.
                self._check_leader(status)
                for name, db in self.databases.items():
                    initial = await client.call("monitor", [
                        name, name, {t: {} for t in db.schema.tables}])
                    self._reload(db, initial)
                # What arrived after the initial replies, in order; from now on the reader
                # applies each notification itself (no await from here to there).
                backlog, feed.backlog = feed.backlog or [], None
                for note in backlog:
                    self._handle(note)
                self.n_connects += 1
                self._was_up = True
                self._client = client
                self._went_live.set()
                self._went_live = trio.Event()
                task_status.started()
                self.locks.reconnected(client)
                await client.wait_disconnected()
                lost = client.lost
                if lost is not None:
                    # A notification the relay could not use ends the connection: say why.
                    cause = lost.__cause__
                    if isinstance(cause, _NotLeader | RelayError):
                        raise cause
                    if cause is not None and not isinstance(cause, OSError):
                        log.error("ovsdb cluster: applying a notification failed",
                                  exc_info=cause)
                    raise lost
            finally:
                self._client = None
                self.locks.disconnected()

    def _reload(self, db: LinearizableDatabase, initial: dict[str, Any]) -> None:
        """Make the cache equal to a full dump, as one feed change."""
        rows: dict[tuple[str, str], Row] = {}
        for tname, trows in (initial or {}).items():
            table = db.schema.tables[tname]
            for uuid, upd in trows.items():
                rows[(tname, uuid)] = _row_from_json(table, uuid, upd.get("new", {}),
                                                     db.get_row(tname, uuid))
        cs = Changeset()
        for tname in db.schema.tables:
            for uuid, old in db.iter_rows(tname):
                new = rows.get((tname, uuid))
                if new is None or new[2:] != old[2:]:
                    cs.tables.setdefault(tname, {})[uuid] = RowChange(old, new)
        for (tname, uuid), new in rows.items():
            if db.get_row(tname, uuid) is None:
                cs.tables.setdefault(tname, {})[uuid] = RowChange(None, new)
        db.apply_feed(db.revision + 1, cs)
        log.info("%s: loaded %d rows from the ovsdb cluster", db.schema.name, len(rows))

    def _notified(self, feed: _Feed, note: Notification) -> None:
        """From the client's reader, as each notification is read. Raising ends the
        connection (the session then says why and looks for the leader again)."""
        if feed.backlog is not None:
            if len(feed.backlog) >= DEFAULT_MAX_QUEUED_NOTIFICATIONS:
                raise RelayError(f"{len(feed.backlog)} notifications arrived while the "
                                 "caches were loading")
            feed.backlog.append(note)
        else:
            self._handle(note)

    def _handle(self, note: Notification) -> None:
        method, params = note.method, note.params
        if method == "update" and len(params) == 2:
            mon, updates = params
            if mon == _SERVER_MONITOR:
                self._check_leader(updates)
            elif mon in self.databases:
                self._apply_update(self.databases[mon], updates)
        elif method in ("locked", "stolen") and params:
            self.locks.notified(str(params[0]), method == "locked")

    def _check_leader(self, updates: dict[str, Any]) -> None:
        for upd in updates.get("Database", {}).values():
            new = upd.get("new")
            if new is None or new.get("name") not in self.databases:
                continue
            if new.get("leader") is False or new.get("connected") is False:
                raise _NotLeader(f"{new.get('name')}: this member is no longer the leader")

    def _apply_update(self, db: LinearizableDatabase, updates: dict[str, Any]) -> None:
        cs = Changeset()
        for tname, trows in updates.items():
            table = db.schema.tables.get(tname)
            if table is None:
                raise RelayError(f"update for unknown table {tname!r}")
            for uuid, upd in trows.items():
                old = db.get_row(tname, uuid)
                new_json = upd.get("new")
                new = (None if new_json is None
                       else _row_from_json(table, uuid, new_json, old))
                if old is not None or new is not None:
                    cs.tables.setdefault(tname, {})[uuid] = RowChange(old, new)
        db.apply_feed(db.revision + 1, cs)

    # --- commits --------------------------------------------------------------------------

    def submit(self, db: LinearizableDatabase, request: CommitRequest,
               done: Callable[[CommitOutcome], None]) -> bool:
        """Forward ``request`` now, from the caller's task, if the leader's connection is
        up; ``done`` gets the outcome from that connection's reader, right after it applied
        the updates the commit caused (what :meth:`commit` answers, without a task per
        commit and the scheduler passes it costs). False: use :meth:`commit`."""
        if not request.forward and not request.changeset:
            return False  # commit() answers it at once
        client = self._client
        if client is None or not client.connected:
            return False  # commit() waits for the leader

        def on_reply(reply: Reply | ErrorReply | None) -> None:
            if reply is None:
                done(self._unknown_outcome(client.lost or "the connection was closed"))
            elif isinstance(reply, ErrorReply):
                done(self._rpc_failed(reply.error))
            elif not isinstance(reply.result, list):
                log.error("ovsdb cluster: transact result is not an array: %r", reply.result)
                done(Failed({"error": "internal error",
                             "details": "the cluster's transact result is not an array"}))
            else:
                self.n_commits += 1
                done(Applied(reply.result))

        client.send_request("transact", [db.schema.name, *request.operations], on_reply)
        return True

    async def commit(self, db: LinearizableDatabase, request: CommitRequest) -> CommitOutcome:
        if not request.forward and not request.changeset:
            # The core ran it here (a wait that may block, or an assert of a lock the
            # session does not own) and it changed nothing: its local answer stands.
            return Applied()
        name = db.schema.name
        while True:
            client = self._client
            if client is None or not client.connected:
                await self._went_live.wait()
                continue
            try:
                # The reply comes after the updates the commit caused, and the reader has
                # applied those to the cache by the time the reply is handed over.
                results = await client.transact(name, request.operations)
            except (ConnectionLost, trio.ClosedResourceError) as exc:
                return self._unknown_outcome(exc)
            except RpcError as exc:
                return self._rpc_failed(exc.error)
            self.n_commits += 1
            return Applied(results)

    def _unknown_outcome(self, why: object) -> Failed:
        """Cut off mid-flight: it may have committed, so it is never retried blindly."""
        self.n_unknown_outcomes += 1
        return Failed({"error": "commit outcome unknown", "details": (
            f"the connection to the ovsdb cluster was lost while committing ({why}): "
            "the transaction may or may not have been applied")})

    @staticmethod
    def _rpc_failed(error: Any) -> Failed:
        """A JSON-RPC error for the request as a whole: the client gets it too."""
        return Failed(error if isinstance(error, dict) else {"error": str(error)})

    def statistics(self) -> dict[str, int]:
        return {"connects": self.n_connects, "commits": self.n_commits,
                "unknown_outcomes": self.n_unknown_outcomes, **self.locks.statistics()}


class _NotLeader(CrdtdbError):
    """The member connected to is not (or no longer) the leader."""


class RelayLockGate:
    """OVSDB locks held in the cluster's leader, on the relay's one session.

    ovsdb-server's locks live in the leader's memory (OVN's ovn-northd instances all connect
    to the leader for that reason); the relay asks for them there on behalf of this node's
    sessions, and forwarded transactions' ``assert`` are checked against that session.
    """

    def __init__(self, relay: OvsdbRelay):
        self._relay = relay
        self._held: set[str] = set()
        self._wanted: dict[str, bool] = {}  # name -> steal
        self._client: OvsdbClient | None = None
        self._nursery: trio.Nursery | None = None
        #: Told (name, held) on every change: the server's ``lock_changed``.
        self.on_change: Callable[[str, bool], None] = lambda name, held: None
        self.n_acquired = 0
        self.n_lost = 0

    def held(self, name: str) -> bool:
        return name in self._held

    def want(self, name: str, *, steal: bool) -> None:
        first = name not in self._wanted
        if first and len(self._wanted) >= self._relay.options.max_locks:
            log.warning("lock %s: not asked for: this node already asks for %d locks "
                        "(max_locks)", name, len(self._wanted))
            return
        self._wanted[name] = self._wanted.get(name, False) or steal
        if self._client is not None and (first or steal):
            self._send(self._client, name, steal)

    def release(self, name: str) -> None:
        if self._wanted.pop(name, None) is None:
            return
        self._held.discard(name)
        client = self._client
        if client is not None and self._nursery is not None:
            self._nursery.start_soon(self._call, client, "unlock", name)

    def _send(self, client: OvsdbClient, name: str, steal: bool) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._call, client, "steal" if steal else "lock", name)

    async def _call(self, client: OvsdbClient, method: str, name: str) -> None:
        try:
            result = await client.call(method, [name])
        except (ConnectionLost, RpcError, trio.ClosedResourceError) as exc:
            log.warning("lock %s: %s failed: %s", name, method, exc)
            return
        if method != "unlock" and isinstance(result, dict) and result.get("locked") is True:
            self.notified(name, True)

    def notified(self, name: str, held: bool) -> None:
        """A "locked"/"stolen" notification (or a lock/steal reply) from the leader."""
        if held:
            if name in self._wanted and name not in self._held:
                self._held.add(name)
                self.n_acquired += 1
                log.info("lock %s: acquired by this node", name)
                self.on_change(name, True)
        elif name in self._held:
            self._held.discard(name)
            self.n_lost += 1
            log.warning("lock %s: stolen by another node", name)
            if self._wanted.get(name) and self._client is not None and self._nursery:
                # A robbed steal leaves the leader's queue: queue again, as a plain lock.
                self._wanted[name] = False
                self._nursery.start_soon(self._requeue, self._client, name)
            self.on_change(name, False)

    async def _requeue(self, client: OvsdbClient, name: str) -> None:
        await self._call(client, "unlock", name)
        if name in self._wanted:
            await self._call(client, "lock", name)

    def reconnected(self, client: OvsdbClient) -> None:
        self._client = client
        for name, steal in list(self._wanted.items()):
            self._send(client, name, steal)

    def disconnected(self) -> None:
        self._client = None
        for name in list(self._held):
            self._held.discard(name)
            self.n_lost += 1
            log.warning("lock %s: lost with the connection to the leader", name)
            self.on_change(name, False)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def statistics(self) -> dict[str, int]:
        return {"cluster_locks_held": len(self._held),
                "cluster_locks_acquired": self.n_acquired, "cluster_locks_lost": self.n_lost}


@asynccontextmanager
async def open_ovsdb_relay(remotes: str, schemas: Iterable[DatabaseSchema], *,
                           options: RelayOptions | None = None) -> AsyncIterator[OvsdbRelay]:
    """Relay ``schemas``' databases to the clustered ovsdb-server at ``remotes`` (comma
    separated) until the block exits; returns once the caches are loaded from the leader."""
    relay = OvsdbRelay(remotes, schemas, options=options or RelayOptions())
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.locks.run)
        await nursery.start(relay.run)
        try:
            yield relay
        finally:
            nursery.cancel_scope.cancel()
