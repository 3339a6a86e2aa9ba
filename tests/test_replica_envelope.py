"""The compiled header reads (crdtdb/replica/_envelope.pyx) against envelope.py's Python
ones: the same answer, or the same error, for any bytes."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.replica import envelope as env
from crdtdb.replica.envelope import CorruptUpdateError

compiled = pytest.mark.skipif(env._compiled is None, reason="not built, or CRDTDB_PURE_PYTHON=1")


def test_the_compiled_header_reads_are_built() -> None:
    """scripts/bootstrap installs a C compiler, so they are there wherever the tests run,
    unless CRDTDB_PURE_PYTHON=1 says to compare without them."""
    if os.environ.get("CRDTDB_PURE_PYTHON") == "1":
        pytest.skip("CRDTDB_PURE_PYTHON=1")
    assert env.BUILT, "crdtdb/replica/_envelope.pyx is not built: run scripts/bootstrap"
    assert env.COMPILED and env.single_writer_span is not env._single_writer_span


def _varint(n: int, pad: int = 0) -> bytes:
    """``n`` as a varuint, with ``pad`` redundant zero groups (the same value, more bytes)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


#: Values near every width a varint takes, up to past 64 bits.
VALUES = st.one_of(st.integers(0, 300), st.integers(0, 2**63 - 1), st.integers(0, 2**72),
                   st.sampled_from([2**k + d for k in (7, 14, 28, 32, 56, 62, 63, 64, 70)
                                    for d in (-1, 0, 1)]))
VARINTS = st.builds(_varint, VALUES, st.just(0) | st.integers(0, 3))


def _damaged(data: st.DataObject, raw: bytes) -> bytes:
    how = data.draw(st.sampled_from(["as is", "as is", "cut", "flip", "append"]))
    if how == "cut" and raw:
        return raw[:data.draw(st.integers(0, len(raw) - 1))]
    if how == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    if how == "append":
        return raw + data.draw(st.binary(min_size=1, max_size=3))
    return raw


@compiled
@settings(max_examples=500, derandomize=True)
@given(st.data())
def test_single_writer_span_compiled_equals_python(data: st.DataObject) -> None:
    head = [data.draw(st.just(b"\x01") | VARINTS), *data.draw(st.lists(VARINTS, max_size=4))]
    raw = _damaged(data, b"".join(head) + data.draw(st.binary(max_size=4)))
    assert env.single_writer_span(raw) == env._single_writer_span(raw)
    assert env.single_writer_span(bytearray(raw)) == env._single_writer_span(bytearray(raw))


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except CorruptUpdateError as exc:
        return "error", str(exc)


@st.composite
def _delete_sets(draw: st.DrawFn, values: st.SearchStrategy[int]) -> tuple[bytes, int]:
    """A delete set's tail as deleted_ranges reads it (no structs, then per writer its
    ranges), and the writer of the update; some of its writers are that one."""
    client = draw(values)
    writers = draw(st.lists(st.one_of(st.just(client), values), max_size=4))
    out = [_varint(0), _varint(len(writers))]
    for w in writers:
        ranges = draw(st.lists(st.tuples(values, values), max_size=3))
        out += [_varint(w), _varint(len(ranges))]
        out += [_varint(x) for r in ranges for x in r]
    return b"".join(out), client


@compiled
@settings(max_examples=500, derandomize=True)
@given(st.data(), _delete_sets(VALUES))
def test_delete_set_read_compiled_equals_python(data: st.DataObject,
                                                tail_client: tuple[bytes, int]) -> None:
    tail, client = tail_client
    tail = _damaged(data, tail)
    assert _outcome(env._read_delete_set, tail, client) == \
        _outcome(env._delete_set_ranges, tail, client)


@compiled
@settings(max_examples=300, derandomize=True)
@given(_delete_sets(st.integers(0, 2**63 - 1)))
def test_well_formed_delete_sets_are_read_compiled(tail_client: tuple[bytes, int]) -> None:
    """Not left to Python: where every varint fits 63 bits the compiled read answers."""
    tail, client = tail_client
    found = env._compiled.delete_set_ranges(tail, client)
    assert found is not None and found == env._delete_set_ranges(tail, client)


@compiled
def test_a_writer_past_63_bits_is_left_to_python() -> None:
    tail = _varint(0) + _varint(1) + _varint(5) + _varint(1) + _varint(2) + _varint(3)
    assert env._compiled.delete_set_ranges(tail, 2**64) is None
    assert env._read_delete_set(tail, 2**64) == [(5, 2, 3)]
