"""One OVSDB database whose tables have different consistency levels.

Some tables live in the eventual store (the database's CRDT replica, gossiped as usual), the
others in a linearizable store (a consensus plugin). Readers and monitors see one database,
and every transaction runs on that whole view. It is routed by the tables it *writes*:

* only eventual tables: committed on the replica, as in an all-eventual database;
* only linearizable tables: committed through the plugin, as in an all-linearizable one;
* both: refused as a whole (``{"error": "not supported"}`` in place of its first
  operation's result, nothing run) — one transaction cannot be both merged and linearized;
* none (a read-only transaction): linearized through the plugin if it reads a linearizable
  table, else answered from the view.

Reads of the other level's tables are allowed (real clients need it: ovn-nbctl reads
NB_Global in every transaction), with that level's guarantee: a linearizable transaction's
reads of eventual tables see this node's replica, and are not part of what the plugin
checks.

A reference column from a table of one level to a table of the other is refused when the
split is configured (:func:`check_split`): neither store could keep such a reference's
integrity (a strong reference to a row the other store deletes, garbage collection across
stores).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from crdtdb.consensus.commit import CommitOutcome, CommitRequest
from crdtdb.consensus.config import ConfigError
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import LockOwnership, Row
from crdtdb.engine.transaction import Outcome, execute
from crdtdb.errors import OvsdbError


def check_split(schema: DatabaseSchema, linearizable_tables: Iterable[str]) -> frozenset[str]:
    """The validated set of linearizable tables; ConfigError names an unknown table or a
    reference column that crosses levels."""
    lin = frozenset(linearizable_tables)
    where = f"databases.{schema.name}.tables"
    for name in sorted(lin):
        if name not in schema.tables:
            raise ConfigError(f"{where}.{name}: no such table in {schema.name}")
    for table in schema.tables.values():
        for col in table.ref_columns:
            for base in (col.type.key, col.type.value):
                target = base.ref_table if base is not None else None
                if target is not None and (table.name in lin) != (target in lin):
                    raise ConfigError(
                        f"{where}: {table.name}.{col.name} references {target}, but the two "
                        "tables have different consistency (a reference cannot cross levels)")
    return lin


_WRITES = frozenset({"insert", "update", "mutate", "delete"})


def _tables_of(operations: Sequence[Any], *, writes_only: bool = False) -> list[str]:
    return [op["table"] for op in operations
            if isinstance(op, dict) and isinstance(op.get("table"), str)
            and (not writes_only or op.get("op") in _WRITES)]


class SplitDatabase:
    """A database served as one, stored in two: see the module docstring."""

    def __init__(self, schema: DatabaseSchema, eventual: Any, linearizable: LinearizableDatabase,
                 linearizable_tables: Iterable[str]):
        self.schema = schema
        self.eventual = eventual
        self.linearizable_store = linearizable
        self.linearizable_tables = check_split(schema, linearizable_tables)
        self.n_refused = 0

    def _store(self, table: str) -> Any:
        return (self.linearizable_store if table in self.linearizable_tables
                else self.eventual)

    # --- Snapshot, routed by table --------------------------------------------------------

    def get_row(self, table: str, uuid: str) -> Row | None:
        return self._store(table).get_row(table, uuid)

    def iter_rows(self, table: str) -> Iterator[tuple[str, Row]]:
        return self._store(table).iter_rows(table)

    def row_count(self, table: str) -> int:
        return self._store(table).row_count(table)

    def ref_count(self, table: str, uuid: str) -> int:
        return self._store(table).ref_count(table, uuid)

    def weak_referrers(self, table: str, uuid: str) -> Iterable[tuple[str, str]]:
        return self._store(table).weak_referrers(table, uuid)

    def index_find(self, table: str, index: int, key: tuple) -> str | None:
        return self._store(table).index_find(table, index, key)

    # --- transactions ---------------------------------------------------------------------

    def is_linearizable(self, operations: Sequence[Any]) -> bool:
        """Whether the server core must commit this transaction through the plugin."""
        written = _tables_of(operations, writes_only=True)
        if written:
            return written[0] in self.linearizable_tables
        return any(t in self.linearizable_tables for t in _tables_of(operations))

    @property
    def revision(self) -> int:
        return self.linearizable_store.revision

    def execute(self, operations: Sequence[Any], *, locks: LockOwnership | None = None,
                elapsed_ms: int = 0) -> Outcome:
        """Run on the whole view; commit eventual writes on the replica at once, leave
        linearizable ones to the plugin (the server core's commit path)."""
        written = _tables_of(operations, writes_only=True)
        lin = self.is_linearizable(operations)
        for table in written:
            if (table in self.linearizable_tables) != lin:
                # Refused as a whole (the error at its first operation): nothing ran.
                self.n_refused += 1
                kind = "linearizable" if lin else "eventual"
                error = OvsdbError("not supported", (
                    f"transaction writes tables of different consistency: {written[0]} is "
                    f"{kind}, {table} is not; use one transaction per level")).to_json()
                return Outcome([error, *([None] * (len(operations) - 1))])
        outcome = execute(self, operations, locks=locks, elapsed_ms=elapsed_ms)
        if not lin and outcome.changeset:
            commit = getattr(self.eventual, "commit", None)
            if commit is not None:  # a Replica: what readers saw change may differ
                outcome = dataclasses.replace(outcome, changeset=commit(outcome.changeset))
            else:
                self.eventual.apply(outcome.changeset)
        return outcome

    async def commit(self, request: CommitRequest) -> CommitOutcome:
        return await self.linearizable_store.commit(request)

    # --- change feeds ---------------------------------------------------------------------

    def add_listener(self, fn: Callable[[Any], None]) -> None:
        self.eventual.add_listener(fn)
        self.linearizable_store.add_listener(fn)

    def remove_listener(self, fn: Callable[[Any], None]) -> None:
        self.eventual.remove_listener(fn)
        self.linearizable_store.remove_listener(fn)

    def __repr__(self) -> str:
        return (f"<SplitDatabase {self.schema.name}: linearizable "
                f"{', '.join(sorted(self.linearizable_tables))}>")
