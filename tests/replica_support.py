"""Helpers shared by the replica tests: a schema built to conflict, and view checks."""

from __future__ import annotations

import random
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from crdtdb.engine import integrity
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset
from crdtdb.replica import Replica, View

MERGE_SCHEMA = DatabaseSchema.from_file(
    Path(__file__).resolve().parent / "schemas" / "merge.ovsschema").stored()


def seeded_uuids(rng: random.Random) -> Callable[[], str]:
    return lambda: str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


def make_replica(client_id: int, seed: int, schema: DatabaseSchema = MERGE_SCHEMA,
                 **kwargs: Any) -> Replica:
    rng = random.Random(seed)
    return Replica.in_memory(schema, client_id=client_id, rng=rng,
                             new_uuid=seeded_uuids(random.Random(seed + 1_000_003)), **kwargs)


def shown(replica: Replica) -> dict[str, dict[str, tuple]]:
    return {t: dict(replica.iter_rows(t)) for t in replica.schema.tables}


def check_view(replica: Replica) -> None:
    """The view satisfies the schema and equals a from-scratch computation on its raw rows."""
    problems = integrity.violations(replica.view.rows)
    assert not problems, problems
    fresh = View(replica.schema)
    fresh.update({(t, u): row for t, rows in replica.view.raw.items()
                  for u, row in rows.items()})
    for t in replica.schema.tables:
        assert dict(fresh.rows.iter_rows(t)) == dict(replica.iter_rows(t)), t
    assert fresh.hidden() == replica.view.hidden()
    want = sorted(map(str, fresh.conflicts.active()))
    got = sorted(map(str, replica.conflicts.active()))
    assert got == want, (got, want)


def check_reload(replica: Replica, client_id: int = 999_999) -> None:
    """A replica built from this one's full state shows the same rows (same raw, same view),
    and gets there as if it had read the state key by key (see check_join)."""
    other = Replica.in_memory(replica.schema, client_id=client_id, epoch=replica.epoch,
                              base=replica.base)
    other.apply_update(replica.full_state())
    assert other.view.raw == replica.view.raw
    assert shown(other) == shown(replica)
    assert other.view.hidden() == replica.view.hidden()
    check_join(replica.full_state(), replica.schema, replica.epoch, replica.base)


def check_join(full_state: bytes, schema: DatabaseSchema, epoch: int = 0, base: bytes = b""
               ) -> Replica:
    """An empty replica that applies a full state (read whole: Replica._load_document) ends
    exactly where one that reads it through pycrdt's per-key events does: the same view,
    hidden rows, conflicts, statistics, bookkeeping and changeset. Returns the first."""
    joined = Replica.in_memory(schema, client_id=999_998, epoch=epoch, base=base)
    got = joined.apply_update(full_state)
    evented = Replica.in_memory(schema, client_id=999_998, epoch=epoch, base=base)
    with mock.patch.object(Replica, "_is_empty", return_value=False):
        want = evented.apply_update(full_state)
    assert (got.gap, got.new, got.span) == (want.gap, want.new, want.span)
    assert _in_order(got.changes) == _in_order(want.changes)
    assert replica_state(joined) == replica_state(evented)
    check_view(joined)
    return joined


def _in_order(changes: Changeset) -> list[Any]:
    return [(t, list(rows.items())) for t, rows in changes.tables.items()]


def replica_state(r: Replica) -> dict[str, Any]:
    """Everything a replica derives from its document, comparable with ``==``."""
    db, view = r.view.rows, r.view
    return {
        "raw": view.raw, "hidden": view.hidden(), "in": view._in, "groups": view._groups,
        "rows": {t: list(db.iter_rows(t)) for t in r.schema.tables},  # in order
        "indexes": db._indexes, "strong": db._strong,
        "weak": {k: list(v.items()) for k, v in db._weak.items()},
        "conflicts": sorted(map(str, r.conflicts.active())),
        "seen": r.conflicts.seen,
        "events": sorted((str(ev.conflict), ev.active) for ev in r.conflicts.recent),
        "statistics": r.statistics(), "births": r._births, "extras": r._extras,
        "clocks": r._clocks, "state": r.doc.get_update(),
    }


def varuint(n: int) -> bytes:
    """``n`` as a Yjs (lib0) varuint: for updates built by hand."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def txn(replica: Replica, *ops: dict[str, Any]) -> list[Any]:
    return replica.transact(list(ops))


def ok(results: list[Any]) -> list[Any]:
    for r in results:
        assert not (isinstance(r, dict) and "error" in r), results
    return results


def where_uuid(u: str) -> list[Any]:
    return [["_uuid", "==", ["uuid", u]]]


class Pair:
    """Two replicas and the updates each made that the other has not applied yet."""

    def __init__(self, schema: DatabaseSchema | None = None):
        kw: dict[str, Any] = {} if schema is None else {"schema": schema}
        self.a = make_replica(1, 11, **kw)
        self.b = make_replica(2, 22, **kw)
        self.out: dict[int, list[bytes]] = {1: [], 2: []}
        for r in (self.a, self.b):
            r.add_listener(lambda ev, cid=r.client_id: ev.update and self.out[cid].append(
                ev.update))

    def sync(self) -> None:
        for src, dst in ((self.a, self.b), (self.b, self.a)):
            for u in self.out[src.client_id]:
                dst.apply_update(u)
            self.out[src.client_id].clear()
        assert shown(self.a) == shown(self.b)
        assert self.a.view.hidden() == self.b.view.hidden()
        for r in (self.a, self.b):
            check_view(r)
            check_reload(r)

    def col(self, r: Replica, table: str, uuid: str, column: str) -> tuple:
        row = r.get_row(table, uuid)
        assert row is not None
        return row[r.schema.tables[table].columns[column].index]


def damaged(payload: bytes, rng: random.Random, how: str) -> bytearray:
    """``payload`` (a marker's or register's msgpack bytes) damaged as ``how`` says: bytes
    flipped, truncated, extended, a uuid's extension given another code or length ("ext"),
    or replaced by random bytes ("garbage"); "keep" leaves it. What the fast decoders must
    refuse exactly as the checked ones do."""
    data = bytearray(payload)
    if how == "flip":
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif how == "truncate":
        del data[rng.randrange(len(data)):]
    elif how == "extend":
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    elif how == "ext":
        at = bytes(data).find(b"\xd8\x01")  # fixext 16, code 1: a uuid
        if at >= 0:
            if rng.random() < 0.5:
                data[at + 1] = rng.choice([0, 2, 127, 255])
            else:
                data[at] = 0xd7  # fixext 8: 8 bytes where 16 were
    elif how == "garbage":
        data = bytearray(rng.randbytes(rng.randint(0, 40)))
    return data

