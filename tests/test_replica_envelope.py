"""The compiled header reads (crdtdb/replica/_envelope.pyx) against envelope.py's Python
ones: the same answer, or the same error, for any bytes; the deletes the walk reads against
pycrdt's reading. (The walk's structure checks: tests/test_replica_structure.py.)"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pycrdt
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


@st.composite
def _delete_sets(draw: st.DrawFn, values: st.SearchStrategy[int]) -> tuple[bytes, int]:
    """An update of one writer with no items and a delete set (per writer its ranges), and
    that writer; some of the deleting writers are that one."""
    client = draw(values)
    writers = draw(st.lists(st.one_of(st.just(client), values), max_size=4))
    out = [_varint(1), _varint(0), _varint(client), _varint(draw(values)),
           _varint(len(writers))]
    for w in writers:
        ranges = draw(st.lists(st.tuples(values, values), max_size=3))
        out += [_varint(w), _varint(len(ranges))]
        out += [_varint(x) for r in ranges for x in r]
    return b"".join(out), client


@compiled
@settings(max_examples=500, derandomize=True)
@given(st.data(), _delete_sets(VALUES))
def test_survey_compiled_equals_python(data: st.DataObject,
                                       update_client: tuple[bytes, int]) -> None:
    update = _damaged(data, update_client[0])
    assert env._compiled.survey(update) == env._survey(update)


def _pycrdt_deletes(update: bytes, client: int) -> set[tuple[int, int]]:
    """The (writer, clock) of every item of other writers than ``client`` that pycrdt reads
    ``update`` to delete: its diff of the update against a state at the last 32-bit clock
    of ``client`` (past all it can have; yrs reads a clock as a u32, wrapping) is no items
    and that delete set (how replicas read it before the walk did)."""
    beyond = _varint(1) + _varint(client) + _varint(2**32 - 1)
    v = env._varuints(pycrdt.get_update(update, beyond))
    assert v[0] == 0  # no items
    out, i = set(), 2
    for _ in range(v[1]):
        owner, n = v[i], v[i + 1]
        i += 2
        for j in range(i, i + 2 * n, 2):
            if owner != client:
                out.update((owner, c) for c in range(v[j], v[j] + v[j + 1]))
        i += 2 * n
    assert i == len(v)
    return out


@settings(max_examples=300, derandomize=True)
@given(_delete_sets(st.integers(0, 40)))
def test_the_survey_reads_the_deletes_pycrdt_reads(update_client: tuple[bytes, int]) -> None:
    """Where the walk takes an update, the items of other writers it says the update deletes
    are those pycrdt reads (overlapping and unsorted ranges, empty ones, the writer's own:
    read alike); where it refuses one, it is for a writer's ranges given twice (yrs keeps
    the last list only) or for the writer's own items past its clock (these updates have
    no items: past their first clock)."""
    update, client = update_client
    found = env._survey(update)
    if isinstance(found, str):
        assert found in (f"deletes of writer {client}'s items past its clock",
                         *(f"deletes of writer {w} twice" for w in range(41))), found
        return
    span, deletes = found
    assert span is not None and span[0] == client
    assert all(length > 0 and owner != client for owner, _, length in deletes)
    mine = {(owner, c) for owner, start, length in deletes
            for c in range(start, start + length)}
    assert mine == _pycrdt_deletes(update, client)


def test_a_delete_range_past_31_bit_clocks_is_refused() -> None:
    """No clock an update names reaches 2**31 (see envelope.MAX_CLOCK); a range's end is
    one (yrs reads it as a u32 that would wrap at 2**32)."""
    head = _varint(1) + _varint(0) + _varint(5) + _varint(0) + _varint(1) + _varint(7)
    for start, length, refused in ((2**31 - 2, 1, False), (2**31 - 2, 2, True),
                                   (2**31 - 1, 0, False), (0, 2**31 - 1, False),
                                   (1, 2**31 - 1, True), (2**32 - 1, 1, True)):
        update = head + _varint(1) + _varint(start) + _varint(length)
        with pytest.raises(CorruptUpdateError) if refused else contextlib.nullcontext():
            span, deletes = env.check_update(update)
            assert span == (5, 0, 0) and deletes == ([(7, start, length)] if length else [])
        assert env._survey(update) == (env._compiled.survey(update) if env._compiled
                                       else env._survey(update))


def _sealed_outcome(payload: bytes) -> tuple[str, Any]:
    try:
        return "ok", env.open_sealed_fields(payload, 200)  # (bodies up to 300 bytes)
    except CorruptUpdateError as exc:
        return "error", str(exc)


@compiled
@settings(max_examples=500, derandomize=True)
@given(st.data())
def test_a_sealed_update_opens_as_msgpack_reads_it(data: st.DataObject) -> None:
    """The compiled read of a sealed update's fields (_envelope.sealed_fields) against
    msgpack's: the same fields, or the same error, for sealed updates of any field values
    (widths of every integer, long strings and bodies, both codecs), damaged or not, and
    for fields msgpack writes that the compiled read leaves to it."""
    from unittest import mock

    import msgpack

    body = bytes(data.draw(st.sampled_from([0, 10, 199, 200, 201, 300])))
    fields = [data.draw(st.sampled_from([env.FORMAT, 4, -1, True])),
              data.draw(st.sampled_from(["d" * 64, "", "é" * 40, "x" * 300])),
              data.draw(st.sampled_from([0, 1, 127, 128, 2**16, 2**33, 2**64 - 1, -3])),
              data.draw(st.sampled_from([b"", bytes(32), "s"])),
              data.draw(st.sampled_from([5, 2**31, 2**53 - 1, -1, 1.5])),
              body, data.draw(st.binary(max_size=20)),
              data.draw(st.sampled_from(["", "zstd", "zlib", b""]))]
    if data.draw(st.booleans()):  # (a real seal of the body: its digest checks)
        raw = env.seal("d" * 64, 3, 5, body)
    else:
        raw = msgpack.packb(fields, use_bin_type=True)
    raw = _damaged(data, raw)
    with mock.patch.object(env, "_compiled", None):
        want = _sealed_outcome(raw)
    assert _sealed_outcome(raw) == want


def test_an_epoch_or_writer_given_as_a_bool_is_refused_and_spoils_no_digest() -> None:
    """The review's update: epoch ``False`` (msgpack c2) equals 0 as a key of the digests'
    prefix cache; its prefix, stored before the digest check, packed the bool, and every
    valid update of epoch 0 from that writer failed its check after it."""
    import msgpack

    env._prefixes.clear()
    for fields in ([5, "d" * 64, False, b"", 5, bytes(10), bytes(16), ""],
                   [5, "d" * 64, 0, b"", True, bytes(10), bytes(16), ""]):
        with pytest.raises(CorruptUpdateError, match="bad shape"):
            env.open_sealed_fields(msgpack.packb(fields, use_bin_type=True))
    assert env.open_sealed_fields(env.seal("d" * 64, 0, 5, bytes(10)))[4] == bytes(10)
    assert env.open_sealed_fields(env.seal("d" * 64, 3, 1, bytes(10)))[3] == 1
