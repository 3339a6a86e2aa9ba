"""Sans-I/O JSON-RPC codec for OVSDB, in the style of h11: bytes in, events out, events in,
bytes out. No sockets, no trio, no threads; the caller moves the bytes.

::

    conn = JsonRpcConnection()
    conn.receive_data(chunk)                  # b"" means EOF
    while (event := conn.next_event()) not in (NEED_DATA, CLOSED):
        ...                                   # Request / Notification / Reply / ErrorReply
        sock.sendall(conn.send(Reply(event.id, result)))

``next_event()`` raises :class:`RemoteProtocolError` when the peer did something after which
ovsdb-server drops the connection; the caller must then disconnect (ovsdb-server sends
nothing first). ``send()`` raises :class:`LocalProtocolError` for the caller's own mistakes.

What ovsdb-server 3.1.0 does (lib/jsonrpc.c, lib/json.c, ovsdb/jsonrpc-server.c; every point
below was checked against the real server over a unix socket):

Framing
    The stream is JSON objects concatenated with no delimiter (the server writes ``}{``).
    Only space, tab, LF and CR may separate them; any other byte between messages (``,``,
    ``\\f``, a UTF-8 BOM, NUL...) is a parse error. Messages that arrived before a bad one are
    processed and answered first, then the connection is dropped. A peer that closes in the
    middle of a message is a plain EOF: nothing is logged, earlier messages are answered.
    There is no size limit: a 100 MB echo request is answered.

Messages (``jsonrpc_msg_from_json``)
    ``params``, ``result``, ``error`` and ``id`` set to ``null`` count as absent. The type is
    reply if ``result`` is present, else error if ``error`` is, else request if ``id`` is,
    else notification. Required members: request method+params+id, notification
    method+params, reply result+id, error error+id; every other member must be absent, an
    unknown member (``"jsonrpc": "2.0"``) is fatal, ``params`` must be an array and
    ``method`` a string (``"method": null`` is fatal). So ``{"id":1,"result":null}`` is a
    request without a method (fatal), a message with both ``result`` and ``error`` is a reply
    that "must not have error" (fatal), and ``{"method":"echo","params":[],"id":1,
    "result":null,"error":null}`` is a valid request. Duplicate members: the last one wins.
    ids may be any JSON value and are echoed verbatim (after number normalization: id
    ``1.0`` comes back as ``1``, ``-0.0`` as ``0``).

JSON (``json_parser_feed``)
    A message must start with ``{``; a top-level array is "not a JSON object", any other
    value a syntax error. Keywords are ``true``, ``false``, ``null`` only (``NaN``,
    ``Infinity``, ``-Infinity``, ``nan`` are fatal). Strings: raw bytes below 0x20 are fatal,
    DEL and bytes >= 0x80 are passed through **without UTF-8 validation** (``"\\xff"`` is
    echoed back as the raw byte); escapes are the JSON set; ``\\u0000`` is fatal; an escaped
    high surrogate must be followed by an escaped low one, but a lone escaped low surrogate
    is accepted (and becomes the CESU bytes ED B0 80). Nesting deeper than 1000 containers
    (the message object included) is fatal. Numbers: integral values that fit int64
    become integers (``1.0``, ``2e3``, ``-0.0`` -> 0), others doubles (``%.15g`` on output);
    a double out of range (``1e400``) or subnormal (``1e-320``) is fatal while an underflow
    to zero (``1e-400``) is 0; an exponent of 10 significant digits or more is fatal even on
    zero (``0e2147483640``). 20-digit integers wrap modulo 2**64 in OVS's significand
    (``18446744073709551617`` is read as 1); :func:`ovs_number` reproduces all of this.
    A NUL byte right after a number is taken into the number token and ends it
    (``1.5\x00e+19`` is 1.5); a NUL anywhere else is fatal. OVS's own ``%.15g`` output of
    DBL_MAX and DBL_MIN (``1.79769313486232e+308``, ``2.2250738585072e-308``) is out of
    range for its own parser.

What ovsdb-server does with valid messages (the server layer's job, not this codec's)
    An incoming echo request is answered inside lib/jsonrpc.c; a reply whose id is the string
    ``"echo"`` is dropped silently; any other reply, and any error reply (even with id
    ``"echo"``), is "received unexpected reply/error message" and drops the connection.
    Notifications other than ``cancel`` are ignored. Unknown methods get
    ``{"id":..,"error":"unknown method"}``.

Output is byte-for-byte what ovsdb-server writes: compact, raw UTF-8, members in its order::

    {"id":ID,"method":M,"params":P}      request
    {"id":null,"method":M,"params":P}    notification
    {"id":ID,"result":R,"error":null}    reply
    {"id":ID,"error":E}                  error reply (no "result" member)

except that reals use Python's shortest repr where OVS writes ``%.15g``; OVS clients parse
either. A reply with result ``null`` would be read as a request without a method, so
:class:`Reply` refuses ``None``.

Logs (for a server that wants to match them): JSON errors are logged as
``jsonrpc|WARN|<peer>: error parsing stream: line 0, column 27, byte 27: invalid character 'N'``,
message errors as ``jsonrpc|WARN|<peer>: received bad JSON-RPC message: request must have
"params"``, both followed by ``reconnect|WARN|<peer>: connection dropped (Protocol error)``;
unexpected replies as ``ovsdb_jsonrpc_server|WARN|<peer>: received unexpected reply message``
alone. :attr:`RemoteProtocolError.kind` says which family an error belongs to.

Deliberate differences, both configurable:

* Limits. ovsdb-server has no message size limit; here ``max_message_bytes`` (64 MiB) and
  ``max_buffer_bytes`` bound memory per connection. ``max_depth`` defaults to OVS's 1000.
* Unicode. By default (``strict_unicode=True``) a message whose strings are not valid
  Unicode (invalid UTF-8, or a lone escaped low surrogate) is rejected, so the layers above
  only ever see clean ``str``; ovsdb-server accepts it at this level and only refuses it as
  a string atom ("constraint violation", "not a valid UTF-8 string: invalid UTF-8 sequence
  0xff"). With ``strict_unicode=False`` the codec accepts exactly what ovsdb-server accepts:
  invalid bytes arrive as lone surrogates U+DC80..U+DCFF (Python's ``surrogateescape``) and
  go back out as the same raw bytes.

Cost: a message of up to 64 KiB is first handed to the C ``json`` scanner as it stands
(from the buffer), which finds its end too (a small message with many brackets,
an update notification, costs half as much); this shortcut takes only what the scan below
accepts, with the same value. Otherwise each received byte is scanned once for message
boundaries (regular expressions that skip whole strings; Python work per bracket), then the
message is decoded once by the C ``json`` scanner. About 35 MB/s of scanning on
OVSDB-shaped JSON plus json's own parse time (a 22 MB, 60k-row transact: 1.2 s in all,
0.65 s of it json), and about 140k small messages per second.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import orjson

from crdtdb.engine.frozen import fast_init
from crdtdb.errors import CrdtdbError

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "NEED_DATA",
    "ErrorReply",
    "Event",
    "JsonRpcConnection",
    "LocalProtocolError",
    "Notification",
    "RemoteProtocolError",
    "Reply",
    "Request",
    "Sentinel",
    "Statistics",
    "ovs_number",
]

#: 64 MiB. ovsdb-server has no limit at all; this bounds one connection's memory while
#: leaving room for a large ovn-northd transaction.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: OVS's JSON_MAX_HEIGHT: containers, the message object included.
DEFAULT_MAX_DEPTH: Final = 1000
#: Default slack of ``max_buffer_bytes`` over ``max_message_bytes``: room for the chunks a
#: caller feeds between two drains of :meth:`JsonRpcConnection.next_event`.
_BUFFER_SLACK: Final = 1024 * 1024


# -- errors, events ------------------------------------------------------------------------


class LocalProtocolError(CrdtdbError):
    """The caller misused the connection (a reply to an id that is not pending, a value that
    is not JSON, a send after close()...). Nothing was sent; the connection is unchanged."""


class RemoteProtocolError(CrdtdbError):
    """The peer sent something after which ovsdb-server drops the connection; so must we.

    ``reason`` is the human-readable cause (OVS's wording where it has one). ``kind`` is
    ``"json"`` for a byte stream that is not JSON ("error parsing stream" in OVS's log),
    ``"jsonrpc"`` for valid JSON that is not a JSON-RPC message ("received bad JSON-RPC
    message"), ``"policy"`` for a limit or restriction of this codec that ovsdb-server
    does not have (``max_message_bytes``, ``max_buffer_bytes``, a ``max_depth`` below
    1000, ``strict_unicode``).
    """

    def __init__(self, reason: str, kind: Literal["json", "jsonrpc", "policy"] = "json"):
        self.reason = reason
        self.kind = kind
        super().__init__(reason)


# (Slotted, with fast_init's __init__: a served transaction makes three, its request, its
# reply and its update notification, and a frozen dataclass's own __init__ cost ~1 us each.)
@fast_init
@dataclass(frozen=True, slots=True)
class Request:
    """A call that expects a reply with the same id. ``id`` is any JSON value but null."""

    id: Any
    method: str
    params: list[Any]


@fast_init
@dataclass(frozen=True, slots=True)
class Notification:
    """A call without a reply (``"id": null`` on the wire)."""

    method: str
    params: list[Any]


@fast_init
@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer. ``result`` is never ``None`` (that would read as a request)."""

    id: Any
    result: Any


@fast_init
@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A failed answer: ``{"id": .., "error": ..}``, no ``result`` member."""

    id: Any
    error: Any


Event = Request | Notification | Reply | ErrorReply
#: (a tuple made once: ``Reply | ErrorReply`` in isinstance makes a union at every call)
_REPLIES = (Reply, ErrorReply)


class Sentinel(enum.Enum):
    """The two non-event results of :meth:`JsonRpcConnection.next_event`."""

    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


#: next_event() needs more bytes.
NEED_DATA: Final = Sentinel.NEED_DATA
#: The peer closed its side (EOF) and every complete message has been returned.
CLOSED: Final = Sentinel.CLOSED


@dataclass(frozen=True)
class Statistics:
    """Counters of one connection, for monitoring and for back-pressure decisions."""

    bytes_received: int
    bytes_sent: int
    messages_received: int
    messages_sent: int
    #: Received bytes not yet returned as events (after CLOSED: the unfinished message the
    #: peer left behind, which ovsdb-server silently drops too).
    bytes_buffered: int
    #: Requests received and not yet answered (or abandoned).
    pending_requests: int
    #: Requests sent whose reply has not arrived.
    outstanding_requests: int


# -- numbers exactly as OVS's json_lex_number reads them ------------------------------------

_U64_MASK = (1 << 64) - 1
_SIGNIFICAND_LIMIT = _U64_MASK // 10  # ULLONG_MAX / 10
_C_INT_MAX = 2**31 - 1
_C_INT_MIN = -(2**31)
_INT64_MAX = 2**63 - 1
_DBL_MIN = sys.float_info.min
_DBL_MIN_EXACT = Decimal(sys.float_info.min)
_ZEROS_RE = re.compile("0*")
_NUMBER_RE = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([-+]?)([0-9]+))?")


def _accumulate(significand: int, digits: str) -> tuple[int, int]:
    """Add digits to an unsigned 64-bit significand while it is <= ULLONG_MAX / 10, as OVS
    does (wrapping on overflow); return it and how many digits were used."""
    i = 0
    n = len(digits)
    while i < n and significand <= _SIGNIFICAND_LIMIT:
        if significand == 0:  # zeros leave it 0: skip them at C speed
            zeros = _ZEROS_RE.match(digits, i)
            assert zeros is not None
            i = zeros.end()
            if i == n:
                break
        if significand < 10:
            # 17 digits at once stay below 10**18 < ULLONG_MAX / 10: no wrap, and the same
            # result as one at a time. (Keeps crafted wrap-around chains linear and fast.)
            k = min(17, n - i)
            significand = significand * 10**k + int(digits[i : i + k])
            i += k
        else:
            significand = (significand * 10 + ord(digits[i]) - 48) & _U64_MASK
            i += 1
    return significand, i


def ovs_number(text: str) -> int | float:
    """The value OVS's JSON parser gives a JSON number literal, or ``ValueError`` with OVS's
    reason when it refuses one.

    An ``int`` where OVS has a JSON integer (an integral value that fits int64, computed
    with OVS's own 64-bit significand, overflow quirk included), a ``float`` where it has a
    double. Work is linear in the length of ``text``.
    """
    m = _NUMBER_RE.fullmatch(text)
    if m is None:
        raise ValueError("syntax error in number")
    negative, int_digits, frac_digits, exp_sign, exp_digits = m.groups()
    significand = 0
    pow10 = 0
    imprecise = False
    if int_digits != "0":
        significand, used = _accumulate(0, int_digits)
        rest = int_digits[used:]
        pow10 += len(rest)
        imprecise = bool(rest.strip("0"))
    if frac_digits:
        significand, used = _accumulate(significand, frac_digits)
        pow10 -= used
        imprecise = imprecise or bool(frac_digits[used:].strip("0"))
    if exp_digits is not None:
        # OVS refuses to add a digit once the exponent is >= INT_MAX / 10.
        digits = exp_digits.lstrip("0")
        if len(digits) > 10 or (len(digits) >= 2 and int(digits[:-1]) >= _C_INT_MAX // 10):
            raise ValueError("exponent outside valid range")
        exponent = int(digits or "0")
        if exp_sign == "-":
            if pow10 < _C_INT_MIN + exponent:
                raise ValueError("exponent outside valid range")
            pow10 -= exponent
        else:
            if pow10 > _C_INT_MAX - exponent:
                raise ValueError("exponent outside valid range")
            pow10 += exponent
    if significand == 0:
        return 0
    if not imprecise:
        while pow10 > 0 and significand < _SIGNIFICAND_LIMIT:
            significand *= 10
            pow10 -= 1
        while pow10 < 0 and significand % 10 == 0:
            significand //= 10
            pow10 += 1
        if pow10 == 0 and significand <= _INT64_MAX + (1 if negative else 0):
            return -significand if negative else significand
    # strtod(), with glibc's ERANGE: overflow, and any nonzero result whose exact value is
    # below DBL_MIN (tininess before rounding), are refused; an underflow to 0 is accepted.
    value = float(text)
    if math.isinf(value):
        raise ValueError("number outside valid range")
    if value == 0:
        return 0.0
    magnitude = abs(value)
    if magnitude < _DBL_MIN or (magnitude == _DBL_MIN and abs(Decimal(text)) < _DBL_MIN_EXACT):
        raise ValueError("number outside valid range")
    return value


def _parse_int(text: str) -> int | float:
    # Up to 18 digits always fits int64 and cannot reach OVS's overflow quirk.
    return int(text) if len(text) <= 18 else ovs_number(text)


def _parse_float(text: str) -> int | float:
    if len(text) <= 19:
        # Fewer than 20 digits: OVS's significand is exact, so a non-integral normal double
        # is exactly what OVS gets (both strtod and float() round correctly).
        value = float(text)
        if not value.is_integer() and abs(value) >= _DBL_MIN and not math.isinf(value):
            return value
    return ovs_number(text)


def _parse_constant(text: str) -> Any:
    raise ValueError(f"invalid character {text[0]!r}")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant, strict=True
)
#: The C scanner: (value, end) for the JSON value at an index (a message starts with "{",
#: so no whitespace to skip).
_SCAN = _DECODER.scan_once
#: isinstance's classes as tuples made once (``A | B`` makes a union at every call).
_SEQUENCES = (list, tuple)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _fast_encode(message: dict[str, Any]) -> bytes | None:
    """The bytes the json path would write, about 8x faster (orjson), or None to use it.

    This is what keeps a 100k-row monitor dump as quick as ovsdb-server's. orjson writes NaN
    and infinities as null instead of refusing them, so a member whose value is not None but
    encodes with a null in it goes the json path (no OVSDB value is ever null); orjson raises
    TypeError where json refuses too (non-str keys, lone surrogates, ints beyond 64 bits),
    and a NUL is refused by the json path: both fall back to it for the error.
    """
    try:
        encoded = orjson.dumps(message)  # (its keys are plain: the same bytes as json's)
    except TypeError:
        return None
    # Each member that is None is one "null"; any other is a NaN or an infinity (or a
    # string that merely holds the word: the json path is right for it too).
    nulls = encoded.count(b"null")
    if (nulls and nulls != [*message.values()].count(None)) \
            or b"\\u0000" in encoded:
        return None
    return encoded


# -- scanning for message boundaries --------------------------------------------------------

# The only bytes that may appear inside a message outside strings, brackets and quotes:
# separators, whitespace, number characters and the lowercase letters of keywords (OVS lexes
# any run of a-z as a keyword), and NUL (see _NUL_IN_NUMBER_RE). Everything else (N of NaN,
# I of Infinity, control bytes, bytes >= 0x80) is an error OVS reports at once, as do we.
_PLAIN = rb"[ \t\n\r,:0-9a-zE+\-.\x00]"
_STRING_CHAR = rb'[^"\\\x00-\x1f]'
_ESCAPE = rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})'
# Possessive (*+, ++): nothing here ever needs to backtrack, and a string left unfinished
# at the end of the buffer then fails in one pass instead of two.
_STRING_BODY = _STRING_CHAR + rb"*+(?:" + _ESCAPE + _STRING_CHAR + rb"*+)*+"
# Inside a message, outside strings: skip plain bytes and whole strings; stop at a bracket,
# at a string that is unfinished or bad, at a bad byte, or at the end of the buffer.
_SKIP_RE = re.compile(rb"(?:" + _PLAIN + rb'++|"' + _STRING_BODY + rb'")*+')
# Inside a string: skip to the closing quote, an unfinished or bad escape, or a control byte.
_STRING_RE = re.compile(_STRING_BODY)
_PARTIAL_ESCAPE_RE = re.compile(rb"\\(?:u[0-9a-fA-F]{0,3})?")
_WHITESPACE_RE = re.compile(rb"[ \t\n\r]*")
# Escapes that may decode to what OVS refuses (U+0000, a surrogate): a cheap pre-filter.
_SUSPECT_ESCAPE_RE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# OVS's lexer extends a number token while strchr(".0123456789eE-+", c) is true, which it
# also is for NUL (the terminator), and then reads the token as a C string: "1.5\0e+19" is
# 1.5. A run of number characters that starts a token ("-" or a digit), then NUL, then more
# number characters or NULs: keep the part before the NUL. Any other NUL is an error.
_NUL_IN_NUMBER_RE = re.compile("([-.0-9eE+]*)\x00[-.0-9eE+\x00]*")
_HIGH_SURROGATE_RE = re.compile("[\ud800-\udbff]")
_ANY_SURROGATE_RE = re.compile("[\ud800-\udfff]")

_OPEN_OBJECT, _OPEN_ARRAY, _CLOSE_OBJECT, _CLOSE_ARRAY, _QUOTE, _BACKSLASH = b"{[}]\"\\"
#: Bytes that start a JSON token other than "{": OVS lexes them and then reports a syntax
#: error at the beginning of input; any other byte is an "invalid character".
_TOKEN_STARTS: Final = frozenset(b'"-0123456789abcdefghijklmnopqrstuvwxyz[]},:')
#: Parse a message this deep or deeper with extra recursion headroom (Python's json module
#: recurses once per level and counts against sys.getrecursionlimit()).
_DEEP: Final = 100
#: The prefixes of the buffer tried with the C scanner first (see _parse_whole): failed
#: tries cost a decode and a scan of these at most, once per message.
_WHOLE_PARSE_WINDOWS: Final = (4 * 1024, 64 * 1024)
#: How much of an unfinished message is checked for syntax errors (see _check_unfinished).
UNFINISHED_CHECK_BYTES: Final = 64 * 1024
#: What may follow where the JSON parser stopped in an input that merely ends early:
#: nothing or whitespace, the start of a number, or a prefix of a keyword.
_STRING_ERROR_RE = re.compile(r"string|escape|control character")
_COULD_CONTINUE_RE = re.compile(r"\s*(?:[-+.0-9eE]*|t(?:r(?:ue?)?)?|f(?:a(?:l(?:se?)?)?)?"
                                r"|n(?:u(?:ll?)?)?)\s*")


_NUMBER_STARTS: Final = frozenset("-0123456789")


def _number_before_nul(m: re.Match[str]) -> str:
    token = m.group(1)
    return token if token[:1] in _NUMBER_STARTS else m.group(0)


def _character(byte: int) -> str:
    """OVS's way of naming a byte in "invalid character" errors."""
    return f"'{chr(byte)}'" if 0x20 < byte < 0x7F else f"U+{byte:04x}"


@contextlib.contextmanager
def _recursion_headroom(extra: int) -> Iterator[None]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(old + extra)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, object keys included (iterative: values may be deep)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            yield from v.keys()
            stack.extend(v.values())


def _ovs_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Encode-error handler: U+DC80..U+DCFF back to the raw byte they stand for (as
    ``surrogateescape``), any other surrogate as its 3-byte form (as ``surrogatepass``):
    the bytes ovsdb-server would have echoed."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(cp - 0xDC00)
        else:
            out += ch.encode("utf-8", "surrogatepass")
    return bytes(out), exc.end


_OVS_BYTES_HANDLER = "crdtdb.ovsdb.jsonrpc.ovs-bytes"
codecs.register_error(_OVS_BYTES_HANDLER, _ovs_bytes)


def _id_key(request_id: Any) -> Hashable:
    """A hashable stand-in for a JSON id, equal for ids that OVS's json_equal() finds equal
    once the peer has parsed them (``1.0`` and ``1`` are; ``1`` and ``true`` are not)."""
    kind = type(request_id)
    if kind is str or kind is int:
        return (kind, request_id)
    try:
        as_peer_sees_it = _SCAN(_ENCODER.encode([request_id]), 0)[0][0]
    except (ValueError, StopIteration):  # e.g. a subnormal float, which OVS cannot read
        as_peer_sees_it = request_id
    kind = type(as_peer_sees_it)
    if kind is str or kind is int:
        return (kind, as_peer_sees_it)
    return json.dumps(as_peer_sees_it, sort_keys=True, ensure_ascii=False)


_MISSING: Final = object()

# Which members each message type must have, as bits (method, params, result, error, id),
# after OVS's jsonrpc_msg_is_valid().
_MEMBERS = ("method", "params", "result", "error", "id")
_MEMBER_SET = frozenset(_MEMBERS)
_PATTERNS = {"request": 0b11001, "notification": 0b11000, "reply": 0b00101, "error": 0b00011}


def _message_to_event(obj: Any) -> Event:
    """Validate one JSON value as a JSON-RPC message, in the order and with the words of
    OVS's jsonrpc_msg_from_json() and jsonrpc_msg_is_valid()."""
    if type(obj) is not dict:
        raise RemoteProtocolError("message is not a JSON object", "jsonrpc")
    if len(obj) == 3:  # the usual request, in short: what the checks below find valid
        method = obj.get("method")
        params = obj.get("params")
        msg_id = obj.get("id")
        if type(method) is str and type(params) is list and msg_id is not None:
            return Request(msg_id, method, params)
    method = obj.get("method", _MISSING)
    if method is not _MISSING and type(method) is not str:
        raise RemoteProtocolError("method is not a JSON string", "jsonrpc")
    params = obj.get("params")
    result = obj.get("result")
    error = obj.get("error")
    msg_id = obj.get("id")
    if not obj.keys() <= _MEMBER_SET:
        unexpected = next(key for key in obj if key not in _MEMBERS)
        raise RemoteProtocolError(f'message has unexpected member "{unexpected}"', "jsonrpc")
    if params is not None and type(params) is not list:
        raise RemoteProtocolError('"params" must be JSON array', "jsonrpc")
    if result is not None:
        kind = "reply"
    elif error is not None:
        kind = "error"
    elif msg_id is not None:
        kind = "request"
    else:
        kind = "notification"
    present = (
        (method is not _MISSING) << 4
        | (params is not None) << 3
        | (result is not None) << 2
        | (error is not None) << 1
        | (msg_id is not None)
    )
    wanted = _PATTERNS[kind]
    if present != wanted:
        for bit, member in enumerate(_MEMBERS):
            mask = 1 << (4 - bit)
            if present & mask != wanted & mask:
                must = "must" if wanted & mask else "must not"
                raise RemoteProtocolError(f'{kind} {must} have "{member}"', "jsonrpc")
    if kind == "request":
        return Request(msg_id, method, params)
    if kind == "reply":
        return Reply(msg_id, result)
    if kind == "error":
        return ErrorReply(msg_id, error)
    return Notification(method, params)


# -- the connection -------------------------------------------------------------------------


class JsonRpcConnection:
    """One JSON-RPC connection's protocol state; works the same on either side of it.

    Limits (each exceeded limit is a :class:`RemoteProtocolError` of kind ``"policy"``):

    * ``max_message_bytes``: one message, from ``{`` to ``}``. Checked as bytes arrive, so
      an endless message is refused without waiting for its end.
    * ``max_depth``: nested arrays and objects, the message object included (OVS: 1000).
    * ``max_buffer_bytes``: bytes held between :meth:`receive_data` and :meth:`next_event`
      (default: ``max_message_bytes`` + 1 MiB). A caller that drains ``next_event()`` after
      each read of at most 1 MiB never reaches it before ``max_message_bytes``.

    ``strict_unicode``: see the module docstring.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_buffer_bytes: int | None = None,
        strict_unicode: bool = True,
    ) -> None:
        if max_message_bytes < 2:
            raise ValueError("max_message_bytes must be at least 2")
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        if max_buffer_bytes is None:
            max_buffer_bytes = max_message_bytes + _BUFFER_SLACK
        if max_buffer_bytes < max_message_bytes:
            raise ValueError("max_buffer_bytes must be at least max_message_bytes")
        self.max_message_bytes = max_message_bytes
        self.max_depth = max_depth
        self.max_buffer_bytes = max_buffer_bytes
        self.strict_unicode = strict_unicode
        self._errors = "strict" if strict_unicode else "surrogateescape"
        self._encode_errors = "strict" if strict_unicode else _OVS_BYTES_HANDLER

        # Receive side. _buf holds unconsumed bytes; while a message is being scanned it
        # starts at the message's "{" and _pos is how far it has been scanned, with the open
        # brackets in _stack and _in_string telling whether _pos is inside a string.
        self._buf = bytearray()
        self._pos = 0
        #: ASCII text decoded from the buffer's front: from ``_text_pos`` on it is the
        #: buffer's first bytes (byte and character offsets agree), so the messages of a
        #: pipelined burst are decoded once, not once each (see _parse_whole). Past its end
        #: (or empty) it holds nothing.
        self._text = ""
        self._text_pos = 0
        self._in_message = False
        self._in_string = False
        self._stack = bytearray()
        self._deepest = 0
        #: how much of the unfinished message _check_unfinished has looked at
        self._checked_unfinished = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self._closed = False

        self._pending_in: Counter[Hashable] = Counter()
        self._pending_out: Counter[Hashable] = Counter()
        self._bytes_received = 0
        self._bytes_sent = 0
        self._messages_received = 0
        self._messages_sent = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet returned as events."""
        return len(self._buf)

    @property
    def peer_closed(self) -> bool:
        """receive_data(b"") was called: the peer sent EOF."""
        return self._eof

    @property
    def error(self) -> RemoteProtocolError | None:
        """The error next_event() raised, if any; it raises it again on every call."""
        return self._error

    @property
    def closed(self) -> bool:
        """close() was called: nothing more may be sent."""
        return self._closed

    def statistics(self) -> Statistics:
        return Statistics(
            bytes_received=self._bytes_received,
            bytes_sent=self._bytes_sent,
            messages_received=self._messages_received,
            messages_sent=self._messages_sent,
            bytes_buffered=len(self._buf),
            pending_requests=self._pending_in.total(),
            outstanding_requests=self._pending_out.total(),
        )

    def is_pending(self, request_id: Any) -> bool:
        """Whether a request with this id was received and not yet answered."""
        return self._pending_in[_id_key(request_id)] > 0

    def close(self) -> None:
        """Our side is done: send() refuses from now on, incoming data is ignored."""
        self._closed = True

    # -- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the peer; ``b""`` means EOF. Never parses, never raises for the
        peer's sake: problems come out of next_event()."""
        if self._closed or self._error is not None:
            return  # bytes still in flight after we gave up on the connection
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("receive_data() after EOF")
        self._bytes_received += len(data)
        if len(self._buf) + len(data) > self.max_buffer_bytes:
            self._fail(
                f"{len(self._buf) + len(data)} bytes buffered, over the limit of "
                f"{self.max_buffer_bytes} (max_buffer_bytes)",
                "policy",
            )
            return
        self._buf += data

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA, Sentinel.CLOSED]:
        """The next message from the peer, NEED_DATA, or CLOSED (after EOF, once every
        complete message has been returned). Raises RemoteProtocolError, and again on
        every later call, when the peer broke the protocol."""
        if self._error is not None:
            raise RemoteProtocolError(self._error.reason, self._error.kind)
        if self._closed:
            return CLOSED
        try:
            whole = None if self._in_message else self._parse_whole()
            if whole is not None:
                end, event = whole
            else:
                if self._buf:  # (empty: the text was all read, and tells the next burst's
                    # window: see _parse_whole)
                    self._text = ""  # the incremental path moves the buffer on its own
                end = self._find_message_end()
                if end is None:
                    self._check_unfinished()
                    return CLOSED if self._eof else NEED_DATA
                event = self._parse(end)
        except RemoteProtocolError as exc:
            self._error = exc
            self._buf.clear()
            self._text = ""
            raise
        del self._buf[:end]
        self._pos = 0
        self._in_message = False
        self._checked_unfinished = 0
        self._messages_received += 1
        if isinstance(event, Request):
            key = _id_key(event.id)  # (get: Counter's __missing__ is Python code)
            self._pending_in[key] = self._pending_in.get(key, 0) + 1
        elif isinstance(event, _REPLIES):
            key = _id_key(event.id)
            if self._pending_out[key] > 0:
                self._pending_out[key] -= 1
                if not self._pending_out[key]:
                    self._pending_out.pop(key)
        return event

    def _parse_whole(self) -> tuple[int, Event] | None:
        """The first message in one go, when the C JSON scanner reads it as it stands (its
        end is where the scanner stopped): the byte-by-byte scan below costs Python work
        per bracket, the better part of reading a small message. Only what that scan would
        accept, with the same value, is taken here (an object within the size and depth
        limits, valid UTF-8, strict_unicode); anything else (an unfinished message, an error
        to report in OVS's words) returns None and goes the incremental way."""
        buf = self._buf
        if not self.strict_unicode or not buf:
            return None
        if buf[0] != _OPEN_OBJECT:  # (a message mostly starts right where the last ended)
            start = _WHITESPACE_RE.match(buf).end()
            if start:
                del buf[:start]
                self._text_pos += start
            if not buf or buf[0] != _OPEN_OBJECT:
                return None
        # The text decoded for the message before, when this one is in it (a burst); the
        # scan fails if the message runs past its end (then it is decoded afresh).
        text, pos = self._text, self._text_pos
        obj: Any = _MISSING
        if pos < len(text):
            try:
                obj, stop = _SCAN(text, pos)
            except (ValueError, StopIteration, RecursionError):
                obj = _MISSING
        if obj is _MISSING:
            # Only a window is decoded (a burst of small messages must not cost a decode of
            # the whole buffer): the message must end within it. After ASCII text (kept,
            # and this message ran past it or starts where it ends: a burst, or the next
            # one), the larger window first: with the smaller, one message in every few
            # of a burst would fail its scan at the window's end, then be decoded again.
            windows = _WHOLE_PARSE_WINDOWS[1:] if text else _WHOLE_PARSE_WINDOWS
            self._text, pos = "", 0
            for size in windows:
                window = buf if len(buf) <= size else buf[:size]
                try:
                    text = window.decode("utf-8")
                    obj, stop = _SCAN(text, 0)
                    break
                except (ValueError, StopIteration, RecursionError):  # Unicode errors too
                    if window is buf:
                        return None
            else:
                return None
            if len(text) == len(window):
                self._text = text
        # (not ASCII: byte and character offsets differ, and the text is not reused)
        end = stop - pos if self._text else len(text[:stop].encode("utf-8"))
        self._text_pos = stop  # (next_event drops the message's ``end`` bytes)
        # Brackets, strings' included, bound the depth from above (as does the length).
        if end > self.max_message_bytes or (
                end > self.max_depth
                and buf.count(b"{", 0, end) + buf.count(b"[", 0, end) > self.max_depth):
            return None
        # (a search for one character is quicker than for two, let alone the pattern's)
        if text.find("\\", pos, stop) >= 0 and _SUSPECT_ESCAPE_RE.search(text, pos, stop):
            self._check_escaped_strings(obj)
        return end, _message_to_event(obj)

    def _fail(self, reason: str, kind: Literal["json", "jsonrpc", "policy"]) -> None:
        self._error = RemoteProtocolError(reason, kind)
        self._buf.clear()

    def _find_message_end(self) -> int | None:
        """Scan on from where the last call stopped; return the end of the first complete
        message (which then starts at offset 0), or None if it is not complete yet. Each
        byte is scanned once (an unfinished string at most three times), so the total work
        is linear in the bytes received."""
        buf = self._buf
        n = len(buf)
        if not self._in_message:
            start = _WHITESPACE_RE.match(buf).end()
            del buf[:start]
            n -= start
            if not n:
                return None
            first = buf[0]
            if first == _OPEN_ARRAY:
                raise RemoteProtocolError("message is not a JSON object", "jsonrpc")
            if first != _OPEN_OBJECT:
                if first in _TOKEN_STARTS:
                    raise RemoteProtocolError("syntax error at beginning of input")
                raise RemoteProtocolError(f"invalid character {_character(first)}")
            self._in_message = True
            self._in_string = False
            self._stack = bytearray(b"{")
            self._deepest = 1
            self._pos = 1
        pos = self._pos
        stack = self._stack
        while True:
            if self._in_string:
                end = _STRING_RE.match(buf, pos).end()
                if end == n:
                    pos = end
                    break
                byte = buf[end]
                if byte == _QUOTE:
                    self._in_string = False
                    pos = end + 1
                    continue
                if byte == _BACKSLASH:
                    if n - end <= 5 and _PARTIAL_ESCAPE_RE.fullmatch(buf, end):
                        pos = end  # an escape split across reads
                        break
                    raise RemoteProtocolError(self._bad_escape(end))
                raise RemoteProtocolError(f"U+{byte:04X} must be escaped in quoted string")
            end = _SKIP_RE.match(buf, pos).end()
            if end == n:
                pos = end
                break
            byte = buf[end]
            pos = end + 1
            if byte == _QUOTE:
                self._in_string = True
            elif byte in (_OPEN_OBJECT, _OPEN_ARRAY):
                stack.append(byte)
                if len(stack) > self.max_depth:
                    raise RemoteProtocolError(
                        f"input exceeds maximum nesting depth {self.max_depth}",
                        "json" if len(stack) > DEFAULT_MAX_DEPTH else "policy",
                    )
                if len(stack) > self._deepest:
                    self._deepest = len(stack)
            elif byte in (_CLOSE_OBJECT, _CLOSE_ARRAY):
                opener = stack.pop()
                if byte - opener != 2:  # "{" + 2 == "}", "[" + 2 == "]"
                    expected = "'}' or ','" if opener == _OPEN_OBJECT else "']' or ','"
                    raise RemoteProtocolError(f"syntax error expecting {expected}")
                if not stack:
                    self._check_size(pos)
                    return pos
            else:
                raise RemoteProtocolError(f"invalid character {_character(byte)}")
        self._pos = pos
        self._check_size(pos)
        return None

    def _check_unfinished(self) -> None:
        """Report a syntax error in a message that has not ended yet, as OVS's incremental
        parser does at once (``{"id":1{`` and then silence must not hold a connection and up
        to max_message_bytes of buffer). The scan for the message's end knows only strings
        and brackets; here the unfinished message goes through the JSON parser, and an error
        counts only where no more input could make it valid. At most its first
        ``UNFINISHED_CHECK_BYTES`` are checked, however they arrived: the verdict at EOF
        does not depend on how the bytes were chunked (an error further in is found once the
        brackets balance). Before EOF a check waits until the prefix has doubled since the
        last one (or reached the bound), so a peer trickling bytes costs linear work, not a
        re-parse per read."""
        n = min(len(self._buf), UNFINISHED_CHECK_BYTES)
        checked = self._checked_unfinished
        if not self._in_message or n <= checked:
            return
        if not self._eof and n < UNFINISHED_CHECK_BYTES and n < 2 * checked:
            return
        self._checked_unfinished = n
        text = self._buf[:n].decode("utf-8", "replace")
        if "\x00" in text:
            return  # OVS's NUL-in-number quirk: leave it to the full parse
        try:
            if self._deepest >= _DEEP:
                with _recursion_headroom(self._deepest + _DEEP):
                    _SCAN(text, 0)
            else:
                _SCAN(text, 0)
        except json.JSONDecodeError as exc:
            # The scan has checked strings and escapes already: a string error here is the
            # input ending inside one. Otherwise the input may end in a number or keyword.
            if _STRING_ERROR_RE.search(exc.msg) or _COULD_CONTINUE_RE.fullmatch(
                    text, exc.pos):
                return
            raise RemoteProtocolError(f"{exc.msg} at character {exc.pos}") from None
        except StopIteration as exc:  # scan_once's "no value here" (as in _parse)
            if isinstance(exc.value, int) and not _COULD_CONTINUE_RE.fullmatch(text, exc.value):
                raise RemoteProtocolError(
                    f"syntax error expecting value at character {exc.value}") from None
        except (ValueError, RecursionError):
            return  # no verdict without the whole message

    def _bad_escape(self, at: int) -> str:
        if self._buf[at + 1 : at + 2] == b"u":
            return "malformed \\u escape"
        return f"bad escape \\{chr(self._buf[at + 1])}"

    def _check_size(self, size: int) -> None:
        if size > self.max_message_bytes:
            raise RemoteProtocolError(
                f"message of more than {self.max_message_bytes} bytes (max_message_bytes)",
                "policy",
            )

    def _parse(self, end: int) -> Event:
        try:
            text = self._buf[:end].decode("utf-8", self._errors)
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"invalid UTF-8 at byte {exc.start} (strict_unicode)", "policy"
            ) from None
        if "\x00" in text:  # never inside a string: the scan refuses control bytes there
            text = _NUL_IN_NUMBER_RE.sub(_number_before_nul, text)
        try:
            if self._deepest >= _DEEP:
                with _recursion_headroom(self._deepest + _DEEP):
                    obj, stop = _SCAN(text, 0)
            else:
                obj, stop = _SCAN(text, 0)
        except json.JSONDecodeError as exc:
            raise RemoteProtocolError(f"{exc.msg} at character {exc.pos}") from None
        except StopIteration as exc:  # scan_once's way of saying "no value here"
            raise RemoteProtocolError(
                f"syntax error expecting value at character {exc.value}"
            ) from None
        except ValueError as exc:  # ovs_number() and _parse_constant()
            raise RemoteProtocolError(str(exc)) from None
        if stop != len(text):  # cannot happen: the scan matched the same brackets
            raise RemoteProtocolError(f"extra data at character {stop}")
        if _SUSPECT_ESCAPE_RE.search(text):
            self._check_escaped_strings(obj)
        return _message_to_event(obj)

    def _check_escaped_strings(self, obj: Any) -> None:
        """Refuse what Python's json accepts but OVS does not: \\u0000 and an unpaired
        escaped high surrogate; with strict_unicode also a lone escaped low surrogate."""
        lone_low = False
        for s in _strings(obj):
            if "\x00" in s:
                raise RemoteProtocolError("null bytes not supported in quoted strings")
            if _HIGH_SURROGATE_RE.search(s):
                raise RemoteProtocolError("malformed escaped surrogate pair")
            lone_low = lone_low or bool(self.strict_unicode and _ANY_SURROGATE_RE.search(s))
        if lone_low:
            raise RemoteProtocolError(
                "escaped lone surrogate is not valid Unicode (strict_unicode)", "policy"
            )

    # -- sending ---------------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """The bytes of one message, exactly as ovsdb-server would write them (see the
        module docstring). Raises LocalProtocolError, leaving all state unchanged, for a
        reply to an id that is not pending, a reply with result None, a value that is not
        JSON (NaN, infinity, a set, a cycle, a NUL in a string), or after close()."""
        if self._closed:
            raise LocalProtocolError("send() after close()")
        if type(event) is Reply:
            return self._send_reply(event)
        if type(event) is Notification:  # (an update: the other usual message)
            return self._send_notification(event)
        key: Hashable | None = None
        if isinstance(event, Request):
            self._check_call(event.method, event.params)
            if event.id is None:
                raise LocalProtocolError("a Request needs an id; use Notification instead")
            message: dict[str, Any] = {
                "id": event.id,
                "method": event.method,
                "params": event.params,
            }
        elif isinstance(event, Notification):  # (a subclass: the exact type went above)
            return self._send_notification(event)
        elif isinstance(event, Reply):
            return self._send_reply(event)
        elif isinstance(event, ErrorReply):
            key = self._pending_key(event.id)
            if event.error is None:
                raise LocalProtocolError("ErrorReply.error is None")
            message = {"id": event.id, "error": event.error}
        else:
            raise LocalProtocolError(f"not an event: {event!r}")
        data = self._encode(message)
        if key is not None:
            self._pending_in[key] -= 1
            if not self._pending_in[key]:
                self._pending_in.pop(key)  # (Counter.__delitem__ is Python code)
        elif isinstance(event, Request):
            key = _id_key(event.id)  # encodable: _encode() succeeded
            self._pending_out[key] = self._pending_out.get(key, 0) + 1
        self._bytes_sent += len(data)
        self._messages_sent += 1
        return data

    def _send_notification(self, event: Notification) -> bytes:
        """:meth:`send` for a :class:`Notification` (a monitor's update: the other usual
        message); the call's checks only for a method or params of another type."""
        method, params = event.method, event.params
        if type(method) is not str or type(params) is not list:
            self._check_call(method, params)
        message = {"id": None, "method": method, "params": params}
        data = (_fast_encode(message) if self.strict_unicode else None) \
            or self._encode(message)  # (_encode's first step, inline)
        self._bytes_sent += len(data)
        self._messages_sent += 1
        return data

    def _send_reply(self, event: Reply) -> bytes:
        """:meth:`send` for a :class:`Reply` (a transaction's: the usual message), the same
        checks in the same order, without its tests for the other kinds or Counter's
        Python-level methods."""
        request_id = event.id
        kind = type(request_id)
        key = (kind, request_id) if kind is str or kind is int else \
            self._pending_key(request_id)
        pending = self._pending_in
        n = pending.get(key, 0)
        if n <= 0:
            raise LocalProtocolError(f"no request with id {key} is pending")
        if event.result is None:
            raise LocalProtocolError(
                "Reply.result is None: on the wire that is a request without a method")
        message = {"id": request_id, "result": event.result, "error": None}
        data = (_fast_encode(message) if self.strict_unicode else None) \
            or self._encode(message)  # (_encode's first step, inline)
        if n == 1:
            pending.pop(key)  # (Counter.__delitem__ is Python code)
        else:
            pending[key] = n - 1
        self._bytes_sent += len(data)
        self._messages_sent += 1
        return data

    def abandon(self, request_id: Any) -> None:
        """Forget a pending request without answering it (ovsdb-server drops a transaction
        cancelled by a "cancel" notification silently)."""
        key = self._pending_key(request_id)
        self._pending_in[key] -= 1
        if not self._pending_in[key]:
            self._pending_in.pop(key)

    @staticmethod
    def _check_call(method: Any, params: Any) -> None:
        if not isinstance(method, str):
            raise LocalProtocolError(f"method must be a str, not {type(method).__name__}")
        if not isinstance(params, _SEQUENCES):
            raise LocalProtocolError(f"params must be a list, not {type(params).__name__}")

    def _pending_key(self, request_id: Any) -> Hashable:
        try:
            key = _id_key(request_id)
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"id is not JSON: {exc}") from None
        if self._pending_in[key] <= 0:
            raise LocalProtocolError(f"no request with id {key} is pending")
        return key

    def _encode(self, message: dict[str, Any]) -> bytes:
        if self.strict_unicode:
            fast = _fast_encode(message)
            if fast is not None:
                return fast
        try:
            try:
                text = _ENCODER.encode(message)
            except RecursionError:
                with _recursion_headroom(2 * self.max_depth + _DEEP):
                    text = _ENCODER.encode(message)
        except (TypeError, ValueError, RecursionError) as exc:
            raise LocalProtocolError(f"not JSON: {exc}") from None
        if "\\u0000" in text and any("\x00" in s for s in _strings(message)):
            raise LocalProtocolError("a string contains U+0000, which OVS cannot receive")
        try:
            return text.encode("utf-8", self._encode_errors)
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(
                f"a string contains a lone surrogate ({exc.reason}); strict_unicode is on"
            ) from None
