"""``mutate`` mutations (RFC 7047 section 5.1) with ovsdb-server's exact rules and messages.

Arithmetic follows C int64 semantics (truncating division, remainder with the dividend's sign,
and OVS's own overflow checks, quirks included) so results and errors match ovsdb-server.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crdtdb.engine import data
from crdtdb.engine.frozen import fast_init
from crdtdb.engine.ovsjson import INT64_MAX, INT64_MIN
from crdtdb.engine.schema import ColumnSchema, TableSchema
from crdtdb.engine.types import UNLIMITED, AtomicType
from crdtdb.errors import OvsdbError


class Mutator(enum.Enum):
    ADD = "+="
    SUB = "-="
    MUL = "*="
    DIV = "/="
    MOD = "%="
    INSERT = "insert"
    DELETE = "delete"


_BY_NAME = {m.value: m for m in Mutator}
_ARITHMETIC = (Mutator.ADD, Mutator.SUB, Mutator.MUL, Mutator.DIV, Mutator.MOD)


class _Range(Exception):
    pass


class _Domain(Exception):
    pass


def _c_div(x: int, y: int) -> int:
    q = abs(x) // abs(y)
    return q if (x < 0) == (y < 0) else -q


def _int_op(m: Mutator, x: int, y: int) -> int:
    if m is Mutator.ADD:
        r = x + y
    elif m is Mutator.SUB:
        r = x - y
    elif m is Mutator.MUL:
        # mul_int's overflow test, which also refuses a few products that would fit.
        if x > 0:
            overflow = x >= INT64_MAX // y if y > 0 else y < _c_div(INT64_MIN, x)
        elif y > 0:
            overflow = x < _c_div(INT64_MIN, y)
        else:
            overflow = x != 0 and y != 0 and y < _c_div(INT64_MAX, y)
        if overflow:
            raise _Range
        # What the check lets through still wraps around like C (negative times negative).
        return (x * y + 2**63) % 2**64 - 2**63
    else:
        if y == 0:
            raise _Domain
        if x == INT64_MIN and y == -1:
            raise _Range
        q = _c_div(x, y)
        return q if m is Mutator.DIV else x - q * y
    if not INT64_MIN <= r <= INT64_MAX:
        raise _Range
    return r


def _real_op(m: Mutator, x: float, y: float) -> float:
    if m is Mutator.ADD:
        r = x + y
    elif m is Mutator.SUB:
        r = x - y
    elif m is Mutator.MUL:
        r = x * y
    else:
        if y == 0:
            raise _Domain
        r = x / y
    if not math.isfinite(r):
        raise _Range
    return r


@fast_init
@dataclass(frozen=True, slots=True)
class Mutation:
    column: ColumnSchema
    mutator: Mutator
    arg: data.Datum
    #: For a map ``delete``: whether ``arg`` is a map (exact pairs) or a set of keys.
    arg_is_map: bool

    def apply(self, value: data.Datum) -> data.Datum:
        """The column's new value, or :class:`OvsdbError` as ovsdb-server reports it."""
        ctype = self.column.type
        m = self.mutator
        if m in _ARITHMETIC:
            y = self.arg[0]
            op = _int_op if ctype.key.type is AtomicType.INTEGER else _real_op
            try:
                result = [op(m, x, y) for x in value]
            except _Domain:
                raise OvsdbError("domain error", "Division by zero.") from None
            except _Range:
                raise OvsdbError("range error",
                                 f'Result of "{m.value}" operation is out of range.') from None
            for atom in result:
                data.check_atom(ctype.key, atom)
            result.sort()
            for i in range(1, len(result)):
                if result[i] == result[i - 1]:
                    raise OvsdbError("constraint violation",
                                     f'Result of "{m.value}" operation contains duplicates.')
            return tuple(result)
        if m is Mutator.INSERT:
            new = data.union(ctype, value, self.arg)
        else:
            new = data.subtract(ctype, value, self.arg, self.arg_is_map)
        if not ctype.n_min <= len(new) <= ctype.n_max:
            raise OvsdbError("constraint violation",
                             f"Attempted to store {len(new)} elements in {ctype.english()}.")
        return new


def _type_mismatch(value: Any, m: Mutator, column: ColumnSchema) -> OvsdbError:
    return data.syntax_error(value, f'Type mismatch: "{m.value}" operator may not be applied to '
                                    f"column {column.name} of type {column.type.english()}.")


def mutation_from_json(table: TableSchema, value: Any,
                       symtab: data.SymbolTable | None) -> Mutation:
    # isinstance(..., (list, tuple)) is what ovsjson.kind() calls an array.
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not isinstance(value[0], str) or not isinstance(value[1], str)):
        raise data.syntax_error(value, "Parse error in mutation.")
    column = table.columns.get(value[0])
    if column is None:
        raise data.syntax_error(value, f"No column {value[0]} in table {table.name}.",
                                tag="unknown column")
    if not column.mutable:
        raise data.syntax_error(value, f"Cannot mutate immutable column {column.name} in table "
                                       f"{table.name}.", tag="constraint violation")
    m = _BY_NAME.get(value[1])
    if m is None:
        raise OvsdbError("unknown mutator", f"No mutator named {value[1]}.")
    ctype = column.type
    if m in _ARITHMETIC:
        if (ctype.is_map or ctype.key.type not in (AtomicType.INTEGER, AtomicType.REAL)
                or (m is Mutator.MOD and ctype.key.type is AtomicType.REAL)):
            raise _type_mismatch(value, m, column)
        arg_type = ctype.scalar_argument()
        return Mutation(column, m, data.datum_from_json(arg_type, value[2], symtab), False)
    if ctype.is_scalar:
        raise _type_mismatch(value, m, column)
    arg_type = ctype.with_n(0, UNLIMITED if m is Mutator.DELETE else None)
    try:
        return Mutation(column, m, data.datum_from_json(arg_type, value[2], symtab), True)
    except OvsdbError:
        if not (ctype.is_map and m is Mutator.DELETE):
            raise
    return Mutation(column, m, data.datum_from_json(ctype.keys_only(), value[2], symtab), False)


def mutations_from_json(table: TableSchema, value: Sequence[Any],
                        symtab: data.SymbolTable | None) -> tuple[Mutation, ...]:
    return tuple(mutation_from_json(table, v, symtab) for v in value)
