"""Compact binary encoding of datums and rows, with explicit type tags (msgpack).

This is the only form in which the replication layer stores or ships OVSDB values: pycrdt keeps
numbers as doubles and cannot hold integers beyond 64 bits, so values are never handed to it
raw. msgpack's own tags keep integers, doubles, booleans and strings apart; uuids are an
extension type holding their 16 bytes.

Decoding validates everything against the column type (atomic type, canonical order, no
duplicates, size range, constraints) and raises :class:`~crdtdb.errors.DecodeError`: bytes
from a peer are untrusted.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from crdtdb.engine import data
from crdtdb.engine.schema import TableSchema
from crdtdb.engine.types import AtomicType, BaseType, Type
from crdtdb.errors import DecodeError, OvsdbError

UUID_EXT = 1
#: Bounds applied while decoding, whatever the payload claims.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_ELEMENTS = 1_000_000


def default(obj: Any) -> Any:
    raise TypeError(f"cannot encode {type(obj).__name__}")


def pack_uuid(atom: str) -> msgpack.ExtType:
    return msgpack.ExtType(UUID_EXT, bytes.fromhex(atom.replace("-", "")))


def _packer(type_: Type) -> Any:
    """How to turn a datum of this type into msgpack-ready objects, built once per type.

    Tuples pack as arrays, so sets of non-uuid atoms need no conversion at all.
    """
    packer = type_._variants.get("packer")
    if packer is not None:
        return packer
    k_uuid = type_.key.type is AtomicType.UUID
    if type_.value is None:
        packer = ((lambda d: [pack_uuid(a) for a in d]) if k_uuid else (lambda d: d))
    else:
        v_uuid = type_.value.type is AtomicType.UUID
        if not (k_uuid or v_uuid):
            packer = lambda d: [x for pair in d for x in pair]  # noqa: E731
        else:
            kp = pack_uuid if k_uuid else (lambda a: a)
            vp = pack_uuid if v_uuid else (lambda a: a)

            def packer(d: data.Datum) -> list:
                out: list = []
                for k, v in d:
                    out.append(kp(k))
                    out.append(vp(v))
                return out
    type_._variants["packer"] = packer
    return packer


def datum_obj_packer(type_: Type) -> Any:
    """:func:`_packer` of ``type_``, or None where the datum is its own msgpack-ready form
    (a set of atoms other than uuids)."""
    if type_.value is None and type_.key.type is not AtomicType.UUID:
        return None
    return _packer(type_)


def datum_obj(type_: Type, datum: data.Datum) -> Any:
    """The msgpack-ready form of a datum (for callers that pack it inside a larger value)."""
    return _packer(type_)(datum)



def encode_datum(type_: Type, datum: data.Datum) -> bytes:
    """A set as an array of atoms; a map as a flat ``[k1, v1, k2, v2, ...]`` array."""
    return msgpack.packb(datum_obj(type_, datum), use_bin_type=True, default=default)


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != UUID_EXT or len(payload) != 16:
        raise DecodeError(f"unknown extension type {code} ({len(payload)} bytes)")
    h = payload.hex()
    return _Uuid(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")


class _Uuid(str):
    """A decoded uuid atom, kept apart from strings until it is type-checked."""


UuidAtom = _Uuid


def unpack(payload: bytes) -> Any:
    """msgpack-decode untrusted bytes under this module's bounds (uuids come back tagged)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        return msgpack.unpackb(bytes(payload), raw=False, ext_hook=_ext_hook,
                               strict_map_key=True, max_array_len=MAX_ELEMENTS * 2,
                               max_map_len=MAX_ELEMENTS, max_str_len=MAX_PAYLOAD_BYTES,
                               max_bin_len=MAX_PAYLOAD_BYTES, max_ext_len=16)
    except DecodeError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"not a valid msgpack value: {exc}") from None


def check_atom_obj(base: BaseType, obj: Any) -> Any:
    """The atom an unpacked object stands for, checked against ``base``."""
    atype = base.type
    if atype is AtomicType.UUID:
        ok = isinstance(obj, _Uuid)
        atom = str(obj)
    elif atype is AtomicType.STRING:
        ok = isinstance(obj, str) and not isinstance(obj, _Uuid)
        atom = obj
    elif atype is AtomicType.INTEGER:
        ok = isinstance(obj, int) and not isinstance(obj, bool) \
            and -(2**63) <= obj < 2**63
        atom = obj
    elif atype is AtomicType.REAL:
        ok = isinstance(obj, float) and math.isfinite(obj)
        atom = obj
    else:
        ok = isinstance(obj, bool)
        atom = obj
    if not ok:
        raise DecodeError(f"expected {atype.value}, got {type(obj).__name__}")
    try:
        data.check_atom(base, atom)
    except OvsdbError as exc:
        raise DecodeError(exc.details or exc.tag) from None
    return atom


def datum_from_obj(type_: Type, obj: Any) -> data.Datum:
    """The datum an unpacked object stands for, checked against ``type_``."""
    if not isinstance(obj, list):
        raise DecodeError("datum must be an array")
    if type_.value is None:
        atoms = tuple(check_atom_obj(type_.key, a) for a in obj)
        elems: tuple = atoms
        keys: tuple = atoms
    else:
        if len(obj) % 2:
            raise DecodeError("map datum must have an even number of elements")
        elems = tuple((check_atom_obj(type_.key, obj[i]), check_atom_obj(type_.value, obj[i + 1]))
                      for i in range(0, len(obj), 2))
        keys = tuple(k for k, _ in elems)
    if not type_.n_min <= len(elems) <= type_.n_max:
        raise DecodeError(f"{len(elems)} elements where {type_.english()} was expected")
    for i in range(1, len(keys)):
        if not keys[i - 1] < keys[i]:
            raise DecodeError("elements are not in canonical order or are duplicated")
    return elems


def decode_datum(type_: Type, payload: bytes) -> data.Datum:
    return datum_from_obj(type_, unpack(payload))


def encode_row(table: TableSchema, row: tuple) -> bytes:
    """A row as a map from column name to datum (names make it robust to added columns)."""
    return msgpack.packb({c.name: datum_obj(c.type, row[c.index]) for c in table.ordered},
                         use_bin_type=True, default=default)


def decode_row(table: TableSchema, payload: bytes) -> tuple:
    """Columns missing from the payload get their defaults; unknown columns are an error."""
    obj = unpack(payload)
    if not isinstance(obj, dict):
        raise DecodeError("row must be a map")
    row = list(table.default_row)
    for name, value in obj.items():
        col = table.columns.get(name)
        if col is None:
            raise DecodeError(f"no column {name!r} in table {table.name}")
        row[col.index] = datum_from_obj(col.type, value)
    if len(row[0]) != 1:
        raise DecodeError("row has no _uuid")
    return tuple(row)


def _fast_atom_ok(base: BaseType) -> Any:
    """A cheap predicate that accepts only valid atoms of ``base`` (``None``: no shortcut).

    Rejected objects go through :func:`check_atom_obj`, which raises the precise error.
    """
    atype = base.type
    if base.enum is not None:
        allowed = frozenset(base.enum)
        if atype is AtomicType.UUID:
            return None
        if atype is AtomicType.STRING:
            return lambda a: type(a) is str and a in allowed
        if atype is AtomicType.INTEGER:
            return lambda a: type(a) is int and a in allowed
        return None
    if atype is AtomicType.STRING:
        lo, hi = base.min_length, base.max_length
        if lo == 0 and hi >= 2**32 - 1:
            return lambda a: type(a) is str
        return lambda a: type(a) is str and lo <= len(a) <= hi
    if atype is AtomicType.INTEGER:
        lo_i, hi_i = base.min_integer, base.max_integer
        return lambda a: type(a) is int and lo_i <= a <= hi_i
    if atype is AtomicType.REAL:
        lo_r, hi_r = base.min_real, base.max_real
        return lambda a: type(a) is float and lo_r <= a <= hi_r
    if atype is AtomicType.BOOLEAN:
        return lambda a: type(a) is bool
    return lambda a: type(a) is _Uuid


def datum_decoder(type_: Type) -> Any:
    """A function doing what :func:`datum_from_obj` does for this type, faster on valid input
    (the common case: bytes checked by an envelope digest); built once per type."""
    cached = type_._variants.get("decoder")
    if cached is not None:
        return cached
    kok = _fast_atom_ok(type_.key)
    vok = _fast_atom_ok(type_.value) if type_.value is not None else None
    n_min, n_max = type_.n_min, type_.n_max
    k_store = data.atom_storer(type_.key.type)
    one = data.one_atom_sharer(type_.key)
    slow = datum_from_obj

    if kok is None or (type_.value is not None and vok is None):
        def decode(obj: Any) -> data.Datum:
            return slow(type_, obj)
    elif type_.value is None and n_max == 1:
        decode = _scalar_decoder(type_, kok, one)
    elif type_.value is None:
        def decode(obj: Any) -> data.Datum:
            if type(obj) is not list or not n_min <= len(obj) <= n_max:
                return slow(type_, obj)
            if len(obj) == 1:
                a = obj[0]
                return one(a) if kok(a) else slow(type_, obj)
            for a in obj:
                if not kok(a):
                    return slow(type_, obj)
            atoms = tuple(obj) if k_store is None else tuple(map(k_store, obj))
            for i in range(1, len(atoms)):
                if not atoms[i - 1] < atoms[i]:
                    return slow(type_, obj)
            return atoms
    else:
        share_pair = data.pair_sharer(type_.key, type_.value)

        def decode(obj: Any) -> data.Datum:
            if type(obj) is not list or len(obj) % 2 or not n_min <= len(obj) // 2 <= n_max:
                return slow(type_, obj)
            pairs = []
            prev = None
            for i in range(0, len(obj), 2):
                k = obj[i]
                v = obj[i + 1]
                if not kok(k) or not vok(v) or (i and not prev < k):
                    return slow(type_, obj)
                prev = k
                pairs.append(share_pair(k, v))
            return tuple(pairs)
    type_._variants["decoder"] = decode
    return decode


def _plain_string(base: BaseType | None) -> bool:
    """A string type with no constraint: any ``str`` is a valid atom."""
    return base is not None and base.type is AtomicType.STRING and base.enum is None and \
        base.min_length == 0 and base.max_length >= 2**32 - 1


def _scalar_decoder(type_: Type, kok: Any, one: Any) -> Any:
    """:func:`datum_decoder` for a column of at most one atom, with the common atom checks
    written out (a call less per column decoded)."""
    base = type_.key
    n_min = type_.n_min
    slow = datum_from_obj
    if _plain_string(base):
        def decode(obj: Any) -> data.Datum:
            if type(obj) is list and len(obj) == 1 and type(obj[0]) is str:
                return one(obj[0])
            return () if type(obj) is list and not obj and not n_min else slow(type_, obj)
    elif base.type is AtomicType.INTEGER and base.enum is None:
        lo, hi = base.min_integer, base.max_integer

        def decode(obj: Any) -> data.Datum:
            if type(obj) is list and len(obj) == 1:
                a = obj[0]
                if type(a) is int and lo <= a <= hi:
                    return one(a)
            return () if type(obj) is list and not obj and not n_min else slow(type_, obj)
    else:
        def decode(obj: Any) -> data.Datum:
            if type(obj) is list and len(obj) == 1 and kok(obj[0]):
                return one(obj[0])
            return () if type(obj) is list and not obj and not n_min else slow(type_, obj)
    return decode


# --- the fast path for trusted-looking payloads ------------------------------------------------
#
# ``msgpack.unpackb(payload, ext_hook=slice)`` hands every extension value over as
# ``slice(code, data)`` without calling back into Python: three times faster than
# :func:`unpack` on a replica's row markers, where a uuid per row (its ``_version``) and
# usually one per reference are extensions. A slice is never a valid atom by itself, so the
# decoders below turn the well-formed ones (code 1, 16 bytes) into uuids and refuse the rest;
# a caller that meets a refusal decodes the payload again with :func:`unpack`, which raises
# the precise error.


class Refused(Exception):
    """The fast path does not take this object: decode it with :func:`unpack` instead."""


def unpack_fast(payload: bytes | bytearray) -> Any:
    """msgpack-decode with uuids as ``slice(1, 16 bytes)``; raises :class:`Refused` for
    anything msgpack itself rejects or past :data:`MAX_ELEMENTS` bytes (msgpack then bounds
    every length by the payload's, so never more loosely than :func:`unpack`)."""
    if len(payload) > MAX_ELEMENTS:
        raise Refused
    try:
        return msgpack.unpackb(payload, ext_hook=slice)
    except Exception:  # anything: unpack() reports it precisely
        raise Refused from None


def uuid_from_slice(obj: Any) -> str:
    """The uuid string of a well-formed ``slice`` extension; :class:`Refused` otherwise."""
    if type(obj) is not slice or obj.start != UUID_EXT or len(obj.stop) != 16:
        raise Refused
    h = obj.stop.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Recently decoded reference uuids by their 16 bytes: most rows of a table point to a few
#: rows (every logical flow to its datapath). Emptied when full.
_uuid_memo: dict[bytes, tuple] = {}
_UUID_MEMO_MAX = 4096


def slice_datum_decoder(type_: Type) -> Any:
    """:func:`datum_decoder` for objects from :func:`unpack_fast`: the same datum for every
    object the checked path accepts (uuids as slices, not :data:`UuidAtom`); raises
    :class:`Refused` or :class:`~crdtdb.errors.DecodeError` for the others (decode again
    with :func:`unpack` to know which error). Built once per type."""
    cached = type_._variants.get("slice_decoder")
    if cached is not None:
        return cached
    plain = datum_decoder(type_)
    k_uuid = type_.key.type is AtomicType.UUID
    v_uuid = type_.value is not None and type_.value.type is AtomicType.UUID
    if not (k_uuid or v_uuid):
        # No uuid atom: a slice anywhere is an atom of the wrong type, which the checked
        # decoder refuses (DecodeError), as it refuses UuidAtom.
        decode = plain
    elif type_.value is None and type_.n_max == 1 and type_.key.enum is None:
        one = data.one_atom_sharer(type_.key)
        memo = _uuid_memo

        def decode(obj: Any) -> data.Datum:
            if type(obj) is not list or len(obj) != 1:
                raise Refused
            a = obj[0]
            if type(a) is not slice:
                raise Refused
            t = memo.get(a.stop)
            if t is None:
                t = one(uuid_from_slice(a))
                if len(memo) >= _UUID_MEMO_MAX:
                    memo.clear()
                memo[a.stop] = t
            elif a.start != UUID_EXT:
                raise Refused
            return t
    else:
        def as_atom(a: Any, is_uuid: bool) -> Any:
            if is_uuid:
                return _Uuid(uuid_from_slice(a))
            if type(a) is slice:
                raise Refused
            return a

        def decode(obj: Any) -> data.Datum:
            if type(obj) is not list:
                raise Refused
            if type_.value is None:
                return plain([as_atom(a, k_uuid) for a in obj])
            return plain([as_atom(a, v_uuid if i % 2 else k_uuid) for i, a in enumerate(obj)])
    type_._variants["slice_decoder"] = decode
    return decode
