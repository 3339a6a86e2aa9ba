"""Random OVSDB transaction sequences for the differential tests
(tests/test_differential_hypothesis.py).

``transaction_sequences()`` is a Hypothesis strategy of lists of transactions.  It draws them
one at a time with a ``TxnGenerator``, which works from a schema model it builds itself from
the ``.ovsschema`` JSON, and runs each on an ``EngineSide`` (an engine ``MemoryDatabase``) so
that the next one is drawn against the state the earlier ones left.

The operations are *abstract*: wherever a row that an earlier transaction inserted is named,
the JSON holds a :class:`Ref` ("row k of table T") instead of a UUID, because ovsdb-server and
the engine give that row different UUIDs.  ``resolve()`` turns an abstract transaction into
the concrete one for one side; ``display()`` into readable JSON (``"@Chassis#2"``).

What a transaction can hold: 1 to 5 operations (plus the inserts spawned to give new rows
something to reference, up to 12): insert (with "uuid-name", sometimes an explicit "uuid",
references to committed rows, to rows inserted earlier or later in the same transaction and
to the row itself), select (all columns, some, none, "sort"), update, mutate (every mutator:
arithmetic on integers and reals and their sets, insert and delete on sets and maps, a map
delete by keys), delete, wait with timeout 0 (``==`` and ``!=``, rows taken from the state,
altered or not), comment, commit, abort, assert.  Where clauses use every function,
``_uuid`` against committed rows and named rows, values from the state, ``true``/``false``.
About one operation in sixteen carries a fault: a wrong type, a constraint violation (range,
length, enum, set size), duplicates, an unknown column, member or mutator, an immutable
column, a dangling or wrong-table reference, a malformed where clause, mutation or operation.

The generator looks at the engine's state to draw interesting values (existing names for where
clauses, rows for ``wait``) and to stay away from the few things that cannot be compared.  It
does so with *probes*: pure ``crdtdb.engine.execute`` runs that are never committed.  The
engine is only an oracle for what to draw; everything it answers for real is compared with
ovsdb-server.

What is never generated, and why (each of these is also marked where it is enforced):

* A ``wait`` with a non-zero or missing ``timeout``: ovsdb-server would block the transaction
  and the engine raises ``WouldBlock``; nothing to compare.  Waits use ``"timeout": 0`` (or an
  invalid timeout that fails to parse).
* Integer ``*=`` whose product, for any affected value, overflows int64 or goes through
  ovsdb-server's quirky overflow test: ``mul_int`` in ovsdb/mutation.c misjudges a negative
  times a negative (it tests ``y < INT64_MAX / y``, ignoring x), reports ``x * y`` within
  ``y`` of INT64_MAX as out of range, and divides by zero (SIGFPE, the server dies) for a
  negative times 0.  The values are probed first (``TxnGenerator._safe_multiplier``).
* Reals with more than 15 significant digits, or subnormal, or not finite, in anything sent:
  ovsdb-server prints reals with ``%.15g`` (so such a value cannot round-trip), drops the
  connection on a subnormal number in its input, and JSON has no infinity or NaN.  Values
  taken from the state are checked by ``_sendable``.
* Strings with NUL or lone surrogates: ovsdb-server's JSON parser rejects them and closes the
  connection.
* A transaction whose outcome depends on ovsdb-server's hash order (``hash_order_ambiguity``):
  - a ``mutate`` matching several rows that would fail differently (the row ovsdb-server
    reports first is the first in its uuid hash table);
  - a commit-time failure where the first failing check has two or more distinct problems
    (two dangling references, even in one datum, whose atoms are sorted by UUID; two
    referenced rows deleted; two rows whose weak references leave a column empty; two
    different index collisions or three rows with one index value): ovsdb-server reports
    the first in its uuid hash order.
  Such transactions are left out of the sequence (a Hypothesis event counts them).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import event
from hypothesis import strategies as st

from crdtdb.engine import DatabaseSchema, MemoryDatabase, execute

T = TypeVar("T")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DBL_MAX = sys.float_info.max
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
UNLIMITED = math.inf

#: UUIDs written literally in generated operations: explicit "uuid" members of inserts (so
#: they collide now and then: "duplicate uuid"), dangling references, plain uuid values.
LITERAL_UUIDS = tuple(f"5eed{i:04x}-0000-4000-8000-{i:012x}" for i in range(1, 7))

# -- the schema model -------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseModel:
    type: str  # integer, real, boolean, string, uuid
    enum: tuple[Any, ...] | None = None
    min_int: int = INT64_MIN
    max_int: int = INT64_MAX
    min_real: float = -DBL_MAX
    max_real: float = DBL_MAX
    min_len: int = 0
    max_len: int = 2**32 - 1
    ref_table: str | None = None
    ref_type: str = "strong"

    @property
    def is_ref(self) -> bool:
        return self.type == "uuid" and self.ref_table is not None

    @property
    def is_strong(self) -> bool:
        return self.is_ref and self.ref_type == "strong"

    @property
    def is_weak(self) -> bool:
        return self.is_ref and self.ref_type == "weak"

    @property
    def numeric(self) -> bool:
        return self.type in ("integer", "real")

    def default_is_valid(self) -> bool:
        """Whether the type's default atom (0, 0.0, false, "", the zero uuid) is acceptable."""
        if self.is_ref:
            return False  # the zero uuid never names a row
        default = {"integer": 0, "real": 0.0, "boolean": False, "string": "", "uuid": ZERO_UUID}
        value = default[self.type]
        if self.enum is not None:
            return value in self.enum
        if self.type == "integer":
            return self.min_int <= 0 <= self.max_int
        if self.type == "real":
            return self.min_real <= 0.0 <= self.max_real
        if self.type == "string":
            return self.min_len == 0
        return True


@dataclass(frozen=True)
class TypeModel:
    key: BaseModel
    value: BaseModel | None
    min: int
    max: float  # UNLIMITED or an int

    @property
    def is_map(self) -> bool:
        return self.value is not None

    @property
    def is_scalar(self) -> bool:
        return not self.is_map and self.min == 1 and self.max == 1

    @property
    def is_optional(self) -> bool:
        return not self.is_map and self.min == 0 and self.max == 1

    @property
    def is_multi(self) -> bool:
        """A set or a map (what insert/delete mutations apply to)."""
        return self.is_map or self.max > 1 or self.min == 0

    def bases(self) -> Iterable[BaseModel]:
        yield self.key
        if self.value is not None:
            yield self.value


@dataclass(frozen=True)
class ColumnModel:
    name: str
    type: TypeModel
    mutable: bool = True
    ephemeral: bool = False

    @property
    def required(self) -> bool:
        """An insert that leaves this column out gets an invalid default."""
        return self.type.min >= 1 and any(not b.default_is_valid() for b in self.type.bases())

    @property
    def has_refs(self) -> bool:
        return any(b.is_ref for b in self.type.bases())


@dataclass(frozen=True)
class TableModel:
    name: str
    columns: dict[str, ColumnModel]
    is_root: bool
    max_rows: float
    indexes: tuple[tuple[str, ...], ...]

    def index_columns(self) -> set[str]:
        return {c for index in self.indexes for c in index}


@dataclass(frozen=True)
class SchemaModel:
    name: str
    tables: dict[str, TableModel]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SchemaModel:
        tables = {name: _table_from_json(name, t) for name, t in doc["tables"].items()}
        return cls(doc["name"], tables)


def _enum_from_json(j: Any) -> tuple[Any, ...]:
    if isinstance(j, list) and len(j) == 2 and j[0] == "set":
        return tuple(j[1])
    return (j,)


def _base_from_json(j: Any) -> BaseModel:
    if isinstance(j, str):
        return BaseModel(j)
    kw: dict[str, Any] = {"type": j["type"]}
    if "enum" in j:
        kw["enum"] = _enum_from_json(j["enum"])
    for src, dst in (
        ("minInteger", "min_int"),
        ("maxInteger", "max_int"),
        ("minReal", "min_real"),
        ("maxReal", "max_real"),
        ("minLength", "min_len"),
        ("maxLength", "max_len"),
        ("refTable", "ref_table"),
        ("refType", "ref_type"),
    ):
        if src in j:
            kw[dst] = float(j[src]) if dst in ("min_real", "max_real") else j[src]
    return BaseModel(**kw)


def _type_from_json(j: Any) -> TypeModel:
    if isinstance(j, str):
        return TypeModel(BaseModel(j), None, 1, 1)
    key = _base_from_json(j["key"])
    value = _base_from_json(j["value"]) if "value" in j else None
    maximum = j.get("max", 1)
    return TypeModel(key, value, j.get("min", 1), UNLIMITED if maximum == "unlimited" else maximum)


def _table_from_json(name: str, t: dict[str, Any]) -> TableModel:
    columns = {
        cname: ColumnModel(
            cname,
            _type_from_json(c["type"]),
            mutable=c.get("mutable", True),
            ephemeral=c.get("ephemeral", False),
        )
        for cname, c in t["columns"].items()
    }
    return TableModel(
        name=name,
        columns=columns,
        is_root=t.get("isRoot", False),
        max_rows=t.get("maxRows", UNLIMITED),
        indexes=tuple(tuple(ix) for ix in t.get("indexes", [])),
    )


# -- abstract references ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """Row ``index`` of ``table``: the index-th row that a committed insert put into the table
    (counting from 0, over the whole sequence).  Each side maps it to its own UUID."""

    table: str
    index: int

    def __str__(self) -> str:
        return f"@{self.table}#{self.index}"

    def __repr__(self) -> str:
        return f"Ref({self.table!r}, {self.index})"


def resolve(obj: Any, lookup: Callable[[Ref], str]) -> Any:
    """A copy of ``obj`` with every Ref replaced by ``lookup(ref)``."""
    if isinstance(obj, Ref):
        return lookup(obj)
    if isinstance(obj, list):
        return [resolve(x, lookup) for x in obj]
    if isinstance(obj, dict):
        return {k: resolve(v, lookup) for k, v in obj.items()}
    return obj


def display(obj: Any) -> Any:
    """A copy of ``obj`` with every Ref written as ``"@Table#k"`` (no UUID pattern in it)."""
    return resolve(obj, str)


class Unmappable(Exception):
    """A value from the engine's state holds a UUID that no Ref names."""


def _sendable(x: Any) -> bool:
    """Whether a number may go to ovsdb-server (see the module docstring)."""
    if isinstance(x, float):
        return math.isfinite(x) and (x == 0 or abs(x) >= sys.float_info.min) and (
            float(f"{x:.15g}") == x
        )
    return True


# -- what the generator needs to know about the engine side -----------------------------------


class EngineSide:
    """The engine's side of a sequence: a ``MemoryDatabase`` and, per table, the UUIDs its
    committed inserts returned, in order (what a Ref resolves to on this side).

    The generator reads it to draw values (``live_refs``, ``committed_rows``, ``probe``);
    the test replays a sequence through a fresh one.  ``tables`` are the only tables that can
    hold rows (the ones operations are generated for).
    """

    def __init__(self, model: SchemaModel, schema: DatabaseSchema, tables: Sequence[str],
                 store: str = "memory"):
        self.model = model
        self.tables = sorted(tables)
        if store == "replica":  # a single CRDT replica: commits go through the document
            from crdtdb.replica import Replica

            self.db: Any = Replica.in_memory(schema, client_id=1)
        else:
            self.db = MemoryDatabase(schema)
        self.pool: dict[str, list[str]] = {t: [] for t in model.tables}
        self.refs: dict[str, Ref] = {}  # UUID -> the latest Ref naming it
        self._cache_key = -1
        self._live: dict[str, list[Ref]] = {}
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def uuid(self, ref: Ref) -> str:
        return self.pool[ref.table][ref.index]

    def transact(self, ops: list[Any]) -> list[Any]:
        """Run and commit abstract ``ops``; return the results (as JSON would have them)."""
        results = json.loads(json.dumps(self.db.transact(resolve(ops, self.uuid))))
        remember_inserts(ops, results, self.pool)
        for table, uuids in self.pool.items():
            for i, u in enumerate(uuids):
                self.refs[u] = Ref(table, i)
        return results

    def probe(self, ops: list[Any]) -> list[Any]:
        """Results of the abstract ``ops``, not committed.  New rows get UUIDs that depend
        only on the operations, so two probes of one prefix agree on them."""
        counter = itertools.count(1)

        def new_uuid() -> str:
            return f"{next(counter):08x}-0000-4000-b000-0000000b0be0"

        try:
            outcome = execute(self.db, resolve(ops, self.uuid), new_uuid=new_uuid)
        except Exception as exc:
            raise AssertionError(
                f"the engine raised {exc!r} on (a probe of) this transaction:\n"
                f"{json.dumps(display(ops), indent=1, ensure_ascii=False)}"
            ) from exc
        assert outcome.results is not None, "a probe blocked: a wait without timeout 0?"
        return json.loads(json.dumps(outcome.results))

    def _refresh(self) -> None:
        if self._cache_key == self.db.n_commits:
            return
        self._cache_key = self.db.n_commits
        for table in self.tables:
            # A UUID inserted again (explicitly, after a delete) is named by its latest Ref.
            latest = {u: i for i, u in enumerate(self.pool[table])}
            self._live[table] = [Ref(table, latest[u]) for u in sorted(
                (u for u, _ in self.db.iter_rows(table) if u in latest), key=latest.__getitem__)]
        results = self.probe([{"op": "select", "table": t, "where": []} for t in self.tables])
        self._rows = {t: r["rows"] for t, r in zip(self.tables, results, strict=True)}

    def live_refs(self, table: str) -> list[Ref]:
        """Refs of the rows of ``table`` that exist now."""
        self._refresh()
        return self._live.get(table, [])

    def stale_refs(self, table: str) -> list[Ref]:
        """Refs of rows of ``table`` that were deleted (or collected)."""
        live = set(self.live_refs(table))
        return [r for i in range(len(self.pool[table])) if (r := Ref(table, i)) not in live]

    def committed_rows(self, table: str) -> list[dict[str, Any]]:
        """The committed rows of ``table``, as a select of every column returns them."""
        self._refresh()
        return self._rows.get(table, [])

    def abstract(self, value: Any) -> Any:
        """``value`` (engine JSON) with row UUIDs replaced by Refs; raises Unmappable."""
        if isinstance(value, list):
            if len(value) == 2 and value[0] == "uuid" and isinstance(value[1], str):
                u = value[1]
                if u in self.refs:
                    return ["uuid", self.refs[u]]
                if u in LITERAL_UUIDS or u == ZERO_UUID:
                    return value
                raise Unmappable(u)
            return [self.abstract(v) for v in value]
        if isinstance(value, dict):
            return {k: self.abstract(v) for k, v in value.items()}
        return value


def first_error(results: Sequence[Any]) -> tuple[int, dict[str, Any]] | None:
    """(index, error object) of the first error in a result array, or None."""
    return next(
        ((i, r) for i, r in enumerate(results) if isinstance(r, dict) and "error" in r), None
    )


def remember_inserts(ops: list[Any], results: list[Any], pool: dict[str, list[str]]) -> None:
    """After a transaction: append the UUIDs its inserts returned to ``pool`` (if it
    committed)."""
    if first_error(results) is not None:
        return
    for i, op in enumerate(ops):
        if isinstance(op, dict) and op.get("op") == "insert":
            pool[op["table"]].append(results[i]["uuid"][1])


# -- the generator ----------------------------------------------------------------------------

SMALL_INTS = (0, 1, -1, 2, 3, -3, 5, -7, 10, 42, 100, -101, 1000)
EDGE_INTS = (INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, 2**31, -(2**31), 2**53 + 1, 2**62)
# All of these have at most 15 significant digits and are normal doubles.
NICE_REALS = (0.0, 0.5, -0.5, 1.0, 1.5, -1.5, 2.5, 0.25, 3.14159, 100.0, -100.0, 0.1, 1e-5,
              123456.789, 1e10, -0.0)
# Near the limits, but with at most 15 significant digits (DBL_MAX itself has 17: ovsdb-server
# prints it as 1.79769313486232e+308, beyond DBL_MAX; the corpus has that quirk).
EDGE_REALS = (1e300, -1e300, 1.5e308, -1.79769313486231e308, 1e-300, 1e22)
NAMES = ("a", "b", "c", "hv1", "hv2")
# No NUL and no lone surrogates (module docstring).
STRINGS = ("", "a", "b", "hv1", "x y", "é", "日本語", '"q"', "back\\slash", "tab\t", "🙂",
           "longer-string-value")
ARITH = ("+=", "-=", "*=", "/=", "%=")


@dataclass
class _Ctx:
    """Where a value is being generated."""

    table: str = ""
    index: bool = False  # the column is part of an index: fresh values most of the time
    self_name: str | None = None  # the uuid-name of the row being inserted
    depth: int = 0  # spawned-insert nesting
    allow_spawn: bool = True


@dataclass
class TxnGenerator:
    schema: SchemaModel
    tables: Sequence[str]  # the tables operations are generated for
    draw: Callable[[st.SearchStrategy[Any]], Any]
    engine: EngineSide
    max_ops: int = 12
    fresh: Iterator[int] = field(default_factory=itertools.count)
    # per transaction
    ops: list[Any] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # uuid-name -> table
    #: inserts spawned for forward references: they go right after the current operation
    after: list[Any] = field(default_factory=list)

    # ---- drawing helpers (every draw shrinks towards the first / simplest choice) ----------

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) >= 100 - percent

    def pick(self, options: Sequence[tuple[int, T]]) -> T:
        """A weighted choice.  Hypothesis draws 0 (the first option) more often than its
        weight says, and shrinks towards it: put the most common, simplest option first."""
        options = [(w, v) for w, v in options if w > 0]
        x = self.draw(st.integers(0, sum(w for w, _ in options) - 1))
        for w, v in options:
            if x < w:
                return v
            x -= w
        raise AssertionError("unreachable")

    def choice(self, seq: Sequence[T]) -> T:
        return self.draw(st.sampled_from(list(seq)))

    def column(self, columns: Sequence[ColumnModel]) -> ColumnModel:
        """One of ``columns``, drawn by name (so that a falsifying example reads well)."""
        by_name = {c.name: c for c in columns}
        return by_name[self.choice(list(by_name))]

    def next_fresh(self) -> int:
        return next(self.fresh)

    def new_name(self) -> str:
        return f"n{self.next_fresh()}"

    # ---- transactions ----------------------------------------------------------------------

    def transaction(self) -> list[Any]:
        self.ops = []
        self.names = {}
        n = self.draw(st.integers(1, 5))
        for _ in range(n):
            if len(self.ops) >= self.max_ops:
                break
            self.operation()
        return self.ops

    def operation(self) -> None:
        kind = self.pick([
            (35, "insert"), (12, "update"), (14, "mutate"), (10, "select"), (7, "delete"),
            (6, "wait"), (2, "comment"), (2, "commit"), (1, "abort"), (1, "assert"),
            (2, "malformed"),
        ])
        table = self.table_for(kind)
        fault = self.chance(6)
        self.after = []
        if kind == "insert":
            self.insert(table, _Ctx(table=table), fault=fault)
        else:
            op = getattr(self, f"op_{kind}")(table, fault)
            self.ops.append(op)
        self.ops.extend(self.after)

    def table_for(self, kind: str) -> str:
        """Any table, but seldom an insert into a table that is full (maxRows)."""
        weights = []
        for name in self.tables:
            n_rows = len(self.engine.live_refs(name))
            if kind == "insert":
                weight = 1 if n_rows >= self.schema.tables[name].max_rows else 4
            else:
                weight = 10 if n_rows else 1  # operations on rows that exist, mostly
            weights.append((weight, name))
        # Hypothesis draws 0 more often than other integers: keep rare choices off the front.
        weights.sort(key=lambda wn: -wn[0])
        return self.pick(weights)

    # ---- insert ----------------------------------------------------------------------------

    def insert(self, table: str, ctx: _Ctx, *, fault: bool = False,
               name: str | None = None) -> None:
        """Append an insert into ``table``.  The inserts it spawns for its references go before
        it, or after it when they are forward references."""
        t = self.schema.tables[table]
        op: dict[str, Any] = {"op": "insert", "table": table}
        if name is None and self.chance(45):
            name = self.new_name()
        if name is not None:
            op["uuid-name"] = name
            self.names[name] = table
        if self.chance(10):
            op["uuid"] = self.explicit_uuid(table)
        after: list[Any] = []
        ctx = _Ctx(table=table, self_name=name, depth=ctx.depth)
        row: dict[str, Any] = {}
        index_columns = t.index_columns()
        for col in t.columns.values():
            index = col.name in index_columns
            # Index columns nearly always: left to their default they all collide.
            if col.required or self.chance(90 if index else 35):
                cctx = _Ctx(table=table, index=index, self_name=name, depth=ctx.depth)
                row[col.name] = self.datum(col.type, cctx, after)
        op["row"] = row
        if fault:
            self.insert_fault(op, t)
        self.ops.append(op)
        self.ops.extend(after)

    def explicit_uuid(self, table: str) -> Any:
        """A literal UUID (they collide now and then), or that of a row of this table (live:
        "duplicate uuid"; deleted: allowed) or of another table (allowed)."""
        known = self.engine.live_refs(table) + self.engine.stale_refs(table)
        kind = self.pick([(80, "literal"), (8, "upper"), (8 if known else 0, "existing"),
                          (4, "other-table")])
        if kind == "literal":
            return self.choice(LITERAL_UUIDS)
        if kind == "upper":
            return self.choice(LITERAL_UUIDS).upper()
        if kind == "existing":
            return self.choice(known)
        other = [r for tn in self.tables if tn != table for r in self.engine.live_refs(tn)]
        return self.choice(other) if other else self.choice(LITERAL_UUIDS)

    def insert_fault(self, op: dict[str, Any], t: TableModel) -> None:
        kind = self.pick([(40, "value"), (15, "ref"), (10, "unknown-column"), (8, "uuid"),
                          (8, "uuid-name"), (6, "duplicate-name"), (5, "row"), (5, "extra"),
                          (3, "version")])
        cols = list(t.columns.values())
        if kind == "value":
            # Now and then two bad columns: ovsdb-server parses a row's members in hash order
            # (the engine reproduces it), so the one it names is deterministic.
            for _ in range(2 if self.chance(25) else 1):
                col = self.column(cols)
                op["row"][col.name] = self.bad_datum(col.type, _Ctx(table=t.name))
        elif kind == "ref":
            ref_cols = [c for c in cols if c.has_refs]
            if not ref_cols:
                op["row"]["no_such_column"] = 1
                return
            col = self.column(ref_cols)
            base = col.type.value if (col.type.value and col.type.value.is_ref
                                      and (not col.type.key.is_ref or self.chance(50))) else (
                col.type.key)
            bad = self.bad_ref(base)
            if col.type.is_map:
                other = col.type.key if base is col.type.value else col.type.value
                assert other is not None
                filler = self.atom(other, _Ctx(table=t.name, allow_spawn=False), [])
                if filler is None:
                    return
                pair = [filler, bad] if base is col.type.value else [bad, filler]
                op["row"][col.name] = ["map", [pair]]
            else:
                op["row"][col.name] = bad
        elif kind == "unknown-column":
            op["row"][self.choice(["no_such_column", "Name", "_uuid_"])] = 1
        elif kind == "uuid":
            op["uuid"] = self.choice(["not-a-uuid", 42, LITERAL_UUIDS[0][:-1], ["uuid",
                                                                              LITERAL_UUIDS[0]]])
        elif kind == "uuid-name":
            op["uuid-name"] = self.choice(["1abc", "with-dash", "", 7])
        elif kind == "duplicate-name":
            same_txn = [n for n in self.names if n != op.get("uuid-name")]
            op["uuid-name"] = self.choice(same_txn) if same_txn else op.get("uuid-name", "dup")
            if not same_txn:
                self.ops.append({"op": "insert", "table": t.name, "uuid-name": op["uuid-name"],
                                 "row": {}})
        elif kind == "row":
            if self.chance(50):
                del op["row"]
            else:
                op["row"] = self.choice([None, [], "row", 1])
        elif kind == "extra":
            for _ in range(2 if self.chance(30) else 1):
                op[self.choice(["rows", "where", "extra", "columns", "mutations"])] = []
        else:
            op["row"][self.choice(["_version", "_uuid"])] = ["uuid", LITERAL_UUIDS[1]]

    # ---- values ----------------------------------------------------------------------------

    def datum(self, ctype: TypeModel, ctx: _Ctx, after: list[Any],
              relaxed: bool = False) -> Any:
        """A valid datum for ``ctype`` (``relaxed``: any size from 0, as for includes or a
        mutation argument)."""
        lo = 0 if relaxed else ctype.min
        hi = ctype.max if not relaxed or ctype.max < UNLIMITED else lo + 3
        hi = min(hi, lo + 3)
        n = self.draw(st.integers(lo, int(hi)))
        if ctype.is_map:
            assert ctype.value is not None
            pairs: dict[Any, list[Any]] = {}
            for _ in range(n):
                k = self.atom(ctype.key, ctx, after)
                v = self.atom(ctype.value, ctx, after)
                if k is not None and v is not None:
                    pairs.setdefault(_atom_key(k), [k, v])
            return ["map", list(pairs.values())]
        atoms: dict[Any, Any] = {}
        for _ in range(n):
            a = self.atom(ctype.key, ctx, after)
            if a is not None:
                atoms.setdefault(_atom_key(a), a)
        values = list(atoms.values())
        if len(values) == 1 and (ctype.is_scalar or self.chance(60)):
            return values[0]
        return ["set", values]

    def atom(self, base: BaseModel, ctx: _Ctx, after: list[Any]) -> Any:
        """A valid atom, or None when no valid reference can be made."""
        if base.enum is not None:
            return self.choice(base.enum)
        if base.type == "integer":
            return self.integer(base, ctx)
        if base.type == "real":
            return self.real(base)
        if base.type == "boolean":
            return self.choice([False, True])
        if base.type == "string":
            return self.string(base, ctx)
        if base.is_ref:
            return self.ref(base, ctx, after)
        return self.plain_uuid()

    def integer(self, base: BaseModel, ctx: _Ctx) -> Any:
        lo, hi = base.min_int, base.max_int
        if ctx.index and self.chance(50):
            v = lo + 1 + self.next_fresh() if lo > INT64_MIN else self.next_fresh() + 100
            if lo <= v <= hi:
                return v
        kind = self.pick([(60, "small"), (15, "edge"), (25, "any")])
        if kind == "small":
            cands = [v for v in SMALL_INTS if lo <= v <= hi] or [lo]
            v = self.choice(cands)
        elif kind == "edge":
            cands = [v for v in (lo, hi, lo + 1, hi - 1, *EDGE_INTS) if lo <= v <= hi]
            v = self.choice(cands)
        else:
            v = self.draw(st.integers(lo, hi))
        if abs(v) < 2**53 and self.chance(5):
            return float(v)  # an integral JSON real is an integer to OVSDB
        return v

    def real(self, base: BaseModel) -> Any:
        lo, hi = base.min_real, base.max_real
        kind = self.pick([(70, "nice"), (10, "edge"), (20, "decimal")])
        if kind == "nice":
            cands = [v for v in NICE_REALS if lo <= v <= hi]
        elif kind == "edge":
            cands = [v for v in (lo, hi, *EDGE_REALS) if lo <= v <= hi and _sendable(v)]
        else:
            # n / 10**k: at most 15 significant digits, so it survives "%.15g".
            n = self.draw(st.integers(-(10**9), 10**9))
            k = self.draw(st.integers(0, 6))
            v = n / 10**k
            cands = [v] if lo <= v <= hi and _sendable(v) else []
        if not cands:
            cands = [v for v in (lo, hi, (lo + hi) / 2) if _sendable(v) and lo <= v <= hi]
        v = self.choice(cands)
        if v.is_integer() and abs(v) < 2**53 and self.chance(20):
            return int(v)  # an integer is a fine real
        return v

    def string(self, base: BaseModel, ctx: _Ctx) -> str:
        lo, hi = base.min_len, base.max_len
        if ctx.index and self.chance(55):
            s = f"u{self.next_fresh()}"
        else:
            s = self.choice(NAMES if ctx.index else STRINGS)
        if lo <= len(s) <= hi:
            return s
        n = self.draw(st.integers(lo, min(hi, lo + 3)))
        return self.choice(["x", "é", "日"]) * n

    def plain_uuid(self) -> Any:
        refs = [r for tn in self.tables for r in self.engine.live_refs(tn)]
        kind = self.pick([(40, "literal"), (30 if refs else 0, "row"),
                          (15 if self.names else 0, "named"), (10, "zero"), (5, "undeclared")])
        if kind == "literal":
            return ["uuid", self.choice(LITERAL_UUIDS)]
        if kind == "row":
            return ["uuid", self.choice(refs)]
        if kind == "named":
            return ["named-uuid", self.choice(sorted(self.names))]
        if kind == "zero":
            return ["uuid", ZERO_UUID]
        return ["named-uuid", "never_declared"]

    def ref(self, base: BaseModel, ctx: _Ctx, after: list[Any]) -> Any:
        target = base.ref_table
        assert target is not None
        live = self.engine.live_refs(target)
        named = sorted(n for n, tn in self.names.items() if tn == target and n != ctx.self_name)
        can_spawn = (ctx.allow_spawn and target in self.tables and ctx.depth < 2
                     and len(self.ops) + len(after) < self.max_ops)
        non_root = not self.schema.tables[target].is_root
        kind = self.pick([
            (30 if live else 0, "live"),
            (15 if named else 0, "named"),
            ((45 if non_root else 20) if can_spawn else 0, "spawn"),
            (5 if ctx.self_name and ctx.table == target else 0, "self"),
            # A weak reference to no row is valid: the commit drops it.
            (6 if base.is_weak else 0, "missing"),
            (1, "none"),
        ])
        if kind == "missing":
            return self.bad_ref(base)
        if kind == "live":
            return ["uuid", self.choice(live)]
        if kind == "named":
            return ["named-uuid", self.choice(named)]
        if kind == "self":
            return ["named-uuid", ctx.self_name]
        if kind == "spawn":
            name = self.new_name()
            forward = self.chance(20)
            sub = _Ctx(table=target, depth=ctx.depth + 1)
            if forward:
                # A forward reference: the insert comes after the operation that uses it.
                self.insert_detached(target, sub, name, after)
            else:
                self.insert(target, sub, name=name)
            return ["named-uuid", name]
        return None

    def insert_detached(self, table: str, ctx: _Ctx, name: str, after: list[Any]) -> None:
        """An insert that ``after`` receives (it is placed after the current operation)."""
        saved = self.ops
        self.ops = []
        try:
            self.insert(table, ctx, name=name)
            after.extend(self.ops)
        finally:
            self.ops = saved

    def bad_ref(self, base: BaseModel) -> Any:
        """A syntactically valid reference that names no row of the right table."""
        target = base.ref_table
        assert target is not None
        stale = self.engine.stale_refs(target)
        others = [r for tn in self.tables if tn != target for r in self.engine.live_refs(tn)]
        kind = self.pick([(35, "literal"), (20 if stale else 0, "stale"),
                          (15 if others else 0, "other-table"), (15, "zero"),
                          (15, "undeclared")])
        if kind == "literal":
            return ["uuid", self.choice(LITERAL_UUIDS)]
        if kind == "stale":
            return ["uuid", self.choice(stale)]
        if kind == "other-table":
            return ["uuid", self.choice(others)]
        if kind == "zero":
            return ["uuid", ZERO_UUID]
        return ["named-uuid", "never_inserted"]

    def bad_atom(self, base: BaseModel) -> Any:
        """An atom that does not parse as ``base`` or breaks one of its constraints."""
        cands: list[Any] = []
        if base.type == "integer":
            cands = [1.5, "1", True, None, 2**63, -(2**63) - 1, [1]]
            if base.enum is not None:
                cands += [v for v in (0, 4, -1, 99) if v not in base.enum][:2]
            if base.min_int > INT64_MIN:
                cands += [base.min_int - 1, base.min_int - 1000]
            if base.max_int < INT64_MAX:
                cands += [base.max_int + 1, base.max_int + 1000]
        elif base.type == "real":
            cands = ["1.5", True, None, {}]
            if base.min_real > -DBL_MAX:
                cands += [base.min_real - 1, base.min_real - 0.25]
            if base.max_real < DBL_MAX:
                cands += [base.max_real + 1, base.max_real + 0.25]
        elif base.type == "boolean":
            cands = [0, 1, "true", None]
        elif base.type == "string":
            cands = [1, True, None, {"a": "b"}]
            if base.enum is not None:
                cands += ["purple", "", base.enum[0].upper()]
            if base.min_len > 0:
                cands += ["x" * (base.min_len - 1), "é" * (base.min_len - 1)]
            if base.max_len < 2**32 - 1:
                cands += ["y" * (base.max_len + 1), "日" * (base.max_len + 1)]
        else:
            cands = [LITERAL_UUIDS[0], ["uuid", "not-a-uuid"], ["named-uuid", "9bad"],
                     ["uuid"], ["uuid", LITERAL_UUIDS[0], 1], ["uid", LITERAL_UUIDS[0]], 5]
        cands = [c for c in cands if not isinstance(c, float) or _sendable(c)]
        return self.choice(cands)

    def bad_datum(self, ctype: TypeModel, ctx: _Ctx) -> Any:
        """A datum that fails to parse as ``ctype`` (wrong atom, size, duplicates, shape)."""
        kinds: list[tuple[int, str]] = [(35, "atom"), (20, "shape")]
        if ctype.min >= 1:
            kinds.append((15, "too-few"))
        if ctype.max < UNLIMITED and not (ctype.key.type == "boolean" and not ctype.is_map):
            kinds.append((15, "too-many"))
        if ctype.max >= 2 or ctype.is_map:
            kinds.append((15, "duplicate"))
        kind = self.pick(kinds)
        no_spawn = _Ctx(table=ctx.table, allow_spawn=False)
        if kind == "atom":
            if ctype.is_map and self.chance(50):
                assert ctype.value is not None
                k = self.atom(ctype.key, no_spawn, []) if not ctype.key.is_ref else None
                if k is None:
                    k = self.bad_atom(ctype.key)
                return ["map", [[k, self.bad_atom(ctype.value)]]]
            bad = self.bad_atom(ctype.key)
            if ctype.is_map:
                assert ctype.value is not None
                v = self.atom(ctype.value, no_spawn, [])
                return ["map", [[bad, v if v is not None else 0]]]
            return bad if self.chance(50) else ["set", [bad]]
        if kind == "too-few":
            return ["map", []] if ctype.is_map else ["set", []]
        if kind == "too-many":
            n = int(ctype.max) + 1
            atoms = self.distinct_atoms(ctype.key, n)
            if ctype.is_map:
                assert ctype.value is not None
                v = self.atom(ctype.value, no_spawn, [])
                return ["map", [[a, v] for a in atoms]]
            return ["set", atoms]
        if kind == "duplicate":
            a = self.atom(ctype.key, no_spawn, [])
            if a is None:
                a = ["uuid", LITERAL_UUIDS[0]]
            twin = float(a) if isinstance(a, int) and not isinstance(a, bool) and abs(a) < 2**53 \
                else a
            if ctype.is_map:
                assert ctype.value is not None
                v = self.atom(ctype.value, no_spawn, [])
                return ["map", [[a, v], [twin, v]]]
            return ["set", [a, twin]]
        # shape
        if ctype.is_map:
            return self.choice([["set", [1]], "k", ["map", [["k"]]], ["map", {"k": "v"}],
                                {"k": "v"}, None, ["map", "k"]])
        return self.choice([["map", []], ["set", 1], ["set", [[1, 2]]], {"a": 1}, None,
                            ["set"], []])

    def distinct_atoms(self, base: BaseModel, n: int) -> list[Any]:
        if base.enum is not None and len(base.enum) >= n:
            return list(base.enum[:n])
        if base.type == "integer":
            lo = max(base.min_int, -(2**62))
            return [lo + i for i in range(n)] if lo + n - 1 <= base.max_int else list(range(n))
        if base.type == "real":
            lo = max(base.min_real, -1e6)
            return [lo + i * 0.25 for i in range(n)]
        if base.type == "string":
            length = max(base.min_len, 1)
            return [chr(ord("a") + i) * length for i in range(n)]
        return [["uuid", u] for u in LITERAL_UUIDS[:n]]

    # ---- where clauses ---------------------------------------------------------------------

    def where(self, table: str, fault: bool = False, all_rows: int = 12) -> Any:
        live = self.engine.live_refs(table)
        named = sorted(n for n, tn in self.names.items() if tn == table)
        if fault:
            return self.bad_where(table)
        kind = self.pick([
            (45 if live else 0, "uuid"), (25, "clause"), (all_rows, "all"), (10, "two"),
            (8 if named else 0, "named"), (4, "constant"), (4, "stale"), (2, "uuid-ne"),
        ])
        if kind == "uuid":
            return [["_uuid", "==", ["uuid", self.choice(live)]]]
        if kind == "named":
            return [["_uuid", "==", ["named-uuid", self.choice(named)]]]
        if kind == "all":
            return []
        if kind == "constant":
            return [self.choice([True, False])]
        if kind == "stale":
            stale = self.engine.stale_refs(table)
            u = self.choice(stale) if stale else self.choice(LITERAL_UUIDS)
            return [["_uuid", "==", ["uuid", u]]]
        if kind == "uuid-ne":
            ref = self.choice(live) if live else self.choice(LITERAL_UUIDS)
            return [["_uuid", self.choice(["!=", "excludes"]), ["uuid", ref]]]
        clauses = [self.clause(table)]
        if kind == "two":
            clauses.append(self.clause(table))
        return clauses

    def clause(self, table: str) -> list[Any]:
        t = self.schema.tables[table]
        if self.chance(3):
            # _version is random on each side: only a literal that never matches is comparable.
            return ["_version", self.choice(["==", "!=", "includes", "excludes"]),
                    ["uuid", self.choice(LITERAL_UUIDS)]]
        col = t.columns[self.choice(list(t.columns))]
        ctype = col.type
        ordered = ctype.is_scalar and ctype.key.numeric
        funcs = ["==", "!=", "includes", "excludes"] + (["<", "<=", ">", ">="] if ordered else [])
        func = self.choice(funcs)
        relaxed = func in ("includes", "excludes") and not ctype.is_scalar
        value = None
        if self.chance(60):
            value = self.state_value(table, col.name)
            if value is not None and relaxed and self.chance(40):
                value = _subset(value, self)
        if value is None:
            value = self.datum(ctype, _Ctx(table=table, allow_spawn=False), [], relaxed=relaxed)
        return [col.name, func, value]

    def state_value(self, table: str, column: str) -> Any:
        """The value of ``column`` in a committed row (abstract), or None."""
        rows = self.engine.committed_rows(table)
        if not rows:
            return None
        row = self.choice(rows)
        try:
            value = self.engine.abstract(row[column])
        except Unmappable:
            return None
        return value if _all_sendable(value) else None

    def bad_where(self, table: str) -> Any:
        t = self.schema.tables[table]
        col = self.column(list(t.columns.values()))
        kind = self.pick([(20, "column"), (15, "function"), (15, "value"), (15, "ordering"),
                          (10, "malformed"), (10, "clause"), (10, "where"), (5, "named")])
        if kind == "column":
            return [["no_such_column", "==", 1]]
        if kind == "function":
            return [[col.name, self.choice(["=", "~=", "in", ""]), 1]]
        if kind == "value":
            return [[col.name, "==", self.bad_datum(col.type, _Ctx(table=table))]]
        if kind == "ordering":
            non_ordered = [c for c in t.columns.values()
                           if not (c.type.is_scalar and c.type.key.numeric)]
            c = self.column(non_ordered) if non_ordered else col
            v = self.datum(c.type, _Ctx(table=table, allow_spawn=False), [])
            return [[c.name, self.choice(["<", ">="]), v]]
        if kind == "malformed":
            return [self.choice([[col.name, "=="], [col.name], [], [1, "==", 1],
                                 [col.name, "==", 1, 2]])]
        if kind == "clause":
            return [self.choice(["x", 1, None, {"a": 1}])]
        if kind == "where":
            return self.choice([{}, "all", None, 1])
        return [["_uuid", "==", ["named-uuid", "1bad"]]]

    # ---- other operations -------------------------------------------------------------------

    def op_select(self, table: str, fault: bool) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "select", "table": table, "where": self.where(table)}
        t = self.schema.tables[table]
        names = [*t.columns, "_uuid", "_version"]
        kind = self.pick([(45, "all"), (45, "some"), (10, "none")])
        if kind == "some":
            k = self.draw(st.integers(1, min(4, len(names))))
            op["columns"] = list(dict.fromkeys(self.choice(names) for _ in range(k)))
        elif kind == "none":
            op["columns"] = []
        if self.chance(5):
            # Not in RFC 7047, but ovsdb-server accepts it (the corpus has the quirk).
            op["sort"] = [self.choice(names)]
        if fault:
            f = self.pick([(30, "columns"), (30, "where"), (20, "table"), (15, "missing"),
                           (5, "sort")])
            if f == "sort":
                op["sort"] = self.choice([["no_such_column"], "name", [1]])
            elif f == "columns":
                op["columns"] = self.choice([["no_such_column"], [names[0], names[0]], [1],
                                             "name", None])
            elif f == "where":
                op["where"] = self.bad_where(table)
            elif f == "table":
                op["table"] = self.choice(["No_Such_Table", 5, ""])
            else:
                del op[self.choice(["where", "table"])]
        return op

    def op_delete(self, table: str, fault: bool) -> dict[str, Any]:
        return {"op": "delete", "table": table, "where": self.where(table, fault, all_rows=3)}

    def op_update(self, table: str, fault: bool) -> dict[str, Any]:
        t = self.schema.tables[table]
        where = self.where(table)
        cols = [c for c in t.columns.values() if c.mutable]
        row: dict[str, Any] = {}
        for _ in range(self.draw(st.integers(1, 3))):
            col = self.column(cols)
            ctx = _Ctx(table=table, index=col.name in t.index_columns())
            row[col.name] = self.datum(col.type, ctx, self.after)
        op = {"op": "update", "table": table, "where": where, "row": row}
        if fault:
            kind = self.pick([(40, "value"), (15, "ref"), (15, "immutable"),
                              (10, "unknown-column"), (10, "where"), (10, "special")])
            if kind == "value":
                for _ in range(2 if self.chance(25) else 1):
                    col = self.column(list(t.columns.values()))
                    row[col.name] = self.bad_datum(col.type, _Ctx(table=table))
            elif kind == "ref":
                ref_cols = [c for c in cols if c.has_refs and not c.type.is_map]
                if ref_cols:
                    col = self.column(ref_cols)
                    row[col.name] = self.bad_ref(col.type.key if col.type.key.is_ref
                                                 else col.type.value)  # type: ignore[arg-type]
                else:
                    row["no_such_column"] = 0
            elif kind == "immutable":
                frozen = [c for c in t.columns.values() if not c.mutable]
                if frozen:
                    col = self.column(frozen)
                    row[col.name] = self.datum(col.type, _Ctx(table=table), [])
                else:
                    row["_uuid"] = ["uuid", LITERAL_UUIDS[2]]
            elif kind == "unknown-column":
                row["no_such_column"] = "x"
                if self.chance(30):
                    row["another_unknown"] = self.bad_atom(BaseModel("integer"))
            elif kind == "where":
                op["where"] = self.bad_where(table)
            else:
                row[self.choice(["_uuid", "_version"])] = ["uuid", LITERAL_UUIDS[2]]
        return op

    def op_mutate(self, table: str, fault: bool) -> dict[str, Any]:
        t = self.schema.tables[table]
        where = self.where(table)
        candidates = [c for c in t.columns.values()
                      if c.mutable and (c.type.is_multi or c.type.key.numeric)]
        mutations: list[Any] = []
        used: set[str] = set()
        n = self.draw(st.integers(0 if not candidates else 1, 2 if candidates else 0))
        for _ in range(n):
            col = self.column(candidates)
            if col.name in used:
                continue  # one mutation per column keeps the "*=" probe exact
            used.add(col.name)
            mutations.append(self.mutation(table, col, self.after))
        op = {"op": "mutate", "table": table, "where": where, "mutations": mutations}
        if fault:
            self.mutate_fault(op, t)
        for m in op["mutations"] if isinstance(op["mutations"], list) else ():
            if isinstance(m, list) and len(m) == 3 and m[1] == "*=" and m[0] in t.columns \
                    and t.columns[m[0]].type.key.type == "integer" \
                    and not self._safe_multiplier(op, m[0], m[2]):
                m[1], m[2] = "+=", 0  # see _safe_multiplier
        return op

    def mutation(self, table: str, col: ColumnModel, after: list[Any]) -> list[Any]:
        ctype = col.type
        arith = ctype.key.numeric and not ctype.is_map
        if arith and (not ctype.is_multi or self.chance(70)):
            if ctype.key.type == "integer":
                op = self.choice(ARITH)
                if op == "*=":
                    arg: Any = self.choice([2, -1, 3, -2, 1, 0, 10])
                elif op in ("/=", "%="):
                    arg = self.choice([2, 3, -1, 7, -2, 1, INT64_MAX])
                else:
                    arg = self.choice([1, 2, -1, 5, 100, -7, INT64_MAX, INT64_MIN, 2**62])
            else:
                op = self.choice(ARITH[:4])
                arg = self.choice([0.5, 2, -1.5, 10, 1.25, 1e300, -3])
            return [col.name, op, arg]
        mutator = self.choice(["insert", "delete"])
        ctx = _Ctx(table=table, index=False, allow_spawn=mutator == "insert")
        if ctype.is_map and mutator == "delete" and self.chance(40):
            keys = TypeModel(ctype.key, None, 0, UNLIMITED)
            return [col.name, mutator, self.datum(keys, ctx, after, relaxed=True)]
        if self.chance(30):
            value = self.state_value(table, col.name)
            if value is not None:
                return [col.name, mutator, value]
        return [col.name, mutator, self.datum(ctype, ctx, after, relaxed=True)]

    def mutate_fault(self, op: dict[str, Any], t: TableModel) -> None:
        cols = list(t.columns.values())
        kind = self.pick([(20, "type-mismatch"), (15, "argument"), (15, "divide-by-zero"),
                          (10, "mutator"), (10, "column"), (10, "immutable"), (10, "malformed"),
                          (5, "size"), (5, "where")])
        mutations = op["mutations"]
        if kind == "type-mismatch":
            col = self.column(cols)
            if col.type.key.numeric and not col.type.is_map:
                mutations.append([col.name, "insert" if col.type.is_scalar else "%=",
                                  1 if col.type.is_scalar else 1.5])
            else:
                mutations.append([col.name, self.choice(ARITH), 1])
        elif kind == "argument":
            col = self.column(cols)
            if col.type.key.numeric and not col.type.is_map:
                bad = "1" if col.type.key.type == "integer" else "x"
                mutations.append([col.name, "+=", self.choice([bad, 1.5, ["set", [1, 2]],
                                                               True])])
            else:
                mutations.append([col.name, "insert", self.bad_datum(col.type,
                                                                     _Ctx(table=t.name))])
        elif kind == "divide-by-zero":
            numeric = [c for c in cols if c.type.key.numeric and not c.type.is_map and c.mutable]
            if numeric:
                col = self.column(numeric)
                zero = 0 if col.type.key.type == "integer" else 0.0
                ops = ("/=", "%=") if col.type.key.type == "integer" else ("/=",)
                mutations.append([col.name, self.choice(ops), zero])
            else:
                mutations.append(["no_such_column", "/=", 0])
        elif kind == "mutator":
            col = self.column(cols)
            mutations.append([col.name, self.choice(["^=", "add", "", "=="]), 1])
        elif kind == "column":
            mutations.append(["no_such_column", "+=", 1])
        elif kind == "immutable":
            frozen = [c for c in cols if not c.mutable]
            name = self.column(frozen).name if frozen else "_uuid"
            mutations.append([name, "insert", ["set", []]])
        elif kind == "malformed":
            col = self.column(cols)
            op["mutations"] = self.choice([[[col.name, "+="]], [col.name], "x", [[1, "+=", 1]],
                                           {}])
        elif kind == "size":
            bounded = [c for c in cols if c.type.is_multi and c.type.max < UNLIMITED and c.mutable]
            if bounded:
                col = self.column(bounded)
                atoms = self.distinct_atoms(col.type.key, int(col.type.max) + 1)
                if col.type.is_map:
                    assert col.type.value is not None
                    v = self.atom(col.type.value, _Ctx(allow_spawn=False), [])
                    arg: Any = ["map", [[a, v] for a in atoms]]
                else:
                    arg = ["set", atoms]
                mutations.append([col.name, "insert", arg])
            else:
                mutations.append(["no_such_column", "insert", ["set", []]])
        else:
            op["where"] = self.bad_where(t.name)

    def _safe_multiplier(self, op: dict[str, Any], column: str, factor: Any) -> bool:
        """Whether ``*=`` by ``factor`` is safe on every value it would meet (the values are
        probed): no overflow and none of ovsdb-server's quirks (module docstring), that is
        |x * y| < 2**62 and no negative x with a y <= 0."""
        if not isinstance(factor, int) or isinstance(factor, bool):
            return True  # a parse error
        select = {"op": "select", "table": op["table"], "where": op["where"],
                  "columns": [column]}
        results = self.engine.probe([*self.ops, select])
        found = results[len(self.ops)] if len(results) > len(self.ops) else None
        if not isinstance(found, dict) or "rows" not in found:
            return False  # the mutation should not run at all, but take no chances
        return all(
            isinstance(x, int) and abs(x * factor) < 2**62 and not (x < 0 and factor <= 0)
            for row in found["rows"]
            for x in _datum_atoms(row[column])
        )

    def op_wait(self, table: str, fault: bool) -> dict[str, Any]:
        t = self.schema.tables[table]
        where = self.where(table)
        plain = [c for c in t.columns.values()
                 if not any(b.type == "uuid" for b in c.type.bases())]
        k = self.draw(st.integers(0, min(3, len(plain))))
        columns = list(dict.fromkeys(self.column(plain).name for _ in range(k))) if plain else []
        rows = self.wait_rows(table, where, columns)
        op: dict[str, Any] = {"op": "wait", "table": table, "timeout": 0, "where": where,
                              "columns": columns, "until": self.choice(["==", "!="]),
                              "rows": rows}
        if self.chance(10):
            # Without "columns" every column counts, _version too (random on each side), so
            # only an empty "rows" (or one that cannot match) is comparable.
            del op["columns"]
            op["rows"] = [] if self.chance(70) else [{}]
        if fault:
            kind = self.pick([(25, "timeout"), (20, "until"), (20, "rows"), (15, "where"),
                              (10, "columns"), (10, "missing")])
            if kind == "timeout":
                # Never a positive timeout: the wait would block (module docstring).
                op["timeout"] = self.choice([-1, "0", 0.5, None])
            elif kind == "until":
                op["until"] = self.choice(["=", "<", "", 1])
            elif kind == "rows":
                op["rows"] = self.choice([[1], ["row"], {"a": 1}, [{"no_such_column": 1}]])
            elif kind == "where":
                op["where"] = self.bad_where(table)
            elif kind == "columns":
                op["columns"] = self.choice([["no_such_column"], "x", [1]])
            else:
                del op[self.choice(["rows", "until", "where"])]
        return op

    def wait_rows(self, table: str, where: Any, columns: list[str]) -> list[Any]:
        select = {"op": "select", "table": table, "where": where, "columns": columns}
        results = self.engine.probe([*self.ops, select])
        last = results[len(self.ops)] if len(results) > len(self.ops) else None
        actual = list(last["rows"]) if isinstance(last, dict) and "rows" in last else []
        actual = [r for r in actual if _all_sendable(r)]
        kind = self.pick([(40, "same"), (15, "drop"), (15, "add"), (15, "change"),
                          (10, "duplicate"), (5, "empty")])
        t = self.schema.tables[table]
        if kind == "drop" and actual:
            del actual[self.draw(st.integers(0, len(actual) - 1))]
        elif kind == "add" or (kind == "change" and actual):
            row = {c: self.datum(t.columns[c].type, _Ctx(table=table, allow_spawn=False), [])
                   for c in columns}
            if kind == "add":
                actual.append(row)
            elif columns:
                i = self.draw(st.integers(0, len(actual) - 1))
                c = self.choice(columns)
                actual[i] = {**actual[i], c: row[c]}
        elif kind == "duplicate" and actual:
            actual.append(actual[0])
        elif kind == "empty":
            actual = []
        return actual

    def op_comment(self, table: str, fault: bool) -> dict[str, Any]:
        if fault:
            return self.choice([{"op": "comment"}, {"op": "comment", "comment": 5}])
        return {"op": "comment", "comment": self.choice(["hello", "", "ünïcode", "a\nb"])}

    def op_commit(self, table: str, fault: bool) -> dict[str, Any]:
        if fault:
            return self.choice([{"op": "commit"}, {"op": "commit", "durable": "yes"},
                                {"op": "commit", "durable": 1}])
        return {"op": "commit", "durable": self.choice([False, True])}

    def op_abort(self, table: str, fault: bool) -> dict[str, Any]:
        return {"op": "abort", "extra": 1} if fault else {"op": "abort"}

    def op_assert(self, table: str, fault: bool) -> dict[str, Any]:
        return {"op": "assert", "lock": "1bad" if fault else self.choice(["lock", "my_lock"])}

    def op_malformed(self, table: str, fault: bool) -> Any:
        return self.choice([
            {"op": "frobnicate", "table": table},
            {"table": table, "where": []},
            {"op": "select", "table": "No_Such_Table", "where": []},
            {"op": "select", "table": table, "where": [], "extra": 1},
            {"op": "delete", "table": table},
            {"op": "insert", "table": table, "row": {}, "uuid-name": "x", "where": []},
            {"op": 5, "table": table},
            {"op": None},
            "select",
            [1, 2],
            None,
        ])


def _atom_key(a: Any) -> Any:
    """Identity of an atom as OVSDB sees it (1 and 1.0 are one integer)."""
    if isinstance(a, bool):
        return ("b", a)
    if isinstance(a, int | float):
        return ("n", float(a))
    return ("j", json.dumps(display(a), sort_keys=True))


def _datum_atoms(datum: Any) -> list[Any]:
    """The key atoms of a datum in JSON form (bare atom, ["set", ...] or ["map", ...])."""
    if isinstance(datum, list) and len(datum) == 2 and datum[0] == "set":
        return list(datum[1])
    if isinstance(datum, list) and len(datum) == 2 and datum[0] == "map":
        return [k for k, _ in datum[1]]
    return [datum]


def _subset(value: Any, gen: TxnGenerator) -> Any:
    """A random sub-collection of a set or map value (for includes/excludes)."""
    if isinstance(value, list) and len(value) == 2 and value[0] in ("set", "map") \
            and isinstance(value[1], list) and value[1]:
        keep = [e for e in value[1] if gen.chance(60)]
        return [value[0], keep]
    return value


def _all_sendable(value: Any) -> bool:
    if isinstance(value, list):
        return all(_all_sendable(v) for v in value)
    if isinstance(value, dict):
        return all(_all_sendable(v) for v in value.values())
    return _sendable(value)


# -- hash-order ambiguity ---------------------------------------------------------------------


def hash_order_ambiguity(schema: SchemaModel, tables: Sequence[str], engine: EngineSide,
                         ops: list[Any]) -> str | None:
    """Why the outcome of ``ops`` on ovsdb-server depends on its hash order, or None.

    Asks the engine (probes, nothing committed) where the transaction fails, then whether
    another row order could report a different problem; see the module docstring.
    ``tables`` are the only tables that can hold rows (the ones operations are generated for).
    """
    results = engine.probe(ops)
    failed = next((i for i, r in enumerate(results) if isinstance(r, dict) and "error" in r),
                  None)
    if failed is None:
        return None
    if failed < len(ops):
        op = ops[failed]
        if isinstance(op, dict) and op.get("op") == "mutate":
            return _mutate_ambiguity(engine, ops, failed)
        return None
    return _commit_ambiguity(schema, tables, engine, ops)


def _mutate_ambiguity(engine: EngineSide, ops: list[Any], i: int) -> str | None:
    op = ops[i]
    where = op.get("where")
    if not isinstance(where, list):
        return None
    select = {"op": "select", "table": op.get("table"), "where": where, "columns": ["_uuid"]}
    res = engine.probe([*ops[:i], select])
    found = res[i] if len(res) > i else None
    if not isinstance(found, dict) or "rows" not in found or len(found["rows"]) < 2:
        return None
    errors = set()
    for row in found["rows"]:
        one = {**op, "where": [*where, ["_uuid", "==", row["_uuid"]]]}
        r = engine.probe([*ops[:i], one])[i]
        if isinstance(r, dict) and "error" in r:
            errors.add(json.dumps(r, sort_keys=True))
    if len(errors) >= 2:
        return "mutate: several rows fail differently"
    return None


Rows = dict[str, dict[str, dict[str, Any]]]  # table -> uuid -> row (select JSON)


def _commit_ambiguity(schema: SchemaModel, tables: Sequence[str], engine: EngineSide,
                      ops: list[Any]) -> str | None:
    names = sorted(tables)
    selects = [{"op": "select", "table": n, "where": []} for n in names]
    before_res = engine.probe(selects)
    after_res = engine.probe([*ops, *selects])[len(ops):len(ops) + len(names)]
    if any(not isinstance(r, dict) or "rows" not in r for r in [*before_res, *after_res]):
        return None
    before: Rows = {n: {r["_uuid"][1]: r for r in res["rows"]}
                    for n, res in zip(names, before_res, strict=True)}
    after: Rows = {n: {r["_uuid"][1]: r for r in res["rows"]}
                   for n, res in zip(names, after_res, strict=True)}
    problems = commit_problems(schema, before, after)
    if problems is not None and problems[1] >= 2:
        return f"commit: {problems[1]} distinct {problems[0]} problems"
    return None


def _elements(ctype: TypeModel, datum: Any) -> list[Any]:
    """Hashable elements of a datum in select JSON: atoms, or (key, value) pairs."""
    def atom(a: Any) -> Any:
        return a[1] if isinstance(a, list) else a

    if ctype.is_map:
        return [(atom(k), atom(v)) for k, v in datum[1]]
    return [atom(a) for a in _datum_atoms(datum)]


def _refs(ctype: TypeModel, elements: Iterable[Any], strength: str) -> list[tuple[str, str]]:
    """(table, uuid) of the references of the given strength among ``elements``."""
    out = []
    kb, vb = ctype.key, ctype.value
    k_ok = kb.is_ref and kb.ref_type == strength
    v_ok = vb is not None and vb.is_ref and vb.ref_type == strength
    for e in elements:
        if ctype.is_map:
            if k_ok:
                out.append((kb.ref_table, e[0]))
            if v_ok:
                assert vb is not None
                out.append((vb.ref_table, e[1]))
        elif k_ok:
            out.append((kb.ref_table, e))
    return out  # type: ignore[return-value]


def _same_row(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {k: v for k, v in a.items() if k != "_version"} == {
        k: v for k, v in b.items() if k != "_version"}


def commit_problems(schema: SchemaModel, before: Rows, after: Rows) -> tuple[str, int] | None:
    """The first commit-time check of ``ovsdb_txn_precommit`` that fails for a transaction
    taking the database from ``before`` to ``after`` (pre-commit state), and how many
    distinct problems it has (ovsdb-server reports one, chosen by hash order).  Tables missing
    from ``before`` and ``after`` are empty."""
    tables = schema.tables

    def strong_refs_of(tname: str, uuid: str, row: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for col in tables[tname].columns.values():
            if col.has_refs:
                out += [r for r in _refs(col.type, _elements(col.type, row[col.name]), "strong")
                        if r[1] != uuid]
        return out

    # 1. dangling strong references in what changed (update_row_ref_count).  Counted per
    # atom: the atoms of a datum are walked in UUID order, and the UUIDs of rows inserted by
    # this transaction are random.
    dangling = set()
    for tname, rows in after.items():
        for uuid, new in rows.items():
            old = before[tname].get(uuid)
            if old is not None and _same_row(old, new):
                continue
            for col in tables[tname].columns.values():
                if not col.has_refs:
                    continue
                new_e = _elements(col.type, new[col.name])
                old_e = set(_elements(col.type, old[col.name])) if old is not None else set()
                added = [e for e in new_e if e not in old_e]
                for rt, ru in _refs(col.type, added, "strong"):
                    if ru != uuid and ru not in after.get(rt, {}) \
                            and ru not in before.get(rt, {}):
                        dangling.add((tname, uuid, col.name, ru))
    if dangling:
        return "dangling reference", len(dangling)

    # 2. deleted rows still referenced (check_ref_count)
    n_refs: Counter[tuple[str, str]] = Counter()
    for tname, rows in after.items():
        for uuid, row in rows.items():
            n_refs.update(strong_refs_of(tname, uuid, row))
    deleted = [(tn, u) for tn, rows in before.items() for u in rows if u not in after[tn]]
    still = {d for d in deleted if n_refs[d]}
    if still:
        return "deleted but referenced", len(still)

    # 3. garbage collection (reference counting: cycles survive), then maxRows
    alive = {tn: set(rows) for tn, rows in after.items()}
    changed = True
    while changed:
        changed = False
        for tname, uuids in alive.items():
            if tables[tname].is_root:
                continue
            for u in list(uuids):
                if not n_refs[(tname, u)]:
                    uuids.discard(u)
                    n_refs.subtract(strong_refs_of(tname, u, after[tname][u]))
                    changed = True
    for tname, uuids in alive.items():
        if len(uuids) > tables[tname].max_rows:
            return "maxRows", 1

    # 4. weak references that leave a non-empty column empty (assess_weak_refs)
    emptied = set()
    for tname, uuids in alive.items():
        for u in uuids:
            row = after[tname][u]
            for col in tables[tname].columns.values():
                if col.type.min < 1 or not any(b.is_weak for b in col.type.bases()):
                    continue
                elements = _elements(col.type, row[col.name])
                kept = [e for e in elements if all(
                    ru in alive.get(rt, ()) for rt, ru in _refs(col.type, [e], "weak"))]
                if len(kept) != len(elements) and len(kept) < col.type.min:
                    emptied.add((tname, u))
    if emptied:
        return "weak reference", len(emptied)

    # 5. index uniqueness
    pairs: set[frozenset[tuple[str, str]]] = set()
    for tname, uuids in alive.items():
        for index in tables[tname].indexes:
            groups: dict[str, list[str]] = {}
            for u in uuids:
                key = json.dumps([after[tname][u][c] for c in index], sort_keys=True)
                groups.setdefault(key, []).append(u)
            for members in groups.values():
                if len(members) >= 3:
                    return "index", len(members)
                if len(members) == 2:
                    pairs.add(frozenset((tname, m) for m in members))
    if pairs:
        return "index", len(pairs)
    return None


# -- sequences --------------------------------------------------------------------------------


def transaction_sequences(
    model: SchemaModel,
    schema: DatabaseSchema,
    tables: Sequence[str],
    *,
    min_size: int = 5,
    max_size: int = 15,
) -> st.SearchStrategy[list[list[Any]]]:
    """Lists of abstract transactions, each drawn against the engine state the earlier ones
    left (run on an ``EngineSide`` while drawing).  Transactions whose outcome would depend on
    ovsdb-server's hash order are left out (a Hypothesis event counts them)."""

    @st.composite
    def build(draw: st.DrawFn) -> list[list[Any]]:
        engine = EngineSide(model, schema, tables)
        gen = TxnGenerator(model, tables, draw, engine)
        transactions = []
        for _ in range(draw(st.integers(min_size, max_size))):
            ops = gen.transaction()
            why = hash_order_ambiguity(model, tables, engine, ops)
            if why is not None:
                event(f"left out: {why}")
                continue
            engine.transact(ops)
            transactions.append(ops)
        return transactions

    return build()
