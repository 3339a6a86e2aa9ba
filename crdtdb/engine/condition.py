"""``where`` clauses (RFC 7047 section 5.1): parsing with ovsdb-server's type rules, evaluation.

Transact ``where`` clauses are ANDed (:meth:`Condition.matches`); monitor conditions OR theirs
(:meth:`Condition.matches_any`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtdb.engine import data
from crdtdb.engine.frozen import fast_init
from crdtdb.engine.schema import ColumnSchema, TableSchema
from crdtdb.engine.types import UNLIMITED, AtomicType
from crdtdb.errors import OvsdbError


class Function(enum.Enum):
    LT = "<"
    LE = "<="
    EQ = "=="
    NE = "!="
    GE = ">="
    GT = ">"
    INCLUDES = "includes"
    EXCLUDES = "excludes"
    TRUE = "true"
    FALSE = "false"


_BY_NAME = {f.value: f for f in Function if f not in (Function.TRUE, Function.FALSE)}
_ORDERING = (Function.LT, Function.LE, Function.GT, Function.GE)


@fast_init
@dataclass(frozen=True, slots=True)
class Clause:
    function: Function
    column: ColumnSchema | None
    arg: data.Datum

    def evaluate(self, row: tuple) -> bool:
        f = self.function
        if f is Function.TRUE:
            return True
        if f is Function.FALSE:
            return False
        assert self.column is not None
        field = row[self.column.index]
        arg = self.arg
        ctype = self.column.type
        if ctype.is_optional_scalar and not field and f in _ORDERING:
            return False
        if (ctype.is_scalar or ctype.is_optional_scalar) and len(field) == 1 and len(arg) == 1:
            a, b = field[0], arg[0]
            if f is Function.EQ or f is Function.INCLUDES:
                return a == b
            if f is Function.NE or f is Function.EXCLUDES:
                return a != b
            if f is Function.LT:
                return a < b
            if f is Function.LE:
                return a <= b
            if f is Function.GT:
                return a > b
            return a >= b
        if f is Function.EQ:
            return field == arg
        if f is Function.NE:
            return field != arg
        if f is Function.INCLUDES:
            if len(arg) > len(field):
                return False
            have = set(field)
            return all(x in have for x in arg)
        if f is Function.EXCLUDES:
            have = set(field)
            return not any(x in have for x in arg)
        raise AssertionError(f"ordering function {f} on a non-scalar")  # rejected at parse


@fast_init
@dataclass(frozen=True, slots=True)
class Condition:
    clauses: tuple[Clause, ...]
    #: For :meth:`matches_any`, built on its first call (a transaction's ``where`` never
    #: needs it): see :attr:`_equal_to` and :attr:`_others`.
    _split: tuple[tuple[tuple[int, frozenset[data.Datum]], ...], tuple[Clause, ...]] | None = (
        field(default=None, init=False, repr=False, compare=False))

    @property
    def _equal_to(self) -> tuple[tuple[int, frozenset[data.Datum]], ...]:
        """The ``==`` clauses as column index -> the datums any of them asks for.
        ovn-controller's monitor conditions are mostly ``==`` clauses on one column (a clause
        per local datapath, port, ...): a set lookup per column instead of a comparison per
        clause, as ovsdb-server's optimized clauses."""
        return (self._split or self._make_split())[0]

    @property
    def _others(self) -> tuple[Clause, ...]:
        """Every clause that is not in :attr:`_equal_to`."""
        return (self._split or self._make_split())[1]

    def _make_split(self) -> tuple[tuple[tuple[int, frozenset[data.Datum]], ...],
                                   tuple[Clause, ...]]:
        equal_to: dict[int, set[data.Datum]] = {}
        others: list[Clause] = []
        for c in self.clauses:
            if c.function is Function.EQ and c.column is not None:
                equal_to.setdefault(c.column.index, set()).add(c.arg)
            else:
                others.append(c)
        split = (tuple((i, frozenset(datums)) for i, datums in equal_to.items()),
                 tuple(others))
        object.__setattr__(self, "_split", split)
        return split

    def matches(self, row: tuple) -> bool:
        return all(c.evaluate(row) for c in self.clauses)

    def matches_any(self, row: tuple) -> bool:
        # A datum equals the clause's argument exactly when the (canonical) tuples are equal,
        # whatever the column's type: the same test as Clause.evaluate's.
        equal_to, others = self._split or self._make_split()
        for i, datums in equal_to:
            if row[i] in datums:
                return True
        return any(c.evaluate(row) for c in others)

    def uuid_equal(self) -> str | None:
        """The row uuid an ``["_uuid", "==", X]`` clause pins the match to, if any."""
        for c in self.clauses:
            if (c.function is Function.EQ and c.column is not None and c.column.index == 0):
                return c.arg[0]
        return None


def clause_from_json(table: TableSchema, value: Any,
                     symtab: data.SymbolTable | None) -> Clause:
    if value is True or value is False:
        return Clause(Function.TRUE if value else Function.FALSE, None, ())
    # isinstance(..., (list, tuple)) is what ovsjson.kind() calls an array.
    if (not isinstance(value, (list, tuple)) or len(value) != 3 or not isinstance(value[0], str)
            or not isinstance(value[1], str)):
        raise data.syntax_error(value, "Parse error in condition.")
    column = table.columns.get(value[0])
    if column is None:
        raise data.syntax_error(value, f"No column {value[0]} in table {table.name}.",
                                tag="unknown column")
    function = _BY_NAME.get(value[1])
    if function is None:
        raise OvsdbError("unknown function", f"No function named {value[1]}.")
    ctype = column.type
    if function in _ORDERING:
        if (not (ctype.is_scalar or ctype.is_optional_scalar)
                or ctype.key.type not in (AtomicType.INTEGER, AtomicType.REAL)):
            raise data.syntax_error(
                value, f'Type mismatch: "{function.value}" operator may not be applied to '
                       f"column {column.name} of type {ctype.english()}.")
        arg_type = ctype.with_n(n_min=1)
    elif function is Function.EXCLUDES:
        arg_type = ctype if ctype.is_scalar else ctype.with_n(0, UNLIMITED)
    elif function is Function.INCLUDES:
        arg_type = ctype if ctype.is_scalar else ctype.with_n(n_min=0)
    else:
        arg_type = ctype
    return Clause(function, column, data.datum_from_json(arg_type, value[2], symtab))


def condition_from_json(table: TableSchema, value: Sequence[Any],
                        symtab: data.SymbolTable | None) -> Condition:
    return Condition(tuple(clause_from_json(table, c, symtab) for c in value))
