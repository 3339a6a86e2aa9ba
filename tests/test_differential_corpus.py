"""Differential tests: crdtdb.engine against the real ovsdb-server, over tests/corpus/*.json.

Every corpus file is a JSON list of cases::

    {
      "name": "unique_case_name",
      "schema": "sb" | "kitchen_sink",
      "doc": "optional: what the case is about",
      "setup": [[op, ...], ...],          optional transactions run first
      "txn": [op, ...]                    the transaction under test
        or "txns": [[op, ...], ...]       several transactions under test
      "expect": "ok" | "<error tag>" | [one of those per transaction],
      "expect_details": "optional: a substring of the error's details"
    }

Each case runs on a fresh ovsdb-server (new database file) and on a fresh engine
``MemoryDatabase``; the results of *all* its transactions (setup included) are compared
after ``differential.normalize``.

"expect" documents what ovsdb-server does and is checked against the server alone
(``test_server_behaves_as_case_says``), so the corpus stays honest even while the engine
does not exist: a string applies to the last transaction (setup transactions must then
succeed); a list gives one expectation per transaction, setup included.  "ok" means no
error object in the results; a tag means the first error object has that "error".
"expect_details" applies to the first transaction expected to fail.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from differential import assert_same
from support import KITCHEN_SINK_SCHEMA, require_binaries

from crdtdb.testing.ovsdb_server import OvsdbClient, OvsdbServer, find_sb_schema

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
SCHEMAS: dict[str, Callable[[], Path | None]] = {
    "sb": find_sb_schema,
    "kitchen_sink": lambda: KITCHEN_SINK_SCHEMA,
}
CASE_KEYS = {"name", "schema", "doc", "setup", "txn", "txns", "expect", "expect_details"}


@dataclass(frozen=True)
class Case:
    name: str
    schema: str
    source: str
    transactions: tuple[list[Any], ...]  # setup first, then the transaction(s) under test
    expect: tuple[str, ...]  # one per transaction
    expect_details: str | None

    def __str__(self) -> str:
        return self.name


def _case_from_json(raw: Any, source: str) -> Case:
    where = f"{source}: case {raw.get('name', '?') if isinstance(raw, dict) else raw!r}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a case must be an object")
    unknown = set(raw) - CASE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError(f"{where}: missing name")
    if raw.get("schema") not in SCHEMAS:
        raise ValueError(f"{where}: schema must be one of {sorted(SCHEMAS)}")
    if ("txn" in raw) == ("txns" in raw):
        raise ValueError(f"{where}: give exactly one of txn and txns")
    setup = raw.get("setup", [])
    under_test = [raw["txn"]] if "txn" in raw else raw["txns"]
    transactions = [*setup, *under_test]
    for ops in transactions:
        if not isinstance(ops, list):
            raise ValueError(f"{where}: a transaction must be a list of operations")
    expect = raw.get("expect")
    if isinstance(expect, str):
        expects = ("ok",) * len(setup) + ("ok",) * (len(under_test) - 1) + (expect,)
    elif isinstance(expect, list) and len(expect) == len(transactions):
        expects = tuple(expect)
    else:
        raise ValueError(f"{where}: expect must be a string or one entry per transaction")
    return Case(
        name=raw["name"],
        schema=raw["schema"],
        source=source,
        transactions=tuple(transactions),
        expect=expects,
        expect_details=raw.get("expect_details"),
    )


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*.json")):
        raw_cases = json.loads(path.read_text())
        if not isinstance(raw_cases, list):
            raise ValueError(f"{path.name}: must hold a JSON list of cases")
        cases.extend(_case_from_json(raw, path.name) for raw in raw_cases)
    return cases


CASES = load_corpus()


def schema_path(case: Case) -> Path:
    path = SCHEMAS[case.schema]()
    if path is None:
        message = f"schema {case.schema!r} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_on_server(client: OvsdbClient, db_name: str, case: Case) -> list[list[Any]]:
    return [client.transact(db_name, copy.deepcopy(ops)) for ops in case.transactions]


@pytest.fixture(scope="session")
def server_transcript(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Case], list[list[Any]]]:
    """Runs a case on a fresh ovsdb-server (once per session) and returns its results."""
    cache: dict[str, list[list[Any]]] = {}

    def run(case: Case) -> list[list[Any]]:
        if case.name not in cache:
            require_binaries()
            path = schema_path(case)
            workdir = tmp_path_factory.mktemp("ovsdb")
            with OvsdbServer(path, workdir) as server, server.client(timeout=5.0) as client:
                cache[case.name] = run_on_server(client, server.db_name, case)
        return cache[case.name]

    return run


_engine_schemas: dict[str, Any] = {}


def run_on_engine(case: Case, store: str = "memory") -> list[list[Any]]:
    """Run the case on a fresh store: ``memory`` (the engine's reference store) or
    ``replica`` (a single CRDT replica: every commit goes through the document and the view).
    """
    # Imported here so that the server-side tests still run while the engine does not.
    from crdtdb.engine import DatabaseSchema, MemoryDatabase
    from crdtdb.replica import Replica

    if case.schema not in _engine_schemas:
        with schema_path(case).open() as f:
            # The real server serves the schema as ovsdb-tool create stored it.
            _engine_schemas[case.schema] = DatabaseSchema.from_json(json.load(f)).stored()
    schema = _engine_schemas[case.schema]
    db: Any = (MemoryDatabase(schema) if store == "memory"
               else Replica.in_memory(schema, client_id=1))
    transcript = []
    for ops in case.transactions:
        results = db.transact(copy.deepcopy(ops))
        # The contract is "JSON-ready python values": prove it, and turn tuples into lists.
        transcript.append(json.loads(json.dumps(results)))
    if store == "replica":
        from tests.replica_support import check_reload, check_view

        check_view(db)
        check_reload(db)
        assert db.view.hidden() == {}
    return transcript


def _first_error(results: Sequence[Any]) -> dict[str, Any] | None:
    return next((r for r in results if isinstance(r, dict) and "error" in r), None)


# -- tests ----------------------------------------------------------------------------


def test_corpus_is_well_formed() -> None:
    names = [case.name for case in CASES]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"duplicate case names: {duplicates}"
    assert len(CASES) >= 80
    for case in CASES:
        if case.expect_details is not None:
            assert any(e != "ok" for e in case.expect), f"{case.name}: details but no error"
        for t, ops in enumerate(case.transactions):
            if case.expect[t] != "timed out":
                continue
            # A wait that is not satisfied at once and has a non-zero timeout blocks on
            # ovsdb-server and is handed back to the caller by the engine: it cannot be
            # compared.  So only waits with timeout 0 may time out.
            for op in ops:
                if isinstance(op, dict) and op.get("op") == "wait":
                    assert op.get("timeout") == 0, f"{case.name}: t{t}: wait needs timeout 0"


@pytest.mark.ovsdb_server
@pytest.mark.parametrize("case", CASES, ids=str)
def test_server_behaves_as_case_says(
    case: Case, server_transcript: Callable[[Case], list[list[Any]]]
) -> None:
    transcript = server_transcript(case)
    for t, (results, expect) in enumerate(zip(transcript, case.expect, strict=True)):
        error = _first_error(results)
        got = "ok" if error is None else error["error"]
        assert got == expect, f"{case.name}: transaction t{t}: {json.dumps(results)}"
    if case.expect_details is not None:
        t = next(t for t, expect in enumerate(case.expect) if expect != "ok")
        error = _first_error(transcript[t])
        assert error is not None and case.expect_details in error.get("details", ""), (
            f"{case.name}: transaction t{t}: {json.dumps(transcript[t])}"
        )


@pytest.mark.ovsdb_server
@pytest.mark.parametrize("store", ["memory", "replica"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_engine_matches_ovsdb_server(
    case: Case, store: str, server_transcript: Callable[[Case], list[list[Any]]]
) -> None:
    server = server_transcript(case)
    engine = run_on_engine(case, store)
    assert_same(server, engine, case.transactions, name=case.name)


# -- the harness itself ---------------------------------------------------------------

S1, S2 = "aaaaaaaa-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-000000000002"
E1, E2 = "bbbbbbbb-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
LITERAL = "cccccccc-0000-4000-8000-000000000001"


def _insert_then_select(a: str, b: str, rows: list[Any]) -> list[list[Any]]:
    return [[{"uuid": ["uuid", a]}, {"uuid": ["uuid", b]}], [{"rows": rows}]]


def test_normalize_maps_row_uuids_by_insert_position() -> None:
    server = _insert_then_select(
        S1, S2, [{"_uuid": ["uuid", S2], "ref": ["set", [["uuid", S1], ["uuid", S2]]]}]
    )
    engine = _insert_then_select(
        E1, E2, [{"_uuid": ["uuid", E2], "ref": ["set", [["uuid", E2], ["uuid", E1]]]}]
    )
    assert_same(server, engine)
    swapped = _insert_then_select(E1, E2, [{"_uuid": ["uuid", E1], "ref": ["set", []]}])
    with pytest.raises(AssertionError, match="engine differs"):
        assert_same(server, swapped)


def test_normalize_keeps_literal_uuids() -> None:
    txns = [[{"op": "insert", "table": "T", "uuid": LITERAL, "row": {}}]]
    assert_same([[{"uuid": ["uuid", LITERAL]}]], [[{"uuid": ["uuid", LITERAL]}]], txns)
    with pytest.raises(AssertionError):
        assert_same([[{"uuid": ["uuid", LITERAL]}]], [[{"uuid": ["uuid", E1]}]], txns)


def test_normalize_hides_versions_row_order_and_unknown_uuids() -> None:
    server = [
        [{"rows": [{"n": 1, "_version": ["uuid", S1]}, {"n": 2, "_version": ["uuid", S2]}]}],
        [{"error": "x", "details": f"row {S1} references nonexistent row {S2}"}],
    ]
    engine = [
        [{"rows": [{"n": 2, "_version": ["uuid", E1]}, {"n": 1, "_version": ["uuid", E2]}]}],
        [{"error": "x", "details": f"row {E1} references nonexistent row {E2}"}],
    ]
    assert_same(server, engine)


def test_normalize_index_error_row_order() -> None:
    head = (
        'Transaction causes multiple rows in "T" table to have identical values (1) '
        'for index on column "a".  '
    )
    a = f"row, with UUID {LITERAL}, was inserted by this transaction."
    b = f"row, with UUID {S1}, existed in the database before this transaction."
    server = [[{"error": "constraint violation", "details": f"{head}First {a}  Second {b}"}]]
    engine = [[{"error": "constraint violation", "details": f"{head}First {b}  Second {a}"}]]
    assert_same(server, engine, [[{"uuid": LITERAL}]])


def test_normalize_numbers_and_booleans() -> None:
    assert_same([[{"rows": [{"r": 3, "x": 0.3}]}]], [[{"rows": [{"r": 3.0, "x": 0.1 + 0.2}]}]])
    with pytest.raises(AssertionError):
        assert_same([[{"rows": [{"b": True}]}]], [[{"rows": [{"b": 1}]}]])
    with pytest.raises(AssertionError):
        assert_same([[{"count": 1}, None]], [[{"count": 1}]])
    # Sets of plain atoms must come back in ovsdb-server's (sorted) order.
    with pytest.raises(AssertionError):
        sorted_set, unsorted_set = ["set", ["a", "b"]], ["set", ["b", "a"]]
        assert_same([[{"rows": [{"s": sorted_set}]}]], [[{"rows": [{"s": unsorted_set}]}]])


@pytest.mark.ovsdb_server
def test_kitchen_sink_schema_is_served(
    ovsdb_server: Callable[[Path], OvsdbServer], kitchen_sink_schema_path: Path
) -> None:
    schema = json.loads(kitchen_sink_schema_path.read_text())
    server = ovsdb_server(kitchen_sink_schema_path)
    with server.client() as client:
        assert client.list_dbs() == ["KitchenSink", "_Server"]
        served = client.get_schema("KitchenSink")
        assert served["name"] == "KitchenSink" and served["version"] == "1.0.0"
        assert set(served["tables"]) == set(schema["tables"])
        client.transact("KitchenSink", [{"op": "insert", "table": "Peer", "row": {"name": "p"}}])
    server.reset()
    assert server.transact([{"op": "select", "table": "Peer", "where": []}]) == [{"rows": []}]


@pytest.mark.ovsdb_server
def test_ovsdb_server_with_a_long_directory_name(tmp_path: Path, sb_schema_path: Path) -> None:
    require_binaries()
    workdir = tmp_path / ("d" * 120)
    with OvsdbServer(sb_schema_path, workdir) as server:
        assert len(str(server.sock_path)) < 100
        assert server.transact([]) == []
        pid = server.pid
    assert not server.running and pid is not None
