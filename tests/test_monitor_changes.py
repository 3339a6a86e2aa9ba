"""Monitor.changes of update2/update3 monitors against the per-row rule (_row_update), on
random commits through random conditions and selects."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdtdb.engine.snapshot import Changeset, RowChange
from crdtdb.ovsdb.monitor import Monitor, Select, Version
from tests.replica_support import MERGE_SCHEMA

TABLE = MERGE_SCHEMA.tables["Parent"]


def _row(rng: random.Random, uuid: str) -> tuple:
    row = list(TABLE.default_row)
    row[0] = (uuid,)
    row[TABLE.columns["name"].index] = (rng.choice("abcd"),)
    row[TABLE.columns["n"].index] = (rng.randrange(4),)
    row[TABLE.columns["tags"].index] = tuple(sorted(rng.sample("xyz", rng.randrange(3))))
    return tuple(row)


def _where(rng: random.Random) -> list[Any]:
    clauses = [["name", "==", rng.choice("abcd")], ["n", "<", rng.randrange(4)],
               ["tags", "includes", rng.choice("xyz")], ["name", "!=", rng.choice("ab")],
               True, False]
    return rng.sample(clauses, rng.randrange(4))


def _reference(mon: Monitor, changeset: Changeset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tname, changes in changeset.tables.items():
        mt = mon.tables[tname]
        rows = {uuid: upd for uuid, ch in changes.items()
                if (upd := mon._row_update(mt, ch.old, ch.new, False, mt.condition,
                                           mt.condition, mon._sorted())) is not None}
        if rows:
            out[tname] = rows
    return out


@pytest.mark.parametrize("seed", range(40))
def test_changes_follow_the_per_row_rule(seed: int) -> None:
    rng = random.Random(seed)
    request: dict[str, Any] = {"where": _where(rng)}
    if rng.random() < 0.5:
        request["select"] = {k: rng.random() < 0.7
                             for k in ("initial", "insert", "delete", "modify")}
    if rng.random() < 0.5:
        request["columns"] = rng.sample(["name", "n", "tags"], rng.randrange(1, 4))
    mon = Monitor(MERGE_SCHEMA, 1, {"Parent": [request]},
                  rng.choice([Version.V2, Version.V3]))
    for _ in range(20):
        changes = {}
        for i in range(rng.randrange(1, 6)):
            uuid = f"00000000-0000-4000-8000-{seed:06d}{i:06d}"
            kind_ = rng.choice([Select.INSERT, Select.DELETE, Select.MODIFY])
            old = None if kind_ is Select.INSERT else _row(rng, uuid)
            new = None if kind_ is Select.DELETE else (
                old if old is not None and rng.random() < 0.2 else _row(rng, uuid))
            changes[uuid] = RowChange(old, new)
        changeset = Changeset({"Parent": changes})
        assert mon.changes(changeset) == _reference(mon, changeset)


def test_monitors_of_the_same_columns_share_one_composer() -> None:
    """Compiling a composer costs ~0.5-0.8 ms: a client that connects per command (ovn-nbctl)
    must not pay it on every connection; other columns get their own."""
    request = {"Parent": [{"columns": ["name", "n"]}]}
    a = Monitor(MERGE_SCHEMA, 1, request, Version.V2).tables["Parent"]
    b = Monitor(MERGE_SCHEMA, 2, request, Version.V2).tables["Parent"]
    c = Monitor(MERGE_SCHEMA, 3, {"Parent": [{"columns": ["name"]}]}, Version.V2).tables["Parent"]
    assert a.composer(Select.INSERT, False) is b.composer(Select.INSERT, False)
    assert a.composer(Select.INSERT, False) is not c.composer(Select.INSERT, False)
    row = _row(random.Random(1), "00000000-0000-4000-8000-000000000001")
    assert set(a.composer(Select.INSERT, False)(row)) <= {"name", "n"}
    assert set(c.composer(Select.INSERT, False)(row)) <= {"name"}


def test_small_initial_dumps_leave_cyclic_garbage_to_the_collector() -> None:
    """A large dump promotes the process's young objects to the oldest generation (see
    Monitor.initial); a small one must not, or every short-lived client's monitor would
    carry cyclic garbage past the young collections, out of reach until a full one."""
    import gc

    from crdtdb.engine import MemoryDatabase

    db = MemoryDatabase(MERGE_SCHEMA)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        for _ in range(100):
            cycle: list[Any] = []
            cycle.append(cycle)
        Monitor(MERGE_SCHEMA, i, {"Parent": [{}]}, Version.V2).initial(db)
    grown = len(gc.get_objects()) - before
    assert grown < 50_000, f"{grown} objects left behind by 2000 small dumps"


def _atom(rng: random.Random, type_: Any) -> Any:
    from crdtdb.engine.types import AtomicType

    kind_ = type_.type
    if kind_ is AtomicType.INTEGER:
        return rng.randrange(-5, 5)
    if kind_ is AtomicType.REAL:
        return rng.choice([0.5, -2.25, 1e300])
    if kind_ is AtomicType.BOOLEAN:
        return rng.random() < 0.5
    if kind_ is AtomicType.UUID:
        return f"00000000-0000-4000-8000-{rng.randrange(16**12):012x}"
    return rng.choice(["", "a", 'q"uote', "\u00e9", "x" * 70])


def _datum(rng: random.Random, type_: Any) -> tuple:
    n = rng.randint(type_.n_min, min(type_.n_max, 3))
    keys = sorted({_atom(rng, type_.key) for _ in range(n)})
    if type_.value is None:
        return tuple(keys)
    return tuple((k, _atom(rng, type_.value)) for k in keys)


@pytest.mark.parametrize("schema_name", ["ovn-nb", "ovn-sb"])
def test_composers_write_what_datum_to_json_writes(schema_name: str) -> None:
    """Every column type of the OVN schemas (scalars, optionals, sets and maps of every
    atomic type, references): a composer's keys, their order and values are those of
    data.datum_to_json for the columns that differ from their default, by name or not."""
    from pathlib import Path

    from crdtdb.engine import DatabaseSchema, data

    path = Path(f"/usr/share/ovn/{schema_name}.ovsschema")
    if not path.exists():
        pytest.skip("ovn-common not installed")
    schema = DatabaseSchema.from_file(path)
    rng = random.Random(schema_name)
    for tname, table in schema.tables.items():
        mt = Monitor(schema, 1, {tname: [{}]}, Version.V2).tables[tname]
        for by_name in (False, True):
            cols = mt.send(Select.INSERT, by_name)
            compose = mt.composer(Select.INSERT, by_name)
            for _ in range(20):
                row = list(table.default_row)
                for c in cols:
                    if rng.random() < 0.8:
                        row[c.index] = _datum(rng, c.type)
                want = [(c.name, data.datum_to_json(c.type, row[c.index])) for c in cols
                        if row[c.index] != c.default_datum]
                assert list(compose(tuple(row)).items()) == want, (tname, by_name)
