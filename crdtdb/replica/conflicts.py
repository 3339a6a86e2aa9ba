"""What the view had to resolve after a merge: counted, logged and handed to listeners.

A merge of concurrent, individually valid transactions can break what the schema promises.
The view never shows such a state (see :mod:`crdtdb.replica.view`); instead it hides a row or
drops a value, and every such decision is a :class:`Conflict` here. Conflicts are reported
when they appear and again when they go away (the merged state moved on), so the current
set is always known: :meth:`ConflictLog.active`.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("crdtdb.replica.conflicts")


class ConflictKind(enum.Enum):
    #: Two rows share an index's values: the one with the smallest uuid is shown.
    INDEX_DUPLICATE = "index-duplicate"
    #: A table holds more rows than its maxRows: the smallest uuids are shown.
    MAX_ROWS = "max-rows"
    #: A column that needs a value lost its reference to a row that is gone: row hidden.
    DANGLING_REQUIRED = "dangling-required"
    #: An index column lost a reference, so its index key changed: row hidden.
    DANGLING_INDEX = "dangling-index"
    #: A row of a non-root table that no visible row references strongly: row hidden.
    ORPHAN = "orphan"
    #: A reference to a row that is gone was dropped from a column (row still shown).
    DANGLING_VALUE = "dangling-value"
    #: A set or map merged past its maximum size: the first elements in OVSDB order shown.
    SET_SIZE = "set-size"
    #: A key or value in the document that does not decode against the schema: ignored.
    INVALID = "invalid"


#: Kinds that hide the whole row (the others change a column of a row that is shown).
ROW_KINDS = frozenset({ConflictKind.INDEX_DUPLICATE, ConflictKind.MAX_ROWS,
                       ConflictKind.DANGLING_REQUIRED, ConflictKind.DANGLING_INDEX,
                       ConflictKind.ORPHAN})


@dataclass(frozen=True, slots=True)
class Conflict:
    kind: ConflictKind
    table: str
    uuid: str
    #: The column concerned, for column-level kinds.
    column: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.table} row {self.uuid}" + (f" column {self.column}"
                                                   if self.column else "")
        return f"{self.kind.value}: {where}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True, slots=True)
class ConflictEvent:
    conflict: Conflict
    #: False when the conflict went away (the merged state no longer needs it).
    active: bool


class ConflictLog:
    """The conflicts a replica's view currently resolves, and counts of every one it saw.

    ``max_recent`` bounds the in-memory history of events; listeners see every event.
    """

    def __init__(self, *, max_recent: int = 1000):
        self._by_row: dict[tuple[str, str], dict[tuple[ConflictKind, str | None], Conflict]] = {}
        self.seen: Counter[ConflictKind] = Counter()
        self.recent: deque[ConflictEvent] = deque(maxlen=max_recent)
        self._listeners: list[Callable[[ConflictEvent], None]] = []

    def add_listener(self, fn: Callable[[ConflictEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ConflictEvent], None]) -> None:
        self._listeners.remove(fn)

    def active(self) -> list[Conflict]:
        return [c for row in self._by_row.values() for c in row.values()]

    def any_active(self) -> bool:
        return bool(self._by_row)

    def counts(self) -> dict[str, int]:
        """Active conflicts by kind (a gauge), every kind present."""
        out = {k.value: 0 for k in ConflictKind}
        for row in self._by_row.values():
            for c in row.values():
                out[c.kind.value] += 1
        return out

    def set_row(self, table: str, uuid: str, conflicts: list[Conflict]) -> None:
        """Replace the active conflicts of one row by ``conflicts`` (maybe none)."""
        if not conflicts and (table, uuid) not in self._by_row:
            return  # the common case: nothing before, nothing now
        old = self._by_row.pop((table, uuid), {})
        new = {(c.kind, c.column): c for c in conflicts}
        for key, c in old.items():
            if key not in new:
                self._emit(ConflictEvent(c, False))
        for key, c in new.items():
            if key not in old:
                self.seen[c.kind] += 1
                self._emit(ConflictEvent(c, True))
        if new:
            self._by_row[table, uuid] = new

    def end_unless(self, keep: Callable[[str, str], bool]) -> None:
        """End the conflicts of every row for which ``keep(table, uuid)`` is false (rows that
        are gone: a view that was rebuilt only revisits the rows it still has)."""
        for table, uuid in [k for k in self._by_row if not keep(*k)]:
            self.set_row(table, uuid, [])

    def row_keys(self) -> list[tuple[str, str]]:
        """``(table, uuid)`` of every row with an active conflict."""
        return list(self._by_row)

    def row(self, table: str, uuid: str) -> list[Conflict]:
        return list(self._by_row.get((table, uuid), {}).values())

    def report(self, conflict: Conflict) -> None:
        """A one-off event (e.g. an undecodable key): counted, logged, never active."""
        self.seen[conflict.kind] += 1
        self._emit(ConflictEvent(conflict, True))

    def _emit(self, ev: ConflictEvent) -> None:
        self.recent.append(ev)
        if ev.active:
            logger.warning("conflict resolved by the view: %s", ev.conflict)
        else:
            logger.info("conflict gone: %s", ev.conflict)
        for fn in list(self._listeners):
            fn(ev)
