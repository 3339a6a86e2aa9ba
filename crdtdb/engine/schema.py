"""Database, table and column schemas (RFC 7047 section 3.2), parsed from ``.ovsschema`` JSON.

Every table gets OVSDB's two implicit columns first, ``_uuid`` and ``_version``, so that a row
can be a plain tuple indexed by :attr:`ColumnSchema.index`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtdb.engine import ovsjson
from crdtdb.engine.data import check_datum, fast_parser
from crdtdb.engine.ovshash import ovs_object, shash_order
from crdtdb.engine.types import UNLIMITED, UUID_TYPE, Type, type_from_json
from crdtdb.errors import OvsdbError, SchemaError

_VERSION_RE = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\Z")


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    name: str
    type: Type
    index: int
    mutable: bool = True
    ephemeral: bool = False
    #: The value the column has when a row is inserted without it.
    default_datum: tuple = field(init=False, compare=False, repr=False)
    #: The referenced table when the column is a set (or scalar) of strong references, the
    #: common shape that commit checks and stores count without a generator.
    strong_set_ref: str | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_datum", self.type.default_datum())
        key = self.type.key
        object.__setattr__(self, "strong_set_ref",
                           key.ref_table if self.type.value is None and key.is_strong_ref
                           else None)

    def to_json(self) -> dict[str, Any]:
        pairs: list[tuple[str, Any]] = []
        if not self.mutable:
            pairs.append(("mutable", False))
        if self.ephemeral:
            pairs.append(("ephemeral", True))
        pairs.append(("type", self.type.to_json()))
        return ovs_object(pairs)


@dataclass(slots=True)
class TableSchema:
    name: str
    columns: dict[str, ColumnSchema]
    is_root: bool = False
    max_rows: int = UNLIMITED
    #: Each index is a tuple of column names.
    indexes: tuple[tuple[str, ...], ...] = ()
    #: The schema's table-level "mutable" (kept and served; OVSDB gives it no meaning).
    mutable: bool = True
    #: Columns in row-tuple order (``_uuid``, ``_version``, then the schema's own).
    ordered: tuple[ColumnSchema, ...] = field(init=False)
    #: Columns in the order ovsdb-server walks them (its hash-table order); where it reports
    #: only the first problem found, so does the engine.
    ovs_ordered: tuple[ColumnSchema, ...] = field(init=False)
    #: Columns holding references, in ``ovs_ordered`` order.
    ref_columns: tuple[ColumnSchema, ...] = field(init=False)
    default_row: tuple = field(init=False)
    #: Columns whose default value breaks their own constraints, with that error, in
    #: ``ovs_ordered`` order: inserting a row without them fails.
    bad_defaults: tuple[tuple[ColumnSchema, OvsdbError], ...] = field(init=False)
    #: ``ref_columns`` that hold weak references (the only ones weak-reference cleanup reads).
    weak_ref_columns: tuple[ColumnSchema, ...] = field(init=False)
    #: Column name -> (row index, the column type's fast JSON parser): one dict lookup per
    #: column of a parsed row.
    parsers: dict[str, tuple[int, Callable[[Any], Any]]] = field(init=False, repr=False,
                                                                 compare=False)
    #: The parser generated for this table's inserted rows (:mod:`crdtdb.engine.rowparser`),
    #: made on the first insert.
    row_parser: Callable[..., Any] | None = field(init=False, default=None, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        self.ordered = tuple(sorted(self.columns.values(), key=lambda c: c.index))
        # ovsdb-server adds _uuid and _version, then the schema's columns in the order it walks
        # the schema's "columns" JSON object (itself a hash table filled in text order).
        names = ("_uuid", "_version", *shash_order(c.name for c in self.ordered[2:]))
        self.ovs_ordered = tuple(self.columns[n] for n in shash_order(names))
        self.ref_columns = tuple(
            c for c in self.ovs_ordered
            if c.type.key.ref_table is not None
            or (c.type.value is not None and c.type.value.ref_table is not None))
        self.default_row = tuple(c.type.default_datum() for c in self.ordered)
        bad = []
        for c in self.ovs_ordered:
            default = self.default_row[c.index]
            if c.index > 1 and len(default) == 1:
                try:
                    check_datum(c.type, default)
                except OvsdbError as exc:
                    # (without its traceback: its frames' callers, and their locals, would
                    # live as long as the schema)
                    bad.append((c, exc.with_traceback(None)))
        self.bad_defaults = tuple(bad)
        self.weak_ref_columns = tuple(
            c for c in self.ref_columns
            if c.type.key.is_weak_ref or (c.type.value is not None and c.type.value.is_weak_ref))
        self.parsers = {c.name: (c.index, fast_parser(c.type)) for c in self.ordered}

    @property
    def user_columns(self) -> tuple[ColumnSchema, ...]:
        return self.ordered[2:]

    def to_json(self, default_is_root: bool) -> dict[str, Any]:
        """``ovsdb_table_schema_to_json``, members in ovsdb-server's order."""
        pairs: list[tuple[str, Any]] = []
        if not self.mutable:
            pairs.append(("mutable", False))
        if self.is_root != default_is_root:
            pairs.append(("isRoot", self.is_root))
        pairs.append(("columns", ovs_object((c.name, c.to_json()) for c in self.ovs_ordered
                                           if not c.name.startswith("_"))))
        if self.max_rows != UNLIMITED:
            pairs.append(("maxRows", self.max_rows))
        if self.indexes:
            pairs.append(("indexes", [list(ix) for ix in self.indexes]))
        return ovs_object(pairs)


@dataclass(slots=True)
class DatabaseSchema:
    name: str
    version: str
    tables: dict[str, TableSchema]
    cksum: str | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> DatabaseSchema:
        with open(path, encoding="utf-8") as f:
            try:
                obj = json.load(f)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_json(obj)

    @classmethod
    def from_json(cls, obj: Any) -> DatabaseSchema:
        if not isinstance(obj, dict):
            raise SchemaError("database schema: object expected")
        _only(obj, {"name", "version", "cksum", "tables", "doc"}, "database schema", None, None)
        name = obj.get("name")
        if not isinstance(name, str) or not ovsjson.is_id(name):
            raise SchemaError("database schema: 'name' must be an <id>")
        version = obj.get("version", "")
        if "version" in obj and (not isinstance(version, str) or not _VERSION_RE.match(version)):
            raise SchemaError(f'schema version "{version}" not in format x.y.z')
        cksum = obj.get("cksum")
        if cksum is not None and not isinstance(cksum, str):
            raise SchemaError("database schema: 'cksum' must be a string")
        tables_json = obj.get("tables")
        if not isinstance(tables_json, dict):
            raise SchemaError("database schema: 'tables' must be an object")
        tables = {tname: _table_from_json(tname, tjson) for tname, tjson in tables_json.items()}
        if not any(t.is_root for t in tables.values()):
            # Schemas from before "isRoot" existed: every table is a root (as OVS does).
            for t in tables.values():
                t.is_root = True
        for t in tables.values():
            for c in t.user_columns:
                for base in (c.type.key, c.type.value):
                    if base is not None and base.ref_table is not None \
                            and base.ref_table not in tables:
                        raise SchemaError(f"refTable {base.ref_table} is not a table of this "
                                          "database", table=t.name, column=c.name)
        return cls(name, version, tables, cksum)

    def stored(self) -> DatabaseSchema:
        """This schema as ovsdb-server holds it when serving a database file.

        ``ovsdb-tool create`` writes the schema into the file in its own member order and the
        server parses it back from there, so the order in which ovsdb-server walks tables and
        columns (which decides what get_schema looks like and which of several errors it
        reports) is that of one round trip through :meth:`to_json`. Checked against
        ovsdb-server 3.1: get_schema answers are byte-identical.
        """
        return DatabaseSchema.from_json(json.loads(json.dumps(self.to_json())))

    def to_json(self) -> dict[str, Any]:
        """``ovsdb_schema_to_json``: what get_schema answers, members in ovsdb-server's order
        (clients such as ``ovsdb-client list-columns`` print them in the order received)."""
        default_is_root = all(t.is_root for t in self.tables.values())
        pairs: list[tuple[str, Any]] = [("name", self.name)]
        if self.version:
            pairs.append(("version", self.version))
        if self.cksum:
            pairs.append(("cksum", self.cksum))
        pairs.append(("tables", ovs_object((n, self.tables[n].to_json(default_is_root))
                                           for n in shash_order(self.tables))))
        return ovs_object(pairs)


def _only(obj: dict, allowed: set[str], what: str, table: str | None,
          column: str | None) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise SchemaError(f"{what}: unexpected member(s) {', '.join(map(repr, extra))}",
                          table=table, column=column)


def _check_name(name: str, table: str | None, column: str | None) -> None:
    if name.startswith("_"):
        raise SchemaError('names beginning with "_" are reserved', table=table, column=column)
    if not ovsjson.is_id(name):
        raise SchemaError("name must be a valid id", table=table, column=column)


def _table_from_json(name: str, obj: Any) -> TableSchema:
    _check_name(name, name, None)
    if not isinstance(obj, dict):
        raise SchemaError("table schema must be an object", table=name)
    _only(obj, {"columns", "maxRows", "isRoot", "indexes", "mutable", "doc"}, "table schema",
          name, None)
    columns_json = obj.get("columns")
    if not isinstance(columns_json, dict):
        raise SchemaError("'columns' must be an object", table=name)
    if not columns_json:
        raise SchemaError("table must have at least one column", table=name)
    max_rows = UNLIMITED
    if "maxRows" in obj:
        v = obj["maxRows"]
        if ovsjson.kind(v) is not ovsjson.Kind.INTEGER or ovsjson.as_integer(v) <= 0:
            raise SchemaError("maxRows must be at least 1", table=name)
        max_rows = min(ovsjson.as_integer(v), UNLIMITED)
    is_root = obj.get("isRoot", False)
    if not isinstance(is_root, bool):
        raise SchemaError("isRoot must be a boolean", table=name)
    columns: dict[str, ColumnSchema] = {
        "_uuid": ColumnSchema("_uuid", UUID_TYPE, 0, mutable=False),
        "_version": ColumnSchema("_version", UUID_TYPE, 1, mutable=False),
    }
    for i, (cname, cjson) in enumerate(columns_json.items()):
        _check_name(cname, name, cname)
        if not isinstance(cjson, dict):
            raise SchemaError("column schema must be an object", table=name, column=cname)
        _only(cjson, {"type", "mutable", "ephemeral", "doc"}, "column schema", name, cname)
        if "type" not in cjson:
            raise SchemaError("required 'type' member is missing", table=name, column=cname)
        ctype = type_from_json(cjson["type"], table=name, column=cname)
        mutable = cjson.get("mutable", True)
        ephemeral = cjson.get("ephemeral", False)
        if not isinstance(mutable, bool) or not isinstance(ephemeral, bool):
            raise SchemaError("'mutable' and 'ephemeral' must be booleans", table=name,
                              column=cname)
        columns[cname] = ColumnSchema(cname, ctype, i + 2, mutable, ephemeral)
    indexes: list[tuple[str, ...]] = []
    raw_indexes = obj.get("indexes", [])
    if not isinstance(raw_indexes, list):
        raise SchemaError("'indexes' must be an array", table=name)
    for ix in raw_indexes:
        if not isinstance(ix, list) or not all(isinstance(c, str) for c in ix):
            raise SchemaError("index must be an array of column names", table=name)
        if not ix:
            raise SchemaError("index must have at least one column", table=name)
        if len(set(ix)) != len(ix):
            raise SchemaError("array of distinct column names expected", table=name)
        for c in ix:
            if c not in columns:
                raise SchemaError(f"{c} is not a valid column name", table=name, column=c)
            if columns[c].ephemeral:
                raise SchemaError(f"ephemeral columns (such as {c}) may not be indexed",
                                  table=name, column=c)
        indexes.append(tuple(ix))
    mutable = obj.get("mutable", True)
    if not isinstance(mutable, bool):
        raise SchemaError("table 'mutable' must be a boolean", table=name)
    return TableSchema(name, columns, is_root, max_rows, tuple(indexes), mutable)
