"""The marker packer generated per table (crdtdb/replica/encoding.py) against the generic loop.

Random valid rows of every table of the kitchen-sink and Southbound schemas, parsed by the
engine: the generated packer writes exactly the generic loop's bytes, and the marker reads
back as the row.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtdb.engine.schema import TableSchema
from crdtdb.engine.transaction import _Executor, _Transaction
from crdtdb.replica import encoding as enc
from tests.test_engine_rowparser import _TABLES, ROW_UUID, _valid_json

VERSION = "87654321-4321-4321-8321-cba987654321"


@st.composite
def valid_rows(draw: st.DrawFn) -> tuple[TableSchema, tuple]:
    schema, table = draw(st.sampled_from(_TABLES))
    row_json: dict[str, Any] = {}
    for col in table.ordered[2:]:
        if draw(st.booleans()):
            row_json[col.name] = draw(_valid_json(col.type))
    snapshot: Any = _EmptySnapshot(schema)
    x = _Executor(_Transaction(snapshot, lambda: VERSION), None, 0)  # type: ignore[arg-type]
    row = x.parse_row_in_order(table, row_json)
    row[0] = (ROW_UUID,)
    row[1] = (VERSION,)
    return table, tuple(row)


class _EmptySnapshot:
    def __init__(self, schema: Any):
        self.schema = schema


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_row=valid_rows(), birth=st.integers(1, 2**32 - 1))
def test_the_generated_marker_packer_writes_the_generic_bytes(
        table_row: tuple[TableSchema, tuple], birth: int) -> None:
    table, row = table_row
    packed = enc.pack_marker(table, birth, row)
    assert packed == enc._pack_marker_generic(table, birth, row)
    marker = enc.unpack_marker(table, ROW_UUID, packed)
    assert marker.birth == birth
    assert tuple(marker.row) == row


@pytest.mark.skipif(not enc.BUILT, reason="crdtdb/replica/_markers.pyx not built")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table_row=valid_rows(), birth=st.integers(0, 2**32 - 1), as_bytearray=st.booleans())
def test_the_compiled_loop_reads_every_valid_marker_from_its_bytes(
        table_row: tuple[TableSchema, tuple], birth: int, as_bytearray: bool) -> None:
    """Whatever a replica writes (every column type of both schemas) is read from its bytes:
    the compiled loop's object path, for what it does not understand, is never taken."""
    table, row = table_row
    packed = enc.pack_marker(table, birth, row)

    def object_path(payload: object) -> object:
        raise AssertionError(f"left to the object path: {packed.hex()}")

    reader = enc._compiled_reader(table, unpack_one=object_path)
    births: dict[str, int] = {}
    rows, refused = reader.read([ROW_UUID], [bytearray(packed) if as_bytearray else packed],
                                births, [])
    assert not refused
    assert rows == {ROW_UUID: row} and births == ({ROW_UUID: birth} if birth else {})
    assert all(type(a) is type(b) for x, y in zip(rows[ROW_UUID], row, strict=True)
               for a, b in zip(x, y, strict=True))


def test_a_row_of_defaults_packs_to_birth_and_version() -> None:
    for _, table in _TABLES:
        row = list(table.default_row)
        row[0], row[1] = (ROW_UUID,), (VERSION,)
        packed = enc.pack_marker(table, 7, tuple(row))
        assert packed == enc._pack_marker_generic(table, 7, tuple(row))
        assert len(enc.binary.unpack(packed)) == 2


def test_the_shared_packer_is_left_empty_by_a_value_it_refuses() -> None:
    with pytest.raises(TypeError):
        enc._pack([1, object()])
    assert enc._pack([1, "x"]) == msgpack.packb([1, "x"], use_bin_type=True)


def test_generated_code_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Code generated per table or column is cached with its owner; schema after schema (a
    simulation's runs) must not keep every one: past the bound a cache starts over, and
    what it drops is generated again, the same."""
    from crdtdb.engine import DatabaseSchema

    monkeypatch.setattr(enc, "MAX_CACHED_CODE", 3)
    names = ("_MARKER_PACKERS", "_READERS", "_REGISTER_READERS")
    for name in names:  # (empty ones for the test; the module's are put back after it)
        monkeypatch.setattr(enc, name, {})
    caches = [getattr(enc, name) for name in names]
    for i in range(10):
        schema = DatabaseSchema.from_json({"name": "D", "tables": {"T": {"columns": {
            "n": {"type": "integer"}, "s": {"type": "string"}}}}})
        table = schema.tables["T"]
        row = list(table.default_row)
        row[table.columns["n"].index] = (i,)
        payload = enc.pack_marker(table, 7, tuple(row))
        birth, got = enc.marker_reader(table)(ROW_UUID, payload)
        assert birth == 7 and got[2:] == row[2:]  # (0, 1: _uuid and _version)
        col = table.columns["n"]
        assert enc.unpack_register(col, enc.pack_register(5, col, (i,))) == (5, (i,))
        assert all(len(c) <= 3 for c in caches)
    assert all(caches)
