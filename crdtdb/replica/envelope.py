"""Sealed updates: every Yjs update that leaves or enters a replica carries a checksum.

pycrdt applies many corrupted updates "successfully" (a flipped byte renames a key or alters a
value, see ../shared/research/pycrdt.md), so nothing reaches a document unchecked. A sealed
update names the database's schema, the compaction epoch its history belongs to (number and
base digest, see :mod:`crdtdb.replica.epoch`) and the writer's client id, and a BLAKE2b
digest covers all of it: damage in transit or on disk, an update from another database or
from a history that compaction replaced are all refused before pycrdt sees a byte.
(Authenticating peers is the transport's job: mutual TLS.)

Wire form: msgpack array ``[5, schema_digest, epoch, base, client_id, body, digest16,
codec]``; ``codec`` is ``""`` (``body`` is the update) or ``"zstd"`` (updates over 4 KiB are
compressed when that saves space: a full state shrinks several times). The digest covers the
codec and the body as sent, so nothing is inflated before it checks, and hashing the body
costs a fraction of hashing the update it inflates to (100k rows: 6.3 MB instead of 27 MB).

Zstandard at level 1 rather than zlib (format 3): on the full state of 100k Logical_Flow rows
it compresses in 38 ms instead of 162, inflates in 15-23 ms instead of 54 and gives 6.3 MB
instead of 7.8 (measured here); a node joining, a compaction round and every large diff pay
these. The frame must declare its size (at most the limit), hold one frame and nothing after
it, and inflate to exactly that size: a peer's body is never inflated past the limit.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

from crdtdb.engine.frozen import fast_init
from crdtdb.errors import CrdtdbError
from crdtdb.replica import compiled

#: 5: a marker's or register's ``_version`` is a uuid string, not an extension (see
#: :mod:`crdtdb.replica.encoding`); a node of format 4 would not read those rows.
FORMAT = 5
DIGEST_BYTES = 16
#: An update bigger than this is refused unopened (a full state of 100k rows is ~25 MB).
DEFAULT_MAX_UPDATE_BYTES = 256 * 1024 * 1024
#: Updates at least this big are sent compressed if that makes them smaller.
COMPRESS_MIN_BYTES = 4096


class ReplicaError(CrdtdbError):
    """Base of the replica's errors."""


class CorruptUpdateError(ReplicaError):
    """An update (or state vector) that fails its checks or does not apply: the peer that
    sent it misbehaved. Nothing of it reached the document."""


class EpochMismatchError(ReplicaError):
    """An update from another compaction epoch: the two sides must resync by full state."""

    def __init__(self, message: str, *, mine: Any, theirs: Any):
        super().__init__(message)
        self.mine = mine
        self.theirs = theirs


@fast_init  # (built for every merged update)
@dataclass(frozen=True, slots=True)
class Sealed:
    schema: str
    epoch: int
    client_id: int
    update: bytes
    #: The digest of the epoch's base document (empty for epoch 0).
    base: bytes = b""


#: (schema, epoch, base, client id, codec) -> a hash that has taken them in: every update of
#: a writer starts the same, and copying the hash costs less than packing and hashing its
#: prefix.
_prefixes: dict[tuple[str, int, bytes, int, str], Any] = {}


def _digest(schema: str, epoch: int, base: bytes, client_id: int, codec: str,
            body: bytes) -> bytes:
    key = (schema, epoch, base, client_id, codec)
    prefix = _prefixes.get(key)
    if prefix is None:
        if len(_prefixes) >= 4096:
            _prefixes.clear()
        prefix = hashlib.blake2b(digest_size=DIGEST_BYTES, person=b"crdtdb-update")
        prefix.update(msgpack.packb([FORMAT, schema, epoch, base, client_id, codec],
                                    use_bin_type=True))
        _prefixes[key] = prefix
    h = prefix.copy()
    h.update(body)
    return h.digest()


class _Zstd(threading.local):
    """One compressor and one decompressor per thread: making a zstd context costs 10-15 us
    (timeit), more than compressing or inflating most updates, and a context may be reused
    serially but not shared between threads."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=1)
        self.decompressor = zstandard.ZstdDecompressor()


_zstd = _Zstd()


def seal(schema: str, epoch: int, client_id: int, update: bytes, *, base: bytes = b"") -> bytes:
    body, codec = update, ""
    if len(update) >= COMPRESS_MIN_BYTES:
        packed = _zstd.compressor.compress(update)
        if len(packed) < len(update):
            body, codec = packed, "zstd"
    digest = _digest(schema, epoch, base, client_id, codec, body)
    return msgpack.packb([FORMAT, schema, epoch, base, client_id, body, digest, codec],
                         use_bin_type=True)


def _inflate(body: bytes, max_update_bytes: int) -> bytes:
    try:
        size = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise CorruptUpdateError(f"compressed update does not inflate: {exc}") from None
    if size < 0 or size > max_update_bytes:
        raise CorruptUpdateError("compressed update of unknown size, or that inflates past "
                                 f"{max_update_bytes} bytes")
    d = _zstd.decompressor.decompressobj()
    try:
        out = d.decompress(body)  # zstd stops a frame that inflates past its declared size
    except zstandard.ZstdError as exc:
        raise CorruptUpdateError(f"compressed update does not inflate: {exc}") from None
    if not d.eof or len(out) != size:
        raise CorruptUpdateError("compressed update is truncated or not its declared size")
    if d.unused_data:
        raise CorruptUpdateError("bytes after the end of a compressed update")
    return out


def open_sealed(payload: bytes | bytearray | memoryview, *,
                max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES) -> Sealed:
    """Check and unwrap a sealed update; :class:`CorruptUpdateError` if anything is off
    (another format version included: peers of one cluster run one format)."""
    schema, epoch, base, client_id, update = open_sealed_fields(payload, max_update_bytes)
    return Sealed(schema, epoch, client_id, update, base)


def open_sealed_fields(payload: bytes | bytearray | memoryview,
                       max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES
                       ) -> tuple[str, int, bytes, int, bytes]:
    """:func:`open_sealed`'s ``(schema, epoch, base, client_id, update)``, without the
    :class:`Sealed` (its ``__init__`` was ~1% of a merged update's instructions)."""
    if len(payload) > max_update_bytes + 256:
        raise CorruptUpdateError(f"sealed update of {len(payload)} bytes exceeds the limit "
                                 f"of {max_update_bytes}")
    # (compiled: the fields of the forms msgpack writes, typed, without a generic unpack
    # and the checks' calls; anything else, or nothing compiled, takes msgpack's way)
    obj = _compiled.sealed_fields(payload, max_update_bytes) \
        if _compiled is not None and type(max_update_bytes) is int else None
    if obj is None:
        try:
            obj = msgpack.unpackb(bytes(payload), raw=False, max_ext_len=0,
                                  max_bin_len=max_update_bytes, max_array_len=8,
                                  max_map_len=0)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptUpdateError(f"not a sealed update: {exc}") from None
        # (integers, not bools: True == 1 would share 1's digest prefix in _prefixes,
        # and an update naming epoch True stored one that fails 1's updates; by review)
        if not (isinstance(obj, list) and len(obj) == 8 and isinstance(obj[1], str)
                and type(obj[2]) is int and isinstance(obj[3], bytes)
                and type(obj[4]) is int and isinstance(obj[5], bytes)
                and isinstance(obj[6], bytes)):
            raise CorruptUpdateError("not a sealed update (bad shape or format version)")
    if obj[0] != FORMAT or obj[7] not in ("", "zstd"):
        raise CorruptUpdateError("not a sealed update (bad shape or format version)")
    _, schema, epoch, base, client_id, body, digest, codec = obj
    if digest != _digest(schema, epoch, base, client_id, codec, body):
        raise CorruptUpdateError(f"checksum mismatch on an update of {len(body)} bytes "
                                 f"from client {client_id}")
    return (schema, epoch, base, client_id,
            _inflate(body, max_update_bytes) if codec == "zstd" else body)


# --- state vectors (Yjs v1 encoding: varuint count, then varuint client/clock pairs) ---------

MAX_STATE_VECTOR_CLIENTS = 1_000_000


def _varuint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CorruptUpdateError("truncated or oversized varint in a state vector")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def decode_state_vector(buf: bytes) -> dict[int, int]:
    """``{client_id: clock}``; :class:`CorruptUpdateError` unless it is exactly one vector.

    One pass over the bytes without a call per varint: with thousands of writers this runs
    on every multi-writer update a replica merges.
    """
    count, pos = _varuint(buf, 0)
    if count > MAX_STATE_VECTOR_CLIENTS:
        raise CorruptUpdateError(f"state vector claims {count} clients")
    values = _varuints(buf, pos)
    if len(values) != 2 * count:
        raise CorruptUpdateError(f"state vector claims {count} clients but holds "
                                 f"{len(values) / 2:g}")
    return dict(zip(values[::2], values[1::2], strict=True))


def _varuints(buf: bytes, pos: int = 0) -> list[int]:
    """Every varuint in ``buf[pos:]``, in one pass."""
    values: list[int] = []
    n = shift = 0
    for b in memoryview(buf)[pos:]:
        n |= (b & 0x7F) << shift
        if b < 0x80:
            values.append(n)
            n = shift = 0
        else:
            shift += 7
            if shift > 63:
                raise CorruptUpdateError("oversized varint")
    if shift:
        raise CorruptUpdateError("truncated varint")
    return values


def _single_writer_span(update: bytes) -> tuple[int, int, int] | None:
    """``(client, first clock, struct count)`` of an update holding one client's items (what
    a local commit produces), read from its header; ``None`` for any other update.

    pycrdt shows items of an update that starts past the receiver's clock for that client,
    then loses track of them (a later delete comes without an event): such an update must
    wait until the gap before it is filled. Every struct spans at least one clock, so
    ``first + count`` never overestimates the writer's clock after the update (and is exact
    for the replica's map entries, one clock each).
    """
    # The four varuints read inline (_varuint's loop): this runs on every merged update,
    # where four calls of _varuint were ~4% of its instructions.
    end = len(update)
    pos = 0
    out: list[int] = []
    for _ in range(4):
        n = shift = 0
        while True:
            if pos >= end or shift > 63:
                return None
            b = update[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        if not out and n != 1:
            return None  # not exactly one client
        out.append(n)
    return out[2], out[3], out[1]



class pycrdt_errors:  # lowercase: used like the function (a @contextmanager) it was
    """pycrdt's errors on bad input as :class:`CorruptUpdateError`: "<failed>: ..." for its
    exceptions, "<subject> made pycrdt panic: ..." for a Rust panic (pyo3's PanicException,
    a BaseException that cannot be imported by name).

    A class rather than a ``@contextmanager``: it wraps a pycrdt call on every update a
    replica merges, and a generator-based one costs ~0.7 us per use."""

    __slots__ = ("failed", "subject")

    def __init__(self, failed: str, subject: str):
        self.failed = failed
        self.subject = subject

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        if exc is not None:
            self.convert(exc)
        return False

    def convert(self, exc: BaseException) -> None:
        """Raise ``exc`` as a :class:`CorruptUpdateError` if pycrdt raised it on bad input
        (else return): for an ``except`` clause on a path where a ``with`` block's three
        calls per update show."""
        if isinstance(exc, ValueError | RuntimeError | TypeError):
            raise CorruptUpdateError(f"{self.failed}: {exc}") from None
        if type(exc).__name__ == "PanicException":
            raise CorruptUpdateError(f"{self.subject} made pycrdt panic: {exc}") from None


# --- the structure of an update of many writers ------------------------------------------

#: yrs keeps 53 bits of a writer's id (it sets the bits above): ids that differ only above
#: them are one writer to it. crdtdb draws ids under 2**32.
MAX_WRITER = 2**53 - 1
#: yrs' clocks are 32 bits, but it integrates an item more than 2**31 clocks past what it
#: has of the item's writer as if nothing were missing, then panics on a delete below it,
#: keeping what it had integrated (found by review): every clock of an update that a walk
#: takes is under 2**31, so no gap is that long. (A writer reaching it within one epoch
#: would have written a log of tens of GB; compaction starts a new epoch long before.)
MAX_CLOCK = 2**31 - 1
#: Any values nested deeper than this are refused (crdtdb writes none nested).
MAX_ANY_DEPTH = 32
_U32 = 2**32
#: The kinds of content crdtdb's documents hold: deleted, and "any" values (a table map's
#: entries: its bytes and strings are "any" values too). Item info bytes whose low 4 bits
#: name them (yrs reads the content kind from those bits; 0 is a GC and 10 a skip when the
#: whole byte is). Not a text's strings (kind 4): yrs splits one inside a character of two
#: UTF-16 units and miscounts its clocks (the third review freed a live item that way).
_CONTENT_OK = frozenset((1, 8))


class _Malformed(Exception):
    pass


def _uvar(buf: bytes, pos: int) -> tuple[int, int]:
    """A varuint of at most nine bytes (what the compiled twin reads), and the position
    after it."""
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 56:
            raise _Malformed
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def _u32(buf: bytes, pos: int) -> tuple[int, int]:
    """A varuint yrs reads as a u32 (counts, clocks, lengths): under 2**32, where yrs reads
    the same value from the same bytes. Past it, yrs wraps its shifts and reads another
    number than this walk: a parent's kind read as 2**32 + 1 here is 1 to yrs, which then
    reads a name where this walk reads an id, and the two parse different structures from
    there on (found by review: a writer's second block hidden in what this walk took for
    a value)."""
    n, pos = _uvar(buf, pos)
    if n >= _U32:
        raise _Malformed
    return n, pos


def _skip_id(buf: bytes, pos: int) -> int:
    """Past an item id: a writer (at most 53 bits, as yrs keeps) and a clock."""
    writer, pos = _uvar(buf, pos)
    if writer > MAX_WRITER:
        raise _Malformed
    return _u32(buf, pos)[1]


def _skip_bytes(buf: bytes, pos: int) -> int:
    """Past a lib0 buffer: a length, then that many bytes."""
    n, pos = _u32(buf, pos)
    if n > len(buf) - pos:
        raise _Malformed
    return pos + n


def _skip_str(buf: bytes, pos: int) -> int:
    """Past a lib0 string: :func:`_skip_bytes`, of UTF-8 (yrs refuses an update holding
    other bytes in a string when it applies it: a push taken into a held burst on the
    strength of this walk would be forwarded, then dropped; found by review)."""
    if pos < len(buf) and buf[pos] < 0x80:  # (a length of one byte: most, read inline)
        n = buf[pos]
        pos += 1
    else:
        n, pos = _u32(buf, pos)
    end = pos + n
    if end > len(buf):
        raise _Malformed
    try:
        str(buf[pos:end], "utf-8")  # (strict: as Rust's from_utf8)
    except UnicodeDecodeError:
        raise _Malformed from None
    return end


def _skip_any(buf: bytes, pos: int, depth: int) -> int:
    """Past one lib0 "any" value (yrs' ``Any::decode``)."""
    if pos >= len(buf) or depth > MAX_ANY_DEPTH:
        raise _Malformed
    tag = buf[pos]
    pos += 1
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        return pos
    if tag == 125:  # a signed varint: at most ten bytes
        for k in range(10):
            if pos + k >= len(buf):
                raise _Malformed
            if buf[pos + k] < 0x80:
                return pos + k + 1
        raise _Malformed
    if tag in (124, 123, 122):  # float32, float64, bigint
        size = 4 if tag == 124 else 8
        if len(buf) - pos < size:
            raise _Malformed
        return pos + size
    if tag == 119:  # string
        return _skip_str(buf, pos)
    if tag == 116:  # buffer
        return _skip_bytes(buf, pos)
    if tag in (118, 117):  # map (key, value pairs), array
        n, pos = _u32(buf, pos)
        if n > len(buf) - pos:
            raise _Malformed
        for _ in range(n):
            if tag == 118:
                pos = _skip_str(buf, pos)
            pos = _skip_any(buf, pos, depth + 1)
        return pos
    raise _Malformed


#: What :func:`check_update` finds: a single writer's span (or None) and the ranges of
#: other writers' items the update deletes.
Survey = tuple[tuple[int, int, int] | None, list[tuple[int, int, int]]]


def _survey(update: bytes) -> str | Survey:
    """Why ``update`` is not of the structure crdtdb's documents write (a string), or what
    :func:`check_update` returns: one walk over the update."""
    buf, end = update, len(update)
    span = None
    deletes: list[tuple[int, int, int]] = []
    try:
        n_writers, pos = _u32(buf, 0)
        if n_writers > end:
            raise _Malformed
        ends: dict[int, int] = {}  # writer -> the clock past its block
        for _ in range(n_writers):
            n_structs, pos = _u32(buf, pos)
            writer, pos = _uvar(buf, pos)
            clock, pos = _u32(buf, pos)  # (its first)
            if writer > MAX_WRITER:
                return f"writer id {writer} over 53 bits"
            if writer in ends:
                return f"writer {writer} twice"
            if clock > MAX_CLOCK:
                return f"writer {writer}'s clocks past 31 bits"
            if n_writers == 1:
                span = (writer, clock, n_structs)
            if n_structs > end - pos:
                raise _Malformed
            for _ in range(n_structs):
                if pos >= end:
                    raise _Malformed
                info = buf[pos]
                pos += 1
                if info in (0, 10):  # a GC or a skip: a length
                    length, pos = _u32(buf, pos)
                    clock += length
                    if clock > MAX_CLOCK:
                        return f"writer {writer}'s clocks past 31 bits"
                    continue
                if info & 0x80:  # origin
                    pos = _skip_id(buf, pos)
                if info & 0x40:  # right origin
                    pos = _skip_id(buf, pos)
                if not info & 0xC0:
                    parent, pos = _u32(buf, pos)  # (1: a root, by name; 0: an item)
                    if parent == 1:  # (its name)
                        pos = _skip_str(buf, pos)
                    elif parent == 0:
                        pos = _skip_id(buf, pos)
                    else:
                        raise _Malformed
                    if info & 0x20:  # (a key)
                        pos = _skip_str(buf, pos)
                kind = info & 0x0F
                if kind not in _CONTENT_OK:
                    return f"content of kind {kind}"
                if kind == 1:  # deleted: a length
                    length, pos = _u32(buf, pos)
                else:  # values, one clock each
                    length, pos = _u32(buf, pos)
                    if length > end - pos:
                        raise _Malformed
                    for _ in range(length):
                        pos = _skip_any(buf, pos, 0)
                # yrs counts a writer's clocks in 32 bits and wraps: a block that ran past
                # them would put its later items at clocks its first ones have (a writer
                # twice, within one block: found by review, with a skip of 2**32 - 1).
                clock += length
                if clock > MAX_CLOCK:
                    return f"writer {writer}'s clocks past 31 bits"
            ends[writer] = clock
        n_deleting, pos = _u32(buf, pos)
        if n_deleting > end - pos:
            raise _Malformed
        owners: set[int] = set()
        for _ in range(n_deleting):
            owner, pos = _uvar(buf, pos)
            if owner > MAX_WRITER:
                raise _Malformed
            # yrs keeps the last of a writer's lists (a map): ranges read here would be
            # ranges it ignores.
            if owner in owners:
                return f"deletes of writer {owner} twice"
            owners.add(owner)
            n_ranges, pos = _u32(buf, pos)
            if n_ranges > end - pos:
                raise _Malformed
            for _ in range(n_ranges):
                start, pos = _u32(buf, pos)
                length, pos = _u32(buf, pos)
                if start + length > MAX_CLOCK:
                    return f"deletes of writer {owner} past 31-bit clocks"
                if not length:
                    continue
                own_end = ends.get(owner)
                if own_end is not None and start + length > own_end:
                    # Items of a writer past its block: yrs would keep the delete pending
                    # and leave it out of every diff (found by review; a writer deletes
                    # only items it has, and a diff carries a writer's items to its clock).
                    return f"deletes of writer {owner}'s items past its clock"
                if span is not None and owner != span[0]:
                    deletes.append((owner, start, length))
    except _Malformed:
        return "truncated or malformed"
    if pos != end:
        return "bytes after the delete set"
    return span, deletes


def check_update(update: bytes) -> Survey:
    """:class:`CorruptUpdateError` unless ``update`` is of the structure crdtdb's documents
    write: each writer's block once, writer ids within 53 bits and every count, clock and
    length under 2**32 (where yrs reads what this walk reads, see :func:`_u32`) and every
    clock under 2**31 (:data:`MAX_CLOCK`), items holding values of table maps (or deleted),
    every string UTF-8, a delete set (each writer's ranges once; a writer's own deletes
    within its block, where the update has one) and nothing after it. Returns ``(span,
    deletes)``: the span :func:`single_writer_span` reads for an update of one writer
    (else None) and, for such an update, ``[(writer, first clock, length)]`` of the other
    writers' items it deletes (its own earlier items are covered by its clock; empty
    ranges left out).

    Every update a replica takes (~1% of a merged push's instructions, compiled). pycrdt
    0.14 takes an update holding one writer twice (or two ids that are one writer to yrs,
    or one writer's block running past 32-bit clocks, which yrs wraps), puts items at the
    same clocks and then crashes the process (SIGSEGV) reading such an item: a join would
    crash, and a restart would crash again replaying it from the log. The digest of a
    sealed update does not stop it (its sender digested it); this does.

    The deletes are why a replica waits for an update (see ``Replica._ready``): yrs keeps a
    delete of an item it does not have yet *pending*, outside its block store, and
    ``Doc.get_update`` leaves it out while the deleting writer's clock already counts it;
    a peer pulling a diff from such a document would reach the same state vector without
    the delete, and nothing would repair it. (They were read through pycrdt's
    ``get_update`` before this walk read them: ~6k instructions of each merged update.)"""
    found = _compiled.survey(update) if _compiled is not None else _survey(update)
    if type(found) is str:
        raise CorruptUpdateError(f"not an update crdtdb writes: {found}")
    return found


# The compiled twins of the header reads above; optional, as _markers.
_compiled = compiled.load("_envelope", abi=4)
#: Whether the compiled header reads were built (and are of this version).
BUILT = _compiled is not None
#: Whether they are used: built, and not turned off (``CRDTDB_PURE_PYTHON=1``).
COMPILED = BUILT and not compiled.PURE_PYTHON
if not COMPILED:
    _compiled = None

#: ``(writer, first clock, struct count)`` of a single writer's update, else ``None``: see
#: :func:`_single_writer_span` (compiled where built).
single_writer_span = _compiled.single_writer_span if _compiled is not None else \
    _single_writer_span
