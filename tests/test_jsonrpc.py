"""The sans-I/O JSON-RPC codec (crdtdb.ovsdb.jsonrpc).

Unit tests for framing, message validation, numbers, limits and sending; hypothesis
properties (round trips in random chunks, garbage, chunking invariance); and a differential
test against the real ovsdb-server: for each malformed input the codec must refuse exactly
what ovsdb-server disconnects on, and must read every accepted value as ovsdb-server does.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import KITCHEN_SINK_SCHEMA, require_binaries

from crdtdb.errors import CrdtdbError
from crdtdb.ovsdb.jsonrpc import (
    CLOSED,
    DEFAULT_MAX_DEPTH,
    NEED_DATA,
    UNFINISHED_CHECK_BYTES,
    ErrorReply,
    Event,
    JsonRpcConnection,
    LocalProtocolError,
    Notification,
    RemoteProtocolError,
    Reply,
    Request,
    ovs_number,
)
from crdtdb.testing.ovsdb_server import OvsdbServer

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ECHO = b'{"method":"echo","params":[],"id":1}'


def echo(params: bytes, msg_id: bytes = b"1") -> bytes:
    return b'{"method":"echo","params":[' + params + b'],"id":' + msg_id + b"}"


def nested(depth: int) -> bytes:
    """An echo request whose nesting depth (message object included) is ``depth``."""
    k = depth - 2
    return echo(b"[" * k + b"]" * k)


def drain(conn: JsonRpcConnection) -> list[Event]:
    """Every event available now; stops at NEED_DATA or CLOSED."""
    out: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is CLOSED:
            return out
        out.append(event)


def collect(conn: JsonRpcConnection) -> tuple[list[Event], RemoteProtocolError | None]:
    """The events available now, and the error that ended them, if any."""
    events: list[Event] = []
    try:
        while (event := conn.next_event()) is not NEED_DATA and event is not CLOSED:
            events.append(event)
    except RemoteProtocolError as exc:
        return events, exc
    return events, None


def parse(data: bytes, **kw: Any) -> list[Event]:
    conn = JsonRpcConnection(**kw)
    conn.receive_data(data)
    return drain(conn)


def refuse(data: bytes, **kw: Any) -> RemoteProtocolError:
    conn = JsonRpcConnection(**kw)
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        drain(conn)
    return info.value


def chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """data cut into pieces of the given sizes, then the rest in one piece."""
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


# -- framing -------------------------------------------------------------------------------


def test_concatenated_messages_and_whitespace() -> None:
    data = b' \n\t\r{"method":"echo","params":[],"id":1}{"method":"echo","params":[2],"id":2}\n'
    assert parse(data) == [Request(1, "echo", []), Request(2, "echo", [2])]


def test_brackets_quotes_and_escapes_inside_strings_do_not_frame() -> None:
    tricky = '"}{][\\"\\\\", "\\\\\\"}", "é😀 \\u00e9\\ud83d\\ude00", "\\/\\b\\f\\n\\r\\t"'
    data = echo(tricky.encode())
    expected = Request(1, "echo", ['}{][\"\\', '\\"}', "é😀 é😀", "/\b\f\n\r\t"])
    assert parse(data + data) == [expected, expected]


def test_byte_by_byte() -> None:
    data = echo('"a\\"}{", {"é": [1, 2.5, "😀"]}, "\\u00e9"'.encode()) + b"  " + ECHO
    conn = JsonRpcConnection()
    events = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        events += drain(conn)
    assert events == [
        Request(1, "echo", ['a"}{', {"é": [1, 2.5, "😀"]}, "é"]),
        Request(1, "echo", []),
    ]
    assert conn.buffered_bytes == 0


@pytest.mark.parametrize("text", ["é", "😀", "\u2028", "日本"])
def test_multibyte_utf8_split_at_every_byte(text: str) -> None:
    data = echo(json.dumps(text, ensure_ascii=False).encode())
    for cut in range(1, len(data)):
        conn = JsonRpcConnection()
        conn.receive_data(data[:cut])
        first = drain(conn)
        conn.receive_data(data[cut:])
        assert first + drain(conn) == [Request(1, "echo", [text])]


def test_escape_split_at_every_byte() -> None:
    data = echo(b'"x\\u00e9\\ud83d\\ude00\\\\\\"y"')
    for cut in range(1, len(data)):
        conn = JsonRpcConnection()
        conn.receive_data(data[:cut])
        assert drain(conn) == []
        conn.receive_data(data[cut:])
        assert drain(conn) == [Request(1, "echo", ['x\u00e9😀\\"y'])]


def test_many_messages_in_one_chunk() -> None:
    data = b"".join(echo(str(i).encode(), str(i).encode()) for i in range(2000))
    conn = JsonRpcConnection()
    conn.receive_data(data)
    events = drain(conn)
    assert events == [Request(i, "echo", [i]) for i in range(2000)]
    stats = conn.statistics()
    assert stats.messages_received == 2000 and stats.pending_requests == 2000
    assert stats.bytes_received == len(data) and stats.bytes_buffered == 0


def test_messages_before_a_bad_one_come_out_first() -> None:
    # ovsdb-server answers the first request, then drops the connection.
    conn = JsonRpcConnection()
    conn.receive_data(ECHO + b"," + ECHO)
    assert conn.next_event() == Request(1, "echo", [])
    with pytest.raises(RemoteProtocolError, match="syntax error at beginning of input"):
        conn.next_event()


def test_error_is_sticky_and_later_data_is_ignored() -> None:
    conn = JsonRpcConnection()
    conn.receive_data(b"x")
    with pytest.raises(RemoteProtocolError) as first:
        conn.next_event()
    conn.receive_data(ECHO)
    with pytest.raises(RemoteProtocolError) as second:
        conn.next_event()
    assert second.value.reason == first.value.reason and conn.error is not None
    assert conn.buffered_bytes == 0


def test_eof() -> None:
    conn = JsonRpcConnection()
    conn.receive_data(ECHO + b"\n")
    conn.receive_data(b"")
    assert conn.next_event() == Request(1, "echo", [])
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED
    assert conn.peer_closed
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"{")


def test_eof_in_the_middle_of_a_message_is_a_plain_close() -> None:
    # ovsdb-server answers the complete request and logs nothing about the partial one.
    conn = JsonRpcConnection()
    conn.receive_data(ECHO + b'{"method":"ec')
    conn.receive_data(b"")
    assert conn.next_event() == Request(1, "echo", [])
    assert conn.next_event() is CLOSED
    assert conn.statistics().bytes_buffered == len(b'{"method":"ec')


@pytest.mark.parametrize(("prefix", "error"), [
    (b'{"method":"echo","params":[],"id":1{', "Expecting ',' delimiter"),
    (b'{"method":"echo" "params":[', "Expecting ',' delimiter"),
    (b'{"method" "echo"', "Expecting ':' delimiter"),
    (b'{"method":"echo","params":[1 "x"', "Expecting ',' delimiter"),
    (b'{"method":"echo","params":[1,]', "expecting value"),
    (b'{"method":"echo","params":[nulx', "expecting value"),
    (b'{"method"]', "syntax error expecting '}' or ','"),
])
def test_a_syntax_error_is_reported_before_the_message_ends(prefix: bytes, error: str) -> None:
    # ovsdb-server's parser is incremental: it closes at the bad token, without waiting
    # for the rest (up to max_message_bytes of it) or for EOF.
    conn = JsonRpcConnection()
    conn.receive_data(prefix)
    with pytest.raises(RemoteProtocolError, match=re.escape(error)):
        conn.next_event()


@pytest.mark.parametrize("prefix", [
    b'{"method":"echo","params":[1', b'{"method":"echo","params":[1.5e', b'{"method":"ec',
    b'{"method":"echo","params":[tr', b'{"method":"echo","params":[-', b'{"method"',
    b'{"method":"echo","params":["\\u00', b'{"method":"echo","params":["\xc3',
    b'{"method":"echo","params":[ ', b'{"method":"echo","params":{"a":',
])
def test_an_unfinished_message_that_could_still_be_valid_waits(prefix: bytes) -> None:
    conn = JsonRpcConnection()
    conn.receive_data(prefix)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() is CLOSED


def test_only_the_start_of_an_unfinished_message_is_checked() -> None:
    # Bounded work: an error past UNFINISHED_CHECK_BYTES waits for the brackets to balance.
    filler = b'"' + b"x" * UNFINISHED_CHECK_BYTES + b'"'
    conn = JsonRpcConnection()
    conn.receive_data(b'{"method":"echo","params":[' + filler + b" 2")
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"]}")
    with pytest.raises(RemoteProtocolError, match="delimiter"):
        conn.next_event()


def test_a_trickled_unfinished_message_is_not_reparsed_on_every_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Bounded work: the unfinished prefix is parsed again only once it has doubled.
    import crdtdb.ovsdb.jsonrpc as jsonrpc

    calls: list[int] = []
    real = jsonrpc._SCAN

    def counting(text: str, at: int) -> Any:
        calls.append(len(text))
        return real(text, at)

    monkeypatch.setattr(jsonrpc, "_SCAN", counting)
    data = b'{"method":"echo","params":["' + b"x" * 40_000
    conn = JsonRpcConnection()
    for i in range(0, len(data), 64):
        conn.receive_data(data[i:i + 64])
        assert conn.next_event() is NEED_DATA
    assert len(calls) <= 12, len(calls)  # 626 reads; a parse per read would be 626
    conn.receive_data(b'"],"id":1}')
    assert conn.next_event() == Request(1, "echo", ["x" * 40_000])


def test_scanning_is_linear() -> None:
    # 2.8 MB in 1 KiB chunks: a scanner that rescanned the message on every chunk would
    # go through gigabytes.
    big = (echo(b'"' + b"x\\\"{[" * 400_000 + b'"') + b" "
           + echo(b"[" * 20 + b"1," * 200_000 + b"1" + b"]" * 20))
    conn = JsonRpcConnection()
    start = time.perf_counter()
    events: list[Event] = []
    for i in range(0, len(big), 1024):
        conn.receive_data(big[i : i + 1024])
        events += drain(conn)
    assert time.perf_counter() - start < 5
    assert len(events) == 2


# -- what is refused (each checked against ovsdb-server in test_differential_*) --------------


@pytest.mark.parametrize(
    ("data", "reason", "kind"),
    [
        (b"[1,2]", "message is not a JSON object", "jsonrpc"),
        (b'"x"', "syntax error at beginning of input", "json"),
        (b"1 ", "syntax error at beginning of input", "json"),
        (b"null ", "syntax error at beginning of input", "json"),
        (b"\x0c" + ECHO, "invalid character U+000c", "json"),
        (b"\xef\xbb\xbf" + ECHO, "invalid character U+00ef", "json"),
        (ECHO + b"\x00", "invalid character U+0000", "json"),
        (b'{"jsonrpc":"2.0","method":"echo","params":[],"id":1}',
         'message has unexpected member "jsonrpc"', "jsonrpc"),
        (b'{"method":"echo","id":1}', 'request must have "params"', "jsonrpc"),
        (b'{"method":"echo","params":null,"id":1}', 'request must have "params"', "jsonrpc"),
        (b'{"method":"echo","params":{},"id":1}', '"params" must be JSON array', "jsonrpc"),
        (b'{"method":"echo","params":"x","id":1}', '"params" must be JSON array', "jsonrpc"),
        (b'{"method":1,"params":[],"id":1}', "method is not a JSON string", "jsonrpc"),
        (b'{"method":null,"params":[],"id":1}', "method is not a JSON string", "jsonrpc"),
        (b'{"id":1,"result":null}', 'request must have "method"', "jsonrpc"),
        (b'{"id":1,"result":null,"error":null}', 'request must have "method"', "jsonrpc"),
        (b'{"id":99,"error":"x","result":[]}', 'reply must not have "error"', "jsonrpc"),
        (b'{"result":[]}', 'reply must have "id"', "jsonrpc"),
        (b'{"result":[],"id":null}', 'reply must have "id"', "jsonrpc"),
        (b'{"method":"foo","id":null}', 'notification must have "params"', "jsonrpc"),
        (b'{"method":"echo","params":[],"id":1,"error":"x"}', 'error must not have "method"',
         "jsonrpc"),
        (b'{"method":"echo","params":[],"id":1,"result":[]}', 'reply must not have "method"',
         "jsonrpc"),
        (b"{}", 'notification must have "method"', "jsonrpc"),
        (b'{"id":1}', 'request must have "method"', "jsonrpc"),
        (b'{"method": "echo", "params": [], "id": 1,,}', "", "json"),
        (b'{1:2}', "", "json"),
        (echo(b"NaN"), "invalid character 'N'", "json"),
        (echo(b"Infinity"), "invalid character 'I'", "json"),
        (echo(b"-Infinity"), "invalid character 'I'", "json"),
        (echo(b"nan"), "", "json"),
        (echo(b"True"), "invalid character 'T'", "json"),
        (echo(b"truex"), "", "json"),
        (echo(b"01"), "", "json"),
        (echo(b"1."), "", "json"),
        (echo(b".5"), "", "json"),
        (echo(b"+1"), "", "json"),
        (echo(b"1e"), "", "json"),
        (echo(b"1-2"), "", "json"),
        (echo(b"-"), "", "json"),
        (echo(b"1,"), "", "json"),
        (echo(b"1e400"), "number outside valid range", "json"),
        (echo(b"1e-320"), "number outside valid range", "json"),
        (echo(b"1" * 5000), "number outside valid range", "json"),
        (echo(b"0e99999999999"), "exponent outside valid range", "json"),
        (echo(b'"\\u0000"'), "null bytes not supported in quoted strings", "json"),
        (echo(b'"\\ud800"'), "malformed escaped surrogate pair", "json"),
        (echo(b'"\\ud800\\ud800"'), "malformed escaped surrogate pair", "json"),
        (echo(b'"\\udc00\\ud800"'), "malformed escaped surrogate pair", "json"),
        (echo(b'"\\u12g4"'), "malformed \\u escape", "json"),
        (echo(b'"\\u12"'), "malformed \\u escape", "json"),
        (echo(b'"\\x41"'), "bad escape \\x", "json"),
        (echo(b'"a\x01b"'), "U+0001 must be escaped in quoted string", "json"),
        (echo(b'"a\tb"'), "U+0009 must be escaped in quoted string", "json"),
        (echo(b'"a\nb"'), "U+000A must be escaped in quoted string", "json"),
        (echo(b"\xff"), "invalid character U+00ff", "json"),
        (echo(b'"a\x00b"'), "U+0000 must be escaped in quoted string", "json"),
        (echo(b"true\x00"), "", "json"),
        (echo(b"1,\x002"), "", "json"),
        (echo(b"1e\x00"), "", "json"),
        (b'{"method"\x00:"echo","params":[],"id":1}', "", "json"),
        (b'{"a":[}', "syntax error expecting ']' or ','", "json"),
        (b'{"a":{]}', "syntax error expecting '}' or ','", "json"),
        (nested(DEFAULT_MAX_DEPTH + 1), "input exceeds maximum nesting depth 1000", "json"),
    ],
)
def test_refused(data: bytes, reason: str, kind: str) -> None:
    for strict in (True, False):
        error = refuse(data, strict_unicode=strict)
        assert reason in error.reason and error.kind == kind
        assert isinstance(error, CrdtdbError)


@pytest.mark.parametrize(
    ("data", "event"),
    [
        (b'{"method":"foo","params":[],"id":null}', Notification("foo", [])),
        (b'{"method":"cancel","params":[1]}', Notification("cancel", [1])),
        (b'{"method":"echo","params":[],"id":1,"error":null,"result":null}',
         Request(1, "echo", [])),
        (b'{"id":99,"result":[],"error":null}', Reply(99, [])),
        (b'{"id":"echo","error":"x"}', ErrorReply("echo", "x")),
        (b'{"id":99,"error":"x","result":null}', ErrorReply(99, "x")),
        (b'{"method":"nope","method":"echo","params":[],"params":[5],"id":1}',
         Request(1, "echo", [5])),
        (echo(b"", b'[1,{"a":null}]'), Request([1, {"a": None}], "echo", [])),
        (echo(b"", b"3.25"), Request(3.25, "echo", [])),
        (echo(b"", b"true"), Request(True, "echo", [])),
        (echo(b"", b"{}"), Request({}, "echo", [])),
        (echo(b'"\\\\u0000"'), Request(1, "echo", ["\\u0000"])),
        (echo(b'"\\ud83d\\ude00", "a\x7fb", "\\/"'), Request(1, "echo", ["😀", "a\x7fb", "/"])),
        (nested(DEFAULT_MAX_DEPTH), None),
        # OVS quirk: NUL inside a number token ends the number, and the rest of the token
        # is ignored.
        (echo(b"1.5\x00e+19"), Request(1, "echo", [1.5])),
        (echo(b"-1\x00\x00-5, 2\x00"), Request(1, "echo", [-1, 2])),
    ],
)
def test_accepted(data: bytes, event: Event | None) -> None:
    events = parse(data)
    assert len(events) == 1
    if event is not None:
        assert events == [event]


def test_unicode_policy() -> None:
    """ovsdb-server passes invalid UTF-8 and lone escaped low surrogates through the JSON
    layer; strict_unicode refuses them, strict_unicode=False round-trips the raw bytes."""
    for data, raw_result in [
        (echo(b'"\xff"'), b'"\xff"'),
        (echo(b'"\xc3"'), b'"\xc3"'),
        (echo(b'"\xc0\x80"'), b'"\xc0\x80"'),
        (echo(b'"\xed\xa0\x80"'), b'"\xed\xa0\x80"'),
        (echo(b'"\\udc00"'), b'"\xed\xb0\x80"'),
        (b'{"method":"echo","params":[{"\xff":1}],"id":1}', b'{"\xff":1}'),
    ]:
        assert refuse(data).kind == "policy"
        conn = JsonRpcConnection(strict_unicode=False)
        conn.receive_data(data)
        [request] = drain(conn)
        assert isinstance(request, Request)
        assert conn.send(Reply(1, request.params)) == (
            b'{"id":1,"result":[' + raw_result + b'],"error":null}'
        )


# -- numbers -------------------------------------------------------------------------------

DBL_MIN, DBL_MAX = sys.float_info.min, sys.float_info.max
EXACT_2_POW_MINUS_1074 = format(Decimal(2) ** -1074, "f")

#: (literal, value as ovsdb-server 3.1.0 reads it: int = JSON integer, float = double).
NUMBERS: list[tuple[str, int | float]] = [
    ("0", 0), ("-0", 0), ("-0.0", 0), ("1.0", 1), ("2e3", 2000), ("1E2", 100), ("1e+2", 100),
    ("0.1e1", 1), ("1.5", 1.5), ("-1.5", -1.5), ("2E-2", 0.02), ("0.000", 0), ("-0e5", 0),
    ("9223372036854775807", INT64_MAX), ("-9223372036854775808", INT64_MIN),
    ("9223372036854775808", 9223372036854775808.0),
    ("-9223372036854775809", -9223372036854775809.0),
    ("9223372036854775807.0", INT64_MAX), ("-9223372036854775808.0", INT64_MIN),
    ("92233720368547758070e-1", INT64_MAX), ("9223372036854775807.5", 9223372036854775807.5),
    ("100000000000000000000e-2", 10**18),
    ("123456789012345678901234567890", 1.2345678901234568e29),
    ("12345678901234567890123456789e-9", 1.2345678901234567e19),
    ("1844674407370955161.7", 1844674407370955161.7),
    ("1.8446744073709551617", 1.8446744073709551617),
    # OVS's 64-bit significand wraps: these are what ovsdb-server really echoes.
    ("18446744073709551615", 18446744073709551615.0),
    ("18446744073709551616", 0), ("18446744073709551617", 1), ("18446744073709551619", 3),
    ("-18446744073709551617", -1), ("18446744073709551620", 18446744073709551620.0),
    ("184467440737095516170", 10), ("18446744073709551616" * 20, 0),
    ("1e308", 1e308), ("1.7976931348623157e308", DBL_MAX), ("1.7976931348623158e308", DBL_MAX),
    ("2.2250738585072014e-308", DBL_MIN), ("1e-400", 0.0), ("-1e-400", 0.0), ("2.4e-324", 0.0),
    ("0e99999", 0), ("0e2147483639", 0), ("1e0000000000000000000002", 100),
    ("1" * 300, float("1" * 300)), ("1" * 5000 + "e-4990", 1111111111.1111112),
    ("0." + "0" * 5000 + "1e5000", 0.1),
]

#: (literal, ovsdb-server's reason for dropping the connection).
BAD_NUMBERS = [
    ("1e400", "number outside valid range"), ("-1e400", "number outside valid range"),
    ("1.7976931348623159e308", "number outside valid range"),
    ("1.8e308", "number outside valid range"), ("1" * 400, "number outside valid range"),
    ("1" * 5000, "number outside valid range"), ("1e-320", "number outside valid range"),
    ("-1e-320", "number outside valid range"), ("4.9e-324", "number outside valid range"),
    ("2.5e-324", "number outside valid range"),
    ("2.2250738585072009e-308", "number outside valid range"),
    ("2.2250738585072012e-308", "number outside valid range"),
    (EXACT_2_POW_MINUS_1074, "number outside valid range"),
    ("0e99999999999", "exponent outside valid range"),
    ("0e2147483640", "exponent outside valid range"),
    ("1e2147483647", "exponent outside valid range"),
    ("1e-2147483647", "exponent outside valid range"),
]


@pytest.mark.parametrize(("text", "value"), NUMBERS, ids=lambda v: str(v)[:30])
def test_numbers(text: str, value: int | float) -> None:
    got = ovs_number(text)
    assert type(got) is type(value) and got == value
    [request] = parse(echo(text.encode()))
    assert isinstance(request, Request)
    [through_codec] = request.params
    assert type(through_codec) is type(value) and through_codec == value


@pytest.mark.parametrize(("text", "reason"), BAD_NUMBERS, ids=lambda v: str(v)[:30])
def test_bad_numbers(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ovs_number(text)
    assert reason in refuse(echo(text.encode())).reason


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_numbers_match_a_simple_model_below_20_digits(value: Decimal) -> None:
    """Away from OVS's overflow quirk (20+ significant digits), a literal reads as an int
    when it is integral and fits int64, else as the nearest double; a nonzero double below
    DBL_MIN is refused (glibc's ERANGE), and so is one beyond DBL_MAX."""
    text = format(value, "f") if abs(value.adjusted()) < 30 else str(value).replace("+", "")
    mantissa = text.lower().split("e")[0]
    if len(mantissa.replace("-", "").replace(".", "").lstrip("0")) >= 20:
        return
    exact = Decimal(text)
    if exact == exact.to_integral_value() and INT64_MIN <= exact <= INT64_MAX:
        expected: int | float | None = int(exact)
    else:
        nearest = float(exact)
        if math.isinf(nearest) or (nearest != 0 and abs(exact) < Decimal(DBL_MIN)):
            expected = None
        else:
            expected = nearest
    if expected is None:
        with pytest.raises(ValueError, match="outside valid range"):
            ovs_number(text)
    else:
        got = ovs_number(text)
        assert type(got) is type(expected) and got == expected


# -- limits --------------------------------------------------------------------------------


def test_max_message_bytes() -> None:
    assert len(parse(ECHO, max_message_bytes=len(ECHO))) == 1
    error = refuse(ECHO, max_message_bytes=len(ECHO) - 1)
    assert error.kind == "policy" and "max_message_bytes" in error.reason
    # An endless message is refused as soon as it passes the limit, not at its end.
    conn = JsonRpcConnection(max_message_bytes=100)
    conn.receive_data(b'{"method":"echo","params":["' + b"x" * 60)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"x" * 60)
    with pytest.raises(RemoteProtocolError, match="max_message_bytes"):
        conn.next_event()


def test_max_depth() -> None:
    assert len(parse(nested(10), max_depth=10)) == 1
    error = refuse(nested(11), max_depth=10)
    assert error.kind == "policy" and "maximum nesting depth 10" in error.reason
    error = refuse(nested(DEFAULT_MAX_DEPTH + 1))
    assert error.kind == "json" and "maximum nesting depth 1000" in error.reason


def test_max_buffer_bytes() -> None:
    conn = JsonRpcConnection(max_message_bytes=100, max_buffer_bytes=150)
    conn.receive_data(ECHO * 4)  # 148 bytes
    assert len(drain(conn)) == 4
    conn.receive_data(ECHO * 5)  # 185 bytes, not drained in between
    with pytest.raises(RemoteProtocolError, match="max_buffer_bytes") as info:
        conn.next_event()
    assert info.value.kind == "policy"


def test_limit_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        JsonRpcConnection(max_message_bytes=1)
    with pytest.raises(ValueError):
        JsonRpcConnection(max_depth=0)
    with pytest.raises(ValueError):
        JsonRpcConnection(max_message_bytes=1000, max_buffer_bytes=999)


def test_depth_1000_from_a_deep_python_stack() -> None:
    """Python's json recurses once per level against sys.getrecursionlimit(); the codec
    makes room both ways, from wherever it is called."""
    limit = sys.getrecursionlimit()

    def at_depth(n: int) -> bytes:
        if n:
            return at_depth(n - 1)
        conn = JsonRpcConnection()
        conn.receive_data(nested(DEFAULT_MAX_DEPTH))
        [request] = drain(conn)
        assert isinstance(request, Request)
        return conn.send(Reply(1, request.params))

    reply = at_depth(limit - 250)
    assert reply.startswith(b'{"id":1,"result":[' + b"[" * 997)
    assert sys.getrecursionlimit() == limit


# -- sending -------------------------------------------------------------------------------


def test_send_writes_what_ovsdb_server_writes() -> None:
    conn = JsonRpcConnection()
    conn.receive_data(echo(b"", b"7") + echo(b"", b'"x"'))
    drain(conn)
    assert conn.send(Reply(7, {"a": [1, "é", None, True]})) == (
        '{"id":7,"result":{"a":[1,"é",null,true]},"error":null}'.encode()
    )
    assert conn.send(ErrorReply("x", "unknown method")) == (
        b'{"id":"x","error":"unknown method"}'
    )
    assert conn.send(Notification("update2", [None, {}])) == (
        b'{"id":null,"method":"update2","params":[null,{}]}'
    )
    assert conn.send(Request("echo", "echo", [])) == (
        b'{"id":"echo","method":"echo","params":[]}'
    )
    assert conn.send(Notification("x", ['"\\\b\f\n\r\t\x01\x1f\x7f/'])) == (
        b'{"id":null,"method":"x","params":["\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\x7f/"]}'
    )
    assert conn.statistics().messages_sent == 5


def test_replies_need_a_pending_request() -> None:
    conn = JsonRpcConnection()
    with pytest.raises(LocalProtocolError, match="no request"):
        conn.send(Reply(1, []))
    conn.receive_data(ECHO + ECHO + echo(b"", b"[1,{}]"))
    assert len(drain(conn)) == 3
    assert conn.statistics().pending_requests == 3 and conn.is_pending(1)
    conn.send(Reply(1, []))
    conn.send(ErrorReply(1.0, "x"))  # 1.0 is the id the peer sent as 1
    with pytest.raises(LocalProtocolError, match="no request"):
        conn.send(Reply(1, []))
    conn.abandon([1, {}])
    with pytest.raises(LocalProtocolError):
        conn.abandon([1, {}])
    assert conn.statistics().pending_requests == 0


def test_outstanding_requests() -> None:
    conn = JsonRpcConnection()
    conn.send(Request("echo", "echo", []))
    conn.send(Request(["a", 1], "transact", ["db"]))
    assert conn.statistics().outstanding_requests == 2
    conn.receive_data(b'{"id":"echo","result":[],"error":null}{"id":["a",1.0],"error":"x"}')
    assert drain(conn) == [Reply("echo", []), ErrorReply(["a", 1], "x")]
    assert conn.statistics().outstanding_requests == 0


@pytest.mark.parametrize(
    "event",
    [
        Reply(1, None),
        ErrorReply(1, None),
        Reply(1, [math.nan]),
        Reply(1, {"x": math.inf}),
        Reply(1, {1, 2}),
        Reply(1, b"bytes"),
        Reply(1, ["a\x00b"]),
        Reply(1, {"\x00": 1}),
        Reply(1, ["\udc80"]),
        Notification(1, []),  # type: ignore[arg-type]
        Notification("m", None),  # type: ignore[arg-type]
        Notification("m", {}),  # type: ignore[arg-type]
        Request(None, "m", []),
        "not an event",
    ],
)
def test_send_refuses(event: Any) -> None:
    conn = JsonRpcConnection()
    conn.receive_data(ECHO)
    drain(conn)
    before = conn.statistics()
    with pytest.raises(LocalProtocolError):
        conn.send(event)
    assert conn.statistics() == before  # nothing consumed


def test_send_refuses_cycles() -> None:
    conn = JsonRpcConnection()
    conn.receive_data(ECHO)
    drain(conn)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(1, cycle))


def test_backslash_u0000_text_is_not_a_nul() -> None:
    conn = JsonRpcConnection()
    assert conn.send(Notification("m", ["\\u0000"])) == (
        b'{"id":null,"method":"m","params":["\\\\u0000"]}'
    )


def test_close() -> None:
    conn = JsonRpcConnection()
    conn.receive_data(ECHO)
    conn.close()
    assert conn.closed and conn.next_event() is CLOSED
    with pytest.raises(LocalProtocolError, match="close"):
        conn.send(Notification("m", []))
    conn.receive_data(ECHO)  # ignored


# -- properties ----------------------------------------------------------------------------

# Values that survive the wire unchanged (up to Python's 1 == 1.0): finite normal doubles,
# int64 integers, strings without U+0000 or surrogates.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    # Integral doubles from 2**53 to int64's end would be read back as the integer their
    # shortest repr spells, which is not always the double's exact value.
    | st.floats(-(2.0**53), 2.0**53, allow_subnormal=False)
    | st.floats(min_value=1e19, allow_infinity=False)
    | st.floats(max_value=-1e19, allow_infinity=False)
    | texts
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
non_null = values.filter(lambda v: v is not None)
params = st.lists(values, max_size=4)
calls = st.one_of(
    st.builds(Request, non_null, texts, params),
    st.builds(Notification, texts, params),
)
chunk_sizes = st.lists(st.integers(1, 64), max_size=30)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(calls, max_size=6), st.data(), chunk_sizes, chunk_sizes)
def test_round_trip_in_random_chunks(
    sent: list[Event], data: st.DataObject, sizes_a: list[int], sizes_b: list[int]
) -> None:
    client, server = JsonRpcConnection(), JsonRpcConnection()
    wire = b"".join(client.send(e) for e in sent)
    received: list[Event] = []
    for chunk in chunks(wire, sizes_a):
        server.receive_data(chunk)
        received += drain(server)
    assert received == sent
    requests = [e for e in received if isinstance(e, Request)]
    order = data.draw(st.permutations(requests))
    answers: list[Event] = [
        Reply(r.id, data.draw(non_null)) if data.draw(st.booleans())
        else ErrorReply(r.id, data.draw(non_null))
        for r in order
    ]
    wire = b"".join(server.send(a) for a in answers)
    back: list[Event] = []
    for chunk in chunks(wire, sizes_b):
        client.receive_data(chunk)
        back += drain(client)
    client.receive_data(b"")
    assert client.next_event() is CLOSED
    assert back == answers
    assert server.statistics().pending_requests == 0
    assert client.statistics().outstanding_requests == 0


def outcome(data: bytes, sizes: list[int], strict: bool) -> tuple[list[Event], bool]:
    """(events, refused) after feeding data in chunks and then EOF."""
    conn = JsonRpcConnection(strict_unicode=strict, max_message_bytes=4096)
    events: list[Event] = []
    for chunk in [*chunks(data, sizes), b""]:
        conn.receive_data(chunk)
        more, error = collect(conn)
        events += more
        if error is not None:
            return events, True
    assert conn.next_event() is CLOSED
    return events, False


@settings(deadline=None)
@given(st.binary(max_size=200), chunk_sizes, st.booleans())
def test_garbage_only_raises_remote_protocol_error(
    data: bytes, sizes: list[int], strict: bool
) -> None:
    outcome(data, sizes, strict)


INTERESTING = b'{}[]",:\\ u0123456789eE+-.tfnNI\x00\x01\x1f\x7f\xff\xc3\xa9'


def _mutate(wire: bytearray, data: st.DataObject) -> None:
    """Up to three single-byte insertions, replacements or deletions of interesting bytes."""
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(wire)))
        byte = data.draw(st.sampled_from(list(INTERESTING)))
        action = data.draw(st.sampled_from(["insert", "replace", "delete"]))
        if action == "insert":
            wire[at:at] = bytes([byte])
        elif at < len(wire):
            wire[at : at + 1] = b"" if action == "delete" else bytes([byte])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(calls, min_size=1, max_size=4), st.data(), chunk_sizes, st.booleans())
def test_mutated_streams_are_chunking_invariant(
    sent: list[Event], data: st.DataObject, sizes: list[int], strict: bool
) -> None:
    """Corrupt a valid stream; whatever comes out must not depend on how it is chunked."""
    client = JsonRpcConnection()
    wire = bytearray(b"".join(client.send(e) for e in sent))
    _mutate(wire, data)
    whole = outcome(bytes(wire), [], strict)
    assert outcome(bytes(wire), sizes, strict) == whole
    assert outcome(bytes(wire), [1] * len(wire), strict) == whole


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(calls, min_size=1, max_size=4), st.data(), st.integers(1, 12),
       st.integers(2, 600))
def test_the_whole_message_shortcut_agrees_with_the_scan(
    sent: list[Event], data: st.DataObject, max_depth: int, max_bytes: int
) -> None:
    """Messages the C scanner reads in one go (_parse_whole) come out exactly as the byte
    scan alone makes them, with the same error where there is one, limits included."""
    wire = bytearray(b" \n".join(JsonRpcConnection().send(e) for e in sent))
    _mutate(wire, data)

    def run(shortcut: bool) -> tuple[list[Event], tuple[str, str] | None]:
        conn = JsonRpcConnection(max_depth=max_depth, max_message_bytes=max_bytes)
        if not shortcut:
            conn._parse_whole = lambda: None  # type: ignore[method-assign]
        conn.receive_data(bytes(wire))
        conn.receive_data(b"")
        events, error = collect(conn)
        return events, None if error is None else (error.reason, error.kind)

    assert run(True) == run(False)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.sampled_from(["a", "\u00e9", "\\"])),
                min_size=1, max_size=30),
       st.lists(st.integers(1, 20_000), max_size=8), st.data())
def test_bursts_read_across_windows_and_receives_as_the_scan_reads_them(
    sizes: list[tuple[int, str]], cuts: list[int], data: st.DataObject
) -> None:
    """Pipelined messages of every size around the shortcut's windows (see _parse_whole),
    ASCII or not, received in pieces with the buffer drained in between (the decoded text
    a burst leaves tells the next one's window): the same events, each when the byte scan
    alone gives it."""
    messages = [JsonRpcConnection().send(Request(i, "echo", [ch * n]))
                for i, (n, ch) in enumerate(sizes)]
    wire = bytearray(b"".join(messages))
    ends = list(itertools.accumulate(map(len, messages)))  # (bursts received whole)
    if data.draw(st.booleans()):
        _mutate(wire, data)
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)}
                    | data.draw(st.sets(st.sampled_from(ends))))

    def run(shortcut: bool) -> list[Any]:
        conn = JsonRpcConnection()
        if not shortcut:
            conn._parse_whole = lambda: None  # type: ignore[method-assign]
        seen: list[Any] = []
        for a, b in itertools.pairwise(bounds):
            conn.receive_data(bytes(wire[a:b]))
            events, error = collect(conn)
            seen.append(events)
            if error is not None:
                seen.append((error.reason, error.kind))
                return seen
        conn.receive_data(b"")
        events, error = collect(conn)
        seen.append(events)
        seen.append(None if error is None else (error.reason, error.kind))
        return seen

    assert run(True) == run(False)


# -- differential: the real ovsdb-server ------------------------------------------------------

PROBE = b'{"method":"echo","params":["probe"],"id":"probe"}'

#: (name, bytes sent before PROBE, whether the default strict_unicode=True codec refuses
#: it although ovsdb-server accepts it). Every input is complete: nothing is left waiting.
DIFFERENTIAL_CASES: list[tuple[str, bytes, bool]] = [
    ("good", ECHO, False),
    ("two concatenated", ECHO + echo(b"2", b"2"), False),
    ("whitespace", b" \n\t\r" + ECHO + b"\n\n  ", False),
    ("top array", b"[1,2]", False),
    ("top string", b'"x"', False),
    ("top number", b"1 ", False),
    ("top null", b"null ", False),
    ("comma between", ECHO + b"," + ECHO, False),
    ("formfeed", b"\x0c" + ECHO, False),
    ("vertical tab", b"\x0b" + ECHO, False),
    ("nbsp", b"\xc2\xa0" + ECHO, False),
    ("bom", b"\xef\xbb\xbf" + ECHO, False),
    ("nul between", ECHO + b"\x00", False),
    ("ff between", ECHO + b"\xff", False),
    ("jsonrpc 2.0", b'{"jsonrpc":"2.0","method":"echo","params":[],"id":1}', False),
    ("params missing", b'{"method":"echo","id":1}', False),
    ("params null", b'{"method":"echo","params":null,"id":1}', False),
    ("params object", b'{"method":"echo","params":{},"id":1}', False),
    ("params string", b'{"method":"echo","params":"x","id":1}', False),
    ("method number", b'{"method":1,"params":[],"id":1}', False),
    ("method null", b'{"method":null,"params":[],"id":1}', False),
    ("double comma", b'{"method": "echo", "params": [], "id": 1,,}', False),
    ("key not string", b"{1:2}", False),
    ("mismatched", b'{"a":[}', False),
    ("mismatched 2", b'{"a":{]}', False),
    ("reply result null", b'{"id":1,"result":null}', False),
    ("reply result null error null", b'{"id":1,"result":null,"error":null}', False),
    ("reply unknown id", b'{"id":99,"result":[],"error":null}', False),
    ("reply id echo", b'{"id":"echo","result":[],"error":null}', False),
    ("error reply id echo", b'{"id":"echo","error":"x"}', False),
    ("error reply unknown id", b'{"id":99,"error":"x","result":null}', False),
    ("result and error", b'{"id":99,"error":"x","result":[]}', False),
    ("reply without id", b'{"result":[]}', False),
    ("reply id null", b'{"result":[],"id":null}', False),
    ("notification", b'{"method":"foo","params":[],"id":null}', False),
    ("notification without id", b'{"method":"foo","params":[]}', False),
    ("cancel", b'{"method":"cancel","params":[1]}', False),
    ("notification without params", b'{"method":"foo","id":null}', False),
    ("request with null error and result",
     b'{"method":"echo","params":[],"id":1,"error":null,"result":null}', False),
    ("request with error", b'{"method":"echo","params":[],"id":1,"error":"x"}', False),
    ("request with result", b'{"method":"echo","params":[],"id":1,"result":[]}', False),
    ("empty object", b"{}", False),
    ("only id", b'{"id":1}', False),
    ("unknown method", b'{"method":"nope","params":[],"id":1}', False),
    ("duplicate members", b'{"method":"nope","method":"echo","params":[],"params":[5],"id":1}',
     False),
    ("ids", b"".join(echo(b"", i) for i in
                     (b'"s"', b'[1,{"a":null}]', b"3.25", b"true", b"{}", b"1.0", b"-0.0")), False),
    ("NaN", echo(b"NaN"), False),
    ("Infinity", echo(b"Infinity"), False),
    ("-Infinity", echo(b"-Infinity"), False),
    ("nan", echo(b"nan"), False),
    ("True", echo(b"True"), False),
    ("truex", echo(b"truex"), False),
    ("keywords", echo(b"true,false,null"), False),
    ("leading zero", echo(b"01"), False),
    ("1.", echo(b"1."), False),
    (".5", echo(b".5"), False),
    ("+1", echo(b"+1"), False),
    ("1e", echo(b"1e"), False),
    ("1-2", echo(b"1-2"), False),
    ("-", echo(b"-"), False),
    ("trailing comma", echo(b"1,"), False),
    ("nested objects", echo(b'{"a":{"b":[{}, [], [[]]]}}'), False),
    ("raw ff", echo(b'"\xff"'), True),
    ("raw c3", echo(b'"\xc3"'), True),
    ("valid utf8", echo('"é😀\u2028"'.encode()), False),
    ("overlong", echo(b'"\xc0\x80"'), True),
    ("raw surrogate", echo(b'"\xed\xa0\x80"'), True),
    ("key raw ff", b'{"method":"echo","params":[{"\xff":1}],"id":1}', True),
    ("method raw ff", b'{"method":"\xff","params":[],"id":1}', True),
    ("esc u0000", echo(b'"\\u0000"'), False),
    ("esc backslash u0000", echo(b'"\\\\u0000"'), False),
    ("esc lone high", echo(b'"\\ud800"'), False),
    ("esc lone high then x", echo(b'"\\ud800x"'), False),
    ("esc lone low", echo(b'"\\udc00"'), True),
    ("esc pair", echo(b'"\\ud83d\\ude00"'), False),
    ("esc high high", echo(b'"\\ud800\\ud800"'), False),
    ("esc low high", echo(b'"\\udc00\\ud800"'), False),
    ("esc bad hex", echo(b'"\\u12g4"'), False),
    ("esc short", echo(b'"\\u12"'), False),
    ("esc x", echo(b'"\\x41"'), False),
    ("esc all", echo(b'"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u001f"'), False),
    ("raw control", echo(b'"a\x01b"'), False),
    ("raw tab", echo(b'"a\tb"'), False),
    ("raw newline", echo(b'"a\nb"'), False),
    ("raw DEL", echo(b'"a\x7fb"'), False),
    ("nul in number", echo(b"1.5\x00e+19"), False),
    ("nul after number", echo(b"-1\x00\x00-5, 2\x00"), False),
    ("nul in string", echo(b'"a\x00b"'), False),
    ("nul after keyword", echo(b"true\x00"), False),
    ("nul between tokens", echo(b"1,\x002"), False),
    ("nul after exponent mark", echo(b"1e\x00"), False),
    ("nul after bracket", echo(b"[\x00]"), False),
    ("nul before colon", b'{"method"\x00:"echo","params":[],"id":1}', False),
    ("depth 1000", nested(1000), False),
    ("depth 1001", nested(1001), False),
    *((f"number {t[:24]}", echo(t.encode()), False) for t, _ in NUMBERS),
    *((f"bad number {t[:24]}", echo(t.encode()), False) for t, _ in BAD_NUMBERS),
]


def ovsdb_server_session(events: list[Event]) -> tuple[list[Event], bool]:
    """What ovsdb-server's session layer does with received messages (lib/jsonrpc.c and
    ovsdb/jsonrpc-server.c): the replies it sends, and whether it disconnects. Enough of
    it for the messages in DIFFERENTIAL_CASES."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, Request):
            if event.method == "echo":
                out.append(Reply(event.id, event.params))
            else:
                out.append(ErrorReply(event.id, "unknown method"))
        elif isinstance(event, Reply) and event.id == "echo":
            continue  # a reply to the server's own inactivity probe
        elif isinstance(event, Reply | ErrorReply):
            return out, True  # "received unexpected reply/error message"
    return out, False


def codec_verdict(
    data: bytes, strict: bool
) -> tuple[bool, list[Event], JsonRpcConnection, RemoteProtocolError | None]:
    """For data + PROBE + EOF: (probe answered, what ovsdb-server would send back, the
    connection, the codec's error)."""
    conn = JsonRpcConnection(strict_unicode=strict)
    conn.receive_data(data + PROBE)
    conn.receive_data(b"")
    events, error = collect(conn)
    replies, dropped = ovsdb_server_session(events)
    answered = not dropped and any(isinstance(r, Reply) and r.id == "probe" for r in replies)
    return answered, replies, conn, error


def server_exchange(sock_path: Path, data: bytes) -> tuple[bytes, bool]:
    """Send data + PROBE, half-close, and read until the server closes: (bytes, probe
    answered). The server handles every complete message before it sees the EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        try:
            s.sendall(data + PROBE)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have dropped us
        out = b""
        try:
            while chunk := s.recv(1 << 20):
                out += chunk
        except ConnectionResetError:
            pass
    return out, b'"id":"probe"' in out


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsdbServer]:
    require_binaries()
    with OvsdbServer(KITCHEN_SINK_SCHEMA, tmp_path_factory.mktemp("jsonrpc")) as server:
        yield server


def reply_parts(event: Event) -> list[Any]:
    assert isinstance(event, Reply | ErrorReply)
    return [event.id, event.result if isinstance(event, Reply) else event.error]


def contains_real(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            return True
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return False


def wire_bytes(s: str) -> bytes:
    """The bytes a decoded string stands for (strict_unicode=False maps raw bytes that are
    not UTF-8 to U+DC80..U+DCFF)."""
    return b"".join(
        bytes([ord(c) - 0xDC00]) if 0xDC80 <= ord(c) <= 0xDCFF
        else c.encode("utf-8", "surrogatepass")
        for c in s
    )


def same_value(ours: Any, theirs: Any) -> bool:
    """Equal as values, allowing for ovsdb-server's %.15g rounding of reals (iterative:
    values may be 1000 deep)."""
    stack = [(ours, theirs)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, float):
            if not (isinstance(b, int | float) and math.isclose(a, b, rel_tol=1e-14)):
                return False
        elif isinstance(a, list):
            if not (isinstance(b, list) and len(a) == len(b)):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(a, dict):
            if not (isinstance(b, dict) and len(a) == len(b)):
                return False
            their_keys = {wire_bytes(k): v for k, v in b.items()}
            for k, v in a.items():
                if wire_bytes(k) not in their_keys:
                    return False
                stack.append((v, their_keys[wire_bytes(k)]))
        elif isinstance(a, str):
            if not (isinstance(b, str) and wire_bytes(a) == wire_bytes(b)):
                return False
        elif not (type(a) is type(b) and a == b):
            return False
    return True


@pytest.mark.ovsdb_server
@pytest.mark.parametrize(
    ("data", "strict_divergent"),
    [pytest.param(data, divergent, id=name) for name, data, divergent in DIFFERENTIAL_CASES],
)
def test_differential_against_ovsdb_server(
    real_server: OvsdbServer, data: bytes, strict_divergent: bool
) -> None:
    raw, server_answered = server_exchange(real_server.sock_path, data)

    # strict_unicode=False: exactly ovsdb-server's verdict, values and bytes.
    answered, replies, conn, _ = codec_verdict(data, strict=False)
    assert answered == server_answered
    theirs = JsonRpcConnection(strict_unicode=False)
    theirs.receive_data(raw)
    their_replies, unreadable = collect(theirs)
    if unreadable is not None:
        # ovsdb-server writes reals with %.15g, which turns DBL_MAX into 1.79769313486232e+308
        # and DBL_MIN into 2.2250738585072e-308: numbers that its own parser refuses.
        assert unreadable.reason == "number outside valid range"
    elif server_answered:
        assert [type(r) for r in their_replies] == [type(r) for r in replies]
        for mine, their in zip(replies, their_replies, strict=True):
            assert same_value(reply_parts(mine), reply_parts(their))
        ours = b"".join(conn.send(r) for r in replies)
        if not contains_real([reply_parts(r) for r in replies]):
            assert ours == raw  # byte for byte (reals differ: %.15g there, repr here)

    # The default strict codec: the same, except that it refuses the documented cases.
    strict_answered, _, _, error = codec_verdict(data, strict=True)
    if strict_divergent:
        assert server_answered and not strict_answered
        assert error is not None and error.kind == "policy"
    else:
        assert strict_answered == server_answered


member_values = st.sampled_from(
    [None, 0, 1, 1.5, True, "s", "echo", "nope", "cancel", [], [1], {}, {"a": 1}]
)
envelopes = st.dictionaries(
    st.sampled_from(["method", "params", "result", "error", "id", "jsonrpc"]),
    member_values,
    max_size=6,
)


@pytest.mark.ovsdb_server
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(envelopes, min_size=1, max_size=3))
def test_differential_envelopes_against_ovsdb_server(
    real_server: OvsdbServer, messages: list[dict[str, Any]]
) -> None:
    """Any mix of members and member types: same verdict, and the same reply bytes."""
    wire = b"".join(json.dumps(m).encode() for m in messages)
    raw, server_answered = server_exchange(real_server.sock_path, wire)
    answered, replies, conn, _ = codec_verdict(wire, strict=False)
    assert answered == server_answered, raw
    if answered and not contains_real([reply_parts(r) for r in replies]):
        assert b"".join(conn.send(r) for r in replies) == raw


@pytest.mark.ovsdb_server
@pytest.mark.slow
@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(calls, min_size=1, max_size=3), st.data())
def test_differential_fuzz_against_ovsdb_server(
    real_server: OvsdbServer, sent: list[Event], data: st.DataObject
) -> None:
    """Corrupted streams: the strict_unicode=False codec and ovsdb-server agree. (This is
    how OVS's NUL-in-a-number quirk was found.)"""
    client = JsonRpcConnection()
    wire = bytearray(b"".join(client.send(e) for e in sent))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(wire)))
        byte = data.draw(st.sampled_from(list(INTERESTING)) | st.integers(0, 255))
        action = data.draw(st.sampled_from(["insert", "replace", "delete"]))
        if action == "insert":
            wire[at:at] = bytes([byte])
        elif at < len(wire):
            wire[at : at + 1] = b"" if action == "delete" else bytes([byte])
    raw, server_answered = server_exchange(real_server.sock_path, bytes(wire))
    answered, _, _, _ = codec_verdict(bytes(wire), strict=False)
    assert answered == server_answered, (bytes(wire), raw)
