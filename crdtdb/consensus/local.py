"""The ``local`` plugin: one node, durable, linearizable — the embedded default.

With a single node there is nothing to agree on: the server core already runs one transaction
per database at a time, so a commit is the durable write itself. It exists so that a
configuration written for a cluster (a table marked linearizable) runs unchanged on one
machine, through the same code path the cluster plugins use.
"""

from __future__ import annotations

from crdtdb.consensus.commit import Applied, CommitOutcome, CommitRequest
from crdtdb.consensus.database import CacheStore, LinearizableDatabase
from crdtdb.engine.schema import DatabaseSchema


class LocalCommitter:
    async def commit(self, db: LinearizableDatabase, request: CommitRequest) -> CommitOutcome:
        if request.changeset:
            # Durable (DurableDatabase.apply syncs) before the feed tells anyone.
            db.apply_feed(db.revision + 1, request.changeset)
        return Applied()


def local_database(schema: DatabaseSchema, store: CacheStore) -> LinearizableDatabase:
    """A linearizable database kept in ``store`` (a DurableDatabase to survive restarts)."""
    return LinearizableDatabase(schema, store, LocalCommitter())
