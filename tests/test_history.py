"""The transaction history behind monitor_cond_since (crdtdb/ovsdb/history.py).

The clustered transcript replay (tests/test_core_transcripts.py) checks it against a real
ovsdb-server; here: for any sequence of transactions, what the history gives after a kept id
turns the database as it was then into the database as it is now, and the pruning bounds
hold.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.engine import MemoryDatabase
from crdtdb.ovsdb.history import ZERO_UUID, TxnHistory
from tests.replica_support import MERGE_SCHEMA


def _state(db: MemoryDatabase) -> dict[str, dict[str, tuple]]:
    return {t: dict(db.iter_rows(t)) for t in MERGE_SCHEMA.tables}


def _atoms(db: MemoryDatabase) -> int:
    total = 0
    for tname, table in MERGE_SCHEMA.tables.items():
        for _, row in db.iter_rows(tname):
            total += sum(len(d) * (1 if c.type.value is None else 2)
                         for c, d in zip(table.ordered, row, strict=True))
    return total


STEP = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from("abcdef"),
              st.lists(st.sampled_from("xyz"), max_size=3, unique=True)),
    st.tuples(st.just("update"), st.sampled_from("abcdef"), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.sampled_from("abcdef"), st.none()),
)


def _ops(step: tuple[str, str, Any]) -> list[Any]:
    kind, name, arg = step
    if kind == "insert":
        return [{"op": "insert", "table": "Parent",
                 "row": {"name": name, "tags": ["set", arg]}}]
    where = [["name", "==", name]]
    if kind == "update":
        return [{"op": "update", "table": "Parent", "where": where, "row": {"n": arg}}]
    return [{"op": "delete", "table": "Parent", "where": where}]


@settings(max_examples=200, derandomize=True)
@given(st.lists(STEP, min_size=1, max_size=40), st.integers(1, 8))
def test_changes_after_an_id_lead_from_then_to_now(steps: list[Any], max_txns: int) -> None:
    db = MemoryDatabase(MERGE_SCHEMA)
    history = TxnHistory(MERGE_SCHEMA.tables, [], max_txns=max_txns)
    states: dict[str, dict[str, dict[str, tuple]]] = {}
    for i, step in enumerate(steps):
        outcome = db.execute(_ops(step))
        if not outcome.changeset:
            continue
        txn_id = f"00000000-0000-0000-0000-{i + 1:012d}"
        history.record(txn_id, outcome.changeset)
        states[txn_id] = _state(db)
        assert history.db_atoms == _atoms(db)
        assert len(history) <= max_txns
        assert len(history) == 1 or history.history_atoms <= history.db_atoms
        assert history.last_txn_id == txn_id
    now = _state(db)
    assert history.changes_after(ZERO_UUID) is None
    assert history.changes_after("12345678-1234-1234-1234-123456789abc") is None
    for txn_id, then in states.items():
        since = history.changes_after(txn_id)
        if since is None:
            continue  # pruned: the caller sends a full dump
        rebuilt = {t: dict(rows) for t, rows in then.items()}
        for tname, changes in since.tables.items():
            for uuid, change in changes.items():
                assert rebuilt[tname].get(uuid) == change.old
                if change.new is None:
                    del rebuilt[tname][uuid]
                else:
                    rebuilt[tname][uuid] = change.new
        assert rebuilt == now
    if states:
        assert history.changes_after(history.last_txn_id) is not None
