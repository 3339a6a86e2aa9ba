"""A plain in-memory database: the engine's reference store, for tests and single-node use.

It keeps the committed rows of every table plus the indexes the engine asks for (schema
indexes and a reverse reference index), and applies each :class:`Changeset` atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from crdtdb.engine.schema import DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Changeset, LockOwnership, Row
from crdtdb.engine.transaction import Outcome, _ref_atoms, execute, random_uuid


class MemoryDatabase:
    """Committed state of one database, readable as a :class:`Snapshot`."""

    def __init__(self, schema: DatabaseSchema, *, new_uuid: Callable[[], str] = random_uuid):
        self.schema = schema
        self._new_uuid = new_uuid
        self._rows: dict[str, dict[str, Row]] = {name: {} for name in schema.tables}
        self._indexes: dict[str, list[dict[tuple, str]]] = {
            name: [{} for _ in t.indexes] for name, t in schema.tables.items()}
        self._index_cols: dict[str, list[tuple[int, ...]]] = {
            name: [tuple(t.columns[c].index for c in ix) for ix in t.indexes]
            for name, t in schema.tables.items()}
        #: (table, uuid) -> strong reference atoms pointing at that row from other rows
        self._strong: dict[tuple[str, str], int] = {}
        #: (table, uuid) -> (source table, source uuid) -> weak reference atoms
        self._weak: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        self.n_commits = 0

    # --- Snapshot -------------------------------------------------------------------------

    def get_row(self, table: str, uuid: str) -> Row | None:
        return self._rows[table].get(uuid)

    def iter_rows(self, table: str) -> Iterator[tuple[str, Row]]:
        return iter(list(self._rows[table].items()))

    def row_count(self, table: str) -> int:
        return len(self._rows[table])

    def ref_count(self, table: str, uuid: str) -> int:
        return self._strong.get((table, uuid), 0)

    def weak_referrers(self, table: str, uuid: str) -> Iterable[tuple[str, str]]:
        return tuple(self._weak.get((table, uuid), ()))

    def index_find(self, table: str, index: int, key: tuple) -> str | None:
        return self._indexes[table][index].get(key)

    # --- transactions ---------------------------------------------------------------------

    def execute(self, operations: Sequence[Any], *, locks: LockOwnership | None = None,
                elapsed_ms: int = 0) -> Outcome:
        """Run a transaction and commit it if it succeeded."""
        outcome = execute(self, operations, locks=locks, elapsed_ms=elapsed_ms,
                          new_uuid=self._new_uuid)
        if outcome.changeset:
            self.apply(outcome.changeset)
        return outcome

    def transact(self, operations: Sequence[Any], *,
                 locks: LockOwnership | None = None) -> list[Any]:
        """The result array ovsdb-server would send; raises :class:`WouldBlock` on a pending wait.
        """
        return self.execute(operations, locks=locks).results_nowait()

    def apply(self, changeset: Changeset) -> None:
        """Commit a changeset computed against this database's current state."""
        for tname, changes in changeset.tables.items():
            table = self.schema.tables[tname]
            rows = self._rows[tname]
            for uuid, change in changes.items():
                old, new = change.old, change.new
                if old is not None and new is not None and self._same_keys(table, old, new):
                    rows[uuid] = new  # same index values and references: nothing to redo
                    continue
                if old is not None:
                    self._unindex(table, uuid, old)
                if new is None:
                    rows.pop(uuid, None)
                else:
                    rows[uuid] = new
                    self._index(table, uuid, new)
        self.n_commits += 1

    def _same_keys(self, table: TableSchema, old: Row, new: Row) -> bool:
        for cols in self._index_cols[table.name]:
            for i in cols:
                if old[i] != new[i]:
                    return False
        return all(old[col.index] == new[col.index] for col in table.ref_columns)

    def _index(self, table: TableSchema, uuid: str, row: Row) -> None:
        for ix, cols in zip(self._indexes[table.name], self._index_cols[table.name],
                            strict=True):
            ix[tuple(row[i] for i in cols)] = uuid
        self._count_refs(table, uuid, row, 1)

    def _unindex(self, table: TableSchema, uuid: str, row: Row) -> None:
        for ix, cols in zip(self._indexes[table.name], self._index_cols[table.name],
                            strict=True):
            key = tuple(row[i] for i in cols)
            if ix.get(key) == uuid:
                del ix[key]
        self._count_refs(table, uuid, row, -1)

    def _count_refs(self, table: TableSchema, uuid: str, row: Row, delta: int) -> None:
        strong, weak = self._strong, self._weak
        src = (table.name, uuid)
        for col in table.ref_columns:
            datum = row[col.index]
            if not datum:
                continue
            for target_table, target in _ref_atoms(col, datum, strong=True):
                if target == uuid:
                    continue  # self-references don't count
                key = (target_table, target)
                n = strong.get(key, 0) + delta
                if n:
                    strong[key] = n
                else:
                    del strong[key]
            for target_table, target in _ref_atoms(col, datum, strong=False):
                key = (target_table, target)
                refs = weak.setdefault(key, {})
                n = refs.get(src, 0) + delta
                if n:
                    refs[src] = n
                else:
                    del refs[src]
                    if not refs:
                        del weak[key]
