"""A plain in-memory database: the engine's reference store, for tests and single-node use.

It keeps the committed rows of every table plus the indexes the engine asks for (schema
indexes and a reverse reference index), and applies each :class:`Changeset` atomically.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from operator import attrgetter, contains, itemgetter
from typing import Any

from crdtdb.engine.collection import collection_paused
from crdtdb.engine.schema import ColumnSchema, DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Changeset, LockOwnership, Row
from crdtdb.engine.transaction import Outcome, _ref_atoms, execute, random_uuid
from crdtdb.errors import WouldBlock

#: Above this many rows, a table's inserts are committed column by column (:meth:`_add_rows`):
#: its set-up costs more than it saves for a few rows.
_MANY_ROWS = 8
_OLD = attrgetter("old")
_NEW = attrgetter("new")


def _atom_counts(datums: list[tuple]) -> Counter[Any]:
    """``Counter(chain.from_iterable(datums))``, without an iterator per empty datum and
    at once where every datum is equal (the datapath of every flow of one datapath's
    Southbound: the bench's join of 100k flows, ~1.1k instructions a row otherwise)."""
    if datums and datums[0] and datums[-1] == datums[0] \
            and datums.count(datums[0]) == len(datums):
        return Counter({x: k * len(datums) for x, k in Counter(datums[0]).items()})
    return Counter(chain.from_iterable(filter(None, datums)))


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
        with collection_paused(len(operations)):
            return self._execute(operations, locks, elapsed_ms)

    def _execute(self, operations: Sequence[Any], locks: LockOwnership | None,
                 elapsed_ms: int) -> Outcome:
        outcome = execute(self, operations, locks=locks, elapsed_ms=elapsed_ms,
                          new_uuid=self._new_uuid)
        if outcome.changeset:
            self.apply(outcome.changeset)
        return outcome

    def transact(self, operations: Sequence[Any], *,
                 locks: LockOwnership | None = None) -> list[Any]:
        """The result array ovsdb-server would send; raises :class:`WouldBlock` on a pending wait.
        """
        with collection_paused(len(operations)):
            outcome = self._execute(operations, locks, 0)
            results, timeout_ms = outcome.results, outcome.timeout_ms
            # Freed before the collector resumes: the collection that follows a large
            # transaction then does not walk its changeset (a row change per row).
            del outcome
        if results is None:
            raise WouldBlock(timeout_ms)
        return results

    def apply(self, changeset: Changeset) -> None:
        """Commit a changeset computed against this database's current state."""
        for tname, changes in changeset.tables.items():
            table = self.schema.tables[tname]
            rows = self._rows[tname]
            changed = changes.values()
            if (len(changes) > _MANY_ROWS and not any(map(_OLD, changed))
                    and all(map(_NEW, changed))):
                # Only inserts (a bulk load's thousands): indexed and counted column by
                # column, as load_rows does.
                new_rows = dict(zip(changes, map(_NEW, changed), strict=True))
                rows.update(new_rows)
                self._add_rows(table, new_rows)
                continue
            plain_inserts = not self._indexes[tname]
            for uuid, change in changes.items():
                old, new = change.old, change.new
                if old is None and new is not None and plain_inserts:
                    # An insert into a table without indexes (a bulk load's thousands).
                    rows[uuid] = new
                    self._count_refs(table, uuid, new, 1)
                    continue
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

    def replace(self, changeset: Changeset) -> None:
        """:meth:`apply` for a changeset that only changes existing rows and keeps every
        index value and reference of each (a replica merging a plain column, checked by its
        view): the rows are swapped in, with no index or reference count to redo."""
        for tname, changes in changeset.tables.items():
            rows = self._rows[tname]
            for uuid, change in changes.items():
                rows[uuid] = change.new  # type: ignore[assignment]
        self.n_commits += 1

    def replace_row(self, tname: str, uuid: str, new: Row) -> None:
        """:meth:`replace` of a changeset of this one row's change (a replica merging a
        plain column of one row: most of its merged updates)."""
        self._rows[tname][uuid] = new
        self.n_commits += 1

    def load(self, changeset: Changeset) -> None:
        """:meth:`apply` for a changeset that only inserts rows into empty tables (see
        :meth:`load_rows`); any other changeset goes through :meth:`apply`."""
        for tname, changes in changeset.tables.items():
            if self._rows[tname] or any(c.old is not None or c.new is None
                                        for c in changes.values()):
                self.apply(changeset)  # not the case this is for: the general path
                return
        self.load_rows({t: {u: c.new for u, c in changes.items()}
                        for t, changes in changeset.tables.items()})

    def load_rows(self, tables: Mapping[str, dict[str, Row]]) -> None:
        """Insert ``tables`` (table -> uuid -> row, into empty tables; the dicts are taken
        over, not copied) as one commit: the same rows (in the same order), indexes and
        reference counts as :meth:`apply` of their inserts, with the bookkeeping of each
        reference column done in one pass (a replica filling its view in one go)."""
        for tname in tables:
            if self._rows[tname]:
                raise ValueError(f"load_rows() into table {tname}, which has rows")
        for tname, new_rows in tables.items():
            self._rows[tname] = new_rows
            self._add_rows(self.schema.tables[tname], new_rows)
        self.n_commits += 1

    def _add_rows(self, table: TableSchema, new_rows: Mapping[str, Row]) -> None:
        """Index and count the references of ``new_rows``, rows inserted into ``table``:
        what :meth:`_index` does row by row, with the bookkeeping of each reference column
        done in one pass."""
        tname = table.name
        for ix, cols in zip(self._indexes[tname], self._index_cols[tname], strict=True):
            for uuid, row in new_rows.items():
                ix[tuple(row[i] for i in cols)] = uuid
        # Strong references in sets and scalars, counted per target (the order in which
        # targets are counted is not observable); the others row by row, as _index does
        # (the order of a target's weak referrers is).
        simple = tuple(c for c in table.ref_columns
                       if c.type.value is None and c.type.key.is_strong_ref)
        for col in simple:
            datums = list(map(itemgetter(col.index), new_rows.values()))
            counts = _atom_counts(datums)
            # Self-references don't count (only a table that refers to itself has any).
            if col.type.key.ref_table == tname and any(map(contains, datums, new_rows)):
                for uuid, d in zip(new_rows, datums, strict=True):
                    if uuid in d:
                        counts[uuid] -= 1
            key_table = col.type.key.ref_table
            strong = self._strong
            for target, n in counts.items():
                if n:
                    key = (key_table, target)
                    strong[key] = strong.get(key, 0) + n  # type: ignore[index]
        others = tuple(c for c in table.ref_columns if c not in simple)
        if others:
            for uuid, row in new_rows.items():
                self._count_refs(table, uuid, row, 1, others)

    def _same_keys(self, table: TableSchema, old: Row, new: Row) -> bool:
        for cols in self._index_cols[table.name]:
            for i in cols:
                if old[i] != new[i]:
                    return False
        return all(old[col.index] == new[col.index] for col in table.ref_columns)

    def _index(self, table: TableSchema, uuid: str, row: Row) -> None:
        indexes = self._indexes[table.name]
        if indexes:
            for ix, cols in zip(indexes, self._index_cols[table.name], strict=True):
                ix[tuple(row[i] for i in cols)] = uuid
        self._count_refs(table, uuid, row, 1)

    def _unindex(self, table: TableSchema, uuid: str, row: Row) -> None:
        for ix, cols in zip(self._indexes[table.name], self._index_cols[table.name],
                            strict=True):
            key = tuple(row[i] for i in cols)
            if ix.get(key) == uuid:
                del ix[key]
        self._count_refs(table, uuid, row, -1)

    def _count_refs(self, table: TableSchema, uuid: str, row: Row, delta: int,
                    columns: Sequence[ColumnSchema] | None = None) -> None:
        strong, weak = self._strong, self._weak
        src = (table.name, uuid)
        for col in table.ref_columns if columns is None else columns:
            datum = row[col.index]
            if not datum:
                continue
            target_table = col.strong_set_ref
            if target_table is not None:  # the common case, without _ref_atoms
                for target in datum:
                    if target == uuid:
                        continue  # self-references don't count
                    key = (target_table, target)
                    n = strong.get(key, 0) + delta
                    if n:
                        strong[key] = n
                    else:
                        del strong[key]
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
