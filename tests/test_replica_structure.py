"""The structure check on updates of many writers (envelope.check_update): what crdtdb's
documents write passes, a writer twice (which crashes pycrdt) is refused before pycrdt sees
it, and the compiled walk answers as the Python one for any bytes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from crdtdb.replica import envelope as env
from crdtdb.replica.envelope import CorruptUpdateError, check_update, seal
from tests.replica_support import make_replica, ok, txn, varuint

compiled = pytest.mark.skipif(env._compiled is None, reason="not built, or CRDTDB_PURE_PYTHON=1")

ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False)
    | st.text(max_size=4) | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=3),
    max_leaves=6)


def _python(update: bytes) -> str | None:
    """What the Python walk finds wrong with ``update``, or None."""
    found = env._survey(update)
    return found if isinstance(found, str) else None


def _both(update: bytes) -> str | None:
    """The Python walk's problem, its whole answer checked against the compiled one's
    where it is built."""
    found = env._survey(update)
    if env._compiled is not None:
        assert env._compiled.survey(update) == found, update.hex()
    return found if isinstance(found, str) else None


@st.composite
def _documents(draw: st.DrawFn) -> tuple[list[Doc], bool]:
    """Writers that set, overwrite and delete keys of root maps to any values (crdtdb's
    shape), some seeing the others' updates; or, ``exotic``, that also write text, arrays and
    nested types (which crdtdb never writes)."""
    exotic = draw(st.booleans())
    docs: list[Doc] = []
    for i in range(draw(st.integers(1, 4))):
        # (distinct ids, of any width under 53 bits: one id for two histories is what
        # crdtdb never does, and pycrdt cannot merge)
        doc = Doc(client_id=1 + i + 8 * draw(st.integers(0, 2**49)),
                  skip_gc=draw(st.booleans()))
        for other in docs:
            if draw(st.booleans()):
                doc.apply_update(other.get_update())
        m = doc.get("T", type=Map)
        for _ in range(draw(st.integers(0, 6))):
            key = draw(st.sampled_from("abcd"))
            if draw(st.booleans()) and key in m:
                del m[key]
            else:
                m[key] = draw(ANY)
        if exotic:
            doc.get("X", type=Text).insert(0, draw(st.text(min_size=1, max_size=4)))
            doc.get("Y", type=Array).append(draw(ANY))
            if draw(st.booleans()):
                m["nested"] = Map({"k": 1})  # (a nested type: never in crdtdb's documents)
        docs.append(doc)
    return docs, exotic


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_documents())
def test_what_documents_of_maps_write_passes(docs_exotic: tuple[list[Doc], bool]) -> None:
    """Full states and diffs against another writer's state vector: no problem, unless the
    document holds what crdtdb never writes (nested types: refused, by kind)."""
    docs, exotic = docs_exotic
    merged = Doc()
    for doc in docs:
        merged.apply_update(doc.get_update())
    updates = [merged.get_update()] + [merged.get_update(d.get_state()) for d in docs]
    for update in updates:
        problem = _both(update)
        if not exotic:
            assert problem is None, (problem, update.hex())
        else:  # (a text's strings, kind 4; a nested map, kind 7)
            assert problem in (None, "content of kind 4", "content of kind 7"), problem


@settings(max_examples=500, deadline=None, derandomize=True)
@given(_documents(), st.data())
def test_damaged_updates_are_answered_alike(docs_exotic: tuple[list[Doc], bool],
                                           data: st.DataObject) -> None:
    docs, _ = docs_exotic
    raw = bytearray(docs[-1].get_update())
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "varint"]))
        i = data.draw(st.integers(0, len(raw)))
        if how == "flip" and i < len(raw):
            raw[i] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            del raw[i:]
        elif how == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        else:  # a long varint where one may be
            raw[i:i] = bytes([0xFF] * data.draw(st.integers(1, 11))) + b"\x01"
    _both(bytes(raw))


@compiled
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_is_answered_alike(raw: bytes) -> None:
    _both(raw)


def _in_child(code: str, timeout_s: float = 120) -> str:
    """Run ``code`` in a child Python (what it guards against is a crash of the process):
    its output, once it exited normally."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout_s, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    return out.stdout


def _one_key(client_id: int, key: str) -> bytes:
    doc = Doc(client_id=client_id)
    doc.get("T", type=Map)[key] = b"v"
    return doc.get_update()


def _two_blocks(first: int, second: int) -> bytes:
    """An update of two writer blocks, both at clock 0 (the second with its id as given)."""
    a, b = _one_key(7, "a"), _one_key(7, "b")
    assert a[:3] == b[:3] == b"\x01\x01\x07"
    return (b"\x02" + b"\x01" + varuint(first) + a[3:-1] + b"\x01" + varuint(second)
            + b[3:-1] + b"\x00")


def test_a_writer_twice_is_refused() -> None:
    assert _both(_two_blocks(7, 8)) is None
    assert _both(_two_blocks(7, 7)) == "writer 7 twice"
    # (one writer to yrs, which keeps 53 bits)
    assert _both(_two_blocks(7, 7 + 2**53)) == f"writer id {7 + 2**53} over 53 bits"
    with pytest.raises(CorruptUpdateError, match="writer 7 twice"):
        check_update(_two_blocks(7, 7))


def test_a_replica_refuses_a_writer_twice_and_survives_it() -> None:
    """In a child process (what the check stops is a crash): a joining replica and one with
    rows each refuse the update, count it, and are unchanged; a move refuses such a state."""
    code = textwrap.dedent("""
        from crdtdb.replica.envelope import CorruptUpdateError, seal
        from tests.replica_support import make_replica, ok, txn, varuint
        from tests.test_replica_structure import _bad_state
        for rows in (False, True):
            r = make_replica(3, 3)
            if rows:
                ok(txn(r, {"op": "insert", "table": "Parent", "row": {"name": "p"}}))
            before, rows_before = r.doc.get_update(), dict(r.iter_rows("Parent"))
            try:
                r.apply_update(_bad_state(r))
            except CorruptUpdateError as exc:
                assert "twice" in str(exc), exc
            else:
                raise AssertionError("taken")
            assert r.statistics().rejected_updates == 1 and r.doc.get_update() == before
            assert dict(r.iter_rows("Parent")) == rows_before
        r = make_replica(4, 4)
        try:
            r.adopt(_bad_state(r, epoch=1))
        except CorruptUpdateError as exc:
            assert "twice" in str(exc), exc
        else:
            raise AssertionError("moved")
        print("survived")
    """)
    assert "survived" in _in_child(code)


def _bad_state(r: Any, epoch: int = 0) -> bytes:
    """A sealed full state of two blocks of one writer, each with a row of Parent."""
    a = make_replica(7, 7)
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "a"}}))
    b = make_replica(7, 8)
    ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": "b"}}))
    ua, ub = a.doc.get_update(), b.doc.get_update()
    assert ua[0] == ub[0] == 1
    update = b"\x02" + ua[1:-1] + ub[1:-1] + b"\x00"
    return seal(r.schema_digest, epoch, 7, update, base=b"" if not epoch else b"\x01" * 32)


def test_a_writer_s_push_past_53_bit_ids_or_31_bit_clocks_is_refused() -> None:
    r = make_replica(3, 3)
    a = make_replica(7, 7)
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "a"}}))
    ua = a.doc.get_update()
    assert ua[:3] == b"\x01" + ua[1:2] + b"\x07" and ua[3] == 0
    alias = ua[:2] + varuint(7 + 2**53) + ua[3:]
    late = ua[:3] + varuint(2**31 - 1) + ua[4:]  # (its items past clock 2**31 - 1)
    for bad, why in ((alias, "over 53 bits"), (late, "clocks past 31 bits")):
        with pytest.raises(CorruptUpdateError, match=why):
            r.apply_update(seal(r.schema_digest, 0, 7, bad))
    assert r.statistics().rejected_updates == 2
    r.apply_update(seal(r.schema_digest, 0, 7, ua))
    assert len(dict(r.iter_rows("Parent"))) == 1


def _wrapping(filler: str, writers: int) -> bytes:
    """The second review's shape: one writer's block of two rows' items with a filler
    between them that takes its clocks to 2**32, where yrs' 32-bit count wraps to 0 and the
    second row's items land on the first's clocks."""
    a = make_replica(7, 7)
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "a"}}))
    b = make_replica(7, 8)
    ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": "b"}}))
    ua, ub = a.doc.get_update(), b.doc.get_update()
    assert ua[2:4] == ub[2:4] == b"\x07\x00" and ua[1] < 0x7F and ub[1] < 0x7F
    length = varuint(2**32 - ua[1])
    fill = {"skip": b"\x0a" + length, "gc": b"\x00" + length,
            "deleted": b"\x21\x01\x06Parent\x02zz" + length}[filler]
    block = bytes([ua[1] + 1 + ub[1], 7, 0]) + ua[4:-1] + fill + ub[4:-1]
    if writers == 1:
        return b"\x01" + block + b"\x00"
    c = make_replica(9, 9)
    ok(txn(c, {"op": "insert", "table": "Parent", "row": {"name": "c"}}))
    return b"\x02" + block + c.doc.get_update()[1:-1] + b"\x00"


@pytest.mark.parametrize("filler", ["skip", "gc", "deleted"])
@pytest.mark.parametrize("writers", [1, 2])
def test_a_block_whose_clocks_wrap_is_refused(filler: str, writers: int) -> None:
    assert _both(_wrapping(filler, writers)) == "writer 7's clocks past 31 bits"


def test_a_replica_refuses_a_push_whose_clocks_wrap() -> None:
    """In a child process: the review crashed a replica with it (SIGSEGV), a push of one
    writer, which no walk saw then."""
    code = textwrap.dedent("""
        from crdtdb.replica.envelope import CorruptUpdateError, seal
        from tests.replica_support import make_replica
        from tests.test_replica_structure import _wrapping
        for writers in (1, 2):
            r = make_replica(3, 3)
            try:
                r.apply_update(seal(r.schema_digest, 0, 7, _wrapping("skip", writers)))
            except CorruptUpdateError as exc:
                assert "clocks past 31 bits" in str(exc), exc
            else:
                raise AssertionError("taken")
        print("refused")
    """)
    assert "refused" in _in_child(code)


def test_a_block_may_end_at_the_last_31_bit_clock() -> None:
    u = _one_key(7, "a")
    assert u[:4] == b"\x01\x01\x07\x00"
    last = u[:3] + varuint(2**31 - 2) + u[4:]  # (one item: clocks up to 2**31 - 1)
    assert _both(last) is None
    assert _both(u[:3] + varuint(2**31 - 1) + u[4:]) == "writer 7's clocks past 31 bits"
    # (an empty block past them too: no item takes its clock there)
    assert _both(b"\x01\x00\x07" + varuint(2**31) + b"\x00") == "writer 7's clocks past 31 bits"


def test_a_push_far_past_a_writer_s_clock_is_refused() -> None:
    """The fourth review: yrs integrates an item more than 2**31 clocks past what it has of
    its writer as if nothing were missing, then panics on a delete below it, keeping what it
    had integrated. A push of two writers went straight in; now no clock reaches 2**31."""
    two = bytes.fromhex("02010c818080800828010154016b017d01010d0028010154016a017d01010c010d01")
    assert _both(two) == "writer 12's clocks past 31 bits"
    one = bytes.fromhex("01010c818080800828010154016b017d01010c010d01")
    assert _both(one) == "writer 12's clocks past 31 bits"
    r = make_replica(3, 3)
    with pytest.raises(CorruptUpdateError, match="past 31 bits"):
        r.apply_update(seal(r.schema_digest, 0, 12, two))


def test_what_replicas_send_each_other_passes() -> None:
    """Their full states, their diffs (pycrdt's, and the merged recent commits a replica
    answers a pull with), of replicas with conflicts, deletions and overwrites, and the
    full state of a new epoch after a compaction, which a peer then moves to."""
    from tests.test_replica_join import _conflicted

    a = _conflicted()
    b = make_replica(9, 9)
    b.apply_update(a.full_state())
    behind = b.state_vector()
    for i in range(5):
        ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": f"later {i}"}}))
    sealed = [a.full_state(), b.full_state(), b.diff(behind), b.diff(a.state_vector()),
              a.diff(b"\x00")]
    for payload in sealed:
        assert _both(env.open_sealed(payload).update) is None
    assert len(b._recent) and b._recent.covering(env.decode_state_vector(behind),
                                                 b._clocks) is not None  # (merged recent)
    a.apply_update(b.diff(a.state_vector()))
    a.rebuild()
    epoch = a.full_state()
    assert _both(env.open_sealed(epoch).update) is None
    b.adopt(epoch)  # (walked again there)
    assert dict(b.iter_rows("Parent")) == dict(a.iter_rows("Parent"))


def _entry(value: bytes) -> bytes:
    """An update of one map entry whose "any" value is ``value`` (its lib0 bytes)."""
    return b"\x01\x01\x05\x00\x28\x01\x01T\x01k\x01" + value + b"\x00"


def _nested(depth: int) -> bytes:
    return b"\x75\x01" * depth + b"\x7e"  # arrays of one, then null


@pytest.mark.parametrize(("value", "problem"), [
    (_nested(env.MAX_ANY_DEPTH), None),
    (_nested(env.MAX_ANY_DEPTH + 1), "truncated or malformed"),
    (b"\x7d" + b"\xff" * 9 + b"\x01", None),  # a signed varint of ten bytes
    (b"\x7d" + b"\xff" * 10 + b"\x01", "truncated or malformed"),  # of eleven
    (b"\x75\x02\x7d" + b"\xff" * 10 + b"\x7e", "truncated or malformed"),  # (then a null)
    (b"\x7c" + b"\x00" * 4, None),
    (b"\x7c" + b"\x00" * 3, "truncated or malformed"),
    (b"\x7b" + b"\x00" * 8, None),
    (b"\x7a" + b"\x00" * 7, "truncated or malformed"),
    (b"\x76\x01\x01a\x7e", None),
    (b"\x76\x02\x01a\x7e", "truncated or malformed"),
    (b"\x73", "truncated or malformed"),  # no such tag
])
def test_any_values_at_and_past_the_limits(value: bytes, problem: str | None) -> None:
    update = _entry(value)
    assert _both(update) == problem
    if problem is None:  # (what is taken, pycrdt takes)
        doc = Doc()
        m = doc.get("T", type=Map)
        doc.apply_update(update)
        assert "k" in m


def _hidden_behind_a_wrapped_varint() -> bytes:
    """The review's bypass: writer 99's item names its parent's kind as 2**32 + 1 (five
    bytes). yrs reads it as a u32, wrapping its shifts: 1, a root by name (an empty one);
    then a byte string holding, as yrs reads on, two blocks of writer 7 and an empty delete
    set (yrs ignores what follows). A walk that read 2**32 + 1 took an item id and went on
    through other bytes: writers 100 and 101, GC only."""
    a = make_replica(7, 1)
    ok(txn(a, {"op": "insert", "table": "Parent", "row": {"name": "a"}}))
    b = make_replica(7, 2)
    ok(txn(b, {"op": "insert", "table": "Parent", "row": {"name": "b"}}))
    hidden = a.doc.get_update()[1:-1] + b.doc.get_update()[1:-1] + b"\x00"
    length = varuint(len(hidden))
    return (b"\x03" + b"\x01" + varuint(99) + b"\x00\x03\x81\x80\x80\x80\x10\x00"
            + varuint(len(length)) + length + hidden
            + b"\x01" + varuint(100) + b"\x00\x00\x01" + b"\x01" + varuint(101)
            + b"\x00\x00\x01" + b"\x00")


@pytest.mark.parametrize("field", ["parent kind", "first clock", "deleted clock"])
def test_numbers_yrs_reads_as_u32_are_refused_past_it(field: str) -> None:
    """Where yrs reads a u32, a value of 2**32 or more is refused: yrs would read another
    number from the same bytes, and parse another structure from there."""
    plain = _two_blocks(7, 8)
    assert _both(plain) is None
    if field == "parent kind":
        assert _both(_hidden_behind_a_wrapped_varint()) == "truncated or malformed"
        # (and a kind other than 0 or 1, which yrs reads as an id, as it is written never)
        assert _both(plain.replace(b"\x28\x01\x01T", b"\x28\x02\x01T", 1)) \
            == "truncated or malformed"
    elif field == "first clock":
        assert b"\x01\x07\x00(" in plain
        assert _both(plain.replace(b"\x01\x07\x00(", b"\x01\x07" + varuint(2**32) + b"(", 1)) \
            == "truncated or malformed"
    else:
        deletes = plain[:-1] + b"\x01\x09\x01"  # (of writer 9: no block here)
        assert _both(deletes + varuint(2**31 - 2) + b"\x01") is None
        # (a range's end is a clock too)
        assert _both(deletes + varuint(2**31 - 1) + b"\x01") \
            == "deletes of writer 9 past 31-bit clocks"
        assert _both(deletes + varuint(2**32 - 1) + b"\x01") \
            == "deletes of writer 9 past 31-bit clocks"
        assert _both(deletes + varuint(2**32) + b"\x01") == "truncated or malformed"


def test_a_replica_refuses_the_wrapped_varint_bypass() -> None:
    code = textwrap.dedent("""
        from crdtdb.replica.envelope import CorruptUpdateError, seal
        from tests.replica_support import make_replica
        from tests.test_replica_structure import _hidden_behind_a_wrapped_varint
        r = make_replica(3, 3)
        try:
            r.apply_update(seal(r.schema_digest, 0, 7, _hidden_behind_a_wrapped_varint()))
        except CorruptUpdateError as exc:
            print("refused:", exc)
    """)
    assert "refused" in _in_child(code)


def _crash_fuzz(seed: int, n: int) -> None:
    """In this process: ``n`` damaged updates of several writers; each one the walk passes is
    applied to an empty document and every root map read (what pycrdt crashes on)."""
    import random as random_

    from pycrdt import Doc as Doc_
    rng = random_.Random(seed)
    sources = []
    for _ in range(4):
        docs = []
        for i in range(rng.randint(1, 3)):
            doc = Doc_(client_id=1 + i + 8 * rng.randrange(2**20), skip_gc=rng.random() < .5)
            if docs and rng.random() < .5:
                doc.apply_update(docs[-1].get_update())
            m = doc.get("T", type=Map)
            for _ in range(rng.randint(1, 5)):
                key = rng.choice("abc")
                if key in m and rng.random() < .3:
                    del m[key]
                else:
                    m[key] = rng.choice([b"x", "s", 3, [1], {"a": 2}])
            docs.append(doc)
        merged = Doc_()
        for doc in docs:
            merged.apply_update(doc.get_update())
        sources.append(merged.get_update())
    passed = 0
    for _ in range(n):
        raw = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(raw) + 1)
            how = rng.random()
            if how < .4 and i < len(raw):
                raw[i] = rng.randrange(256)
            elif how < .6:
                raw[i:i] = bytes([rng.choice([0x80, 0x81, 0xff, 0x01, 0x00, 0x07])
                                  for _ in range(rng.randint(1, 6))])
            elif how < .8:
                raw[i:i] = raw[rng.randrange(len(raw)):][:rng.randint(1, 40)]
            else:
                del raw[i:i + rng.randint(1, 4)]
        update = bytes(raw)
        if _python(update) is not None:
            continue
        passed += 1
        doc = Doc_()
        try:
            doc.apply_update(update)
        except BaseException as exc:  # (a refusal or a panic: not a crash)
            if isinstance(exc, KeyboardInterrupt):
                raise
            continue
        for name in ("T", ""):
            m = doc.get(name, type=Map)
            for key in list(m.keys()):
                m[key]
    print("passed", passed)


@pytest.mark.parametrize("seed", [1, 2])
def test_damaged_updates_the_walk_passes_do_not_crash_pycrdt(seed: int,
                                                            request: Any) -> None:
    """In a child process (a crash shows as its return code, -11 for SIGSEGV)."""
    n = 20_000 if request.config.getoption("--slow", default=False) else 1500
    code = f"from tests.test_replica_structure import _crash_fuzz; _crash_fuzz({seed}, {n})"
    assert "passed" in _in_child(code, timeout_s=600)


def test_a_text_s_strings_are_refused() -> None:
    """The third review's first update: a text item of four emoji (two UTF-16 units each)
    that other items split. yrs keeps a split character whole in the left piece and counts
    the piece one clock short; rejoined, the writer's clocks overlap, and a later gap fill
    freed a live item. crdtdb's maps hold "any" values (strings too), never a text's."""
    u1 = bytes.fromhex(
        "02040300480701017d01480702017d01480703017d01880703017d010207000401015410f09f9880f0"
        "9f9880f09f9880f09f9880840707017a00")
    assert _both(u1) == "content of kind 4"
    doc = Doc(client_id=3)
    doc.get("X", type=Text).insert(0, "plain")
    assert _both(doc.get_update()) == "content of kind 4"
    doc = Doc(client_id=3)
    doc.get("T", type=Map)["k"] = "a string, as an any value"
    assert _both(doc.get_update()) is None


def _lib0_str(raw: bytes) -> bytes:
    return varuint(len(raw)) + raw


#: Byte strings at the edges of UTF-8: each valid exactly when Python's strict decoder
#: (as Rust's ``from_utf8``) takes it.
UTF8_EDGES = [b"", b"a", "é".encode(), "€".encode(), "😀".encode(), b"\xc2\x80", b"\xdf\xbf",
              b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xf0\x90\x80\x80",
              b"\xf4\x8f\xbf\xbf",
              b"\xff", b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
              b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xc2",
              b"\xe2\x82", b"\xf0\x9f\x98", b"\xc2\x41", b"\xe2\x28\xa1", b"a\xffb"]


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _string_places(raw: bytes) -> list[bytes]:
    """Updates holding ``raw`` as each string yrs decodes: a root's name, a key, an "any"
    string, an "any" map's key."""
    name, key = _lib0_str(raw), _lib0_str(raw)
    return [b"\x01\x01\x05\x00\x28\x01" + name + b"\x01k\x01\x7e\x00",
            b"\x01\x01\x05\x00\x28\x01\x01T" + key + b"\x01\x7e\x00",
            _entry(b"\x77" + _lib0_str(raw)),
            _entry(b"\x76\x01" + _lib0_str(raw) + b"\x7e")]


@pytest.mark.parametrize("raw", UTF8_EDGES, ids=lambda r: r.hex() or "empty")
def test_strings_must_be_utf8(raw: bytes) -> None:
    """yrs refuses an update holding a string that is not UTF-8 when it applies it; the
    walk refused none, and a push taken into a held burst on its word was forwarded to
    peers before the burst's flush dropped it (found by review)."""
    for update in _string_places(raw):
        assert _both(update) == (None if _utf8(raw) else "truncated or malformed"), update
        if not _utf8(raw):
            with pytest.raises(Exception, match=r"(?i)decode"):
                Doc().apply_update(update)
    assert _both(_entry(b"\x74" + _lib0_str(raw))) is None  # (a buffer: any bytes)


@settings(max_examples=500, derandomize=True)
@given(st.binary(max_size=8) | st.text(max_size=3).map(str.encode))
def test_any_bytes_as_a_string_are_taken_as_utf8_is(raw: bytes) -> None:
    for update in _string_places(raw):
        assert (_both(update) is None) == _utf8(raw)


def test_a_replica_refuses_a_push_with_a_string_not_utf8_while_holding() -> None:
    """The review's push: a's second, with the name of its table not UTF-8, sealed by a."""
    update = bytes.fromhex(
        "0101050128010650ff72656e742435363563373033632d616236372d346165352d623932352d6437"
        "3030616330356266633401742b9300d92439656133616633332d353730362d346663372d6136653"
        "02d36333836376630663530613291a17100")
    assert _both(update.replace(b"P\xffrent", b"Parent")) is None  # (a's push as it was)
    b = make_replica(2, 2)
    b.hold_changes()
    with pytest.raises(CorruptUpdateError, match="not an update crdtdb writes"):
        b.apply_update(seal(b.schema_digest, 0, 5, update))
    b.release_changes()
    assert b.statistics().rejected_updates == 1 and b.statistics().remote_updates == 0


def test_a_writer_deleting_its_own_items_past_its_clock_is_refused() -> None:
    """yrs keeps a delete of an item it does not have pending and leaves it out of every
    diff: a replica and a peer that pulled from it would differ once the item came (the
    review: u1, item 5:0 deleting 5:1, then u2, item 5:1). Own items up to the block's end
    are the writer's to delete."""
    u1 = bytes.fromhex("0101050028010154016b017d010105010101")
    assert _both(u1) == "deletes of writer 5's items past its clock"
    within = bytes.fromhex("0101050028010154016b017d010105010001")  # (5:0, its own item)
    assert _both(within) is None
    assert env.check_update(within) == ((5, 0, 1), [])
    empty = bytes.fromhex("0101050028010154016b017d010105010500")  # (length 0: nothing)
    assert _both(empty) is None


def test_a_push_past_clock_2_to_the_21_is_read() -> None:
    """The review's push of writer 11 at clock 3,000,000: the reading of deletes through
    pycrdt refused it (its state vector's clock of 2**53, a u32 to yrs, wrapped to 2**21)."""
    update = bytes.fromhex("01010bc08db701810bbf8db7010100")
    assert env.check_update(update) == ((11, 3_000_000, 1), [])


def test_writers_deleting_their_own_items_past_their_blocks_are_refused() -> None:
    """The fourth review's two-writer form of the same divergence: u1 holds items 5:0 and
    6:0 and deletes 5:1; a replica took it, a peer pulled from it, and after 5:1 came the
    two differed with equal state vectors. Each writer's own deletes must end within its
    block, in an update of any number of writers."""
    a, b = _one_key(5, "k"), _one_key(6, "m")
    assert a[-1] == b[-1] == 0
    two = b"\x02" + a[1:-1] + b[1:-1]
    assert _both(two + b"\x01\x05\x01\x01\x01") == "deletes of writer 5's items past its clock"
    assert _both(two + b"\x01\x06\x01\x01\x01") == "deletes of writer 6's items past its clock"
    assert _both(two + b"\x01\x05\x01\x00\x01") is None  # (5:0, in its block)
    assert _both(two + b"\x01\x09\x01\x07\x01") is None  # (writer 9: not in it)
    assert _both(two + b"\x00") is None
