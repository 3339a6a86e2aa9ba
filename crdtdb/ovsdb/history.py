"""A database's recent transactions, so that ``monitor_cond_since`` can resume a monitor.

A client that reconnects (ovn-controller after a restart, the IDL after a dropped connection)
sends the id of the last transaction it saw. If that transaction is still here, the reply
carries only what changed since (``found`` true) instead of the whole database: the
difference between a few rows and, on a large Southbound, a dump of megabytes.

The rules are a clustered ovsdb-server's (ovsdb/transaction.c ``ovsdb_txn_history_run``):
at most ``max_txns`` transactions, and fewer while the history holds more atoms than the
database (then a full dump is the cheaper answer), but never fewer than one, so the last
id is always known. Atoms are counted the same way: every element of every column of the
old and the new row, a map's pairs twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from crdtdb.engine.data import ZERO_UUID
from crdtdb.engine.schema import TableSchema
from crdtdb.engine.snapshot import Changeset, Row

DEFAULT_MAX_TXNS = 100


#: One recorded transaction: (txn id, changeset, atoms). A plain tuple: made once a commit,
#: in C, where a slotted dataclass's __init__ was a Python call (0.6% of a served insert).
_Entry = tuple[str, Changeset, int]
_ATOMS = 2


def _row_atoms(maps: tuple[int, ...], row: Row) -> int:
    """Every element of every column, a map's pairs twice (``maps``: the map columns'
    positions): ``sum(map(len, row))`` runs in C, a weighted sum per column did not."""
    n = sum(map(len, row))
    for i in maps:
        n += len(row[i])
    return n


class TxnHistory:
    """The last transactions of one database, oldest first, with their ids."""

    def __init__(self, tables: dict[str, TableSchema], rows: Iterable[tuple[str, Row]], *,
                 max_txns: int = DEFAULT_MAX_TXNS):
        if max_txns < 1:
            raise ValueError("max_txns must be at least 1")
        self.max_txns = max_txns
        #: per table, the positions of the map columns (a pair counts as two atoms)
        self._map_columns = {name: tuple(i for i, c in enumerate(t.ordered)
                                         if c.type.value is not None)
                             for name, t in tables.items()}
        #: atoms in the whole database, kept up to date by :meth:`record`
        self.db_atoms = sum(_row_atoms(self._map_columns[t], row) for t, row in rows)
        self.history_atoms = 0
        self._entries: deque[_Entry] = deque()
        self.last_txn_id = ZERO_UUID

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, txn_id: str, changeset: Changeset) -> None:
        """A committed transaction (changes published from elsewhere count too)."""
        old_atoms = new_atoms = 0
        for tname, changes in changeset.tables.items():
            maps = self._map_columns[tname]
            for change in changes.values():
                old, new = change.old, change.new
                if old is not None:
                    old_atoms += sum(map(len, old))  # (_row_atoms, inlined: once a commit)
                    for i in maps:
                        old_atoms += len(old[i])
                if new is not None:
                    new_atoms += sum(map(len, new))
                    for i in maps:
                        new_atoms += len(new[i])
        self.db_atoms += new_atoms - old_atoms
        atoms = old_atoms + new_atoms
        entries = self._entries
        entries.append((txn_id, changeset, atoms))
        self.history_atoms += atoms
        self.last_txn_id = txn_id
        while len(entries) > 1 and (len(entries) > self.max_txns
                                    or self.history_atoms > self.db_atoms):
            self.history_atoms -= entries.popleft()[_ATOMS]

    def changes_after(self, txn_id: str) -> Changeset | None:
        """Every row changed by the transactions after ``txn_id``, from its state before the
        first of them to its state after the last (rows created and gone in between are
        left out); ``None`` if ``txn_id`` is not in the history (the caller sends it all)."""
        if txn_id == ZERO_UUID:
            return None
        composed: Changeset | None = None
        for entry_id, changeset, _ in self._entries:
            if composed is not None:
                composed = composed.then(changeset)
            elif entry_id == txn_id:
                composed = Changeset()
        return composed
