"""Joining an empty replica from a full state: the document is read whole (no per-key events),
markers are decoded on a fast path, and the view is built in bulk. Each must end exactly where
the general path (events, the checked decoder, View.update) does, conflicts included."""

from __future__ import annotations

import array
import functools
import itertools
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.engine import binary
from crdtdb.engine.memory import MemoryDatabase, _atom_counts
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, RowChange, inserts
from crdtdb.errors import DecodeError
from crdtdb.replica import ConflictKind, Replica, View
from crdtdb.replica import encoding as enc
from tests.replica_support import (
    MERGE_SCHEMA,
    Pair,
    check_join,
    check_view,
    damaged,
    make_replica,
    ok,
    replica_state,
    shown,
    txn,
    where_uuid,
)


def _conflicted() -> Replica:
    """A replica whose merged state needs every rule of the view."""
    pair = Pair()
    a, b = pair.a, pair.b
    r = ok(txn(a, {"op": "insert", "table": "Parent", "uuid-name": "p", "row": {"name": "p"}},
               {"op": "insert", "table": "Parent", "uuid-name": "q", "row": {"name": "q"}},
               {"op": "insert", "table": "Child", "uuid-name": "c", "row": {"label": "c"}},
               {"op": "insert", "table": "Parent", "uuid-name": "s",
                "row": {"name": "s", "small": 1, "children": ["named-uuid", "c"]}}))
    p, q, c, s = (x["uuid"][1] for x in r)
    pair.sync()
    # index-duplicate; the hidden duplicate's child is an orphan
    for r_ in (a, b):
        ok(txn(r_, {"op": "insert", "table": "Child", "uuid-name": "k", "row": {"label": "k"}},
               {"op": "insert", "table": "Parent",
                "row": {"name": "same", "children": ["named-uuid", "k"]}}))
    # max-rows
    ok(txn(a, {"op": "insert", "table": "Global", "row": {"counter": 1}}))
    ok(txn(b, {"op": "insert", "table": "Global", "row": {"counter": 2}}))
    # dangling-required (Link.target) and dangling-value (friends): p deleted concurrently
    ok(txn(a, {"op": "delete", "table": "Parent", "where": where_uuid(p)}))
    ok(txn(b, {"op": "insert", "table": "Link", "row": {"target": ["uuid", p]}}))
    ok(txn(b, {"op": "update", "table": "Parent", "where": where_uuid(q),
               "row": {"friends": ["uuid", p]}}))
    # set-size
    ok(txn(a, {"op": "mutate", "table": "Parent", "where": where_uuid(s),
               "mutations": [["small", "insert", 3]]}))
    ok(txn(b, {"op": "mutate", "table": "Parent", "where": where_uuid(s),
               "mutations": [["small", "insert", 2]]}))
    # a drops the only reference to c (the engine deletes it), b keeps writing to it
    ok(txn(a, {"op": "update", "table": "Parent", "where": where_uuid(s),
               "row": {"children": ["set", []]}}))
    ok(txn(b, {"op": "update", "table": "Child", "where": where_uuid(c),
               "row": {"label": "still here"}}))
    pair.sync()
    return a


def test_a_join_with_every_kind_of_conflict_ends_where_the_event_path_does() -> None:
    a = _conflicted()
    kinds = {c.kind for c in a.conflicts.active()}
    assert kinds >= {ConflictKind.INDEX_DUPLICATE, ConflictKind.MAX_ROWS,
                     ConflictKind.DANGLING_REQUIRED, ConflictKind.DANGLING_VALUE,
                     ConflictKind.SET_SIZE, ConflictKind.ORPHAN}, kinds
    joined = check_join(a.full_state(), MERGE_SCHEMA)
    assert shown(joined) == shown(a)
    assert joined.view.hidden() == a.view.hidden()
    assert sorted(map(str, joined.conflicts.active())) == sorted(map(str, a.conflicts.active()))


def test_a_joined_replica_keeps_merging_and_committing() -> None:
    """The table maps are observed again after the join: later updates arrive as events."""
    a = _conflicted()
    b = make_replica(3, 33)
    b.apply_update(a.full_state())
    out: list[bytes] = []
    a.add_listener(lambda ev: ev.update and out.append(ev.update))
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "later"}}))
    for u in out:
        assert b.apply_update(u).changes
    ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": "from b"}}))
    a.apply_update(b.diff(a.state_vector()))
    assert shown(a) == shown(b)
    assert a.view.hidden() == b.view.hidden()
    check_view(b)


def test_a_join_with_entries_that_do_not_decode_reports_them_as_the_event_path_does() -> None:
    a = make_replica(1, 1)
    r = ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "p", "tags": ["set",
                                                                                  ["x"]]}},
               {"op": "insert", "table": "Parent", "row": {"name": "q"}}))
    p, q = r[0]["uuid"][1], r[1]["uuid"][1]
    ok(txn(a, {"op": "update", "table": "Parent", "where": where_uuid(p),
               "row": {"n": 3, "tags": ["set", ["y"]]}}))
    ext = binary.pack_uuid(q)
    m = a._maps["Parent"]
    with a.doc.transaction():
        m["bad-marker"] = b"\xc1"  # not msgpack
        m["0f000000-0000-4000-8000-000000000001"] = enc._pack([5, ext, ["p", "q"]])
        m["0f000000-0000-4000-8000-000000000002"] = enc._pack(
            [5, msgpack.ExtType(1, b"short"), ["p"]])
        m["0f000000-0000-4000-8000-000000000003"] = enc._pack([5, ext, None, 1.5, "x"])
        m["0f000000-0000-4000-8000-000000000004"] = b"not bytes but str".decode()
        m[f"{q}\x1fname"] = b"\x01"  # a register that does not decode
        m[f"{q}\x1fnope"] = enc._pack([1, ["x"]])  # no such column
        m[f"{q}\x1ftags\x1fzz"] = enc._pack([1])  # neither + nor -
        m[f"{q}\x1fn"] = enc._pack([12345, [9]])  # another life's birth: ignored
        m["0f000000-0000-4000-8000-000000000005\x1fn"] = enc._pack([1, [1]])  # no marker
    joined = check_join(a.full_state(), MERGE_SCHEMA)
    assert joined.conflicts.seen[ConflictKind.INVALID] >= 7
    assert joined.get_row("Parent", p) == a.get_row("Parent", p)


def test_reopening_a_replica_with_conflicts_reads_it_as_the_event_path_does(
        tmp_path: Path) -> None:
    a = _conflicted()
    with Replica.open(tmp_path / "r", MERGE_SCHEMA) as r:
        r.apply_update(a.full_state())
        before = shown(r), r.view.hidden(), sorted(map(str, r.conflicts.active()))
    with Replica.open(tmp_path / "r", MERGE_SCHEMA) as r:
        assert (shown(r), r.view.hidden(), sorted(map(str, r.conflicts.active()))) == before
        joined = check_join(r.full_state(), MERGE_SCHEMA)
        assert replica_state(joined)["raw"] == r.view.raw
        check_view(r)


def test_a_join_into_a_replica_with_rows_takes_the_event_path() -> None:
    a = _conflicted()
    b = make_replica(3, 33)
    ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": "mine"}}))
    assert not b._is_empty()
    b.apply_update(a.full_state())
    a.apply_update(b.diff(a.state_vector()))
    assert shown(a) == shown(b)
    check_view(b)


def test_sb_flows_join_like_the_event_path(sb_schema_path: Path) -> None:
    schema = DatabaseSchema.from_file(sb_schema_path).stored()
    from sims.bench_replica import _load

    r = _load(schema, 300, 100)
    joined = check_join(r.full_state(), schema)
    assert shown(joined) == shown(r)


def test_view_load_refuses_a_view_that_has_rows() -> None:
    v = View(MERGE_SCHEMA)
    a = make_replica(1, 1)
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "p"}}))
    v.load({t: dict(rows) for t, rows in a.view.raw.items()})
    with pytest.raises(ValueError):
        v.load({})


def _raw_value(col: Any, rng: random.Random, pools: dict[str, list[str]]) -> tuple:
    """A raw datum from a few values per column (so rows repeat and interleave them),
    references to rows that may not exist, sets one past their maximum now and then."""
    t = col.type

    def atom(base: Any) -> Any:
        if base.ref_table is not None:
            return rng.choice(pools[base.ref_table][:4])
        return rng.randrange(3) if base.type.value == "integer" else rng.choice("ab")
    n = rng.randint(t.n_min, min(t.n_max, 2) + (t.n_max == 2))
    if t.value is None:
        return tuple(sorted({atom(t.key) for _ in range(n)}))
    return tuple(sorted({atom(t.key): atom(t.value) for _ in range(n)}.items()))


@pytest.mark.parametrize("seed", range(80))
def test_view_load_of_interleaved_values_is_update(seed: int) -> None:
    """View.load groups each reference column's rows by value (in uuid order, rows
    interleave the values: the first and last rows may hold one that rows between do not):
    the same view, hidden rows, conflicts and changes as View.update of all the rows."""
    rng = random.Random(seed)
    pools = {t: sorted(f"{rng.getrandbits(32):08x}-0000-4000-8000-{k:012d}" for k in range(6))
             for t in MERGE_SCHEMA.tables}
    raw: dict[tuple[str, str], tuple] = {}
    for t, table in MERGE_SCHEMA.tables.items():
        for u in sorted(rng.sample(pools[t], rng.randint(0, 6))):
            raw[(t, u)] = ((u,), (_uuid(0),), *(_raw_value(c, rng, pools)
                                                 for c in table.ordered[2:]))
    loaded, updated = View(MERGE_SCHEMA), View(MERGE_SCHEMA)
    changes = loaded.load({t: {u: row for (tt, u), row in raw.items() if tt == t}
                           for t in MERGE_SCHEMA.tables})
    assert changes == updated.update(raw)
    for t in MERGE_SCHEMA.tables:
        assert dict(loaded.rows.iter_rows(t)) == dict(updated.rows.iter_rows(t))
    assert loaded.hidden() == updated.hidden()
    assert sorted(map(str, loaded.conflicts.active())) == \
        sorted(map(str, updated.conflicts.active()))
    assert (loaded._in, loaded._groups) == (updated._in, updated._groups)


@pytest.mark.parametrize("datums", [
    [], [()], [(), ()], [("a",)], [("a",)] * 5, [("a", "b")] * 3, [("a",), ("b",), ("a",)],
    [("a",), (), ("a",)], [(), ("a",), ()], [("a", "b"), ("b",), ("a", "b")],
    [("b",), ("a",), ("a",), ("b",)], [("a",), ("a", "b")], [("a", "a")] * 2,
])
def test_memory_database_counts_references_as_a_counter_of_every_atom(
        datums: list[tuple]) -> None:
    """_atom_counts (empty datums skipped, a column of one value counted at once): the
    counts, in the order, of a Counter of every atom."""
    counts = _atom_counts(list(datums))
    want = Counter(itertools.chain.from_iterable(datums))
    assert type(counts) is Counter and list(counts.items()) == list(want.items())


def test_memory_database_load_is_apply() -> None:
    shown_rows = _conflicted().view.rows
    cs = Changeset()
    for t in MERGE_SCHEMA.tables:
        for u, row in sorted(shown_rows.iter_rows(t)):
            cs.tables.setdefault(t, {})[u] = RowChange(None, row)
    x, y = MemoryDatabase(MERGE_SCHEMA), MemoryDatabase(MERGE_SCHEMA)
    x.apply(cs)
    y.load(cs)
    for db in (x, y):
        assert db._rows == shown_rows._rows
    assert (x._indexes, x._strong, x._weak) == (y._indexes, y._strong, y._weak)
    assert [list(v.items()) for v in x._weak.values()] == \
        [list(v.items()) for v in y._weak.values()]


# --- the fast marker decoder ------------------------------------------------------------------

def _markers() -> list[tuple[Any, str, bytes]]:
    """(table, uuid, marker) of rows with every column type the merge schema has."""
    a = _conflicted()
    out = []
    for tname, m in a._maps.items():
        table = MERGE_SCHEMA.tables[tname]
        for key in m:
            if enc.SEP not in key:
                out.append((table, key, bytes(m[key])))
    return out


MARKERS = _markers()


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        m = fn(*args)
    except (DecodeError, IndexError) as exc:
        return type(exc), str(exc)
    return m.birth, [(d, [type(a) for a in d]) for d in m.row]


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, len(MARKERS) - 1), seed=st.integers(0, 2**32),
       how=st.sampled_from(["flip", "truncate", "extend", "ext"]))
def test_the_fast_marker_decoder_agrees_with_the_checked_one(which: int, seed: int,
                                                             how: str) -> None:
    table, uuid, payload = MARKERS[which]
    data = damaged(payload, random.Random(seed), how)
    for p in (bytes(data), data):
        assert _outcome(enc.unpack_marker, table, uuid, p) == \
            _outcome(enc._checked_marker, table, uuid, p)


def test_valid_markers_take_the_fast_path_and_decode_as_checked() -> None:
    for table, uuid, payload in MARKERS:
        birth, row = enc.marker_reader(table)(uuid, payload)
        m = enc._checked_marker(table, uuid, payload)
        assert (birth, row) == (m.birth, m.row)
        assert all(type(a) is type(b) for x, y in zip(row, m.row, strict=True)
                   for a, b in zip(x, y, strict=True))


# --- the batch marker decoder -----------------------------------------------------------------

def _mutated(payload: bytes, rng: random.Random) -> bytes:
    how = rng.choice(["keep", "flip", "truncate", "extend", "ext", "garbage"])
    return bytes(damaged(payload, rng, how))


#: The batch decoder's two loops: generated Python and, where it is built, compiled.
READERS = [False, True] if enc.BUILT else [False]


def _check_batch(table: Any, batch: list[tuple[str, Any]]) -> None:
    """Every marker the batch decoder reads decodes so with the checked decoder (atom types
    included); the others it lists, in order. Both loops give the same rows, refusals and
    births."""
    results = []
    for compiled in READERS:
        births: dict[str, int] = {}
        rows, refused = enc.markers_reader(table, compiled=compiled)(
            [u for u, _ in batch], [p for _, p in batch], births)
        assert list(rows) == [u for u, _ in batch if u in rows]
        assert refused == [u for u, _ in batch if u not in rows]
        for uuid, payload in batch:
            if uuid in rows:
                m = enc._checked_marker(table, uuid, payload)
                assert (births.get(uuid, 0), rows[uuid]) == (m.birth, tuple(m.row))
                assert all(type(a) is type(b) for x, y in zip(rows[uuid], m.row, strict=True)
                           for a, b in zip(x, y, strict=True))
        assert 0 not in births.values()
        results.append(repr((rows, refused, births)))  # (repr: True, 1 and 1.0 apart)
    assert len(set(results)) == 1, results


# --- many payloads per msgpack call (unpack_each) ---------------------------------------------

def _each_alone(payloads: list[Any]) -> str:
    return repr([enc._unpack_one(p) for p in payloads])  # (repr: True, 1 and 1.0 apart)


def _framed(payloads: list[Any], per_call: int) -> str:
    from unittest import mock

    with mock.patch.object(enc, "_FRAMED", per_call):
        return repr(list(enc.unpack_each(payloads)))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 30),
       per_call=st.sampled_from([1, 2, 5, 1024]))
def test_payloads_unpacked_together_come_out_as_each_alone(seed: int, size: int,
                                                          per_call: int) -> None:
    rng = random.Random(seed)
    mine = [p for _, _, p in MARKERS]
    payloads: list[Any] = []
    for _ in range(size):
        p = _mutated(rng.choice(mine), rng)
        how = rng.random()
        if how < 0.1:  # two values in one payload
            p += _mutated(rng.choice(mine), rng)
        elif how < 0.15:
            p = bytearray(p)
        payloads.append(p)
    assert _framed(payloads, per_call) == _each_alone(payloads)


def test_a_payload_that_is_not_exactly_one_value_shifts_nothing() -> None:
    """Payloads that would shift a parse of their concatenation (a value cut short takes
    the next payload's bytes in, two values in one give one back): each comes out as it
    does alone, and so do its neighbours."""
    a, b = enc._pack([0, _uuid(1), ["p"]]), enc._pack([1, _uuid(2), ["q"]])
    cut = a[:-2]
    sep_like = b"\xc4\x10" + bytes(16)  # a separator's shape, not its random bytes
    cases: list[list[Any]] = [
        [cut, b"\xc0" + b, a], [cut, b"\xc0\xc0", b], [a + b, b], [a, b + a, b],
        [b"\x93", b"\x01", b"\x02\x03"], [sep_like, a, sep_like + a], [b"", a],
        [a + sep_like, b], ["a str", a, 5, None, memoryview(b), bytearray(a)],
        [b"\xc5\xff\xff", a],  # bin 16 claiming 65535 bytes
        [b"\xc6" + (binary.MAX_ELEMENTS + 1).to_bytes(4, "big")
         + bytes(binary.MAX_ELEMENTS + 1), a],  # longer than a marker may be
        [b"\x91" * 1024 + b"\xc0", a],  # as deep as msgpack goes: one level too many in an array
        [memoryview(array.array("i", [0x01020393])), a],  # 4 bytes an item: refused alone
        [memoryview(a)[::2], a],  # not contiguous
    ]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)  # (for the repr of the deep one)
    try:
        for payloads in cases:
            for per_call in (1, 2, 1024):
                assert _framed(payloads, per_call) == _each_alone(payloads), payloads[:2]
    finally:
        sys.setrecursionlimit(limit)


def _uuid(i: int) -> str:
    return f"0f000000-0000-4000-8000-{i:012x}"


def test_the_batch_markers_cover_every_column_kind() -> None:
    """The batch decoder's loop is generated per table, a block per column kind: the
    property tests below reach every kind of block."""
    kinds = {enc._column_kind(c.type) for table, _, _ in MARKERS for c in table.ordered[2:]}
    assert kinds == set(range(5))


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 12))
def test_the_batch_marker_decoder_reads_only_what_the_checked_one_does(seed: int,
                                                                      size: int) -> None:
    rng = random.Random(seed)
    table = rng.choice(MARKERS)[0]
    mine = [p for t, _, p in MARKERS if t is table]
    batch = [(_uuid(i), _mutated(rng.choice(mine), rng)) for i in range(size)]
    if rng.random() < 0.2:
        batch.append((_uuid(size), bytearray(rng.choice(mine))))
    _check_batch(table, batch)


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=64), max_size=8))
def test_the_batch_marker_decoder_refuses_garbage(payloads: list[bytes]) -> None:
    for table in MERGE_SCHEMA.tables.values():
        _check_batch(table, [(_uuid(i), p) for i, p in enumerate(payloads)])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 8))
def test_the_batch_marker_decoder_reads_markers_of_any_length(seed: int, size: int) -> None:
    """Markers with every column, all but the last, fewer, or more members than columns
    (the batch decoder unpacks the first two shapes as they are, pads the others): each
    read, or refused, as the checked decoder does."""
    rng = random.Random(seed)
    table = rng.choice(MARKERS)[0]
    mine = [p for t, _, p in MARKERS if t is table]
    n_cols = len(table.ordered)
    batch = []
    for i in range(size):
        obj = list(msgpack.unpackb(rng.choice(mine)))
        n = rng.choice([n_cols, n_cols - 1, n_cols + 1, rng.randint(0, n_cols)])
        del obj[n:]
        while len(obj) < n:  # absent, or a value another column of a marker has
            other = list(msgpack.unpackb(rng.choice(mine)))
            obj.append(rng.choice([None, *other[2:]]))
        batch.append((_uuid(i), enc._pack(obj)))
    _check_batch(table, batch)


# --- the compiled loop, which reads markers from their bytes ------------------------------------

def test_the_compiled_marker_loop_is_built() -> None:
    """scripts/bootstrap installs a C compiler, so the compiled loop is there wherever the
    tests run, unless CRDTDB_PURE_PYTHON=1 says to compare without it."""
    if os.environ.get("CRDTDB_PURE_PYTHON") == "1":
        pytest.skip("CRDTDB_PURE_PYTHON=1")
    assert enc.BUILT, \
        "crdtdb/replica/_markers.pyx is not built: run scripts/bootstrap (it needs gcc)"
    assert enc.COMPILED


needs_compiled = pytest.mark.skipif(not enc.BUILT, reason="not built")


def _no_object_path(payload: Any) -> Any:
    raise AssertionError(f"left to the object path: {bytes(payload).hex()}")


@needs_compiled
def test_valid_markers_are_read_from_their_bytes(sb_schema_path: Path) -> None:
    """What replicas write (the merge schema's every column type, and Southbound flows
    with long matches) never takes the compiled loop's object path, as bytes or as the
    bytearray pycrdt gives, and its versions need no second check."""
    sb = DatabaseSchema.from_file(sb_schema_path).stored()
    flows = sb.tables["Logical_Flow"]
    row = list(flows.default_row)
    row[0], row[1] = (_uuid(1),), (_uuid(2),)
    # (strings of every header's size: 5, 17, 40 bytes, 300 bytes; a map of 20 pairs)
    ids = {"stage-name": "ls_in_port_sec_ip", "source": "northd.c:1136",
           **{f"k{i:02}": "x" * 40 for i in range(18)}}
    for name, value in (("match", ("ip4.src == 10.0.0.1 && " * 12,)), ("priority", (70,)),
                        ("actions", ("next;",)), ("pipeline", ("ingress",)),
                        ("external_ids", tuple(sorted(ids.items())))):
        row[flows.columns[name].index] = value
    cases = [(table, u, p) for table, u, p in MARKERS]
    cases.append((flows, _uuid(1), enc.pack_marker(flows, 3, tuple(row))))
    for table, uuid, payload in cases:
        read = enc._compiled_reader(table, unpack_one=_no_object_path).read
        for p in (payload, bytearray(payload)):
            versions: list[str] = []
            rows, refused = read([uuid], [p], {}, versions)
            assert not refused and list(rows) == [uuid]
            assert rows[uuid] == tuple(enc._checked_marker(table, uuid, payload).row)
            assert versions == []  # (stored uuids: checked there, not left to the caller)


def _encode(obj: Any, rng: random.Random) -> bytes:
    """``obj`` as msgpack, each header the smallest encoding that fits it (what the packer
    writes) or, one time in four, a random one of the others; strings as bytes stay raw
    ``str`` bytes (not UTF-8, perhaps)."""
    def pick(choices: list[bytes]) -> bytes:
        return choices[0] if rng.random() < 0.75 else rng.choice(choices)

    def header(small: int | None, forms: list[tuple[int, int]], n: int) -> bytes:
        choices = [bytes([small | n])] if small is not None else []
        choices += [bytes([code]) + n.to_bytes(width, "big") for code, width in forms
                    if n < 256 ** width]
        return pick(choices)
    if obj is None:
        return b"\xc0"
    if obj is True or obj is False:
        return b"\xc3" if obj else b"\xc2"
    if isinstance(obj, int):
        return pick(_int_forms(obj))
    if isinstance(obj, str | bytes) and not isinstance(obj, msgpack.ExtType):
        raw = obj.encode() if isinstance(obj, str) else obj
        return header(0xa0 if len(raw) < 32 else None,
                      [(0xd9, 1), (0xda, 2), (0xdb, 4)], len(raw)) + raw
    if isinstance(obj, msgpack.ExtType):
        return msgpack.packb(obj)
    if isinstance(obj, list | tuple):
        return header(0x90 if len(obj) < 16 else None, [(0xdc, 2), (0xdd, 4)], len(obj)) \
            + b"".join(_encode(x, rng) for x in obj)
    return msgpack.packb(obj)


def _int_forms(n: int) -> list[bytes]:
    """Every msgpack encoding of the integer ``n``, the smallest first."""
    forms = [(0xd0 + k, 1 << k) for k in range(4)
             if -(2 ** (8 * (1 << k) - 1)) <= n < 2 ** (8 * (1 << k) - 1)]
    forms += [(0xcc + k, 1 << k) for k in range(4) if 0 <= n < 2 ** (8 * (1 << k))]
    out = [bytes([code]) + n.to_bytes(width, "big", signed=code >= 0xd0)
           for code, width in sorted(forms, key=lambda f: (f[1], f[0]))]
    if 0 <= n < 128 or -32 <= n < 0:
        out.insert(0, n.to_bytes(1, "big", signed=True))
    return out


def test_births_in_every_integer_encoding_read_as_the_checked_decoder_does() -> None:
    table, _, payload = MARKERS[0]
    rest = payload[1 + len(_int_forms(msgpack.unpackb(payload)[0])[0]):]  # (after the birth)
    batch = []
    for birth in (0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1,
                  2**63, 2**64 - 1, -1, -32, -33, -128, -129, -(2**15), -(2**31) - 1,
                  -(2**63)):
        for form in _int_forms(birth):
            batch.append((_uuid(len(batch)), payload[:1] + form + rest))
    _check_batch(table, batch)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 8))
def test_every_encoding_of_a_marker_reads_as_the_smallest_does(seed: int, size: int) -> None:
    """Markers written with other (longer) msgpack headers, and with strings long, short,
    not ASCII or not UTF-8 where a column holds one string: both loops read, or refuse,
    each as the checked decoder does (the compiled one reads the bytes itself)."""
    rng = random.Random(seed)
    table = rng.choice(MARKERS)[0]
    mine = [p for t, _, p in MARKERS if t is table]
    strings = [i for i, c in enumerate(table.ordered)
               if enc._column_kind(c.type) == enc._STR]
    batch = []
    for i in range(size):
        obj = list(msgpack.unpackb(rng.choice(mine), use_list=True))
        for j in strings:
            if j < len(obj) and rng.random() < 0.5:
                text = "".join(rng.choice("ab\u00e9\u20ac") for _ in range(rng.randint(0, 90)))
                raw = text.encode()
                if rng.random() < 0.2:  # cut inside a character, or a lone continuation
                    raw = raw[:rng.randint(0, len(raw))] + rng.choice([b"\x80", b"\xe2\x82"])
                obj[j] = [raw]
        if rng.random() < 0.3:
            obj[0] = rng.choice([0, 1, 2**32 - 1, 2**63, 2**64 - 1, -1, -(2**63), True, 1.0])
        batch.append((_uuid(i), _encode(obj, rng)))
    _check_batch(table, batch)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(1, 8))
def test_flows_with_integers_anywhere_read_as_the_checked_decoder_does(
        seed: int, size: int) -> None:
    """Logical_Flow's priority (0-65535) and table_id (0-32) at, inside and past their
    bounds, in any msgpack encoding of an integer (or as a bool or float): both loops
    read, or refuse, each as the checked decoder does."""
    from tests.conftest import find_sb_schema

    path = find_sb_schema()
    if path is None:
        pytest.skip("no OVN_Southbound schema")
    flows = _sb_flows(path)
    rng = random.Random(seed)
    batch = []
    for i in range(size):
        obj: list[Any] = [rng.choice([0, 5]), _uuid(50 + i)]
        obj += [None] * (len(flows.ordered) - 2)
        for name in ("priority", "table_id"):
            col = flows.columns[name]
            lo, hi = col.type.key.min_integer, col.type.key.max_integer
            value = rng.choice([lo, hi, lo - 1, hi + 1, (lo + hi) // 2, -(2**63), 2**63,
                                2**64 - 1, True, 1.0])
            obj[col.index] = [value]
        batch.append((_uuid(i), _encode(obj, rng)))
    _check_batch(flows, batch)


@needs_compiled
@pytest.mark.slow
def test_the_compiled_loop_on_many_damaged_markers(sb_schema_path: Path) -> None:
    """Fuzz (``--slow``): 300k damaged or re-encoded markers of every table the tests
    know, Southbound flows with long matches included, in batches of up to 64 (the memos
    are per batch): the compiled loop, which parses untrusted bytes itself, reads or
    refuses each as the generated Python loop does. Reproduce with the seed it prints."""
    flows = _sb_flows(sb_schema_path)
    row = list(flows.default_row)
    row[1] = (_uuid(2),)
    pool = [(t, p) for t, _, p in MARKERS]
    for k in range(40):
        row[0] = (_uuid(k),)
        for name, value in (("match", (f"ip4.src == 10.0.0.{k} && " * (k % 9),)),
                            ("priority", (k * 1000,)), ("table_id", (k % 40,)),
                            ("external_ids", (("source", f"northd.c:{k}"),
                                              ("stage-name", f"ls_in_{k % 3}")))):
            row[flows.columns[name].index] = value
        pool.append((flows, enc.pack_marker(flows, k % 3, tuple(row))))
    seed = random.randrange(2**32)
    print(f"reproduce with seed={seed}")
    rng = random.Random(seed)
    done = 0
    while done < 300_000:
        table = rng.choice(pool)[0]
        mine = [p for t, p in pool if t is table]
        batch = []
        for i in range(rng.randint(1, 64)):
            p = rng.choice(mine)
            how = rng.random()
            if how < 0.6:
                p = _mutated(p, rng)
            elif how < 0.8:
                p = _encode(msgpack.unpackb(p, use_list=True), rng)
            batch.append((_uuid(i), p if rng.random() < 0.5 else bytearray(p)))
        _check_batch(table, batch)
        done += len(batch)


@pytest.fixture
def hash_bits() -> Any:
    """``set(bits)``: the compiled loop's memo of values by their bytes keeps only that
    many bits of each hash (0: every value collides with every other), until the test
    ends."""
    from crdtdb.replica import _markers

    yield _markers._hash_bits
    _markers._hash_bits(64)


def _crossed_markers(rng: random.Random) -> list[bytes]:
    """Parent markers whose columns hold the same bytes as other columns' (valid in one,
    not in the other, or read into another datum: a set's atoms, a map's pairs), values
    repeated, and more distinct values than a run of colliding slots holds, in every
    encoding."""
    parent = MERGE_SCHEMA.tables["Parent"]
    cols = ["name", "n", "tags", "small", "opts"]
    values: list[Any] = [["a"], ["b"], [1], [2], ["a", "b"], [1, 2], ["k", "v"], [],
                         ["b", "a"], [True], *[[f"x{k}"] for k in range(40)],
                         *[[k] for k in range(40)], *[["a", f"x{k}"] for k in range(20)]]
    out = []
    for _ in range(400):
        obj: list[Any] = [rng.choice([0, 3]), _uuid(99)]
        obj += [None] * (len(parent.ordered) - 2)
        for name in rng.sample(cols, rng.randint(1, len(cols))):
            obj[parent.columns[name].index] = rng.choice(values)
        out.append(_encode(obj, rng))
    return out


@needs_compiled
@pytest.mark.parametrize("bits", [0, 1, 3, 64])
def test_the_compiled_memo_by_bytes_is_exact_whatever_collides(bits: int, hash_bits: Any
                                                                ) -> None:
    """The compiled loop looks values (and the pairs of new maps) up by their bytes in a
    table of its own (a keyed hash, runs of at most 16 slots; the dicts behind it
    otherwise): with every hash cut to a few bits or none, so that values collide and runs
    fill, it reads each batch as the Python loop does, and equal bytes of a column share
    one datum."""
    hash_bits(bits)
    parent = MERGE_SCHEMA.tables["Parent"]
    rng = random.Random(bits)
    markers = _crossed_markers(rng)
    for start in range(0, len(markers), 200):
        batch = [(_uuid(i), p if i % 2 else bytearray(p))
                 for i, p in enumerate(markers[start:start + 200])]
        _check_batch(parent, batch)
    pool = [(t, p) for t, _, p in MARKERS]
    for table in MERGE_SCHEMA.tables.values():
        mine = [p for t, p in pool if t is table]
        _check_batch(table, [(_uuid(i), rng.choice(mine)) for i in range(100)])
    # (the same bytes, here and in the Python loop: one datum for all the rows holding them)
    tags = parent.columns["tags"].index
    same = [_raw_marker(parent, tags=[f"t{k % 3}", "z"]) for k in range(60)]
    rows, _ = enc.markers_reader(parent, compiled=True)(
        [_uuid(i) for i in range(60)], same, {})
    assert len({id(row[tags]) for row in rows.values()}) == 3


_BOUNDED = DatabaseSchema.from_json({"name": "B", "tables": {"T": {"columns": {
    "few": {"type": {"key": "string", "min": 1, "max": 2}},
    "opts": {"type": {"key": "string", "value": "string", "min": 0, "max": 2}}}}}}
).stored().tables["T"]


_ELEMENTS = st.lists(st.tuples(st.lists(st.sampled_from("abc"), max_size=4),
                                st.lists(st.sampled_from("klmn"), max_size=4), st.booleans()),
                      min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(markers=_ELEMENTS, seed=st.integers(0, 2**32))
def test_sets_and_maps_of_strings_of_any_size_read_as_the_checked_decoder_does(
        markers: list[tuple[list[str], list[str], bool]], seed: int) -> None:
    """A set of 1-2 strings and a map of at most 2 pairs, each written with 0-4 elements,
    sorted or not (the compiled loop decodes new ones of these itself): both loops read,
    or refuse, each as the checked decoder does."""
    rng = random.Random(seed)
    few, opts = _BOUNDED.columns["few"].index, _BOUNDED.columns["opts"].index
    batch = []
    for i, (elements, keys, in_order) in enumerate(markers):
        obj: list[Any] = [0, _uuid(60 + i), None, None]
        obj[few] = sorted(elements) if in_order else elements
        obj[opts] = [x for k in (sorted(keys) if in_order else keys) for x in (k, "v")]
        batch.append((_uuid(i), _encode(obj, rng)))
    _check_batch(_BOUNDED, batch)


@functools.cache
def _sb_flows(path: Path) -> Any:
    return DatabaseSchema.from_file(path).stored().tables["Logical_Flow"]


def _raw_marker(table: Any, **columns: Any) -> bytes:
    """A marker with the given raw (msgpack-ready) column objects."""
    obj: list[Any] = [7, binary.pack_uuid(_uuid(99))]
    for name, value in columns.items():
        i = table.columns[name].index
        obj += [None] * (i + 1 - len(obj))
        obj[i] = value
    return enc._pack(obj)


def test_the_batch_marker_decoder_keeps_values_equal_to_valid_ones_apart() -> None:
    """A batch decodes each distinct value once; values equal to a valid one (True and 1.0
    are == 1) or unhashable must still be refused, whatever came first."""
    parent = MERGE_SCHEMA.tables["Parent"]
    ext = binary.pack_uuid(_uuid(5))
    cases = [
        _raw_marker(parent, name=["p"], n=[1], tags=["a", "b"], opts=["k", "v"], small=[1, 2]),
        _raw_marker(parent, n=[True]),
        _raw_marker(parent, n=[1.0]),
        _raw_marker(parent, name=[b"p"]),
        _raw_marker(parent, name=[ext]),
        _raw_marker(parent, tags=["a", ext]),
        _raw_marker(parent, tags=["b", "a"]),
        _raw_marker(parent, tags="ab"),
        _raw_marker(parent, opts=["k", 1]),
        _raw_marker(parent, opts=["k", "v", "k", "w"]),
        _raw_marker(parent, small=[True, 2]),
        _raw_marker(parent, small=[1.0]),
        _raw_marker(parent, children=[ext, ext]),
        _raw_marker(parent, n=[], tags=[]),
        _raw_marker(parent, name=["p"], n=[1], tags=["a", "b"], opts=["k", "v"], small=[1, 2]),
    ]
    batch = [(_uuid(i), p) for i, p in enumerate(cases)]
    _check_batch(parent, batch)
    rows, refused = enc.markers_reader(parent)([u for u, _ in batch], [p for _, p in batch],
                                               {})
    assert {_uuid(0), _uuid(len(cases) - 1)} <= set(rows)
    assert {_uuid(i) for i in range(1, 13)} <= set(refused)
    link = MERGE_SCHEMA.tables["Link"]
    _check_batch(link, [(_uuid(i), p) for i, p in enumerate([
        _raw_marker(link, target=[ext]), _raw_marker(link, target=[ext]),
        _raw_marker(link, target=[msgpack.ExtType(2, ext.data)]),
        _raw_marker(link, target=[]), _raw_marker(link, by=["x", ext])])])


def test_inserts_are_row_changes() -> None:
    rows = [(("a",), ("b",)), (("c",), ("d",))]
    made = inserts(iter(rows))
    assert made == [RowChange(None, r) for r in rows]
    assert all(type(c) is RowChange for c in made)


def test_memory_database_load_counts_self_references_as_apply_does() -> None:
    schema = DatabaseSchema.from_json({
        "name": "S", "version": "1.0.0", "tables": {"T": {"isRoot": True, "columns": {
            "kids": {"type": {"key": {"type": "uuid", "refTable": "T"}, "min": 0,
                              "max": "unlimited"}},
            "one": {"type": {"key": {"type": "uuid", "refTable": "T"}, "min": 0,
                             "max": 1}}}}}}).stored()
    table = schema.tables["T"]
    a, b, c = (_uuid(i) for i in (1, 2, 3))
    cs = Changeset()

    def row(u: str, kids: tuple, one: tuple) -> tuple:
        r = list(table.default_row)
        r[0], r[1] = (u,), (_uuid(9),)
        r[table.columns["kids"].index] = kids
        r[table.columns["one"].index] = one
        return tuple(r)
    for r in (row(a, (a, b), (a,)), row(b, (a, c), ()), row(c, (), (c,))):
        cs.tables.setdefault("T", {})[r[0][0]] = RowChange(None, r)
    x, y = MemoryDatabase(schema), MemoryDatabase(schema)
    x.apply(cs)
    y.load(cs)
    assert (x._rows, x._strong, x._weak) == (y._rows, y._strong, y._weak)
    assert (y.ref_count("T", a), y.ref_count("T", b), y.ref_count("T", c)) == (1, 1, 1)


# --- versions: strings since envelope format 5, uuid extensions before --------------------

_PACK_MARKER = enc.pack_marker


def _ext_version_marker(table: Any, birth: int, row: tuple) -> bytes:
    """A marker as written before envelope format 5: the version a uuid extension."""
    obj = msgpack.unpackb(_PACK_MARKER(table, birth, row), raw=False)
    obj[1] = binary.pack_uuid(obj[1])
    return enc._pack(obj)


def test_documents_with_versions_as_uuid_extensions_still_read() -> None:
    """What a replica of format 4 wrote (markers and later _version registers holding
    extensions) reads as the same rows, joined whole or key by key."""
    from unittest import mock

    with mock.patch.object(enc, "pack_marker", _ext_version_marker), \
            mock.patch.object(enc, "pack_version",
                              lambda birth, v: enc._pack([birth, binary.pack_uuid(v)])):
        a = _conflicted()
        u = ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "old"}}))[0]
        u = u["uuid"][1]
        ok(txn(a, {"op": "update", "table": "Parent", "where": where_uuid(u),
                   "row": {"n": 4}}))
    m = a._maps["Parent"]
    assert type(msgpack.unpackb(m[u], ext_hook=slice)[1]) is slice
    assert type(msgpack.unpackb(m[f"{u}\x1f_version"], ext_hook=slice)[1]) is slice
    joined = check_join(a.full_state(), MERGE_SCHEMA)
    assert shown(joined) == shown(a)
    assert joined.get_row("Parent", u)[1] == a.get_row("Parent", u)[1]


@pytest.mark.parametrize("version", [
    "2F1D5A43-9A4C-4D62-8A4E-0D0B7A3C1E55",  # upper case
    "2f1d5a43-9a4c-4d62-8a4e-0d0b7a3c1e5g",  # not hex
    "2f1d5a439-a4c-4d62-8a4e-0d0b7a3c1e55",  # a dash out of place
    "2f1d5a43-9a4c-4d62-8a4e-0d0b7a3c1e5\u00e9",  # not ascii
    "2f1d5a43-9a4c-4d62-8a4e-0d0b7a3c1e5",  # short
    "2f1d5a43 9a4c-4d62-8a4e-0d0b7a3c1e55",  # a space
    " 2f1d5a43-9a4c-4d62-8a4e-0d0b7a3c1e5",
    "2f1d5a43f9a4c-4d62-8a4e-0d0b7a3c1e55",  # a hex digit for a dash, at each in turn
    "2f1d5a43-9a4cf4d62-8a4e-0d0b7a3c1e55",
    "2f1d5a43-9a4c-4d62f8a4e-0d0b7a3c1e55",
    "2f1d5a43-9a4c-4d62-8a4ef0d0b7a3c1e55",
])
def test_a_version_string_that_is_no_uuid_is_refused_by_both_marker_decoders(
        version: str) -> None:
    parent = MERGE_SCHEMA.tables["Parent"]
    good = enc._pack([0, _uuid(7), ["p"]])
    bad = enc._pack([3, version, ["q"]])
    with pytest.raises(DecodeError):
        enc._checked_marker(parent, _uuid(1), bad)
    batch = [(_uuid(0), good), (_uuid(1), bad), (_uuid(2), good)]
    _check_batch(parent, batch)
    births: dict[str, int] = {}
    rows, refused = enc.markers_reader(parent)([u for u, _ in batch], [p for _, p in batch],
                                               births)
    assert list(rows) == [_uuid(0), _uuid(2)] and refused == [_uuid(1)] and not births
    col = parent.columns["_version"]
    with pytest.raises(DecodeError):
        enc.unpack_register(col, enc._pack([3, version]))
    assert enc.unpack_register(col, enc._pack([3, _uuid(7)])) == (3, (_uuid(7),))


def test_a_payload_claiming_a_huge_array_costs_no_more_than_alone() -> None:
    """msgpack makes room for what an array header claims before reading it, up to its
    limits: unpacked with 127 others, a payload claiming the batch's length in elements
    must not make the batch allocate 8 bytes for each (a peer's markers would otherwise
    cost the node ~1 GiB per batch of 128 large ones)."""
    import tracemalloc

    size = 100_000
    claim = 128 * (size + 18)  # about as many elements as the batch has bytes
    evil = b"\xdd" + claim.to_bytes(4, "big") + bytes(size - 5)  # (zeros: valid elements)
    payloads = [evil] + [bytes(size)] * 127
    tracemalloc.start()
    try:
        out = list(enc.unpack_each(payloads))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == [None] * 128  # (none is one msgpack value of its own)
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"
