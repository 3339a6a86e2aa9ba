"""How a database's rows are laid out in the replica's pycrdt document, and read back.

One root ``Map`` per table, flat (nested maps lose every write made into the losing map when
two replicas create the same one; see docs/consistency.md). Its keys:

========================================  =================================================
``U``                                     the row's *marker*: ``[birth, version, d1, d2 ...]``
                                          with every user column's datum at insert time
``U<US>col``                              a later value of a *register* column: ``[birth, d]``
``U<US>_version``                         a later ``_version``: ``[birth, version]``
``U<US>col<US>+k``                        element ``k`` of a *set* or *map* column added (or a
                                          map value set) after insert: ``[birth]`` /
                                          ``[birth, value]``
``U<US>col<US>-k``                        element ``k`` of the marker's value removed: ``[birth]``
========================================  =================================================

``U`` is the row uuid, ``<US>`` is U+001F and ``k`` the element's key string
(:func:`atom_key`). Values are msgpack (:mod:`crdtdb.engine.binary`'s tagged form), so no
number ever reaches pycrdt's float-only number type. A ``version`` is the ``_version`` uuid
as the string readers see (36 characters, lowercase), not a uuid extension: a joining node
decodes a version per row, and a string is what it needs (from the extension: a Python call
of msgpack's hook and three ``hex()`` a row; 20 more bytes a marker). Documents written
before (envelope format 4) hold extensions there, which are still read.

A row is present when its marker is; every other key counts only while its ``birth`` equals
the marker's, so keys left over from an earlier life of the same uuid (a delete that raced
an update, a row re-inserted with an explicit uuid) never leak into a new one. A uuid drawn
at random for the insert has no earlier life: such a row is born 0, as every row of an
epoch's base is; any other insert takes its commit's random birth (never 0). An element is
present if its ``+`` key is, or if the marker holds it and no ``-`` key removed it: an add
always writes a fresh ``+`` item and a remove deletes only the items it saw, which is what
makes concurrent add and remove come out as "add wins".

A freshly inserted row costs one map entry; compaction folds later keys back into markers.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from crdtdb.engine import binary, data
from crdtdb.engine.frozen import fast_init
from crdtdb.engine.schema import ColumnSchema, TableSchema
from crdtdb.engine.types import AtomicType, BaseType, Type
from crdtdb.errors import DecodeError, OvsdbError
from crdtdb.replica import compiled

# The compiled marker loop; optional: without it the same loop runs in Python.
_compiled = compiled.load("_markers", abi=5)
#: Whether the compiled loop was built (and is of this version).
BUILT = _compiled is not None
#: Whether a joining node reads markers with the compiled loop: it was built and not turned
#: off (``CRDTDB_PURE_PYTHON=1``).
COMPILED = BUILT and not compiled.PURE_PYTHON

SEP = "\x1f"
ADD = "+"
REMOVE = "-"
VERSION = "_version"


def is_element_column(type_: Type) -> bool:
    """Set and map columns merge per element; everything else is a last-writer-wins register.

    A column that must hold at least one element is a register too: merging elements could
    leave it empty, and the view cannot invent a value.
    """
    return type_.n_max > 1 and type_.n_min == 0


# --- element keys -----------------------------------------------------------------------------

def atom_key(atype: AtomicType, atom: Any) -> str:
    """A canonical string for an atom, unique within its type: an element's map key."""
    if atype is AtomicType.STRING or atype is AtomicType.UUID:
        return atom
    if atype is AtomicType.BOOLEAN:
        return "true" if atom else "false"
    return repr(atom)  # int: decimal; float: shortest repr, which round-trips exactly


def parse_atom_key(base: BaseType, s: str) -> Any:
    """The atom :func:`atom_key` made ``s`` from; anything non-canonical is a DecodeError."""
    atype = base.type
    try:
        if atype is AtomicType.STRING:
            atom: Any = s
        elif atype is AtomicType.UUID:
            if not data.is_uuid(s) or s != s.lower():
                raise DecodeError(f"not a uuid: {s!r}")
            atom = s
        elif atype is AtomicType.BOOLEAN:
            if s not in ("true", "false"):
                raise DecodeError(f"not a boolean: {s!r}")
            atom = s == "true"
        elif atype is AtomicType.INTEGER:
            atom = int(s)
            if repr(atom) != s or not -(2**63) <= atom < 2**63:
                raise DecodeError(f"not a canonical integer: {s!r}")
        else:
            atom = float(s)
            if not math.isfinite(atom) or repr(atom) != s:
                raise DecodeError(f"not a canonical real: {s!r}")
        data.check_atom(base, atom)
    except ValueError:
        raise DecodeError(f"not a {atype.value}: {s!r}") from None
    except OvsdbError as exc:
        raise DecodeError(exc.details or exc.tag) from None
    return atom


# --- keys -------------------------------------------------------------------------------------

@fast_init  # one per remote change of a column (a frozen dataclass's __init__: ~1 us)
@dataclass(frozen=True, slots=True)
class Key:
    """A parsed non-marker key: ``column`` plus, for element keys, ``op`` and ``element``."""

    uuid: str
    column: str
    op: str | None = None
    element: str | None = None


def register_key(uuid: str, column: str) -> str:
    return f"{uuid}{SEP}{column}"


def element_key(uuid: str, column: str, op: str, element: str) -> str:
    return f"{uuid}{SEP}{column}{SEP}{op}{element}"


def parse_key(key: str) -> Key | str:
    """A marker key gives back its uuid (a ``str``); any other key a :class:`Key`."""
    parts = key.split(SEP, 2)
    if len(parts) == 1:
        return key
    if len(parts) == 2:
        return Key(parts[0], parts[1])
    rest = parts[2]
    if not rest or rest[0] not in (ADD, REMOVE):
        raise DecodeError(f"bad element key {key!r}")
    return Key(parts[0], parts[1], rest[0], rest[1:])


# --- values -----------------------------------------------------------------------------------

#: One packer for every value (``packb`` makes a Packer per call, about half its cost for
#: a marker). Its ``pack`` runs to its end without Python code (``default`` only raises),
#: so no other thread can interleave, and it empties its buffer when it raises.
_PACKER = msgpack.Packer(use_bin_type=True, default=binary.default)


def _pack(obj: Any) -> bytes:
    return _PACKER.pack(obj)  # type: ignore[no-any-return]


def pack_marker(table: TableSchema, birth: int, row: tuple) -> bytes:
    """The marker of a row: birth, version, then every user column (``None`` = default)."""
    return marker_packer(table)(birth, row)


def marker_packer(table: TableSchema) -> Callable[[int, tuple], bytes]:
    """``pack(birth, row)``: :func:`pack_marker` for ``table``, by code generated for it
    (once): the marker's list made in one display, each column's default test and
    conversion inline (a set of atoms other than uuids, or a single one, needs none), no
    walk over the columns. The same bytes as the generic loop (``_pack_marker_generic``,
    checked by tests/test_replica_encoding.py)."""
    found = _MARKER_PACKERS.get(id(table))
    if found is not None and found[0] is table:
        return found[1]
    env: dict[str, Any] = {"ExtType": msgpack.ExtType, "fromhex": bytes.fromhex,
                           "UUID_EXT": binary.UUID_EXT, "packb": _PACKER.pack,
                           "flatten": itertools.chain.from_iterable, "new": tuple.__new__}
    # (ExtType's own __new__ is Python code that checks what is known here: the tuple's,
    # as namedtuple's __new__ makes it, ~1 us less a marker with a uuid)
    uuid = 'new(ExtType, (UUID_EXT, fromhex({}.replace("-", ""))))'
    items = ["birth", "row[1][0]"]
    for col in table.ordered[2:]:
        i = col.index
        env[f"D{i}"] = col.default_datum
        t = col.type
        k_uuid = t.key.type is AtomicType.UUID
        v_uuid = t.value is not None and t.value.type is AtomicType.UUID
        if t.value is None and not k_uuid:  # the datum itself (a tuple packs as an array)
            obj = "d"
        elif t.value is None and t.n_max == 1:  # a single uuid, or none
            obj = f"([{uuid.format('d[0]')}] if d else [])"
        elif t.value is not None and not (k_uuid or v_uuid):  # [k1, v1, k2, v2, ...]
            obj = "[*flatten(d)]"
        else:
            env[f"P{i}"] = binary.datum_obj_packer(t)
            obj = f"P{i}(d)"
        items.append(f"(None if (d := row[{i}]) == D{i} else {obj})")
    lines = [
        "def pack(birth, row):",
        f"    out = [{', '.join(items)}]",
        "    while out[-1] is None:",
        "        out.pop()",
        "    return packb(out)",
    ]
    exec(compile("\n".join(lines), f"<marker_packer {table.name}>", "exec"), env)
    pack: Any = env["pack"]
    _remember(_MARKER_PACKERS, table, pack)
    return pack  # type: ignore[no-any-return]


_MARKER_PACKERS: dict[int, tuple[TableSchema, Any]] = {}

#: Code generated per table or column is kept in caches keyed by the object's id, with the
#: object (so the id stays its own); a process that parses schema after schema (a
#: simulation's runs, tests) would keep every one: past this many entries a cache starts
#: over (what it held is generated again when asked for).
MAX_CACHED_CODE = 4096


def _remember(cache: dict[int, tuple[Any, Any]], owner: Any, code: Any) -> None:
    if len(cache) >= MAX_CACHED_CODE:
        cache.clear()
    cache[id(owner)] = (owner, code)


def _pack_marker_generic(table: TableSchema, birth: int, row: tuple) -> bytes:
    """:func:`pack_marker` as a loop over the columns (the reference for the tests)."""
    out: list[Any] = [birth, row[1][0]]
    for col in table.ordered[2:]:
        d = row[col.index]
        out.append(None if d == col.default_datum else binary.datum_obj(col.type, d))
    while out[-1] is None:
        out.pop()
    return _pack(out)


def pack_register(birth: int, col: ColumnSchema, datum: tuple) -> bytes:
    return _pack([birth, binary.datum_obj(col.type, datum)])


def pack_version(birth: int, version: str) -> bytes:
    return _pack([birth, version])


_STORED_UUID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\Z")


def is_stored_uuid(s: Any) -> bool:
    """Whether ``s`` is a uuid string as stored: 8-4-4-4-12 lowercase hex digits."""
    return type(s) is str and _STORED_UUID.match(s) is not None


def all_stored_uuids(strs: list[str]) -> bool:
    """:func:`is_stored_uuid` of every string of ``strs``, each known to be 36 characters
    long, in a few passes over their concatenation instead of a match each (a join checks
    a version per row)."""
    n = len(strs)
    try:
        b = "".join(strs).encode("ascii")
    except UnicodeEncodeError:
        return False
    if len(b) != 36 * n or b.translate(None, b"0123456789abcdef-"):
        return False  # (only lowercase hex digits and dashes are left)
    dashes = b"-" * n
    return b.count(b"-") == 4 * n and all(b[i::36] == dashes for i in (8, 13, 18, 23))


def version_atom(obj: Any) -> str:
    """The ``_version`` of a marker or register as :func:`binary.unpack_fast` gives it: a
    stored uuid string, or (as written before envelope format 5) a uuid extension;
    ``binary.Refused`` for anything else."""
    if type(obj) is str:
        if _STORED_UUID.match(obj) is not None:  # (is_stored_uuid, a call less per merge)
            return obj
        raise binary.Refused
    return binary.uuid_from_slice(obj)


def pack_element(birth: int, col: ColumnSchema, value: Any = None) -> bytes:
    """An added element (sets) or map entry (maps carry their value), or a tombstone."""
    if value is None:
        return _pack([birth])
    vtype = col.type.value
    assert vtype is not None
    return _pack([birth, binary.pack_uuid(value) if vtype.type is AtomicType.UUID else value])


def _unpack_list(payload: Any, what: str) -> list:
    obj = binary.unpack(payload)
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int) \
            or isinstance(obj[0], bool):
        raise DecodeError(f"{what} must be an array starting with an integer birth")
    return obj


def marker_birth(payload: Any) -> int:
    return _unpack_list(payload, "marker")[0]


@dataclass(slots=True)
class Marker:
    birth: int
    row: list  # the full row as inserted, in TableSchema.ordered order


def unpack_marker(table: TableSchema, uuid: str, payload: Any) -> Marker:
    """A row's marker, decoded and checked against its table (DecodeError if it does not)."""
    try:
        return Marker(*marker_reader(table)(uuid, payload))
    except (binary.Refused, DecodeError):
        return _checked_marker(table, uuid, payload)  # says why, or takes it after all


def marker_reader(table: TableSchema) -> Callable[[str, Any], tuple[int, list]]:
    """``read(uuid, payload) -> (birth, row)``: :func:`unpack_marker` for a valid marker of
    ``table``, without a Python call per uuid (:func:`binary.unpack_fast`); raises
    ``binary.Refused`` or DecodeError for anything else (then decode it with
    :func:`unpack_marker`, which says why). One per table, for loops over many markers."""
    found = _READERS.get(id(table))
    if found is not None and found[0] is table:
        return found[1]
    decoders = [binary.slice_datum_decoder(c.type) for c in table.ordered]
    n_cols = len(decoders)
    default = table.default_row
    unpack = binary.unpack_fast
    refused = binary.Refused

    def read(uuid: str, payload: Any) -> tuple[int, list]:
        if type(payload) is not bytes and type(payload) is not bytearray:
            raise refused
        obj = unpack(payload)
        if type(obj) is not list or not 2 <= len(obj) <= n_cols:
            raise refused
        birth = obj[0]
        if type(birth) is not int:
            raise refused
        row = list(default)
        row[0] = (uuid,)
        row[1] = (version_atom(obj[1]),)
        for i in range(2, len(obj)):
            d = obj[i]
            if d is not None:
                row[i] = decoders[i](d)
        return birth, row
    _remember(_READERS, table, read)
    return read


_READERS: dict[int, tuple[TableSchema, Callable[[str, Any], tuple[int, list]]]] = {}


# --- every marker of a table at once -----------------------------------------------------

_unpack_tuples = functools.partial(msgpack.unpackb, ext_hook=slice, use_list=False)
_STR, _MEMO, _INT, _UUID, _OTHER = range(5)

#: Payloads unpacked by one msgpack call in :func:`unpack_each`. Their objects are all
#: alive at once: 128 markers' (~60 kB) stay in a core's cache until the loop reads them;
#: 100k Logical_Flow markers read in 0.78-0.80 s of CPU with 16 to 256 a call, 0.99 s with
#: 1024 (and 1.04 s one at a time).
_FRAMED = 128


def unpack_each(payloads: Iterable[Any]) -> Iterator[Any]:
    """``_unpack_tuples(p)`` of each payload ``p`` in order, or ``None`` where that raises
    or ``p`` is longer than ``binary.MAX_ELEMENTS`` bytes (what :func:`markers_reader`
    refuses), by one msgpack call per :data:`_FRAMED` payloads instead of one each (a
    call with keyword options: ~2k instructions of the ~9k a marker takes).

    The payloads go into one array, each followed by a separator: 16 random bytes as a
    ``bin`` value, drawn per call (a peer cannot know them). Parsed, the array must hold a
    separator at every odd place: a ``bytes`` equal to the random ones can only be parsed
    from a separator's own header, so the k-th odd member is the k-th separator and the
    k-th even one was parsed from exactly the k-th payload's bytes, as a call on that
    payload alone parses it (its lengths within it: msgpack's bounds, the payload's length
    for a single call, do not bite). Whatever fails that (a payload that is not exactly
    one value, too deep, not bytes at all, too long) is unpacked one by one.
    """
    return itertools.chain.from_iterable(_unpacked_batches(payloads))


def _unpacked_batches(payloads: Iterable[Any]) -> Iterator[Sequence[Any]]:
    nonce = os.urandom(16)
    sep = b"\xc4\x10" + nonce  # bin 8, 16 bytes
    it = iter(payloads)
    while ps := list(itertools.islice(it, _FRAMED)):
        n = len(ps)
        try:
            body = sep.join(ps)
            longest = max(map(len, ps))
            # Each a buffer of single bytes (the length of a memoryview counts its items),
            # none longer than a marker may be.
            if len(body) != sum(map(len, ps)) + len(sep) * (n - 1) or (
                    longest > binary.MAX_ELEMENTS):
                raise ValueError
            # msgpack makes room for the elements an array or map header claims before it
            # reads them, up to the limits (the whole buffer's length by default): bounded by
            # the longest payload, as one call per payload bounds each by its own, one
            # payload cannot make the batch allocate 8 bytes x the batch's length.
            objs = msgpack.unpackb(
                b"".join((b"\xdd", (2 * n).to_bytes(4, "big"), body, sep)),
                ext_hook=slice, use_list=False, max_array_len=max(2 * n, longest),
                max_map_len=longest, max_str_len=longest, max_bin_len=max(16, longest),
                max_ext_len=longest)
            if objs[1::2].count(nonce) != n:
                raise ValueError
        except Exception:  # (not bytes-like, not framed as it should be: one by one)
            yield list(map(_unpack_one, ps))
            continue
        yield objs[0::2]


def _unpack_one(payload: Any) -> Any:
    """One payload as :func:`unpack_each` gives it."""
    try:
        n = len(payload)
    except TypeError:
        return None
    if n > binary.MAX_ELEMENTS:
        return None
    try:
        return _unpack_tuples(payload)
    except Exception:
        return None


def _column_kind(type_: Type) -> int:
    """How :func:`markers_reader` reads a column of this type, at its fastest exact way."""
    key, value = type_.key, type_.value
    if value is None and type_.n_max == 1 and _unconstrained_string(key):
        return _STR
    if key.type is AtomicType.STRING and (value is None or value.type is AtomicType.STRING):
        return _MEMO
    if value is None and type_.n_max == 1 and key.enum is None:
        if key.type is AtomicType.INTEGER:
            return _INT
        if key.type is AtomicType.UUID:
            return _UUID
    return _OTHER


def _unconstrained_string(base: BaseType) -> bool:
    return base.type is AtomicType.STRING and base.enum is None and base.min_length == 0 \
        and base.max_length >= 2**32 - 1


#: Single strings longer than this are not shared (data's interning bound: matches and
#: actions rarely repeat, and hashing them costs more than it saves).
_SHARED_MAX_LEN = 64


def markers_reader(table: TableSchema, *, compiled: bool | None = None) -> Callable[
        [Sequence[str], Iterable[Any], dict[str, int]], tuple[dict[str, tuple], list[str]]]:
    """``read_all(uuids, payloads, births) -> (rows, refused)``: :func:`marker_reader` of
    many markers of ``table`` (a node joining from a full state decodes every marker of
    every table). The rows (and, into ``births``, the births other than 0) by uuid of the
    markers it reads; ``refused`` lists the uuids of the others, in order, to decode with
    :func:`unpack_marker`.

    The same rows as :func:`marker_reader`, with fewer Python calls per row: markers unpack
    into tuples, which are hashable, so a column of strings (sets, maps: most of a
    Southbound's, and their values repeat across rows) is decoded once per distinct value in
    the batch and then looked up (exact: a string equals nothing but an equal string);
    single strings, integers and uuids are checked inline; the rest go through the same
    decoders. Equal values in a batch share one tuple (as :mod:`crdtdb.engine.data`'s
    sharers would have them), except strings longer than it interns.

    The loop runs compiled (:mod:`crdtdb.replica._markers`) where that module was built and
    ``compiled`` is not False, else as Python generated for the table
    (:func:`_generated_loop`): the same results either way.
    """
    use = COMPILED if compiled is None else compiled
    cache = _BATCH_READERS[use]
    found = cache.get(id(table))
    if found is not None and found[0] is table:
        return found[1]
    if use:  # (it reads the payloads' bytes itself)
        read_each = _compiled_reader(table).read
    else:
        loop = _generated_loop(table)

        def read_each(uuids: Sequence[str], payloads: Iterable[Any], births: dict[str, int],
                      versions: list[str]) -> Any:
            return loop(uuids, unpack_each(payloads), births, versions)

    def read_all(uuids: Sequence[str], payloads: Iterable[Any], births: dict[str, int]
                 ) -> tuple[dict[str, tuple], list[str]]:
        versions: list[str] = []
        rows, refused = read_each(uuids, payloads, births, versions)
        return _versions_checked(uuids, rows, refused, births, versions)
    _remember(cache, table, read_all)
    return read_all


def _versions_checked(uuids: Sequence[str], rows: dict[str, tuple], refused: list[str],
                      births: dict[str, int], versions: list[str]
                      ) -> tuple[dict[str, tuple], list[str]]:
    """A batch's rows less those whose version string (of those the loop left to check, in
    ``versions``) is no uuid (from a peer): each is refused too, in order, and its birth
    forgotten."""
    if all_stored_uuids(versions):
        return rows, refused
    bad = {u for u, row in rows.items() if not is_stored_uuid(row[1][0])}
    for u in bad:
        del rows[u]
        births.pop(u, None)
    bad.update(refused)
    return rows, [u for u in uuids if u in bad]


def full_state_markers(update: bytes) -> dict[str, tuple[list[str], bytes]] | None:
    """Where the keys and values of a compacted full state's table maps lie in its bytes
    (the compiled module's ``root_map_entries``: table -> keys in order, their values'
    spans), for :func:`markers_span_reader`; None where it was not built, is turned off, or
    the update is of another shape (then pycrdt's maps are read)."""
    return _compiled.root_map_entries(update) if COMPILED else None


def markers_span_reader(table: TableSchema) -> Callable[
        [Sequence[str], bytes, bytes, dict[str, int]], tuple[dict[str, tuple], list[str]]]:
    """``read_spans(uuids, buffer, spans, births) -> (rows, refused)``: what
    :func:`markers_reader`'s ``read_all`` makes of the markers at ``spans`` in ``buffer``
    (as :func:`full_state_markers` finds them), read where they lie. Only compiled."""
    found = _SPAN_READERS.get(id(table))
    if found is not None and found[0] is table:
        return found[1]  # type: ignore[no-any-return]
    reader = _compiled_reader(table).read_spans

    def read_spans(uuids: Sequence[str], buffer: bytes, spans: bytes, births: dict[str, int]
                   ) -> tuple[dict[str, tuple], list[str]]:
        versions: list[str] = []
        rows, refused = reader(uuids, buffer, spans, births, versions)
        return _versions_checked(uuids, rows, refused, births, versions)
    _remember(_SPAN_READERS, table, read_spans)
    return read_spans


_SPAN_READERS: dict[int, tuple[TableSchema, Any]] = {}


_BATCH_READERS: dict[bool, dict[int, tuple[TableSchema, Any]]] = {True: {}, False: {}}


def _compiled_reader(table: TableSchema, *,
                     unpack_one: Callable[[Any], Any] | None = None) -> Any:
    """The loop of :func:`markers_reader` for ``table``, compiled (crdtdb/replica/
    _markers.pyx, which says how it reads markers from their bytes); its object path
    unpacks with ``unpack_one`` (:func:`_unpack_one`; tests pass one that fails)."""
    if _compiled is None:
        raise RuntimeError("crdtdb.replica._markers is not built")
    cols = table.ordered
    return _compiled.MarkersReader(
        [_column_kind(c.type) for c in cols], table.default_row,
        [binary.slice_datum_decoder(c.type) for c in cols],
        [c.type.key.min_integer for c in cols], [c.type.key.max_integer for c in cols],
        [data.one_atom_sharer(c.type.key) for c in cols], uuid_ext=binary.UUID_EXT,
        refused_error=binary.Refused, decode_error=DecodeError,
        uuid_from_slice=binary.uuid_from_slice, unpack_one=unpack_one or _unpack_one,
        unpack_span=_unpack_tuples, max_bytes=binary.MAX_ELEMENTS,
        plain=[_plain_strings(c.type) for c in cols],
        n_mins=[c.type.n_min for c in cols], n_maxs=[c.type.n_max for c in cols],
        store_str=data.atom_storer(AtomicType.STRING),
        pair_sharers=[data.pair_sharer(c.type.key, c.type.value) if c.type.value else None
                      for c in cols])


def _plain_strings(type_: Type) -> int:
    """1 for a set of strings, 2 for a map of strings to strings, of any string, else 0:
    what the compiled loop decodes itself where a value is new (whose datum decoder's fast
    path takes any list of such strings of the right size, keys strictly increasing)."""
    if type_.value is None:
        return 1 if type_.n_max > 1 and _unconstrained_string(type_.key) else 0
    return 2 if _unconstrained_string(type_.key) and _unconstrained_string(type_.value) \
        else 0


def _generated_loop(table: TableSchema) -> Any:
    """``read_each(uuids, objs, births, versions) -> (rows, refused)``, the loop of
    :func:`markers_reader`, as Python generated for the table (once; the source is the same
    for every table, one block per column as its kind says): each column's check inline,
    without a dispatch on its kind, a walk over the columns or a list per row. 100k
    Logical_Flow markers: 478-516 ms of CPU instead of 573-593 ms with one loop for all
    tables (whose dispatch is most of the difference; a zip over per-column tuples was
    slower still, 601-622 ms).
    """
    cols = table.ordered
    n_cols = len(cols)
    kinds = [_column_kind(c.type) for c in cols]
    decoders = [binary.slice_datum_decoder(c.type) for c in cols]
    bounds = [(c.type.key.min_integer, c.type.key.max_integer) for c in cols]
    sharers = [data.one_atom_sharer(c.type.key) for c in cols]
    default = table.default_row
    refused_error = binary.Refused
    uuid_from_slice = binary.uuid_from_slice
    uuid_ext = binary.UUID_EXT

    env: dict[str, Any] = {
        "refused_error": refused_error, "DecodeError": DecodeError,
        "uuid_from_slice": uuid_from_slice,
        "PAD": [(None,) * (n_cols - k) for k in range(n_cols + 1)]}
    d_names = "".join(f"d{i}, " for i in range(2, n_cols))
    d_names_1 = "".join(f"d{i}, " for i in range(2, n_cols - 1))
    lines = [
        # Builtins and this table's constants as keyword defaults: locals (LOAD_FAST),
        # not globals, in the loop.
        "def read_all(uuids, objs, births, versions, *, type=type, tuple=tuple, len=len,",
        "             str=str, int=int, slice=slice, "
        + "".join(f"D{i}=D{i}, dec{i}=dec{i}, " for i in range(2, n_cols))
        + "".join(f"share{i}=share{i}, " for i in range(2, n_cols) if kinds[i] == _UUID)
        + "):",
        "    rows = {}",
        "    refused = []",
        "    check_version = versions.append",
        # (a MEMO column's memo maps None, an absent value, to the default)
        *[f"    M{i} = {{None: D{i}}}" if kinds[i] == _MEMO else f"    M{i} = {{}}"
          for i in range(2, n_cols)],
        "    for uuid, obj in zip(uuids, objs, strict=True):",
        "        try:",
        # (None for a payload that did not unpack)
        "            if type(obj) is not tuple:",
        "                raise refused_error",
        "            n = len(obj)",
        # Every column, or all but the last (often absent, as a Logical_Flow's
        # controller_meter): unpacked as is; any other length padded first.
        f"            if n == {n_cols}:",
        f"                birth, version, {d_names}= obj",
        *([f"            elif n == {n_cols - 1}:",
           f"                birth, version, {d_names_1}= obj",
           f"                d{n_cols - 1} = None"] if n_cols > 2 else []),
        f"            elif 2 <= n < {n_cols}:",
        f"                birth, version, {d_names}= obj + PAD[n]",
        "            else:",
        "                raise refused_error",
        "            if type(birth) is not int:",
        "                raise refused_error",
        # A version string (its caller checks them all at once), else a uuid extension,
        # as written before envelope format 5.
        "            if type(version) is str and len(version) == 36:",
        "                version_datum = (version,)",
        "                check_version(version)",
        f"            elif type(version) is slice and version.start == {uuid_ext} \\",
        "                    and type(version.stop) is bytes and len(version.stop) == 16:",
        # Its 16 bytes as 8-4-4-4-12 hex digits: three hex() (the middle one puts in two
        # of the dashes), not five slices of one hex string (a quarter fewer instructions).
        "                vbytes = version.stop",
        "                version_datum = (f\"{vbytes[:4].hex()}-{vbytes[4:10].hex('-', 2)}-\"",
        "                                 f\"{vbytes[10:].hex()}\",)",
        "            else:",
        "                raise refused_error",
    ]
    for i in range(2, n_cols):
        env[f"D{i}"] = default[i]
        env[f"dec{i}"] = decoders[i]
        env[f"share{i}"] = sharers[i]
        d, v, m, x = f"d{i}", f"v{i}", f"M{i}", f"x{i}"
        other = f"{v} = dec{i}(list({d}) if type({d}) is tuple else {d})"
        kind = kinds[i]
        one = f"type({d}) is tuple and len({d}) == 1"
        if kind == _MEMO:
            lines += [
                "            try:",
                f"                {v} = {m}.get({d})",
                "            except TypeError:",
                f"                {v} = None",
                f"            if {v} is None:",
                f"                {v} = dec{i}(list({d}) if type({d}) is tuple else {d})",
                f"                {m}[{d}] = {v}"]
            continue
        lines += [f"            if {d} is None:", f"                {v} = D{i}"]
        if kind == _STR:
            lines += [
                f"            elif {one} and type({x} := {d}[0]) is str:",
                f"                {v} = {d} if len({x}) > {_SHARED_MAX_LEN} "
                f"else {m}.setdefault({d}, {d})"]
        elif kind == _INT:
            lo, hi = bounds[i]
            # Looked up first (most rows repeat a value): a hit is a tuple equal to a valid
            # one, of one integer in range, or of a bool or a float equal to it (checked).
            lines += [
                "            else:",
                "                try:",
                f"                    {v} = {m}.get({d})",
                "                except TypeError:",
                f"                    {v} = None",
                f"                if {v} is None or type({d}[0]) is not int:",
                f"                    if {one} and type({x} := {d}[0]) is int "
                f"and {lo} <= {x} <= {hi}:",
                f"                        {v} = {m}[{d}] = {d}",
                "                    else:",
                f"                        {other}"]
            continue
        elif kind == _UUID:
            lines += [
                f"            elif {one} and type({x} := {d}[0]) is slice "
                f"and {x}.start == {uuid_ext}:",
                f"                {v} = {m}.get({x}.stop)",
                f"                if {v} is None:",
                f"                    {v} = {m}[{x}.stop] = share{i}(uuid_from_slice({x}))"]
        lines += ["            else:", f"                {other}"]
    lines += [
        "        except (refused_error, DecodeError, TypeError):",
        "            refused.append(uuid)",
        "            continue",
        "        if birth:",
        "            births[uuid] = birth",
        "        rows[uuid] = ((uuid,), version_datum, "
        + "".join(f"v{i}, " for i in range(2, n_cols)) + ")",
        "    return rows, refused",
    ]
    exec(compile("\n".join(lines), f"<markers_reader {table.name}>", "exec"), env)
    return env["read_all"]


def _checked_marker(table: TableSchema, uuid: str, payload: Any) -> Marker:
    obj = _unpack_list(payload, "marker")
    cols = table.ordered
    if len(obj) < 2 or len(obj) > len(cols) + 1:
        raise DecodeError(f"marker of {table.name} row {uuid} has {len(obj)} members")
    row = list(table.default_row)
    row[0] = (uuid,)
    version = obj[1]
    if type(version) is str:  # (a uuid extension decodes to a UuidAtom)
        if not is_stored_uuid(version):
            raise DecodeError(f"_version of {table.name} row {uuid} is not a uuid")
    elif type(version) is not binary.UuidAtom:
        version = binary.check_atom_obj(cols[1].type.key, version)
    row[1] = (str(version),)
    decoders = _decoders(table)
    for i in range(2, len(obj)):
        if obj[i] is not None:
            row[i] = decoders[i](obj[i])
    return Marker(obj[0], row)


def _decoders(table: TableSchema) -> list[Any]:
    found = _DECODERS.get(id(table))
    if found is not None and found[0] is table:
        return found[1]
    decoders = [binary.datum_decoder(c.type) for c in table.ordered]
    _remember(_DECODERS, table, decoders)
    return decoders


_DECODERS: dict[int, tuple[TableSchema, list[Any]]] = {}


def unpack_register(col: ColumnSchema, payload: Any) -> tuple[int, tuple]:
    """A register's ``(birth, datum)``, checked against its column (DecodeError if it does
    not decode). Valid ones take :func:`register_reader`'s path: one per remote update of
    a column, where :func:`binary.unpack`'s checked options and uuid hook cost ~2 us."""
    found = _REGISTER_READERS.get(id(col))  # (register_reader's lookup, one call less)
    read = found[1] if found is not None and found[0] is col else register_reader(col)
    try:
        return read(payload)
    except (binary.Refused, DecodeError):
        return _checked_register(col, payload)  # says why, or takes it after all


def register_reader(col: ColumnSchema) -> Callable[[Any], tuple[int, tuple]]:
    """``read(payload) -> (birth, datum)``: :func:`unpack_register` for a valid register of
    ``col`` on :func:`binary.unpack_fast`'s path (as :func:`marker_reader` for markers);
    raises ``binary.Refused`` or DecodeError for anything else. One per column."""
    found = _REGISTER_READERS.get(id(col))
    if found is not None and found[0] is col:
        return found[1]
    unpackb = msgpack.unpackb
    max_bytes = binary.MAX_ELEMENTS
    refused = binary.Refused
    if col.name == VERSION:
        def decode(obj: Any) -> tuple:
            return (version_atom(obj),)
    else:
        decode = binary.slice_datum_decoder(col.type)

    def read(payload: Any) -> tuple[int, tuple]:
        if type(payload) is not bytes and type(payload) is not bytearray:
            raise refused
        # binary.unpack_fast, inline: a call less per register merged
        if len(payload) > max_bytes:
            raise refused
        try:
            obj = unpackb(payload, ext_hook=slice)
        except Exception:  # anything: _checked_register reports it precisely
            raise refused from None
        if type(obj) is not list or len(obj) != 2 or type(obj[0]) is not int:
            raise refused
        return obj[0], decode(obj[1])
    _remember(_REGISTER_READERS, col, read)
    return read


_REGISTER_READERS: dict[int, tuple[ColumnSchema, Callable[[Any], tuple[int, tuple]]]] = {}


#: :func:`register_form`'s forms (as _markers' REGISTER_*).
REGISTER_OTHER, REGISTER_INT, REGISTER_VERSION = range(3)


def register_form(col: ColumnSchema) -> tuple[ColumnSchema, int, int, int, int]:
    """``(col, form, low, high, index)``: how :func:`register_rows` reads ``col``'s
    registers (``low``/``high``: an integer column's bounds, within an int64)."""
    if col.name == VERSION:
        return col, REGISTER_VERSION, 0, -1, col.index
    if _column_kind(col.type) == _INT:
        key = col.type.key
        return (col, REGISTER_INT, max(-2**63, key.min_integer),
                min(2**63 - 1, key.max_integer), col.index)
    return col, REGISTER_OTHER, 0, -1, col.index


def register_rows(events: list[tuple[str, str, str, Any]], raws: Mapping[str, Any],
                  forms: Mapping[str, Any], extras: Mapping[str, Any],
                  births: Mapping[str, Any]) -> dict[tuple[str, str], tuple | None] | None:
    """The compiled loop of ``Replica._merge_rows`` (see _markers.register_rows), or None
    where it is not built: the caller's Python loop then reads the events."""
    if not COMPILED:
        return None
    return _compiled.register_rows(events, SEP, raws, forms, extras, births, unpack_register,
                                   DecodeError)


def _checked_register(col: ColumnSchema, payload: Any) -> tuple[int, tuple]:
    obj = _unpack_list(payload, "register")
    if len(obj) != 2:
        raise DecodeError("register must be [birth, datum]")
    if col.name == VERSION:
        version = obj[1]
        if type(version) is str:  # (a uuid extension decodes to a UuidAtom)
            if not is_stored_uuid(version):
                raise DecodeError("_version is not a uuid")
            return obj[0], (version,)
        return obj[0], (binary.check_atom_obj(col.type.key, version),)
    return obj[0], binary.datum_decoder(col.type)(obj[1])


def unpack_element(col: ColumnSchema, op: str, payload: Any) -> tuple[int, Any]:
    obj = _unpack_list(payload, "element")
    if op == ADD and col.type.value is not None:
        if len(obj) != 2:
            raise DecodeError("map element must be [birth, value]")
        return obj[0], binary.check_atom_obj(col.type.value, obj[1])
    if len(obj) != 1:
        raise DecodeError("element must be [birth]")
    return obj[0], None


# --- reading a row back -----------------------------------------------------------------------

class RowDecoder:
    """Rebuilds one table's rows from a marker and the row's other keys (pure, no pycrdt)."""

    def __init__(self, table: TableSchema):
        self.table = table
        self.columns = table.columns

    def row(self, uuid: str, marker: Any, extras: Mapping[str, Any],
            invalid: list[str] | None = None) -> tuple[int, tuple]:
        """``(birth, row)`` from the marker payload and ``{key: payload}`` of other keys.

        Keys that do not decode, name no column or carry another birth are skipped; the
        undecodable ones are listed in ``invalid``. A marker that does not decode raises.
        """
        m = unpack_marker(self.table, uuid, marker)
        return m.birth, self.with_extras(uuid, m.birth, m.row, extras, invalid)

    def with_extras(self, uuid: str, birth: int, row: list, extras: Mapping[str, Any],
                    invalid: list[str] | None = None,
                    parsed: Mapping[str, Key] | None = None) -> tuple:
        """The row :meth:`row` makes, from its marker's ``birth`` and row (a list, which
        this fills in) and ``{key: payload}`` of its other keys (``parsed``: those already
        parsed, by key)."""
        adds: dict[ColumnSchema, dict[Any, Any]] = {}
        removes: dict[ColumnSchema, set[Any]] = {}
        for key in sorted(extras):
            try:
                k = parsed.get(key) if parsed else None
                if k is None:
                    k = parse_key(key)
                if isinstance(k, str) or k.uuid != uuid:
                    raise DecodeError(f"key {key!r} does not belong to row {uuid}")
                col = self.columns.get(k.column)
                if col is None or col.index == 0:
                    raise DecodeError(f"no column {k.column!r} in table {self.table.name}")
                if k.op is None:
                    if is_element_column(col.type):
                        raise DecodeError(f"register key for element column {col.name}")
                    b, d = unpack_register(col, extras[key])
                    if b == birth:
                        row[col.index] = d
                    continue
                if not is_element_column(col.type):
                    raise DecodeError(f"element key for register column {col.name}")
                assert k.element is not None
                atom = parse_atom_key(col.type.key, k.element)
                b, value = unpack_element(col, k.op, extras[key])
                if b != birth:
                    continue
                if k.op == ADD:
                    adds.setdefault(col, {})[atom] = value
                else:
                    removes.setdefault(col, set()).add(atom)
            except DecodeError as exc:
                if invalid is not None:
                    invalid.append(f"{key!r}: {exc}")
        for col in {*adds, *removes}:
            row[col.index] = merge_elements(col.type, row[col.index], adds.get(col, {}),
                                            removes.get(col, ()))
        return tuple(row)


def merge_elements(type_: Type, base: tuple, adds: Mapping[Any, Any],
                   removes: Iterable[Any]) -> tuple:
    """The marker's elements minus tombstoned ones, plus (or overridden by) added ones.

    The result may exceed the column's maximum size; the view decides what to show.
    """
    removed = set(removes)
    if type_.value is None:
        elems = {a for a in base if a not in removed}
        elems.update(adds)
        return tuple(sorted(elems))
    pairs = {k: v for k, v in base if k not in removed}
    pairs.update(adds)
    return tuple(sorted(pairs.items()))
