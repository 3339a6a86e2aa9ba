"""A linearizable database as the server sees it: a cache of the committed state plus a plugin.

The cache is fed only by the plugin's change feed (:meth:`LinearizableDatabase.apply_feed`),
in commit order, each change stamped with the plugin's revision. Transactions run against the
cache without touching it (:meth:`execute`); the server core then hands them to
:meth:`commit`, which the plugin answers once the cache shows the outcome. So every change,
this node's own included, reaches monitors the same way and in the same order on every node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from crdtdb.consensus.commit import CommitOutcome, CommitRequest
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, LockOwnership, Row, Snapshot
from crdtdb.engine.transaction import Outcome, execute, random_uuid
from crdtdb.errors import CrdtdbError

log = logging.getLogger(__name__)


class FeedOrderError(CrdtdbError):
    """A plugin fed a change out of revision order (a plugin bug: the cache would be wrong)."""


class CacheStore(Snapshot, Protocol):
    """Where the cache keeps rows: a MemoryDatabase, or a DurableDatabase for a store that must
    survive a restart on its own (the local plugin)."""

    def apply(self, changeset: Changeset) -> None: ...


class Committer(Protocol):
    async def commit(self, db: LinearizableDatabase, request: CommitRequest
                     ) -> CommitOutcome: ...

    # Optionally (the ovsdb relay): ``submit(db, request, done) -> bool``, see
    # LinearizableDatabase.submit.


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """What listeners hear after each change the feed applied (shaped like the replica's
    ChangeEvent, so the server subscribes to both the same way)."""

    changes: Changeset
    revision: int
    #: Always False: a linearizable database learns of its own commits from the feed too.
    local: bool = False


class LinearizableDatabase:
    """Snapshot of the committed state + transactions that commit through ``committer``."""

    linearizable = True

    def __init__(self, schema: DatabaseSchema, store: CacheStore, committer: Committer, *,
                 revision: int = 0, new_uuid: Callable[[], str] = random_uuid,
                 forwards: bool = False):
        self.schema = schema
        #: The committer runs transactions itself (a relay): the server core forwards them
        #: unrun, several at a time; the cache then only serves monitors.
        self.forwards = forwards
        self.store = store
        self.committer = committer
        #: The plugin revision the cache reflects.
        self.revision = revision
        self._new_uuid = new_uuid
        self._listeners: list[Callable[[FeedEvent], None]] = []
        self._advanced = trio.Event()
        self.n_feed_changes = 0

    # --- Snapshot -------------------------------------------------------------------------

    def get_row(self, table: str, uuid: str) -> Row | None:
        return self.store.get_row(table, uuid)

    def iter_rows(self, table: str) -> Iterator[tuple[str, Row]]:
        return self.store.iter_rows(table)

    def row_count(self, table: str) -> int:
        return self.store.row_count(table)

    def ref_count(self, table: str, uuid: str) -> int:
        return self.store.ref_count(table, uuid)

    def weak_referrers(self, table: str, uuid: str) -> Iterable[tuple[str, str]]:
        return self.store.weak_referrers(table, uuid)

    def index_find(self, table: str, index: int, key: tuple) -> str | None:
        return self.store.index_find(table, index, key)

    # --- transactions ---------------------------------------------------------------------

    def execute(self, operations: Sequence[Any], *, locks: LockOwnership | None = None,
                elapsed_ms: int = 0) -> Outcome:
        """Run a transaction against the cache; nothing is applied (see :meth:`commit`)."""
        return execute(self.store, operations, locks=locks, elapsed_ms=elapsed_ms,
                       new_uuid=self._new_uuid)

    async def commit(self, request: CommitRequest) -> CommitOutcome:
        return await self.committer.commit(self, request)

    def submit(self, request: CommitRequest, done: Callable[[CommitOutcome], None]) -> bool:
        """Hand ``request`` to a committer that needs no task for it (the ovsdb relay sends
        it at once and calls ``done`` from its connection's reader), sparing the server a
        task per commit; False if it did not take it (then use :meth:`commit`). ``done`` is
        never called before this returns."""
        submit = getattr(self.committer, "submit", None)
        return submit is not None and bool(submit(self, request, done))

    # --- the change feed ------------------------------------------------------------------

    def apply_feed(self, revision: int, changeset: Changeset) -> None:
        """Apply one committed change (plugins call this in revision order)."""
        if revision <= self.revision:
            raise FeedOrderError(f"{self.schema.name}: revision {revision} after "
                                 f"{self.revision}")
        if changeset:
            self.store.apply(changeset)
            self.n_feed_changes += 1
        self.revision = revision
        if changeset:
            ev = FeedEvent(changeset, revision)
            for fn in list(self._listeners):
                fn(ev)
        self._advanced.set()
        self._advanced = trio.Event()

    def advance(self, revision: int) -> None:
        """The plugin's revision moved without a change to this database."""
        if revision > self.revision:
            self.revision = revision
            self._advanced.set()
            self._advanced = trio.Event()

    async def wait_for_revision(self, revision: int) -> None:
        """Until the cache reflects ``revision`` (callers bound it with a timeout)."""
        while self.revision < revision:
            await self._advanced.wait()

    def add_listener(self, fn: Callable[[FeedEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[FeedEvent], None]) -> None:
        self._listeners.remove(fn)

    def statistics(self) -> dict[str, int]:
        return {"revision": self.revision, "feed_changes": self.n_feed_changes,
                "rows": sum(self.store.row_count(t) for t in self.schema.tables)}

    def __repr__(self) -> str:
        return f"<LinearizableDatabase {self.schema.name} at revision {self.revision}>"
