"""Embedding a node in a Python agent: OVSDB semantics with Python values and typed errors.

    async with crdtdb.open_node(["/usr/share/ovn/ovn-sb.ovsschema"], data_dir="state",
                                listen=["0.0.0.0:6650"], peers=["10.0.0.1:6650"]) as node:
        sb = node.database("OVN_Southbound")
        hv = sb.insert("Chassis", {"name": "hv1", "hostname": "hv1"})  # committed, durable
        async with sb.monitor("Port_Binding") as changes:
            async for change in changes:
                ...

Transactions run through the same engine and replica as JSON-RPC clients' (the same checks,
the same merge). They are synchronous: a replica commits locally, without waiting for peers.
Values are Python's:

========================  ==========================================================
column type               Python value
========================  ==========================================================
scalar (min 1, max 1)     ``str``, ``int``, ``float``, ``bool``, ``uuid.UUID``
optional (min 0, max 1)   the value, or ``None``
set                       ``frozenset``
map                       ``dict``
========================  ==========================================================

A failed transaction raises :class:`TransactionError` (its ``tag`` is OVSDB's error, e.g.
``"constraint violation"``); monitors are channels of :class:`RowChange`.
"""

from __future__ import annotations

import math
import random
import uuid as uuidlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from crdtdb.engine.schema import DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Row
from crdtdb.engine.types import AtomicType, Type
from crdtdb.errors import CrdtdbError
from crdtdb.replica import ChangeEvent, Replica, ReplicaFrozenError

#: Changes a monitor may hold for a consumer that does not keep up before it is closed.
DEFAULT_MONITOR_BUFFER = 10_000


class TransactionError(CrdtdbError):
    """A transaction the database refused, with OVSDB's error object."""

    def __init__(self, tag: str, details: str | None, result: list[Any]):
        super().__init__(f"{tag}: {details}" if details else tag)
        self.tag = tag
        self.details = details
        self.result = result


class MonitorOverflowError(CrdtdbError):
    """The monitor's consumer fell more than its buffer behind; start a new monitor."""


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's change: ``old`` is None for an insert, ``new`` None for a delete."""

    table: str
    uuid: uuidlib.UUID
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    #: False when the change came from a peer (or from a client of another node).
    local: bool


# --- values -------------------------------------------------------------------------------------

def _atom_to_py(atype: AtomicType, atom: Any) -> Any:
    return uuidlib.UUID(atom) if atype is AtomicType.UUID else atom


def _atom_to_json(atype: AtomicType, value: Any) -> Any:
    if atype is AtomicType.UUID:
        return ["uuid", str(value)]
    if atype is AtomicType.REAL and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if atype is AtomicType.REAL and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a valid real")
    return value


def datum_to_py(type_: Type, datum: tuple) -> Any:
    kt = type_.key.type
    if type_.value is not None:
        vt = type_.value.type
        return {_atom_to_py(kt, k): _atom_to_py(vt, v) for k, v in datum}
    if type_.n_max == 1:
        if type_.n_min == 1:
            return _atom_to_py(kt, datum[0])
        return _atom_to_py(kt, datum[0]) if datum else None
    return frozenset(_atom_to_py(kt, a) for a in datum)


def py_to_json(type_: Type, value: Any) -> Any:
    """The OVSDB JSON of a Python value for a column (validated later by the engine)."""
    kt = type_.key.type
    if type_.value is not None:
        if not isinstance(value, Mapping):
            raise TypeError(f"a map column needs a mapping, not {type(value).__name__}")
        vt = type_.value.type
        return ["map", [[_atom_to_json(kt, k), _atom_to_json(vt, v)]
                        for k, v in value.items()]]
    if value is None:
        return ["set", []]
    if isinstance(value, set | frozenset | list | tuple):
        return ["set", [_atom_to_json(kt, a) for a in value]]
    return _atom_to_json(kt, value)


def row_to_py(table: TableSchema, row: Row) -> dict[str, Any]:
    return {c.name: datum_to_py(c.type, row[c.index]) for c in table.ordered}


def _where_json(table: TableSchema, where: Mapping[str, Any] | None) -> list[Any]:
    """``{"column": value}`` means every column equals its value."""
    out = []
    for name, value in (where or {}).items():
        col = table.columns.get(name)
        if col is None:
            raise KeyError(f"no column {name!r} in table {table.name}")
        out.append([name, "==", py_to_json(col.type, value)])
    return out


def _row_json(table: TableSchema, row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in row.items():
        col = table.columns.get(name)
        if col is None:
            raise KeyError(f"no column {name!r} in table {table.name}")
        out[name] = py_to_json(col.type, value)
    return out


# --- the database -------------------------------------------------------------------------------

class Database:
    """One replicated database of an embedded node."""

    def __init__(self, replica: Replica):
        self.replica = replica
        self.schema: DatabaseSchema = replica.schema
        self.name = replica.name

    def _table(self, name: str) -> TableSchema:
        t = self.schema.tables.get(name)
        if t is None:
            raise KeyError(f"no table {name!r} in {self.name}")
        return t

    def transact(self, operations: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Raw OVSDB operations (JSON form); the result array, or :class:`TransactionError`.

        While a compaction round holds this node's writes (a few seconds at most) a writing
        transaction raises :class:`~crdtdb.replica.ReplicaFrozenError`: retry it."""
        outcome = self.replica.execute(list(operations))
        if outcome.blocked and self.replica.frozen:
            raise ReplicaFrozenError(f"{self.replica.name}: a compaction round holds local "
                                     "writes; retry shortly")
        results = outcome.results_nowait()
        for r in results:
            if isinstance(r, dict) and "error" in r:
                raise TransactionError(r["error"], r.get("details"), results)
        return results

    def insert(self, table: str, row: Mapping[str, Any]) -> uuidlib.UUID:
        t = self._table(table)
        result = self.transact([{"op": "insert", "table": table, "row": _row_json(t, row)}])
        return uuidlib.UUID(result[0]["uuid"][1])

    def update(self, table: str, where: Mapping[str, Any] | uuidlib.UUID,
               row: Mapping[str, Any]) -> int:
        """Rows changed; ``where`` is a uuid or ``{"column": value}``."""
        t = self._table(table)
        result = self.transact([{"op": "update", "table": table,
                                 "where": self._where(t, where), "row": _row_json(t, row)}])
        return int(result[0]["count"])

    def delete(self, table: str, where: Mapping[str, Any] | uuidlib.UUID) -> int:
        t = self._table(table)
        result = self.transact([{"op": "delete", "table": table,
                                 "where": self._where(t, where)}])
        return int(result[0]["count"])

    def get(self, table: str, uuid: uuidlib.UUID) -> dict[str, Any] | None:
        row = self.replica.get_row(table, str(uuid))
        return None if row is None else row_to_py(self._table(table), row)

    def select(self, table: str, where: Mapping[str, Any] | None = None
               ) -> list[dict[str, Any]]:
        t = self._table(table)
        if not where:
            return [row_to_py(t, row) for _, row in self.replica.iter_rows(table)]
        result = self.transact([{"op": "select", "table": table,
                                 "where": _where_json(t, where), "columns": ["_uuid"]}])
        return [row_to_py(t, self.replica.get_row(table, r["_uuid"][1]))  # type: ignore[arg-type]
                for r in result[0]["rows"]]

    def _where(self, t: TableSchema, where: Mapping[str, Any] | uuidlib.UUID) -> list[Any]:
        if isinstance(where, uuidlib.UUID):
            return [["_uuid", "==", ["uuid", str(where)]]]
        return _where_json(t, where)

    @asynccontextmanager
    async def monitor(self, *tables: str, initial: bool = True,
                      buffer: int = DEFAULT_MONITOR_BUFFER
                      ) -> AsyncIterator[trio.MemoryReceiveChannel[RowChange]]:
        """A channel of the changes of ``tables`` (first their current rows as inserts,
        unless ``initial`` is False), local and remote, as they are committed or merged::

            async with db.monitor("Port_Binding") as changes:
                async for change in changes:
                    ...

        A consumer more than ``buffer`` changes behind ends the iteration and gets
        :class:`MonitorOverflowError` when the block exits.
        """
        names = set(tables)
        for n in names:
            self._table(n)
        send, receive = trio.open_memory_channel[RowChange](buffer)
        overflowed = False

        def on_change(ev: ChangeEvent) -> None:
            nonlocal overflowed
            if overflowed:
                return
            for tname, rows in ev.changes.tables.items():
                if tname not in names:
                    continue
                t = self.schema.tables[tname]
                for u, ch in rows.items():
                    change = RowChange(tname, uuidlib.UUID(u),
                                       None if ch.old is None else row_to_py(t, ch.old),
                                       None if ch.new is None else row_to_py(t, ch.new),
                                       ev.local)
                    try:
                        send.send_nowait(change)
                    except trio.WouldBlock:
                        overflowed = True
                        send.close()
                        return

        if initial:
            for tname in sorted(names):
                t = self.schema.tables[tname]
                for u, row in self.replica.iter_rows(tname):
                    send.send_nowait(RowChange(tname, uuidlib.UUID(u), None, row_to_py(t, row),
                                               True))
        self.replica.add_listener(on_change)
        try:
            yield receive
        finally:
            self.replica.remove_listener(on_change)
            if overflowed:
                raise MonitorOverflowError(f"monitor of {sorted(names)} fell more than "
                                           f"{buffer} changes behind")


# --- the node -------------------------------------------------------------------------------------

class EmbeddedNode:
    def __init__(self, node: Any, databases: dict[str, Database]):
        self.node = node
        self.node_id: str = node.node_id
        self._databases = databases

    def database(self, name: str) -> Database:
        db = self._databases.get(name)
        if db is None:
            raise KeyError(f"no database {name!r} (have {', '.join(self._databases)})")
        return db

    def status(self) -> dict[str, Any]:
        return self.node.status()

    def compact(self, name: str) -> None:
        """Start a compaction round of database ``name`` coordinated by this node (see
        docs/consistency.md, "Compaction"); it ends within seconds, in the background."""
        self.database(name)  # KeyError for an unknown one
        self.node.compact(name)


@asynccontextmanager
async def open_node(schemas: Sequence[str | Path], *, data_dir: str | Path | None = None,
                    listen: Sequence[str] = (), peers: Sequence[str] = (),
                    remotes: Sequence[str] = (), node_id: str | None = None,
                    rng: random.Random | None = None, **kwargs: Any
                    ) -> AsyncIterator[EmbeddedNode]:
    """A node holding a replica of each schema's database (durable in ``data_dir/NAME``, or in
    memory), gossiping on ``listen``/``peers`` (``HOST:PORT``), optionally serving OVSDB
    clients on ``remotes`` (``punix:PATH``, ``ptcp:PORT[:IP]``)."""
    from crdtdb.node import load_node_id
    from crdtdb.node import open_node as open_raw_node
    from crdtdb.ovsdb.server import Remote
    from transport.tcp import parse_hostport

    loaded = [DatabaseSchema.from_file(p).stored() for p in schemas]
    replicas: dict[str, Replica] = {}
    base = Path(data_dir) if data_dir is not None else None
    try:
        for schema in loaded:
            replicas[schema.name] = (Replica.open(base / schema.name, schema) if base
                                     else Replica.in_memory(schema, rng=rng))
        async with open_raw_node(
                replicas, node_id=node_id or load_node_id(base),
                listen=[parse_hostport(x) for x in listen],
                peers=[parse_hostport(x) for x in peers],
                remotes=[Remote.parse(r) for r in remotes], rng=rng,
                status_file=base / "status.json" if base else None, **kwargs) as node:
            yield EmbeddedNode(node, {n: Database(r) for n, r in replicas.items()})
    finally:
        for r in replicas.values():
            r.close()
