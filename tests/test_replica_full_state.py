"""A compacted full state's markers read from its bytes (``root_map_entries`` and
``MarkersReader.read_spans``, crdtdb/replica/_markers.pyx): where the reading is given, it is
exactly what pycrdt shows after applying the same bytes to an empty document; anything it
cannot vouch for is left to pycrdt. A join that takes this path ends where the event path
does."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from crdtdb.replica import Replica
from crdtdb.replica import encoding as enc
from crdtdb.replica.envelope import open_sealed_fields, seal
from tests.replica_support import (
    MERGE_SCHEMA,
    check_join,
    make_replica,
    ok,
    replica_state,
    seeded_uuids,
    txn,
    varuint,
)
from tests.test_replica_join import MARKERS, _conflicted, _mutated

pytestmark = pytest.mark.skipif(not enc.BUILT, reason="crdtdb.replica._markers is not built")

ROOTS = ["A", "B", "Ünï"]
KEYS = ["", "a", "ab", "ab\x00", "abcdefgh", "abcdefgh0", "abcdefgi", "é", "z" * 40]


def _entries(update: bytes) -> Any:
    from crdtdb.replica import _markers

    return _markers.root_map_entries(update)


def _shown(update: bytes, roots: Iterable[str] = ()) -> dict[str, dict[str, Any]] | None:
    """What pycrdt shows of the maps ``ROOTS`` and ``roots`` after applying ``update`` to an
    empty document (None: it refuses the update)."""
    doc = Doc()
    maps = {name: doc.get(name, type=Map) for name in {*ROOTS, *roots}}
    try:
        doc.apply_update(update)
        return {name: {k: m[k] for k in m} for name, m in maps.items() if len(m)}
    except BaseException as exc:  # (pycrdt panics on some garbage: a BaseException)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return None


def _read(update: bytes, found: dict[str, tuple[list[str], bytes]]) -> dict[str, dict]:
    out = {}
    for name, (keys, spans) in found.items():
        at = struct.unpack(f"{2 * len(keys)}n", spans)
        assert keys == sorted(keys)
        out[name] = {k: bytearray(update[at[2 * i]:at[2 * i] + at[2 * i + 1]])
                     for i, k in enumerate(keys)}
    return out


def _agrees(update: bytes) -> Any:
    """The reading of ``update``, checked against pycrdt's wherever it is given."""
    found = _entries(update)
    if found is not None:
        assert _read(update, found) == _shown(update, found)
    return found


# A writer's operations: (root, key, value) sets, None values delete.
_op = st.tuples(st.sampled_from(ROOTS), st.sampled_from(KEYS),
                st.one_of(st.none(), st.binary(max_size=12), st.text(max_size=3),
                          st.integers(-5, 5)))


@settings(max_examples=300, deadline=None)
@given(writers=st.lists(st.lists(_op, max_size=8), min_size=1, max_size=3),
       sync=st.booleans(), gc=st.booleans())
def test_the_reading_of_any_full_state_is_pycrdt_s_or_none(
        writers: list[list[tuple[str, str, Any]]], sync: bool, gc: bool) -> None:
    """Writers set, overwrite and delete keys (concurrently, or each after the others'
    updates); their merged full state is read as pycrdt shows it, or not at all. It is read
    whenever every key was set once, to bytes, and nothing deleted."""
    docs: list[Doc] = []
    for i, ops in enumerate(writers):
        doc = Doc(client_id=i + 1, skip_gc=not gc)
        if sync:
            for other in docs:
                doc.apply_update(other.get_update())
        maps = {name: doc.get(name, type=Map) for name in ROOTS}
        with doc.transaction():
            for root, key, value in ops:
                if value is None:
                    if key in maps[root]:
                        del maps[root][key]
                else:
                    maps[root][key] = value
        docs.append(doc)
    merged = Doc()
    for doc in docs:
        merged.apply_update(doc.get_update())
    found = _agrees(merged.get_update())
    ops = [op for w in writers for op in w]
    plain = (all(type(v) is bytes for _, _, v in ops)
             and len({(r, k) for r, k, _ in ops}) == len(ops))
    if plain:
        assert found is not None


def _state(n: int = 3, client_id: int = 7) -> bytes:
    doc = Doc(client_id=client_id)
    m = doc.get("A", type=Map)
    with doc.transaction():
        for i in range(n):
            m[f"k{i}"] = bytes([i]) * (i + 1)
    return doc.get_update()


def test_a_plain_full_state_is_read() -> None:
    assert _read(_state(), _agrees(_state())) == {"A": {f"k{i}": bytearray([i] * (i + 1))
                                                        for i in range(3)}}
    assert _agrees(Doc().get_update()) == {}


@pytest.mark.parametrize("seed", range(5))
def test_keys_come_in_the_order_of_python_strings(seed: int) -> None:
    """Keys that are prefixes of others, within and past the eight bytes sorted first, with
    a NUL, and multi-byte characters, written in random order by several writers."""
    keys = [*KEYS, "a\x00", "abcdefgh\x00", "abcdefg", "\x7f", "\u0100", "\U0001f600"]
    random.Random(seed).shuffle(keys)
    merged = Doc()
    for i in range(0, len(keys), 4):
        doc = Doc(client_id=100 + i)
        m = doc.get(ROOTS[i % 3], type=Map)
        for key in keys[i:i + 4]:
            m[key] = key.encode()
        merged.apply_update(doc.get_update())
    found = _agrees(merged.get_update())
    assert found is not None
    assert sorted(k for ks, _ in found.values() for k in ks) == sorted(keys)


def _one_key(client_id: int, key: str, value: Any) -> bytes:
    doc = Doc(client_id=client_id)
    doc.get("A", type=Map)[key] = value
    return doc.get_update()


def test_a_deleted_entry_is_left_to_pycrdt() -> None:
    """Every item a plain entry, but the delete set removes the first: a reading that skipped
    the delete set would show it."""
    plain = _state()
    assert plain[:4] == b"\x01\x03\x07\x00" and plain[-1:] == b"\x00"
    update = plain[:-1] + b"\x01" + varuint(7) + b"\x01\x00\x01"
    assert _entries(update) is None
    shown = _shown(update)
    assert shown is not None and "k0" not in shown["A"] and "k0" in _shown(plain)["A"]


def test_a_writer_twice_is_left_to_pycrdt() -> None:
    """Two blocks of one writer at the same clocks (not something a document writes). pycrdt
    0.14 takes it and then lists a key the second block set at a clock the first one's item
    has, and crashes the process (SIGSEGV) when that item is read: never read here."""
    plain, other = _state(), _one_key(7, "other", b"x")
    update = b"\x02" + plain[1:-1] + other[1:-1] + b"\x00"
    assert _entries(update) is None
    assert _entries(b"\x02" + plain[1:-1] + _one_key(8, "other", b"x")[1:-1] + b"\x00")


def test_writers_one_to_yrs_are_left_to_pycrdt() -> None:
    """Ids that differ only in bits 53 and up are one writer to yrs (it sets them), so
    this is the same writer twice (found by the review's fuzzing: pycrdt shows both keys,
    then crashes reading one)."""
    plain, other = _state(), _one_key(7, "other", b"x")
    assert other[1:4] == b"\x01\x07\x00"
    for alias in (7 + 2**53, 7 + 2**56):
        update = b"\x02" + plain[1:-1] + b"\x01" + varuint(alias) + other[3:-1] + b"\x00"
        assert _entries(update) is None
    # (a writer over 53 bits alone: left to pycrdt too)
    assert _entries(b"\x01" + plain[1:2] + varuint(2**53) + plain[3:]) is None
    assert _entries(b"\x01" + plain[1:2] + varuint(2**53 - 1) + plain[3:]) is not None


def test_more_roots_than_a_database_has_tables_are_left_to_pycrdt() -> None:
    from crdtdb.replica import _markers

    def roots(n: int) -> bytes:
        doc = Doc(client_id=1)
        with doc.transaction():
            for i in range(n):
                doc.get(f"r{i}", type=Map)["k"] = b"v"
        return doc.get_update()
    assert len(_agrees(roots(_markers.MAX_ROOTS))) == _markers.MAX_ROOTS
    assert _entries(roots(_markers.MAX_ROOTS + 1)) is None


def test_other_shapes_are_left_to_pycrdt() -> None:
    x = Doc(client_id=1)  # two writers set one key, neither seeing the other's
    x.apply_update(_one_key(2, "k", b"y"))
    x.apply_update(_one_key(3, "k", b"x"))
    # ... and both writes in one update, without the loser's deletion pycrdt adds
    y, z = _one_key(2, "k", b"y"), _one_key(3, "k", b"x")
    both = b"\x02" + y[1:-1] + z[1:-1] + b"\x00"
    assert _shown(both) in ({"A": {"k": bytearray(b"x")}}, {"A": {"k": bytearray(b"y")}})
    overwritten = Doc(client_id=7)
    overwritten.apply_update(_state())
    overwritten.get("A", type=Map)["k1"] = b"new"
    later = _state()[:3] + b"\x05" + _state()[4:]  # (a first clock past 0: not a full state)
    for update in (x.get_update(), both, overwritten.get_update(), _one_key(7, "k", "a string"),
                   _one_key(7, "k", 5), _state() + b"\x00", b"", b"\x80", later):
        assert _entries(update) is None, update.hex()
    assert _entries(bytearray(_state())) is None  # (bytes only)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 6))
def test_damaged_full_states_are_read_as_pycrdt_shows_them_or_not_at_all(seed: int,
                                                                         n: int) -> None:
    rng = random.Random(seed)
    update = bytearray(_state(n, rng.randrange(1, 2**40)))
    how = rng.choice(["flip", "truncate", "insert"])
    if how == "flip":
        for _ in range(rng.randint(1, 3)):
            update[rng.randrange(len(update))] = rng.randrange(256)
    elif how == "truncate":
        del update[rng.randrange(len(update)):]
    else:
        update.insert(rng.randrange(len(update) + 1), rng.randrange(256))
    _agrees(bytes(update))


def test_every_prefix_of_a_full_state_is_refused() -> None:
    plain = _state(4)
    for end in range(len(plain)):
        assert _entries(plain[:end]) is None, end


# --- reading the markers where they lie -----------------------------------------------------

def _spans(payloads: list[bytes]) -> tuple[bytes, bytes]:
    buffer, at = bytearray(b"\x99"), []  # (a byte before the first: offsets are not 0)
    for p in payloads:
        at += [len(buffer), len(p)]
        buffer += p
    return bytes(buffer), struct.pack(f"{len(at)}n", *at)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 12))
def test_markers_read_where_they_lie_read_as_each_given_alone(seed: int, size: int) -> None:
    """read_spans is read over the same markers, damaged ones included: the same rows,
    refusals, births and left-over versions."""
    rng = random.Random(seed)
    table = MARKERS[0][0]
    batch = [(f"{u[:-4]}{i:04x}", _mutated(p, rng))
             for i, (t, u, p) in enumerate(rng.choices(MARKERS, k=size)) if t is table]
    reader = enc._compiled_reader(table)
    uuids = [u for u, _ in batch]
    want_births: dict[str, int] = {}
    want_versions: list[str] = []
    want = reader.read(uuids, [p for _, p in batch], want_births, want_versions)
    births: dict[str, int] = {}
    versions: list[str] = []
    got = reader.read_spans(uuids, *_spans([p for _, p in batch]), births, versions)
    assert repr((got, births, versions)) == repr((want, want_births, want_versions))


def test_spans_outside_the_buffer_are_refused_before_anything_is_read() -> None:
    """Every span is checked before the first marker is read: a good one before a bad one
    leaves nothing behind (its birth, here not 0, would be)."""
    table, uuid, marker = MARKERS[0]
    payload = enc.pack_marker(table, 5, tuple(enc._checked_marker(table, uuid, marker).row))
    reader = enc._compiled_reader(table)
    buffer, spans = _spans([payload])
    births: dict[str, int] = {}
    for bad in ([1, len(payload) + 1], [len(buffer), 1], [-1, 2], [0, -1]):
        with pytest.raises(ValueError, match="outside"):
            reader.read_spans([uuid, uuid], buffer, spans + struct.pack("2n", *bad), births,
                              [])
    with pytest.raises(ValueError, match="spans has"):
        reader.read_spans([uuid, uuid], buffer, spans, births, [])

    class Huge(list):  # (a length whose byte count overflows: never multiplied)
        def __len__(self) -> int:
            return 2**60 + 1
    with pytest.raises(ValueError, match="spans has"):
        reader.read_spans(Huge([uuid]), buffer, spans, births, [])
    assert births == {}
    assert reader.read_spans([uuid], buffer, spans, births, [])[0]
    assert births == {uuid: 5}


# --- joins ----------------------------------------------------------------------------------

#: The join tests below look for reads of the update's bytes: not with CRDTDB_PURE_PYTHON=1.
joins_from_bytes = pytest.mark.skipif(not enc.COMPILED, reason="CRDTDB_PURE_PYTHON=1")


@contextmanager
def _span_reads() -> Iterator[list[str]]:
    """The tables whose markers a join reads where they lie."""
    tables: list[str] = []
    real = enc.markers_span_reader

    def spy(table: Any) -> Any:
        tables.append(table.name)
        return real(table)
    with mock.patch.object(enc, "markers_span_reader", spy):
        yield tables


@joins_from_bytes
def test_a_compacted_state_with_conflicts_joins_from_its_bytes_as_the_event_path_does(
        ) -> None:
    a = _conflicted()
    with _span_reads() as tables:
        check_join(a.full_state(), MERGE_SCHEMA)
    assert tables == []  # (deletions, overwrites: pycrdt's maps are read)
    a.rebuild()
    with _span_reads() as tables:
        joined = check_join(a.full_state(), MERGE_SCHEMA, epoch=a.epoch, base=a.base)
    assert sorted(tables) == ["Child", "Global", "Parent"]
    assert dict(joined.iter_rows("Parent")) == dict(a.iter_rows("Parent"))


@joins_from_bytes
def test_markers_that_do_not_decode_join_from_their_bytes_as_the_event_path_does() -> None:
    """A fresh document whose markers partly do not decode (from a peer): each is refused
    and reported as on the event path; its payload comes from pycrdt."""
    a = make_replica(1, 1)
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "p"}}))
    fresh = Doc(client_id=5)
    m = fresh.get("Parent", type=Map)
    with fresh.transaction():
        for key in a._maps["Parent"]:
            m[key] = bytes(a._maps["Parent"][key])
        m["bad-marker"] = b"\xc1"
        m["0f000000-0000-4000-8000-000000000001"] = enc._pack([5, "not-a-uuid", ["p"]])
    state = seal(a.schema_digest, a.epoch, 5, fresh.get_update(), base=a.base)
    with _span_reads() as tables:
        joined = check_join(state, MERGE_SCHEMA)
    assert tables == ["Parent"]
    assert joined.conflicts.seen
    assert len(dict(joined.iter_rows("Parent"))) == 1


@joins_from_bytes
def test_a_join_with_other_keys_reads_pycrdt_s_maps() -> None:
    a = make_replica(1, 1)
    p = ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "p"}}))[0]["uuid"][1]
    ok(txn(a, {"op": "update", "table": "Parent", "where": [["_uuid", "==", ["uuid", p]]],
               "row": {"n": 3}}))
    a.rebuild()
    ok(txn(a, {"op": "update", "table": "Parent", "where": [["_uuid", "==", ["uuid", p]]],
               "row": {"n": 4}}))  # (an other key, set once: still a plain full state)
    state = a.full_state()
    assert enc.full_state_markers(open_sealed_fields(state)[4]) is not None
    with _span_reads() as tables:
        check_join(state, MERGE_SCHEMA, epoch=a.epoch, base=a.base)
    assert "Parent" not in tables


@joins_from_bytes
def test_only_the_first_update_into_a_document_is_read_from_its_bytes() -> None:
    """Not a full state applied to a replica that has rows, nor one into a replica whose
    rows are all gone (its table maps are empty: it loads the state whole, but its document
    has a history of its own)."""
    a = _conflicted()
    a.rebuild()
    b = make_replica(9, 9, epoch=a.epoch, base=a.base)
    p = ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": "mine"}}))[0]["uuid"][1]
    c = make_replica(10, 10, epoch=a.epoch, base=a.base)
    c.apply_update(b.full_state())
    with _span_reads() as tables:
        b.apply_update(a.full_state())
    assert tables == []
    ok(txn(c, {"op": "delete", "table": "Parent", "where": [["_uuid", "==", ["uuid", p]]]}))
    assert c._is_empty()
    with _span_reads() as tables:
        c.apply_update(a.full_state())
    assert tables == []
    assert dict(c.iter_rows("Parent")) == dict(a.iter_rows("Parent"))


@joins_from_bytes
def test_a_reading_that_disagrees_with_pycrdt_s_count_is_not_used() -> None:
    """The reading is checked against the number of keys pycrdt's map has: one short (as a
    misreading would be), the table is read from pycrdt."""
    a = _conflicted()
    a.rebuild()
    real = enc.full_state_markers

    def one_short(update: bytes) -> Any:
        found = real(update)
        keys, spans = found["Parent"]
        found["Parent"] = (keys[1:], spans[2 * struct.calcsize("n"):])
        return found
    with mock.patch.object(enc, "full_state_markers", one_short), _span_reads() as tables:
        check_join(a.full_state(), MERGE_SCHEMA, epoch=a.epoch, base=a.base)
    assert "Parent" not in tables and "Child" in tables


def _moves(tmp_path: Any, fast: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """A durable replica joins a conflicted state, compacts (a new epoch's base), is
    reopened from its log (one state record), and a second replica moves to that epoch;
    each one's state after each step, and the tables read from the bytes of the update."""
    a = _conflicted()
    real = enc.full_state_markers
    states: list[dict[str, Any]] = []
    with mock.patch.object(enc, "full_state_markers", real if fast else lambda u: None), \
            _span_reads() as tables:
        path = tmp_path / ("fast" if fast else "pycrdt")
        r = Replica.open(path, MERGE_SCHEMA, fsync=False, rng=random.Random(5),
                         new_uuid=seeded_uuids(random.Random(6)))
        r.apply_update(a.full_state())
        states.append(replica_state(r))
        r.rebuild()
        states.append(replica_state(r))
        epoch1 = r.full_state()
        r.close()
        r = Replica.open(path, MERGE_SCHEMA, fsync=False, rng=random.Random(5),
                         new_uuid=seeded_uuids(random.Random(6)))
        states.append(replica_state(r))
        r.close()
        b = make_replica(7, 7)
        b.apply_update(a.full_state())
        b.adopt(epoch1)
        states.append(replica_state(b))
    return states, tables


@joins_from_bytes
def test_a_rebuild_a_reopen_and_a_move_read_their_one_update_from_its_bytes(
        tmp_path: Any) -> None:
    """Each makes a document from one update (a base; a log of one state record; a peer's
    full state) and reads it whole: from the update's bytes, it ends where reading pycrdt's
    maps does."""
    fast, tables = _moves(tmp_path, True)
    slow, none = _moves(tmp_path, False)
    assert none == []
    # (the join has deletions: pycrdt's maps; the base, the reopened log and the move: bytes)
    assert tables.count("Parent") == 3, tables
    for got, want in zip(fast, slow, strict=True):
        got.pop("statistics"), want.pop("statistics")  # (timings)
        assert got == want
