"""An inserted row's JSON parsed by code generated once per table.

A bulk load parses thousands of rows of one table; the generic loop
(:meth:`crdtdb.engine.transaction._Executor.parse_row`) pays, per column, a walk step, a
lookup of the column and a call of its fast parser, which calls further for most values.
:func:`insert_parser` compiles, for one table, straight-line code that looks each column up
once and, for the common shapes (a bare uuid, integer or string of a scalar or optional
column, an enum string), finds the shared one-atom datum inline in
:mod:`crdtdb.engine.data`'s caches; every other value goes to the column's own fast parser.

It only ever accepts what the fast parsers accept, returning the same datums: anything else
(an unknown column, a JSON null, a ``named-uuid``, a value out of range, an absent column
whose default breaks its constraints) makes it return :data:`~crdtdb.engine.data.SLOW`, and
the caller parses the row the generic way, which reports errors as ovsdb-server does. The
source is built from column *indexes* only: column names and defaults reach the code as
objects in its namespace, never as text.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from crdtdb.engine import data
from crdtdb.engine.schema import TableSchema
from crdtdb.engine.types import AtomicType, BaseType, Type

#: ``parse(row_json, row_uuid, new_uuid) -> row tuple | SLOW``; ``new_uuid`` draws the
#: row's ``_version`` once the row is known to parse (the order the generic path draws it).
RowParser = Callable[[dict, str, Callable[[], str]], Any]

#: The kinds of column the generated code handles inline.
_UUID, _INT, _STR, _ENUM, _SMAP, _OTHER = range(6)
#: The shared-tuple cache (:func:`data._tuple_cache`) of maps of two pairs of short strings.
_SMAP2 = (AtomicType.STRING, AtomicType.STRING, 2)


def _kind(type_: Type) -> int:
    """Which inline check a column gets; only bare atoms of set (or scalar) columns whose
    fast parser is :func:`data._bare_atom_parser`'s, so both share one cache."""
    if type_.value is not None:
        if (data._plain_string(type_.key) and data._plain_string(type_.value)
                and type_.n_min <= 2 <= type_.n_max):
            return _SMAP
        return _OTHER
    base: BaseType = type_.key
    if base.type is AtomicType.STRING:
        return _ENUM if base.enum is not None else _STR
    if base.enum is not None:
        return _OTHER
    if base.type is AtomicType.UUID:
        return _UUID
    if base.type is AtomicType.INTEGER:
        return _INT
    return _OTHER


def insert_parser(table: TableSchema) -> RowParser:
    """The generated parser of ``table``'s inserted rows, built on first use (see above)."""
    parse = table.row_parser
    if parse is None:
        parse = table.row_parser = _build(table)
    return parse


def _build(table: TableSchema) -> RowParser:
    cols = table.ordered[2:]
    bad_default = {c.index for c, _ in table.bad_defaults}
    env: dict[str, Any] = {"SLOW": data.SLOW, "list": list, "str": str, "int": int,
                           "type": type, "len": len, "LONG": data._INTERN_MAX_LEN,
                           "REMEMBER": data._remember, "intern": sys.intern}
    lines = ["def parse(value, row_uuid, new_uuid):",
             "    get = value.get",
             f"    n = len(value) - {len(cols)}"]
    for col in cols:
        i = col.index
        t = col.type
        base = t.key
        env[f"K{i}"] = col.name
        env[f"D{i}"] = table.default_row[i]
        env[f"P{i}"] = data.fast_parser(t)
        d = f"d{i}"
        lines += [f"    v = get(K{i})", "    if v is None:"]
        lines += (["        return SLOW"] if i in bad_default
                  else [f"        {d} = D{i}", "        n += 1"])
        lines += ["    else:"]
        kind = _kind(t)
        if kind == _UUID:
            env[f"C{i}"] = data._tuple_cache(AtomicType.UUID).get
            lines += [
                f"        {d} = None",
                "        if type(v) is list and len(v) == 2 and v[0] == 'uuid':",
                "            s = v[1]",
                "            if type(s) is str:",
                f"                {d} = C{i}(s)"]
        elif kind == _INT:
            # data._bare_atom_parser's integer() inline, its miss too (a bulk load's
            # priorities are mostly new): the value is valid, its datum remembered.
            cache = data._tuple_cache(AtomicType.INTEGER)
            env[f"C{i}"], env[f"M{i}"] = cache.get, cache
            env[f"LO{i}"], env[f"HI{i}"] = base.min_integer, base.max_integer
            lines += [
                f"        if type(v) is int and LO{i} <= v <= HI{i}:",
                f"            {d} = C{i}(v)",
                f"            if {d} is None:",
                f"                {d} = REMEMBER(M{i}, v, (v,))",
                "        else:",
                f"            {d} = P{i}(v)",
                f"            if {d} is SLOW:",
                "                return SLOW"]
            continue
        elif kind == _STR:
            env[f"C{i}"] = data._tuple_cache(AtomicType.STRING).get
            env[f"LO{i}"], env[f"HI{i}"] = base.min_length, base.max_length
            if base.min_length == 0 and base.max_length >= data._INTERN_MAX_LEN:
                # Unconstrained but for a length no short string reaches: only a long one
                # is measured against it.
                lines += [
                    f"        {d} = None",
                    "        if type(v) is str:",
                    "            if len(v) > LONG:",
                    # Long strings are not shared (matches, actions): the datum is made here.
                    f"                if len(v) <= HI{i}:",
                    f"                    {d} = (v,)",
                    "            else:",
                    f"                {d} = C{i}(v)"]
            else:
                lines += [
                    f"        {d} = None",
                    f"        if type(v) is str and LO{i} <= len(v) <= HI{i}:",
                    f"            {d} = (v,) if len(v) > LONG else C{i}(v)"]
        elif kind == _ENUM:
            assert base.enum is not None
            env[f"C{i}"] = {str(e): data.fast_parser(t)(str(e)) for e in base.enum}.get
            lines += [f"        {d} = C{i}(v) if type(v) is str else None"]
        elif kind == _SMAP:
            # data._string_map_parser's usual case inline: two pairs, both in the cache of
            # pairs of short strings (so each is a valid pair), keys distinct.
            pairs = data._tuple_cache((AtomicType.STRING, AtomicType.STRING))
            env[f"C{i}"], env[f"PM{i}"] = pairs.get, pairs
            # The map itself shared too, as its pairs are: rows repeat whole maps (every
            # flow of a stage has the same external_ids), and a 2-tuple each costs 64
            # bytes (100k Logical_Flow rows of sims.workload: 5.5 MiB).
            cache = data._tuple_cache(_SMAP2)
            env[f"S{i}"], env[f"SM{i}"] = cache.get, cache
            lines += [
                f"        {d} = None",
                "        if type(v) is list and len(v) == 2 and v[0] == 'map':",
                "            e = v[1]",
                "            if type(e) is list and len(e) == 2:",
                "                a, b = e",
                "                if type(a) is list and type(b) is list:",
                "                    try:",
                f"                        pa = C{i}(tuple(a))",
                f"                        pb = C{i}(tuple(b))",
                "                    except TypeError:",
                "                        pa = pb = a = b = None",
                # A pair not seen yet (a flow's "source" => "northd.c:NNNN"): string_map's
                # way with a pair of short strings, inline, not a call of it for the map.
                "                    if pa is None and a is not None and len(a) == 2:",
                "                        k, x = a",
                "                        if (type(k) is str and type(x) is str",
                "                                and len(k) <= LONG and len(x) <= LONG):",
                "                            pa = (intern(k), intern(x))",
                f"                            pa = REMEMBER(PM{i}, pa, pa)",
                "                    if pb is None and b is not None and len(b) == 2:",
                "                        k, x = b",
                "                        if (type(k) is str and type(x) is str",
                "                                and len(k) <= LONG and len(x) <= LONG):",
                "                            pb = (intern(k), intern(x))",
                f"                            pb = REMEMBER(PM{i}, pb, pb)",
                "                    a, b = pa, pb",
                "                    if a is not None and b is not None:",
                "                        if a[0] < b[0]:",
                f"                            {d} = (a, b)",
                "                        elif b[0] < a[0]:",
                f"                            {d} = (b, a)",
                f"                        if {d} is not None:",
                f"                            {d} = S{i}({d}) or REMEMBER(SM{i}, {d}, {d})"]
        if kind != _OTHER:
            lines += [f"        if {d} is None:"]
            ind = "            "
        else:
            ind = "        "
        lines += [f"{ind}{d} = P{i}(v)", f"{ind}if {d} is SLOW:", f"{ind}    return SLOW"]
    lines += ["    if n:",  # a column this table does not have, or a JSON null
              "        return SLOW",
              "    return ((row_uuid,), (new_uuid(),), "
              + "".join(f"d{c.index}, " for c in cols) + ")"]
    exec(compile("\n".join(lines), f"<insert_parser {table.name}>", "exec"), env)
    parse: RowParser = env["parse"]
    return parse
