"""Atoms and datums: OVSDB's values, their JSON wire form, constraints and canonical order.

Representation (chosen for speed and memory in pure Python; the column's :class:`Type` says how to
read it, so values carry no tags):

* an atom is a Python ``int``, ``float``, ``bool``, ``str`` or, for uuids, the lowercase
  36-character ``str`` (lexicographic order of that string is OVS's uuid order);
* a datum is a ``tuple``: for a set (a scalar is a one-element set) the sorted, distinct atoms;
  for a map the ``(key, value)`` pairs sorted by key.

Sorting atoms with Python's ``<`` gives OVSDB's canonical order for every atomic type (strings
compare by code point, which is UTF-8 byte order).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from crdtdb.engine import ovsjson
from crdtdb.engine.ovsjson import Kind
from crdtdb.engine.types import DBL_MAX, AtomicType, BaseType, Type
from crdtdb.errors import OvsdbError

Atom = Any
Datum = tuple

_HEX = "[0-9a-fA-F]"
_UUID_RE = re.compile(f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}\\Z")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def is_uuid(s: Any) -> bool:
    return isinstance(s, str) and _UUID_RE.match(s) is not None


def syntax_error(json_value: Any, details: str, tag: str | None = None) -> OvsdbError:
    """``ovsdb_syntax_error``: the offending JSON goes in the ``syntax`` member."""
    return OvsdbError(tag or "syntax error", details, ovsjson.to_string(json_value))


# --- named uuids --------------------------------------------------------------------------------

@dataclass(slots=True)
class Symbol:
    """A ``named-uuid`` of one transaction (``ovsdb_symbol``)."""

    uuid: str
    created: bool = False
    strong_ref: bool = False
    weak_ref: bool = False


class SymbolTable:
    """The named-uuid symbols of one transaction; a reference may come before its insert."""

    def __init__(self, new_uuid: Callable[[], str]):
        self._new_uuid = new_uuid
        self.symbols: dict[str, Symbol] = {}

    def insert(self, name: str) -> Symbol:
        sym = self.symbols.get(name)
        if sym is None:
            sym = self.symbols[name] = Symbol(self._new_uuid())
        return sym


# --- atoms --------------------------------------------------------------------------------------

def _unwrap(value: Any, name: str, kind: Kind) -> Any:
    if (ovsjson.kind(value) is Kind.ARRAY and len(value) == 2
            and isinstance(value[0], str) and value[0] == name
            and ovsjson.kind(value[1]) is kind):
        return value[1]
    raise syntax_error(value, f'expected ["{name}", <{kind.english}>]')


def _parse_uuid(value: Any, base: BaseType, symtab: SymbolTable | None) -> str:
    try:
        s = _unwrap(value, "uuid", Kind.STRING)
    except OvsdbError as err0:
        if symtab is not None:
            try:
                name = _unwrap(value, "named-uuid", Kind.STRING)
            except OvsdbError:
                raise err0 from None
            if not ovsjson.is_id(name):
                raise syntax_error(value, "named-uuid string is not a valid <id>") from None
            sym = symtab.insert(name)
            if base.ref_table is not None:
                if base.is_strong_ref:
                    sym.strong_ref = True
                else:
                    sym.weak_ref = True
            return sym.uuid
        raise
    if not is_uuid(s):
        raise syntax_error(value, f'"{s}" is not a valid UUID')
    return s.lower()


def parse_atom(base: BaseType, value: Any, symtab: SymbolTable | None = None) -> Atom:
    """``ovsdb_atom_from_json__``: JSON to atom, without checking constraints."""
    atype = base.type
    k = ovsjson.kind(value)
    if atype is AtomicType.STRING:
        if k is Kind.STRING:
            return value
    elif atype is AtomicType.INTEGER:
        if k is Kind.INTEGER:
            return ovsjson.as_integer(value)
    elif atype is AtomicType.REAL:
        if k is Kind.INTEGER or (k is Kind.REAL and -DBL_MAX <= value <= DBL_MAX):
            return float(value)
    elif atype is AtomicType.BOOLEAN:
        if k is Kind.TRUE or k is Kind.FALSE:
            return value
    else:
        return _parse_uuid(value, base, symtab)
    raise syntax_error(value, f"expected {atype.value}")


def needs_quotes(s: str) -> bool:
    """``string_needs_quotes``: whether a string atom is quoted in messages."""
    if not s or not (s[0].isascii() and (s[0].isalpha() or s[0] == "_")):
        return True
    for ch in s[1:]:
        if not (ch.isascii() and (ch.isalnum() or ch in "_-.")):
            return True
    return s in ("true", "false") or is_uuid(s)


def atom_to_string(atype: AtomicType, atom: Atom) -> str:
    """``ovsdb_atom_to_string``, the form used in error details."""
    if atype is AtomicType.STRING:
        return ovsjson.to_string(atom) if needs_quotes(atom) else atom
    if atype is AtomicType.REAL:
        return ovsjson.format_real(atom)
    if atype is AtomicType.BOOLEAN:
        return "true" if atom else "false"
    return str(atom)


def datum_to_string(type_: Type, datum: Datum) -> str:
    """``ovsdb_datum_to_string``: ``[a, b]``, ``{k=v}``, or a bare atom for max-1 columns."""
    if type_.value is not None:
        kt, vt = type_.key.type, type_.value.type
        body = ", ".join(f"{atom_to_string(kt, k)}={atom_to_string(vt, v)}" for k, v in datum)
        return "{" + body + "}" if type_.n_max > 1 or not datum else body
    kt = type_.key.type
    body = ", ".join(atom_to_string(kt, a) for a in datum)
    return "[" + body + "]" if type_.n_max > 1 or not datum else body


def check_atom(base: BaseType, atom: Atom) -> None:
    """``ovsdb_atom_check_constraints`` (reference targets are checked at commit)."""
    if base.enum is not None:
        if atom not in base.enum:
            allowed = ", ".join(atom_to_string(base.type, a) for a in base.enum)
            raise OvsdbError("constraint violation",
                             f"{atom_to_string(base.type, atom)} is not one of the allowed "
                             f"values ([{allowed}])")
        return
    atype = base.type
    if atype is AtomicType.INTEGER:
        lo, hi = base.min_integer, base.max_integer
        if lo <= atom <= hi:
            return
        if lo != ovsjson.INT64_MIN:
            if hi != ovsjson.INT64_MAX:
                msg = f"{atom} is not in the valid range {lo} to {hi} (inclusive)"
            else:
                msg = f"{atom} is less than minimum allowed value {lo}"
        else:
            msg = f"{atom} is greater than maximum allowed value {hi}"
        raise OvsdbError("constraint violation", msg)
    if atype is AtomicType.REAL:
        lo_r, hi_r = base.min_real, base.max_real
        if lo_r <= atom <= hi_r:
            return
        f = ovsjson.format_real
        if lo_r != -DBL_MAX:
            if hi_r != DBL_MAX:
                msg = f"{f(atom)} is not in the valid range {f(lo_r)} to {f(hi_r)} (inclusive)"
            else:
                msg = f"{f(atom)} is less than minimum allowed value {f(lo_r)}"
        else:
            msg = f"{f(atom)} is greater than maximum allowed value {f(hi_r)}"
        raise OvsdbError("constraint violation", msg)
    if atype is AtomicType.STRING:
        n = len(atom)
        if n < base.min_length:
            raise OvsdbError("constraint violation",
                             f'"{atom}" length {n} is less than minimum allowed length '
                             f"{base.min_length}")
        if n > base.max_length:
            raise OvsdbError("constraint violation",
                             f'"{atom}" length {n} is greater than maximum allowed length '
                             f"{base.max_length}")


def _has_constraints(base: BaseType) -> bool:
    return (base.enum is not None or base.type in (AtomicType.INTEGER, AtomicType.REAL)
            or (base.type is AtomicType.STRING and (base.min_length or base.max_length
                                                    != 4294967295)))


def check_datum(type_: Type, datum: Datum) -> None:
    """``ovsdb_datum_check_constraints``: every key, then every value."""
    if type_.value is None:
        if _has_constraints(type_.key):
            for a in datum:
                check_atom(type_.key, a)
        return
    if _has_constraints(type_.key):
        for k, _ in datum:
            check_atom(type_.key, k)
    if _has_constraints(type_.value):
        for _, v in datum:
            check_atom(type_.value, v)


def atom_from_json(base: BaseType, value: Any, symtab: SymbolTable | None = None) -> Atom:
    atom = parse_atom(base, value, symtab)
    check_atom(base, atom)
    return atom


# --- datums -------------------------------------------------------------------------------------

#: Returned by fast parsers: "not a plain valid value, take the full path".
SLOW = object()


_intern = sys.intern
#: Strings up to this long are interned as they are parsed (see atom_sharer).
_INTERN_MAX_LEN = 64


def _share_str(v: str) -> str:
    return _intern(v) if len(v) <= _INTERN_MAX_LEN else v


def _stored_uuid(a: str) -> str:
    return _intern(str(a))  # the binary codec's uuids are a str subclass until stored


def atom_storer(t: AtomicType) -> Callable[[Any], Any] | None:
    """What to apply to a valid atom of type ``t`` before it is stored: one object for equal
    short strings and uuids (uuids as plain ``str``). A Southbound repeats them across rows
    (the datapath every flow points to, map keys like ``source``, a few dozen ``actions``):
    100k Logical_Flow rows hold ~9% less memory. ``None`` for the other atomic types
    (nothing to do)."""
    if t is AtomicType.UUID:
        return _stored_uuid
    if t is AtomicType.STRING:
        return _share_str
    return None


def _as_is(a: Any) -> Any:
    return a


# Equal small tuples as one object: the one-atom datums of scalar columns and the pairs of
# maps. A Southbound repeats them across rows (each flow's pipeline, table, priority and
# datapath; ``("source", "northd.c:...")``); as separate tuples they held ~20% of the Python
# memory of 100k Logical_Flow rows. One cache per atomic type (pair of types), as ``1``,
# ``1.0`` and ``True`` are equal dict keys. Bounded: all caches together hold at most
# _SHARED_TUPLES_MAX tuples, and the largest is emptied when they reach it (so values that
# churned away are not kept alive for ever; tuples already shared stay shared).
_SHARED_TUPLES_MAX = 1 << 15
_tuple_caches: dict[Any, dict[Any, tuple]] = {}
_shared_count = 0
_SHAREABLE = (AtomicType.INTEGER, AtomicType.BOOLEAN, AtomicType.STRING, AtomicType.UUID)


def _tuple_cache(kind: Any) -> dict[Any, tuple]:
    return _tuple_caches.setdefault(kind, {})


def _remember(cache: dict[Any, tuple], key: Any, value: tuple) -> tuple:
    global _shared_count
    if _shared_count >= _SHARED_TUPLES_MAX:
        # Empty the largest cache: the one that churns (a bulk load's 65536 distinct
        # priorities, say), not the few values of the others that keep repeating.
        max(_tuple_caches.values(), key=len).clear()
        _shared_count = sum(map(len, _tuple_caches.values()))
    cache[key] = value
    _shared_count += 1
    return value


def one_atom_sharer(base: BaseType) -> Callable[[Any], tuple]:
    """The one-atom datum for a valid atom ``a``, as stored (see :func:`atom_storer`), one
    object per equal value (see above), except for reals (nothing worth it) and long
    strings. Normalising happens on a miss only: a hit is one dict lookup."""
    storer = atom_storer(base.type)
    stored = storer or _as_is
    if base.type not in _SHAREABLE:
        return lambda a: (stored(a),)
    cache = _tuple_cache(base.type)
    get = cache.get

    def one(a: Any) -> tuple:
        t = get(a)
        if t is None:
            a = stored(a)
            t = _remember(cache, a, (a,))
        return t

    def one_as_is(a: Any) -> tuple:  # one() for atoms stored as they are: a call less
        t = get(a)
        return _remember(cache, a, (a,)) if t is None else t
    if storer is None:
        return one_as_is
    if base.type is not AtomicType.STRING:
        return one

    def one_str(a: str) -> tuple:
        # Checked before hashing it: long strings (matches, actions) rarely repeat.
        if len(a) > _INTERN_MAX_LEN:
            return (a,)
        t = get(a)  # one()'s body again: a call less per string decoded
        if t is None:
            a = _share_str(a)
            t = _remember(cache, a, (a,))
        return t
    return one_str


def pair_sharer(key: BaseType, value: BaseType) -> Callable[[Any, Any], tuple]:
    """The map pair ``(k, v)`` of valid atoms, as stored, one object per equal pair (see
    above), except where a real or a long string is in it."""
    k_stored = atom_storer(key.type) or _as_is
    v_stored = atom_storer(value.type) or _as_is
    if key.type not in _SHAREABLE or value.type not in _SHAREABLE:
        return lambda k, v: (k_stored(k), v_stored(v))
    cache = _tuple_cache((key.type, value.type))
    get = cache.get
    k_str = key.type is AtomicType.STRING
    v_str = value.type is AtomicType.STRING

    def pair(k: Any, v: Any) -> tuple:
        if (k_str and len(k) > _INTERN_MAX_LEN) or (v_str and len(v) > _INTERN_MAX_LEN):
            return (k_stored(k), v_stored(v))
        p = (k, v)
        t = get(p)
        if t is None:
            p = (k_stored(k), v_stored(v))
            t = _remember(cache, p, p)
        return t
    return pair


def _fast_atom_parser(base: BaseType) -> Callable[[Any], Any]:
    """A parser for the common, valid case of an atom; ``SLOW`` means "use the full path".

    It accepts only values that are unambiguously valid (exact Python type, within
    constraints), so every error, and every odd spelling (``1.0`` for an integer, a
    ``named-uuid``), still goes through :func:`parse_atom` and :func:`check_atom`.
    """
    t = base.type
    if t is AtomicType.STRING:
        if base.enum is not None:
            canonical = {str(e): str(e) for e in base.enum}
            return lambda v: canonical.get(v, SLOW) if type(v) is str else SLOW
        if base.min_length or base.max_length != 4294967295:
            lo, hi = base.min_length, base.max_length
            return lambda v: _share_str(v) if type(v) is str and lo <= len(v) <= hi \
                else SLOW
        return lambda v: _share_str(v) if type(v) is str else SLOW
    if t is AtomicType.INTEGER:
        if base.enum is not None:
            allowed_i = frozenset(base.enum)
            return lambda v: v if type(v) is int and v in allowed_i else SLOW
        lo_i, hi_i = base.min_integer, base.max_integer
        return lambda v: v if type(v) is int and lo_i <= v <= hi_i else SLOW
    if t is AtomicType.REAL:
        if base.enum is not None:
            return lambda v: SLOW
        lo_r, hi_r = base.min_real, base.max_real
        return lambda v: v if type(v) is float and lo_r <= v <= hi_r else SLOW
    if t is AtomicType.BOOLEAN:
        if base.enum is not None:
            return lambda v: SLOW
        return lambda v: v if v is True or v is False else SLOW
    if base.enum is not None:
        return lambda v: SLOW
    match = _UUID_RE.match

    def fast_uuid(v: Any) -> Any:
        if (type(v) is list and len(v) == 2 and v[0] == "uuid" and type(v[1]) is str
                and match(v[1])):
            return _intern(v[1].lower())
        return SLOW
    return fast_uuid


def _fast_datum_parser(type_: Type) -> Callable[[Any], Any]:
    """A specialised parser where one exists (a bare atom of a set or scalar column, a
    string-to-string map), else the general one. Parsing the JSON of 100k inserted rows
    spends most of its time in these calls: the specialised ones check and share a value
    inline instead of through two or three nested calls. Both accept exactly the same values
    and return equal datums."""
    general = _general_fast_parser(type_)
    if type_.value is None:
        return _bare_atom_parser(type_.key, general) or general
    if (_plain_string(type_.key) and _plain_string(type_.value)):
        return _string_map_parser(type_, general)
    return general


def _plain_string(base: BaseType) -> bool:
    return (base.type is AtomicType.STRING and base.enum is None and not base.min_length
            and base.max_length == 4294967295)


def _bare_atom_parser(base: BaseType,
                      general: Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    """For a set (or scalar) column: a bare valid atom becomes its shared one-atom datum
    (what ``general`` returns for it, see :func:`one_atom_sharer`); anything else (a
    ``["set", ...]``, an out-of-range or odd value) goes to ``general``."""
    t = base.type
    if t is AtomicType.STRING:
        if base.enum is not None:
            enum_datums = {str(e): (_share_str(str(e)),) for e in base.enum}
            enum_get = enum_datums.get

            def enum_str(v: Any) -> Any:
                if type(v) is str:
                    d = enum_get(v)
                    if d is not None:
                        return d
                return general(v)
            return enum_str
        lo, hi = base.min_length, base.max_length
        cache = _tuple_cache(t)
        get = cache.get

        def string(v: Any) -> Any:
            if type(v) is str and lo <= len(v) <= hi:
                if len(v) > _INTERN_MAX_LEN:
                    return (v,)
                d = get(v)
                if d is None:
                    v = _intern(v)
                    d = _remember(cache, v, (v,))
                return d
            return general(v)
        return string
    if t is AtomicType.INTEGER:
        if base.enum is not None:
            return None
        lo_i, hi_i = base.min_integer, base.max_integer
        cache = _tuple_cache(t)
        get = cache.get

        def integer(v: Any) -> Any:
            if type(v) is int and lo_i <= v <= hi_i:
                d = get(v)
                if d is None:
                    d = _remember(cache, v, (v,))
                return d
            return general(v)
        return integer
    if t is AtomicType.UUID:
        if base.enum is not None:
            return None
        cache = _tuple_cache(t)
        get = cache.get
        match = _UUID_RE.match

        def uuid(v: Any) -> Any:
            if type(v) is list and len(v) == 2 and v[0] == "uuid":
                s = v[1]
                if type(s) is str:
                    # The cache's keys are valid uuids: a hit needs no regular expression
                    # (a row's reference to a datapath, say; the match was 10% of a bulk
                    # insert's time).
                    d = get(s)
                    if d is not None:
                        return d
                    if match(s):
                        s = _intern(s.lower())
                        return get(s) or _remember(cache, s, (s,))
            return general(v)
        return uuid
    return None


def _string_map_parser(type_: Type, general: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """:func:`_general_fast_parser`'s map case for a map of unconstrained strings to
    unconstrained strings (``external_ids``, ``options``...), pairs checked and shared
    inline (see :func:`pair_sharer`)."""
    n_min, n_max = type_.n_min, type_.n_max
    cache = _tuple_cache((AtomicType.STRING, AtomicType.STRING))
    get = cache.get
    longest = _INTERN_MAX_LEN

    def string_map(v: Any) -> Any:
        if not (type(v) is list and len(v) == 2 and v[0] == "map" and type(v[1]) is list):
            return SLOW
        inner = v[1]
        n = len(inner)
        if not n_min <= n <= n_max:
            return SLOW
        pairs: list[tuple[str, str]] = []
        append = pairs.append
        for e in inner:
            if type(e) is not list:
                return SLOW
            try:
                # The cache holds only pairs of short strings: a pair equal to one is one
                # (JSON has no other values equal to strings), with no more checks.
                p = get(tuple(e))
            except TypeError:  # an unhashable atom: not a pair of strings
                return SLOW
            if p is None:
                if len(e) != 2:
                    return SLOW
                k, x = e
                if type(k) is not str or type(x) is not str:
                    return SLOW
                if len(k) > longest or len(x) > longest:
                    p = (_share_str(k), _share_str(x))
                else:
                    p = (_intern(k), _intern(x))
                    p = _remember(cache, p, p)
            append(p)
        if n == 2:  # the usual size, without a sort and a loop
            a, b = pairs
            if a[0] < b[0]:
                return (a, b)
            if b[0] < a[0]:
                return (b, a)
            return SLOW  # the same key twice
        if n > 2:
            pairs.sort()  # keys are strings: the order of the keys, unless two are equal
            for i in range(1, n):
                if pairs[i][0] == pairs[i - 1][0]:
                    return SLOW
        return tuple(pairs)
    return string_map


def _general_fast_parser(type_: Type) -> Callable[[Any], Any]:
    key = _fast_atom_parser(type_.key)
    n_min, n_max = type_.n_min, type_.n_max
    if type_.value is None:
        one = one_atom_sharer(type_.key)
        def fast_set(v: Any) -> Any:
            if type(v) is list and v and v[0] == "set":
                if len(v) != 2 or type(v[1]) is not list:
                    return SLOW
                inner = v[1]
                if not n_min <= len(inner) <= n_max:
                    return SLOW
                atoms = [key(e) for e in inner]
                if SLOW in atoms:
                    return SLOW
                atoms.sort()
                for i in range(1, len(atoms)):
                    if atoms[i] == atoms[i - 1]:
                        return SLOW
                return tuple(atoms)
            a = key(v)
            return SLOW if a is SLOW else one(a)
        return fast_set
    val = _fast_atom_parser(type_.value)
    share_pair = pair_sharer(type_.key, type_.value)

    def fast_map(v: Any) -> Any:
        if not (type(v) is list and len(v) == 2 and v[0] == "map" and type(v[1]) is list):
            return SLOW
        inner = v[1]
        if not n_min <= len(inner) <= n_max:
            return SLOW
        pairs = []
        for e in inner:
            if type(e) is not list or len(e) != 2:
                return SLOW
            k, x = key(e[0]), val(e[1])
            if k is SLOW or x is SLOW:
                return SLOW
            pairs.append(share_pair(k, x))
        pairs.sort(key=_pair_key)
        for i in range(1, len(pairs)):
            if pairs[i][0] == pairs[i - 1][0]:
                return SLOW
        return tuple(pairs)
    return fast_map


def fast_parser(type_: Type) -> Callable[[Any], Any]:
    """``type_``'s fast parser: a datum for plain valid JSON, else :data:`SLOW`."""
    fast = type_.fast_parser
    if fast is None:
        fast = _fast_datum_parser(type_)
        object.__setattr__(type_, "fast_parser", fast)
    return fast


def datum_from_json(type_: Type, value: Any, symtab: SymbolTable | None = None) -> Datum:
    """``ovsdb_datum_from_json``: parse, check constraints, sort, reject duplicates."""
    datum = fast_parser(type_)(value)
    if datum is not SLOW:
        return datum
    return _datum_from_json(type_, value, symtab)


def _datum_from_json(type_: Type, value: Any, symtab: SymbolTable | None) -> Datum:
    is_map = type_.value is not None
    if is_map or (ovsjson.kind(value) is Kind.ARRAY and value and isinstance(value[0], str)
                  and value[0] == "set"):
        cls = "map" if is_map else "set"
        inner = _unwrap(value, cls, Kind.ARRAY)
        n = len(inner)
        if n < type_.n_min or n > type_.n_max:
            if type_.n_min == 1 and type_.n_max == 1:
                raise syntax_error(value, f"{cls} must have exactly one member but {n} are "
                                          "present")
            raise syntax_error(value, f"{cls} must have {type_.n_min} to {type_.n_max} members "
                                      f"but {n} are present")
        if is_map:
            assert type_.value is not None
            pairs = []
            for elem in inner:
                if ovsjson.kind(elem) is not Kind.ARRAY or len(elem) != 2:
                    raise syntax_error(elem, "expected 2-element array")
                k = atom_from_json(type_.key, elem[0], symtab)
                v = atom_from_json(type_.value, elem[1], symtab)
                pairs.append((k, v))
            pairs.sort(key=_pair_key)
            for i in range(1, len(pairs)):
                if pairs[i][0] == pairs[i - 1][0]:
                    raise OvsdbError("ovsdb error", "map contains duplicate key")
            return tuple(pairs)
        atoms = sorted(atom_from_json(type_.key, e, symtab) for e in inner)
        for i in range(1, len(atoms)):
            if atoms[i] == atoms[i - 1]:
                raise OvsdbError("ovsdb error", "set contains duplicate")
        return tuple(atoms)
    return (atom_from_json(type_.key, value, symtab),)


def _pair_key(pair: tuple) -> Any:
    return pair[0]


def atom_to_json(atype: AtomicType, atom: Atom) -> Any:
    if atype is AtomicType.UUID:
        return ["uuid", atom]
    return atom


def datum_to_json(type_: Type, datum: Datum) -> Any:
    """``ovsdb_datum_to_json``: maps always wrapped, one-element sets bare."""
    return to_json_fn(type_)(datum)


def to_json_fn(type_: Type) -> Callable[[Datum], Any]:
    """A converter to JSON for datums of this type, built once per type: monitor dumps call
    it for every column of every row."""
    fn = type_._variants.get("to_json")
    if fn is not None:
        return fn
    k_uuid = type_.key.type is AtomicType.UUID
    if type_.value is not None:
        if k_uuid or type_.value.type is AtomicType.UUID:
            kt, vt = type_.key.type, type_.value.type
            fn = lambda d: ["map", [[atom_to_json(kt, k), atom_to_json(vt, v)]  # noqa: E731
                                    for k, v in d]]
        else:
            fn = lambda d: ["map", [[k, v] for k, v in d]]  # noqa: E731
    elif k_uuid:
        fn = lambda d: (["uuid", d[0]] if len(d) == 1  # noqa: E731
                        else ["set", [["uuid", a] for a in d]])
    elif type_.is_scalar:
        fn = lambda d: d[0]  # noqa: E731
    else:
        fn = lambda d: d[0] if len(d) == 1 else ["set", list(d)]  # noqa: E731
    type_._variants["to_json"] = fn
    return fn


def sort_datum(type_: Type, elems: Iterable) -> Datum:
    """Canonical form of a collection that is known to be duplicate-free."""
    if type_.value is not None:
        return tuple(sorted(elems, key=_pair_key))
    return tuple(sorted(elems))


def datum_keys(type_: Type, datum: Datum) -> Iterable[Atom]:
    return (p[0] for p in datum) if type_.value is not None else datum


def union(type_: Type, a: Datum, b: Datum) -> Datum:
    """``ovsdb_datum_union``: add ``b``'s elements; for maps, existing keys are kept."""
    if type_.value is not None:
        merged = dict(a)
        for k, v in b:
            merged.setdefault(k, v)
        return tuple(sorted(merged.items(), key=_pair_key))
    return tuple(sorted(set(a).union(b)))


def subtract(type_: Type, a: Datum, b: Datum, b_is_map: bool) -> Datum:
    """``ovsdb_datum_subtract``: remove ``b`` from ``a``.

    For a map, ``b`` is either a set of keys (remove those keys) or a map (remove exact pairs).
    """
    if type_.value is not None:
        if b_is_map:
            drop_pairs = set(b)
            return tuple(p for p in a if p not in drop_pairs)
        drop_keys = set(b)
        return tuple(p for p in a if p[0] not in drop_keys)
    drop = set(b)
    return tuple(x for x in a if x not in drop)


def compare_datums(a: Datum, b: Datum) -> int:
    """``ovsdb_datum_compare_3way``: by size first, then element-wise."""
    if len(a) != len(b):
        return -1 if len(a) < len(b) else 1
    if a == b:
        return 0
    if a and isinstance(a[0], tuple):
        # Maps: OVS compares the key arrays first, then the value arrays.
        ka, kb = tuple(p[0] for p in a), tuple(p[0] for p in b)
        if ka != kb:
            return -1 if ka < kb else 1
        a, b = tuple(p[1] for p in a), tuple(p[1] for p in b)
    return -1 if a < b else 1
