"""The row parser generated per table (crdtdb/engine/rowparser.py) against the generic one.

Random rows, valid and invalid, for every table of the kitchen-sink and Southbound schemas:
whatever the generated parser returns is exactly (types included) what the generic parser
makes of the row, and an insert of the row gives the same results and changeset whether the
generated parser runs or is bypassed.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtdb.engine import DatabaseSchema, data, execute
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.rowparser import insert_parser
from crdtdb.engine.schema import TableSchema
from crdtdb.engine.transaction import _Executor, _Transaction
from crdtdb.engine.types import Type
from crdtdb.errors import OvsdbError
from tests.support import KITCHEN_SINK_SCHEMA
from tests.test_data_codecs import atoms_of

SB_PATH = Path("/usr/share/ovn/ovn-sb.ovsschema")
_PATHS = [KITCHEN_SINK_SCHEMA] + ([SB_PATH] if SB_PATH.exists() else [])
_SCHEMAS = [DatabaseSchema.from_file(p) for p in _PATHS]
_TABLES = [(s, t) for s in _SCHEMAS for t in s.tables.values()]
ROW_UUID = "12345678-1234-4234-8234-123456789abc"


def _valid_json(ctype: Type) -> st.SearchStrategy:
    """The JSON of a valid datum of ``ctype`` (bare, set-wrapped or a map)."""
    max_n = min(ctype.n_max, 4)

    def build(keys_values: tuple[list, list]) -> Any:
        keys, values = keys_values
        if ctype.value is None:
            datum = data.sort_datum(ctype, keys)
        else:
            datum = data.sort_datum(ctype, zip(keys, values, strict=False))
        return json.loads(json.dumps(data.datum_to_json(ctype, datum)))
    keys = st.lists(atoms_of(ctype.key), min_size=ctype.n_min, max_size=max_n,
                    unique_by=lambda a: (type(a), a))
    if ctype.value is None:
        return keys.map(lambda k: build((k, [])))
    vb = ctype.value
    return keys.flatmap(lambda k: st.lists(atoms_of(vb), min_size=len(k), max_size=len(k))
                        .map(lambda v: build((k, v))))


#: Values that are invalid somewhere (or odd spellings the fast parsers refuse).
_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=False),
    st.just(1.0), st.text(max_size=3), st.just("x" * 70), st.just("ingress"),
    st.just(["uuid", "not-a-uuid"]), st.just(["uuid", ROW_UUID.upper()]),
    st.just(["named-uuid", "n"]), st.just(["set", []]), st.just(["set", [1, 1]]),
    st.just(["map", [["a", "b"], ["a", "c"]]]), st.just(["map", [["a", "b"], ["c", "d"]]]),
    st.just(["map", [["a", "b"], ["c"]]]), st.just(["map", [["a", 1], ["b", 2]]]),
    st.just(["map", [["a", "b"], ["c", "d"], ["e", "f"]]]), st.just({}), st.just([]))


@st.composite
def table_rows(draw: st.DrawFn) -> tuple[DatabaseSchema, TableSchema, dict[str, Any]]:
    schema, table = draw(st.sampled_from(_TABLES))
    valid = draw(st.booleans())
    row: dict[str, Any] = {}
    for col in table.ordered[2:]:
        if draw(st.integers(0, 3)) == 0:
            continue  # absent
        if valid or draw(st.integers(0, 4)):
            row[col.name] = draw(_valid_json(col.type))
        else:
            row[col.name] = draw(_JUNK)
    if not valid and draw(st.integers(0, 5)) == 0:
        row[draw(st.sampled_from(["_uuid", "_version", "no_such_column"]))] = draw(_JUNK)
    return schema, table, dict(draw(st.permutations(list(row.items()))))


def _generic(schema: DatabaseSchema, table: TableSchema, row_json: dict) -> Any:
    """The generic path's row (as insert makes it), or its error."""
    db = MemoryDatabase(schema)
    x = _Executor(_Transaction(db, lambda: ROW_UUID), None, 0)  # type: ignore[arg-type]
    try:
        row = x.parse_row(table, row_json)
        for col, error in table.bad_defaults:
            if col.name not in row_json:
                raise error
    except OvsdbError as exc:
        return exc
    row[0] = (ROW_UUID,)
    row[1] = ("version",)
    return tuple(row)


def _typed(x: Any) -> Any:
    """``x`` with every value's type beside it: ``(1,) == (True,) == (1.0,)``."""
    if isinstance(x, tuple):
        return tuple(_typed(e) for e in x)
    return (type(x).__name__, x)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_rows())
def test_the_generated_parser_returns_what_the_generic_one_makes(
        case: tuple[DatabaseSchema, TableSchema, dict[str, Any]]) -> None:
    schema, table, row_json = case
    parse = insert_parser(table)
    for _ in range(2):  # the second time, the datums are in the caches
        got = parse(row_json, ROW_UUID, lambda: "version")
        want = _generic(schema, table, row_json)
        if got is data.SLOW:
            continue
        assert not isinstance(want, OvsdbError), want
        assert _typed(got) == _typed(want)


def _insert_outcome(schema: DatabaseSchema, table: TableSchema, row_json: dict) -> Any:
    counter = itertools.count(1)
    db = MemoryDatabase(schema)
    ops = [{"op": "insert", "table": table.name, "row": row_json},
           {"op": "insert", "table": table.name, "row": row_json, "uuid-name": "r"}]
    out = execute(db, ops,
                  new_uuid=lambda: f"00000000-0000-0000-0000-{next(counter):012x}")
    changes = None
    if out.changeset is not None:
        changes = {t: {u: (_typed(c.old) if c.old else None, _typed(c.new) if c.new else None)
                       for u, c in rows.items()} for t, rows in out.changeset.tables.items()}
    return out.results, changes


_BYPASSED = {id(s): DatabaseSchema.from_file(p) for s, p in zip(_SCHEMAS, _PATHS, strict=True)}
for _s in _BYPASSED.values():
    for _t in _s.tables.values():
        _t.row_parser = lambda *_: data.SLOW  # always the generic path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_rows())
def test_an_insert_is_the_same_with_and_without_the_generated_parser(
        case: tuple[DatabaseSchema, TableSchema, dict[str, Any]]) -> None:
    schema, table, row_json = case
    bypassed = _BYPASSED[id(schema)]
    assert _insert_outcome(schema, table, row_json) == _insert_outcome(
        bypassed, bypassed.tables[table.name], row_json)


def test_plain_valid_rows_take_the_generated_path() -> None:
    """The shapes a bulk load sends are parsed without the generic path."""
    if not SB_PATH.exists():
        pytest.skip("ovn-common not installed")
    from sims.workload import flow_row
    table = _SCHEMAS[-1].tables["Logical_Flow"]
    parse = insert_parser(table)
    for i in range(3):
        row = flow_row(i, ROW_UUID)
        got = parse(row, ROW_UUID, lambda: "version")
        assert got is not data.SLOW
        assert _typed(got) == _typed(_generic(_SCHEMAS[-1], table, row))
    assert parse({**flow_row(0, ROW_UUID), "bogus": 1}, ROW_UUID, str) is data.SLOW
    assert parse({**flow_row(0, ROW_UUID), "match": None}, ROW_UUID, str) is data.SLOW
    no_pipeline = flow_row(0, ROW_UUID)
    del no_pipeline["pipeline"]  # its default "" breaks its enum: the generic path says so
    assert parse(no_pipeline, ROW_UUID, str) is data.SLOW


def test_column_names_never_become_code() -> None:
    """Column names reach the generated code as values of its namespace, never as source:
    its constants and names hold none of them, only identifiers made from column indexes."""
    for _, table in _TABLES:
        code = insert_parser(table).__code__
        names = {c.name for c in table.ordered}
        assert not names & {c for c in code.co_consts if isinstance(c, str)}
        for n in code.co_names + code.co_varnames:
            assert n in _VOCABULARY or re.fullmatch(r"[A-Z]+\d+|d\d+", n), n


_VOCABULARY = {"value", "row_uuid", "new_uuid", "get", "n", "v", "s", "e", "a", "b", "type",
               "len", "list", "str", "int", "tuple", "SLOW", "LONG", "REMEMBER", "TypeError",
               "pa", "pb", "k", "x", "intern"}
