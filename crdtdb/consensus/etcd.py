"""The ``etcd`` plugin: linearizable OVSDB databases and cluster-wide locks in a real etcd.

Layout under ``prefix`` (default ``/crdtdb/``), per database ``DB``:

* ``DB/r/TABLE/UUID``: one key per row, its value the row in the engine's tagged binary
  encoding (:func:`crdtdb.engine.binary.encode_row`);
* ``DB/t/TABLE``: a per-table key every commit that changes the table rewrites (its value is
  the commit's id), so that one comparison covers "nothing in this table changed";
* ``_locks/NAME``: an OVSDB lock, held by the node whose token is the value, on that node's
  lease.

A commit is one etcd ``Txn``. Its compares: the ``t`` key of every table the transaction
depended on (read, wrote, or references) has not changed since the revision the transaction
ran against, and this node still holds every lock the transaction asserted (the value is its
token: fencing, since a lease can expire while a node still believes it holds the lock — the
unsafety Jepsen found in etcd's lock recipe). Per-table conflicts are coarse but simple to
prove; a conflicting transaction is run again, as ovsdb-server re-runs one after a Raft
"cluster error".

A commit whose answer was lost (etcd unreachable mid-request) is sent again unchanged: its
compares make it fail if the first attempt landed, and the change feed says whether the
commit's id reached a ``t`` key. So no transaction is applied twice, and none is acknowledged
before the cache (and so every monitor) shows it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from crdtdb.consensus.commit import Applied, CommitOutcome, CommitRequest, Failed, Retry
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.consensus.etcd_client import (
    Compare,
    DeleteRange,
    EtcdClient,
    EtcdCompacted,
    EtcdError,
    EtcdLeaseExpired,
    EtcdRequestError,
    EtcdUnavailable,
    Put,
    Range,
    prefix_end,
)
from crdtdb.engine.binary import decode_row, encode_row
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, RowChange
from crdtdb.errors import CrdtdbError

log = logging.getLogger(__name__)


#: gRPC codes etcd uses for "not now" (resource exhausted, unavailable, deadline exceeded).
_TRANSIENT_CODES = frozenset({4, 8, 14})


class EtcdLayoutError(CrdtdbError):
    """A key under the plugin's prefix is not one the plugin writes (another program shares
    the prefix, or the schema changed): the feed stops rather than guess."""


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    prefix: str = "/crdtdb/"
    #: A node's locks die this long after it stops renewing its lease.
    lock_ttl_s: int = 3
    #: Pause between attempts while etcd is unreachable (doubling up to the max).
    backoff_s_min: float = 0.05
    backoff_s_max: float = 1.0
    #: Commit ids remembered from the feed, to recognize a commit whose answer was lost.
    landed_ids_max: int = 4096
    #: Rows fetched per request when loading a database.
    page_rows: int = 1000
    #: Distinct locks this node contends for at once (each is a task and an etcd key):
    #: clients asking for more wait unlocked, with a warning in the log.
    max_locks: int = 1024


def conflict_tables(schema: DatabaseSchema, request: CommitRequest) -> set[str]:
    """The tables whose change since ``base_revision`` invalidates the transaction: those it
    scanned or looked rows up in, those it writes, those its written rows reference (a
    concurrent delete of a referenced row would leave a dangling reference) and those that
    reference the tables it writes (a concurrent insert of a reference to a row it deletes,
    or garbage-collects, would too)."""
    rs = request.read_set
    out = set(rs.tables) | {t for t, _ in rs.rows}
    if request.changeset:
        written = {t for t, changes in request.changeset.tables.items() if changes}
        out |= written
        for table in schema.tables.values():
            for col in table.ref_columns:
                for base in (col.type.key, col.type.value):
                    target = base.ref_table if base is not None else None
                    if target is None:
                        continue
                    if table.name in written:
                        out.add(target)
                    if target in written:
                        out.add(table.name)
    return out


class _Backoff:
    def __init__(self, opts: EtcdOptions):
        self._opts = opts
        self._delay_s = opts.backoff_s_min

    async def wait(self) -> None:
        await trio.sleep(self._delay_s)
        self._delay_s = min(self._delay_s * 2, self._opts.backoff_s_max)

    def reset(self) -> None:
        self._delay_s = self._opts.backoff_s_min


class EtcdPlugin:
    """The databases and locks of one node, kept in etcd. Use :func:`open_etcd_plugin`."""

    def __init__(self, client: EtcdClient, schemas: Iterable[DatabaseSchema], *,
                 node_id: str, options: EtcdOptions):
        self.client = client
        self.node_id = node_id
        self.options = options
        self.databases: dict[str, LinearizableDatabase] = {
            s.name: LinearizableDatabase(s, MemoryDatabase(s), self) for s in schemas}
        self._landed: OrderedDict[str, int] = OrderedDict()
        self.locks = EtcdLockGate(self)
        self.n_commits = 0
        self.n_retries = 0
        self.n_unknown_outcomes = 0

    # --- keys -----------------------------------------------------------------------------

    def _db_prefix(self, db: str) -> str:
        return f"{self.options.prefix}{db}/"

    def _row_key(self, db: str, table: str, uuid: str) -> bytes:
        return f"{self.options.prefix}{db}/r/{table}/{uuid}".encode()

    def _table_key(self, db: str, table: str) -> bytes:
        return f"{self.options.prefix}{db}/t/{table}".encode()

    def lock_key(self, name: str) -> bytes:
        return f"{self.options.prefix}_locks/{name}".encode()

    # --- loading and the change feed ------------------------------------------------------

    async def load(self) -> None:
        """Read every database from etcd (retrying while it is unreachable)."""
        backoff = _Backoff(self.options)
        for db in self.databases.values():
            while True:
                try:
                    await self._reload(db)
                    break
                except EtcdUnavailable as exc:
                    log.warning("etcd unavailable while loading %s: %s", db.schema.name, exc)
                    await backoff.wait()

    async def _reload(self, db: LinearizableDatabase) -> None:
        """Replace the cache with etcd's current state, as one feed change (after a compaction
        made the watch unable to resume, or at start)."""
        name = db.schema.name
        prefix = f"{self._db_prefix(name)}r/".encode()
        end = prefix_end(prefix)
        rows: dict[tuple[str, str], tuple] = {}
        start, revision = prefix, 0
        while True:
            res = await self.client.range(start, end, revision=revision,
                                          limit=self.options.page_rows)
            revision = revision or res.revision
            for kv in res.kvs:
                table, uuid = self._parse_row_key(name, kv.key)
                rows[(table, uuid)] = decode_row(db.schema.tables[table], kv.value)
            if not res.more or not res.kvs:
                break
            start = res.kvs[-1].key + b"\0"
        cs = Changeset()
        for tname in db.schema.tables:
            for uuid, old in db.iter_rows(tname):
                new = rows.get((tname, uuid))
                if new != old:
                    cs.tables.setdefault(tname, {})[uuid] = RowChange(old, new)
        for (tname, uuid), new in rows.items():
            if db.get_row(tname, uuid) is None:
                cs.tables.setdefault(tname, {})[uuid] = RowChange(None, new)
        # The commit ids of the tables' last commits: a commit whose answer was lost while
        # the feed reloaded is still recognised.
        tprefix = f"{self._db_prefix(name)}t/".encode()
        for kv in (await self.client.range(tprefix, prefix_end(tprefix),
                                           revision=revision)).kvs:
            self._remember(kv.value.decode(errors="replace"), kv.mod_revision)
        if revision > db.revision:
            db.apply_feed(revision, cs)
        log.info("%s: loaded %d rows from etcd at revision %d", name, len(rows), revision)

    def _parse_row_key(self, db: str, key: bytes) -> tuple[str, str]:
        rest = key.decode()[len(self._db_prefix(db)):]
        kind, _, rest = rest.partition("/")
        table, _, uuid = rest.partition("/")
        if kind != "r" or not uuid:
            raise EtcdLayoutError(f"unexpected key {key!r}")
        return table, uuid

    async def run_feed(self, db: LinearizableDatabase) -> None:
        """Keep ``db``'s cache up to date, forever (reconnecting, reloading after a
        compaction)."""
        name = db.schema.name
        prefix = self._db_prefix(name).encode()
        backoff = _Backoff(self.options)
        while True:
            try:
                async with self.client.watch(prefix, prefix_end(prefix),
                                             start_revision=db.revision + 1) as batches:
                    async for batch in batches:
                        backoff.reset()
                        self._apply_events(db, batch.events)
            except EtcdCompacted:
                log.warning("%s: etcd compacted past revision %d; reloading", name,
                            db.revision)
                try:
                    await self._reload(db)
                except EtcdError:
                    await backoff.wait()
            except EtcdUnavailable as exc:
                log.warning("%s: change feed lost (%s); reconnecting", name, exc)
                await backoff.wait()
            except (EtcdError, EtcdLayoutError, ValueError, KeyError) as exc:
                # A watch etcd cancelled, or a key this version cannot read: start over from
                # a full load rather than take the node down.
                log.error("%s: change feed failed (%r); reloading", name, exc)
                await backoff.wait()
                try:
                    await self._reload(db)
                except EtcdError as again:
                    log.warning("%s: reload failed (%s)", name, again)

    def _apply_events(self, db: LinearizableDatabase, events: list[Any]) -> None:
        name = db.schema.name
        tprefix = f"{self._db_prefix(name)}t/".encode()
        by_rev: dict[int, list[Any]] = {}
        for ev in events:
            by_rev.setdefault(ev.kv.mod_revision, []).append(ev)
        for rev in sorted(by_rev):
            if rev <= db.revision:
                continue  # already applied (a reload raced the watch)
            cs = Changeset()
            for ev in by_rev[rev]:
                if ev.kv.key.startswith(tprefix):
                    if ev.type == "PUT":
                        self._remember(ev.kv.value.decode(errors="replace"), rev)
                    continue
                table, uuid = self._parse_row_key(name, ev.kv.key)
                old = cs.tables.get(table, {}).get(uuid)
                before = old.old if old is not None else db.get_row(table, uuid)
                after = (decode_row(db.schema.tables[table], ev.kv.value)
                         if ev.type == "PUT" else None)
                if before is None and after is None:
                    continue
                cs.tables.setdefault(table, {})[uuid] = RowChange(before, after)
            db.apply_feed(rev, cs)

    def _remember(self, commit_id: str, revision: int) -> None:
        self._landed[commit_id] = revision
        while len(self._landed) > self.options.landed_ids_max:
            self._landed.popitem(last=False)

    # --- commits --------------------------------------------------------------------------

    async def commit(self, db: LinearizableDatabase, request: CommitRequest) -> CommitOutcome:
        backoff = _Backoff(self.options)
        if request.read_only:
            # Linearizable read, linearized at this barrier: the result (computed on the
            # cache at base_revision) stands only if nothing it read changed since then.
            while True:
                try:
                    mods = await self._table_revisions(db)
                except EtcdUnavailable as exc:
                    log.warning("%s: etcd unavailable for a read (%s); retrying",
                                db.schema.name, exc)
                    await backoff.wait()
                    continue
                await db.wait_for_revision(max(mods.values(), default=0))
                changed = [t for t in conflict_tables(db.schema, request)
                           if mods.get(t, 0) > request.base_revision]
                if changed:
                    self.n_retries += 1
                    return Retry("a commit to " + ", ".join(sorted(changed))
                                 + " raced the read")
                return Applied()
        name = db.schema.name
        tables = sorted(conflict_tables(db.schema, request))
        compares = [Compare.mod(self._table_key(name, t), "LESS", request.base_revision + 1)
                    for t in tables]
        failure: list[Any] = [Range(self._table_key(name, t)) for t in tables]
        fence_tokens: dict[str, str] = {}
        for lock in request.fences:
            token = self.locks.token(lock)
            if token is None:
                return Retry(f"lock {lock} is no longer held by this node")
            fence_tokens[lock] = token
            compares.append(Compare.value(self.lock_key(lock), "EQUAL", token.encode()))
            failure.append(Range(self.lock_key(lock)))
        commit_id = f"{self.node_id}/{uuidlib.uuid4()}"
        uncertain = False  # an earlier attempt's answer was lost
        success: list[Any] = []
        assert request.changeset is not None
        for tname, changes in request.changeset.tables.items():
            if not changes:
                continue
            table = db.schema.tables[tname]
            for uuid, change in changes.items():
                key = self._row_key(name, tname, uuid)
                success.append(DeleteRange(key) if change.new is None
                               else Put(key, encode_row(table, change.new)))
            success.append(Put(self._table_key(name, tname), commit_id.encode()))
        while True:
            try:
                resp = await self.client.txn(compares, success, failure)
            except EtcdRequestError as exc:
                if exc.code in _TRANSIENT_CODES:
                    log.warning("%s: etcd answered %s; retrying", name, exc)
                    await backoff.wait()
                    continue
                if uncertain:
                    # An earlier attempt's answer was lost: it may have landed. Ask the
                    # feed before calling it failed.
                    try:
                        mods = await self._table_revisions(db)
                    except EtcdError:
                        await backoff.wait()
                        continue
                    await db.wait_for_revision(max(mods.values(), default=0))
                    if commit_id in self._landed:
                        self.n_commits += 1
                        return Applied()
                # etcd refused the request itself (too many operations, too large): final.
                log.error("%s: etcd refused a commit: %s", name, exc)
                return Failed({"error": "commit failed", "details": f"etcd: {exc.message}"})
            except EtcdUnavailable as exc:
                # The outcome is unknown: send it again (see the module docstring).
                uncertain = True
                self.n_unknown_outcomes += 1
                log.warning("%s: etcd unavailable during a commit (%s); retrying", name, exc)
                await backoff.wait()
                continue
            if resp.succeeded:
                await db.wait_for_revision(resp.revision)
                self.n_commits += 1
                return Applied()
            # Failed: catch up with what changed, then decide.
            latest = 0
            lost_locks = []
            for t_resp, req in zip(resp.responses, failure, strict=False):
                kvs = t_resp if isinstance(t_resp, list) else getattr(t_resp, "kvs", [])
                if req.key.startswith(f"{self.options.prefix}_locks/".encode()):
                    lock = req.key.decode().rsplit("/", 1)[1]
                    if not kvs or kvs[0].value != fence_tokens[lock].encode():
                        lost_locks.append(lock)
                elif kvs:
                    latest = max(latest, kvs[0].mod_revision)
            await db.wait_for_revision(latest)
            if commit_id in self._landed:
                self.n_commits += 1
                return Applied()
            for lock in lost_locks:
                self.locks.lost(lock, fence_tokens[lock])
            self.n_retries += 1
            return Retry("lock lost" if lost_locks else
                         "a table it depends on changed: " + ", ".join(tables))

    async def _table_revisions(self, db: LinearizableDatabase) -> dict[str, int]:
        """Table -> revision of the last commit that changed it (a quorum read: etcd's
        default)."""
        prefix = f"{self._db_prefix(db.schema.name)}t/".encode()
        res = await self.client.range(prefix, prefix_end(prefix))
        return {kv.key[len(prefix):].decode(): kv.mod_revision for kv in res.kvs}

    def statistics(self) -> dict[str, int]:
        return {"commits": self.n_commits, "retries": self.n_retries,
                "unknown_outcomes": self.n_unknown_outcomes, **self.locks.statistics()}


class EtcdLockGate:
    """OVSDB locks held cluster-wide: one etcd key per lock, on this node's lease.

    :meth:`want` starts a task that takes the key (or overwrites it, for a steal) and watches
    it; losing it (stolen by another node, or the lease expired while this node was cut off)
    is reported to the server, which tells the session "stolen".
    """

    def __init__(self, plugin: EtcdPlugin):
        self._plugin = plugin
        self._tokens: dict[str, str] = {}
        self._tasks: dict[str, trio.CancelScope] = {}
        self._steal: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._lease: int | None = None
        self._lease_ready = trio.Event()
        #: Told (name, held) on every change: the server's ``lock_changed``.
        self.on_change: Callable[[str, bool], None] = lambda name, held: None
        self.n_acquired = 0
        self.n_lost = 0

    def held(self, name: str) -> bool:
        return name in self._tokens

    def token(self, name: str) -> str | None:
        return self._tokens.get(name)

    def want(self, name: str, *, steal: bool) -> None:
        if steal:
            self._steal.add(name)
            if name in self._tasks and name not in self._tokens:
                # Its task may be watching another node's key for a long time: restart it
                # as a steal now.
                self._tasks.pop(name).cancel()
        if name in self._tasks:
            return
        if len(self._tasks) >= self._plugin.options.max_locks:
            log.warning("lock %s: not contended for: this node already contends for %d locks "
                        "(max_locks)", name, len(self._tasks))
            return
        if self._nursery is None:
            raise RuntimeError("the lock gate is not running (use open_etcd_plugin)")
        scope = trio.CancelScope()
        self._tasks[name] = scope
        self._nursery.start_soon(self._hold, name, scope)

    def release(self, name: str) -> None:
        scope = self._tasks.pop(name, None)
        self._steal.discard(name)
        # Not held from now on (a pipelined lock right after must not see it held); the
        # task deletes the key when its cancellation lands.
        self._tokens.pop(name, None)
        if scope is not None:
            scope.cancel()

    def lost(self, name: str, token: str) -> None:
        """A commit's fence found the key without ``token``: forget that acquisition (not a
        newer one) and tell the server."""
        if self._tokens.get(name) == token:
            del self._tokens[name]
            self.n_lost += 1
            log.warning("lock %s: lost (found by a commit's fence)", name)
            self.on_change(name, False)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep this node's lease alive; locks live in tasks of this nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._keep_lease()

    async def _keep_lease(self) -> None:
        """Grant and renew the lease. The locks count as held only while the lease is
        surely alive: until (send time of the last successful renewal + TTL - a margin),
        whatever the network does; a renewal that cannot answer by then loses them all."""
        ttl_s = self._plugin.options.lock_ttl_s
        margin_s = ttl_s / 4
        client = self._plugin.client
        backoff = _Backoff(self._plugin.options)
        while True:
            sent = trio.current_time()
            try:
                lease, granted_s = await client.lease_grant(ttl_s)
            except EtcdError as exc:
                log.warning("cannot get a lease for locks (%s); retrying", exc)
                await backoff.wait()
                continue
            valid_until = sent + granted_s - margin_s
            self._lease = lease
            self._lease_ready.set()
            while trio.current_time() < valid_until:
                await trio.sleep(ttl_s / 3)
                sent = trio.current_time()
                with trio.move_on_at(valid_until):
                    try:
                        granted_s = await client.lease_keepalive(lease)
                    except EtcdLeaseExpired:
                        break
                    except EtcdError as exc:
                        log.warning("lease keepalive failed (%s); retrying", exc)
                        continue
                    valid_until = sent + granted_s - margin_s
            # The lease is (or may be) gone, and every lock on it.
            log.warning("lock lease %x expired or not renewed in time; every lock it held "
                        "is lost", lease)
            self._lease = None
            self._lease_ready = trio.Event()
            for name in list(self._tokens):
                self._tokens.pop(name)
                self.n_lost += 1
                self.on_change(name, False)

    async def _hold(self, name: str, scope: trio.CancelScope) -> None:
        client = self._plugin.client
        key = self._plugin.lock_key(name)
        backoff = _Backoff(self._plugin.options)
        # One token per task: an attempt whose answer was lost, then retried, finds the key
        # holding its own token and knows it won.
        token = f"{self._plugin.node_id}/{uuidlib.uuid4()}"
        sent = False
        with scope:
            try:
                while True:
                    while self._lease is None:
                        await self._lease_ready.wait()
                    lease = self._lease
                    steal = name in self._steal
                    try:
                        sent = True
                        if steal:
                            resp = await client.txn([], [Put(key, token.encode(), lease=lease)])
                        else:
                            resp = await client.txn(
                                [Compare.create(key, "EQUAL", 0)],
                                [Put(key, token.encode(), lease=lease)], [Range(key)])
                    except EtcdError as exc:
                        log.warning("lock %s: etcd unavailable (%s); retrying", name, exc)
                        await backoff.wait()
                        continue
                    backoff.reset()
                    self._steal.discard(name)
                    ours = resp.succeeded or any(
                        isinstance(r, list) and r and r[0].value == token.encode()
                        for r in resp.responses)
                    if ours and self._lease == lease and name not in self._tokens:
                        self._tokens[name] = token
                        self.n_acquired += 1
                        log.info("lock %s: acquired by this node", name)
                        self.on_change(name, True)
                    # Held or not, watch the key: a change means lost (held) or free (not).
                    await self._watch_until_change(key, resp.revision, token)
                    if self._tokens.get(name) == token:
                        del self._tokens[name]
                        self.n_lost += 1
                        log.warning("lock %s: lost (stolen or expired)", name)
                        self.on_change(name, False)
            finally:
                if self._tokens.get(name) == token:
                    del self._tokens[name]
                if sent:
                    with trio.move_on_after(2) as cleanup:
                        cleanup.shield = True
                        with contextlib.suppress(EtcdError):  # else the lease expires it
                            await client.txn([Compare.value(key, "EQUAL", token.encode())],
                                             [DeleteRange(key)])

    async def _watch_until_change(self, key: bytes, revision: int, token: str) -> None:
        """Until ``key`` is deleted or holds another token than ``token`` (or this node's
        lease is gone)."""
        client = self._plugin.client
        start = revision + 1
        while True:
            try:
                async with client.watch(key, start_revision=start) as batches:
                    async for batch in batches:
                        for ev in batch.events:
                            start = ev.kv.mod_revision + 1
                            if ev.type == "DELETE" or ev.kv.value != token.encode():
                                return
            except EtcdCompacted:
                # History is gone, the key is not: look at it now and go on from there.
                try:
                    res = await client.range(key)
                except EtcdError:
                    await trio.sleep(self._plugin.options.backoff_s_max)
                    continue
                if not res.kvs or res.kvs[0].value != token.encode():
                    return
                start = res.revision + 1
            except EtcdError as exc:
                log.warning("lock watch on %r failed (%s); retrying", key, exc)
                await trio.sleep(self._plugin.options.backoff_s_max)
            if self._lease is None:
                return

    def statistics(self) -> dict[str, int]:
        return {"cluster_locks_held": len(self._tokens), "cluster_locks_acquired":
                self.n_acquired, "cluster_locks_lost": self.n_lost}


@asynccontextmanager
async def open_etcd_plugin(client: EtcdClient, schemas: Iterable[DatabaseSchema], *,
                           node_id: str, options: EtcdOptions | None = None,
                           ) -> AsyncIterator[EtcdPlugin]:
    """Load ``schemas``' databases from etcd and keep them (and this node's locks) current
    until the block exits."""
    plugin = EtcdPlugin(client, schemas, node_id=node_id, options=options or EtcdOptions())
    await plugin.load()
    async with trio.open_nursery() as nursery:
        for db in plugin.databases.values():
            nursery.start_soon(plugin.run_feed, db)
        await nursery.start(plugin.locks.run)
        try:
            yield plugin
        finally:
            nursery.cancel_scope.cancel()
