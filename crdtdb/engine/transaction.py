"""Executing an OVSDB ``transact`` against a snapshot (RFC 7047 section 5.2).

:func:`execute` is pure: it reads a :class:`~crdtdb.engine.snapshot.Snapshot`, never writes to
it, and returns an :class:`Outcome` holding the result array a client would receive plus the
:class:`~crdtdb.engine.snapshot.Changeset` to apply. It follows ovsdb-server's
``ovsdb_execute_compose`` and ``ovsdb_txn_precommit`` step by step, so results, error objects and
the order in which commit-time checks fire are the same:

1. referential integrity (strong references), 2. garbage collection of unreferenced rows of
non-root tables, 3. ``maxRows``, 4. weak reference cleanup (and the min-size violation it can
cause), 5. index uniqueness, 6. new ``_version`` for modified rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any

from crdtdb.engine import data, ovsjson
from crdtdb.engine import parser as P
from crdtdb.engine.condition import Condition, condition_from_json
from crdtdb.engine.mutation import Mutation, mutations_from_json
from crdtdb.engine.ovshash import shash_order
from crdtdb.engine.ovsjson import Kind, kind
from crdtdb.engine.parser import ObjectParser
from crdtdb.engine.rowparser import insert_parser
from crdtdb.engine.schema import ColumnSchema, DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import (
    Changeset,
    LockOwnership,
    NoLocks,
    ReadSet,
    Row,
    RowChange,
    Snapshot,
    row_changes,
)
from crdtdb.engine.types import UNLIMITED
from crdtdb.errors import OvsdbError, WouldBlock

#: Operations that never write ("read_only" in ovsdb-server's table of executors).
_READ_ONLY_OPS = frozenset({"select", "wait", "abort", "comment", "assert"})
_NOT_SUPPORTED = "not supported"


def random_uuid() -> str:
    """A random (version 4) UUID string from os.urandom.

    UUIDs are made _UUID_BATCH at a time (:func:`_make_uuids`) and handed out one by one:
    formatting each on its own, with one slice per group, was most of the cost of the two a
    row insert takes (0.55 us a call; 0.19 us this way, timeit).
    """
    try:
        return _pop_uuid()
    except IndexError:
        _uuid_pool.extend(_make_uuids(_UUID_BATCH))
        return _pop_uuid()


def _make_uuids(n: int) -> list[str]:
    """``n`` version 4 UUIDs: random hex digits copied, one digit position at a time for all
    ``n``, into a template that has the dashes, the version digit and a separator."""
    raw = os.urandom(16 * n).hex().encode()
    out = bytearray(_UUID_TEMPLATE * n)
    for src, dst in _UUID_DIGITS:
        out[dst::37] = raw[src::32]
    out[19::37] = raw[16::32].translate(_UUID_VARIANT)
    del out[-1]  # the last separator: split(" ") is 4x faster than split()
    return out.decode().split(" ")


_UUID_BATCH = 256
#: One formatted UUID and its separator; the 0s are overwritten, the 4 and the 8 stay or
#: are overwritten (the variant) as _make_uuids says.
_UUID_TEMPLATE = b"00000000-0000-4000-8000-000000000000 "
#: (position in 32 random hex digits, position in the template) of each random digit: hex
#: digit 12 gives way to the version, digit 16 to the variant (translated below).
_UUID_DIGITS = tuple(
    (src, dst) for src, dst in enumerate([*range(8), *range(9, 13), *range(14, 18),
                                          *range(19, 23), *range(24, 36)])
    if src not in (12, 16))
_UUID_VARIANT = bytes.maketrans(
    b"0123456789abcdef", "".join("89ab"[int(c, 16) & 3] for c in "0123456789abcdef").encode())
_uuid_pool: list[str] = []
_pop_uuid = _uuid_pool.pop


def _forget_random_bytes() -> None:
    _uuid_pool.clear()


# A forked child must not hand out the same UUIDs as its parent.
os.register_at_fork(after_in_child=_forget_random_bytes)


@dataclass(slots=True)
class Outcome:
    """What :func:`execute` decided.

    ``blocked`` means a ``wait`` is not yet satisfied and has not timed out: the caller should
    run the transaction again when the database changes, or once ``timeout_ms`` has elapsed
    (``None``: no timeout). ``results`` is then ``None``. Otherwise ``results`` is the JSON
    result array, and ``changeset`` holds what to commit when the transaction succeeded.
    """

    results: list[Any] | None
    changeset: Changeset | None = None
    read_set: ReadSet = field(default_factory=ReadSet)
    blocked: bool = False
    timeout_ms: int | None = None

    @property
    def ok(self) -> bool:
        return self.results is not None and self.changeset is not None

    def results_nowait(self) -> list[Any]:
        """The result array, or :class:`~crdtdb.errors.WouldBlock` if a wait is pending."""
        if self.results is None:
            raise WouldBlock(self.timeout_ms)
        return self.results


class _TxnRow:
    """A row as this transaction leaves it. ``new`` is a tuple until something writes to it
    (see :meth:`_Transaction.modify`): rows only inserted, or only read for their reference
    count, are never copied, and the commit takes an inserted row's tuple as it is."""

    __slots__ = ("n_refs", "new", "old", "table", "uuid")

    def __init__(self, table: TableSchema, uuid: str, old: Row | None,
                 new: list | Row | None, n_refs: int):
        self.table = table
        self.uuid = uuid
        self.old = old
        self.new = new
        self.n_refs = n_refs


class _Transaction:
    """One execution: the overlay of rows this transaction touched on top of the snapshot."""

    def __init__(self, snapshot: Snapshot, new_uuid: Callable[[], str]):
        self.snapshot = snapshot
        self.schema: DatabaseSchema = snapshot.schema
        self.new_uuid = new_uuid
        #: table name -> uuid -> txn row, in the order rows were first touched.
        self.tables: dict[str, dict[str, _TxnRow]] = {}
        self.read_tables: set[str] = set()
        self.read_rows: set[tuple[str, str]] = set()
        self.comments: list[str] = []
        self.durable = False
        #: Rows ovsdb-server counts as modified (they get a new _version), see _precommit.
        self.modified: set[tuple[str, str]] = set()
        #: The txn rows made from committed rows (``old`` set), in the order they were made:
        #: the only rows the commit-time checks look at for changes, deletions and dangling
        #: weak references, so a transaction of inserts is not walked for them.
        self.existing: list[_TxnRow] = []

    # --- the overlay ----------------------------------------------------------------------

    def txn_row(self, table: TableSchema, uuid: str) -> _TxnRow | None:
        return self.tables.get(table.name, {}).get(uuid)

    def find_or_make(self, table: TableSchema, uuid: str) -> _TxnRow | None:
        trows = self.tables.setdefault(table.name, {})
        tr = trows.get(uuid)
        if tr is None:
            row = self.snapshot.get_row(table.name, uuid)
            if row is None:
                return None
            tr = trows[uuid] = _TxnRow(table, uuid, row, row,
                                       self.snapshot.ref_count(table.name, uuid))
            self.existing.append(tr)
        return tr

    def get(self, table: TableSchema, uuid: str) -> list | Row | None:
        tr = self.txn_row(table, uuid)
        if tr is not None:
            return tr.new
        return self.snapshot.get_row(table.name, uuid)

    def exists_after(self, table_name: str, uuid: str) -> bool:
        tr = self.tables.get(table_name, {}).get(uuid)
        if tr is not None:
            return tr.new is not None
        return self.snapshot.get_row(table_name, uuid) is not None

    def iter_rows(self, table: TableSchema) -> Iterator[tuple[str, Sequence]]:
        trows = self.tables.get(table.name)
        if not trows:
            yield from self.snapshot.iter_rows(table.name)
            return
        for uuid, row in self.snapshot.iter_rows(table.name):
            tr = trows.get(uuid)
            if tr is None:
                yield uuid, row
            elif tr.new is not None:
                yield uuid, tr.new
        for uuid, tr in list(trows.items()):
            if tr.old is None and tr.new is not None:
                yield uuid, tr.new

    def query(self, table: TableSchema, cond: Condition) -> list[tuple[str, Sequence]]:
        uuid = cond.uuid_equal()
        if uuid is not None:
            self.read_rows.add((table.name, uuid))
            row = self.get(table, uuid)
            if row is None or not cond.matches(row):
                return []
            return [(uuid, row)]
        self.read_tables.add(table.name)
        return [(u, r) for u, r in self.iter_rows(table) if cond.matches(r)]

    def modify(self, table: TableSchema, uuid: str) -> list:
        """The row's new value, as a list to write to."""
        tr = self.find_or_make(table, uuid)
        assert tr is not None and tr.new is not None
        return _writable(tr)

    def insert(self, table: TableSchema, uuid: str, row: Row) -> None:
        trows = self.tables.get(table.name)
        if trows is None:  # not setdefault(): that makes an empty dict per inserted row
            trows = self.tables[table.name] = {}
        trows[uuid] = _TxnRow(table, uuid, None, row, 0)

    def delete(self, table: TableSchema, uuid: str) -> None:
        tr = self.find_or_make(table, uuid)
        assert tr is not None
        if tr.old is None:
            del self.tables[table.name][uuid]
        else:
            tr.new = None

    def may_create(self, table: TableSchema, uuid: str) -> bool:
        return (self.snapshot.get_row(table.name, uuid) is None
                and self.txn_row(table, uuid) is None)

    def all_rows(self) -> list[_TxnRow]:
        return [tr for trows in self.tables.values() for tr in trows.values()]


_new_txn_row = object.__new__


def _writable(tr: _TxnRow) -> list:
    new = tr.new
    if type(new) is not list:
        assert new is not None
        new = tr.new = list(new)
    return new


def _count_refs(col: ColumnSchema, datum: tuple, uuid: str, target_table: str, *,
                strong: bool) -> int:
    n = 0
    ctype = col.type
    kb, vb = ctype.key, ctype.value
    key_hit = kb.ref_table == target_table and (kb.is_strong_ref if strong else kb.is_weak_ref)
    val_hit = (vb is not None and vb.ref_table == target_table
               and (vb.is_strong_ref if strong else vb.is_weak_ref))
    if vb is None:
        if key_hit and uuid in datum:
            n += 1
        return n
    for k, v in datum:
        if key_hit and k == uuid:
            n += 1
        if val_hit and v == uuid:
            n += 1
    return n


def _ref_atoms(col: ColumnSchema, datum: Sequence, strong: bool) -> Iterator[tuple[str, str]]:
    """(target table, uuid) of each strong (or weak) reference atom in ``datum``."""
    ctype = col.type
    kb, vb = ctype.key, ctype.value
    k_ok = kb.ref_table is not None and (kb.is_strong_ref if strong else kb.is_weak_ref)
    v_ok = (vb is not None and vb.ref_table is not None
            and (vb.is_strong_ref if strong else vb.is_weak_ref))
    if vb is None:
        if k_ok:
            for a in datum:
                yield kb.ref_table, a  # type: ignore[misc]
        return
    for k, v in datum:
        if k_ok:
            yield kb.ref_table, k  # type: ignore[misc]
        if v_ok:
            yield vb.ref_table, v  # type: ignore[misc]


def _added_removed(old: tuple, new: tuple) -> tuple[tuple, tuple]:
    if old == new:
        return (), ()
    so, sn = set(old), set(new)
    return tuple(x for x in new if x not in so), tuple(x for x in old if x not in sn)


# --- operations ---------------------------------------------------------------------------------

class _Executor:
    def __init__(self, txn: _Transaction, locks: LockOwnership, elapsed_ms: int):
        self.txn = txn
        self.schema = txn.schema
        self.locks = locks
        self.elapsed_ms = elapsed_ms
        self.timeout_ms: int | None = None
        self._symtab: data.SymbolTable | None = None

    @property
    def symtab(self) -> data.SymbolTable:
        """The transaction's named uuids, made when first needed: a transaction of plain
        inserts (a served one) never needs it."""
        symtab = self._symtab
        if symtab is None:
            symtab = self._symtab = data.SymbolTable(self.txn.new_uuid)
        return symtab

    def parse_table(self, p: ObjectParser, member: str = "table") -> TableSchema | None:
        name = p.member(member, P.ID)
        if name is None:
            return None
        table = self.schema.tables.get(name)
        if table is None:
            p.raise_error(f"No table named {name}.")
        return table

    def parse_row(self, table: TableSchema, value: Any,
                  columns: list[ColumnSchema] | None = None) -> list:
        """``ovsdb_row_from_json`` onto a default row."""
        row = list(table.default_row)
        # Fast path: every value valid and plain. Then the order of the walk cannot matter.
        parsers = table.parsers
        slow = data.SLOW
        for name, v in value.items():
            try:  # a try costs nothing until it catches; get() and a test cost opcodes
                i, parse = parsers[name]
            except KeyError:
                break
            d = parse(v)
            if d is slow:
                break
            row[i] = d
        else:
            if columns is not None:
                cols = table.columns
                columns.extend(cols[name] for name in shash_order(value))
            return row
        return self.parse_row_in_order(table, value, columns)

    def parse_row_in_order(self, table: TableSchema, value: Any,
                           columns: list[ColumnSchema] | None = None) -> list:
        """:meth:`parse_row`'s full path: the columns in ovsdb-server's order, so the same
        problem is reported first."""
        row = list(table.default_row)
        for name in shash_order(value):
            v = value[name]
            col = table.columns.get(name)
            if col is None:
                raise data.syntax_error(value, f"No column {name} in table {table.name}.",
                                        tag="unknown column")
            row[col.index] = data.datum_from_json(col.type, v, self.symtab)
            if columns is not None:
                columns.append(col)
        return row

    def parse_columns(self, table: TableSchema, value: Any) -> list[ColumnSchema]:
        """``ovsdb_column_set_from_json``; absent means every column."""
        if value is None:
            return list(table.ordered)
        cols: list[ColumnSchema] = []
        for name in value:
            if not isinstance(name, str):
                raise data.syntax_error(value, "array of distinct column names expected")
            col = table.columns.get(name)
            if col is None:
                raise data.syntax_error(value, f"{name} is not a valid column name")
            if col in cols:
                raise data.syntax_error(value, "array of distinct column names expected")
            cols.append(col)
        return cols

    # Each op_* mirrors ovsdb_execute_*: members are parsed first, then semantics run only if
    # the parse went well; the caller turns the parser's error (which wins) into the result.

    def op_insert(self, p: ObjectParser, result: dict) -> None:
        table = self.parse_table(p)
        uuid_json = p.member("uuid", P.STRING, optional=True)
        uuid_name = p.member("uuid-name", P.ID, optional=True)
        row_json = p.member("row", P.OBJECT)
        if p.error or table is None:
            return
        self.insert(table, uuid_json, uuid_name, row_json, result)

    def insert_plain(self, op: dict, result: dict) -> bool:
        """:meth:`op_insert` for an operation whose members are all present, allowed and of
        the right JSON type (what clients send), without an :class:`ObjectParser`: that
        parser found nothing to report, so going straight to :meth:`insert` gives the same
        result or error. ``False``, doing nothing, for any other operation."""
        name = op.get("table")
        row_json = op.get("row")
        # A table of the schema is an <id>, as the parser would have required.
        table = self.schema.tables.get(name) if type(name) is str else None
        if table is None or type(row_json) is not dict:
            return False
        if len(op) == 3:
            # "op", "table" and "row" only, no "uuid" or "uuid-name" (a bulk load's rows):
            # :meth:`insert`'s path for it here, without its call or txn.insert's, when
            # the row parses plainly.
            txn = self.txn
            row_uuid = txn.new_uuid()
            new = (table.row_parser or insert_parser(table))(row_json, row_uuid,
                                                              txn.new_uuid)
            if new is not data.SLOW:
                trows = txn.tables.get(table.name)
                if trows is None:
                    trows = txn.tables[table.name] = {}
                # Made without _TxnRow.__init__'s Python call (a bulk load makes thousands).
                tr = trows[row_uuid] = _new_txn_row(_TxnRow)
                tr.table = table
                tr.uuid = row_uuid
                tr.old = None
                tr.new = new
                tr.n_refs = 0
                result["uuid"] = ["uuid", row_uuid]
                return True
            self.insert_generic(table, row_uuid, row_json, result)
            return True
        n = 2
        uuid_json = op.get("uuid")
        if uuid_json is not None:
            if type(uuid_json) is not str:
                return False
            n += 1
        uuid_name = op.get("uuid-name")
        if uuid_name is not None:
            if type(uuid_name) is not str or not ovsjson.is_id(uuid_name):
                return False
            n += 1
        if len(op) != n + 1:
            return False
        self.insert(table, uuid_json, uuid_name, row_json, result)
        return True

    def insert(self, table: TableSchema, uuid_json: str | None, uuid_name: str | None,
               row_json: dict, result: dict) -> None:
        """The semantics of ``insert``, once its members are parsed."""
        txn = self.txn
        row_uuid: str
        if uuid_json is not None:
            if not data.is_uuid(uuid_json):
                raise data.syntax_error(uuid_json, "bad uuid")
            row_uuid = uuid_json.lower()
            if not txn.may_create(table, row_uuid):
                raise data.syntax_error(
                    uuid_json, "This UUID would duplicate a UUID already present within the "
                               "table or deleted within the same transaction.",
                    tag="duplicate uuid")
        if uuid_name is not None:
            sym = self.symtab.insert(uuid_name)
            if sym.created:
                raise data.syntax_error(uuid_name, 'This "uuid-name" appeared on an earlier '
                                                   '"insert" operation.',
                                        tag="duplicate uuid-name")
            if uuid_json is not None:
                sym.uuid = row_uuid
            else:
                row_uuid = sym.uuid
            sym.created = True
        elif uuid_json is None:
            row_uuid = txn.new_uuid()
        # A plain valid row (a bulk load's): the table's generated parser makes it whole.
        parse = table.row_parser or insert_parser(table)
        new = parse(row_json, row_uuid, txn.new_uuid)
        if new is data.SLOW:
            self.insert_generic(table, row_uuid, row_json, result)
            return
        txn.insert(table, row_uuid, new)
        result["uuid"] = ["uuid", row_uuid]

    def insert_generic(self, table: TableSchema, row_uuid: str, row_json: dict,
                       result: dict) -> None:
        """The rest of :meth:`insert` for a row the generated parser left to the generic
        path (which reports a bad row's first problem as ovsdb-server does)."""
        txn = self.txn
        row = self.parse_row_in_order(table, row_json)
        # Defaults may violate constraints (an enum without "" in it, say): ovsdb-server
        # checks every single-element column, in its column order. Given values were
        # checked when parsed, so only the defaults that are known to fail need a look.
        for col, error in table.bad_defaults:
            if col.name not in row_json:
                raise error
        row[0] = (row_uuid,)
        row[1] = (txn.new_uuid(),)
        txn.insert(table, row_uuid, tuple(row))
        result["uuid"] = ["uuid", row_uuid]

    def op_select(self, p: ObjectParser, result: dict) -> None:
        table = self.parse_table(p)
        where = p.member("where", P.ARRAY)
        columns_json = p.member("columns", P.ARRAY, optional=True)
        sort_json = p.member("sort", P.ARRAY, optional=True)
        if p.error or table is None:
            return
        cond = condition_from_json(table, where, self.symtab)
        columns = self.parse_columns(table, columns_json)
        sort = self.parse_columns(table, sort_json) if sort_json is not None else []
        rows = [r for _, r in self.txn.query(table, cond)]
        idx = [c.index for c in columns]
        if 0 not in idx:
            seen: set[tuple] = set()
            distinct = []
            for r in rows:
                key = tuple(r[i] for i in idx)
                if key not in seen:
                    seen.add(key)
                    distinct.append(r)
            rows = distinct
        if sort:
            import functools

            def cmp(a: Sequence, b: Sequence) -> int:
                for c in sort:
                    x = data.compare_datums(a[c.index], b[c.index])
                    if x:
                        return x
                return 0
            rows.sort(key=functools.cmp_to_key(cmp))
        result["rows"] = [{c.name: data.datum_to_json(c.type, r[c.index]) for c in columns}
                          for r in rows]

    def op_update(self, p: ObjectParser, result: dict) -> None:
        table = self.parse_table(p)
        where = p.member("where", P.ARRAY)
        row_json = p.member("row", P.OBJECT)
        if p.error or table is None:
            return
        columns: list[ColumnSchema] = []
        new = self.parse_row(table, row_json, columns)
        for col in columns:
            if not col.mutable:
                raise OvsdbError("constraint violation",
                                 f"Cannot update immutable column {col.name} in table "
                                 f"{table.name}.", data.ovsjson.to_string(p.obj))
        cond = condition_from_json(table, where, self.symtab)
        matches = self.txn.query(table, cond)
        for uuid, row in matches:
            if any(row[c.index] != new[c.index] for c in columns):
                target = self.txn.modify(table, uuid)
                for c in columns:
                    target[c.index] = new[c.index]
        result["count"] = len(matches)

    def op_mutate(self, p: ObjectParser, result: dict) -> None:
        table = self.parse_table(p)
        where = p.member("where", P.ARRAY)
        mutations_json = p.member("mutations", P.ARRAY)
        if p.error or table is None:
            return
        mutations: tuple[Mutation, ...] = mutations_from_json(table, mutations_json, self.symtab)
        cond = condition_from_json(table, where, self.symtab)
        matches = self.txn.query(table, cond)
        for uuid, _ in matches:
            target = self.txn.modify(table, uuid)
            for m in mutations:
                target[m.column.index] = m.apply(target[m.column.index])
        result["count"] = len(matches)

    def op_delete(self, p: ObjectParser, result: dict) -> None:
        where = p.member("where", P.ARRAY)
        table = self.parse_table(p)
        if p.error or table is None:
            return
        cond = condition_from_json(table, where, self.symtab)
        matches = self.txn.query(table, cond)
        for uuid, _ in matches:
            self.txn.delete(table, uuid)
        result["count"] = len(matches)

    def op_wait(self, p: ObjectParser, result: dict) -> None:
        timeout = p.member("timeout", P.INTEGER, optional=True)
        where = p.member("where", P.ARRAY)
        columns_json = p.member("columns", P.ARRAY, optional=True)
        until = p.member("until", P.STRING)
        rows_json = p.member("rows", P.ARRAY)
        table = self.parse_table(p)
        if p.error or table is None:
            return
        cond = condition_from_json(table, where, self.symtab)
        columns = self.parse_columns(table, columns_json)
        timeout_ms: int | None = None
        if timeout is not None:
            timeout_ms = int(timeout)
            if timeout_ms < 0:
                raise data.syntax_error(timeout, "timeout must be nonnegative")
            if self.timeout_ms is None or timeout_ms < self.timeout_ms:
                self.timeout_ms = timeout_ms
        if until not in ("==", "!="):
            raise data.syntax_error(until, '"until" must be "==" or "!="')
        idx = [c.index for c in columns]
        expected: set[tuple] = set()
        for rj in rows_json:
            if kind(rj) is not Kind.OBJECT:
                raise data.syntax_error(rj, "row must be JSON object")
            r = self.parse_row(table, rj)
            expected.add(tuple(r[i] for i in idx))
        equal = True
        actual: set[tuple] = set()
        for _, r in self.txn.query(table, cond):
            key = tuple(r[i] for i in idx)
            if key not in expected:
                equal = False
                break
            actual.add(key)
        if equal:
            equal = len(actual) == len(expected)
        if (until == "==") != equal:
            if timeout_ms is not None and self.elapsed_ms >= timeout_ms:
                if self.elapsed_ms:
                    raise OvsdbError("timed out", f'"wait" timed out after {self.elapsed_ms} ms')
                raise OvsdbError("timed out", '"where" clause test failed')
            raise OvsdbError(_NOT_SUPPORTED, "triggers not supported")

    def op_commit(self, p: ObjectParser, result: dict) -> None:
        durable = p.member("durable", P.BOOLEAN)
        if durable:
            self.txn.durable = True

    def op_abort(self, p: ObjectParser, result: dict) -> None:
        raise OvsdbError("aborted", "aborted by request")

    def op_comment(self, p: ObjectParser, result: dict) -> None:
        comment = p.member("comment", P.STRING)
        if comment is not None:
            self.txn.comments.append(comment)

    def op_assert(self, p: ObjectParser, result: dict) -> None:
        lock = p.member("lock", P.ID)
        if lock is None:
            return
        if not self.locks.holds(lock):
            raise OvsdbError("not owner", f"Asserted lock {lock} not held.")


_EXECUTORS: dict[str, Callable[[_Executor, ObjectParser, dict], None]] = {
    "insert": _Executor.op_insert,
    "select": _Executor.op_select,
    "update": _Executor.op_update,
    "mutate": _Executor.op_mutate,
    "delete": _Executor.op_delete,
    "wait": _Executor.op_wait,
    "commit": _Executor.op_commit,
    "abort": _Executor.op_abort,
    "comment": _Executor.op_comment,
    "assert": _Executor.op_assert,
}


def execute(snapshot: Snapshot, operations: Sequence[Any], *,
            locks: LockOwnership | None = None, elapsed_ms: int = 0,
            new_uuid: Callable[[], str] = random_uuid) -> Outcome:
    """Run the operations of a ``transact`` (the params after the database name).

    ``elapsed_ms`` is how long the transaction has been waiting (0 on the first run): a
    ``wait`` whose timeout has passed fails with "timed out", one that has not makes the
    outcome ``blocked``.
    """
    txn = _Transaction(snapshot, new_uuid)
    x = _Executor(txn, locks or NoLocks(), elapsed_ms)
    results: list[Any] = []
    n = len(operations)
    error: OvsdbError | None = None
    reserved = snapshot.schema.name.startswith("_")
    for i, op_json in enumerate(operations, 1):
        # Plain inserts (a bulk load is thousands) skip the general parse; see insert_plain.
        if not reserved and type(op_json) is dict and op_json.get("op") == "insert":
            result: dict[str, Any] = {}
            try:
                if x.insert_plain(op_json, result):
                    results.append(result)
                    continue
            except OvsdbError as exc:
                results.append(exc.to_json())
                error = exc
                break
        p = ObjectParser(op_json, f"ovsdb operation {i} of {n}")
        op_name = p.member("op", P.ID)
        result = {}
        read_only = False
        if op_name is not None:
            executor = _EXECUTORS.get(op_name)
            if executor is None:
                p.raise_error(f'No operation "{op_name}"')
            else:
                read_only = op_name in _READ_ONLY_OPS
                try:
                    executor(x, p, result)
                except OvsdbError as exc:
                    error = exc
        parse_error = p.finish()
        if parse_error is not None:
            error = parse_error
        if error is None and not read_only and reserved:
            error = OvsdbError("not allowed", f"{op_name} operation not allowed on table in "
                                              f"reserved database {snapshot.schema.name}")
        if error is not None:
            if error.tag == _NOT_SUPPORTED:
                return Outcome(None, read_set=_read_set(txn), blocked=True,
                               timeout_ms=x.timeout_ms)
            results.append(error.to_json())
            break
        results.append(result)
    if error is not None:
        results.extend([None] * (n - len(results)))
        return Outcome(results, None, _read_set(txn))
    try:
        changeset = _precommit(txn)
    except OvsdbError as exc:
        results.append(exc.to_json())
        return Outcome(results, None, _read_set(txn))
    # (_read_set, inline: a transaction of inserts reads nothing)
    return Outcome(results, changeset, _read_set(txn) if txn.read_tables or txn.read_rows
                   else _NOTHING_READ)


def _read_set(txn: _Transaction) -> ReadSet:
    if not txn.read_tables and not txn.read_rows:
        return _NOTHING_READ  # (inserts only: no frozen dataclass to make)
    return ReadSet(frozenset(txn.read_tables), frozenset(txn.read_rows))


_NOTHING_READ = ReadSet()


# --- commit-time checks (ovsdb_txn_precommit) ---------------------------------------------------

def _precommit(txn: _Transaction) -> Changeset:
    # determine_changes: drop rows that did not really change (only committed rows can be
    # unchanged; inserted ones are all in txn.tables).
    kept: list[_TxnRow] = []
    for tr in txn.existing:
        if tr.new is not None and tuple(tr.new) == tr.old:
            del txn.tables[tr.table.name][tr.uuid]
        else:
            kept.append(tr)
    txn.existing = kept
    if not any(txn.tables.values()):
        return Changeset(comment=_comment(txn), durable=txn.durable)
    changed = [tr for trows in txn.tables.values() for tr in trows.values()]
    # ovsdb-server marks these rows changed here, once and for all: a row keeps its mark (and
    # gets a new _version) even if weak-reference cleanup later undoes its change.
    if kept:
        txn.modified = {(tr.table.name, tr.uuid) for tr in kept if tr.new is not None}
    _update_ref_counts(txn, changed)
    _collect_garbage(txn)
    _check_max_rows(txn)
    _assess_weak_refs(txn)
    _check_index_uniqueness(txn)
    return _changeset(txn)


def _update_ref_counts(txn: _Transaction, changed: list[_TxnRow]) -> None:
    tables = txn.tables
    for tr in changed:
        old, new = tr.old, tr.new
        for col in tr.table.ref_columns:
            i = col.index
            if old is None:
                datum = new[i] if new is not None else ()
                if not datum:
                    continue
                simple = col.strong_set_ref
                if simple is None:
                    _count_strong_refs(txn, tr, col, datum, 1)
                    continue
                # An inserted row's strong references (each row of a bulk load): a target
                # this transaction already holds is counted here, without two calls;
                # _count_strong_refs makes the others (or reports them dangling).
                targets = tables.get(simple)
                for target in datum:
                    target_tr = targets.get(target) if targets else None
                    if target_tr is None or target == tr.uuid:
                        _count_strong_refs(txn, tr, col, (target,), 1)
                        targets = tables.get(simple)
                    else:
                        target_tr.n_refs += 1
            elif new is None:
                if old[i]:
                    _count_strong_refs(txn, tr, col, old[i], -1)
            else:
                added, removed = _added_removed(old[i], new[i])
                if removed:
                    _count_strong_refs(txn, tr, col, removed, -1)
                if added:
                    _count_strong_refs(txn, tr, col, added, 1)
    for tr in txn.existing:
        if tr.new is None and tr.n_refs:
            break
    else:
        return
    for tr in txn.all_rows():  # the first in ovsdb-server's order is reported
        if tr.new is None and tr.n_refs:
            raise OvsdbError("referential integrity violation",
                             f"cannot delete {tr.table.name} row {tr.uuid} because of "
                             f"{tr.n_refs} remaining reference(s)")


def _count_strong_refs(txn: _Transaction, tr: _TxnRow, col: ColumnSchema, datum: Sequence,
                       delta: int) -> None:
    """Add ``delta`` to the reference count of each row ``datum`` (of ``tr``'s column
    ``col``) strongly refers to; a reference to a row that does not exist is an error."""
    simple = col.strong_set_ref
    if simple is not None:  # the common shape, without _ref_atoms' generator
        target_schema = txn.schema.tables[simple]
        for target in datum:
            if target == tr.uuid:
                continue  # self-references don't count
            target_tr = txn.find_or_make(target_schema, target)
            if target_tr is None:
                raise _dangling_ref(tr, col, simple, target)
            target_tr.n_refs += delta
        return
    for target_table, target in _ref_atoms(col, datum, strong=True):
        if target == tr.uuid:
            continue
        target_tr = txn.find_or_make(txn.schema.tables[target_table], target)
        if target_tr is None:
            raise _dangling_ref(tr, col, target_table, target)
        target_tr.n_refs += delta


def _dangling_ref(tr: _TxnRow, col: ColumnSchema, target_table: str,
                  target: str) -> OvsdbError:
    return OvsdbError("referential integrity violation",
                      f"Table {tr.table.name} column {col.name} row {tr.uuid} references "
                      f"nonexistent row {target} in table {target_table}.")


def _delete_garbage_row(txn: _Transaction, tr: _TxnRow) -> None:
    if tr.table.is_root:
        return
    row = tr.new
    assert row is not None
    tr.new = None
    for col in tr.table.ref_columns:
        for target_table, target in _ref_atoms(col, row[col.index], strong=True):
            if target == tr.uuid:
                continue
            target_tr = txn.find_or_make(txn.schema.tables[target_table], target)
            assert target_tr is not None and target_tr.new is not None
            target_tr.n_refs -= 1
            if target_tr.n_refs == 0:
                _delete_garbage_row(txn, target_tr)


def _collect_garbage(txn: _Transaction) -> None:
    tables = txn.schema.tables
    for tname in txn.tables:
        if not tables[tname].is_root:
            break
    else:
        return
    # The rows of root tables are never garbage: skipped table by table, not row by row.
    for tr in [tr for tname, trows in txn.tables.items() if not tables[tname].is_root
               for tr in trows.values()]:
        if tr.new is not None and not tr.n_refs:
            _delete_garbage_row(txn, tr)


def _check_max_rows(txn: _Transaction) -> None:
    for tname, trows in txn.tables.items():
        table = txn.schema.tables[tname]
        if table.max_rows == UNLIMITED:
            continue
        n = txn.snapshot.row_count(tname)
        for tr in trows.values():
            if tr.old is None and tr.new is not None:
                n += 1
            elif tr.old is not None and tr.new is None:
                n -= 1
        if n > table.max_rows:
            raise OvsdbError("constraint violation",
                             f'transaction causes "{tname}" table to contain {n} rows, greater '
                             f"than the schema-defined limit of {table.max_rows} row(s)")


def _assess_weak_refs(txn: _Transaction) -> None:
    schema = txn.schema
    # Rows deleted by this transaction: the rows that weakly referenced them lose those refs.
    deleted_refs: dict[tuple[str, str], set[tuple[int, str]]] = {}
    deleting = False
    for tr in txn.existing:
        if tr.new is None:
            deleting = True
            break
    else:
        for tname in txn.tables:
            if schema.tables[tname].weak_ref_columns:
                break
        else:
            return  # no row deleted, no weak reference in what changed: nothing to clean
    for tr in txn.all_rows() if deleting else ():
        if tr.old is not None and tr.new is None:
            for src_table_name, src_uuid in txn.snapshot.weak_referrers(tr.table.name, tr.uuid):
                src_table = schema.tables[src_table_name]
                src_tr = txn.find_or_make(src_table, src_uuid)
                if src_tr is None or src_tr.new is None:
                    continue
                for col in src_table.ref_columns:
                    if _count_refs(col, src_tr.old[col.index] if src_tr.old else (),
                                   tr.uuid, tr.table.name, strong=False):
                        deleted_refs.setdefault((src_table_name, src_uuid), set()).add(
                            (col.index, tr.uuid))
    # Nothing below makes txn rows: the rows of tables without weak references are skipped
    # table by table.
    weak_rows = [tr for tname, trows in txn.tables.items() if schema.tables[tname].weak_ref_columns
                 for tr in trows.values()]
    for tr in weak_rows:
        if tr.new is None:
            continue
        table = tr.table
        _writable(tr)
        gone = deleted_refs.get((table.name, tr.uuid), ())
        for col in table.weak_ref_columns:
            ctype = col.type
            weak_key = ctype.key.is_weak_ref
            weak_val = ctype.value is not None and ctype.value.is_weak_ref
            i = col.index
            datum = tr.new[i]
            orig_n = len(datum)
            dead = {u for ci, u in gone if ci == i}
            if dead:
                datum = _drop_refs(ctype, datum, dead, weak_key, weak_val)
            added = (_added_removed(tr.old[i], datum)[0]
                     if tr.old is not None else datum)
            missing: set[str] = set()
            zero = False
            for target_table, target in _ref_atoms(col, added, strong=False):
                if not txn.exists_after(target_table, target):
                    missing.add(target)
                    if target == data.ZERO_UUID:
                        zero = True
            if missing:
                datum = _drop_refs(ctype, datum, missing, weak_key, weak_val)
            tr.new[i] = datum
            if len(datum) != orig_n and tr.old is not None:
                txn.modified.add((table.name, tr.uuid))
            if len(datum) != orig_n and len(datum) < ctype.n_min:
                if zero and tr.old is None:
                    raise OvsdbError(
                        "constraint violation",
                        f'Weak reference column "{col.name}" in "{table.name}" row {tr.uuid} '
                        "(inserted within this transaction) contained all-zeros UUID "
                        "(probably as the default value for this column) but deleting this "
                        "value caused a constraint volation because this column is not allowed "
                        "to be empty.")
                inserted = "" if tr.old is not None else "(inserted within this transaction) "
                raise OvsdbError(
                    "constraint violation",
                    f"Deletion of {orig_n - len(datum)} weak reference(s) to deleted (or "
                    f'never-existing) rows from column "{col.name}" in "{table.name}" row '
                    f"{tr.uuid} {inserted}caused this column to become empty, but constraints "
                    "on this column disallow an empty column.")


def _drop_refs(ctype: Any, datum: tuple, dead: set[str], weak_key: bool,
               weak_val: bool) -> tuple:
    if ctype.value is None:
        return tuple(a for a in datum if a not in dead)
    return tuple((k, v) for k, v in datum
                 if not ((weak_key and k in dead) or (weak_val and v in dead)))


def _index_key(table: TableSchema, index: tuple[str, ...], row: Sequence) -> tuple:
    return tuple(row[table.columns[c].index] for c in index)


def _check_index_uniqueness(txn: _Transaction) -> None:
    for tname, trows in txn.tables.items():
        table = txn.schema.tables[tname]
        if not table.indexes:
            continue
        for tr in trows.values():
            if tr.new is not tr.old:
                break
        else:
            # Only committed rows left as they were (the targets of an insert's references:
            # a flow's datapath): their index values are the committed ones, held by them
            # alone, so none of them can clash (ovsdb-server checks them and finds nothing).
            continue
        pending: list[dict[tuple, _TxnRow]] = [{} for _ in table.indexes]
        for tr in trows.values():
            if tr.new is None:
                continue
            for n, index in enumerate(table.indexes):
                key = _index_key(table, index, tr.new)
                other = pending[n].get(key)
                if other is not None:
                    raise _duplicate_index_error(txn, table, index, other.uuid, other.new,
                                                 tr.uuid, tr.new)
                committed = txn.snapshot.index_find(tname, n, key)
                if committed is not None and committed not in trows:
                    row = txn.snapshot.get_row(tname, committed)
                    assert row is not None
                    raise _duplicate_index_error(txn, table, index, committed, row,
                                                 tr.uuid, tr.new)
                pending[n][key] = tr


def _describe_index_row(txn: _Transaction, table: TableSchema, index: tuple[str, ...],
                        uuid: str, title: str) -> str:
    tr = txn.txn_row(table, uuid)
    s = f"{title} row, with UUID {uuid}, "
    if tr is None or (tr.old is not None and tr.new is not None and tuple(tr.new) == tr.old):
        return s + ("existed in the database before this transaction and was not modified by "
                    "the transaction.")
    if tr.old is None:
        return s + "was inserted by this transaction."
    assert tr.new is not None
    if _index_key(table, index, tr.old) == _index_key(table, index, tr.new):
        return s + ("existed in the database before this transaction, which modified some of "
                    "the row's columns but not any columns in this index.")
    return s + ("had the following index values before the transaction: "
                + _columns_to_string(table, index, tr.old) + ".")


def _english_join(items: Sequence[str]) -> str:
    out = []
    n = len(items)
    for i, s in enumerate(items):
        if i == 0:
            out.append(s)
        elif n == 2:
            out.append(" and " + s)
        elif i == n - 1:
            out.append(", and " + s)
        else:
            out.append(", " + s)
    return "".join(out)


def _columns_to_string(table: TableSchema, index: tuple[str, ...], row: Sequence) -> str:
    return _english_join([data.datum_to_string(table.columns[c].type, row[table.columns[c].index])
                          for c in index])


def _duplicate_index_error(txn: _Transaction, table: TableSchema, index: tuple[str, ...],
                           a_uuid: str, a: Sequence, b_uuid: str, b: Sequence) -> OvsdbError:
    # Like ovsdb-server: "First" is the greater row, comparing all columns in its order.
    for col in table.ovs_ordered:
        c = data.compare_datums(a[col.index], b[col.index])
        if c:
            if c < 0:
                a_uuid, a, b_uuid, b = b_uuid, b, a_uuid, a
            break
    cols = "column" + ("s" if len(index) > 1 else "") + " " + _english_join(
        [f'"{c}"' for c in index])
    return OvsdbError(
        "constraint violation",
        f'Transaction causes multiple rows in "{table.name}" table to have identical values '
        f"({_columns_to_string(table, index, a)}) for index on {cols}.  "
        + _describe_index_row(txn, table, index, a_uuid, "First") + "  "
        + _describe_index_row(txn, table, index, b_uuid, "Second"))


def _comment(txn: _Transaction) -> str | None:
    return "\n".join(txn.comments) if txn.comments else None


_NEW = attrgetter("new")


def _changeset(txn: _Transaction) -> Changeset:
    cs = Changeset(comment="\n".join(txn.comments) if txn.comments else None,  # (_comment)
                   durable=txn.durable)
    with_committed: set[str] | None = None
    for tname, trows in txn.tables.items():
        if len(trows) <= 8:
            # A few rows (a single-row transaction's): straight into the table's dict.
            changes: dict[str, RowChange] = {}
            for uuid, tr in trows.items():
                new, old = tr.new, tr.old
                if new is None:
                    if old is not None:
                        changes[uuid] = RowChange(old, None)
                elif old is None:
                    changes[uuid] = RowChange(None, tuple(new))
                elif new is not old:  # (left as it was: a reference's target)
                    new = tuple(new)
                    if new != old or (tname, uuid) in txn.modified:
                        changes[uuid] = RowChange(old, (new[0], (txn.new_uuid(),), *new[2:]))
            if changes:
                cs.tables[tname] = changes
            continue
        if with_committed is None:
            with_committed = {tr.table.name for tr in txn.existing}
        if tname not in with_committed:
            # Only rows this transaction inserted (a bulk load's thousands): unless garbage
            # collection took one, each is an insert, made without a Python loop.
            inserted = list(map(_NEW, trows.values()))
            if all(inserted):
                cs.tables[tname] = dict(zip(trows, row_changes(repeat(None),
                                                               list(map(tuple, inserted))),
                                            strict=True))
                continue
        uuids: list[str] = []
        olds: list[Row | None] = []
        news: list[Row | None] = []
        for uuid, tr in trows.items():
            if tr.new is None:
                if tr.old is not None:
                    uuids.append(uuid)
                    olds.append(tr.old)
                    news.append(None)
                continue
            new = tuple(tr.new)
            if tr.old is None:
                uuids.append(uuid)
                olds.append(None)
                news.append(new)
            elif new != tr.old or (tname, uuid) in txn.modified:
                uuids.append(uuid)
                olds.append(tr.old)
                news.append((new[0], (txn.new_uuid(),), *new[2:]))
        if len(uuids) > 8:  # row_changes' set-up costs more than it saves for a few rows
            cs.tables[tname] = dict(zip(uuids, row_changes(olds, news), strict=True))
        elif uuids:
            cs.tables[tname] = {u: RowChange(o, n)
                                for u, o, n in zip(uuids, olds, news, strict=True)}
    return cs
