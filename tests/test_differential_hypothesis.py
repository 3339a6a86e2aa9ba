"""Differential property tests: random transaction sequences, ovsdb-server against the engine.

``strategies.transaction_sequences`` draws 5 to 15 transactions, valid and invalid operations
of every kind, each drawn against the state the earlier ones left.  Each example replays its
sequence on a fresh ovsdb-server database and a fresh ``MemoryDatabase`` and compares, after
every transaction, the results (``differential.assert_same``), and after every transaction
that wrote something, every row of every table in use (a *state check*, which also compares
which rows got a new ``_version``).  Most transactions commit, so state builds up.

Rows are named across transactions by position: ``Ref('Chassis', 2)`` (``@Chassis#2`` in
reports) is the third row that a committed insert put into Chassis.  Each side keeps its own
list of the UUIDs its inserts returned and resolves the abstract operations against it.

What is never generated, and why, is listed in tests/strategies.py.  Run with
``--hypothesis-show-statistics`` to see the outcomes (commit, or the error and where it
happened) and how many transactions were left out as hash-order dependent.

The default run does 100 sequences per schema; ``--slow`` adds 1000 per schema.  A failure
shows the sequence (as the drawn ``sequence`` argument, and as JSON with both sides' results
in the assertion message) and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from differential import assert_same, uuid_labels
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import (
    EngineSide,
    Ref,
    SchemaModel,
    display,
    first_error,
    remember_inserts,
    resolve,
    transaction_sequences,
)
from support import KITCHEN_SINK_SCHEMA, require_binaries

from crdtdb.engine import DatabaseSchema
from crdtdb.testing.ovsdb_server import (
    OvsdbClient,
    OvsdbRpcError,
    OvsdbServer,
    find_sb_schema,
)

#: The Southbound tables operations are generated for: strong references to a non-root table
#: with an index (Chassis -> Encap), weak references (Chassis_Private, Port_Binding,
#: Logical_DP_Group, Gateway_Chassis), maxRows (SB_Global), multi-column indexes
#: (Port_Binding, MAC_Binding, Encap), constrained integers and enums (Logical_Flow).
SB_TABLES = (
    "SB_Global",
    "Chassis",
    "Encap",
    "Chassis_Private",
    "Datapath_Binding",
    "Port_Binding",
    "MAC_Binding",
    "Logical_Flow",
    "Logical_DP_Group",
    "Gateway_Chassis",
)


@dataclass(frozen=True)
class VersionDiff:
    """Rows (labelled as in differential.py) that got a new ``_version`` on one side only,
    and the rows whose content (``_version`` aside) did not change."""

    server_only: frozenset[str]
    engine_only: frozenset[str]
    unchanged: frozenset[str]


@dataclass(frozen=True)
class KnownMismatch:
    """An engine/ovsdb-server difference this test found that is not fixed yet.

    ``check`` is "results" (``applies(ops, server_results, engine_results)``, called when a
    transaction's results differ: the example ends there, as the states may now differ) or
    "versions" (``applies(diff: VersionDiff)``, called when a state check finds different
    rows with a new ``_version``: the example goes on, the contents agree) or "state"
    (``applies(server_states, engine_states)``, called when a state check differs: the
    example ends there).  Either way a
    Hypothesis event counts it.  Remove the entry once the engine is fixed.
    """

    name: str
    check: str
    applies: Callable[..., bool]


def _drop_dangling(state: list[Any]) -> tuple[list[Any], bool]:
    """A state check's result with every reference to a row that does not exist removed,
    and whether there was any."""
    existing = {row["_uuid"][1] for result in state for row in result["rows"]}
    found = False

    def dangling(atom: Any) -> bool:
        nonlocal found
        bad = (isinstance(atom, list) and len(atom) == 2 and atom[0] == "uuid"
               and atom[1] not in existing)
        found = found or bad
        return bad

    def clean(value: Any) -> Any:
        if isinstance(value, list) and value and value[0] == "set":
            kept = [a for a in value[1] if not dangling(a)]
            return kept[0] if len(kept) == 1 else ["set", kept]  # one element goes bare
        if isinstance(value, list) and value and value[0] == "map":
            return ["map", [p for p in value[1] if not (dangling(p[0]) or dangling(p[1]))]]
        if dangling(value):
            return ["set", []]
        return value

    out = [{"rows": [{k: v if k in ("_uuid", "_version") else clean(v)
                      for k, v in row.items()} for row in result["rows"]]}
           for result in state]
    return out, found


def _server_kept_dangling_weak_refs(server_states: list[Any], engine_states: list[Any]) -> bool:
    cleaned, found = _drop_dangling(server_states[-1])
    if not found:
        return False
    try:
        assert_same([*server_states[:-1], cleaned], engine_states)
    except AssertionError:
        return False
    return True


KNOWN_ENGINE_MISMATCHES: list[KnownMismatch] = [
    # ovsdb-server 3.1 leaves a weak reference to a row deleted by the transaction when the
    # referring row was modified earlier in the same transaction: assess_weak_refs visits the
    # transaction's rows once, in order, and queues the cleanup on a row it has already
    # visited, so the dangling uuid stays in the column (the database then breaks its own
    # schema). The engine removes it. Minimal: one transaction that first updates a
    # Port_Binding whose requested_additional_chassis (weak) names Chassis X, then deletes X.
    KnownMismatch(
        "ovsdb-server keeps a weak reference to a row deleted later in the same transaction",
        "state",
        _server_kept_dangling_weak_refs,
    ),
]

DEFAULT_EXAMPLES = 100
SLOW_EXAMPLES = 1000
REPLICA_EXAMPLES = 60


@functools.cache
def _schemas(path: Path) -> tuple[SchemaModel, DatabaseSchema]:
    """The generator's model and the engine's schema, from one .ovsschema file."""
    doc = json.loads(path.read_text())
    # The engine serves the schema as ovsdb-server holds it after ovsdb-tool create.
    return SchemaModel.from_json(doc), DatabaseSchema.from_json(doc).stored()


def _sequences(path: Callable[[], Path | None],
               tables: Sequence[str] | None = None) -> st.SearchStrategy[list[list[Any]]]:
    """Deferred: a missing schema makes the test skip (or fail under CI) through its schema
    fixture before anything is drawn."""

    def build() -> st.SearchStrategy[list[list[Any]]]:
        found = path()
        assert found is not None
        model, schema = _schemas(found)
        return transaction_sequences(model, schema, tables or sorted(model.tables))

    return st.deferred(build)


SB_SEQUENCES = _sequences(find_sb_schema, SB_TABLES)
KS_SEQUENCES = _sequences(lambda: KITCHEN_SINK_SCHEMA)


class Replay:
    """One sequence replayed on ovsdb-server and on a fresh engine, with both transcripts."""

    def __init__(self, server: OvsdbServer, client: OvsdbClient, model: SchemaModel,
                 schema: DatabaseSchema, tables: Sequence[str], store: str = "memory") -> None:
        self.server = server
        self.client = client
        self.engine = EngineSide(model, schema, tables, store)
        self.server_pool: dict[str, list[str]] = {t: [] for t in model.tables}
        self.transactions: list[Any] = []  # abstract; None for a state check
        self.server_results: list[list[Any]] = []
        self.engine_results: list[list[Any]] = []
        self._versions: tuple[dict[str, str], dict[str, str]] = ({}, {})  # uuid -> _version
        self._contents: dict[str, dict[str, Any]] = {}  # server row label -> row sans _version

    def server_uuid(self, ref: Ref) -> str:
        return self.server_pool[ref.table][ref.index]

    def run(self, ops: list[Any]) -> None:
        server_results = self._server_transact(ops)
        engine_results = self.engine.transact(ops)
        remember_inserts(ops, server_results, self.server_pool)
        self._record(ops, server_results, engine_results)
        event(_outcome(ops, server_results))
        try:
            self._compare()
        except AssertionError:
            for known in KNOWN_ENGINE_MISMATCHES:
                if known.check == "results" and known.applies(ops, server_results,
                                                              engine_results):
                    event(f"known mismatch: {known.name}")
                    raise _KnownMismatch(known.name) from None
            raise
        if first_error(server_results) is None and _writes(ops):
            self._check_state(ops)

    def _server_transact(self, ops: list[Any]) -> list[Any]:
        try:
            return self.client.transact(self.server.db_name, resolve(ops, self.server_uuid))
        except (ConnectionError, TimeoutError, OvsdbRpcError) as exc:
            raise AssertionError(
                f"ovsdb-server failed on {_json(display(ops))}: {exc!r}\n"
                f"log:\n{self.server.log_tail()}\n\n{self.report()}"
            ) from exc

    def _record(self, ops: Any, server: list[Any], engine: list[Any]) -> None:
        self.transactions.append(ops)
        self.server_results.append(server)
        self.engine_results.append(engine)

    def _compare(self) -> None:
        shown = [display(ops) if ops is not None else "(state check)"
                 for ops in self.transactions]
        try:
            assert_same(self.server_results, self.engine_results, shown, name="sequence")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\n{self.report()}") from None

    def _check_state(self, ops: list[Any]) -> None:
        """Every row of every table in use, so that a difference in what a transaction wrote
        shows at once, not only when a later operation happens to read it; and the rows whose
        ``_version`` changed since the last check (assert_same hides the random versions;
        ovsdb-server gives a row a new one only when a transaction really changed it)."""
        everything = [{"op": "select", "table": t, "where": []} for t in self.engine.tables]
        self._record(None, self._server_transact(everything), self.engine.probe(everything))
        try:
            self._compare()
        except AssertionError:
            for known in KNOWN_ENGINE_MISMATCHES:
                if known.check == "state" and known.applies(self.server_results,
                                                            self.engine_results):
                    event(f"known mismatch: {known.name}")
                    raise _KnownMismatch(known.name) from None
            raise
        changed = []
        for transcript, previous in zip((self.server_results, self.engine_results),
                                        self._versions, strict=True):
            labels = uuid_labels(transcript)
            now = {row["_uuid"][1]: row["_version"][1]
                   for result in transcript[-1] for row in result["rows"]}
            changed.append(frozenset(labels.get(u, u) for u, v in now.items()
                                     if previous.get(u) not in (None, v)))
            previous.clear()
            previous.update(now)
        server_labels = uuid_labels(self.server_results)
        rows = {server_labels.get(row["_uuid"][1], row["_uuid"][1]):
                {k: v for k, v in row.items() if k != "_version"}
                for result in self.server_results[-1] for row in result["rows"]}
        unchanged = frozenset(label for label, row in rows.items()
                              if self._contents.get(label) == row)
        self._contents = rows
        if changed[0] == changed[1]:
            return
        diff = VersionDiff(changed[0] - changed[1], changed[1] - changed[0], unchanged)
        for known in KNOWN_ENGINE_MISMATCHES:
            if known.check == "versions" and known.applies(diff):
                event(f"known mismatch: {known.name}")
                return
        raise AssertionError(
            f"after {_json(display(ops))}\n"
            f"rows with a new _version on ovsdb-server: {sorted(changed[0])}\n"
            f"rows with a new _version in the engine:   {sorted(changed[1])}\n\n"
            f"{self.report()}"
        )

    def report(self) -> str:
        """The sequence so far, readable: operations (rows as @Table#k) and both results."""
        lines = ["The sequence so far (@T#k: the k-th row committed inserts put into T):"]
        for t, (ops, s, e) in enumerate(
            zip(self.transactions, self.server_results, self.engine_results, strict=True)
        ):
            what = "(state check: every row of every table in use)" if ops is None else (
                _json(display(ops)))
            lines += [f"--- t{t}: {what}", f"    ovsdb-server: {_json(s)}",
                      f"    engine:       {_json(e)}"]
        return "\n".join(lines)


class _KnownMismatch(Exception):
    pass


def _json(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def _writes(ops: list[Any]) -> bool:
    return any(isinstance(op, dict) and op.get("op") in ("insert", "update", "mutate", "delete")
               for op in ops)


def _outcome(ops: list[Any], results: list[Any]) -> str:
    err = first_error(results)
    if err is None:
        return "committed"
    i, r = err
    if i >= len(ops):
        return f"failed at commit: {r['error']}"
    op = ops[i]
    name = op.get("op") if isinstance(op, dict) else None
    return f"failed in {name if isinstance(name, str) else 'malformed'}: {r['error']}"


# -- fixtures and the tests -----------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], OvsdbServer]]:
    """One ovsdb-server per schema for the module; each example resets it (new database)."""
    require_binaries()
    started: dict[Path, OvsdbServer] = {}

    def get(path: Path) -> OvsdbServer:
        if path not in started:
            server = OvsdbServer(path, tmp_path_factory.mktemp("hypothesis-ovsdb"))
            server.start()
            started[path] = server
        return started[path]

    yield get
    for server in started.values():
        server.close()


def replay(server: OvsdbServer, path: Path, tables: Sequence[str] | None,
           sequence: list[list[Any]], store: str = "memory") -> None:
    model, schema = _schemas(path)
    tables = tables or sorted(model.tables)
    server.reset()
    with server.client(timeout=5.0) as client:
        r = Replay(server, client, model, schema, tables, store)
        try:
            for ops in sequence:
                r.run(ops)
        except _KnownMismatch:
            return
        if store == "replica":
            from tests.replica_support import check_reload, check_view

            check_view(r.engine.db)
            check_reload(r.engine.db)


def _settings(examples: int, *, explore: bool = False) -> settings:
    """The default run is derandomized (the same examples every time, so CI is not a lottery
    over ovsdb-server quirks nobody has classified yet); the --slow runs explore."""
    return settings(
        max_examples=examples,
        deadline=None,
        print_blob=True,
        derandomize=not explore,
        database=None if not explore else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.mark.ovsdb_server
@_settings(DEFAULT_EXAMPLES)
@given(sequence=SB_SEQUENCES)
def test_southbound_sequences(
    servers: Callable[[Path], OvsdbServer], sb_schema_path: Path, sequence: list[list[Any]]
) -> None:
    replay(servers(sb_schema_path), sb_schema_path, SB_TABLES, sequence)


@pytest.mark.ovsdb_server
@_settings(DEFAULT_EXAMPLES)
@given(sequence=KS_SEQUENCES)
def test_kitchen_sink_sequences(
    servers: Callable[[Path], OvsdbServer], kitchen_sink_schema_path: Path,
    sequence: list[list[Any]],
) -> None:
    replay(servers(kitchen_sink_schema_path), kitchen_sink_schema_path, None, sequence)


@pytest.mark.ovsdb_server
@_settings(REPLICA_EXAMPLES)
@given(sequence=SB_SEQUENCES)
def test_southbound_sequences_on_a_replica(
    servers: Callable[[Path], OvsdbServer], sb_schema_path: Path, sequence: list[list[Any]]
) -> None:
    """The same comparison with the engine's commits going through one CRDT replica."""
    replay(servers(sb_schema_path), sb_schema_path, SB_TABLES, sequence, store="replica")


@pytest.mark.ovsdb_server
@_settings(REPLICA_EXAMPLES)
@given(sequence=KS_SEQUENCES)
def test_kitchen_sink_sequences_on_a_replica(
    servers: Callable[[Path], OvsdbServer], kitchen_sink_schema_path: Path,
    sequence: list[list[Any]],
) -> None:
    replay(servers(kitchen_sink_schema_path), kitchen_sink_schema_path, None, sequence,
           store="replica")


@pytest.mark.slow
@pytest.mark.ovsdb_server
@_settings(SLOW_EXAMPLES, explore=True)
@given(sequence=KS_SEQUENCES)
def test_kitchen_sink_sequences_on_a_replica_long(
    servers: Callable[[Path], OvsdbServer], kitchen_sink_schema_path: Path,
    sequence: list[list[Any]],
) -> None:
    replay(servers(kitchen_sink_schema_path), kitchen_sink_schema_path, None, sequence,
           store="replica")


@pytest.mark.slow
@pytest.mark.ovsdb_server
@_settings(SLOW_EXAMPLES, explore=True)
@given(sequence=SB_SEQUENCES)
def test_southbound_sequences_long(
    servers: Callable[[Path], OvsdbServer], sb_schema_path: Path, sequence: list[list[Any]]
) -> None:
    replay(servers(sb_schema_path), sb_schema_path, SB_TABLES, sequence)


@pytest.mark.slow
@pytest.mark.ovsdb_server
@_settings(SLOW_EXAMPLES, explore=True)
@given(sequence=KS_SEQUENCES)
def test_kitchen_sink_sequences_long(
    servers: Callable[[Path], OvsdbServer], kitchen_sink_schema_path: Path,
    sequence: list[list[Any]],
) -> None:
    replay(servers(kitchen_sink_schema_path), kitchen_sink_schema_path, None, sequence)
