"""Engine behaviour beyond the wire results: changesets, read-sets, purity, waits, locks, and a
stateful property test that random transactions never break the schema's invariants."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from crdtdb.engine import DatabaseSchema, MemoryDatabase, execute
from crdtdb.engine.collection import LARGE_TRANSACTION_OPS
from crdtdb.engine.integrity import violations
from crdtdb.engine.transaction import random_uuid
from crdtdb.errors import WouldBlock

SB_PATH = "/usr/share/ovn/ovn-sb.ovsschema"
SERVER_SCHEMA = Path(__file__).parent.parent / "crdtdb" / "schemas" / "_server.ovsschema"

pytestmark = pytest.mark.skipif(not Path(SB_PATH).exists(), reason="ovn-common not installed")


def sb() -> MemoryDatabase:
    counter = itertools.count(1)
    return MemoryDatabase(DatabaseSchema.from_file(SB_PATH),
                          new_uuid=lambda: f"00000000-0000-0000-0000-{next(counter):012x}")


def chassis_ops(name: str, ip: str) -> list:
    return [
        {"op": "insert", "table": "Encap", "uuid-name": "e",
         "row": {"type": "geneve", "ip": ip, "chassis_name": name}},
        {"op": "insert", "table": "Chassis", "uuid-name": "c",
         "row": {"name": name, "encaps": ["named-uuid", "e"]}},
    ]


def test_execute_is_pure_and_reports_changes_and_reads() -> None:
    db = sb()
    out = execute(db, chassis_ops("hv1", "192.0.2.1"), new_uuid=db._new_uuid)
    assert out.ok and db.row_count("Chassis") == 0  # nothing applied yet
    cs = out.changeset
    assert cs is not None and set(cs.tables) == {"Encap", "Chassis"}
    assert all(c.old is None for c in cs.tables["Chassis"].values())
    db.apply(cs)
    assert db.row_count("Chassis") == 1 and violations(db) == []

    out = execute(db, [{"op": "update", "table": "Chassis", "where": [["name", "==", "hv1"]],
                        "row": {"hostname": "h"}}])
    assert out.read_set.tables == {"Chassis"}
    (change,) = out.changeset.tables["Chassis"].values()
    version = db.schema.tables["Chassis"].columns["_version"].index
    assert change.old[version] != change.new[version], "a modified row gets a new _version"

    uuid = next(iter(cs.tables["Chassis"]))
    out = execute(db, [{"op": "select", "table": "Chassis", "where": [["_uuid", "==",
                                                                        ["uuid", uuid]]]}])
    assert out.read_set.rows == {("Chassis", uuid)} and not out.read_set.tables
    assert not out.changeset, "a read-only transaction changes nothing"


def test_failed_transaction_changes_nothing() -> None:
    db = sb()
    db.transact(chassis_ops("hv1", "192.0.2.1"))
    before = {t: dict(db.iter_rows(t)) for t in db.schema.tables}
    res = db.transact(chassis_ops("hv1", "192.0.2.2"))  # duplicate Chassis.name
    assert res[-1]["error"] == "constraint violation"
    assert {t: dict(db.iter_rows(t)) for t in db.schema.tables} == before


def test_garbage_collection_and_weak_references() -> None:
    db = sb()
    db.transact(chassis_ops("hv1", "192.0.2.1"))
    (c_uuid,) = (u for u, _ in db.iter_rows("Chassis"))
    db.transact([{"op": "insert", "table": "Chassis_Private",
                  "row": {"name": "hv1", "chassis": ["uuid", c_uuid]}}])
    out = db.execute([{"op": "delete", "table": "Chassis", "where": []}])
    assert out.ok
    changes = out.changeset.tables
    assert set(changes) == {"Chassis", "Encap", "Chassis_Private"}
    assert all(c.new is None for c in changes["Encap"].values()), "orphan Encap collected"
    (priv,) = changes["Chassis_Private"].values()
    chassis_col = db.schema.tables["Chassis_Private"].columns["chassis"].index
    assert priv.new[chassis_col] == (), "weak reference to the deleted chassis removed"
    assert violations(db) == []


def test_a_change_undone_by_weak_reference_cleanup_still_bumps_version() -> None:
    """As ovsdb-server: the row was modified by the transaction, so it gets a new _version,
    even though weak-reference cleanup put its value back (found by the hypothesis tests)."""
    db = sb()
    db.transact([{"op": "insert", "table": "Chassis_Private", "row": {"name": "hv1"}}])
    out = db.execute([{"op": "mutate", "table": "Chassis_Private", "where": [],
                       "mutations": [["chassis", "insert",
                                      ["uuid", "5eed0009-0000-4000-8000-000000000009"]]]}])
    assert out.results == [{"count": 1}]
    (change,) = out.changeset.tables["Chassis_Private"].values()
    assert change.old[2:] == change.new[2:], "the dangling weak reference was removed"
    assert change.old[1] != change.new[1], "but the row still counts as modified"


def test_wait_blocks_until_satisfied_or_timed_out() -> None:
    db = sb()
    wait = {"op": "wait", "table": "SB_Global", "where": [], "until": "!=", "rows": [],
            "timeout": 500}
    out = execute(db, [wait])
    assert out.blocked and out.timeout_ms == 500 and out.results is None
    with pytest.raises(WouldBlock) as exc:
        db.transact([wait])
    assert exc.value.timeout_ms == 500
    late = execute(db, [wait], elapsed_ms=600)
    assert late.results == [{"error": "timed out",
                             "details": '"wait" timed out after 600 ms'}]
    db.transact([{"op": "insert", "table": "SB_Global", "row": {}}])
    assert execute(db, [wait]).results == [{}]


def test_assert_asks_the_lock_interface() -> None:
    db = sb()

    class Holds:
        def holds(self, lock: str) -> bool:
            return lock == "ovn_northd"

    ops = [{"op": "assert", "lock": "ovn_northd"}, {"op": "insert", "table": "SB_Global",
                                                    "row": {}}]
    assert db.transact(ops, locks=Holds())[0] == {}
    assert db.transact(ops)[0]["error"] == "not owner"


def test_server_database_refuses_writes() -> None:
    db = MemoryDatabase(DatabaseSchema.from_file(SERVER_SCHEMA))
    res = db.transact([{"op": "insert", "table": "Database",
                        "row": {"name": "x", "model": "standalone"}}])
    assert res == [{"error": "not allowed", "details": "insert operation not allowed on table "
                                                       "in reserved database _Server"}]
    assert db.transact([{"op": "select", "table": "Database", "where": []}]) == [{"rows": []}]


def test_comment_and_durable_reach_the_changeset() -> None:
    db = sb()
    out = db.execute([{"op": "insert", "table": "SB_Global", "row": {}},
                      {"op": "comment", "comment": "one"}, {"op": "comment", "comment": "two"},
                      {"op": "commit", "durable": True}])
    assert out.changeset.comment == "one\ntwo" and out.changeset.durable


NAMES = ["hv1", "hv2", "hv3"]
IPS = ["192.0.2.1", "192.0.2.2"]


class SouthboundMachine(RuleBasedStateMachine):
    """Random Chassis/Encap/Chassis_Private/SB_Global transactions; after each one the store
    must satisfy every schema invariant, and a failed transaction must change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.db = sb()

    def run(self, ops: list) -> None:
        before = {t: dict(self.db.iter_rows(t)) for t in self.db.schema.tables}
        results = self.db.transact(ops)
        failed = any(isinstance(r, dict) and "error" in r for r in results)
        if failed:
            after = {t: dict(self.db.iter_rows(t)) for t in self.db.schema.tables}
            assert after == before

    @rule(name=st.sampled_from(NAMES), ip=st.sampled_from(IPS))
    def add_chassis(self, name: str, ip: str) -> None:
        self.run(chassis_ops(name, ip))

    @rule(name=st.sampled_from(NAMES))
    def delete_chassis(self, name: str) -> None:
        self.run([{"op": "delete", "table": "Chassis", "where": [["name", "==", name]]}])

    @rule(name=st.sampled_from(NAMES), new=st.sampled_from(NAMES))
    def rename(self, name: str, new: str) -> None:
        self.run([{"op": "update", "table": "Chassis", "where": [["name", "==", name]],
                   "row": {"name": new}}])

    @rule(name=st.sampled_from(NAMES), ip=st.sampled_from(IPS), keep=st.booleans())
    def replace_encap(self, name: str, ip: str, keep: bool) -> None:
        ops: list = [{"op": "insert", "table": "Encap", "uuid-name": "e",
                      "row": {"type": "vxlan", "ip": ip, "chassis_name": name}}]
        mutation = "insert" if keep else "delete"
        arg = ["named-uuid", "e"] if keep else ["set", []]
        ops.append({"op": "mutate", "table": "Chassis", "where": [["name", "==", name]],
                    "mutations": [["encaps", mutation, arg]]})
        if not keep:
            ops.append({"op": "update", "table": "Chassis", "where": [["name", "==", name]],
                        "row": {"encaps": ["named-uuid", "e"]}})
        self.run(ops)

    @rule(name=st.sampled_from(NAMES), owner=st.sampled_from(NAMES))
    def private(self, name: str, owner: str) -> None:
        name_col = self.db.schema.tables["Chassis"].columns["name"].index
        chassis = next((u for u, r in self.db.iter_rows("Chassis") if r[name_col] == (owner,)),
                       None)
        row: dict = {"name": name}
        if chassis is not None:
            row["chassis"] = ["uuid", chassis]
        self.run([{"op": "insert", "table": "Chassis_Private", "row": row}])

    @rule()
    def add_global(self) -> None:
        self.run([{"op": "insert", "table": "SB_Global", "row": {}}])

    @invariant()
    def schema_holds(self) -> None:
        assert violations(self.db) == []


SouthboundMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25,
                                               deadline=None)
TestSouthbound = SouthboundMachine.TestCase


@pytest.mark.parametrize("n_ops", [1, LARGE_TRANSACTION_OPS])
@pytest.mark.parametrize("store", ["memory", "replica"])
def test_large_transactions_run_with_the_cycle_collector_paused(n_ops: int, store: str) -> None:
    """Only a large transaction pauses Python's cyclic collector, only while it runs, and
    only if it was on: the caller's setting is what it finds afterwards, failure or not."""
    import gc

    from crdtdb.replica import Replica

    seen: list[bool] = []

    def new_uuid() -> str:
        seen.append(gc.isenabled())
        return random_uuid()

    schema = DatabaseSchema.from_file(SB_PATH).stored()
    db = (MemoryDatabase(schema, new_uuid=new_uuid) if store == "memory"
          else Replica.in_memory(schema, client_id=1, new_uuid=new_uuid))
    ops = [{"op": "insert", "table": "Address_Set", "row": {"name": f"as{i}"}}
           for i in range(n_ops)]
    assert gc.isenabled()
    assert "error" not in db.transact(ops)[-1]
    assert seen and all(seen) == (n_ops < LARGE_TRANSACTION_OPS) and gc.isenabled()
    seen.clear()
    failing = [*ops, {"op": "abort"}]
    assert db.transact(failing)[-1]["error"] == "aborted" and gc.isenabled()
    gc.disable()
    try:
        db.transact([{**op, "row": {**op["row"], "name": op["row"]["name"] + "b"}}
                     for op in ops])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_random_uuids_are_distinct_version_4_uuids() -> None:
    """random_uuid formats its UUIDs in batches: each is still a lowercase version 4 UUID,
    none repeats across batches, and a forked child does not repeat its parent's."""
    import os
    import re
    import uuid

    made = [random_uuid() for _ in range(3000)]
    assert len(set(made)) == len(made)
    for u in made:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                            r"[0-9a-f]{12}", u)
        assert str(uuid.UUID(u)) == u and uuid.UUID(u).version == 4
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, random_uuid().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    child_next = os.read(read, 64).decode()
    os.close(read)
    parent_next = random_uuid()
    assert child_next != parent_next


def test_many_inserts_commit_like_one_row_at_a_time() -> None:
    """A table's inserts beyond a handful are committed column by column: the same rows (in
    the same order), indexes, strong reference counts and weak referrers (in the same order)
    as the same changes committed one row at a time."""
    from crdtdb.engine import Changeset
    from tests.support import KITCHEN_SINK_SCHEMA

    schema = DatabaseSchema.from_file(KITCHEN_SINK_SCHEMA)
    n = 12
    ops: list = []
    for i in range(n):
        ops.append({"op": "insert", "table": "Peer", "uuid-name": f"p{i}",
                    "row": {"name": f"peer{i}"}})
        sibling = ["named-uuid", f"g{i - 1 if i else 0}"]  # g0 refers to itself
        ops.append({"op": "insert", "table": "Grandchild", "uuid-name": f"g{i}",
                    "row": {"sibling": sibling}})
        ops.append({"op": "insert", "table": "Child", "uuid-name": f"c{i}",
                    "row": {"grandchild": ["named-uuid", f"g{i}"]}})
        ops.append({"op": "insert", "table": "Parent", "row": {
            "name": f"parent{i}",
            "children": ["set", [["named-uuid", f"c{j}"] for j in {i, i // 2}]],
            "child_notes": ["map", [[["named-uuid", f"c{i}"], "note"]]],
            "named_children": ["map", [["a", ["named-uuid", f"c{i // 3}"]]]],
            "peers": ["set", [["named-uuid", f"p{j}"] for j in {i, i // 2}]],
            "peer_scores": ["map", [[["named-uuid", f"p{i // 4}"], i]]],
            "named_peers": ["map", [["x", ["named-uuid", f"p{i}"]]]]}})
    counter = itertools.count(1)

    def new_uuid() -> str:
        return f"00000000-0000-4000-8000-{next(counter):012x}"
    together = MemoryDatabase(schema, new_uuid=new_uuid)
    outcome = together.execute(ops)
    assert outcome.ok, outcome.results
    assert all(len(rows) > 8 for rows in outcome.changeset.tables.values())
    one_by_one = MemoryDatabase(schema)
    for tname, rows in outcome.changeset.tables.items():
        for uuid, change in rows.items():
            one_by_one.apply(Changeset({tname: {uuid: change}}))
    for tname in schema.tables:
        assert list(together._rows[tname].items()) == list(one_by_one._rows[tname].items())
    assert together._indexes == one_by_one._indexes
    assert together._strong == one_by_one._strong
    assert ({k: list(v.items()) for k, v in together._weak.items()}
            == {k: list(v.items()) for k, v in one_by_one._weak.items()})
    assert violations(together) == []
