"""Schema parsing: the real installed schemas load, and malformed ones are rejected with an
error naming the table, the column and the problem."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtdb.engine import DatabaseSchema
from crdtdb.engine.types import UNLIMITED, AtomicType, RefType
from crdtdb.errors import SchemaError

INSTALLED = {
    "OVN_Southbound": "/usr/share/ovn/ovn-sb.ovsschema",
    "OVN_Northbound": "/usr/share/ovn/ovn-nb.ovsschema",
    "Open_vSwitch": "/usr/share/openvswitch/vswitch.ovsschema",
}
SERVER_SCHEMA = Path(__file__).parent.parent / "crdtdb" / "schemas" / "_server.ovsschema"


@pytest.mark.parametrize("name", sorted(INSTALLED))
def test_installed_schemas_load(name: str) -> None:
    path = INSTALLED[name]
    if not Path(path).exists():
        pytest.skip(f"{path} not installed (scripts/bootstrap installs it)")
    s = DatabaseSchema.from_file(path)
    assert s.name == name
    raw = json.loads(Path(path).read_text())
    assert set(s.tables) == set(raw["tables"])
    for tname, t in raw["tables"].items():
        assert set(s.tables[tname].columns) == set(t["columns"]) | {"_uuid", "_version"}
        assert s.tables[tname].indexes == tuple(tuple(ix) for ix in t.get("indexes", []))


def test_server_schema_loads() -> None:
    s = DatabaseSchema.from_file(SERVER_SCHEMA)
    assert s.name == "_Server"
    db = s.tables["Database"]
    assert set(db.columns) >= {"name", "model", "connected", "leader", "schema", "cid", "sid",
                               "index"}


def test_sb_features() -> None:
    path = INSTALLED["OVN_Southbound"]
    if not Path(path).exists():
        pytest.skip("ovn-common not installed")
    s = DatabaseSchema.from_file(path)
    assert s.tables["SB_Global"].max_rows == 1
    assert not s.tables["Encap"].is_root
    encaps = s.tables["Chassis"].columns["encaps"].type
    assert encaps.key.ref_table == "Encap" and encaps.key.ref_type is RefType.STRONG
    assert (encaps.n_min, encaps.n_max) == (1, UNLIMITED)
    assert encaps.english() == "set of 1 or more uuids"
    chassis = s.tables["Chassis_Private"].columns["chassis"].type
    assert chassis.key.ref_type is RefType.WEAK and chassis.is_optional_scalar
    enc_type = s.tables["Encap"].columns["type"].type.key
    assert enc_type.type is AtomicType.STRING and enc_type.enum == ("geneve", "stt", "vxlan")
    assert s.tables["Encap"].indexes == (("type", "ip"),)


GOOD = {
    "name": "T", "version": "1.0.0",
    "tables": {
        "A": {"columns": {"x": {"type": "integer"},
                          "r": {"type": {"key": {"type": "uuid", "refTable": "A"},
                                         "min": 0, "max": "unlimited"}}},
              "isRoot": True, "indexes": [["x"]]},
    },
}


def _with(path: list, value: object) -> dict:
    doc = copy.deepcopy(GOOD)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(("path", "value", "table", "column", "words"), [
    (["version"], "1.0", None, None, "not in format x.y.z"),
    (["tables", "A", "columns", "x", "type"], "int", "A", "x", "not an atomic-type"),
    (["tables", "A", "columns", "x", "type"], {"key": "integer", "min": 2}, "A", "x",
     "constraint checks"),
    (["tables", "A", "columns", "x", "type"], {"key": "integer", "max": 0}, "A", "x",
     "constraint checks"),
    (["tables", "A", "columns", "x", "type"], {"key": "integer", "max": "lots"}, "A", "x",
     "bad min or max"),
    (["tables", "A", "columns", "x", "type"],
     {"key": {"type": "integer", "minInteger": 5, "maxInteger": 1}}, "A", "x",
     "minInteger exceeds maxInteger"),
    (["tables", "A", "columns", "x", "type"],
     {"key": {"type": "string", "minLength": 5, "maxLength": 1}}, "A", "x",
     "minLength exceeds maxLength"),
    (["tables", "A", "columns", "x", "type"],
     {"key": {"type": "real", "minReal": 5, "maxReal": 1}}, "A", "x", "minReal exceeds maxReal"),
    (["tables", "A", "columns", "x", "type"],
     {"key": {"type": "uuid", "refTable": "A", "refType": "soft"}}, "A", "x", "refType"),
    (["tables", "A", "columns", "r", "type"],
     {"key": {"type": "uuid", "refTable": "Nope"}}, "A", "r", "refTable Nope"),
    (["tables", "A", "columns", "x", "type"],
     {"key": {"type": "string", "enum": ["set", ["a", "a"]]}}, "A", "x", "bad enum"),
    (["tables", "A", "columns", "x", "colour"], "red", "A", "x", "unexpected member"),
    (["tables", "A", "columns", "_x"], {"type": "integer"}, "A", "_x", "reserved"),
    (["tables", "A", "columns", "x y"], {"type": "integer"}, "A", "x y", "valid id"),
    (["tables", "A", "indexes"], [["nope"]], "A", "nope", "not a valid column"),
    (["tables", "A", "indexes"], [[]], "A", None, "at least one column"),
    (["tables", "A", "maxRows"], 0, "A", None, "maxRows must be at least 1"),
    (["tables", "A", "columns"], {}, "A", None, "at least one column"),
    (["tables", "_B"], {"columns": {"x": {"type": "integer"}}}, "_B", None, "reserved"),
])
def test_malformed_schema_names_table_column_and_problem(path: list, value: object,
                                                         table: str | None, column: str | None,
                                                         words: str) -> None:
    with pytest.raises(SchemaError) as exc:
        DatabaseSchema.from_json(_with(path, value))
    assert exc.value.table == table
    assert exc.value.column == column
    assert words in str(exc.value)


def test_ephemeral_columns_cannot_be_indexed() -> None:
    doc = _with(["tables", "A", "columns", "x", "ephemeral"], True)
    with pytest.raises(SchemaError, match="ephemeral"):
        DatabaseSchema.from_json(doc)


def test_schema_without_roots_makes_every_table_a_root() -> None:
    doc = _with(["tables", "A", "isRoot"], False)
    assert DatabaseSchema.from_json(doc).tables["A"].is_root


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                           max_size=3),
                    max_leaves=10))
def test_arbitrary_json_is_rejected_with_schema_error_only(doc: object) -> None:
    with contextlib.suppress(SchemaError):
        DatabaseSchema.from_json(doc)


@given(st.sampled_from(sorted(INSTALLED)))
def test_schema_to_json_round_trips(name: str) -> None:
    path = INSTALLED[name]
    if not Path(path).exists():
        return
    s = DatabaseSchema.from_file(path)
    again = DatabaseSchema.from_json(s.to_json())
    assert again.to_json() == s.to_json()
    def columns(schema: DatabaseSchema) -> dict:
        return {t: {c.name: (c.type, c.mutable, c.ephemeral) for c in ts.ordered}
                for t, ts in schema.tables.items()}
    assert columns(again) == columns(s)


def test_a_schema_keeps_nothing_of_its_caller_alive() -> None:
    """A column whose default breaks its own constraints is remembered with its error
    (ovsdb-server reports it on insert); kept with its traceback, the error held the frames
    that parsed the schema and so their callers' locals for as long as the schema lived (a
    simulation's whole cloud, run after run)."""
    import gc
    import weakref

    class Caller:
        pass

    def parse() -> tuple[DatabaseSchema, weakref.ref[Caller]]:
        local = Caller()
        schema = DatabaseSchema.from_json({"name": "D", "tables": {"T": {"columns": {
            "n": {"type": {"key": {"type": "integer", "minInteger": 1}}}}}}})
        return schema, weakref.ref(local)

    schema, ref = parse()
    assert schema.tables["T"].bad_defaults  # (0 is below minInteger)
    gc.collect()
    assert ref() is None
