"""What the engine needs from a store: a read-only, consistent view of committed rows.

Every backend (the in-memory store, the CRDT replica's view, a consensus plugin's cache)
implements :class:`Snapshot`; the engine never writes to it. A transaction's effect comes back
as a :class:`Changeset` that the backend applies (or ships) as it sees fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol

from crdtdb.engine.frozen import fast_init
from crdtdb.engine.schema import DatabaseSchema

#: A row is a tuple of datums in :attr:`TableSchema.ordered` column order: ``row[0]`` is
#: ``(uuid,)`` and ``row[1]`` is ``(version,)``.
Row = tuple


class Snapshot(Protocol):
    schema: DatabaseSchema

    def get_row(self, table: str, uuid: str) -> Row | None: ...

    def iter_rows(self, table: str) -> Iterator[tuple[str, Row]]: ...

    def row_count(self, table: str) -> int: ...

    def ref_count(self, table: str, uuid: str) -> int:
        """Strong references from committed rows to row ``uuid`` of ``table`` (``n_refs``).

        Every reference atom counts (a row referencing it from two columns counts twice);
        a row's references to itself do not.
        """
        ...

    def weak_referrers(self, table: str, uuid: str) -> Iterable[tuple[str, str]]:
        """``(table, uuid)`` of the committed rows holding weak references to this row."""
        ...

    def index_find(self, table: str, index: int, key: tuple) -> str | None:
        """The uuid of the committed row whose ``index``-th index columns equal ``key``."""
        ...


class LockOwnership(Protocol):
    """Answers OVSDB ``assert``: does the client running the transaction own this lock?"""

    def holds(self, lock: str) -> bool: ...


class NoLocks:
    def holds(self, lock: str) -> bool:
        return False


@fast_init
@dataclass(frozen=True, slots=True)
class RowChange:
    """``old`` is ``None`` for an insert, ``new`` is ``None`` for a delete."""

    old: Row | None
    new: Row | None


def inserts(rows: Iterable[Row]) -> list[RowChange]:
    """``[RowChange(None, row) for row in rows]`` without a Python call per row: the frozen
    dataclass's ``__init__`` costs about a microsecond, and a replica filling its view from
    a full state makes one per row (100k). Sets the slots through their descriptors."""
    rows = list(rows)
    return row_changes(repeat(None), rows)


def row_changes(olds: Iterable[Row | None], news: Sequence[Row | None]) -> list[RowChange]:
    """``[RowChange(o, n) for o, n in zip(olds, news)]`` the way :func:`inserts` does it
    (a 1000-row transaction's changeset makes one per row); ``olds`` may be longer."""
    out = list(map(object.__new__, repeat(RowChange, len(news))))
    deque(map(_SET_OLD, out, olds), maxlen=0)
    deque(map(_SET_NEW, out, news), maxlen=0)
    return out


_SET_OLD = RowChange.__dict__["old"].__set__
_SET_NEW = RowChange.__dict__["new"].__set__


@dataclass(slots=True)
class Changeset:
    """The rows a committed transaction changed, by table then uuid."""

    tables: dict[str, dict[str, RowChange]] = field(default_factory=dict)
    comment: str | None = None
    durable: bool = False

    def __bool__(self) -> bool:
        return any(self.tables.values())

    def n_rows(self) -> int:
        return sum(len(rows) for rows in self.tables.values())

    def then(self, later: Changeset) -> Changeset:
        """One changeset with the effect of this one and then ``later``: each row from its
        old value here to its new value there; a row created and gone in between is left
        out (what a monitor that missed both should see)."""
        if not later:
            return self
        if not self:
            return later
        out = Changeset({t: dict(rows) for t, rows in self.tables.items() if rows})
        for t, rows in later.tables.items():
            mine = out.tables.setdefault(t, {})
            for u, ch in rows.items():
                first = mine.get(u)
                if first is None:
                    mine[u] = ch
                elif first.old is None and ch.new is None:
                    del mine[u]
                else:
                    mine[u] = RowChange(first.old, ch.new)
            if not mine:
                del out.tables[t]
        return out


@fast_init
@dataclass(frozen=True, slots=True)
class ReadSet:
    """What a transaction read, for a linearizable backend's compare-and-swap.

    ``tables`` were scanned (a predicate read: any change in them conflicts); ``rows`` were
    looked up by uuid.
    """

    tables: frozenset[str] = frozenset()
    rows: frozenset[tuple[str, str]] = frozenset()


EMPTY_ROWS: Mapping[str, RowChange] = {}
