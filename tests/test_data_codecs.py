"""Property tests for datums: the JSON wire encoding and the binary (msgpack) encoding.

Values are generated from column types so every atomic type, constraint and size range is
exercised; a round trip must give back the canonical datum, and malformed bytes must raise
DecodeError, never anything else.
"""

from __future__ import annotations

import contextlib
import json
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtdb.engine import binary, data
from crdtdb.engine.ovsjson import INT64_MAX, INT64_MIN
from crdtdb.engine.types import UNLIMITED, AtomicType, BaseType, Type
from crdtdb.errors import DecodeError, OvsdbError

uuids = st.uuids().map(str)


def atoms_of(base: BaseType) -> st.SearchStrategy:
    if base.enum is not None:
        return st.sampled_from(base.enum)
    t = base.type
    if t is AtomicType.INTEGER:
        return st.integers(base.min_integer, base.max_integer)
    if t is AtomicType.REAL:
        return st.floats(base.min_real, base.max_real, allow_nan=False, allow_infinity=False)
    if t is AtomicType.BOOLEAN:
        return st.booleans()
    if t is AtomicType.STRING:
        return st.text(min_size=base.min_length, max_size=min(base.max_length, 12))
    return uuids


@st.composite
def base_types(draw: st.DrawFn) -> BaseType:
    t = draw(st.sampled_from(list(AtomicType)))
    if t is AtomicType.INTEGER:
        lo = draw(st.integers(INT64_MIN, INT64_MAX))
        hi = draw(st.integers(lo, INT64_MAX))
        return BaseType(t, min_integer=lo, max_integer=hi)
    if t is AtomicType.STRING:
        if draw(st.booleans()):
            return BaseType(t, enum=tuple(sorted(draw(st.sets(st.text(max_size=5), min_size=1,
                                                              max_size=4)))))
        lo = draw(st.integers(0, 3))
        return BaseType(t, min_length=lo, max_length=draw(st.integers(lo, UNLIMITED)))
    if t is AtomicType.REAL:
        lo = draw(st.floats(-1e6, 1e6))
        return BaseType(t, min_real=lo, max_real=draw(st.floats(lo, 1e7)))
    if t is AtomicType.UUID:
        return BaseType(t, ref_table=draw(st.sampled_from([None, "T"])))
    return BaseType(t)


@st.composite
def types(draw: st.DrawFn) -> Type:
    key = draw(base_types())
    value = draw(st.none() | base_types())
    n_min = draw(st.integers(0, 1))
    n_max = draw(st.sampled_from([1, 2, 5, UNLIMITED]))
    return Type(key, value, n_min, max(n_max, 1))


def _domain_size(base: BaseType) -> int:
    """An upper bound on distinct atoms, so unique lists are never asked for the impossible."""
    if base.enum is not None:
        return len(base.enum)
    if base.type is AtomicType.BOOLEAN:
        return 2
    if base.type is AtomicType.INTEGER:
        return base.max_integer - base.min_integer + 1
    if base.type is AtomicType.REAL and base.min_real == base.max_real:
        return 1
    return 6


@st.composite
def typed_datums(draw: st.DrawFn) -> tuple[Type, tuple]:
    t = draw(types())
    max_n = min(t.n_max, 6, _domain_size(t.key))
    keys = draw(st.lists(atoms_of(t.key), min_size=t.n_min, max_size=max_n, unique=True))
    if t.value is None:
        return t, data.sort_datum(t, keys)
    values = [draw(atoms_of(t.value)) for _ in keys]
    return t, data.sort_datum(t, zip(keys, values, strict=True))


@given(typed_datums())
def test_json_round_trip(td: tuple[Type, tuple]) -> None:
    t, datum = td
    wire = json.loads(json.dumps(data.datum_to_json(t, datum)))
    assert data.datum_from_json(t, wire) == datum


@given(typed_datums())
def test_one_element_sets_are_bare_and_maps_never(td: tuple[Type, tuple]) -> None:
    t, datum = td
    wire = data.datum_to_json(t, datum)
    if t.value is not None:
        assert wire[0] == "map"
    elif len(datum) == 1:
        assert not (isinstance(wire, list) and wire and wire[0] == "set")
    else:
        assert wire[0] == "set"


@given(typed_datums())
def test_binary_round_trip(td: tuple[Type, tuple]) -> None:
    t, datum = td
    assert binary.decode_datum(t, binary.encode_datum(t, datum)) == datum


@given(typed_datums(), st.binary(max_size=64))
def test_binary_garbage_raises_decode_error_only(td: tuple[Type, tuple], junk: bytes) -> None:
    t, _ = td
    with contextlib.suppress(DecodeError):
        binary.decode_datum(t, junk)


@given(typed_datums(), st.data())
def test_binary_single_byte_corruption_never_escapes(td: tuple[Type, tuple],
                                                     d: st.DataObject) -> None:
    t, datum = td
    payload = bytearray(binary.encode_datum(t, datum))
    i = d.draw(st.integers(0, len(payload) - 1))
    payload[i] ^= d.draw(st.integers(1, 255))
    try:
        decoded = binary.decode_datum(t, bytes(payload))
    except DecodeError:
        return
    # Whatever still decodes must be a valid datum of the type.
    data.check_datum(t, decoded)
    assert t.n_min <= len(decoded) <= t.n_max


def test_binary_keeps_types_apart() -> None:
    t_int = Type(BaseType(AtomicType.INTEGER))
    t_real = Type(BaseType(AtomicType.REAL))
    t_str = Type(BaseType(AtomicType.STRING))
    t_uuid = Type(BaseType(AtomicType.UUID))
    t_bool = Type(BaseType(AtomicType.BOOLEAN))
    with pytest.raises(DecodeError, match="expected integer"):
        binary.decode_datum(t_int, binary.encode_datum(t_real, (1.0,)))
    with pytest.raises(DecodeError, match="expected integer"):
        binary.decode_datum(t_int, binary.encode_datum(t_bool, (True,)))
    with pytest.raises(DecodeError, match="expected string"):
        binary.decode_datum(t_str, binary.encode_datum(t_uuid, (data.ZERO_UUID,)))
    # Integers keep all 64 bits (pycrdt's f64 would not).
    big = (INT64_MAX,)
    assert binary.decode_datum(t_int, binary.encode_datum(t_int, big)) == big


def test_binary_rejects_non_canonical_and_oversized() -> None:
    t = Type(BaseType(AtomicType.INTEGER), None, 0, 2)
    with pytest.raises(DecodeError, match="canonical order"):
        binary.decode_datum(t, msgpack.packb([2, 1]))
    with pytest.raises(DecodeError, match="canonical order"):
        binary.decode_datum(t, msgpack.packb([1, 1]))
    with pytest.raises(DecodeError, match="3 elements"):
        binary.decode_datum(t, msgpack.packb([1, 2, 3]))
    with pytest.raises(DecodeError, match="extension"):
        binary.decode_datum(t, msgpack.packb([msgpack.ExtType(7, b"x")]))


def test_integral_reals_read_as_integers() -> None:
    t = Type(BaseType(AtomicType.INTEGER))
    assert data.datum_from_json(t, 1.0) == (1,)
    assert data.datum_from_json(t, 2e3) == (2000,)
    with pytest.raises(OvsdbError) as exc:
        data.datum_from_json(t, 1.5)
    assert exc.value.to_json() == {"error": "syntax error", "details": "expected integer",
                                   "syntax": "1.5"}
    # Beyond int64 a JSON number is a real for OVS, so not an integer.
    with pytest.raises(OvsdbError, match="expected integer"):
        data.datum_from_json(t, 2**63)
    assert data.datum_from_json(t, INT64_MIN) == (INT64_MIN,)


def test_real_columns_accept_integers_and_reject_non_finite() -> None:
    t = Type(BaseType(AtomicType.REAL))
    assert data.datum_from_json(t, 3) == (3.0,)
    with pytest.raises(OvsdbError, match="expected real"):
        data.datum_from_json(t, math.inf)


def test_canonical_order_and_duplicates() -> None:
    t = Type(BaseType(AtomicType.STRING), None, 0, UNLIMITED)
    assert data.datum_from_json(t, ["set", ["b", "a", "c"]]) == ("a", "b", "c")
    with pytest.raises(OvsdbError) as exc:
        data.datum_from_json(t, ["set", ["a", "a"]])
    assert exc.value.to_json() == {"error": "ovsdb error", "details": "set contains duplicate"}
    m = Type(BaseType(AtomicType.STRING), BaseType(AtomicType.INTEGER), 0, UNLIMITED)
    with pytest.raises(OvsdbError, match="map contains duplicate key"):
        data.datum_from_json(m, ["map", [["k", 1], ["k", 2]]])
    u = Type(BaseType(AtomicType.UUID), None, 0, UNLIMITED)
    a, b = "0a000000-0000-0000-0000-000000000000", "1b000000-0000-0000-0000-000000000000"
    assert data.datum_from_json(u, ["set", [["uuid", b.upper()], ["uuid", a]]]) == (a, b)


def test_equal_small_datums_are_one_object_and_keep_their_types() -> None:
    t_int = Type(BaseType(AtomicType.INTEGER))
    t_bool = Type(BaseType(AtomicType.BOOLEAN))
    t_str = Type(BaseType(AtomicType.STRING))
    t_map = Type(BaseType(AtomicType.STRING), BaseType(AtomicType.STRING), 0, UNLIMITED)
    a = data.datum_from_json(t_int, 1)
    assert data.datum_from_json(t_int, 1) is a
    # 1 == True as a dict key: the caches are per atomic type, so the types stay apart.
    b = data.datum_from_json(t_bool, True)
    assert b == (True,) and type(b[0]) is bool and type(a[0]) is int
    assert data.datum_from_json(t_str, "ingress") is data.datum_from_json(t_str, "ingress")
    long = "x" * 100
    assert data.datum_from_json(t_str, long) is not data.datum_from_json(t_str, long)
    m1 = data.datum_from_json(t_map, ["map", [["source", "northd.c:1"], ["k", "v"]]])
    m2 = data.datum_from_json(t_map, ["map", [["source", "northd.c:1"], ["z", "w"]]])
    assert m1[1] is m2[0]  # ("source", "northd.c:1")
    # The binary decoder shares with the JSON parser.
    assert binary.datum_decoder(t_int)([1]) is a
    assert binary.datum_decoder(t_map)(["source", "northd.c:1"])[0] is m1[1]
    # Decoded uuids (a str subclass until checked) are stored as plain strings, hit or miss.
    t_uuid = Type(BaseType(AtomicType.UUID))
    u = binary.UuidAtom(data.ZERO_UUID)
    for _ in range(2):
        (got,) = binary.datum_decoder(t_uuid)([u])
        assert got == data.ZERO_UUID and type(got) is str


def test_shared_datums_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_SHARED_TUPLES_MAX", 50)
    monkeypatch.setattr(data, "_shared_count", 0)
    for cache in data._tuple_caches.values():
        cache.clear()  # parsers keep their cache: empty them in place
    t = Type(BaseType(AtomicType.INTEGER, min_integer=0, max_integer=10**6))
    for i in range(1000):
        assert data.datum_from_json(t, 5000 + i) == (5000 + i,)
        assert sum(map(len, data._tuple_caches.values())) <= 50


_MAP_VALUES = st.recursive(
    st.one_of(st.sampled_from(["a", "b", "source", "x" * 70]), st.integers(0, 2), st.none()),
    lambda inner: st.lists(inner, max_size=3), max_leaves=8)


@given(st.lists(st.one_of(st.tuples(st.sampled_from(["a", "b", "source", "k" * 70]),
                                    st.sampled_from(["1", "v", "northd.c:1", "v" * 70]))
                          .map(list), _MAP_VALUES), max_size=4))
def test_the_string_map_fast_parser_agrees_with_the_general_one(pairs: list) -> None:
    """Whatever the fast parser of a string-to-string map accepts (cached pairs or not, two
    pairs or more), the general parser returns the same datum; what it refuses is SLOW."""
    t_map = Type(BaseType(AtomicType.STRING), BaseType(AtomicType.STRING), 0, UNLIMITED)
    value = ["map", pairs]
    for _ in range(2):  # the second time, the pairs are in the cache
        fast = data.fast_parser(t_map)(value)
        try:
            general = data._datum_from_json(t_map, value, None)
        except OvsdbError:
            assert fast is data.SLOW
        else:
            assert fast is data.SLOW or fast == general
