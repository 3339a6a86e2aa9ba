"""OVSDB column types (RFC 7047 section 3.2): atomic types, base types with constraints, and
key/value/min/max types.

A type knows how to describe itself in English exactly as ovsdb-server does, because those words
end up in error details that clients and operators read.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from crdtdb.engine import ovsjson
from crdtdb.engine.ovshash import ovs_object
from crdtdb.engine.ovsjson import INT64_MAX, INT64_MIN, Kind
from crdtdb.errors import SchemaError

#: ``"max": "unlimited"``; OVS stores it as UINT_MAX and prints that number in messages.
UNLIMITED = 4294967295
DBL_MAX = 1.7976931348623157e308


class AtomicType(enum.Enum):
    INTEGER = "integer"
    REAL = "real"
    BOOLEAN = "boolean"
    STRING = "string"
    UUID = "uuid"

    def default_atom(self) -> Any:
        return _DEFAULT_ATOMS[self]


_DEFAULT_ATOMS: dict[AtomicType, Any] = {
    AtomicType.INTEGER: 0,
    AtomicType.REAL: 0.0,
    AtomicType.BOOLEAN: False,
    AtomicType.STRING: "",
    AtomicType.UUID: "00000000-0000-0000-0000-000000000000",
}


class RefType(enum.Enum):
    STRONG = "strong"
    WEAK = "weak"


@dataclass(frozen=True, slots=True)
class BaseType:
    """An atomic type plus its constraints.

    ``enum`` is a sorted tuple of allowed atoms. Integer and real bounds default to the full range
    so that ``min_integer != INT64_MIN`` means "a minimum was given", as in OVS.
    """

    type: AtomicType
    enum: tuple[Any, ...] | None = None
    min_integer: int = INT64_MIN
    max_integer: int = INT64_MAX
    min_real: float = -DBL_MAX
    max_real: float = DBL_MAX
    min_length: int = 0
    max_length: int = UNLIMITED
    ref_table: str | None = None
    ref_type: RefType = RefType.STRONG

    @property
    def is_strong_ref(self) -> bool:
        return self.ref_table is not None and self.ref_type is RefType.STRONG

    @property
    def is_weak_ref(self) -> bool:
        return self.ref_table is not None and self.ref_type is RefType.WEAK

    def unconstrained(self) -> BaseType:
        return BaseType(self.type)

    def to_json(self) -> Any:
        obj: dict[str, Any] = {"type": self.type.value}
        if self.enum is not None:
            elems = list(self.enum)
            if self.type is AtomicType.UUID:
                elems = [["uuid", u] for u in elems]
            obj["enum"] = elems[0] if len(elems) == 1 else ["set", elems]
        if self.type is AtomicType.INTEGER:
            if self.min_integer != INT64_MIN:
                obj["minInteger"] = self.min_integer
            if self.max_integer != INT64_MAX:
                obj["maxInteger"] = self.max_integer
        elif self.type is AtomicType.REAL:
            if self.min_real != -DBL_MAX:
                obj["minReal"] = self.min_real
            if self.max_real != DBL_MAX:
                obj["maxReal"] = self.max_real
        elif self.type is AtomicType.STRING:
            if self.min_length:
                obj["minLength"] = self.min_length
            if self.max_length != UNLIMITED:
                obj["maxLength"] = self.max_length
        elif self.type is AtomicType.UUID and self.ref_table is not None:
            obj["refTable"] = self.ref_table
            if self.ref_type is not RefType.STRONG:
                obj["refType"] = self.ref_type.value
        return obj["type"] if len(obj) == 1 else ovs_object(obj.items())


@dataclass(frozen=True, slots=True)
class Type:
    """A column type: ``key``, optional ``value`` (a map), and the ``n_min``..``n_max`` range."""

    key: BaseType
    value: BaseType | None = None
    n_min: int = 1
    n_max: int = 1
    #: Cached flags; computed in ``__post_init__``.
    is_map: bool = field(init=False, compare=False)
    is_scalar: bool = field(init=False, compare=False)
    is_optional_scalar: bool = field(init=False, compare=False)
    #: Fast JSON parser for this type, built on first use by ``data.datum_from_json``.
    fast_parser: Any = field(init=False, compare=False, repr=False, default=None)
    _variants: dict = field(init=False, compare=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_map", self.value is not None)
        object.__setattr__(self, "is_scalar",
                           self.value is None and self.n_min == 1 and self.n_max == 1)
        object.__setattr__(self, "is_optional_scalar",
                           self.value is None and self.n_min == 0 and self.n_max == 1)

    @property
    def is_set(self) -> bool:
        return self.value is None and not self.is_scalar

    def with_n(self, n_min: int | None = None, n_max: int | None = None) -> Type:
        """This type with other size limits (cached: conditions and mutations ask often)."""
        n_min = self.n_min if n_min is None else n_min
        n_max = self.n_max if n_max is None else n_max
        if n_min == self.n_min and n_max == self.n_max:
            return self
        t = self._variants.get((n_min, n_max))
        if t is None:
            t = self._variants[(n_min, n_max)] = Type(self.key, self.value, n_min, n_max)
        return t

    def scalar_argument(self) -> Type:
        """The type of an arithmetic mutator's argument: one key atom, constraints cleared."""
        t = self._variants.get("scalar")
        if t is None:
            t = self._variants["scalar"] = Type(self.key.unconstrained())
        return t

    def keys_only(self) -> Type:
        """A set of this map's keys, any size (a map ``delete`` by keys)."""
        t = self._variants.get("keys")
        if t is None:
            t = self._variants["keys"] = Type(self.key, None, 0, UNLIMITED)
        return t

    def english(self) -> str:
        """``ovsdb_type_to_english``: "string", "set of 1 or more uuids", "map of (string, ...)"."""
        key = self.key.type.value
        if self.is_scalar:
            return key
        s = "map" if self.is_map else "set"
        if self.n_max == UNLIMITED:
            s += f" of {self.n_min} or more" if self.n_min else " of"
        elif self.n_min:
            s += f" of {self.n_min} to {self.n_max}"
        else:
            s += f" of up to {self.n_max}"
        if self.is_map:
            assert self.value is not None
            return f"{s} ({key}, {self.value.type.value}) pairs"
        return f"{s} {key}s"

    def default_datum(self) -> tuple:
        """The value a column has when a row is inserted without it."""
        if self.n_min == 0:
            return ()
        if self.value is None:
            return (self.key.type.default_atom(),)
        return ((self.key.type.default_atom(), self.value.type.default_atom()),)

    def to_json(self) -> Any:
        key = self.key.to_json()
        if self.is_scalar and isinstance(key, str):
            return key
        obj: dict[str, Any] = {"key": key}
        if self.value is not None:
            obj["value"] = self.value.to_json()
        if self.n_min != 1:
            obj["min"] = self.n_min
        if self.n_max != 1:
            obj["max"] = "unlimited" if self.n_max == UNLIMITED else self.n_max
        return ovs_object(obj.items())


UUID_TYPE = Type(BaseType(AtomicType.UUID))


# --- schema parsing -------------------------------------------------------------------------

def _check_members(obj: dict, allowed: set[str], what: str, table: str | None,
                   column: str | None) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise SchemaError(f"{what}: unexpected member(s) {', '.join(map(repr, extra))}",
                          table=table, column=column)


def _atomic_type(value: Any, table: str | None, column: str | None) -> AtomicType:
    if not isinstance(value, str):
        raise SchemaError("atomic-type expected", table=table, column=column)
    try:
        return AtomicType(value)
    except ValueError:
        raise SchemaError(f"\"{value}\" is not an atomic-type",
                          table=table, column=column) from None


def _uint(obj: dict, member: str, table: str | None, column: str | None) -> int | None:
    if member not in obj:
        return None
    v = obj[member]
    if ovsjson.kind(v) is not Kind.INTEGER or not 0 <= ovsjson.as_integer(v) <= UNLIMITED:
        raise SchemaError(f"{member} out of valid range 0 to {UNLIMITED}", table=table,
                          column=column)
    return ovsjson.as_integer(v)


def base_type_from_json(obj: Any, *, table: str | None = None,
                        column: str | None = None) -> BaseType:
    if isinstance(obj, str):
        return BaseType(_atomic_type(obj, table, column))
    if not isinstance(obj, dict):
        raise SchemaError("ovsdb type expected (a string or an object)", table=table,
                          column=column)
    if "type" not in obj:
        raise SchemaError("base type: required 'type' member is missing", table=table,
                          column=column)
    atype = _atomic_type(obj["type"], table, column)
    kwargs: dict[str, Any] = {}
    allowed = {"type", "enum"}
    if "enum" in obj:
        from crdtdb.engine.data import datum_from_json  # data depends on types

        enum_type = Type(BaseType(atype), None, 0, UNLIMITED)
        try:
            kwargs["enum"] = datum_from_json(enum_type, obj["enum"])
        except Exception as exc:
            raise SchemaError(f"bad enum: {exc}", table=table, column=column) from None
    elif atype is AtomicType.INTEGER:
        allowed |= {"minInteger", "maxInteger"}
        for member, attr in (("minInteger", "min_integer"), ("maxInteger", "max_integer")):
            if member in obj:
                if ovsjson.kind(obj[member]) is not Kind.INTEGER:
                    raise SchemaError(f"{member} must be an integer", table=table,
                                      column=column)
                kwargs[attr] = ovsjson.as_integer(obj[member])
        if kwargs.get("min_integer", INT64_MIN) > kwargs.get("max_integer", INT64_MAX):
            raise SchemaError("minInteger exceeds maxInteger", table=table, column=column)
    elif atype is AtomicType.REAL:
        allowed |= {"minReal", "maxReal"}
        for member, attr in (("minReal", "min_real"), ("maxReal", "max_real")):
            if member in obj:
                if ovsjson.kind(obj[member]) not in (Kind.INTEGER, Kind.REAL):
                    raise SchemaError(f"{member} must be a number", table=table, column=column)
                kwargs[attr] = float(obj[member])
                if not math.isfinite(kwargs[attr]):
                    raise SchemaError(f"{member} must be finite", table=table, column=column)
        if kwargs.get("min_real", -DBL_MAX) > kwargs.get("max_real", DBL_MAX):
            raise SchemaError("minReal exceeds maxReal", table=table, column=column)
    elif atype is AtomicType.STRING:
        allowed |= {"minLength", "maxLength"}
        lo = _uint(obj, "minLength", table, column)
        hi = _uint(obj, "maxLength", table, column)
        if lo is not None:
            kwargs["min_length"] = lo
        if hi is not None:
            kwargs["max_length"] = hi
        if kwargs.get("min_length", 0) > kwargs.get("max_length", UNLIMITED):
            raise SchemaError("minLength exceeds maxLength", table=table, column=column)
    elif atype is AtomicType.UUID:
        allowed |= {"refTable", "refType"}
        if "refTable" in obj:
            ref = obj["refTable"]
            if not isinstance(ref, str) or not ovsjson.is_id(ref):
                raise SchemaError("refTable must be a table name", table=table, column=column)
            kwargs["ref_table"] = ref
            if "refType" in obj:
                try:
                    kwargs["ref_type"] = RefType(obj["refType"])
                except (ValueError, TypeError):
                    raise SchemaError(
                        f"refType must be \"strong\" or \"weak\" (not {obj['refType']!r})",
                        table=table, column=column) from None
        elif "refType" in obj:
            raise SchemaError("refType without refTable", table=table, column=column)
    _check_members(obj, allowed, "base type", table, column)
    return BaseType(atype, **kwargs)


def type_from_json(obj: Any, *, table: str | None = None, column: str | None = None) -> Type:
    if isinstance(obj, str):
        return Type(base_type_from_json(obj, table=table, column=column))
    if not isinstance(obj, dict):
        raise SchemaError("ovsdb type expected", table=table, column=column)
    _check_members(obj, {"key", "value", "min", "max"}, "type", table, column)
    if "key" not in obj:
        raise SchemaError("type: required 'key' member is missing", table=table, column=column)
    key = base_type_from_json(obj["key"], table=table, column=column)
    value = (base_type_from_json(obj["value"], table=table, column=column)
             if "value" in obj else None)
    n_min, n_max = 1, 1
    if "min" in obj:
        v = obj["min"]
        if ovsjson.kind(v) is not Kind.INTEGER or not 0 <= ovsjson.as_integer(v) < UNLIMITED:
            raise SchemaError("bad min or max value", table=table, column=column)
        n_min = ovsjson.as_integer(v)
    if "max" in obj:
        v = obj["max"]
        if v == "unlimited":
            n_max = UNLIMITED
        elif ovsjson.kind(v) is Kind.INTEGER and 0 <= ovsjson.as_integer(v) < UNLIMITED:
            n_max = ovsjson.as_integer(v)
        else:
            raise SchemaError("bad min or max value", table=table, column=column)
    if n_min > 1 or n_max < 1:
        raise SchemaError(f"ovsdb type fails constraint checks (min {n_min}, max {n_max}: "
                          "min must be 0 or 1 and max at least 1)", table=table, column=column)
    return Type(key, value, n_min, n_max)
