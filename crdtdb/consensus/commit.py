"""What a linearizable store asks of its consensus plugin, and what the plugin answers.

The server core runs a transaction against the store's local cache (a copy of the committed
state that the plugin's change feed keeps), then hands the result to the plugin as a
:class:`CommitRequest`. The plugin commits it atomically only if nothing the transaction
depended on changed since ``base_revision`` — or answers :class:`Retry`, and the core runs the
transaction again on the newer cache, as ovsdb-server re-runs a transaction after a Raft
"cluster error". A read-only transaction is a request too (with no changeset): the plugin
finds the last commit before the request (a barrier), and answers Applied only if nothing the
read depends on changed between ``base_revision`` and that commit (else Retry: it runs again
on the newer cache). A plugin must never acknowledge a read whose result was computed on a
cache older than its barrier: that is a stale read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crdtdb.engine.snapshot import Changeset, ReadSet


@dataclass(frozen=True, slots=True)
class CommitRequest:
    db_name: str
    #: The client's operations, as sent (a plugin that forwards transactions uses these).
    operations: list[Any]
    #: What to commit; ``None`` for a transaction that changes nothing (a read, an error).
    changeset: Changeset | None
    read_set: ReadSet
    #: The cache revision the transaction ran against.
    base_revision: int
    #: Locks the transaction asserted: the commit must fail if this node no longer holds them.
    fences: tuple[str, ...] = ()
    #: Sent unrun, for a plugin that runs transactions itself (``forwards`` stores); False
    #: when the core ran it on the cache (then a request without changeset is a read or an
    #: error the engine already answered).
    forward: bool = False

    @property
    def read_only(self) -> bool:
        return not self.changeset


@dataclass(frozen=True, slots=True)
class Applied:
    """Committed (or, for a read, linearized); the cache already shows it.

    ``results`` replaces the engine's results when the plugin ran the transaction itself (a
    relay to a clustered ovsdb-server); ``None`` keeps the engine's.
    """

    results: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Something the transaction read changed (or a fence failed): run it again."""

    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent error, appended to the result array as ovsdb-server does."""

    error: dict[str, Any]


CommitOutcome = Applied | Retry | Failed


def asserted_locks(operations: list[Any]) -> tuple[str, ...]:
    """The lock names of the ``assert`` operations in a transaction (well-formed ones only: the
    engine reports the malformed ones)."""
    out: list[str] = []
    for op in operations:
        if isinstance(op, dict) and op.get("op") == "assert":
            lock = op.get("lock")
            if isinstance(lock, str) and lock not in out:
                out.append(lock)
    return tuple(out)
