"""The compiled loop of Replica._merge_rows (_markers.register_rows, via
encoding.register_rows) against the Python loop it stands in for: the same rows, the same
keys booked, and the same refusals (``None``, nothing booked) for any batch of events."""

from __future__ import annotations

import contextlib
import random
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.engine import DatabaseSchema
from crdtdb.errors import DecodeError
from crdtdb.replica import Replica
from crdtdb.replica import encoding as enc
from tests.replica_support import damaged, make_replica, ok, replica_state, txn
from tests.support import KITCHEN_SINK_SCHEMA

compiled = pytest.mark.skipif(not enc.COMPILED, reason="not built, or CRDTDB_PURE_PYTHON=1")

SINK = DatabaseSchema.from_file(KITCHEN_SINK_SCHEMA).stored()
UUID = "2f1d5a43-9a4c-4d62-8a4e-0d0b7a3c1e55"


def _int_widths(v: int) -> list[bytes]:
    """``v`` as every msgpack integer encoding that holds it (not only the shortest)."""
    out = [msgpack.packb(v)]
    for code, size, signed in ((0xcc, 1, False), (0xcd, 2, False), (0xce, 4, False),
                               (0xcf, 8, False), (0xd0, 1, True), (0xd1, 2, True),
                               (0xd2, 4, True), (0xd3, 8, True)):
        with contextlib.suppress(OverflowError):
            out.append(bytes([code]) + v.to_bytes(size, "big", signed=signed))
    return out


def _register_cases() -> list[tuple[Any, bytes]]:
    """(column, register bytes) for the registers of every column the compiled loop reads
    itself (integers, bounded and not; _version) and a few it leaves to the Python reader:
    valid ones at each width and bound, and ones off by a byte."""
    out: list[tuple[Any, bytes]] = []
    for table in SINK.tables.values():
        for col in table.ordered[1:]:
            form = enc.register_form(col)[1]
            if col.name == enc.VERSION:
                for birth in (0, 9, -1, 2**40):
                    for b in _int_widths(birth):
                        out.append((col, b"\x92" + b + msgpack.packb(UUID)))
                out.append((col, enc._pack([0, UUID.upper()])))
                out.append((col, enc._pack([0, UUID[:-1] + "g"])))
                out.append((col, enc._pack([0, UUID + "0"])))
                out.append((col, enc._pack([0, UUID.replace("-", "0", 1)])))
                out.append((col, b"\x92\x00\xd9\x24" + "é".encode() * 18))
                continue
            if form != enc.REGISTER_INT:
                if not enc.is_element_column(col.type) and col.type.key.type.value == "string":
                    out.append((col, enc.pack_register(3, col, ("x",))))
                continue
            key = col.type.key
            values = {0, 1, -1, 127, 128, -32, -33, 2**31, -2**31 - 1, 2**63 - 1, -2**63,
                      key.min_integer, key.max_integer, key.min_integer - 1,
                      key.max_integer + 1}
            for v in sorted(values):
                if not -2**63 <= v < 2**64:
                    continue
                for b in _int_widths(v)[:3]:
                    out.append((col, b"\x92\x03\x91" + b))
            for birth in (0, 3, -5, 2**63 - 1, 2**63, 2**64 - 1):
                for b in _int_widths(birth):
                    out.append((col, b"\x92" + b + b"\x91\x05"))
            out += [(col, b"\x92\x03\x91\xc3"), (col, b"\x92\x03\x91\xcb" + bytes(8)),
                    (col, b"\x92\x03\x90"), (col, b"\x92\x03\x92\x01\x02"),
                    (col, b"\x92\x03\x91\x05\x00"), (col, b"\x93\x03\x91\x05\x00"),
                    (col, b"\x92\xc3\x91\x05"), (col, b"\x92\x03\x05")]
    return out


CASES = _register_cases()


def _python(col: Any, payload: Any, birth: int, raw: tuple) -> tuple | None:
    """The Python loop's new row for one register event (None: read whole)."""
    try:
        b, d = enc.unpack_register(col, payload)
    except DecodeError:
        return None
    row = list(raw)
    if b == birth:
        row[col.index] = d
    return tuple(row)


@compiled
@settings(max_examples=500, derandomize=True)
@given(which=st.integers(0, len(CASES) - 1), seed=st.integers(0, 2**32),
       how=st.sampled_from(["keep", "keep", "flip", "truncate", "extend", "garbage"]),
       births=st.sampled_from([0, 3, 9, -5, 2**40, 2**63 - 1]))
def test_a_register_reads_as_the_python_loop_reads_it(which: int, seed: int, how: str,
                                                      births: int) -> None:
    col, payload = CASES[which]
    data = damaged(payload, random.Random(seed), how) if how != "keep" else payload
    table = next(t for t in SINK.tables.values() if t.columns.get(col.name) is col)
    raw = tuple(table.default_row)
    for value in (bytes(data), bytearray(data)):
        extras: dict[str, Any] = {table.name: {}}
        found = enc.register_rows(
            [(table.name, f"u{enc.SEP}{col.name}", "update", value)], {table.name: {"u": raw}},
            {table.name: {col.name: enc.register_form(col)}}, extras,
            {table.name: {"u": births}})
        assert found == {(table.name, "u"): _python(col, value, births, raw)}, value.hex()
        assert extras == {table.name: {"u": {f"u{enc.SEP}{col.name}"}}}


def test_the_compiled_loop_reads_most_registers_itself() -> None:
    """Valid registers of integer and _version columns do not call the Python reader."""
    if not enc.COMPILED:
        pytest.skip("not built, or CRDTDB_PURE_PYTHON=1")
    fast = 0
    for col, payload in CASES:
        try:
            enc._checked_register(col, payload)
        except DecodeError:
            continue
        table = next(t for t in SINK.tables.values() if t.columns.get(col.name) is col)
        with mock.patch.object(enc, "unpack_register", side_effect=AssertionError):
            try:
                enc.register_rows([(table.name, f"u{enc.SEP}{col.name}", "add", payload)],
                                  {table.name: {"u": tuple(table.default_row)}},
                                  {table.name: {col.name: enc.register_form(col)}},
                                  {table.name: {}}, {table.name: {}})
            except AssertionError:
                continue
        fast += 1
    assert fast >= 40


# --- whole batches, on replicas -------------------------------------------------------------

def _replica_pair() -> tuple[Replica, Replica, list[str]]:
    pair = []
    for _ in range(2):
        r = make_replica(2, 2)
        res = ok(txn(r, *[{"op": "insert", "table": "Parent",
                           "row": {"name": f"p{i}", "n": i}} for i in range(4)]))
        pair.append(r)
    return pair[0], pair[1], [x["uuid"][1] for x in res]


#: What one event of a batch may do that makes the batch the Python loop's (the others set
#: registers of rows the view has).
ODD = {"a row the view lacks": None, "a column not merged yet": None,
       "a delete": None, "no column": None, "an element key": "tags\x1f+x",
       "the _uuid": "_uuid", "no such column": "nope", "three parts": "n\x1fx"}


@compiled
@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_a_batch_ends_where_the_python_loop_ends(data: st.DataObject) -> None:
    """Events of several rows with values of any kind, and at most one event that the
    compiled loop leaves to the Python loop (each reason alone): the compiled loop (or its
    refusal, then the Python loop) leaves the replica as the Python loop alone does."""
    fast, slow, uuids = _replica_pair()
    n = data.draw(st.integers(1, 8))
    odd = data.draw(st.none() | st.sampled_from(list(ODD)))  # (half: none)
    at = data.draw(st.integers(0, n - 1))
    events = []
    for i in range(n):
        u = data.draw(st.sampled_from(uuids))
        cname = data.draw(st.sampled_from(["n", "_version", "name"]))
        action = data.draw(st.sampled_from(["add", "update"]))
        if i == at and odd is not None:
            if odd == "a row the view lacks":
                u = "0f000000-0000-4000-8000-000000000005"
            elif odd == "a delete":
                action = "delete"
            elif odd == "a column not merged yet":
                cname = "name"
            elif odd == "no column":
                cname = None
            else:
                cname = ODD[odd]
        birth = data.draw(st.sampled_from([0, 0, 7]))
        values = [enc._pack([birth, [data.draw(st.integers(-2**63, 2**64 - 1))]]),
                  enc._pack([birth, UUID]), enc._pack([birth, ["s"]]), b"\x92\x00", b"",
                  "not bytes"]
        fits = {"n": 0, "_version": 1, "name": 2}.get(cname)
        if fits is not None and data.draw(st.integers(0, 3)):  # (most: the column's own)
            value = values[fits]
        else:
            value = data.draw(st.sampled_from(values))
        if data.draw(st.booleans()):
            value = bytearray(value) if isinstance(value, bytes) else value
        key = u if cname is None else f"{u}{enc.SEP}{cname}"
        events.append(("Parent", key, action, value))
    if odd != "a column not merged yet" and data.draw(st.integers(0, 3)):  # merged before
        for r in (fast, slow):
            for cname in ("n", "_version", "name"):
                r._register_column("Parent", cname)
    elif odd == "a column not merged yet":
        for r in (fast, slow):
            for cname in ("n", "_version"):  # (not name)
                r._register_column("Parent", cname)
    fast._events[:] = events
    slow._events[:] = events
    got = fast._merge_rows()
    with mock.patch.object(enc, "register_rows", lambda *args: None):
        want = slow._merge_rows()
    assert got == want
    assert fast._events == slow._events
    assert replica_state(fast) == replica_state(slow)
