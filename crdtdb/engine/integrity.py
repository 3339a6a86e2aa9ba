"""Checks that a whole database satisfies what its schema promises.

The engine keeps these invariants commit by commit; this module checks them from scratch, for
property tests and for stores that build state another way (a CRDT view after a merge, a
database loaded from disk).
"""

from __future__ import annotations

from collections.abc import Iterator

from crdtdb.engine import data
from crdtdb.engine.snapshot import Snapshot
from crdtdb.engine.types import BaseType, Type
from crdtdb.errors import OvsdbError


def violations(snapshot: Snapshot) -> list[str]:
    """Every way the snapshot breaks its schema, as readable sentences; empty when it is sound.
    """
    schema = snapshot.schema
    out: list[str] = []
    referenced: set[tuple[str, str]] = set()
    for tname, table in schema.tables.items():
        n = 0
        seen_keys: list[dict[tuple, str]] = [{} for _ in table.indexes]
        for uuid, row in snapshot.iter_rows(tname):
            n += 1
            if row[0] != (uuid,):
                out.append(f"{tname} row {uuid}: _uuid column is {row[0]}")
            for col in table.user_columns:
                d = row[col.index]
                if not col.type.n_min <= len(d) <= col.type.n_max:
                    out.append(f"{tname} row {uuid} column {col.name}: {len(d)} elements in "
                               f"{col.type.english()}")
                if d != data.sort_datum(col.type, set(d)):
                    out.append(f"{tname} row {uuid} column {col.name}: not canonical")
                try:
                    data.check_datum(col.type, d)
                except OvsdbError as exc:
                    out.append(f"{tname} row {uuid} column {col.name}: {exc.details}")
                for base, atoms in _ref_bases(col.type, d):
                    for target in atoms:
                        if target == uuid and base.is_strong_ref:
                            continue
                        exists = snapshot.get_row(base.ref_table, target) is not None
                        if exists:
                            if base.is_strong_ref:
                                referenced.add((base.ref_table, target))
                        else:
                            kind = "strong" if base.is_strong_ref else "weak"
                            out.append(f"{tname} row {uuid} column {col.name}: dangling {kind} "
                                       f"reference to {base.ref_table} row {target}")
            for ix, seen in zip(table.indexes, seen_keys, strict=True):
                key = tuple(row[table.columns[c].index] for c in ix)
                if key in seen:
                    out.append(f"{tname} rows {seen[key]} and {uuid} share index {ix} values")
                seen[key] = uuid
        if n > table.max_rows:
            out.append(f"{tname} has {n} rows, more than maxRows {table.max_rows}")
        if n != snapshot.row_count(tname):
            out.append(f"{tname}: row_count() says {snapshot.row_count(tname)}, iteration {n}")
    for tname, table in schema.tables.items():
        if table.is_root:
            continue
        for uuid, _ in snapshot.iter_rows(tname):
            if (tname, uuid) not in referenced:
                out.append(f"{tname} row {uuid} is in a non-root table but nothing references it")
    return out


def _ref_bases(ctype: Type, datum: tuple) -> Iterator[tuple[BaseType, list]]:
    if ctype.key.ref_table is not None:
        keys = [p[0] for p in datum] if ctype.value is not None else list(datum)
        yield ctype.key, keys
    if ctype.value is not None and ctype.value.ref_table is not None:
        yield ctype.value, [p[1] for p in datum]
